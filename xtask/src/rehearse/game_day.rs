//! `cargo xtask rehearse --game-day`: the stack converged on moto by the real `cargo xtask
//! up`, its groups' instances run as containers in network namespaces of their own over
//! the subnets' two zones (`network`, `fleet`), HAProxy in front of the web instances as
//! the target group says (`balancer`), and scenarios under load and faults, each ending
//! with the invariants checked from the outside (database rows, bucket objects, queue and
//! dead-letter depth). Writes `summary.json`, `events.json` and plots under
//! `target/rehearse/<time>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;

use stack_config::names;

use super::aws::Aws;
use super::balancer::{Balancer, HealthCheck, TargetState};
use super::fleet::{Fleet, Group, Images, Provided};
use super::host::{cache_dir, free_port, wait_for_port};
use super::instance::{baked_rootfs, debian_rootfs, user_data_packages, Reach};
use super::network::{gateway, Forward, Network};
use super::report::Report;
use super::stack::{game_day_stack_config, StackFacts};
use super::stand_ins::{stand_in_database, stop_database, truststore, Imds, Pki};
use super::{World, STACK};

mod deploys;
use crate::api_client;
use crate::postgres::PrivateCluster;

/// How long the burst may take before it is called failed.
const BURST_LIMIT: Duration = Duration::from_secs(25 * 60);
/// Uploads one after another in each of a burst player's two lanes.
const UPLOADS_PER_LANE: usize = 5;
/// The steady traffic's clients, each making a request a second.
const CLIENTS: usize = 4;
/// Uploads just before the database goes (one after another: most are still waiting).
const FAILOVER_UPLOADS: usize = 6;
/// A steady mix with uploads: one every this many rounds of its uploading client (a
/// second each), and a vote every this many of its voting client's.
const UPLOAD_EVERY: u64 = 15;
const VOTE_EVERY: u64 = 5;

/// How big the game day is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Size {
    /// Uploads at once in the burst.
    pub(super) burst_uploads: usize,
    /// How many times faster than AWS's the game day's clock runs: the worker policy's,
    /// Auto Scaling's (warm-ups, grace periods, status checks) and the target group's.
    pub(super) compression: f64,
    /// How long the database stand-in stays stopped.
    pub(super) database_outage: Duration,
    /// Instances boot from images with their tier's packages installed.
    pub(super) baked_images: bool,
}

impl Size {
    pub(super) fn new(quick: bool) -> Self {
        if quick {
            Self {
                burst_uploads: 24,
                compression: 20.0,
                database_outage: Duration::from_secs(30),
                baked_images: true,
            }
        } else {
            Self {
                burst_uploads: 60,
                compression: 10.0,
                database_outage: Duration::from_secs(60),
                baked_images: false,
            }
        }
    }
}

/// One scenario's line of `summary.json`.
#[derive(Debug, Default, Serialize)]
pub(super) struct ScenarioSummary {
    pub(super) name: String,
    pub(super) passed: bool,
    pub(super) videos_lost: usize,
    pub(super) videos_processed_twice: usize,
    pub(super) orphan_objects: usize,
    pub(super) failed_requests: usize,
    pub(super) jobs_cut_at_scale_in: usize,
    /// What else the scenario measured, by name.
    #[serde(flatten)]
    pub(super) figures: BTreeMap<String, serde_json::Value>,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) failures: Vec<String>,
}

impl ScenarioSummary {
    fn figure(&mut self, name: &str, value: impl Into<serde_json::Value>) {
        self.figures.insert(name.to_owned(), value.into());
    }

    /// The outside view's figures, and a failure for each that is not zero.
    fn check_invariants(&mut self, invariants: &Invariants) {
        self.videos_lost = invariants.lost;
        self.orphan_objects = invariants.orphans;
        self.require(
            invariants.lost == 0,
            format!("{} videos lost", invariants.lost),
        );
        self.require(
            invariants.orphans == 0,
            format!("{} orphan objects", invariants.orphans),
        );
        self.require(
            invariants.waiting == 0 && invariants.dead_letters == 0,
            format!(
                "{} jobs still queued, {} dead letters",
                invariants.waiting, invariants.dead_letters
            ),
        );
    }

    fn require(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }
}

pub(super) fn game_day(
    dir: &Path,
    optimized: bool,
    size: Size,
    world: &mut World,
    report: &mut Report,
) -> anyhow::Result<()> {
    let run_dir = crate::paths::scratch_dir()
        .join("rehearse")
        .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string());
    std::fs::create_dir_all(&run_dir)?;
    let began = Instant::now();
    let (rootfs, cold) = debian_rootfs(&cache_dir())?;
    world.rootfs_note = if cold {
        format!("built in {:.0} s", began.elapsed().as_secs_f64())
    } else {
        "cached".to_owned()
    };
    report.pass("Debian 12 root filesystem", world.rootfs_note.clone());
    let pki = Pki::create(&dir.join("pki"))?;

    // The AWS APIs: moto, and in front of it the stand-in for the Auto Scaling calls moto
    // does not model (lifecycle actions, instance refreshes).
    let python = crate::tools::ensure_moto()?;
    let port = free_port()?;
    // Its log is the post-mortem of an emulator error (a 500 names no cause).
    let moto_log = std::fs::File::create(run_dir.join("moto.log"))?;
    let moto = testkit::tools::spawn_moto(&python, port, Stdio::from(moto_log))
        .context("cannot start moto")?;
    world.moto = Some(moto);
    wait_for_port(("127.0.0.1", port), Duration::from_secs(60))?;
    let autoscaling = testkit::AutoScalingStandIn::start(&format!("http://127.0.0.1:{port}"));
    world.endpoint = autoscaling.endpoint.clone();
    let endpoint_port: u16 = world
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the stand-in's port")?;

    let config = game_day_stack_config(dir)?;
    let began = Instant::now();
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ] {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
    crate::deploy::up(crate::deploy::UpArgs::against_emulator(
        &world.endpoint,
        config.clone(),
        STACK,
        optimized,
    ))
    .context("cargo xtask up against moto")?;
    report.pass(
        "cargo xtask up (moto)",
        format!("{:.0} s", began.elapsed().as_secs_f64()),
    );
    // What the deploy scenarios publish and run `provision up --wait` with (the same
    // build `up` just made: cargo has nothing to do).
    let mut services = crate::system::build_binaries(&["api", "worker"], optimized)?;
    let provision = deploys::Provision {
        binary: crate::deploy::provision_binary()?,
        flags: vec![
            "--stack".into(),
            STACK.into(),
            "--endpoint-url".into(),
            world.endpoint.clone(),
            "--config".into(),
            config.display().to_string(),
        ],
        api: services.remove("api").context("the api binary")?,
        worker: services.remove("worker").context("the worker binary")?,
        logs: run_dir.clone(),
    };
    let facts = StackFacts::read(&python, &world.endpoint)?;
    let apt_cache = dir.join("apt-archives");
    std::fs::create_dir_all(apt_cache.join("partial"))?;
    let mut images = BTreeMap::new();
    if size.baked_images {
        let began = Instant::now();
        let mut notes = Vec::new();
        for (tier, user_data) in [
            ("web", &facts.web_user_data),
            ("worker", &facts.worker_user_data),
        ] {
            let packages = user_data_packages(user_data)?;
            let (image, baked) = baked_rootfs(&rootfs, &packages, &apt_cache)?;
            notes.push(format!(
                "{tier}: {} ({})",
                packages.join(" "),
                if baked { "baked now" } else { "cached" }
            ));
            images.insert(tier, image);
        }
        report.pass(
            "instance images (quick)",
            format!(
                "the tiers' packages preinstalled, as in a baked AMI, so CI affords the boots; \
                 {} in {:.0} s",
                notes.join("; "),
                began.elapsed().as_secs_f64()
            ),
        );
    }
    world.database = Some(stand_in_database(dir, &pki, &facts)?);
    world.truststore = Some(truststore(dir, &pki)?);
    world.imds = Some(Imds::start(&facts.region)?);
    let (Some(imds), Some(database)) = (world.imds.as_ref(), world.database.as_ref()) else {
        bail!("the stand-ins did not start");
    };
    let network = Network::create(
        &[
            Forward {
                port: endpoint_port,
                to: (Ipv4Addr::LOCALHOST, endpoint_port),
            },
            Forward {
                port: facts.db_port,
                to: (Ipv4Addr::new(127, 0, 0, 2), facts.db_port),
            },
            Forward {
                port: 443,
                to: (Ipv4Addr::new(127, 0, 0, 3), 443),
            },
        ],
        imds.port,
    )?;
    report.pass(
        "stand-ins and network",
        format!(
            "database, RDS bundle, IMDSv2 and the AWS endpoint at the instances' gateway {} \
             (bridge, one network namespace per instance)",
            gateway()
        ),
    );
    let outcome = with_network(
        dir,
        &run_dir,
        Images {
            stock: &rootfs,
            baked: &images,
            apt_cache: &apt_cache,
        },
        &pki,
        &facts,
        &python,
        &config,
        &network,
        imds,
        database,
        &autoscaling,
        &provision,
        size,
        report,
    );
    drop(network);
    outcome
}

#[allow(clippy::too_many_arguments)]
fn with_network(
    dir: &Path,
    run_dir: &Path,
    images: Images,
    pki: &Pki,
    facts: &StackFacts,
    python: &Path,
    config: &Path,
    network: &Network,
    imds: &Imds,
    database: &PrivateCluster,
    autoscaling: &testkit::AutoScalingStandIn,
    provision: &deploys::Provision,
    size: Size,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut aws = Aws::start(python, &autoscaling.endpoint, &facts.region)?;
    let worker_group = names::asg_name(STACK, "worker");
    let hooks = aws.call(
        "autoscaling",
        "describe_lifecycle_hooks",
        json!({ "AutoScalingGroupName": worker_group }),
    )?;
    let hook = hooks["LifecycleHooks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING")
        .map(|h| {
            (
                h["LifecycleHookName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                Duration::from_secs(h["HeartbeatTimeout"].as_u64().unwrap_or(3600)),
            )
        });
    let queue_url = aws.call(
        "sqs",
        "get_queue_url",
        json!({ "QueueName": names::queue_name(STACK) }),
    )?["QueueUrl"]
        .as_str()
        .context("the queue's URL")?
        .to_owned();
    let dead_letter_url = aws.call(
        "sqs",
        "get_queue_url",
        json!({ "QueueName": names::dead_letter_queue_name(STACK) }),
    )?["QueueUrl"]
        .as_str()
        .context("the dead-letter queue's URL")?
        .to_owned();
    let policy = deployed_policy(config)?;
    report.pass(
        "worker policy",
        format!(
            "{} (its clock {}× AWS's: a policy minute is {:.0} s here)",
            policy.describe(),
            size.compression,
            60.0 / size.compression
        ),
    );
    let provided = Provided {
        dir,
        run_dir,
        images,
        pki,
        facts,
        reach: Reach {
            database: gateway(),
            truststore: gateway(),
            endpoint: format!(
                "http://{}:{}",
                gateway(),
                autoscaling.endpoint.rsplit(':').next().unwrap_or_default()
            ),
        },
        network,
        imds,
        autoscaling,
    };
    let mut fleet = Fleet::start(
        provided,
        Aws::start(python, &autoscaling.endpoint, &facts.region)?,
        vec![
            Group {
                name: names::asg_name(STACK, "web"),
                tier: "web",
                unit: "anb-api.service",
                hook: None,
            },
            Group {
                name: worker_group.clone(),
                tier: "worker",
                unit: "anb-worker.service",
                hook: hook.clone(),
            },
        ],
        policy.clone(),
        queue_url.clone(),
        size.compression,
    );
    // The fleet carries out the refreshes `provision up` starts, at its instances' pace.
    for group in &fleet.group_names() {
        autoscaling.drive_refreshes(group);
    }
    let outcome = scenarios(
        &mut fleet,
        &mut aws,
        run_dir,
        dir,
        facts,
        database,
        &policy,
        &queue_url,
        &dead_letter_url,
        hook.is_some(),
        provision,
        size,
        report,
    );
    write_events(run_dir, &fleet);
    if outcome.is_err() {
        for member in fleet.members.values() {
            member.instance.print_failure_details();
        }
    }
    fleet.tear_down();
    outcome
}

#[allow(clippy::too_many_arguments)]
fn scenarios(
    fleet: &mut Fleet,
    aws: &mut Aws,
    run_dir: &Path,
    dir: &Path,
    facts: &StackFacts,
    database: &PrivateCluster,
    policy: &capacity::Policy,
    queue_url: &str,
    dead_letter_url: &str,
    has_hook: bool,
    provision: &deploys::Provision,
    size: Size,
    report: &mut Report,
) -> anyhow::Result<()> {
    // The groups' first instances as `up` made them: the web tier at two, one per zone,
    // as a team runs the tier users reach (the game day's configuration; the zone loss
    // needs it, and the load balancer chooses between them from the start).
    let started = Instant::now();
    loop {
        fleet.tick()?;
        let booting = fleet
            .members
            .values()
            .filter(|m| m.healthy_at.is_none())
            .count();
        if !fleet.members.is_empty() && booting == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(30 * 60) {
            bail!("the groups' first instances are not healthy after 30 min");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let boots = fleet
        .boot_seconds
        .iter()
        .map(|(tier, s)| {
            format!(
                "{tier} {}",
                s.iter()
                    .map(|s| format!("{s:.0} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let zones: BTreeSet<&str> = fleet.members.values().map(|m| m.zone.as_str()).collect();
    report.pass(
        "groups' first instances healthy",
        format!(
            "{} instances over {} ({boots} from launch to healthy)",
            fleet.members.len(),
            zones.into_iter().collect::<Vec<_>>().join(", ")
        ),
    );
    // One clock for the whole game day: the target group's times compressed as the
    // policy's and Auto Scaling's are.
    let check = facts.target_group.health_check(size.compression);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    fleet.attach_balancer(Balancer::start(
        &run_dir.join("balancer"),
        listen,
        &[],
        &check,
    )?)?;
    let web: Vec<String> = fleet
        .members
        .values()
        .filter(|m| m.instance.tier == "web")
        .map(|m| m.instance.name.clone())
        .collect();
    for name in &web {
        fleet
            .balancer
            .as_ref()
            .context("the balancer")?
            .wait_healthy(name, check.interval * (check.healthy_threshold + 3))?;
    }
    report.pass(
        "load balancer (HAProxy)",
        format!(
            "{} web target(s) healthy after {} checks (time compressed {}×)",
            web.len(),
            check.healthy_threshold,
            size.compression
        ),
    );
    let base = format!("http://{listen}");
    let outside = Outside {
        database,
        db_name: &facts.db_name,
        queue_url,
        dead_letter_url,
    };
    let mut summaries = Vec::new();

    let burst = burst(fleet, aws, &outside, run_dir, &base, policy, has_hook, size)?;
    record(report, &burst);
    summaries.push(burst);

    let rolling = deploys::rolling_deploy(fleet, aws, &outside, provision, &base)?;
    record(report, &rolling);
    summaries.push(rolling);

    let bad = deploys::bad_release(fleet, aws, &outside, provision, &base)?;
    record(report, &bad);
    summaries.push(bad);

    let failover = database_failover(fleet, aws, &outside, dir, &base, size)?;
    record(report, &failover);
    summaries.push(failover);

    let zone = zone_loss(fleet, aws, &outside, &base, &check)?;
    record(report, &zone);
    summaries.push(zone);

    let summary = run_dir.join("summary.json");
    std::fs::write(&summary, serde_json::to_string_pretty(&summaries)?)?;
    report.pass("summary", format!("{}", summary.display()));
    Ok(())
}

fn record(report: &mut Report, summary: &ScenarioSummary) {
    let figures = summary
        .figures
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let line = format!(
        "lost {}, twice {}, orphans {}, failed requests {}, jobs cut {}; {figures}",
        summary.videos_lost,
        summary.videos_processed_twice,
        summary.orphan_objects,
        summary.failed_requests,
        summary.jobs_cut_at_scale_in
    );
    if summary.passed {
        report.pass(&summary.name, line);
    } else {
        report.fail(
            &summary.name,
            &anyhow::anyhow!("{line}; {}", summary.failures.join("; ")),
        );
    }
}

/// The worker policy the stack's configuration deploys, as the simulator models it.
fn deployed_policy(config: &Path) -> anyhow::Result<capacity::Policy> {
    let worker = stack_config::Config::load(Some(config))?.worker;
    Ok(match worker.scaling_policy {
        stack_config::WorkerScaling::TargetTracking => capacity::Policy::TargetTracking {
            target: f64::from(worker.backlog_per_instance),
            min: worker.min_size,
            max: worker.max_size,
            // AWS's default instance warmup: provision sets none.
            warmup_s: 300.0,
        },
        stack_config::WorkerScaling::Step => capacity::Policy::step(
            worker.min_size,
            worker.max_size,
            worker.step_out_above,
            worker.step_in_below,
        ),
    })
}

// ------------------------------------------------------------------ the outside view

/// What the invariants are read from: the database, the bucket, the queues.
struct Outside<'a> {
    database: &'a PrivateCluster,
    db_name: &'a str,
    queue_url: &'a str,
    dead_letter_url: &'a str,
}

/// The invariants after a scenario, for the videos it uploaded.
#[derive(Debug, Default)]
struct Invariants {
    lost: usize,
    orphans: usize,
    waiting: usize,
    dead_letters: usize,
}

impl Outside<'_> {
    fn query(&self, sql: &str) -> anyhow::Result<String> {
        Ok(self.database.execute(self.db_name, sql)?.trim().to_owned())
    }

    /// Of `videos`, how many are processed.
    fn processed(&self, videos: &[String]) -> anyhow::Result<usize> {
        if videos.is_empty() {
            return Ok(0);
        }
        Ok(self
            .query(&format!(
                "SELECT count(*) FROM videos WHERE status = 'processed' AND id IN ({})",
                quoted(videos)
            ))?
            .parse()
            .unwrap_or(0))
    }

    /// Seconds from upload to processed of each of `videos` that is processed.
    fn latencies(&self, videos: &[String]) -> anyhow::Result<Vec<f64>> {
        let text = self.query(&format!(
            "SELECT extract(epoch FROM processed_at - uploaded_at) FROM videos \
             WHERE status = 'processed' AND id IN ({})",
            quoted(videos)
        ))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Every uploaded video processed with its file, no object without a video, nothing
    /// waiting in either queue.
    fn check(&self, aws: &mut Aws, videos: &[String]) -> anyhow::Result<Invariants> {
        let rows: BTreeMap<String, String> = self
            .query("SELECT id, status FROM videos")?
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(id, status)| (id.to_owned(), status.to_owned()))
            .collect();
        let buckets = aws.call("s3", "list_buckets", json!({}))?;
        let bucket = buckets["Buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["Name"].as_str())
            .find(|name| name.starts_with(&format!("{STACK}-videos-")))
            .context("the stack's bucket")?
            .to_owned();
        let mut keys = BTreeSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = json!({ "Bucket": bucket });
            if let Some(token) = &token {
                params["ContinuationToken"] = json!(token);
            }
            let page = aws.call("s3", "list_objects_v2", params)?;
            for object in page["Contents"].as_array().into_iter().flatten() {
                if let Some(key) = object["Key"].as_str() {
                    keys.insert(key.to_owned());
                }
            }
            token = page["NextContinuationToken"].as_str().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let mut invariants = Invariants::default();
        for video in videos {
            let processed = rows.get(video).is_some_and(|s| s == "processed")
                && keys.contains(&format!("processed/{video}.mp4"))
                && keys.contains(&format!("original/{video}.mp4"));
            if !processed {
                invariants.lost += 1;
            }
        }
        for key in &keys {
            let Some(id) = key
                .strip_prefix("original/")
                .or_else(|| key.strip_prefix("processed/"))
                .and_then(|rest| rest.strip_suffix(".mp4"))
            else {
                continue;
            };
            let orphan = match rows.get(id).map(String::as_str) {
                None => true,
                Some(status) => key.starts_with("processed/") && status != "processed",
            };
            if orphan {
                invariants.orphans += 1;
            }
        }
        for (url, slot) in [
            (self.queue_url, &mut invariants.waiting),
            (self.dead_letter_url, &mut invariants.dead_letters),
        ] {
            let answer = aws.call(
                "sqs",
                "get_queue_attributes",
                json!({ "QueueUrl": url, "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"] }),
            )?;
            *slot = [
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ]
            .iter()
            .filter_map(|name| answer["Attributes"][name].as_str()?.parse::<usize>().ok())
            .sum();
        }
        Ok(invariants)
    }
}

/// `ids` as an SQL list; `NULL` (matching nothing) for none.
fn quoted(ids: &[String]) -> String {
    if ids.is_empty() {
        return "NULL".into();
    }
    ids.iter()
        .map(|id| format!("'{}'", id.replace('\'', "")))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the workers' journals say about jobs: per video, how many times it was
/// processed; the jobs handed back unfinished; each finished job's seconds.
#[derive(Debug, Default)]
struct JobAccount {
    processed: BTreeMap<String, usize>,
    handed_back: usize,
    service_seconds: Vec<f64>,
}

fn account(journals: &[String]) -> JobAccount {
    let mut account = JobAccount::default();
    for line in journals.iter().flat_map(|j| j.lines()) {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match event["message"].as_str() {
            Some("job finished") if event["outcome"] == "processed" => {
                let video = event["video.id"].as_str().unwrap_or_default().to_owned();
                *account.processed.entry(video).or_default() += 1;
                if let Some(ms) = event["total_ms"].as_f64() {
                    account.service_seconds.push(ms / 1000.0);
                }
            }
            Some("handed an unfinished job back to the queue") => account.handed_back += 1,
            _ => {}
        }
    }
    account
}

// ------------------------------------------------------------------ the scenarios

/// N uploads at once: the workers scale 1 → 3 → 1, every video processed once, no job
/// cut at scale-in, and the p95 from upload to processed against the simulator's
/// prediction for the same arrivals, measured service time and boot time.
#[allow(clippy::too_many_arguments)]
fn burst(
    fleet: &mut Fleet,
    aws: &mut Aws,
    outside: &Outside,
    run_dir: &Path,
    base: &str,
    policy: &capacity::Policy,
    has_hook: bool,
    size: Size,
) -> anyhow::Result<ScenarioSummary> {
    let mut summary = ScenarioSummary {
        name: "burst".into(),
        ..Default::default()
    };
    let bytes = upload_clip()?;
    let (min, max) = policy.bounds();
    let sample_start = fleet.samples.len();
    let events_start = fleet.events.len();
    let t0 = fleet.elapsed();
    eprintln!("rehearse: burst: {} uploads at once", size.burst_uploads);
    let uploads = {
        let base = base.to_owned();
        let count = size.burst_uploads;
        std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()?;
                // The API takes two uploads in flight per player (`max_in_flight_per_user`)
                // and 30 sign-ups and log-ins a minute from one address: a few players,
                // two lanes each.
                let players = count.div_ceil(2 * UPLOADS_PER_LANE).max(1);
                let mut tokens = Vec::new();
                for _ in 0..players {
                    tokens.push(api_client::signup_new_player(&client, &base, "Burst").await?);
                }
                let lanes = (0..players * 2).map(|lane| {
                    let (client, base, token, bytes) = (
                        client.clone(),
                        base.clone(),
                        tokens[lane / 2].clone(),
                        bytes.clone(),
                    );
                    async move {
                        let mut ids = Vec::new();
                        for n in (lane..count).step_by(players * 2) {
                            let title = format!("Burst {n}");
                            ids.push(
                                upload_as_a_client_does(&client, &base, &token, &bytes, &title)
                                    .await?,
                            );
                        }
                        anyhow::Ok(ids)
                    }
                });
                futures_util::future::join_all(lanes)
                    .await
                    .into_iter()
                    .collect::<anyhow::Result<Vec<Vec<String>>>>()
                    .map(|lanes| lanes.into_iter().flatten().collect::<Vec<String>>())
            })
        })
    };
    let mut uploads = Some(uploads);
    let mut videos: Vec<String> = Vec::new();
    let deadline = Instant::now() + BURST_LIMIT;
    loop {
        fleet.tick()?;
        if uploads.as_ref().is_some_and(|u| u.is_finished()) {
            match uploads.take().map(|u| u.join()) {
                Some(Ok(Ok(ids))) => videos = ids,
                Some(Ok(Err(e))) => {
                    summary.failed_requests += 1;
                    summary.failures.push(format!("uploads: {e:#}"));
                    break;
                }
                _ => bail!("the upload thread panicked"),
            }
        }
        let (in_service, booting, terminating) = fleet.worker_counts();
        let all_processed = uploads.is_none() && outside.processed(&videos)? == videos.len();
        if all_processed && in_service <= min && booting == 0 && terminating == 0 {
            break;
        }
        if Instant::now() > deadline {
            summary.failures.push(format!(
                "not back at {min} worker(s) with every video processed after {:.0} min \
                 ({} of {} processed, {in_service} in service)",
                BURST_LIMIT.as_secs_f64() / 60.0,
                outside.processed(&videos).unwrap_or(0),
                videos.len()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = fleet.elapsed() - t0;
    let invariants = outside.check(aws, &videos)?;
    let journals = fleet.worker_journals();
    let jobs = account(&journals);
    summary.check_invariants(&invariants);
    summary.videos_processed_twice = jobs.processed.values().filter(|n| **n > 1).count();
    summary.jobs_cut_at_scale_in = jobs.handed_back;
    let latencies = outside.latencies(&videos)?;
    let p95_measured = capacity::stats::percentile(&latencies, 0.95);
    let service = if jobs.service_seconds.is_empty() {
        vec![1.0]
    } else {
        jobs.service_seconds.clone()
    };
    let boots = fleet
        .boot_seconds
        .get("worker")
        .cloned()
        .unwrap_or_default();
    let boot_s = boots.iter().sum::<f64>() / boots.len().max(1) as f64;
    // The same arrivals (the uploads' times as the database recorded them), service and
    // boot times, on the policy's compressed clock: everything in AWS seconds, then back.
    // The policy evaluates every period since the fleet started, the simulation every
    // period since its t = 0: the arrivals keep their phase within the period.
    let period = capacity::policy::POLICY_PERIOD / size.compression;
    let since_start = outside
        .query(&format!(
            "SELECT extract(epoch FROM uploaded_at - '{}'::timestamptz) FROM videos \
             WHERE id IN ({}) ORDER BY 1",
            fleet.started_wall.to_rfc3339(),
            quoted(&videos)
        ))?
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .collect::<Vec<f64>>();
    let first = since_start.first().copied().unwrap_or(0.0);
    let phase = first.rem_euclid(period);
    let arrivals: Vec<f64> = since_start
        .iter()
        .map(|t| (t - first + phase) * size.compression)
        .collect();
    let setup = capacity::Setup {
        policy: policy.clone(),
        service: capacity::ServiceTime::Samples(
            service.iter().map(|s| s * size.compression).collect(),
        ),
        jobs_per_instance: 1,
        boot_s: boot_s * size.compression,
        seed: 1,
    };
    let predicted = capacity::simulate(&arrivals, &setup);
    let predicted_latencies: Vec<f64> = predicted
        .jobs
        .iter()
        .map(|j| (j.end - j.arrival) / size.compression)
        .collect();
    let p95_predicted = capacity::stats::percentile(&predicted_latencies, 0.95);
    let predicted_max = predicted
        .samples
        .iter()
        .map(|s| s.in_service + s.pending)
        .max()
        .unwrap_or(0);
    let ratio = p95_measured / p95_predicted.max(0.001);
    summary.figure("uploads", videos.len());
    summary.figure("max_instances", fleet.max_workers_in_service);
    summary.figure("predicted_max_instances", predicted_max);
    summary.figure("p95_measured_s", round1(p95_measured));
    summary.figure("p95_predicted_s", round1(p95_predicted));
    summary.figure("p95_ratio", round2(ratio));
    summary.figure(
        "service_time_mean_s",
        round2(service.iter().sum::<f64>() / service.len() as f64),
    );
    summary.figure("worker_boot_mean_s", round1(boot_s));
    summary.figure("seconds", round1(took));
    summary.figure("compression", size.compression);
    let hook_seen = fleet.events[events_start..]
        .iter()
        .any(|(_, e)| e.contains("completed the lifecycle action"));
    let protection_seen = fleet.events[events_start..]
        .iter()
        .any(|(_, e)| e.contains("scale-in waits"));
    summary.figure("lifecycle_hook_completed", hook_seen);
    summary.figure("scale_in_waited_for_protection", protection_seen);
    summary.require(
        summary.videos_processed_twice == 0,
        format!("{} videos processed twice", summary.videos_processed_twice),
    );
    summary.require(
        jobs.handed_back == 0,
        format!("{} jobs cut at scale-in", jobs.handed_back),
    );
    summary.require(
        fleet.max_workers_in_service == max,
        format!(
            "the workers reached {} in service, not the group's maximum {max}",
            fleet.max_workers_in_service
        ),
    );
    summary.require(
        !has_hook || hook_seen,
        "no scale-in went through the lifecycle hook",
    );
    summary.passed = summary.failures.is_empty();
    let samples = &fleet.samples[sample_start..];
    let measured_workers: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.t - t0, f64::from(s.workers_in_service)))
        .collect();
    let measured_queue: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.t - t0, s.visible as f64))
        .collect();
    let predicted_workers: Vec<(f64, f64)> = predicted
        .samples
        .iter()
        .map(|s| (s.t / size.compression, f64::from(s.in_service)))
        .collect();
    let predicted_queue: Vec<(f64, f64)> = predicted
        .samples
        .iter()
        .map(|s| (s.t / size.compression, s.visible as f64))
        .collect();
    let plot = run_dir.join("burst.png");
    if let Err(e) = crate::capacity::plot::lines(
        &plot,
        &format!(
            "Burst of {} uploads: workers and queue, measured vs the simulator (policy clock {}×)",
            videos.len(),
            size.compression
        ),
        "seconds since the burst",
        "workers in service / videos waiting",
        &[
            ("workers in service (measured)", measured_workers),
            ("workers in service (predicted)", predicted_workers),
            ("videos waiting (measured)", measured_queue),
            ("videos waiting (predicted)", predicted_queue),
        ],
    ) {
        eprintln!("rehearse: no burst plot: {e:#}");
    } else {
        summary.figure("plot", plot.display().to_string());
    }
    let _ = std::fs::write(
        run_dir.join("burst-samples.json"),
        serde_json::to_string_pretty(samples)?,
    );
    Ok(summary)
}

/// An upload as a well-behaved client makes it: a 429 (this player's two uploads in
/// flight, counted until the API has let the last one go) is tried again after a second,
/// up to ten times.
async fn upload_as_a_client_does(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    bytes: &[u8],
    title: &str,
) -> anyhow::Result<String> {
    let mut attempt = 0;
    loop {
        match api_client::upload(client, base, token, bytes.to_vec(), title).await {
            Err(e) if attempt < 10 && format!("{e:#}").contains("429") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            outcome => return outcome,
        }
    }
}

/// The database stand-in stopped for a while (an RDS Multi-AZ failover, longer), then
/// back: the API answers 503 (never 500) while it is gone, the worker takes no job, both
/// recover without a restart, and nothing is lost.
fn database_failover(
    fleet: &mut Fleet,
    aws: &mut Aws,
    outside: &Outside,
    dir: &Path,
    base: &str,
    size: Size,
) -> anyhow::Result<ScenarioSummary> {
    let mut summary = ScenarioSummary {
        name: "database failover".into(),
        ..Default::default()
    };
    let restarts_before = service_restarts(fleet);
    let clip = crate::paths::scratch_dir().join("rehearse/clip-burst.mp4");
    let bytes = std::fs::read(&clip)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let token = runtime.block_on(api_client::signup_new_player(&client, base, "Failover"))?;
    // Jobs waiting when the database goes: the worker must leave them queued.
    let journals_before = fleet.live_worker_journals();
    let mut videos = Vec::new();
    for n in 0..FAILOVER_UPLOADS {
        videos.push(runtime.block_on(api_client::upload(
            &client,
            base,
            &token,
            bytes.clone(),
            &format!("Failover {n}"),
        ))?);
    }
    let traffic = Traffic::start(base, &token);
    // The workers that must pause: those in service when it goes (any the policy launches
    // meanwhile boot into the outage).
    let in_service: BTreeSet<String> = fleet
        .members
        .iter()
        .filter(|(_, m)| {
            m.instance.tier == "worker" && m.healthy_at.is_some() && m.terminating.is_none()
        })
        .map(|(id, _)| id.clone())
        .collect();
    let data_dir = dir.join("rds");
    stop_database(&data_dir);
    let stopped = Instant::now();
    let waiting_at_stop = videos.len() - outside.processed(&videos).map_err(|_| ()).unwrap_or(0);
    eprintln!(
        "rehearse: database failover: the stand-in stopped for {:.0} s",
        size.database_outage.as_secs_f64()
    );
    while stopped.elapsed() < size.database_outage {
        fleet.tick()?;
        std::thread::sleep(Duration::from_millis(500));
    }
    outside.database.start_server()?;
    let back = Instant::now();
    let during = traffic.counts_where(|sent, _| sent >= stopped && sent < back);
    // What each worker in service at the stop logged since.
    let pauses = |fleet: &Fleet| -> Vec<OutagePause> {
        fleet
            .live_worker_journals()
            .iter()
            .filter(|(id, _)| in_service.contains(*id))
            .map(|(id, journal)| {
                let seen = journals_before.get(id).map_or(0, |j| j.lines().count());
                outage_pause(&journal.lines().skip(seen).collect::<Vec<_>>())
            })
            .collect()
    };
    // Recovered: a sign-up answers 201 again, every job is processed, and every worker
    // that paused has resumed (one whose recheck came late may find the jobs already done
    // by a worker launched meanwhile).
    let mut recovered_after = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        fleet.tick()?;
        if recovered_after.is_none() && traffic.last_ok_after(back) {
            recovered_after = Some(back.elapsed().as_secs_f64());
        }
        if recovered_after.is_some()
            && outside.processed(&videos)? == videos.len()
            && pauses(fleet).iter().all(|p| !p.paused || p.resumed)
        {
            break;
        }
        if Instant::now() > deadline {
            summary.failures.push(format!(
                "not recovered 5 min after the database came back ({} of {} processed)",
                outside.processed(&videos).unwrap_or(0),
                videos.len()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = traffic.stop();
    let invariants = outside.check(aws, &videos)?;
    let restarts_after = service_restarts(fleet);
    let pauses = pauses(fleet);
    let paused = !pauses.is_empty() && pauses.iter().all(|p| p.paused && p.resumed);
    let jobs_during: usize = pauses.iter().map(|p| p.jobs_during).sum();
    summary.check_invariants(&invariants);
    summary.failed_requests = all.failed_other;
    let jobs = account(&fleet.worker_journals());
    summary.videos_processed_twice = videos
        .iter()
        .filter(|v| jobs.processed.get(*v).copied().unwrap_or(0) > 1)
        .count();
    summary.figure("outage_s", size.database_outage.as_secs());
    summary.figure("requests_during_outage", during.total);
    summary.figure("answered_503_during_outage", during.unavailable);
    summary.figure("answered_500_during_outage", during.server_error);
    summary.figure("slowest_answer_during_outage_s", round1(during.slowest));
    summary.figure(
        "other_failures_by_status",
        describe_statuses(&all.other_statuses),
    );
    summary.figure("jobs_waiting_at_stop", waiting_at_stop);
    summary.figure("workers_paused_and_resumed", paused);
    summary.figure("jobs_finished_during_outage", jobs_during);
    summary.figure(
        "recovered_s_after_back",
        recovered_after.map_or(serde_json::Value::Null, |s| json!(round1(s))),
    );
    // The instances that were running before it went (those launched meanwhile may well
    // restart their first start: cc78aa7).
    let restarted: Vec<&String> = restarts_before
        .iter()
        .filter(|(id, before)| restarts_after.get(*id).is_some_and(|after| after > before))
        .map(|(id, _)| id)
        .collect();
    summary.figure("service_restarts", restarted.len());
    summary.require(
        all.server_error == 0,
        format!("{} answers were 500", all.server_error),
    );
    summary.require(
        all.failed_other == 0,
        format!("{} requests failed otherwise (not 503)", all.failed_other),
    );
    summary.require(
        during.unavailable > 0,
        "no request was answered 503 while the database was gone",
    );
    summary.require(
        paused,
        "not every worker in service logged that it took no jobs while the database was gone, then resumed",
    );
    summary.require(
        jobs_during == 0,
        format!("{jobs_during} jobs ended while the database was gone"),
    );
    summary.require(
        restarted.is_empty(),
        format!("the services of {restarted:?} restarted"),
    );
    summary.passed = summary.failures.is_empty();
    Ok(summary)
}

/// What one worker's journal says of an outage.
#[derive(Debug, PartialEq, Eq)]
struct OutagePause {
    /// It logged that a dependency is down and it takes no jobs.
    paused: bool,
    /// It logged that it takes jobs again.
    resumed: bool,
    /// Jobs it finished (any outcome) between the two.
    jobs_during: usize,
}

fn outage_pause(lines: &[&str]) -> OutagePause {
    let message = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let messages: Vec<String> = lines.iter().map(|l| message(l)).collect();
    let down = messages
        .iter()
        .position(|m| m == "a dependency is down: taking no jobs until it is back");
    let back = messages
        .iter()
        .position(|m| m.ends_with("are back: taking jobs again"));
    let jobs_during = match (down, back) {
        (Some(down), Some(back)) if back > down => messages[down..back]
            .iter()
            .filter(|m| *m == "job finished")
            .count(),
        (Some(down), None) => messages[down..]
            .iter()
            .filter(|m| *m == "job finished")
            .count(),
        _ => 0,
    };
    OutagePause {
        paused: down.is_some(),
        resumed: back.is_some_and(|back| down.is_some_and(|down| back > down)),
        jobs_during,
    }
}

/// Each member's service's restart count (systemd's NRestarts), by instance.
fn service_restarts(fleet: &Fleet) -> BTreeMap<String, u64> {
    fleet
        .members
        .iter()
        .filter_map(|(id, m)| {
            let count = m
                .instance
                .exec(&[
                    "systemctl",
                    "show",
                    "-p",
                    "NRestarts",
                    "--value",
                    m.instance.unit,
                ])
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            Some((id.clone(), count))
        })
        .collect()
}

/// A steady client mix through the load balancer, a few requests a second, counting
/// answers by kind and the time each request was sent.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Each request's send time, answer and how long the answer took.
    answers: Arc<Mutex<Vec<(Instant, Answer, Duration)>>>,
    /// The videos uploaded and the votes cast, when the mix has uploads.
    uploaded: Arc<Mutex<Vec<String>>>,
    votes: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    Unavailable,
    ServerError,
    /// Any other failure: another status, or 0 for no answer within the ALB's idle
    /// timeout (60 s), 1 for a refused or reset connection.
    Failed(u16),
}

impl Answer {
    fn from_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Ok,
            503 => Self::Unavailable,
            500 => Self::ServerError,
            status => Self::Failed(status),
        }
    }

    /// What a failed call of [`api_client`] says, by the status its message carries.
    fn from_error(e: &anyhow::Error) -> Self {
        let text = format!("{e:#}");
        let status = text
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u16>().ok())
            .find(|n| (400..600).contains(n));
        match status {
            Some(status) => Self::from_status(status),
            None if text.contains("timed out") => Self::Failed(0),
            None => Self::Failed(1),
        }
    }
}

/// The steady mix's request of client `client_number` in its `round`: fans reading the
/// public list, a player reading their own videos, a newcomer signing up every fourth.
async fn steady_request(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    client_number: usize,
    round: u64,
) -> Answer {
    let request = match client_number {
        0 if round % 4 == 3 => {
            let email = format!("steady.{}@example.com", api_client::unique_number());
            client.post(format!("{base}/api/auth/signup")).json(&json!({
                "first_name": "Steady", "last_name": "Client", "email": email,
                "password1": "Canasta2026", "password2": "Canasta2026",
                "city": "Cali", "country": "Colombia",
            }))
        }
        1 => client.get(format!("{base}/api/videos")).bearer_auth(token),
        _ => client.get(format!("{base}/api/public/videos?limit=10")),
    };
    match request.send().await.map(|a| a.status().as_u16()) {
        Ok(status) => Answer::from_status(status),
        // No answer: 0 for a timeout, 1 for a refused or reset connection.
        Err(e) => Answer::Failed(u16::from(!e.is_timeout())),
    }
}

/// The value behind `mutex`, even when a thread panicked holding it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A vote by `token` for the first public video it has not voted for: None when there is
/// none (the request made is the list's). The answer of the vote, or of the list when it
/// failed.
async fn vote_once(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    voted: &mut BTreeSet<String>,
) -> Option<Answer> {
    let status = Answer::from_status;
    let listed = client
        .get(format!("{base}/api/public/videos?limit=50"))
        .send()
        .await;
    let listed = match listed {
        Ok(answer) if answer.status().is_success() => answer,
        Ok(answer) => return Some(status(answer.status().as_u16())),
        Err(e) => return Some(Answer::Failed(u16::from(!e.is_timeout()))),
    };
    let videos: Vec<serde_json::Value> = listed.json().await.ok()?;
    let video = videos
        .iter()
        .filter_map(|v| v["video_id"].as_str())
        .find(|id| !voted.contains(*id))?
        .to_owned();
    voted.insert(video.clone());
    Some(
        match client
            .post(format!("{base}/api/public/videos/{video}/vote"))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(answer) => status(answer.status().as_u16()),
            Err(e) => Answer::Failed(u16::from(!e.is_timeout())),
        },
    )
}

/// The 4 s 360p clip the burst and the steady uploads send.
fn upload_clip() -> anyhow::Result<Vec<u8>> {
    let clip = crate::paths::scratch_dir().join("rehearse/clip-burst.mp4");
    crate::media::generate_once(
        &crate::media::Clip::plain(640, 360, 4),
        &clip,
        "a 4 s 360p clip",
    )?;
    Ok(std::fs::read(&clip)?)
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    unavailable: usize,
    server_error: usize,
    failed_other: usize,
    /// The other failures by status (0: no answer in time, 1: connection refused or reset).
    other_statuses: BTreeMap<u16, usize>,
    /// The slowest answer's seconds.
    slowest: f64,
}

impl Counts {
    /// Every answer that was not a success.
    fn failed(&self) -> usize {
        self.unavailable + self.server_error + self.failed_other
    }
}

impl Traffic {
    fn start(base: &str, token: &str) -> Self {
        Self::spawn(base, token, None)
    }

    /// The steady mix of [`Self::start`] for a new player `first_name`, who also uploads
    /// `clip` every [`UPLOAD_EVERY`] of their rounds and votes for a public video they
    /// have not voted for every [`VOTE_EVERY`].
    fn start_with_uploads(base: &str, first_name: &str, clip: Vec<u8>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Runtime::new()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let token = runtime.block_on(api_client::signup_new_player(&client, base, first_name))?;
        Ok(Self::spawn(base, &token, Some(clip)))
    }

    fn spawn(base: &str, token: &str, clip: Option<Vec<u8>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let uploaded = Arc::new(Mutex::new(Vec::new()));
        let votes = Arc::new(Mutex::new(0));
        let (base, token) = (base.to_owned(), token.to_owned());
        let (stopping, recording) = (stop.clone(), answers.clone());
        let (uploads, voting) = (uploaded.clone(), votes.clone());
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return;
            };
            runtime.block_on(async move {
                // An ALB answers 504 after its idle timeout (60 s by default): a client
                // sees no answer only past that.
                let Ok(client) = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                else {
                    return;
                };
                // A few clients, each waiting for its answer before its next request (one
                // stuck on a dead target holds back only itself): fans reading the public
                // list, a player reading their own videos (the database, through the
                // token's check), and a newcomer signing up every 4 s (the API allows 30
                // sign-ups and log-ins a minute from one address; all of these come from
                // this machine's).
                // With a clip, the last client uploads it now and then and the third
                // votes (one vote per video: for one it has not voted for yet).
                let mut requests = tokio::task::JoinSet::new();
                for client_number in 0..CLIENTS {
                    let (client, base, token, recording, stopping) = (
                        client.clone(),
                        base.clone(),
                        token.clone(),
                        recording.clone(),
                        stopping.clone(),
                    );
                    let (clip, uploads, voting) = (clip.clone(), uploads.clone(), voting.clone());
                    requests.spawn(async move {
                        let mut round = 0u64;
                        let mut voted: BTreeSet<String> = BTreeSet::new();
                        while !stopping.load(Ordering::Relaxed) {
                            let sent = Instant::now();
                            let kind = match clip.as_deref() {
                                Some(clip)
                                    if client_number == CLIENTS - 1
                                        && round.is_multiple_of(UPLOAD_EVERY) =>
                                {
                                    let title = format!("Steady upload {round}");
                                    let uploaded = api_client::upload(
                                        &client,
                                        &base,
                                        &token,
                                        clip.to_vec(),
                                        &title,
                                    )
                                    .await;
                                    match uploaded {
                                        Ok(video) => {
                                            lock(&uploads).push(video);
                                            Answer::Ok
                                        }
                                        Err(e) => Answer::from_error(&e),
                                    }
                                }
                                Some(_)
                                    if client_number == 2 && round.is_multiple_of(VOTE_EVERY) =>
                                {
                                    match vote_once(&client, &base, &token, &mut voted).await {
                                        Some(kind) => {
                                            *lock(&voting) += usize::from(kind == Answer::Ok);
                                            kind
                                        }
                                        None => {
                                            steady_request(
                                                &client,
                                                &base,
                                                &token,
                                                client_number,
                                                round,
                                            )
                                            .await
                                        }
                                    }
                                }
                                _ => {
                                    steady_request(&client, &base, &token, client_number, round)
                                        .await
                                }
                            };
                            lock(&recording).push((sent, kind, sent.elapsed()));
                            round += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    });
                }
                while requests.join_next().await.is_some() {}
            });
        });
        Self {
            stop,
            answers,
            uploaded,
            votes,
            thread: Some(thread),
        }
    }

    /// The videos uploaded so far.
    fn uploaded(&self) -> Vec<String> {
        self.uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The votes cast so far.
    fn votes(&self) -> usize {
        *self.votes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counts(&self) -> Counts {
        self.counts_where(|_, _| true)
    }

    /// The answers to the requests that `when(sent, answered)` picks.
    fn counts_where(&self, when: impl Fn(Instant, Instant) -> bool) -> Counts {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = Counts::default();
        for (_, answer, took) in answers
            .iter()
            .filter(|(sent, _, took)| when(*sent, *sent + *took))
        {
            counts.total += 1;
            counts.slowest = counts.slowest.max(took.as_secs_f64());
            match answer {
                Answer::Ok => {}
                Answer::Unavailable => counts.unavailable += 1,
                Answer::ServerError => counts.server_error += 1,
                Answer::Failed(status) => {
                    counts.failed_other += 1;
                    *counts.other_statuses.entry(*status).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Whether a request sent after `at` succeeded.
    fn last_ok_after(&self, at: Instant) -> bool {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(when, answer, _)| *when > at && *answer == Answer::Ok)
    }

    fn stop(self) -> Counts {
        self.stop_keeping().counts()
    }

    /// Stops sending; the answers stay for [`Self::counts_where`].
    fn stop_keeping(mut self) -> Self {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self
    }
}

/// Both instances of zone A powered off under traffic (the zone of a worker holding a
/// job): requests fail only until the load balancer marks the web target down (counted,
/// and the seconds against interval × unhealthy threshold), the job in hand comes back
/// (the queue's visibility timeout) and is processed, and replacements start in the
/// other zone.
fn zone_loss(
    fleet: &mut Fleet,
    aws: &mut Aws,
    outside: &Outside,
    base: &str,
    check: &HealthCheck,
) -> anyhow::Result<ScenarioSummary> {
    let mut summary = ScenarioSummary {
        name: "zone loss".into(),
        ..Default::default()
    };
    // Two instances per tier, one in each zone, as a team runs a tier that must survive a
    // zone: the workers' minimum raised for the scenario (the web tier's already is).
    raise_minimum(aws, "worker", 2)?;
    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    wait_for(
        fleet,
        deadline,
        "two healthy instances per tier, web ones in service",
        |f| {
            let healthy = |tier: &str| {
                f.members
                    .values()
                    .filter(|m| {
                        m.instance.tier == tier && m.healthy_at.is_some() && m.terminating.is_none()
                    })
                    .count()
            };
            let in_rotation = f
                .members
                .values()
                .filter(|m| m.instance.tier == "web")
                .filter(|m| {
                    f.balancer.as_ref().and_then(|b| b.state(&m.instance.name))
                        == Some(TargetState::Healthy)
                })
                .count();
            healthy("web") >= 2 && healthy("worker") >= 2 && in_rotation >= 2
        },
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let token = runtime.block_on(api_client::signup_new_player(&client, base, "Zone"))?;
    let long_clip = crate::paths::scratch_dir().join("rehearse/clip-30s.mp4");
    crate::media::generate_once(
        &crate::media::Clip::plain(1920, 1080, 30),
        &long_clip,
        "a 30 s 1080p clip",
    )?;
    let traffic = Traffic::start(base, &token);
    let video = runtime.block_on(api_client::upload(
        &client,
        base,
        &token,
        std::fs::read(&long_clip)?,
        "In the dark zone",
    ))?;
    // The zone of the worker that took the job (it protects its instance while it works).
    let mut zone = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while zone.is_none() {
        fleet.tick()?;
        zone = fleet
            .members
            .values()
            .find(|m| m.instance.tier == "worker" && m.protected)
            .map(|m| m.zone.clone());
        if Instant::now() > deadline {
            bail!("no worker took the zone scenario's job within 2 min");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let zone = zone.context("the zone")?;
    let status = outside.query(&format!(
        "SELECT status FROM videos WHERE id IN ({})",
        quoted(std::slice::from_ref(&video))
    ))?;
    let dark_web: Vec<String> = fleet
        .members
        .values()
        .filter(|m| m.zone == zone && m.instance.tier == "web")
        .map(|m| m.instance.name.clone())
        .collect();
    let (powered_off, off) = fleet.power_off_zone(&zone);
    let mut marked_down = None;
    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    loop {
        // Before the fleet's tick replaces them (and so deregisters them).
        // When its checks marked the last of them down (read from the checker, not from
        // this loop, whose round may be slow while the fleet launches replacements).
        if marked_down.is_none() {
            let balancer = fleet.balancer.as_ref().context("the balancer")?;
            let down: Option<Vec<Instant>> = dark_web
                .iter()
                .map(|name| {
                    (balancer.state(name) != Some(TargetState::Healthy))
                        .then(|| balancer.changed_at(name))
                        .flatten()
                })
                .collect();
            marked_down = match down {
                // No web instance in that zone: nothing for the load balancer to mark.
                Some(at) if at.is_empty() => Some(Duration::ZERO),
                down => down
                    .and_then(|at| at.into_iter().max())
                    .map(|at| at.saturating_duration_since(off)),
            };
        }
        fleet.tick()?;
        let processed = outside.processed(std::slice::from_ref(&video))? == 1;
        let replaced = ["web", "worker"].iter().all(|tier| {
            fleet
                .members
                .values()
                .filter(|m| m.instance.tier == *tier && m.healthy_at.is_some() && m.zone != zone)
                .count()
                >= 2
        });
        if processed && replaced && marked_down.is_some() {
            break;
        }
        if Instant::now() > deadline {
            summary.failures.push(format!(
                "after 15 min: job processed {processed}, replacements healthy {replaced}"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let recovered = off.elapsed();
    let marked = marked_down.unwrap_or(recovered);
    // Slack for requests already on their way when the target was marked down.
    let window_end = off + marked + Duration::from_secs(1);
    let all = traffic.stop_keeping();
    // A request answered before the power went is "before"; one in flight when it went
    // (a slow sign-up, say) fails with the zone, as on AWS, and counts with those sent
    // until the target was marked down.
    let before = all.counts_where(|_, answered| answered < off);
    let until_marked = all.counts_where(|sent, answered| answered >= off && sent <= window_end);
    let after_marked = all.counts_where(|sent, _| sent > window_end);
    let invariants = outside.check(aws, std::slice::from_ref(&video))?;
    let jobs = account(&fleet.worker_journals());
    summary.check_invariants(&invariants);
    summary.videos_processed_twice =
        usize::from(jobs.processed.get(&video).copied().unwrap_or(0) > 1);
    summary.failed_requests = until_marked.failed() + after_marked.failed() + before.failed();
    let expected = check.interval * check.unhealthy_threshold;
    summary.figure("zone", zone.clone());
    summary.figure("powered_off", powered_off.len());
    summary.figure("job_status_at_power_off", status);
    summary.figure("marked_down_s", round1(marked.as_secs_f64()));
    summary.figure("expected_marked_down_s", round1(expected.as_secs_f64()));
    summary.figure("failed_until_marked_down", until_marked.failed());
    summary.figure(
        "failures_by_status",
        describe_statuses(&all.counts().other_statuses),
    );
    summary.figure("failed_after_marked_down", after_marked.failed());
    summary.figure("requests", all.counts().total);
    summary.figure("recovered_s", round1(recovered.as_secs_f64()));
    let replacement_zones: BTreeSet<String> =
        fleet.members.values().map(|m| m.zone.clone()).collect();
    summary.figure(
        "zones_after",
        replacement_zones.into_iter().collect::<Vec<_>>().join(","),
    );
    summary.require(
        after_marked.failed() == 0 && before.failed() == 0,
        format!(
            "{} requests failed after the load balancer marked the zone's web instance down, {} before the zone went",
            after_marked.failed(),
            before.failed()
        ),
    );
    // Each check waits up to its timeout, and the checker then sleeps the interval: the
    // last passed check may have begun just before the power went, then `threshold`
    // failed ones follow.
    let allowed = (check.interval + check.timeout) * (check.unhealthy_threshold + 1);
    summary.require(
        marked <= allowed,
        format!(
            "the load balancer took {:.1} s to mark the web instance down (interval × threshold \
             {:.1} s, at most {:.1} s with the checks' own time)",
            marked.as_secs_f64(),
            expected.as_secs_f64(),
            allowed.as_secs_f64()
        ),
    );
    summary.require(
        summary.videos_processed_twice == 0,
        "the job was processed twice",
    );
    summary.passed = summary.failures.is_empty();
    Ok(summary)
}

/// Raises `tier`'s group minimum to `min`, and its desired capacity to it if lower (never
/// lowers it: moto would terminate an instance at once, past the lifecycle hook).
fn raise_minimum(aws: &mut Aws, tier: &str, min: u64) -> anyhow::Result<()> {
    let group = names::asg_name(STACK, tier);
    let desired = aws.call(
        "autoscaling",
        "describe_auto_scaling_groups",
        json!({ "AutoScalingGroupNames": [group] }),
    )?["AutoScalingGroups"][0]["DesiredCapacity"]
        .as_u64()
        .unwrap_or(0);
    aws.call(
        "autoscaling",
        "update_auto_scaling_group",
        json!({ "AutoScalingGroupName": group, "MinSize": min, "DesiredCapacity": desired.max(min) }),
    )?;
    Ok(())
}

/// Ticks the fleet until `ready` holds, or fails at `deadline` saying what it waited for.
fn wait_for(
    fleet: &mut Fleet,
    deadline: Instant,
    what: &str,
    ready: impl Fn(&Fleet) -> bool,
) -> anyhow::Result<()> {
    loop {
        fleet.tick()?;
        if ready(fleet) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("waited in vain for {what}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// "504 ×3, no answer in 60 s ×2", or "none".
fn describe_statuses(statuses: &BTreeMap<u16, usize>) -> String {
    if statuses.is_empty() {
        return "none".into();
    }
    statuses
        .iter()
        .map(|(status, n)| match status {
            0 => format!("no answer in 60 s ×{n}"),
            1 => format!("refused or reset ×{n}"),
            status => format!("{status} ×{n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_events(run_dir: &Path, fleet: &Fleet) {
    let events: Vec<serde_json::Value> = fleet
        .events
        .iter()
        .map(|(t, e)| json!({ "t": round1(*t), "event": e }))
        .collect();
    let _ = std::fs::write(
        run_dir.join("events.json"),
        serde_json::to_string_pretty(&events).unwrap_or_default(),
    );
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::{account, outage_pause, OutagePause};

    const DOWN: &str = r#"{"message":"a dependency is down: taking no jobs until it is back"}"#;
    const BACK: &str = r#"{"message":"database, storage and work directory are back: taking jobs again","down_s":31}"#;

    fn finished(video: &str, outcome: &str) -> String {
        format!(
            r#"{{"message":"job finished","video.id":"{video}","outcome":"{outcome}","total_ms":1200,"receive_count":1}}"#
        )
    }

    #[test]
    fn an_outage_is_read_from_the_journal_between_the_pause_and_the_resume() {
        let before = finished("v1", "processed");
        let during = finished("v2", "retry");
        let after = finished("v2", "processed");
        assert_eq!(
            outage_pause(&[&before, DOWN, BACK, &after]),
            OutagePause {
                paused: true,
                resumed: true,
                jobs_during: 0
            }
        );
        assert_eq!(
            outage_pause(&[DOWN, &during, BACK]),
            OutagePause {
                paused: true,
                resumed: true,
                jobs_during: 1
            }
        );
        assert_eq!(
            outage_pause(&[&before, "not json"]),
            OutagePause {
                paused: false,
                resumed: false,
                jobs_during: 0
            }
        );
    }

    #[test]
    fn the_job_account_counts_processing_per_video_and_jobs_handed_back() {
        let journal = [
            finished("v1", "processed"),
            finished("v2", "retry"),
            finished("v2", "processed"),
            finished("v1", "processed"),
            r#"{"message":"handed an unfinished job back to the queue"}"#.to_owned(),
        ]
        .join("\n");
        let jobs = account(&[journal]);
        assert_eq!(jobs.processed.get("v1"), Some(&2), "processed twice");
        assert_eq!(jobs.processed.get("v2"), Some(&1));
        assert_eq!(jobs.handed_back, 1);
        assert_eq!(jobs.service_seconds, vec![1.2, 1.2, 1.2]);
    }
}
