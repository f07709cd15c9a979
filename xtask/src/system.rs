//! Running commands and making sure the machine has what a command needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Runs `command`, failing with its rendering when it fails.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let shown = render(command);
    let status = command
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` and returns its standard output.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let shown = render(command);
    let out = command
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn render(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The full path of `program` on PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false)
}

fn has_apt() -> bool {
    which("apt-get").is_some()
}

/// Makes sure each of `programs` is on PATH, installing the Debian `package` with apt
/// when running as root on Debian/Ubuntu; otherwise says exactly what to run.
pub fn ensure_installed(programs: &[&str], package: &str) -> anyhow::Result<()> {
    if programs.iter().all(|p| which(p).is_some()) {
        return Ok(());
    }
    install_packages(&[package]).with_context(|| format!("{} is needed", programs.join(", ")))?;
    if let Some(missing) = programs.iter().find(|p| which(p).is_none()) {
        bail!("installed {package} but {missing} is still not on PATH");
    }
    Ok(())
}

pub fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    if !(is_root() && has_apt()) {
        bail!(
            "install it first: sudo apt-get install -y {}",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(", "));
    run_command(Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The newest PostgreSQL server binaries on this machine (Debian keeps them under
/// /usr/lib/postgresql/<version>/bin), installing the `postgresql` package if there are none.
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = newest_postgres_bin_dir() {
        return Ok(dir);
    }
    install_packages(&["postgresql"]).context("PostgreSQL is needed")?;
    newest_postgres_bin_dir().context("installed postgresql but found no server binaries")
}

fn newest_postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    // Elsewhere (macOS, other distributions) the binaries are simply on PATH.
    which("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
}
