//! `cargo xtask capacity worker`: videos a minute the worker tier processes, and its
//! service time, on this machine ([`local`]) or on a deployed stack ([`deployed`]); both
//! upload the same generated input, and the simulator reads what they measured.

mod deployed;
mod local;

use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// A deployed stack's URL: its worker tier is measured as deployed (instances, jobs
    /// per worker, scaling), with videos uploaded through the API by a new player. They
    /// stay public once processed: use a test stack.
    #[arg(long)]
    target: Option<String>,
    /// Size of each video: 50MB or 100MB (60 s of 1080p30, noise, real H.264 + AAC).
    #[arg(long, default_value = "50MB", value_parser = ["50MB", "100MB"])]
    pub(crate) size: String,
    /// Locally: videos in the saturation backlog, per concurrent job.
    #[arg(long, default_value_t = 4, conflicts_with = "target")]
    backlog_per_job: usize,
    /// Locally: videos uploaded at a steady rate in the sustained phase, per concurrent job.
    #[arg(long, default_value_t = 4, conflicts_with = "target")]
    sustained_per_job: usize,
    /// With --target: videos in the saturation backlog, and again in the sustained phase
    /// (default 12; 2 with --quick).
    #[arg(long, requires = "target")]
    pub(crate) videos: Option<usize>,
    /// Short 5 s videos (locally: concurrency 1 and 2 only, a debug build): checks the
    /// scenario, does not measure capacity (CI runs it).
    #[arg(long)]
    pub(crate) quick: bool,
    #[command(flatten)]
    pub(crate) cloudwatch: crate::capacity::cloudwatch::CloudWatchArgs,
}

/// What one concurrency level did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Level {
    pub concurrency: usize,
    pub videos_per_min: f64,
    pub mean_service_s: f64,
    pub p95_service_s: f64,
    /// Machine CPU while saturated (100 = every core busy).
    pub cpu_percent: f64,
    /// Sustained phase: arrival rate (videos/min), and the queue's trend (videos/min,
    /// least-squares slope of the waiting count; ≈ 0 when the tier keeps up).
    pub sustained_rate: f64,
    pub queue_trend_per_min: f64,
    pub service_times_s: Vec<f64>,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    crate::system::ensure_installed(&["ffmpeg", "ffprobe"], "ffmpeg")?;
    match super::Target::of(args.target.as_deref())? {
        super::Target::Deployed(base) => deployed::run(&args, &base),
        super::Target::Local => local::run(&args),
    }
}

/// 60 s (quick: 5 s) of 1080p30 noise with sound, at the bitrate that makes `size`.
pub(crate) fn input_video(work: &Path, size: &str, quick: bool) -> anyhow::Result<PathBuf> {
    let megabytes: f64 = size.trim_end_matches("MB").parse()?;
    let seconds = if quick { 5.0 } else { 60.0 };
    let megabytes = if quick { megabytes / 12.0 } else { megabytes };
    let kbps = (megabytes * 8000.0 / seconds - 128.0).max(500.0) as u32;
    let path = work.join(format!("worker-input-{megabytes:.0}mb-{seconds:.0}s.mp4"));
    crate::media::generate_once(
        &crate::media::Clip {
            width: 1920,
            height: 1080,
            seconds: seconds as u32,
            kbps: Some(kbps),
            noise: 12,
            preset: "ultrafast",
            audio: true,
            tagged_bt709: false,
        },
        &path,
        &format!("a {megabytes:.0} MB, {seconds:.0} s input"),
    )?;
    Ok(path)
}

/// The mean service time (s) at one job per worker from the newest worker report.
pub fn measured_service_times() -> Option<(PathBuf, Vec<f64>)> {
    let dir = crate::capacity::latest_report("worker")?;
    let levels: Vec<Level> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("levels.json")).ok()?).ok()?;
    let first = levels.into_iter().find(|l| l.concurrency == 1)?;
    Some((dir, first.service_times_s))
}

/// A queue's trend per minute, read: "+0.10/min (≈ 0 or falling: keeps up)".
fn queue_trend(per_minute: f64) -> String {
    let verdict = if per_minute < 0.5 {
        "≈ 0 or falling: keeps up"
    } else {
        "grows"
    };
    format!("{per_minute:+.2}/min ({verdict})")
}
