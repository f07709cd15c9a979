//! Ctrl-C (or SIGTERM) during a rehearsal: the processes it started (containers, nginx) are
//! stopped, then each teardown the stand-ins registered runs (newest first), before the
//! process exits, so an interrupted run leaves nothing behind; with `--keep`, the signal is
//! what ends the kept run. It knows no stand-in: each registers its own teardown.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What undoes one thing the run set up, if it is interrupted.
type Teardown = Box<dyn FnOnce() + Send>;

/// Processes the rehearsal started that outlive it unless stopped (nspawn, nginx).
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static TEARDOWNS: Mutex<Vec<Teardown>> = Mutex::new(Vec::new());
/// Set while `--keep` waits: the signal then ends the wait instead of the process.
static KEEPING: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Remembers a process to stop if the run is interrupted.
pub(super) fn started(pid: u32) {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Forgets a process that has ended (its PID may be reused by another).
pub(super) fn stopped(pid: u32) {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// Registers what to undo if the run is interrupted, after the started processes stop.
pub(super) fn on_interrupt(teardown: impl FnOnce() + Send + 'static) {
    TEARDOWNS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(teardown));
}

/// Watches for SIGINT and SIGTERM from now on.
pub(super) fn watch() {
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
            clean_up();
            std::process::exit(130);
        }
    });
}

/// Whether the run was interrupted: whatever would start something new must not.
pub(super) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Blocks until the run is interrupted (`--keep`).
pub(super) fn wait() {
    KEEPING.store(true, Ordering::SeqCst);
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("\nrehearse: tearing down");
}

fn clean_up() {
    // Twice: the run's own thread may have started one more while the first round ran
    // (it stops starting anything once it sees the interruption).
    let mut stopped: Vec<u32> = Vec::new();
    for _ in 0..2 {
        let pids: Vec<u32> = STARTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .filter(|pid| !stopped.contains(pid))
            .collect();
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
        stopped.extend(pids);
    }
    let teardowns = std::mem::take(&mut *TEARDOWNS.lock().unwrap_or_else(|e| e.into_inner()));
    for teardown in teardowns.into_iter().rev() {
        teardown();
    }
}
