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

/// A test input the benchmarks and capacity runs upload: lavfi's `testsrc2` with temporal
/// noise (so the encoder cannot make it trivially small), H.264 yuv420p at a constant
/// bitrate, with a 440 Hz tone in AAC when `audio`.
pub struct NoiseClip {
    pub width: u32,
    pub height: u32,
    pub seconds: u32,
    pub kbps: u32,
    /// Strength of the noise filter (`alls`).
    pub noise: u32,
    pub preset: &'static str,
    pub audio: bool,
    /// Tags the stream BT.709 at limited range, as phones do; untagged otherwise, as many
    /// encoders leave HD.
    pub tagged_bt709: bool,
}

impl NoiseClip {
    /// Makes `path` unless it exists (see [`generate_once`]).
    pub fn generate_once(&self, path: &Path, what: &str) -> anyhow::Result<()> {
        let Self {
            width,
            height,
            seconds,
            kbps,
            noise,
            preset,
            audio,
            tagged_bt709,
        } = self;
        let mut args: Vec<String> = [
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            format!("testsrc2=size={width}x{height}:rate=30:duration={seconds}"),
        ]
        .into();
        if *audio {
            args.extend([
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                format!("sine=frequency=440:duration={seconds}"),
            ]);
        }
        args.extend([
            "-vf".into(),
            format!("noise=alls={noise}:allf=t"),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            (*preset).into(),
            "-b:v".into(),
            format!("{kbps}k"),
            "-maxrate".into(),
            format!("{kbps}k"),
            "-bufsize".into(),
            format!("{}k", kbps * 2),
            "-pix_fmt".into(),
            "yuv420p".into(),
        ]);
        if *tagged_bt709 {
            args.extend(
                [
                    "-colorspace",
                    "bt709",
                    "-color_primaries",
                    "bt709",
                    "-color_trc",
                    "bt709",
                    "-color_range",
                    "tv",
                ]
                .map(String::from),
            );
        }
        if *audio {
            args.extend(["-c:a", "aac", "-b:a", "128k", "-shortest"].map(String::from));
        }
        args.extend(["-movflags", "+faststart"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        generate_once(path, what, &args)
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
