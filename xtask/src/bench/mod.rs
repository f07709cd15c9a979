//! `cargo xtask bench …`: figures with ratios to a baseline measured in the same run.

mod api;
mod provision;
mod worker;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::system::run_command;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// The API (release build, local storage, private PostgreSQL): upload throughput and
    /// memory, then public read throughput and latency.
    Api(ApiBench),
    /// The worker (release build, local storage, private PostgreSQL): end-to-end time per
    /// reference video against the bare ffmpeg floor and a decode-only run.
    Worker(WorkerBench),
    /// `provision` against moto: wall time and AWS calls of up, a no-op up, status, plan
    /// and down.
    Provision,
}

#[derive(Debug, Args)]
struct WorkerBench {
    /// Videos the worker processes in the measured run.
    #[arg(long, default_value_t = 5)]
    videos: usize,
}

#[derive(Debug, Args)]
struct ApiBench {
    /// Concurrent uploading clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long the upload phase runs, in seconds.
    #[arg(long, default_value_t = 20)]
    upload_seconds: u64,
    /// Open connections in the read phase.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// How long each read measurement runs, in seconds.
    #[arg(long, default_value_t = 15)]
    read_seconds: u64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.target {
        BenchTarget::Api(api) => api::bench_api(api),
        BenchTarget::Worker(worker) => worker::run(worker.videos),
        BenchTarget::Provision => provision::run(),
    }
}

/// Runs ffmpeg with `args` to make `path` unless it exists; writes to a partial file first
/// so an interrupted run never leaves a half file under the final name.
pub fn generate_once(path: &Path, what: &str, args: &[&str]) -> anyhow::Result<()> {
    if path.is_file() {
        return Ok(());
    }
    eprintln!("xtask: generating {what} (once)");
    let partial = path.with_extension("partial.mp4");
    run_command(
        Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
            .args(args)
            .arg(&partial),
    )?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets goal"
    } else {
        "BELOW GOAL"
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}
