//! `cargo xtask`: the project's automation, in Rust rather than shell scripts.
//!
//! Architecture invariant: xtask drives the other crates by running them (cargo, their
//! binaries), never by linking them.

// This crate's whole job is running other programs.
#![allow(clippy::disallowed_methods)]

mod bench;
mod bench_provision;
mod bench_worker;
mod ci;
mod deploy;
mod dev;
mod postgres;
mod system;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    /// Deploy to AWS: build release binaries of the API and the worker, publish them to
    /// the stack's bucket, run `provision up` with that release (rolling instances on a
    /// new one), wait for healthy instances, print the URL. Never prompts.
    Up(deploy::UpArgs),
    /// Delete the whole AWS stack (`provision down`); asks first unless --yes.
    Down(deploy::DownArgs),
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
    let result = match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Ci(args) => ci::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Up(args) => deploy::up(args),
        Command::Down(args) => deploy::down(args),
        // provision's exit code is its answer (status: 0 in sync, 2 drift): pass it on.
        Command::Provision { args } => match deploy::provision(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask's manifest sits one level below it).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Scratch space for xtask (private clusters, tools, bench inputs): always `<root>/target`.
pub fn scratch_dir() -> PathBuf {
    project_root().join("target")
}
