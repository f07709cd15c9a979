//! `cargo xtask`: the project's automation, in Rust rather than shell scripts.
//!
//! Architecture invariant: xtask drives the other crates by running them (cargo, their
//! binaries), never by linking them.

mod api_client;
mod bench;
mod capacity;
mod ci;
mod collection;
mod deploy;
mod dev;
mod media;
mod paths;
mod postgres;
mod rehearse;
mod system;
mod table;
#[cfg(test)]
mod tidy;
mod tools;

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
    /// Run the Postman collection of the whole REST contract (collections/) with newman
    /// against `cargo xtask dev` (started on a free port and stopped after), or against
    /// --base-url. Installs newman with npm under target/tools the first time.
    Collection(collection::CollectionArgs),
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
    let result = match paths::find_project_root() {
        Ok(root) => {
            paths::PROJECT_ROOT.get_or_init(|| root);
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
        Command::Collection(args) => collection::run(args),
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
