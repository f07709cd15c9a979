//! Ours next to the common command many implementations of this design run, on the same
//! file in the same run: time and SSIM of the main part.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::GOAL_VS_COMMON;
use crate::bench::verdict;
use crate::paths::scratch_dir;
use crate::system::{output, run_command};

/// How much slower than the common command `--guard` lets ours be.
pub const GUARD_MAX_RATIO: f64 = 1.25;

/// Length of the `--quick` reference.
const QUICK_SECONDS: u32 = 10;

/// `--quick`: the worker's own ffmpeg runs (`worker transcode`: main part + join) and the
/// common command on a 10 s 1080p reference, in turn, three rounds; returns ours / common
/// of the medians. The debug build will do: the time is ffmpeg's.
pub fn side_by_side() -> anyhow::Result<f64> {
    let mut built = crate::system::build_binaries(&["worker"], false)?;
    let worker_bin = built.remove("worker").context("worker")?;
    let work = scratch_dir().join("bench-quick");
    std::fs::create_dir_all(&work)?;
    let reference = work.join("reference-10s-1080p.mp4");
    crate::media::generate_once(
        &crate::media::Clip {
            width: 1920,
            height: 1080,
            seconds: QUICK_SECONDS,
            kbps: Some(6500),
            noise: 12,
            preset: "ultrafast",
            audio: true,
            tagged_bt709: false,
        },
        &reference,
        "the 10 s 1080p reference input",
    )?;
    let ours_out = work.join("ours.mp4");
    let common_out = work.join("common-command.mp4");
    let logo = work.join("transcode/anb-logo.png");
    let (mut ours, mut common) = (Vec::new(), Vec::new());
    for round in 1..=3 {
        eprintln!("xtask: bench worker --quick: round {round} of 3");
        ours.extend(transcode_runs(
            &worker_bin,
            &reference,
            &ours_out,
            &work.join("transcode"),
            1,
        )?);
        common.push(time(&mut common_command(&reference, &logo, &common_out))?);
    }
    ours.sort();
    common.sort();
    let (ours, common) = (ours[1], common[1]);
    let ours_ssim = main_segment_ssim(
        &ours_out,
        &reference,
        INTRO_SECONDS,
        QUICK_SECONDS,
        Geometry::Even,
    )?;
    let common_ssim = main_segment_ssim(
        &common_out,
        &reference,
        COMMON_BUMPER_SECONDS,
        QUICK_SECONDS,
        Geometry::Exact,
    )?;
    let ratio = ours.as_secs_f64() / common.as_secs_f64();
    println!("\n== cargo xtask bench worker --quick ==");
    println!("Reference input: 10 s, 1920×1080, 30 fps, untagged H.264 + AAC; median of 3 rounds, in turn:");
    println!("                                 time      SSIM of the main part");
    println!(
        "  ours (worker transcode)     {:>6.2} s   {ours_ssim:.4}",
        ours.as_secs_f64()
    );
    println!(
        "  common command              {:>6.2} s   {common_ssim:.4}",
        common.as_secs_f64()
    );
    println!("  ours / common               {ratio:>6.2}×");
    Ok(ratio)
}

/// Ours (the worker's ffmpeg runs) next to the common command on what a phone uploads:
/// 30 s of 1080×1920 portrait, tagged BT.709. Ours keeps BT.709 (nothing to convert) and
/// so does the common command, so both are compared with the source as it is.
pub struct PhoneComparison {
    ours: Duration,
    ours_ssim: f64,
    common: Duration,
    common_ssim: f64,
}

impl PhoneComparison {
    pub fn measure(worker_bin: &Path, work: &Path, logo: &Path) -> anyhow::Result<Self> {
        let clip = work.join("phone-30s-1080x1920-bt709.mp4");
        crate::media::generate_once(
            &crate::media::Clip {
                width: 1080,
                height: 1920,
                seconds: 30,
                kbps: Some(8000),
                noise: 12,
                preset: "ultrafast",
                audio: true,
                tagged_bt709: true,
            },
            &clip,
            "a 30 s phone-like portrait clip tagged BT.709",
        )?;
        let ours_out = work.join("phone-ours.mp4");
        let runs = transcode_runs(
            worker_bin,
            &clip,
            &ours_out,
            &work.join("transcode-phone"),
            2,
        )?;
        let ours = runs.iter().sum::<Duration>() / 2;
        let common_out = work.join("phone-common.mp4");
        let common = common_command_mean(&clip, logo, &common_out, 2)?;
        Ok(Self {
            ours,
            ours_ssim: main_segment_ssim(&ours_out, &clip, INTRO_SECONDS, 30, Geometry::Even)?,
            common,
            common_ssim: main_segment_ssim(
                &common_out,
                &clip,
                COMMON_BUMPER_SECONDS,
                30,
                Geometry::Exact,
            )?,
        })
    }

    pub fn print(&self) {
        let ratio = self.ours.as_secs_f64() / self.common.as_secs_f64();
        println!("Phone-like clip (30 s 1080×1920 portrait, tagged BT.709), mean of 2, same run:");
        println!(
            "  ours, bare ffmpeg          {:>6.2} s   {:.4}",
            self.ours.as_secs_f64(),
            self.ours_ssim
        );
        println!(
            "  common command             {:>6.2} s   {:.4}",
            self.common.as_secs_f64(),
            self.common_ssim
        );
        println!(
            "  ours / common              {ratio:>6.2}×   [goal ≤ {GOAL_VS_COMMON}× at SSIM ≥ common − 0.001: {}]",
            verdict(ratio <= GOAL_VS_COMMON && self.ours_ssim >= self.common_ssim - 0.001)
        );
    }
}

/// Seconds of each `worker transcode` run (main part + join) of `input`, `runs` times.
pub fn transcode_runs(
    worker_bin: &Path,
    input: &Path,
    result: &Path,
    work_dir: &Path,
    runs: u32,
) -> anyhow::Result<Vec<Duration>> {
    let _ = std::fs::remove_dir_all(work_dir);
    let printed = output(
        crate::system::command(worker_bin)
            .args(["transcode", "--runs", &runs.to_string(), "--input"])
            .arg(input)
            .arg("--output")
            .arg(result)
            .arg("--work-dir")
            .arg(work_dir),
    )?;
    printed
        .lines()
        .map(|line| line.trim().parse().map(Duration::from_secs_f64))
        .collect::<Result<_, _>>()
        .context("worker transcode printed something other than seconds")
}

/// Our opening bumper (the default `worker.intro`), skipped to reach the main part.
pub const INTRO_SECONDS: f64 = 2.5;
/// The common command's bumpers.
pub const COMMON_BUMPER_SECONDS: f64 = 2.5;

/// The one command many implementations of this design run: the first 30 s, scaled and
/// padded to 1280×720, the logo overlaid, 2.5 s bumpers before and after, x264
/// `ultrafast` at CRF 28, no audio.
pub fn common_command(reference: &Path, logo: &Path, out: &Path) -> Command {
    let bumper = format!("color=c=black:s=1280x720:r=30:d={COMMON_BUMPER_SECONDS}");
    let graph = "[1:v]scale=1280:720:force_original_aspect_ratio=decrease,\
                 pad=1280:720:(ow-iw)/2:(oh-ih)/2,setsar=1,fps=30[scaled];\
                 [scaled][3:v]overlay=W-w-20:20[main];\
                 [0:v]setsar=1[intro];[2:v]setsar=1[outro];\
                 [intro][main][outro]concat=n=3:v=1:a=0,format=yuv420p[out]";
    let mut command = crate::system::command("ffmpeg");
    command
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", &bumper])
        .args(["-t", "30", "-i"])
        .arg(reference)
        .args(["-f", "lavfi", "-i", &bumper])
        .arg("-i")
        .arg(logo)
        .args(["-filter_complex", graph, "-map", "[out]"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "28",
            "-an",
        ])
        .args(["-movflags", "+faststart"])
        .arg(out);
    command
}

/// How an output scaled the source's picture, so that the reference is scaled the same
/// way and a one-pixel difference in width (a portrait clip is 405 pixels wide at 720
/// high; ours rounds to 404, as yuv420p needs) is not counted as a loss of quality.
#[derive(Debug, Clone, Copy)]
pub enum Geometry {
    /// To even dimensions: ours.
    Even,
    /// To the exact fit: the common command.
    Exact,
}

/// SSIM (ffmpeg's `ssim` filter, "All") of the `seconds` after `skip` seconds of
/// `output` against the source's first `seconds` brought to the same 1280×720 geometry. The
/// bench's sources are HD that is (or is taken as) BT.709 like both outputs, so no side's
/// samples need a colour conversion to be compared.
pub fn main_segment_ssim(
    output: &Path,
    source: &Path,
    skip: f64,
    seconds: u32,
    geometry: Geometry,
) -> anyhow::Result<f64> {
    let even = match geometry {
        Geometry::Even => ":force_divisible_by=2",
        Geometry::Exact => "",
    };
    let graph = format!(
        "[0:v]trim=start={skip}:duration={seconds},setpts=PTS-STARTPTS,format=yuv420p[a];\
         [1:v]scale=1280:720:force_original_aspect_ratio=decrease{even},\
         pad=1280:720:(ow-iw)/2:(oh-ih)/2,setsar=1,fps=30,trim=duration={seconds},\
         setpts=PTS-STARTPTS,format=yuv420p[b];[a][b]ssim"
    );
    let out = crate::system::command("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-i"])
        .arg(output)
        .args(["-t", &seconds.to_string(), "-i"])
        .arg(source)
        .args(["-filter_complex", &graph, "-f", "null", "-"])
        .output()
        .context("run ffmpeg's ssim filter")?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .rev()
        .find_map(|line| line.split("All:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no SSIM in ffmpeg's output: {}", text.trim()))
}

/// Mean time of `runs` runs of the common command on `input`.
pub fn common_command_mean(
    input: &Path,
    logo: &Path,
    out: &Path,
    runs: u32,
) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for _ in 0..runs {
        total += time(&mut common_command(input, logo, out))?;
    }
    Ok(total / runs)
}

pub fn time(command: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    run_command(command)?;
    Ok(started.elapsed())
}
