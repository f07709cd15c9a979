//! The load balancer of the game day (#25, first piece): HAProxy (Debian's package) in
//! front of the web instances, behaving as the stack's ALB target group says. HAProxy
//! forwards; the target group's health checks are this module's, because HAProxy's own
//! treat a new server as up until its checks fail, where an ALB target takes no request
//! until it has passed `healthy_threshold` checks in a row. Each target's state machine
//! ([`TargetHealth`]) runs the target group's check (path, interval, timeout, thresholds)
//! and moves the HAProxy server between `maint` and `ready` over the runtime API;
//! deregistering drains it (`drain`: no new requests, those in flight finish) for the
//! deregistration delay.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::system::{command, stop};

/// The target group's health check and deregistration delay, as the emulator holds them
/// (`describe-target-groups`, `describe-target-group-attributes`).
#[derive(Clone, Debug, serde::Deserialize)]
pub(super) struct HealthCheck {
    pub(super) path: String,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) healthy_threshold: u32,
    pub(super) unhealthy_threshold: u32,
    pub(super) deregistration_delay: Duration,
}

/// A target as an ALB sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TargetState {
    /// Registered, not yet passed `healthy_threshold` checks: takes no request.
    Initial,
    Healthy,
    Unhealthy,
}

/// One target's consecutive check results and state.
#[derive(Clone, Debug)]
pub(super) struct TargetHealth {
    pub(super) state: TargetState,
    passed: u32,
    failed: u32,
}

impl TargetHealth {
    pub(super) fn registered() -> Self {
        Self {
            state: TargetState::Initial,
            passed: 0,
            failed: 0,
        }
    }

    /// One check's result; the new state when it changed.
    pub(super) fn record(&mut self, passed: bool, check: &HealthCheck) -> Option<TargetState> {
        if passed {
            self.passed += 1;
            self.failed = 0;
        } else {
            self.failed += 1;
            self.passed = 0;
        }
        let next = match self.state {
            TargetState::Healthy if self.failed >= check.unhealthy_threshold => {
                TargetState::Unhealthy
            }
            TargetState::Initial | TargetState::Unhealthy
                if self.passed >= check.healthy_threshold =>
            {
                TargetState::Healthy
            }
            TargetState::Initial if self.failed >= check.unhealthy_threshold => {
                TargetState::Unhealthy
            }
            state => state,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

/// HAProxy's configuration: one frontend on `listen`, one backend whose servers (the
/// targets, by name) all start in maintenance, the client's address in X-Forwarded-For (as
/// an ALB adds it; nginx counts its limits by it); the runtime API on `socket`.
pub(super) fn haproxy_config(
    listen: SocketAddr,
    socket: &Path,
    targets: &[(String, SocketAddr)],
) -> String {
    let mut out = format!(
        "global\n  stats socket {} mode 600 level admin\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend web\n  bind {listen}\n  default_backend targets\n\
         backend targets\n  balance roundrobin\n  option forwardfor\n",
        socket.display()
    );
    for (name, address) in targets {
        out.push_str(&format!("  server {name} {address} disabled\n"));
    }
    out
}

/// Whether `GET path` on `target` answers 200 within `timeout` (the ALB's default matcher).
fn check_once(target: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: ELB-HealthChecker/2.0\r\n\r\n"
        )?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    attempt().unwrap_or(false)
}

/// HAProxy and a health checker per target; stopped when dropped.
pub(super) struct Balancer {
    haproxy: Child,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    checkers: Vec<std::thread::JoinHandle<()>>,
    /// Each target's state, by name, as the checkers last set it.
    pub(super) states: Arc<Mutex<Vec<(String, TargetState)>>>,
    /// When each target's state last changed.
    changed_at: Arc<Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    /// Each target's name and whether it is still registered (its checker stops when not).
    registered: Vec<(String, Arc<AtomicBool>)>,
    check: HealthCheck,
}

impl Balancer {
    /// Starts HAProxy on `listen` with `targets` registered (each takes requests once it
    /// has passed its checks), its files in `dir`.
    pub(super) fn start(
        dir: &Path,
        listen: SocketAddr,
        targets: &[(String, SocketAddr)],
        check: &HealthCheck,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("haproxy.sock");
        let _ = std::fs::remove_file(&socket);
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(listen, &socket, targets))?;
        let haproxy = command(haproxy_program())
            .args(["-W", "-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
            .spawn()
            .context("cannot start haproxy")?;
        super::interruption::started(haproxy.id()); // Ctrl-C stops it too
        let mut balancer = Self {
            haproxy,
            socket,
            stop: Arc::new(AtomicBool::new(false)),
            checkers: Vec::new(),
            states: Arc::new(Mutex::new(Vec::new())),
            changed_at: Arc::default(),
            registered: Vec::new(),
            check: check.clone(),
        };
        for _ in 0..100 {
            if balancer.socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::ensure!(
            balancer.socket.exists(),
            "haproxy did not open its runtime socket (see {})",
            dir.join("haproxy.log").display()
        );
        for (name, address) in targets {
            balancer.watch(name.clone(), *address);
        }
        Ok(balancer)
    }

    /// A checker thread for one target: the target group's check every interval, and
    /// the HAProxy server put `ready` when healthy, in `maint` when unhealthy.
    fn watch(&mut self, name: String, address: SocketAddr) {
        let changed_at = self.changed_at.clone();
        let (stop, states, socket, check) = (
            self.stop.clone(),
            self.states.clone(),
            self.socket.clone(),
            self.check.clone(),
        );
        let registered = Arc::new(AtomicBool::new(true));
        self.registered.push((name.clone(), registered.clone()));
        states
            .lock()
            .expect("states")
            .push((name.clone(), TargetState::Initial));
        self.checkers.push(std::thread::spawn(move || {
            let mut health = TargetHealth::registered();
            while !stop.load(Ordering::Relaxed) && registered.load(Ordering::Relaxed) {
                let passed = check_once(address, &check.path, check.timeout);
                // Deregistered while it checked: its state is the deregistration's now (a
                // late `ready` would put a drained or removed target back).
                if !registered.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(state) = health.record(passed, &check) {
                    let admin = match state {
                        TargetState::Healthy => "ready",
                        TargetState::Initial | TargetState::Unhealthy => "maint",
                    };
                    let _ = runtime_command(
                        &socket,
                        &format!("set server targets/{name} state {admin}"),
                    );
                    if let Some(entry) = states
                        .lock()
                        .expect("states")
                        .iter_mut()
                        .find(|e| e.0 == name)
                    {
                        entry.1 = state;
                    }
                    changed_at
                        .lock()
                        .expect("changes")
                        .insert(name.clone(), std::time::Instant::now());
                }
                std::thread::sleep(check.interval);
            }
        }));
    }

    /// Deregisters `name`: no new requests, those in flight finish, for the
    /// deregistration delay; then out.
    pub(super) fn deregister(&self, name: &str) -> anyhow::Result<()> {
        if let Some((_, registered)) = self.registered.iter().find(|(n, _)| n == name) {
            registered.store(false, Ordering::Relaxed);
        }
        runtime_command(
            &self.socket,
            &format!("set server targets/{name} state drain"),
        )?;
        std::thread::sleep(self.check.deregistration_delay);
        runtime_command(
            &self.socket,
            &format!("set server targets/{name} state maint"),
        )?;
        Ok(())
    }
}

impl Balancer {
    /// Registers a new target (an instance the group launched): it takes requests once it
    /// has passed the healthy threshold.
    pub(super) fn register(&mut self, name: &str, address: SocketAddr) -> anyhow::Result<()> {
        let answer = runtime_command(
            &self.socket,
            &format!("add server targets/{name} {address} disabled"),
        )?;
        anyhow::ensure!(
            answer.contains("New server registered"),
            "HAProxy refused target {name}: {}",
            answer.trim()
        );
        self.watch(name.to_owned(), address);
        Ok(())
    }

    /// Deregisters `name` as [`Self::deregister`] does, the drain running on a thread of
    /// its own (the caller goes on), and then removes it from HAProxy. A target its checks
    /// took out of rotation stays out: draining would hand it requests in flight again.
    pub(super) fn deregister_in_background(&self, name: &str) {
        if let Some((_, registered)) = self.registered.iter().find(|(n, _)| n == name) {
            registered.store(false, Ordering::Relaxed);
        }
        let in_rotation = self.state(name) == Some(TargetState::Healthy);
        let (socket, name, delay) = (
            self.socket.clone(),
            name.to_owned(),
            self.check.deregistration_delay,
        );
        std::thread::spawn(move || {
            if in_rotation {
                let _ = runtime_command(&socket, &format!("set server targets/{name} state drain"));
                std::thread::sleep(delay);
            }
            let _ = runtime_command(&socket, &format!("set server targets/{name} state maint"));
            let _ = runtime_command(&socket, &format!("del server targets/{name}"));
        });
    }

    /// How long a deregistered target drains.
    pub(super) fn deregistration_delay(&self) -> Duration {
        self.check.deregistration_delay
    }

    /// When target `name`'s state last changed, if it ever did.
    pub(super) fn changed_at(&self, name: &str) -> Option<std::time::Instant> {
        self.changed_at.lock().expect("changes").get(name).copied()
    }

    /// Target `name`'s state as its checks last set it, if it is registered.
    pub(super) fn state(&self, name: &str) -> Option<TargetState> {
        self.states
            .lock()
            .expect("states")
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, state)| *state)
    }

    /// Waits until target `name` is healthy (has passed its checks), up to `limit`.
    pub(super) fn wait_healthy(&self, name: &str, limit: Duration) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        loop {
            let state = self
                .states
                .lock()
                .expect("states")
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, state)| *state);
            if state == Some(TargetState::Healthy) {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "target {name} is {state:?} after {:.0} s of checks of {}",
                limit.as_secs_f64(),
                self.check.path
            );
            std::thread::sleep(self.check.interval / 4);
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for checker in self.checkers.drain(..) {
            let _ = checker.join();
        }
        stop(&mut self.haproxy);
    }
}

/// One command on HAProxy's runtime API; its answer.
fn runtime_command(socket: &Path, line: &str) -> anyhow::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connect to {}", socket.display()))?;
    writeln!(stream, "{line}")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// haproxy lives in /usr/sbin, which is not on every user's PATH.
fn haproxy_program() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/haproxy");
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from("haproxy")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn check(interval_ms: u64) -> HealthCheck {
        HealthCheck {
            path: "/api/health/live".into(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            deregistration_delay: Duration::from_millis(300),
        }
    }

    #[test]
    fn a_target_takes_requests_after_its_healthy_threshold_and_leaves_after_its_unhealthy_one() {
        let check = check(1000);
        let mut target = TargetHealth::registered();
        assert_eq!(target.record(true, &check), None, "one pass is not enough");
        assert_eq!(target.record(true, &check), Some(TargetState::Healthy));
        assert_eq!(target.record(false, &check), None);
        assert_eq!(
            target.record(true, &check),
            None,
            "a pass resets the failures"
        );
        assert_eq!(target.record(false, &check), None);
        assert_eq!(target.record(false, &check), Some(TargetState::Unhealthy));
        assert_eq!(target.record(true, &check), None);
        assert_eq!(target.record(true, &check), Some(TargetState::Healthy));
        let mut never = TargetHealth::registered();
        never.record(false, &check);
        assert_eq!(never.record(false, &check), Some(TargetState::Unhealthy));
    }

    /// A backend on loopback answering its name, and the check path with 200 or 503.
    fn backend(name: &'static str, healthy: Arc<AtomicBool>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let healthy = healthy.clone();
                std::thread::spawn(move || {
                    let mut request = [0u8; 1024];
                    let n = stream.read(&mut request).unwrap_or(0);
                    let request = String::from_utf8_lossy(&request[..n]);
                    let status = if request.starts_with("GET /api/health/live")
                        && !healthy.load(Ordering::Relaxed)
                    {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                });
            }
        });
        address
    }

    fn get(listen: SocketAddr) -> String {
        let attempt = || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&listen, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            write!(stream, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        };
        match attempt() {
            Ok(answer)
                if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") =>
            {
                answer
                    .rsplit("\r\n\r\n")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            }
            Ok(answer) => answer.lines().next().unwrap_or_default().to_owned(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn haproxy_sends_requests_only_to_healthy_targets_as_an_alb_does() {
        let interval = 200;
        let (a_ok, b_ok) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let targets = vec![
            ("a".to_owned(), backend("A", a_ok.clone())),
            ("b".to_owned(), backend("B", b_ok.clone())),
        ];
        let listen = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let balancer = Balancer::start(dir.path(), listen, &targets, &check(interval)).unwrap();
        let limit = Duration::from_millis(interval * 10);
        let served = |n: usize| (0..n).map(|_| get(listen)).collect::<Vec<_>>();
        let wait = |checks: u64| std::thread::sleep(Duration::from_millis(interval * checks + 100));

        // Nothing before a target has passed 2 checks: HAProxy answers 503 itself.
        let first = get(listen);
        assert!(first.contains("503"), "{first}");
        balancer.wait_healthy("a", limit).unwrap();
        // A passed; B never did, so it never takes a request.
        assert!(served(10).iter().all(|s| s == "A"), "{:?}", served(4));
        // B passes from now: it takes requests once it has passed 2 checks in a row.
        b_ok.store(true, Ordering::Relaxed);
        balancer.wait_healthy("b", limit).unwrap();
        let both = served(10);
        assert!(
            both.contains(&"A".to_owned()) && both.contains(&"B".to_owned()),
            "{both:?}"
        );
        // A starts failing: out after 2 failed checks, B takes everything.
        a_ok.store(false, Ordering::Relaxed);
        wait(3);
        assert!(served(10).iter().all(|s| s == "B"));
        let states = balancer.states.lock().unwrap().clone();
        assert_eq!(
            states,
            [
                ("a".to_owned(), TargetState::Unhealthy),
                ("b".to_owned(), TargetState::Healthy)
            ]
        );
        // B deregistered: drained, then no target is left.
        balancer.deregister("b").unwrap();
        let after = get(listen);
        assert!(after.contains("503"), "{after}");
    }
}
