//! `cargo xtask capacity worker` on this machine: videos a minute the worker tier
//! processes, and its service time, with 1, 2 and 4 jobs at once per worker (the real
//! worker binary, release build, private PostgreSQL, local storage).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{input_video, Level, WorkerArgs};
use crate::capacity::{machine_cpu, plot, Report};
use crate::paths::scratch_dir;
use crate::postgres::PrivateCluster;
use crate::system::stop;

const DATABASE: &str = "anb_capacity_worker";

pub(super) fn run(args: &WorkerArgs) -> anyhow::Result<()> {
    let worker_bin = crate::system::build_binaries(&["worker"], !args.quick)?
        .remove("worker")
        .context("worker")?;
    let work = scratch_dir().join("capacity");
    std::fs::create_dir_all(&work)?;
    let video = input_video(&work, &args.size, args.quick)?;
    let video_mb = std::fs::metadata(&video)?.len() as f64 / 1e6;
    let mut report = Report::create(if args.quick { "worker-quick" } else { "worker" })?;
    let cluster =
        PrivateCluster::start(&scratch_dir().join("capacity-postgres"), 54341, "postgres")?;
    let levels: &[usize] = if args.quick { &[1, 2] } else { &[1, 2, 4] };
    let mut results = Vec::new();
    for &concurrency in levels {
        eprintln!("capacity worker: {concurrency} job(s) at once per worker");
        let level = measure_level(&cluster, &worker_bin, &work, &video, concurrency, args);
        results.push(level?);
        let last = results.last().expect("just pushed");
        eprintln!(
            "  {:.2} videos/min, service time mean {:.1} s, p95 {:.1} s, CPU {:.0} %, queue trend {:+.2}/min",
            last.videos_per_min, last.mean_service_s, last.p95_service_s, last.cpu_percent, last.queue_trend_per_min
        );
    }
    cluster.stop();
    write_report(&mut report, args, video_mb, &results)
}

/// Saturation (a backlog of `backlog_per_job × concurrency` at once), then sustained
/// arrivals at 80 % of the throughput found.
fn measure_level(
    cluster: &PrivateCluster,
    worker_bin: &Path,
    work: &Path,
    video: &Path,
    concurrency: usize,
    args: &WorkerArgs,
) -> anyhow::Result<Level> {
    cluster.drop_database(DATABASE)?;
    cluster.create_database(DATABASE)?;
    let storage = work.join("worker-storage");
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(storage.join("original"))?;
    let log = work.join(format!("worker-{concurrency}.log"));
    let mut worker = crate::system::command(worker_bin)
        .env("APP__DATABASE__URL", cluster.url(DATABASE))
        .env("APP__STORAGE__LOCAL_DIR", &storage)
        .env("APP__WORKER__CONCURRENCY", concurrency.to_string())
        .env("APP__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .spawn()
        .context("cannot start the worker")?;
    let result = (|| {
        let owner = wait_for_schema(cluster, &mut worker)?;
        let backlog = args.backlog_per_job * concurrency;
        let cpu_before = machine_cpu()?;
        let started = Instant::now();
        let ids: Vec<String> = (0..backlog)
            .map(|_| queue_video(cluster, &storage, video, &owner))
            .collect::<anyhow::Result<_>>()?;
        wait_processed(
            cluster,
            &mut worker,
            ids.len(),
            Duration::from_secs(600 * backlog as u64),
        )?;
        let elapsed = started.elapsed();
        let cpu_percent = machine_cpu()?.busy_percent_since(&cpu_before);
        let videos_per_min = backlog as f64 / elapsed.as_secs_f64() * 60.0;

        // Sustained: one video every 60 / (0.8 × throughput) seconds; the waiting count
        // should not grow.
        let rate = videos_per_min * 0.8;
        let every = Duration::from_secs_f64(60.0 / rate);
        let count = args.sustained_per_job * concurrency;
        let mut depth = Vec::new();
        let start = Instant::now();
        for i in 0..count {
            let due = every * i as u32;
            while start.elapsed() < due {
                depth.push((
                    start.elapsed().as_secs_f64() / 60.0,
                    waiting(cluster)? as f64,
                ));
                std::thread::sleep(Duration::from_millis(500));
            }
            queue_video(cluster, &storage, video, &owner)?;
        }
        depth.push((
            start.elapsed().as_secs_f64() / 60.0,
            waiting(cluster)? as f64,
        ));
        wait_processed(
            cluster,
            &mut worker,
            backlog + count,
            Duration::from_secs(600 * count as u64),
        )?;
        let service_times_s = service_times(&log)?;
        Ok::<_, anyhow::Error>(Level {
            concurrency,
            videos_per_min,
            mean_service_s: service_times_s.iter().sum::<f64>()
                / service_times_s.len().max(1) as f64,
            p95_service_s: capacity::stats::percentile(&service_times_s, 0.95),
            cpu_percent,
            sustained_rate: rate,
            queue_trend_per_min: capacity::stats::slope(&depth),
            service_times_s,
        })
    })();
    stop(&mut worker);
    result
}

fn wait_for_schema(cluster: &PrivateCluster, worker: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster
        .execute(
            DATABASE,
            "SELECT to_regclass('public.queue_messages') IS NOT NULL",
        )?
        .trim()
        != "t"
    {
        if let Some(status) = worker.try_wait()? {
            bail!("the worker exited ({status}) before creating the schema");
        }
        if Instant::now() > deadline {
            bail!("the worker did not create the schema in 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let owner = cluster.execute(DATABASE, "INSERT INTO users (id, email, password_hash, first_name, last_name, city, country) \
        VALUES (gen_random_uuid(), 'capacity@example.com', 'x', 'Capacidad', 'Worker', 'Cali', 'Colombia') RETURNING id")?;
    Ok(owner.lines().next().unwrap_or_default().trim().to_owned())
}

/// What the API does for an upload: the original stored, the video recorded, the job sent.
fn queue_video(
    cluster: &PrivateCluster,
    storage: &Path,
    video: &Path,
    owner: &str,
) -> anyhow::Result<String> {
    let id = cluster
        .execute(DATABASE, "SELECT gen_random_uuid()")?
        .trim()
        .to_owned();
    std::fs::copy(video, storage.join(format!("original/{id}.mp4")))?;
    cluster.execute(
        DATABASE,
        &format!(
            "INSERT INTO videos (id, owner_id, title) VALUES ('{id}', '{owner}', 'capacidad');
             INSERT INTO queue_messages (queue, body) VALUES ('video-processing',
               '{{\"video_id\":\"{id}\",\"original_key\":\"original/{id}.mp4\",\"enqueued_at\":\"2026-01-01T00:00:00Z\"}}')"
        ),
    )?;
    Ok(id)
}

fn waiting(cluster: &PrivateCluster) -> anyhow::Result<usize> {
    Ok(cluster
        .execute(DATABASE, "SELECT count(*) FROM queue_messages WHERE queue = 'video-processing' AND visible_at <= now()")?
        .trim()
        .parse()?)
}

/// Waits until `total` videos are processed; stops at the first failed video, dead
/// letter or exit of the worker rather than waiting out `limit`.
fn wait_processed(
    cluster: &PrivateCluster,
    worker: &mut Child,
    total: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = worker.try_wait()? {
            bail!("the worker exited ({status}); see its log");
        }
        let dead = cluster.execute(
            DATABASE,
            "SELECT count(*) FROM queue_messages WHERE queue = 'video-processing-dlq'",
        )?;
        if dead.trim() != "0" {
            bail!(
                "{} job(s) went to the dead-letter queue; see the worker log",
                dead.trim()
            );
        }
        let counts = cluster.execute(DATABASE, "SELECT count(*) FILTER (WHERE status = 'processed'), count(*) FILTER (WHERE status = 'failed') FROM videos")?;
        let (done, failed) = counts.trim().split_once('|').unwrap_or(("0", "0"));
        if failed != "0" {
            bail!("{failed} video(s) failed; see the worker log");
        }
        if done.parse::<usize>()? >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {total} videos were processed in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each processed job's total time (seconds) from the worker's "job finished" lines.
fn service_times(log: &Path) -> anyhow::Result<Vec<f64>> {
    Ok(std::fs::read_to_string(log)?
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["message"] == "job finished" && v["outcome"] == "processed")
        .filter_map(|v| v["total_ms"].as_f64())
        .map(|ms| ms / 1000.0)
        .collect())
}

fn write_report(
    report: &mut Report,
    args: &WorkerArgs,
    video_mb: f64,
    levels: &[Level],
) -> anyhow::Result<()> {
    report.write_json("levels.json", &levels)?;
    let mut csv = String::from("concurrency,videos_per_min,mean_service_s,p95_service_s,cpu_percent,sustained_rate,queue_trend_per_min\n");
    for l in levels {
        csv.push_str(&format!(
            "{},{:.3},{:.2},{:.2},{:.0},{:.3},{:.3}\n",
            l.concurrency,
            l.videos_per_min,
            l.mean_service_s,
            l.p95_service_s,
            l.cpu_percent,
            l.sustained_rate,
            l.queue_trend_per_min
        ));
    }
    report.write_text("levels.csv", &csv)?;
    plot::lines(
        &report.path("videos-per-minute.png"),
        "Worker throughput by concurrent jobs",
        "jobs at once per worker",
        "videos/min",
        &[(
            "videos/min",
            levels
                .iter()
                .map(|l| (l.concurrency as f64, l.videos_per_min))
                .collect(),
        )],
    )?;
    let best = levels
        .iter()
        .max_by(|a, b| a.videos_per_min.total_cmp(&b.videos_per_min))
        .context("no level measured")?;
    let mut md = String::from("# Worker tier capacity\n\n## Setup\n\n");
    md.push_str(&report.machine_lines());
    md.push_str(&format!(
        "- Worker: {} build, local storage, PostgreSQL queue\n- Input: {video_mb:.1} MB MP4 (1080p30 H.264 + AAC, noise){}\n- Backlog: {} videos per concurrent job; sustained: {} per concurrent job at 80 % of the throughput found\n\n",
        if args.quick { "debug" } else { "release" },
        if args.quick { " — **quick mode**: short inputs, checks the scenario only" } else { "" },
        args.backlog_per_job,
        args.sustained_per_job,
    ));
    md.push_str("## Results\n\n");
    let mut table = crate::table::Table::new(&[
        "jobs at once",
        "videos/min",
        "service time mean",
        "p95",
        "CPU",
        "sustained at",
        "queue trend",
    ]);
    for l in levels {
        table.row([
            l.concurrency.to_string(),
            format!("{:.2}", l.videos_per_min),
            format!("{:.1} s", l.mean_service_s),
            format!("{:.1} s", l.p95_service_s),
            format!("{:.0} %", l.cpu_percent),
            format!("{:.2}/min", l.sustained_rate),
            super::queue_trend(l.queue_trend_per_min),
        ]);
    }
    md.push_str(&table.markdown());
    md.push_str(&format!(
        "\n## Capacity found\n\n**{:.2} videos/min per worker** with {} job(s) at once (mean service time {:.1} s; the CPU was {:.0} % busy). {}\n\nFor `capacity simulate`: `--service-time {:.1}s` (or let it read this report).\n\n![videos per minute](videos-per-minute.png)\n\nRaw data: `levels.csv`, `levels.json` (with every service time).\n",
        best.videos_per_min,
        best.concurrency,
        best.mean_service_s,
        best.cpu_percent,
        if best.cpu_percent >= 90.0 {
            "The bottleneck is ffmpeg's CPU: more jobs at once add nothing once every core is busy."
        } else {
            "The CPU was not saturated: the bottleneck is elsewhere (storage, database, the job's serial steps)."
        },
        levels[0].mean_service_s,
    ));
    report.write_text("report.md", &md)?;
    println!("{md}");
    println!("Report: {}", report.dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {}
