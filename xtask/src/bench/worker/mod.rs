//! `cargo xtask bench worker`: how long the worker takes per video, next to the floor of
//! what ffmpeg alone needs for the same output, both measured in this run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

mod compare;

use compare::{
    common_command_mean, main_segment_ssim, time, transcode_runs, Geometry, PhoneComparison,
    COMMON_BUMPER_SECONDS, GUARD_MAX_RATIO, INTRO_SECONDS,
};

use super::verdict;
use crate::api_client;
use crate::paths::scratch_dir;
use crate::postgres::PrivateCluster;
use crate::system::stop;
use crate::system::{ensure_installed, output};

const GOAL_VIDEOS_PER_MIN: f64 = 8.0;
const GOAL_OVERHEAD: f64 = 1.15;
/// Ours end to end against the common command, on the same file in the same run.
const GOAL_VS_COMMON: f64 = 0.95;
/// Upload's 201 → processed for the 5 s clip, median, on an idle worker.
const GOAL_SHORT_CLIP_P50: Duration = Duration::from_millis(1100);

pub fn run(args: &super::WorkerBench) -> anyhow::Result<()> {
    ensure_installed(&["ffmpeg", "ffprobe"], "ffmpeg")?;
    let ratio = if args.quick {
        compare::side_by_side()?
    } else {
        full(args.videos)?
    };
    if args.guard {
        if ratio > GUARD_MAX_RATIO {
            bail!(
                "the worker takes {ratio:.2}× the common command's time on the same file, over \
                 the guard's {GUARD_MAX_RATIO}×: a change made it slower (see the figures above)"
            );
        }
        println!("Guard: ours / common {ratio:.2}× ≤ {GUARD_MAX_RATIO}×: passed");
    }
    Ok(())
}

/// The whole bench; returns ours end to end / the common command.
fn full(videos: usize) -> anyhow::Result<f64> {
    let mut built = crate::system::build_binaries(&["worker", "api"], true)?;
    let worker_bin = built.remove("worker").context("worker")?;
    let api_bin = built.remove("api").context("api")?;
    let work = scratch_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let reference = reference_input(&work)?;
    let reference_mb = std::fs::metadata(&reference)?.len() as f64 / 1e6;

    // Floors, measured on the same file in this run.
    let decode = time(
        crate::system::command("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-t", "30", "-i"])
            .arg(&reference)
            .args(["-an", "-f", "null", "-"]),
    )?;
    let floor_out = work.join("floor.mp4");
    // Two runs, averaged: this machine's timings vary by several percent run to run. The
    // worker's own `transcode` runs exactly a job's ffmpeg steps (main part + join; the
    // bumpers are encoded once before).
    let runs = transcode_runs(
        &worker_bin,
        &reference,
        &floor_out,
        &work.join("transcode"),
        2,
    )?;
    let floor = runs.iter().sum::<Duration>() / runs.len() as u32;
    let logo = work.join("transcode/anb-logo.png");
    let mut short_floor = transcode_runs(
        &worker_bin,
        &short_clip(&work)?,
        &work.join("short.mp4"),
        &work.join("transcode-short"),
        5,
    )?;
    short_floor.sort();

    let (floor_mb, floor_seconds) = probe_output(&floor_out)?;

    // The single command many implementations of this design run, on the same file.
    let common_out = work.join("common-command.mp4");
    let common = common_command_mean(&reference, &logo, &common_out, 2)?;
    let (common_mb, common_seconds) = probe_output(&common_out)?;
    let ours_ssim = main_segment_ssim(&floor_out, &reference, INTRO_SECONDS, 30, Geometry::Even)?;
    let common_ssim = main_segment_ssim(
        &common_out,
        &reference,
        COMMON_BUMPER_SECONDS,
        30,
        Geometry::Exact,
    )?;
    let phone = PhoneComparison::measure(&worker_bin, &work, &logo)?;

    let cluster = PrivateCluster::start(&scratch_dir().join("bench-postgres"), 54331, "postgres")?;
    cluster.drop_database("anb_bench_worker")?;
    cluster.create_database("anb_bench_worker")?;
    let storage = work.join("worker-storage");
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(storage.join("original"))?;
    let log_path = work.join("worker.log");
    let mut worker = crate::system::command(&worker_bin)
        .env("APP__DATABASE__URL", cluster.url("anb_bench_worker"))
        .env("APP__STORAGE__LOCAL_DIR", &storage)
        .env("APP__LOG__FORMAT", "json")
        .env("APP__LOG__FILTER", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path)?)
        .spawn()
        .context("cannot start the worker")?;
    let measured = measure(&cluster, &storage, &reference, videos);
    let latencies = measured
        .as_ref()
        .ok()
        .map(|_| short_clip_latencies(&api_bin, &cluster, &storage, &work));
    stop(&mut worker);
    let (elapsed, ids) = measured?;
    let mut latencies = latencies.context("no short clips measured")??;
    latencies.sort();
    let (out_mb, out_seconds) = probe_output(&storage.join(format!("processed/{}.mp4", ids[0])))?;
    let jobs = job_lines(&log_path)?;

    let per_video = elapsed / videos as u32;
    let per_min = 60.0 / per_video.as_secs_f64();
    let ratio = per_video.as_secs_f64() / floor.as_secs_f64();
    println!(
        "\n== cargo xtask bench worker ({} cores) ==",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("Reference input: 60 s, 1920×1080, 30 fps, H.264 + AAC, {reference_mb:.1} MB");
    println!("Floor (same run, same file):");
    println!(
        "  decode only, first 30 s                 {:>6.2} s",
        decode.as_secs_f64()
    );
    println!(
        "  bare ffmpeg, same output, mean of 2   {:>6.2} s  ({floor_mb:.1} MB, {floor_seconds:.2} s)",
        floor.as_secs_f64()
    );
    println!(
        "Worker, {videos} videos queued at once (queue → processed, local storage, PostgreSQL):"
    );
    println!(
        "  wall clock                  {:>6.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  per video                   {:>6.2} s   [goal ≤ 7.5 s]",
        per_video.as_secs_f64()
    );
    println!("  throughput                  {per_min:>6.2} videos/min   [goal ≥ {GOAL_VIDEOS_PER_MIN}: {}]", verdict(per_min >= GOAL_VIDEOS_PER_MIN));
    println!(
        "  worker / bare ffmpeg        {ratio:>6.2}×   [goal ≤ {GOAL_OVERHEAD}×: {}]",
        verdict(ratio <= GOAL_OVERHEAD)
    );
    for (i, job) in jobs.iter().enumerate() {
        println!(
            "  job {}: download {} ms, ffmpeg {} ms, upload {} ms, total {} ms",
            i + 1,
            job[0],
            job[1],
            job[2],
            job[3]
        );
    }
    println!(
        "Output: {out_mb:.2} MB, {out_seconds:.2} s, {:.0} kbit/s average (cap 4000)",
        out_mb * 8000.0 / out_seconds
    );
    let p50 = super::percentile(&latencies, 0.5);
    println!(
        "Short clip (5 s 720p, idle worker), upload's 201 → processed over {}: p50 {:.2} s, max {:.2} s   [goal p50 ≤ {:.1} s: {}]",
        latencies.len(),
        p50.as_secs_f64(),
        latencies.last().copied().unwrap_or_default().as_secs_f64(),
        GOAL_SHORT_CLIP_P50.as_secs_f64(),
        verdict(p50 <= GOAL_SHORT_CLIP_P50)
    );
    println!(
        "  of which ffmpeg alone (worker transcode, main part + join), median of {}: {:.2} s",
        short_floor.len(),
        super::percentile(&short_floor, 0.5).as_secs_f64()
    );
    let kbits = |mb: f64, seconds: f64| mb * 8000.0 / seconds;
    println!("Quality and speed next to the common command (`-t 30`, scale/pad, overlay, ultrafast crf 28, 2.5 s bumpers), same file, same run:");
    println!("                                time      SSIM of the 30 s main part   bitrate");
    println!(
        "  ours, bare ffmpeg          {:>6.2} s   {ours_ssim:.4}                       {:>5.0} kbit/s",
        floor.as_secs_f64(),
        kbits(floor_mb, floor_seconds)
    );
    println!(
        "  ours, queue → processed    {:>6.2} s",
        per_video.as_secs_f64()
    );
    println!(
        "  common command             {:>6.2} s   {common_ssim:.4}                       {:>5.0} kbit/s",
        common.as_secs_f64(),
        kbits(common_mb, common_seconds)
    );
    let speed = per_video.as_secs_f64() / common.as_secs_f64();
    let same_quality = ours_ssim >= common_ssim - 0.001;
    let within_cap = kbits(floor_mb, floor_seconds) <= 4000.0;
    println!(
        "  ours end to end / common   {speed:>6.2}×   [goal ≤ {GOAL_VS_COMMON}× at SSIM ≥ common − 0.001 and ≤ 4 Mbit/s: {}]",
        verdict(speed <= GOAL_VS_COMMON && same_quality && within_cap)
    );
    phone.print();
    println!("For context: published Python/Celery versions of this design do 1.2–5.4 videos/min per 2-vCPU worker.");
    Ok(speed)
}

/// How many short clips are timed from upload to processed.
const SHORT_CLIPS: usize = 10;

/// Starts the API on the worker's database and storage, uploads a 5 s 720p clip
/// `SHORT_CLIPS` times, one at a time, and times each from the upload's 201 until the
/// API reports it processed (polled every 10 ms).
fn short_clip_latencies(
    api_bin: &Path,
    cluster: &PrivateCluster,
    storage: &Path,
    work: &Path,
) -> anyhow::Result<Vec<Duration>> {
    let clip = short_clip(work)?;
    let (mut api, base) =
        crate::system::local_api(api_bin, &cluster.url("anb_bench_worker"), storage)?;
    let mut api = api.spawn().context("cannot start the API")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        crate::system::wait_healthy(&mut api, &base).await?;
        let client = reqwest::Client::new();
        let token =
            api_client::signup_and_login(&client, &base, "Bench", "bench@example.com").await?;
        let bytes = tokio::fs::read(&clip).await?;
        let mut latencies = Vec::new();
        for i in 0..SHORT_CLIPS {
            let id =
                api_client::upload(&client, &base, &token, bytes.clone(), &format!("short {i}"))
                    .await?;
            let created = Instant::now();
            loop {
                let detail = api_client::video(&client, &base, &token, &id).await?;
                match detail["status"].as_str() {
                    Some("processed") => break,
                    Some("failed") => bail!("short clip {i} failed: {detail}"),
                    _ if created.elapsed() > Duration::from_secs(60) => {
                        bail!("short clip {i} not processed in 60 s")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            latencies.push(created.elapsed());
        }
        Ok::<_, anyhow::Error>(latencies)
    });
    stop(&mut api);
    result
}

/// What a phone records: 720p30 H.264 at 8 Mbit/s with AAC sound (noise, so it is not
/// trivially compressible), about 5 MB; made once.
fn short_clip(work: &Path) -> anyhow::Result<PathBuf> {
    let clip = work.join("short-5s-720p-8mbps.mp4");
    crate::media::generate_once(
        &crate::media::Clip {
            width: 1280,
            height: 720,
            seconds: 5,
            kbps: Some(8000),
            noise: 12,
            preset: "veryfast",
            audio: true,
            tagged_bt709: false,
        },
        &clip,
        "a 5 s 720p clip",
    )?;
    Ok(clip)
}

/// 60 s of 1080p30 H.264 with noise (not trivially compressible) and an audio track,
/// about 50 MB; made once.
fn reference_input(work: &Path) -> anyhow::Result<PathBuf> {
    let path = work.join("reference-60s-1080p.mp4");
    crate::media::generate_once(
        &crate::media::Clip {
            width: 1920,
            height: 1080,
            seconds: 60,
            kbps: Some(6500),
            noise: 12,
            preset: "ultrafast",
            audio: true,
            tagged_bt709: false,
        },
        &path,
        "the 60 s 1080p reference input",
    )?;
    Ok(path)
}

/// (size in MB, duration in seconds) of a produced file.
fn probe_output(path: &Path) -> anyhow::Result<(f64, f64)> {
    let mb = std::fs::metadata(path)?.len() as f64 / 1e6;
    let seconds: f64 = output(
        crate::system::command("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "default=nw=1:nk=1",
            ])
            .arg(path),
    )?
    .trim()
    .parse()
    .context("ffprobe duration")?;
    Ok((mb, seconds))
}

/// Queues `videos` copies of the reference once the worker has created the schema, and
/// waits until all are processed. Returns the time from queueing to the last one done.
fn measure(
    cluster: &PrivateCluster,
    storage: &Path,
    reference: &Path,
    videos: usize,
) -> anyhow::Result<(Duration, Vec<String>)> {
    let db = "anb_bench_worker";
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster
        .execute(
            db,
            "SELECT to_regclass('public.queue_messages') IS NOT NULL",
        )?
        .trim()
        != "t"
    {
        if Instant::now() > deadline {
            bail!("the worker did not create the schema");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let owner = cluster.execute(db, "INSERT INTO users (id, email, password_hash, first_name, last_name, city, country) \
        VALUES (gen_random_uuid(), 'bench-queue@example.com', 'x', 'Bench', 'Queue', 'Cali', 'Colombia') RETURNING id")?;
    let owner = owner.lines().next().unwrap_or_default().trim().to_owned();
    let mut ids = Vec::new();
    for _ in 0..videos {
        let id = cluster
            .execute(db, "SELECT gen_random_uuid()")?
            .trim()
            .to_owned();
        std::fs::copy(reference, storage.join(format!("original/{id}.mp4")))?;
        cluster.execute(
            db,
            &format!(
                "INSERT INTO videos (id, owner_id, title) VALUES ('{id}', '{owner}', 'bench')"
            ),
        )?;
        ids.push(id);
    }
    let jobs: Vec<String> = ids
        .iter()
        .map(|id| format!("('video-processing', '{{\"video_id\":\"{id}\",\"original_key\":\"original/{id}.mp4\",\"enqueued_at\":\"2026-01-01T00:00:00Z\"}}')"))
        .collect();
    // The server's clock times the run, from the jobs' insert to the last `processed_at`:
    // the poll below only notices the end, and can be slow enough (a psql process each
    // time) not to take the worker's CPU.
    let queued_at = cluster
        .execute(
            db,
            &format!(
                "INSERT INTO queue_messages (queue, body) VALUES {} RETURNING now()",
                jobs.join(", ")
            ),
        )?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60 * videos as u64 + 60);
    loop {
        let counts = cluster.execute(db, "SELECT count(*) FILTER (WHERE status = 'processed'), count(*) FILTER (WHERE status = 'failed') FROM videos")?;
        let (done, failed) = counts.trim().split_once('|').unwrap_or(("0", "0"));
        if failed != "0" {
            bail!("{failed} video(s) failed; see the worker log");
        }
        if done == videos.to_string() {
            let seconds: f64 = cluster
                .execute(
                    db,
                    &format!(
                        "SELECT extract(epoch FROM max(processed_at) - '{queued_at}'::timestamptz) FROM videos"
                    ),
                )?
                .trim()
                .parse()
                .context("the run's length from processed_at")?;
            return Ok((Duration::from_secs_f64(seconds), ids));
        }
        if Instant::now() > deadline {
            bail!("only {done} of {videos} videos were processed in time");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// [download, ffmpeg, upload, total] in ms from each "job finished" log line.
fn job_lines(log: &Path) -> anyhow::Result<Vec<[u64; 4]>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["message"] == "job finished")
        .map(|v| {
            ["download_ms", "ffmpeg_ms", "upload_ms", "total_ms"]
                .map(|k| v[k].as_u64().unwrap_or(0))
        })
        .collect())
}
