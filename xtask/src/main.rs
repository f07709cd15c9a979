//! `cargo xtask`: the project's automation, in Rust rather than shell scripts.
//!
//! Architecture invariant: xtask drives the other crates by running them (cargo, their
//! binaries), never by linking them.

// This crate's whole job is running other programs.
#![allow(clippy::disallowed_methods)]

mod api_client;
mod bench;
mod capacity;
mod ci;
mod deploy;
mod dev;
mod postgres;
mod rehearse;
mod system;
#[cfg(test)]
mod tidy;
mod tools;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Context;

use clap::{Parser, Subcommand};

/// Project automation for the ANB Rising Stars platform.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform on this machine: a private PostgreSQL (unless DATABASE_URL is set),
    /// local storage, the PostgreSQL queue, and the API on http://127.0.0.1:8080.
    Dev(dev::DevArgs),
    /// Run every check CI runs: rustfmt, clippy (warnings denied) and all tests, after
    /// installing or starting what the tests need (ffmpeg, PostgreSQL, moto).
    Ci(ci::CiArgs),
    /// Measure performance and print figures with ratios to a baseline from the same run.
    Bench(bench::BenchArgs),
    /// The capacity plan as commands: web and worker load scenarios and a simulation of
    /// the worker tier's scaling policy, each writing a report with plots under
    /// target/capacity/.
    Capacity(capacity::CapacityArgs),
    /// Deploy to AWS: build release binaries of the API and the worker, publish them to
    /// the stack's bucket, run `provision up` with that release (rolling instances on a
    /// new one), wait for healthy instances, print the URL. Never prompts.
    Up(deploy::UpArgs),
    /// Delete the whole AWS stack (`provision down`); asks first unless --yes.
    Down(deploy::DownArgs),
    /// Rehearse a deploy on this machine (as root, on Debian 12): `up` against moto, then
    /// a web and a worker instance booted as systemd containers from the launch
    /// templates' user data, and a smoke flow through the web instance's nginx.
    /// Installs debootstrap and systemd-container if missing; caches a Debian 12 root
    /// filesystem under target/rehearse.
    Rehearse(rehearse::RehearseArgs),
    /// Run `provision` with these arguments (e.g. `cargo xtask provision status`), built
    /// the way the tests and `up` build it, so no AWS SDK crate is compiled twice.
    #[command(disable_help_flag = true)]
    Provision {
        /// Arguments for provision; `--help` is provision's own.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match find_project_root() {
        Ok(root) => {
            PROJECT_ROOT.get_or_init(|| root);
            run(cli.command)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; the exit code is 0 unless the command has its own (provision's).
fn run(command: Command) -> anyhow::Result<u8> {
    let result = match command {
        Command::Dev(args) => dev::run(args),
        Command::Ci(args) => ci::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Capacity(args) => capacity::run(args),
        Command::Up(args) => deploy::up(args),
        Command::Down(args) => deploy::down(args),
        Command::Rehearse(args) => rehearse::run(args),
        // provision's exit code is its answer (status: 0 in sync, 2 drift): pass it on.
        Command::Provision { args } => return deploy::provision(&args),
    };
    result.map(|()| 0)
}

static PROJECT_ROOT: OnceLock<PathBuf> = OnceLock::new();

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
fn find_project_root() -> anyhow::Result<PathBuf> {
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
    let manifest = system::output(
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
