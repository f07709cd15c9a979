//! `cargo xtask bench …`: figures with ratios to a baseline measured in the same run.

mod api;
mod provision;
mod worker;

use std::time::Duration;

use clap::{Args, Subcommand};

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
pub struct WorkerBench {
    /// Videos the worker processes in the measured run.
    #[arg(long, default_value_t = 5)]
    videos: usize,
    /// Only the side-by-side check (about a minute): the worker's ffmpeg runs against the
    /// common command on a 10 s 1080p reference, three rounds each, in turn.
    #[arg(long)]
    quick: bool,
    /// Exit non-zero when ours takes more than 1.25× the common command measured in the
    /// same run (end to end; with --quick, the worker's ffmpeg runs). Both are measured
    /// side by side, so a slow or busy machine moves both.
    #[arg(long)]
    guard: bool,
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

/// `cargo xtask bench worker --quick --guard`, as CI runs it.
pub fn worker_guard() -> anyhow::Result<()> {
    worker::run(&WorkerBench {
        videos: 0,
        quick: true,
        guard: true,
    })
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.target {
        BenchTarget::Api(api) => api::bench_api(api),
        BenchTarget::Worker(worker) => worker::run(&worker),
        BenchTarget::Provision => provision::run(),
    }
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets goal"
    } else {
        "BELOW GOAL"
    }
}

/// Nearest-rank p-quantile of durations (see `capacity::stats`); zero for none.
pub(crate) fn percentile(durations: &[Duration], p: f64) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    match capacity::stats::nearest_rank(sorted.len(), p) {
        0 => Duration::ZERO,
        rank => sorted[rank - 1],
    }
}
