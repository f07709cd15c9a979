//! Repository rules, checked as tests (as rust-analyzer's `xtask/src/tidy.rs` does): what a
//! reviewer would otherwise have to remember.

use std::path::{Path, PathBuf};

/// This clone's root, at run time (a path compiled in could be another clone's).
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&manifest_dir)
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The files git knows (tracked, or new and not ignored).
fn files() -> Vec<String> {
    let listed = crate::system::command("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(root())
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "git ls-files failed");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|f| root().join(f).is_file())
        .map(str::to_owned)
        .collect()
}

fn rust_files() -> Vec<(String, String)> {
    files()
        .into_iter()
        .filter(|f| f.ends_with(".rs"))
        .map(|f| {
            let text = std::fs::read_to_string(root().join(&f)).expect("readable source");
            (f, text)
        })
        .collect()
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let missing: Vec<String> = rust_files()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(f, _)| f)
        .collect();
    assert!(
        missing.is_empty(),
        "no `//!` line at the top of: {missing:?}"
    );
}

#[test]
fn shell_lives_only_in_the_boot_scripts_and_ci() {
    let stray: Vec<String> = files()
        .into_iter()
        .filter(|f| f.ends_with(".sh") && !f.starts_with("userdata/") && !f.starts_with(".ci/"))
        .collect();
    assert!(
        stray.is_empty(),
        "shell scripts outside userdata/ and .ci/: {stray:?}"
    );
}

/// Processes are started by `backends::media` (ffmpeg, ffprobe) and by xtask; anywhere
/// else a `Command::new` carries `#[allow(clippy::disallowed_methods)]` with a comment
/// saying why, on its line or just above.
#[test]
fn processes_are_started_in_the_agreed_places_or_with_a_reason() {
    let mut unexplained = Vec::new();
    for (file, text) in rust_files() {
        if file.starts_with("xtask/") || file == "services/backends/src/media.rs" {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains("crate::system::command(") {
                continue;
            }
            let above = &lines[i.saturating_sub(4)..=i];
            let explained = above.iter().any(|l| {
                l.contains("allow(clippy::disallowed_methods)")
                    && (l.contains("//") || above.iter().any(|c| c.trim_start().starts_with("//")))
            });
            if !explained {
                unexplained.push(format!("{file}:{}", i + 1));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "Command::new without an allow and a reason: {unexplained:?}"
    );
}
