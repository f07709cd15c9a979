//! Ctrl-C (or SIGTERM) during a rehearsal: the containers, the stand-in database, the
//! metadata route and nginx are stopped before the process exits, so an interrupted run
//! leaves nothing behind; with `--keep`, the signal is what ends the kept run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::stand_ins::IMDS_TABLE;

/// Processes the rehearsal started that outlive it unless stopped (nspawn, nginx).
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set while `--keep` waits: the signal then ends the wait instead of the process.
static KEEPING: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Remembers a process to stop if the run is interrupted.
pub(super) fn started(pid: u32) {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Watches for SIGINT and SIGTERM from now on.
pub(super) fn watch(dir: &Path) {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let signalled = runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut terminate) = signal(SignalKind::terminate()) else {
                return false;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => true,
                _ = terminate.recv() => true,
            }
        });
        if !signalled {
            return;
        }
        INTERRUPTED.store(true, Ordering::SeqCst);
        if !KEEPING.load(Ordering::SeqCst) {
            eprintln!("\nrehearse: interrupted; stopping what it started");
            clean_up(&dir);
            std::process::exit(130);
        }
    });
}

/// Blocks until the run is interrupted (`--keep`).
pub(super) fn wait() {
    KEEPING.store(true, Ordering::SeqCst);
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("\nrehearse: tearing down");
}

fn clean_up(dir: &Path) {
    let pids: Vec<u32> = STARTED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in &pids {
        let _ = crate::system::command("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    // nspawn powers its container off on SIGTERM: give the units their stop time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = crate::system::command("nft")
        .args(["delete", "table", "ip", IMDS_TABLE])
        .stderr(Stdio::null())
        .status();
    let data: PathBuf = dir.join("rds");
    if let Ok(bin) = crate::system::postgres_bin_dir() {
        let _ = crate::system::command("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(dir.join("instances"));
}
