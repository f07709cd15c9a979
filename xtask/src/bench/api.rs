//! `cargo xtask bench api`: upload throughput and memory, then public read throughput and latency.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{percentile, verdict, ApiBench};
use crate::api_client;
use crate::paths::scratch_dir;
use crate::postgres::PrivateCluster;
use crate::system::stop;
use crate::system::{ensure_installed, output};

const UPLOAD_GOAL_MB_S: f64 = 200.0;
const RSS_GOAL_MB: f64 = 150.0;
const READ_GOAL_RPS: f64 = 5000.0;
const READ_GOAL_P99_MS: f64 = 25.0;

pub(super) fn bench_api(args: ApiBench) -> anyhow::Result<()> {
    ensure_installed(&["ffmpeg", "ffprobe"], "ffmpeg")?;
    ensure_installed(&["wrk"], "wrk")?;
    let api_bin = crate::system::build_binaries(&["api"], true)?
        .remove("api")
        .context("api")?;

    let work = scratch_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let video = reference_upload(&work)?;
    let video_bytes = std::fs::metadata(&video)?.len();

    let cluster = PrivateCluster::start(&scratch_dir().join("bench-postgres"), 54331, "postgres")?;
    cluster.drop_database("anb_bench")?;
    cluster.create_database("anb_bench")?;
    let storage = work.join("storage");
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage)?;
    let (mut api, base) = crate::system::local_api(&api_bin, &cluster.url("anb_bench"), &storage)?;
    let mut api = api
        // The 8 upload clients share one account: each may have its upload in flight.
        .env("APP__UPLOAD__MAX_IN_FLIGHT_PER_USER", "8")
        .spawn()
        .context("cannot start the API")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        crate::system::wait_healthy(&mut api, &base).await?;
        let rss_idle = peak_rss_mb(&api)?;
        let disk = disk_copy_baseline(&video, &work)?;
        let upload = upload_phase(&base, &video, video_bytes, &args).await?;
        let rss_peak = peak_rss_mb(&api)?;
        seed_votes(&cluster)?;
        let reads = read_phase(&base, &args)?;
        Ok::<_, anyhow::Error>((rss_idle, disk, upload, rss_peak, reads))
    });
    stop(&mut api);
    let (rss_idle, disk_mb_s, upload, rss_peak, reads) = result?;
    report(
        &args,
        video_bytes,
        rss_idle,
        disk_mb_s,
        &upload,
        rss_peak,
        &reads,
    );
    Ok(())
}

/// A ≈50 MB 720p MP4 with noise (so it is not trivially compressible), made once.
fn reference_upload(work: &Path) -> anyhow::Result<PathBuf> {
    let path = work.join("upload-50mb.mp4");
    crate::media::generate_once(
        &crate::media::Clip {
            width: 1280,
            height: 720,
            seconds: 20,
            kbps: Some(20_000),
            noise: 25,
            preset: "ultrafast",
            audio: false,
            tagged_bt709: false,
        },
        &path,
        "the 50 MB reference upload",
    )?;
    Ok(path)
}

/// The process's peak resident set (VmHWM), in MB.
fn peak_rss_mb(child: &Child) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")?;
    Ok(kb / 1000.0)
}

/// Baseline: how fast this disk takes the same file with a plain copy, in MB/s.
fn disk_copy_baseline(video: &Path, work: &Path) -> anyhow::Result<f64> {
    let target = work.join("copy-baseline.mp4");
    let started = Instant::now();
    let mut bytes = 0u64;
    for _ in 0..4 {
        bytes += std::fs::copy(video, &target)?;
        std::fs::File::open(&target)?.sync_all()?;
    }
    let _ = std::fs::remove_file(&target);
    Ok(bytes as f64 / 1e6 / started.elapsed().as_secs_f64())
}

struct UploadFigures {
    uploads: usize,
    failures: usize,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

async fn upload_phase(
    base: &str,
    video: &Path,
    video_bytes: u64,
    args: &ApiBench,
) -> anyhow::Result<UploadFigures> {
    let client = reqwest::Client::new();
    let token = api_client::signup_and_login(&client, base, "Bench", "bench@example.com").await?;
    let deadline = Instant::now() + Duration::from_secs(args.upload_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, token, url, video) = (
            client.clone(),
            token.clone(),
            format!("{base}/api/videos/upload"),
            video.to_path_buf(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            while Instant::now() < deadline {
                let file = tokio::fs::File::open(&video).await?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 * 1024,
                ));
                let part = reqwest::multipart::Part::stream_with_length(body, video_bytes)
                    .file_name("bench.mp4");
                let form = reqwest::multipart::Form::new()
                    .text("title", "bench")
                    .part("video_file", part);
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .multipart(form)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        latencies.push(sent.elapsed())
                    }
                    _ => failures += 1,
                }
            }
            Ok::<_, anyhow::Error>((latencies, failures))
        }));
    }
    let mut figures = UploadFigures {
        uploads: 0,
        failures: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (latencies, failures) = task.await??;
        figures.failures += failures;
        figures.latencies.extend(latencies);
    }
    figures.elapsed = started.elapsed();
    figures.uploads = figures.latencies.len();
    figures.bytes = figures.uploads as u64 * video_bytes;
    figures.latencies.sort();
    Ok(figures)
}

/// 1 000 players with one public video each, and 100 000 votes (100 per fan).
fn seed_votes(cluster: &PrivateCluster) -> anyhow::Result<()> {
    let sql = "
        INSERT INTO users (id, email, password_hash, first_name, last_name, city, country)
        SELECT gen_random_uuid(), 'player' || i || '@bench.test', 'not-a-hash', 'Player', 'N' || i,
               (ARRAY['Bogotá', 'Cali', 'Medellín', 'Barranquilla', 'Cartagena'])[1 + i % 5], 'Colombia'
        FROM generate_series(1, 1000) AS i;
        INSERT INTO videos (id, owner_id, title, status, processed_at)
        SELECT gen_random_uuid(), id, 'Jugada', 'processed', now() - random() * interval '10 days'
        FROM users WHERE email LIKE '%@bench.test';
        WITH fans AS (SELECT id, row_number() OVER (ORDER BY email) - 1 AS n
                      FROM users WHERE email LIKE '%@bench.test'),
             clips AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n
                       FROM videos WHERE status = 'processed')
        INSERT INTO votes (video_id, user_id)
        SELECT clips.id, fans.id
        FROM fans CROSS JOIN generate_series(0, 99) AS k
        JOIN clips ON clips.n = (fans.n * 7 + k * k) % 1000
        ON CONFLICT DO NOTHING;
        UPDATE videos SET vote_count = c.n
        FROM (SELECT video_id, count(*) AS n FROM votes GROUP BY video_id) AS c
        WHERE videos.id = c.video_id;
        ANALYZE;";
    cluster.execute("anb_bench", sql)?;
    let votes = cluster.execute("anb_bench", "SELECT count(*) FROM votes")?;
    eprintln!("xtask: seeded 1000 players and {} votes", votes.trim());
    Ok(())
}

struct ReadFigures {
    name: &'static str,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn read_phase(base: &str, args: &ApiBench) -> anyhow::Result<Vec<ReadFigures>> {
    let targets = [
        ("baseline: unknown route (no database)", "/api/none"),
        ("GET /api/public/rankings", "/api/public/rankings"),
        (
            "GET /api/public/rankings?city=Cali&limit=50",
            "/api/public/rankings?city=Cali&limit=50",
        ),
        ("GET /api/public/videos", "/api/public/videos"),
        (
            "GET /api/public/videos?city=Cali&offset=100",
            "/api/public/videos?city=Cali&offset=100",
        ),
    ];
    let mut figures = Vec::new();
    for (name, path) in targets {
        let out = output(crate::system::command("wrk").args([
            "-t2",
            &format!("-c{}", args.connections),
            &format!("-d{}s", args.read_seconds),
            "--latency",
            &format!("{base}{path}"),
        ]))?;
        figures.push(
            parse_wrk(name, &out).with_context(|| format!("cannot read wrk output:\n{out}"))?,
        );
    }
    Ok(figures)
}

fn parse_wrk(name: &'static str, out: &str) -> Option<ReadFigures> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    let requests_per_sec = field("Requests/sec:")?.parse().ok()?;
    let p50_ms = wrk_duration_ms(&field("50%")?)?;
    let p99_ms = wrk_duration_ms(&field("99%")?)?;
    // "Non-2xx or 3xx responses: N" (the baseline route answers 404 on purpose).
    let errors = field("Socket errors:").map_or(0, |_| 1);
    Some(ReadFigures {
        name,
        requests_per_sec,
        p50_ms,
        p99_ms,
        errors,
    })
}

fn wrk_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}

fn report(
    args: &ApiBench,
    video_bytes: u64,
    rss_idle: f64,
    disk_mb_s: f64,
    upload: &UploadFigures,
    rss_peak: f64,
    reads: &[ReadFigures],
) {
    let seconds = upload.elapsed.as_secs_f64();
    let mb_s = upload.bytes as f64 / 1e6 / seconds;
    println!(
        "\n== cargo xtask bench api ({} cores) ==",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "\nUpload: {} clients, {:.1} MB MP4, {:.1} s",
        args.clients,
        video_bytes as f64 / 1e6,
        seconds
    );
    println!(
        "  uploads            {} ok, {} failed ({:.2}/s)",
        upload.uploads,
        upload.failures,
        upload.uploads as f64 / seconds
    );
    println!(
        "  throughput         {mb_s:.1} MB/s aggregate   [goal ≥ {UPLOAD_GOAL_MB_S} MB/s: {}]",
        verdict(mb_s >= UPLOAD_GOAL_MB_S)
    );
    println!(
        "  baseline           {disk_mb_s:.1} MB/s plain file copy on this disk; ratio {:.2}×",
        mb_s / disk_mb_s
    );
    println!(
        "  latency            p50 {:.0} ms, p95 {:.0} ms",
        percentile(&upload.latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&upload.latencies, 0.95).as_secs_f64() * 1000.0
    );
    println!("  API peak RSS       {rss_peak:.1} MB (idle {rss_idle:.1} MB)   [goal < {RSS_GOAL_MB} MB: {}]", verdict(rss_peak < RSS_GOAL_MB));
    println!("\nReads: 1 000 players, 100 000 votes, {} connections, {} s each (wrk on the same machine)", args.connections, args.read_seconds);
    let baseline = reads.first().map_or(1.0, |r| r.requests_per_sec);
    for r in reads {
        let goal = if r.name.starts_with("baseline") {
            String::new()
        } else {
            let ok = r.requests_per_sec >= READ_GOAL_RPS && r.p99_ms < READ_GOAL_P99_MS;
            format!(
                "   [goal ≥ {READ_GOAL_RPS} req/s, p99 < {READ_GOAL_P99_MS} ms: {}]",
                verdict(ok)
            )
        };
        println!(
            "  {:<46} {:>8.0} req/s ({:.2}× baseline)  p50 {:>6.2} ms  p99 {:>6.2} ms{}{goal}",
            r.name,
            r.requests_per_sec,
            r.requests_per_sec / baseline,
            r.p50_ms,
            r.p99_ms,
            if r.errors > 0 {
                "  (socket errors)"
            } else {
                ""
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let out = "  Latency Distribution\n     50%    1.20ms\n     75%    2.00ms\n     90%    3.00ms\n     99%  850.00us\nRequests/sec:  12345.67\nTransfer/sec:      1.00MB\n";
        let figures = parse_wrk("x", out).unwrap();
        assert!((figures.requests_per_sec - 12345.67).abs() < 1e-6);
        assert!((figures.p50_ms - 1.2).abs() < 1e-9);
        assert!((figures.p99_ms - 0.85).abs() < 1e-9);
        assert_eq!(wrk_duration_ms("1.5s"), Some(1500.0));
    }

    #[test]
    fn percentiles_pick_the_covering_sample() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 0.95), Duration::from_millis(95));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
