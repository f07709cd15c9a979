//! `cargo xtask capacity web`: the web tier's capacity under the standard plan (smoke,
//! ramp-and-hold steps until the SLO breaks, sustained at 80 % of the best step), driven by
//! goose with coordinated-omission mitigation.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use goose::metrics::{GooseCoordinatedOmissionMitigation, GooseMetrics};
use goose::prelude::*;

use super::cloudwatch::{self, CloudWatchArgs};
use super::{machine_cpu, plot, Report};
use crate::api_client;
use crate::paths::scratch_dir;
use crate::postgres::PrivateCluster;
use crate::system::stop;

/// The SLO a step must meet to count as within capacity.
const MAX_P95: Duration = Duration::from_secs(1);
const MAX_ERROR_RATE: f64 = 0.05;

#[derive(Debug, clap::Args)]
pub struct WebArgs {
    /// A deployed stack's URL (e.g. http://anb-alb-….elb.amazonaws.com). Without it the
    /// local platform is started (release build, private PostgreSQL, no worker). The
    /// users and uploads it makes stay (processed videos are public): use a test stack.
    #[arg(long)]
    target: Option<String>,
    /// Every phase in seconds instead of minutes, steps of 10 users, a debug build: to
    /// check the scenario works, not to measure capacity (CI runs it).
    #[arg(long)]
    quick: bool,
    /// Size of each uploaded MP4: 4MB, 50MB or 100MB.
    #[arg(long, default_value = "4MB", value_parser = ["4MB", "50MB", "100MB"])]
    size: String,
    /// Weights of what each user does between pauses of about a second: uploads, reads of
    /// the public video list, reads of the rankings.
    #[arg(long, default_value = "upload:1,list:3,rankings:3")]
    mix: String,
    /// Users added per step.
    #[arg(long, default_value_t = 100)]
    step: usize,
    /// Stop stepping here even if the SLO still holds.
    #[arg(long, default_value_t = 1000)]
    max_users: usize,
    #[command(flatten)]
    cloudwatch: CloudWatchArgs,
}

/// How long each part of the plan lasts.
struct Durations {
    smoke: Duration,
    ramp: Duration,
    hold: Duration,
    sustained: Duration,
}

impl Durations {
    fn of(quick: bool) -> Self {
        if quick {
            Self {
                smoke: Duration::from_secs(5),
                ramp: Duration::from_secs(3),
                hold: Duration::from_secs(6),
                sustained: Duration::from_secs(6),
            }
        } else {
            Self {
                smoke: Duration::from_secs(60),
                ramp: Duration::from_secs(180),
                hold: Duration::from_secs(300),
                sustained: Duration::from_secs(300),
            }
        }
    }
}

/// The weights of the three user actions.
#[derive(Debug, Clone, Copy)]
struct Mix {
    upload: usize,
    list: usize,
    rankings: usize,
}

impl std::str::FromStr for Mix {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> anyhow::Result<Self> {
        let mut mix = Mix {
            upload: 0,
            list: 0,
            rankings: 0,
        };
        for part in spec.split(',') {
            let (name, weight) = part
                .split_once(':')
                .with_context(|| format!("--mix: {part:?} is not name:weight"))?;
            let weight: usize = weight
                .parse()
                .with_context(|| format!("--mix: weight {weight:?} is not a whole number"))?;
            match name.trim() {
                "upload" => mix.upload = weight,
                "list" => mix.list = weight,
                "rankings" => mix.rankings = weight,
                other => anyhow::bail!("--mix: unknown action {other:?} (upload, list, rankings)"),
            }
        }
        anyhow::ensure!(
            mix.upload + mix.list + mix.rankings > 0,
            "--mix: every weight is 0"
        );
        Ok(mix)
    }
}

/// One measured phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub users: usize,
    pub seconds: f64,
    pub requests: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
    /// Status codes other than 2xx, with their counts.
    pub failures: BTreeMap<u16, usize>,
    /// The API process's CPU (100 = one core) and resident memory; None against a target.
    pub api_cpu_percent: Option<f64>,
    /// The whole machine's CPU (100 = every core busy) over the hold: on one machine the
    /// API, PostgreSQL, ffprobe and the generator share it. None against a target.
    pub machine_cpu_percent: Option<f64>,
    pub api_rss_mb: Option<f64>,
    /// Per action: (requests, p95 ms).
    pub by_action: BTreeMap<String, (usize, f64)>,
    /// Users whose sign-up or log-in failed (counted as errors).
    pub failed_logins: usize,
}

impl Phase {
    /// goose keeps times of a second or more to the nearest second: a p95 recorded as
    /// 1000 ms may be anything from 950 to 1499 ms, so it counts as over.
    fn within_slo(&self) -> bool {
        self.p95_ms < MAX_P95.as_secs_f64() * 1000.0 && self.error_rate <= MAX_ERROR_RATE
    }
}

/// What every simulated user of a run shares; each transaction holds an `Arc` of it.
struct Crowd {
    /// The file every upload sends (shared, not copied per request).
    upload: bytes::Bytes,
    /// The next user's number, for a unique e-mail address.
    next_user: AtomicUsize,
    /// Users of the current phase whose sign-up or log-in failed: they send no uploads, so
    /// their failures would otherwise be invisible in the figures.
    failed_logins: AtomicUsize,
}

struct Session {
    token: String,
}

pub fn run(args: WebArgs) -> anyhow::Result<()> {
    let mix: Mix = args.mix.parse()?;
    let durations = Durations::of(args.quick);
    let step = if args.quick { 10 } else { args.step };
    let max_users = if args.quick { 30 } else { args.max_users };
    let work = scratch_dir().join("capacity");
    std::fs::create_dir_all(&work)?;
    let upload = upload_file(&work, &args.size)?;
    let crowd = Arc::new(Crowd {
        upload: std::fs::read(&upload)?.into(),
        next_user: AtomicUsize::new(0),
        failed_logins: AtomicUsize::new(0),
    });

    let mut report = Report::create(if args.quick { "web-quick" } else { "web" })?;
    let local = match &args.target {
        Some(_) => None,
        None => Some(LocalPlatform::start(&work, !args.quick)?),
    };
    let base = match (&args.target, &local) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(platform)) => platform.base.clone(),
        (None, None) => unreachable!("a local platform is started without --target"),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let api_pid = local.as_ref().map(|p| p.api.id());
    let run_started = chrono::Utc::now();
    let result = runtime.block_on(async {
        let mut phases = Vec::new();
        let measure = |name: String, users: usize, ramp: Duration, hold: Duration, route: Route| {
            let base = base.clone();
            let crowd = crowd.clone();
            async move {
                eprintln!(
                    "capacity web: {name}: {users} users, ramp {} s, hold {} s",
                    ramp.as_secs(),
                    hold.as_secs()
                );
                crowd.failed_logins.store(0, Ordering::SeqCst);
                // goose measures the hold only (it resets once every user is launched): the
                // API's CPU is read over the same span.
                let cpu_at_hold = async {
                    tokio::time::sleep(ramp).await;
                    (
                        std::time::Instant::now(),
                        api_pid.map(process_cpu_seconds).transpose(),
                        api_pid.map(|_| machine_cpu()).transpose(),
                    )
                };
                let (metrics, (hold_started, before, machine_before)) = tokio::join!(
                    attack(&base, &crowd, users, ramp, hold, route, mix),
                    cpu_at_hold
                );
                let metrics = metrics?;
                let after = api_pid.map(process_cpu_seconds).transpose()?;
                let mut phase = summarize(&name, users, &metrics);
                if let (Some(before), Some(after)) = (before?, after) {
                    let seconds = hold_started.elapsed().as_secs_f64().max(1.0);
                    phase.api_cpu_percent = Some((after - before) / seconds * 100.0);
                }
                if let Some(machine_before) = machine_before? {
                    phase.machine_cpu_percent =
                        Some(machine_cpu()?.busy_percent_since(&machine_before));
                }
                phase.failed_logins = crowd.failed_logins.load(Ordering::SeqCst);
                if phase.failed_logins > 0 {
                    let attempts = phase.requests + phase.failed_logins;
                    let failed =
                        phase.error_rate * phase.requests as f64 + phase.failed_logins as f64;
                    phase.error_rate = failed / attempts as f64;
                }
                phase.api_rss_mb = api_pid.map(process_rss_mb).transpose()?;
                eprintln!(
                    "  {:.0} req/s, p95 {:.0} ms, errors {:.1} %",
                    phase.rps,
                    phase.p95_ms,
                    phase.error_rate * 100.0
                );
                Ok::<_, anyhow::Error>(phase)
            }
        };
        // The generator's own ceiling: the same users on the no-op liveness route.
        let ceiling_users = max_users.min(step * 3);
        let ceiling = measure(
            "no-op route ceiling (GET /api/health/live, no pauses)".into(),
            ceiling_users,
            durations.ramp / 18,
            durations.smoke,
            Route::NoOp,
        )
        .await?;
        let smoke = measure(
            "smoke".into(),
            5,
            Duration::ZERO,
            durations.smoke,
            Route::Mix,
        )
        .await?;
        phases.push(smoke);
        let mut best: Option<Phase> = None;
        let mut users = step;
        while users <= max_users {
            let phase = measure(
                format!("step {users} users"),
                users,
                durations.ramp,
                durations.hold,
                Route::Mix,
            )
            .await?;
            let within = phase.within_slo();
            phases.push(phase.clone());
            if !within {
                break;
            }
            best = Some(phase);
            users += step;
        }
        let sustained_users = best.as_ref().map_or(5, |b| (b.users * 4 / 5).max(1));
        let sustained = measure(
            format!("sustained {sustained_users} users (80 % of the best step)"),
            sustained_users,
            durations.ramp,
            durations.sustained,
            Route::Mix,
        )
        .await?;
        phases.push(sustained);
        Ok::<_, anyhow::Error>((ceiling, phases, best))
    });
    drop(local);
    let (ceiling, phases, best) = result?;
    let cloudwatch = match &args.target {
        Some(_) => cloudwatch::section_of_run(&report, &args.cloudwatch, "web", run_started)?,
        None => None,
    };
    write_report(
        &mut report,
        &args,
        &base,
        upload_size(&upload)?,
        &ceiling,
        &phases,
        best.as_ref(),
    )?;
    if let Some(cloudwatch) = cloudwatch {
        report.append_text("report.md", &cloudwatch)?;
        println!("{cloudwatch}");
    }
    println!("Report: {}", report.dir.display());
    Ok(())
}

/// The local platform for the web scenario: release API, private PostgreSQL, local
/// storage, no worker (so the web tier is measured alone), no per-address limits (every
/// simulated user comes from 127.0.0.1).
struct LocalPlatform {
    cluster: PrivateCluster,
    api: Child,
    base: String,
    storage: std::path::PathBuf,
    sweeping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LocalPlatform {
    fn start(work: &Path, release: bool) -> anyhow::Result<Self> {
        let api_bin = crate::system::build_binaries(&["api"], release)?
            .remove("api")
            .context("api")?;
        let cluster =
            PrivateCluster::start(&scratch_dir().join("capacity-postgres"), 54341, "postgres")?;
        cluster.drop_database("anb_capacity")?;
        cluster.create_database("anb_capacity")?;
        let storage = work.join("storage");
        let _ = std::fs::remove_dir_all(&storage);
        std::fs::create_dir_all(&storage)?;
        let (mut api, base) =
            crate::system::local_api(&api_bin, &cluster.url("anb_capacity"), &storage)?;
        let api = api
            .env("APP__LIMITS__AUTH_PER_MINUTE", "0")
            .env("APP__LIMITS__VOTES_PER_MINUTE", "0")
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the API")?;
        let mut platform = Self {
            cluster,
            api,
            base,
            storage,
            sweeping: Default::default(),
        };
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(crate::system::wait_healthy(
            &mut platform.api,
            &platform.base,
        ))?;
        platform.sweep_originals();
        Ok(platform)
    }

    /// With no worker, every upload would stay on disk: minutes of uploads are tens of
    /// gigabytes. A thread removes stored originals a few seconds old.
    fn sweep_originals(&self) {
        let originals = self.storage.join("original");
        let sweeping = self.sweeping.clone();
        sweeping.store(true, Ordering::SeqCst);
        std::thread::spawn(move || {
            while sweeping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(2));
                let Ok(entries) = std::fs::read_dir(&originals) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let old = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(2));
                    if old {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        });
    }
}

/// Stopped however the run ends, including a start that never became healthy.
impl Drop for LocalPlatform {
    fn drop(&mut self) {
        self.sweeping.store(false, Ordering::SeqCst);
        stop(&mut self.api);
        self.cluster.stop();
    }
}

#[derive(Debug, Clone, Copy)]
enum Route {
    /// The liveness route, which does nothing: the generator's ceiling.
    NoOp,
    /// Uploads and public reads in the `--mix` proportions.
    Mix,
}

async fn attack(
    base: &str,
    crowd: &Arc<Crowd>,
    users: usize,
    ramp: Duration,
    hold: Duration,
    route: Route,
    mix: Mix,
) -> anyhow::Result<GooseMetrics> {
    let think = (Duration::from_millis(500), Duration::from_millis(1500));
    let scenario = match route {
        Route::NoOp => scenario!("no-op").register_transaction(transaction!(live).set_name("live")),
        Route::Mix => {
            let mut scenario = scenario!("player-and-fan")
                .set_wait_time(think.0, think.1)?
                .register_transaction(with_crowd(crowd, Action::LogIn).set_on_start());
            for (weight, action) in [
                (
                    mix.upload,
                    with_crowd(crowd, Action::Upload).set_name("upload"),
                ),
                (mix.list, transaction!(public_list).set_name("public list")),
                (mix.rankings, transaction!(rankings).set_name("rankings")),
            ] {
                if weight > 0 {
                    scenario = scenario.register_transaction(action.set_weight(weight)?);
                }
            }
            scenario
        }
    };
    let hatch_seconds = ramp.as_secs_f64().max(0.001);
    let metrics =
        GooseAttack::initialize_with_config(goose::config::GooseConfiguration::default())?
            .register_scenario(scenario)
            .set_default(GooseDefault::Host, base)?
            .set_default(GooseDefault::Users, users)?
            .set_default(
                GooseDefault::HatchRate,
                format!("{:.3}", users as f64 / hatch_seconds).as_str(),
            )?
            .set_default(GooseDefault::RunTime, hold.as_secs().max(1) as usize)?
            .set_default(GooseDefault::Quiet, 1)?
            .set_default(GooseDefault::NoPrintMetrics, true)?
            .set_default(GooseDefault::NoTelnet, true)?
            .set_default(GooseDefault::NoWebSocket, true)?
            .set_default(
                GooseDefault::CoordinatedOmissionMitigation,
                GooseCoordinatedOmissionMitigation::Average,
            )?
            .execute()
            .await
            .context("the load generator failed")?;
    Ok(metrics)
}

async fn live(user: &mut GooseUser) -> TransactionResult {
    user.get("/api/health/live").await?;
    Ok(())
}

/// The transactions that need what the users share.
#[derive(Clone, Copy)]
enum Action {
    LogIn,
    Upload,
}

/// A transaction running `action` with its own handle on `crowd` (goose's `transaction!`
/// takes a plain function, which could reach shared state only through statics).
fn with_crowd(crowd: &Arc<Crowd>, action: Action) -> Transaction {
    let crowd = crowd.clone();
    Transaction::new(Arc::new(move |user| {
        let crowd = crowd.clone();
        Box::pin(async move {
            match action {
                Action::LogIn => log_in(user, &crowd).await,
                Action::Upload => upload(user, &crowd).await,
            }
        })
    }))
}

/// Each simulated user signs up and logs in once (not measured).
async fn log_in(user: &mut GooseUser, crowd: &Crowd) -> TransactionResult {
    let n = crowd.next_user.fetch_add(1, Ordering::SeqCst);
    let base = user.base_url.to_string();
    let email = format!("capacity-{}-{n}@example.com", std::process::id());
    match api_client::signup_and_login(&user.client, base.trim_end_matches('/'), "Carga", &email)
        .await
    {
        Ok(token) => user.set_session_data(Session { token }),
        Err(e) => {
            crowd.failed_logins.fetch_add(1, Ordering::SeqCst);
            eprintln!("capacity web: user {n} could not log in: {e:#}");
        }
    }
    Ok(())
}

async fn upload(user: &mut GooseUser, crowd: &Crowd) -> TransactionResult {
    let Some(token) = user.get_session_data::<Session>().map(|s| s.token.clone()) else {
        return Ok(());
    };
    let length = crowd.upload.len() as u64;
    let part = reqwest::multipart::Part::stream_with_length(crowd.upload.clone(), length)
        .file_name("clip.mp4")
        .mime_str("video/mp4")
        .expect("a valid MIME type");
    let form = reqwest::multipart::Form::new()
        .text("title", "Prueba de carga")
        .part("video_file", part);
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/api/videos/upload")?
        .bearer_auth(token)
        .multipart(form);
    let request = GooseRequest::builder()
        .set_request_builder(builder)
        .name("upload")
        .expect_status_code(201)
        .build();
    user.request(request).await?;
    Ok(())
}

async fn public_list(user: &mut GooseUser) -> TransactionResult {
    user.get_named("/api/public/videos?limit=20", "public list")
        .await?;
    Ok(())
}

async fn rankings(user: &mut GooseUser) -> TransactionResult {
    user.get_named("/api/public/rankings?limit=20", "rankings")
        .await?;
    Ok(())
}

/// A phase's figures from goose's metrics: response times with coordinated omission
/// mitigated (goose backfills the requests a stalled user did not send), when it had to.
fn summarize(name: &str, users: usize, metrics: &GooseMetrics) -> Phase {
    let mut all: BTreeMap<usize, usize> = BTreeMap::new();
    let (mut ok, mut failed) = (0, 0);
    let mut failures = BTreeMap::new();
    let mut by_action = BTreeMap::new();
    for aggregate in metrics.requests.values() {
        let timing = aggregate
            .coordinated_omission_data
            .as_ref()
            .unwrap_or(&aggregate.raw_data);
        for (ms, count) in &timing.times {
            *all.entry(*ms).or_default() += count;
        }
        ok += aggregate.success_count;
        failed += aggregate.fail_count;
        for (status, count) in &aggregate.status_code_counts {
            if !(200..300).contains(status) {
                *failures.entry(*status).or_default() += count;
            }
        }
        by_action.insert(
            aggregate.path.clone(),
            (
                aggregate.success_count + aggregate.fail_count,
                histogram_percentile(&timing.times, 0.95),
            ),
        );
    }
    let requests = ok + failed;
    let seconds = metrics.duration.max(1) as f64;
    Phase {
        name: name.to_owned(),
        users,
        seconds,
        requests,
        rps: requests as f64 / seconds,
        p50_ms: histogram_percentile(&all, 0.50),
        p95_ms: histogram_percentile(&all, 0.95),
        p99_ms: histogram_percentile(&all, 0.99),
        error_rate: if requests == 0 {
            0.0
        } else {
            failed as f64 / requests as f64
        },
        failures,
        api_cpu_percent: None,
        machine_cpu_percent: None,
        api_rss_mb: None,
        by_action,
        failed_logins: 0,
    }
}

/// Nearest-rank percentile of a histogram of milliseconds → counts.
fn histogram_percentile(times: &BTreeMap<usize, usize>, p: f64) -> f64 {
    capacity::stats::percentile_of_counts(times.iter().map(|(&ms, &count)| (ms as f64, count)), p)
}

/// User + system CPU seconds a process has used so far (Linux /proc).
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(") ").context("unreadable /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ is 100 on every Linux this runs on.
    Ok(ticks / 100.0)
}

fn process_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// A real MP4 of about `size` (4MB, 50MB or 100MB), made once with lavfi.
fn upload_file(work: &Path, size: &str) -> anyhow::Result<std::path::PathBuf> {
    let megabytes: u32 = size.trim_end_matches("MB").parse()?;
    let path = work.join(format!("upload-{megabytes}mb.mp4"));
    // 720p noise at 8 Mbit/s is 1 MB a second.
    crate::media::generate_once(
        &crate::media::Clip {
            width: 1280,
            height: 720,
            seconds: megabytes,
            kbps: Some(8000),
            noise: 12,
            preset: "ultrafast",
            audio: false,
            tagged_bt709: false,
        },
        &path,
        &format!("a {size} upload"),
    )?;
    Ok(path)
}

fn upload_size(path: &Path) -> anyhow::Result<f64> {
    Ok(std::fs::metadata(path)?.len() as f64 / 1e6)
}

fn write_report(
    report: &mut Report,
    args: &WebArgs,
    base: &str,
    upload_mb: f64,
    ceiling: &Phase,
    phases: &[Phase],
    best: Option<&Phase>,
) -> anyhow::Result<()> {
    report.write_json(
        "phases.json",
        &serde_json::json!({ "ceiling": ceiling, "phases": phases }),
    )?;
    let mut csv = String::from("phase,users,seconds,requests,rps,p50_ms,p95_ms,p99_ms,error_rate,api_cpu_percent,api_rss_mb\n");
    for p in std::iter::once(ceiling).chain(phases) {
        csv.push_str(&format!(
            "\"{}\",{},{:.0},{},{:.1},{:.0},{:.0},{:.0},{:.4},{},{}\n",
            p.name,
            p.users,
            p.seconds,
            p.requests,
            p.rps,
            p.p50_ms,
            p.p95_ms,
            p.p99_ms,
            p.error_rate,
            p.api_cpu_percent
                .map_or(String::new(), |c| format!("{c:.0}")),
            p.api_rss_mb.map_or(String::new(), |m| format!("{m:.0}")),
        ));
    }
    report.write_text("phases.csv", &csv)?;
    let steps: Vec<&Phase> = phases
        .iter()
        .filter(|p| p.name.starts_with("step"))
        .collect();
    let series = |f: fn(&Phase) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|p| (p.users as f64, f(p))).collect()
    };
    plot::lines(
        &report.path("throughput-and-p95.png"),
        "Throughput and p95 by users",
        "users",
        "requests/s  |  p95 ms",
        &[
            ("requests/s", series(|p| p.rps)),
            ("p95 (ms)", series(|p| p.p95_ms)),
        ],
    )?;
    plot::lines(
        &report.path("errors.png"),
        "Error rate by users",
        "users",
        "errors (%)",
        &[("errors %", series(|p| p.error_rate * 100.0))],
    )?;
    if steps.iter().all(|p| p.api_cpu_percent.is_some()) {
        plot::lines(
            &report.path("cpu.png"),
            "API CPU by users (100 = one core)",
            "users",
            "CPU %",
            &[("API CPU %", series(|p| p.api_cpu_percent.unwrap_or(0.0)))],
        )?;
    }

    let ratio = best.map(|b| b.rps / ceiling.rps.max(f64::MIN_POSITIVE));
    let mut md = String::new();
    md.push_str("# Web tier capacity\n\n## Setup\n\n");
    md.push_str(&report.machine_lines());
    md.push_str(&format!(
        "- Target: {}\n- Build: {}\n- Upload size: {upload_mb:.1} MB real MP4 (lavfi 720p); mix {}\n- Users: think 0.5–1.5 s between actions; log in once at start (not measured)\n- SLO: p95 < {} ms (goose records times of a second or more to the nearest second) and errors ≤ {} %, counting users who could not log in\n- Load generator: goose {} with coordinated-omission mitigation (average cadence){}\n\n",
        if args.target.is_some() { base.to_owned() } else { format!("local platform at {base} (API + private PostgreSQL, no worker)") },
        if args.target.is_some() { "as deployed" } else if args.quick { "debug (quick mode)" } else { "release" },
        args.mix,
        MAX_P95.as_millis(),
        MAX_ERROR_RATE * 100.0,
        GOOSE_VERSION,
        if args.quick { "\n- **Quick mode**: phases of seconds; checks the scenario, does not measure capacity" } else { "" },
    ));
    md.push_str("## Phases\n\n");
    let mut table = crate::table::Table::new(&[
        "phase",
        "users",
        "requests/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "API CPU",
        "machine CPU",
        "API RSS",
    ]);
    for p in std::iter::once(ceiling).chain(phases) {
        let mut kinds: Vec<String> = p
            .failures
            .iter()
            .map(|(s, c)| format!("{c}× {s}"))
            .collect();
        if p.failed_logins > 0 {
            kinds.push(format!("{} users could not log in", p.failed_logins));
        }
        let kinds = if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        };
        let percent = |c: Option<f64>| c.map_or("–".into(), |c| format!("{c:.0} %"));
        table.row([
            p.name.clone(),
            p.users.to_string(),
            format!("{:.1}", p.rps),
            format!("{:.0}", p.p50_ms),
            format!("{:.0}", p.p95_ms),
            format!("{:.0}", p.p99_ms),
            format!("{:.2} %{kinds}", p.error_rate * 100.0),
            percent(p.api_cpu_percent),
            percent(p.machine_cpu_percent),
            p.api_rss_mb.map_or("–".into(), |m| format!("{m:.0} MB")),
        ]);
    }
    md.push_str(&table.markdown());
    md.push_str("\n## Capacity found\n\n");
    match best {
        Some(best) => {
            let broke = phases
                .iter()
                .find(|p| p.name.starts_with("step") && !p.within_slo());
            md.push_str(&format!(
                "**{} concurrent users** within the SLO ({:.1} requests/s, p95 {:.0} ms, errors {:.2} %).\n",
                best.users, best.rps, best.p95_ms, best.error_rate * 100.0
            ));
            match broke {
                Some(b) => md.push_str(&format!(
                    "At {} users the SLO broke: p95 {:.0} ms, errors {:.2} %{}{}.\n",
                    b.users,
                    b.p95_ms,
                    b.error_rate * 100.0,
                    b.api_cpu_percent.map_or(String::new(), |c| format!(", API CPU {c:.0} %")),
                    b.machine_cpu_percent.map_or(String::new(), |c| format!(
                        ", machine CPU {c:.0} %{}",
                        if c >= 90.0 { " — the cores were saturated (API, PostgreSQL, ffprobe and the generator share them)" } else { "" }
                    )),
                )),
                None => md.push_str("The SLO still held at the last step (--max-users): the capacity is at least this.\n"),
            }
        }
        None => md.push_str("No step met the SLO.\n"),
    }
    md.push_str(&format!(
        "\nSlowest action at the best step: {}.\n",
        best.and_then(|b| b
            .by_action
            .iter()
            .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map(|(name, (n, p95))| format!("{name} (p95 {p95:.0} ms over {n} requests)")))
            .unwrap_or_else(|| "–".into())
    ));
    md.push_str(&format!(
        "\nGenerator ceiling: {:.0} requests/s on the no-op route with {} users and no pauses (goose, the API's routing and loopback together); the best step used {} of it{}.\n",
        ceiling.rps,
        ceiling.users,
        ratio.map_or("–".into(), |r| format!("{:.1} %", r * 100.0)),
        match ratio {
            Some(r) if r > 0.8 => " — close to the generator's own limit: this measures the generator as much as the API",
            _ => "",
        }
    ));
    if args.target.is_none() {
        md.push_str("\nOn one machine the generator, the API and PostgreSQL share the cores: the figures are a lower bound for a web instance with the same cores.\n");
    }
    md.push_str(
        "\n## Plots\n\n![throughput and p95](throughput-and-p95.png)\n\n![errors](errors.png)\n",
    );
    if steps.iter().all(|p| p.api_cpu_percent.is_some()) {
        md.push_str("\n![API CPU](cpu.png)\n");
    }
    md.push_str("\nRaw data: `phases.csv`, `phases.json`.\n");
    report.write_text("report.md", &md)?;
    println!("{md}");
    Ok(())
}

/// The load generator's version, for the report; a test holds it to the workspace's pin.
const GOOSE_VERSION: &str = "0.18.1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_goose_version_the_workspace_pins() {
        let manifest = include_str!("../../../Cargo.toml");
        assert!(
            manifest.contains(&format!("goose = \"{GOOSE_VERSION}\"")),
            "Cargo.toml pins another goose than GOOSE_VERSION ({GOOSE_VERSION})"
        );
    }

    #[test]
    fn mix_parses_and_names_what_is_wrong() {
        let mix: Mix = "upload:1,list:3,rankings:0".parse().unwrap();
        assert_eq!((mix.upload, mix.list, mix.rankings), (1, 3, 0));
        for (bad, expected) in [
            ("upload", "name:weight"),
            ("upload:x", "whole number"),
            ("votes:1", "unknown action"),
            ("upload:0", "every weight is 0"),
        ] {
            let err = bad.parse::<Mix>().unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn histogram_percentiles_are_nearest_rank() {
        let times: BTreeMap<usize, usize> = [(10, 90), (100, 9), (1000, 1)].into_iter().collect();
        assert_eq!(histogram_percentile(&times, 0.5), 10.0);
        assert_eq!(histogram_percentile(&times, 0.95), 100.0);
        assert_eq!(histogram_percentile(&times, 0.999), 1000.0);
        assert_eq!(histogram_percentile(&BTreeMap::new(), 0.5), 0.0);
    }
}
