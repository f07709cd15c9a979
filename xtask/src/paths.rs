//! Where this clone is, found at run time (clones may share one target directory, so a
//! path compiled into the binary could be another clone's), and where runs write.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;

use crate::system;

pub(crate) static PROJECT_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// The workspace this xtask works on, found once at start (see [`find_project_root`]).
pub fn project_root() -> PathBuf {
    PROJECT_ROOT
        .get()
        .expect("main finds the project root before running a command")
        .clone()
}

/// The workspace root, found at run time, never compiled in: clones that share a target
/// directory share one xtask binary (cargo does not rebuild it for a clone at another path),
/// so a path fixed at build time would be another clone's tree. `cargo xtask` sets
/// CARGO_MANIFEST_DIR to this clone's `xtask/`; a binary started by hand asks cargo.
pub(crate) fn find_project_root() -> anyhow::Result<PathBuf> {
    if let Some(manifest_dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        let root = Path::new(&manifest_dir)
            .parent()
            .context("CARGO_MANIFEST_DIR has no parent")?;
        anyhow::ensure!(
            root.join("Cargo.toml").is_file() && root.join("xtask").is_dir(),
            "CARGO_MANIFEST_DIR={} is not this workspace's xtask: run `cargo xtask` from the clone",
            Path::new(&manifest_dir).display()
        );
        return Ok(root.to_path_buf());
    }
    let manifest =
        system::output(
            crate::system::command(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["locate-project", "--workspace", "--message-format", "plain"]),
        )
        .context("cannot find the workspace: run `cargo xtask` inside the clone")?;
    Ok(Path::new(manifest.trim())
        .parent()
        .context("cargo locate-project printed no path")?
        .to_path_buf())
}

/// Scratch space for xtask (private clusters, tools, bench inputs): always `<root>/target`.
pub fn scratch_dir() -> PathBuf {
    project_root().join("target")
}
