//! `cargo xtask dev` stops what it started, whenever it is told to stop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// A running process: its id, its environment's entries and its command line.
struct Process {
    pid: u32,
    environ: Vec<u8>,
    cmdline: String,
}

impl Process {
    fn has_env(&self, entry: &str) -> bool {
        self.environ
            .split(|b| *b == 0)
            .any(|e| e == entry.as_bytes())
    }
}

fn processes() -> Vec<Process> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|dir| {
            let pid = dir.file_name().to_string_lossy().parse::<u32>().ok()?;
            let read = |file: &str| std::fs::read(dir.path().join(file)).unwrap_or_default();
            Some(Process {
                pid,
                environ: read("environ"),
                cmdline: String::from_utf8_lossy(&read("cmdline")).replace('\0', " "),
            })
        })
        .collect()
}

/// SIGTERM (as `cargo xtask collection` sends, or `timeout`) while dev is still starting:
/// the API it has spawned and its private PostgreSQL stop with it. Before, dev listened
/// for signals only once everything was up, so it died at once and left both running.
#[test]
fn dev_stopped_while_it_starts_leaves_nothing_running() {
    let _serial = crate::CARGO_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api_env = format!("APP__SERVER__PORT={port}");
    let cluster = workspace_root().join("target/dev-postgres");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dev", "--port", &port.to_string()])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let said = || std::fs::read_to_string(log.path()).unwrap_or_default();
    // The API spawned (dev sets its port in its environment), long before it is healthy.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !processes().iter().any(|p| p.has_env(&api_env)) {
        assert!(
            dev.try_wait().unwrap().is_none(),
            "dev ended before it started the API:\n{}",
            said()
        );
        assert!(Instant::now() < deadline, "dev started no API in 5 min");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = dev.wait().unwrap();
    let database = format!("-D {}", cluster.display());
    let leftovers: Vec<(u32, String)> = processes()
        .into_iter()
        .filter(|p| p.has_env(&api_env) || p.cmdline.contains(&database))
        .map(|p| (p.pid, p.cmdline))
        .collect();
    for (pid, _) in &leftovers {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    assert!(
        leftovers.is_empty(),
        "dev exited ({status}) and left these running: {leftovers:?}\n{}",
        said()
    );
    assert!(
        status.success(),
        "dev stopped by SIGTERM exits 0, not {status}:\n{}",
        said()
    );
}
