//! The capacity commands as CI runs them (`--quick`, or a short simulation): each writes
//! its report with the figures a reviewer reads, its raw data and real PNG plots.

use std::path::PathBuf;

use crate::{cargo_xtask, workspace_root};

/// Runs `cargo xtask capacity <args>` and returns its report folder (the last line names it).
fn capacity(args: &[&str]) -> PathBuf {
    let mut full = vec!["capacity"];
    full.extend(args);
    let out = cargo_xtask(&workspace_root(), &full);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "capacity {args:?} failed:\n{stdout}\n{stderr}"
    );
    let dir = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("Report: "))
        .unwrap_or_else(|| panic!("no report folder printed:\n{stdout}"));
    PathBuf::from(dir)
}

fn assert_report(dir: &std::path::Path, files: &[&str], figures: &[&str]) {
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for figure in figures {
        assert!(
            report.contains(figure),
            "{figure:?} missing from:\n{report}"
        );
    }
    for file in files {
        let bytes = std::fs::read(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
        if file.ends_with(".png") {
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{file} is not a PNG"
            );
            assert!(
                report.contains(&format!("({file})")),
                "report.md does not show {file}"
            );
        } else {
            assert!(!bytes.is_empty(), "{file} is empty");
        }
    }
}

#[test]
fn the_three_capacity_commands_write_reports_with_their_figures() {
    let _serial = crate::CARGO_RUNS.lock().unwrap_or_else(|e| e.into_inner());

    let web = capacity(&["web", "--quick"]);
    assert_report(
        &web,
        &[
            "phases.csv",
            "phases.json",
            "throughput-and-p95.png",
            "errors.png",
            "cpu.png",
        ],
        &[
            "## Setup",
            "| smoke | 5 |",
            "| step 10 users | 10 |",
            "## Capacity found",
            "concurrent users",
            "Generator ceiling:",
            "coordinated-omission",
        ],
    );

    let worker = capacity(&["worker", "--quick"]);
    assert_report(
        &worker,
        &["levels.csv", "levels.json", "videos-per-minute.png"],
        &["| 1 |", "| 2 |", "videos/min per worker", "queue trend"],
    );

    let simulated = capacity(&[
        "simulate",
        "--arrivals",
        "burst:100",
        "--service-time",
        "4s",
        "--compare",
    ]);
    assert_report(
        &simulated,
        &[
            "timeline.csv",
            "jobs.csv",
            "summary.json",
            "queue-depth.png",
            "instances.png",
            "upload-to-processed.png",
        ],
        &[
            "| target tracking (deployed) | 100 |",
            "| seed step policy | 100 |",
            "per 1 000 videos",
            "t3.small",
        ],
    );
    // A quick worker report is not a measurement: the simulation must not take it as one.
    let out = cargo_xtask(
        &workspace_root(),
        &["capacity", "simulate", "--arrivals", "burst:5"],
    );
    if !out.status.success() {
        assert!(String::from_utf8_lossy(&out.stderr).contains("--service-time"));
    } else {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("-worker-quick"), "{stdout}");
    }
}
