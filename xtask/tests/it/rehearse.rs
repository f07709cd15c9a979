//! The deploy rehearsal as CI runs it: `cargo xtask rehearse` boots a web and a worker
//! instance from the launch templates' user data and drives the smoke flow through them;
//! `cargo xtask rehearse --game-day --quick` runs the groups' instances under the deployed
//! worker policy through a burst, a rolling deploy, a bad release that rolls back, a
//! database failover and a zone loss.

use std::process::Command;

use crate::workspace_root;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `cargo xtask rehearse ARGS` as root, one cargo run at a time; (passed, stdout, the
/// last 60 lines of stderr). None when not root.
fn rehearse(args: &[&str]) -> Option<(bool, String, String)> {
    if !is_root() {
        eprintln!(
            "SKIPPED: the rehearsal boots containers with systemd-nspawn, which needs root \
             (CI runs as root)"
        );
        return None;
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
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    Some((out.status.success(), stdout, tail))
}

fn passed_step(stdout: &str, step: &str) -> bool {
    stdout
        .lines()
        .any(|line| line.trim_start().starts_with("pass") && line.contains(step))
}

#[test]
fn a_rehearsed_deploy_boots_both_tiers_and_serves_the_smoke_flow() {
    let Some((passed, stdout, stderr_tail)) = rehearse(&[]) else {
        return;
    };
    assert!(
        passed,
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
            passed_step(&stdout, step),
            "no passed step {step:?} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("not rehearsed:"), "{stdout}");
}

#[test]
fn a_quick_game_day_scales_the_workers_rolls_a_release_back_and_survives_failures() {
    let Some((passed, stdout, stderr_tail)) = rehearse(&["--game-day", "--quick"]) else {
        return;
    };
    assert!(
        passed,
        "the game day failed:\n{stdout}\n--- stderr (tail) ---\n{stderr_tail}"
    );
    for step in [
        "groups' first instances healthy",
        "load balancer (HAProxy)",
        "burst",
        "rolling deploy",
        "bad release",
        "database failover",
        "zone loss",
        "summary",
    ] {
        assert!(
            passed_step(&stdout, step),
            "no passed step {step:?} in:\n{stdout}"
        );
    }
    // summary.json, as other tools read it.
    let path = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("pass") && l.contains("summary.json"))
        .and_then(|l| l.split_whitespace().last())
        .expect("the summary's path");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let scenarios = summary.as_array().expect("one object per scenario");
    for scenario in scenarios {
        for field in [
            "name",
            "passed",
            "videos_lost",
            "videos_processed_twice",
            "orphan_objects",
            "failed_requests",
            "jobs_cut_at_scale_in",
        ] {
            assert!(scenario.get(field).is_some(), "no {field} in {scenario}");
        }
        assert_eq!(scenario["passed"], true, "{scenario}");
        assert_eq!(scenario["videos_lost"], 0, "{scenario}");
    }
    let burst = scenarios
        .iter()
        .find(|s| s["name"] == "burst")
        .expect("the burst");
    assert_eq!(burst["max_instances"], 3, "{burst}");
    assert_eq!(burst["jobs_cut_at_scale_in"], 0, "{burst}");
    for field in ["p95_measured_s", "p95_predicted_s"] {
        assert!(burst[field].as_f64().is_some_and(|s| s > 0.0), "{burst}");
    }
    // Release B replaced A on both tiers under traffic through `provision up --wait`;
    // B' rolled back by itself and `up --wait` said so with exit code 1.
    let scenario = |name: &str| {
        scenarios
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {summary}"))
    };
    let rolling = scenario("rolling deploy");
    assert_eq!(rolling["up_exit_code"], 0, "{rolling}");
    assert_eq!(rolling["failed_requests"], 0, "{rolling}");
    assert!(
        rolling["uploads"].as_u64().is_some_and(|n| n > 0),
        "{rolling}"
    );
    let bad = scenario("bad release");
    assert_eq!(bad["up_exit_code"], 1, "{bad}");
    assert_eq!(bad["failed_requests"], 0, "{bad}");
    assert!(
        bad["up_said"]
            .as_str()
            .is_some_and(|s| s.contains("rolled back to release")),
        "{bad}"
    );
}
