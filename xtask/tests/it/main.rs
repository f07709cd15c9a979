//! xtask through its README commands, as a user runs them.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]
// Running `cargo xtask` as a shell would is the point of these tests.
#![allow(clippy::disallowed_methods)]

mod capacity;
mod dev;
mod rehearse;

/// Held by the tests that build or run this workspace's binaries through cargo, so one
/// does not replace an executable the other is running (they share the target directory).
static CARGO_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// This clone's root, read at run time (cargo sets it when it runs a test).
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&manifest_dir).parent().unwrap().to_path_buf()
}

/// The target directory this test was built in, which the copies below share.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Copies the files of this clone that git knows (tracked, or new and not ignored).
fn copy_tree(to: &Path) {
    let root = workspace_root();
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(listed.status.success(), "git ls-files failed");
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = root.join(name);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let dest = to.join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&from, &dest).unwrap();
    }
}

/// `cargo xtask <args>` in `dir`, as from a shell there: without the variables `cargo test`
/// set for this test, sharing this build's target directory.
fn cargo_xtask(dir: &Path, args: &[&str]) -> Output {
    cargo_xtask_command(dir, args).output().unwrap()
}

/// The command [`cargo_xtask`] runs, to add to or spawn.
fn cargo_xtask_command(dir: &Path, args: &[&str]) -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars() {
        if testkit::tools::is_set_by_cargo(&name) {
            cargo.env_remove(name);
        }
    }
    cargo
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        // ci takes these as given instead of setting the services up; nothing here reaches
        // the tests that would use them.
        .env("ANB_TEST_DATABASE_URL", "postgres://unused")
        .env("ANB_MOTO_PYTHON", "/unused")
        .env("ANB_SCHEMATHESIS", "/unused")
        .arg("xtask")
        .args(args);
    cargo
}

/// Two clones sharing a target directory share one xtask binary: cargo does not rebuild
/// it for a clone whose xtask sources are unchanged. Each must still check its own tree.
/// The clones differ by one unformatted file each, so `cargo xtask ci` stops at rustfmt
/// (cheaply) and names the file it found, which shows whose tree it read.
#[test]
fn two_clones_sharing_a_target_dir_each_check_their_own_tree() {
    let _serial = CARGO_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = tempfile::tempdir().unwrap();
    let clones = [
        ("a", "services/worker/src/main.rs"),
        ("b", "services/api/src/main.rs"),
    ];
    // Both copies exist before either builds: the second then finds xtask fresh, built
    // by the first at the first's path.
    for (name, unformatted) in clones {
        let clone = scratch.path().join(name);
        copy_tree(&clone);
        let file = clone.join(unformatted);
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("\nfn   left_unformatted_by_the_test ( ) {}\n");
        std::fs::write(&file, text).unwrap();
    }
    for (name, unformatted) in clones {
        let clone = scratch.path().join(name);
        let out = cargo_xtask(&clone, &["ci"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "clone {name}: ci passed:\n{stderr}");
        assert!(
            stderr.contains(&format!("checking the tree at {}", clone.display())),
            "clone {name}: ci checked another tree:\n{stderr}"
        );
        let expected = clone.join(unformatted);
        assert!(
            stdout.contains(&expected.display().to_string()),
            "clone {name}: rustfmt did not report {}:\n{stdout}\n{stderr}",
            expected.display()
        );
        for (other, _) in clones.iter().filter(|(n, _)| *n != name) {
            let other_root = scratch.path().join(other);
            assert!(
                !stdout.contains(&other_root.display().to_string()),
                "clone {name} read clone {other}'s files:\n{stdout}"
            );
        }
    }
}
