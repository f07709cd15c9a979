//! `cargo xtask capacity worker --target URL`: a deployed worker tier as it is (its
//! instances, its jobs per worker, its scaling), measured from outside. Videos go in
//! through the API as a player's would; their states come back from it (the player's own
//! list: `uploaded` is waiting, `processing`, `processed` with the server's
//! `uploaded_at`/`processed_at`), and, with AWS credentials, the queue depth, instances
//! and CPU from CloudWatch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use super::{input_video, WorkerArgs};
use crate::api_client;
use crate::capacity::cloudwatch;
use crate::capacity::{plot, Report};
use crate::paths::scratch_dir;

/// Uploads in flight at once while the backlog is put in place: the API's default limit
/// per player (`upload.max_in_flight_per_user`), which a third would meet with 429.
const PARALLEL_UPLOADS: usize = 2;
/// How often the player's list is read.
const POLL: Duration = Duration::from_secs(2);

/// One read of the player's list: seconds since the run began and the count per state.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Census {
    t_s: f64,
    waiting: usize,
    processing: usize,
    processed: usize,
    failed: usize,
}

#[derive(Debug, serde::Serialize)]
struct Outcome {
    /// In the backlog, and again in the sustained phase.
    videos: usize,
    /// Saturation: completions a minute while the backlog lasted.
    videos_per_min: f64,
    /// Upload → processed (server clocks), saturation phase.
    time_in_system_s: Vec<f64>,
    sustained_rate: f64,
    queue_trend_per_min: f64,
    /// Sustained uploads that took longer than the interval between them (the uploader,
    /// not the tier, set the rate).
    late_uploads: usize,
    /// Whether any video of the backlog was seen waiting: if none was, the tier kept up
    /// with the uploads and the rate is the uploader's.
    backlog_built: bool,
    census: Vec<Census>,
}

/// `base`: the stack's URL (see `Target`).
pub fn run(args: &WorkerArgs, base: &str) -> anyhow::Result<()> {
    let work = scratch_dir().join("capacity");
    std::fs::create_dir_all(&work)?;
    let video = input_video(&work, &args.size, args.quick)?;
    let video_mb = std::fs::metadata(&video)?.len() as f64 / 1e6;
    let bytes = std::fs::read(&video)?;
    let videos = args.videos.unwrap_or(if args.quick { 2 } else { 12 });
    let mut report = Report::create(if args.quick {
        "worker-target-quick"
    } else {
        "worker-target"
    })?;
    let run_started = Utc::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(measure(base, bytes, videos))?;
    let cloudwatch = cloudwatch::section_of_run(&report, &args.cloudwatch, "worker", run_started)?;
    write_report(&mut report, args, base, video_mb, &outcome)?;
    if let Some(cloudwatch) = cloudwatch {
        report.append_text("report.md", &cloudwatch)?;
        println!("{cloudwatch}");
    }
    println!("Report: {}", report.dir.display());
    Ok(())
}

async fn measure(base: &str, bytes: Vec<u8>, videos: usize) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let token = api_client::signup_new_player(&client, base, "Capacidad")
        .await
        .with_context(|| format!("sign up a capacity player at {base}"))?;
    let started = Instant::now();
    let census = Arc::new(Mutex::new(Vec::new()));
    let poller = tokio::spawn(poll(
        client.clone(),
        base.to_owned(),
        token.clone(),
        started,
        census.clone(),
    ));
    let result = async {
        // Saturation: the whole backlog at once.
        eprintln!("capacity worker: uploading a backlog of {videos} videos through {base}");
        let ids: Vec<String> = futures_util::stream::iter(0..videos)
            .map(|i| {
                let (client, token, bytes) = (&client, &token, bytes.clone());
                async move {
                    let title = format!("capacidad {i}");
                    api_client::upload(client, base, token, bytes, &title).await
                }
            })
            .buffer_unordered(PARALLEL_UPLOADS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let done = wait_processed(&client, base, &token, &ids, &census).await?;
        let last_done = done
            .iter()
            .map(|(_, processed)| *processed)
            .max()
            .context("no video")?;
        let first_upload = done
            .iter()
            .map(|(uploaded, _)| *uploaded)
            .min()
            .context("no video")?;
        // From the first upload (the tier starts on it at once) to the last completion:
        // the jobs in flight at the start are counted in full, not as free.
        let videos_per_min = done.len() as f64
            / ((last_done - first_upload).num_milliseconds().max(1) as f64 / 60_000.0);
        let backlog_built = census
            .lock()
            .expect("poller panicked")
            .iter()
            .any(|c| c.waiting > 0);
        let time_in_system_s = done
            .iter()
            .map(|(uploaded, processed)| {
                (*processed - *uploaded).num_milliseconds() as f64 / 1000.0
            })
            .collect();
        eprintln!("  {videos_per_min:.2} videos/min while the backlog lasted");
        if !backlog_built {
            eprintln!("  no video ever waited: the uploads, not the tier, may have set that rate");
        }

        // Sustained: 80 % of that rate, one upload at a time.
        let rate = videos_per_min * 0.8;
        let every = Duration::from_secs_f64(60.0 / rate);
        eprintln!(
            "capacity worker: sustained, one video every {:.1} s ({rate:.2}/min)",
            every.as_secs_f64()
        );
        let sustained_from = started.elapsed().as_secs_f64();
        let sustained_start = Instant::now();
        let mut late_uploads = 0;
        let mut sustained_ids = Vec::new();
        for i in 0..videos {
            let due = every * i as u32;
            if let Some(wait) = due.checked_sub(sustained_start.elapsed()) {
                tokio::time::sleep(wait).await;
            } else if i > 0 {
                late_uploads += 1;
            }
            sustained_ids.push(
                api_client::upload(
                    &client,
                    base,
                    &token,
                    bytes.clone(),
                    &format!("capacidad sostenida {i}"),
                )
                .await?,
            );
        }
        let sustained_until = started.elapsed().as_secs_f64();
        wait_processed(&client, base, &token, &sustained_ids, &census).await?;
        let waiting: Vec<(f64, f64)> = census
            .lock()
            .expect("poller panicked")
            .iter()
            .filter(|c| c.t_s >= sustained_from && c.t_s <= sustained_until)
            .map(|c| (c.t_s / 60.0, c.waiting as f64))
            .collect();
        Ok::<_, anyhow::Error>(Outcome {
            videos,
            videos_per_min,
            time_in_system_s,
            sustained_rate: rate,
            queue_trend_per_min: capacity::stats::slope(&waiting),
            late_uploads,
            backlog_built,
            census: Vec::new(),
        })
    }
    .await;
    poller.abort();
    let mut outcome = result?;
    outcome.census = census.lock().expect("poller panicked").clone();
    Ok(outcome)
}

/// Reads the player's list every [`POLL`] into `census`, for the run's timeline.
async fn poll(
    client: reqwest::Client,
    base: String,
    token: String,
    started: Instant,
    census: Arc<Mutex<Vec<Census>>>,
) {
    loop {
        if let Ok(list) = my_videos(&client, &base, &token).await {
            let count = |status: &str| list.iter().filter(|v| v["status"] == status).count();
            census.lock().expect("poller panicked").push(Census {
                t_s: started.elapsed().as_secs_f64(),
                waiting: count("uploaded"),
                processing: count("processing"),
                processed: count("processed"),
                failed: count("failed"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn my_videos(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(client
        .get(format!("{base}/api/videos"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Waits until every video of `ids` is processed; (uploaded_at, processed_at) of each, as
/// the API reports them. Stops at the first failed one, and after 10 minutes without
/// progress; prints progress as it goes.
async fn wait_processed(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
    census: &Mutex<Vec<Census>>,
) -> anyhow::Result<Vec<(DateTime<Utc>, DateTime<Utc>)>> {
    let mut last_progress = (0, Instant::now());
    loop {
        let list = my_videos(client, base, token).await?;
        let ours: Vec<&serde_json::Value> = list
            .iter()
            .filter(|v| {
                v["video_id"]
                    .as_str()
                    .is_some_and(|id| ids.iter().any(|i| i == id))
            })
            .collect();
        if let Some(failed) = ours.iter().find(|v| v["status"] == "failed") {
            bail!("video {} failed: {}", failed["video_id"], failed["error"]);
        }
        let done: Vec<(DateTime<Utc>, DateTime<Utc>)> = ours
            .iter()
            .filter(|v| v["status"] == "processed")
            .map(|v| Ok((time(&v["uploaded_at"])?, time(&v["processed_at"])?)))
            .collect::<anyhow::Result<_>>()?;
        if done.len() == ids.len() {
            return Ok(done);
        }
        if done.len() > last_progress.0 {
            let waiting = census
                .lock()
                .expect("poller panicked")
                .last()
                .map_or(0, |c| c.waiting);
            eprintln!(
                "  {} of {} processed, {waiting} waiting",
                done.len(),
                ids.len()
            );
            last_progress = (done.len(), Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(600) {
            bail!(
                "no video processed for 10 minutes ({} of {} done): is the worker tier running?",
                done.len(),
                ids.len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn time(value: &serde_json::Value) -> anyhow::Result<DateTime<Utc>> {
    let text = value
        .as_str()
        .with_context(|| format!("not a time: {value}"))?;
    Ok(DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("not an RFC 3339 time: {text}"))?
        .with_timezone(&Utc))
}

fn write_report(
    report: &mut Report,
    args: &WorkerArgs,
    base: &str,
    video_mb: f64,
    outcome: &Outcome,
) -> anyhow::Result<()> {
    report.write_json("outcome.json", outcome)?;
    let mut csv = String::from("t_s,waiting,processing,processed,failed\n");
    for c in &outcome.census {
        csv.push_str(&format!(
            "{:.1},{},{},{},{}\n",
            c.t_s, c.waiting, c.processing, c.processed, c.failed
        ));
    }
    report.write_text("states.csv", &csv)?;
    let over_time = |pick: fn(&Census) -> usize| -> Vec<(f64, f64)> {
        outcome
            .census
            .iter()
            .map(|c| (c.t_s / 60.0, pick(c) as f64))
            .collect()
    };
    plot::lines(
        &report.path("video-states.png"),
        "The capacity player's videos by state",
        "minutes since the first upload",
        "videos",
        &[
            ("waiting (uploaded)", over_time(|c| c.waiting)),
            ("processing", over_time(|c| c.processing)),
            ("processed", over_time(|c| c.processed)),
        ],
    )?;
    let p = |q| capacity::stats::percentile(&outcome.time_in_system_s, q);
    let mut md = String::from("# Worker tier capacity (deployed stack)\n\n## Setup\n\n");
    md.push_str(
        &report
            .machine_lines()
            .replace("- Machine:", "- Load generator machine:"),
    );
    md.push_str(&format!(
        "- Target: {base} (the worker tier as deployed: its instances, jobs per worker and scaling)\n- Input: {video_mb:.1} MB MP4 (1080p30 H.264 + AAC, noise), uploaded through the API, {PARALLEL_UPLOADS} at a time for the backlog\n- Backlog: {} videos; sustained: {} videos at 80 % of the rate found\n- The capacity player's videos stay (processed videos are public and cannot be deleted through the API): run this against a test stack{}\n\n",
        outcome.videos,
        outcome.videos,
        if args.quick { "\n- **Quick mode**: short inputs, checks the scenario, does not measure capacity" } else { "" },
    ));
    md.push_str("## Results\n\n");
    md.push_str(
        &crate::table::Table::new(&[
            "phase",
            "videos",
            "videos/min",
            "upload → processed p50",
            "p95",
            "queue trend",
        ])
        .row([
            "saturation".to_owned(),
            outcome.videos.to_string(),
            format!("{:.2}", outcome.videos_per_min),
            format!("{:.1} s", p(0.5)),
            format!("{:.1} s", p(0.95)),
            "–".to_owned(),
        ])
        .row([
            "sustained".to_owned(),
            outcome.videos.to_string(),
            format!("{:.2} (arrivals)", outcome.sustained_rate),
            "–".to_owned(),
            "–".to_owned(),
            super::queue_trend(outcome.queue_trend_per_min),
        ])
        .markdown(),
    );
    if !outcome.backlog_built {
        md.push_str("\nNo video of the backlog was ever seen waiting: the tier kept up with the uploads, so the rate above is the uploader's, a lower bound for the tier. Upload from closer to the stack, or more videos (`--videos`).\n");
    }
    if outcome.late_uploads > 0 {
        md.push_str(&format!(
            "\n{} sustained upload(s) took longer than the interval between arrivals: the uploader's bandwidth, not the tier, set part of the rate.\n",
            outcome.late_uploads
        ));
    }
    md.push_str(&format!(
        "\n## Capacity found\n\n**{:.2} videos/min** for the tier as deployed while a backlog of {} lasted (upload → processed p95 {:.1} s). Divided by the worker instances in service (CloudWatch's figures, when read) it is the rate per worker; the service time per job is about (instances × jobs per worker) × 60 / the tier's rate.\n\n![video states](video-states.png)\n\nRaw data: `states.csv` (the player's videos by state every {} s), `outcome.json`.\n",
        outcome.videos_per_min,
        outcome.videos,
        p(0.95),
        POLL.as_secs(),
    ));
    report.write_text("report.md", &md)?;
    println!("{md}");
    Ok(())
}
