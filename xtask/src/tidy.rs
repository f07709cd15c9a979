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

/// Every relative link in the Markdown files (`[text](path)` and `![alt](path)`) names a
/// file or folder of the repository that exists, read from the linking file's folder; web
/// addresses and in-page anchors are not followed.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for file in files().into_iter().filter(|f| f.ends_with(".md")) {
        let text = std::fs::read_to_string(root().join(&file)).expect("readable Markdown");
        let folder = root()
            .join(&file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut in_code_block = false;
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code_block = !in_code_block;
            }
            if in_code_block {
                continue;
            }
            for target in link_targets(line) {
                let path = target.split('#').next().unwrap_or_default();
                let external = target.contains("://") || target.starts_with("mailto:");
                if external || path.is_empty() {
                    continue;
                }
                // Inside the repository: a clone has nothing beside it.
                let inside = folder
                    .join(path)
                    .canonicalize()
                    .is_ok_and(|p| p.starts_with(root().canonicalize().unwrap_or_default()));
                if !inside {
                    broken.push(format!("{file}:{}: {target}", number + 1));
                }
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}

/// The targets of the inline links on one line, outside `code spans`.
fn link_targets(line: &str) -> Vec<&str> {
    let mut targets = Vec::new();
    let mut outside_code = String::with_capacity(line.len());
    for (index, piece) in line.split('`').enumerate() {
        // Keep positions: blank out code spans instead of dropping them.
        if index % 2 == 0 {
            outside_code.push_str(piece);
        } else {
            outside_code.push_str(&" ".repeat(piece.len()));
        }
        outside_code.push(' ');
    }
    let mut rest = 0;
    while let Some(found) = outside_code[rest..].find("](") {
        let start = rest + found + 2;
        let Some(length) = outside_code[start..].find(')') else {
            break;
        };
        let target = line[start..start + length].trim();
        // A link's target may carry a title: `(path "title")`.
        targets.push(target.split_whitespace().next().unwrap_or_default());
        rest = start + length;
    }
    targets
}

#[test]
fn link_targets_are_read_outside_code_spans() {
    assert_eq!(
        link_targets("see [a](docs/a.md) and ![b](b.png \"t\") but not `[c](c.md)`"),
        ["docs/a.md", "b.png"]
    );
}
