//! `cargo xtask capacity web`: the web tier's capacity under the standard plan (smoke,
//! ramp-and-hold steps until the SLO breaks, sustained at 80 % of the best step), driven by
//! goose with coordinated-omission mitigation. The users are `scenario`'s; the report is
//! `report`'s; the local platform it measures without `--target` is here.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

mod report;
mod scenario;

use self::report::write_report;
use self::scenario::{attack, summarize, Crowd, Route};
use super::cloudwatch::{self, CloudWatchArgs};
use super::{machine_cpu, Report, Target};
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

    let target = Target::of(args.target.as_deref())?;
    let mut report = Report::create(if args.quick { "web-quick" } else { "web" })?;
    let (base, local) = match &target {
        Target::Deployed(base) => (base.clone(), None),
        Target::Local => {
            let platform = LocalPlatform::start(&work, !args.quick)?;
            (platform.base.clone(), Some(platform))
        }
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
    let cloudwatch = match &target {
        Target::Deployed(_) => {
            cloudwatch::section_of_run(&report, &args.cloudwatch, "web", run_started)?
        }
        Target::Local => None,
    };
    write_report(
        &mut report,
        &args,
        &target,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
