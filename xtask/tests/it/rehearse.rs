//! The deploy rehearsal as CI runs it: `cargo xtask rehearse` boots a web and a worker
//! instance from the launch templates' user data and drives the smoke flow through them.

use std::process::Command;

use crate::workspace_root;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn a_rehearsed_deploy_boots_both_tiers_and_serves_the_smoke_flow() {
    if !is_root() {
        eprintln!(
            "SKIPPED: the rehearsal boots containers with systemd-nspawn, which needs root \
             (CI runs as root)"
        );
        return;
    }
    let _serial = crate::CARGO_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars() {
        if testkit::tools::is_set_by_cargo(&name) {
            cargo.env_remove(name);
        }
    }
    let out = cargo
        .current_dir(workspace_root())
        .args(["xtask", "rehearse"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr_tail: String = {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    assert!(
        out.status.success(),
        "the rehearsal failed:\n{stdout}\n--- stderr (tail) ---\n{stderr_tail}"
    );
    for step in [
        "cargo xtask up (moto)",
        "web instance healthy",
        "worker instance healthy",
        "load balancer (HAProxy)",
        "signup + login (via nginx)",
        "upload",
        "processed by the worker instance",
        "download processed",
        "vote + rankings",
        "load balancer drain",
        "password rotated",
        "new password, no restart",
        "worker stopped with a job in hand",
        "after restart (new password read)",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.trim_start().starts_with("pass") && line.contains(step)),
            "no passed step {step:?} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("not rehearsed:"), "{stdout}");
}
