//! The two deploy scenarios: release B rolled onto both tiers under traffic by the real
//! `provision up --wait` (the fleet carries out its instance refreshes), and a release B'
//! whose API exits at start, which the web tier's refresh rolls back by itself while A
//! keeps serving, `up --wait` exiting 1 and saying so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{round1, Outside, ScenarioSummary, Traffic};
use crate::rehearse::aws::Aws;
use crate::rehearse::fleet::Fleet;

/// How long one `provision up --wait` may take: two web and one worker replacement, each
/// a boot and a warm-up, with room.
const DEPLOY_LIMIT: Duration = Duration::from_secs(20 * 60);

/// `provision` pointed at the game day's stack, and the binaries a release is made of.
pub(super) struct Provision {
    pub(super) binary: PathBuf,
    /// `--stack`, `--region`, `--endpoint-url`, `--config`.
    pub(super) flags: Vec<String>,
    pub(super) api: PathBuf,
    pub(super) worker: PathBuf,
    /// Where each command's output is kept.
    pub(super) logs: PathBuf,
}

/// One `provision up --wait` under traffic, as it ended.
struct Deploy {
    exit_code: Option<i32>,
    seconds: f64,
    /// What it printed (standard error and output).
    output: String,
}

impl Provision {
    /// Publishes release `name` of the `api` and `worker` binaries.
    fn publish(&self, name: &str, api: &Path, worker: &Path) -> anyhow::Result<()> {
        let log = self.logs.join(format!("publish-{name}.log"));
        let status = crate::system::command(&self.binary)
            .args(["publish", "--release", name])
            .arg(format!("api={}", api.display()))
            .arg(format!("worker={}", worker.display()))
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .status()
            .context("cannot start provision publish")?;
        anyhow::ensure!(
            status.success(),
            "provision publish --release {name} failed ({status}); see {}",
            log.display()
        );
        Ok(())
    }

    /// `provision up --wait --release release` while the fleet carries out what it starts.
    fn up(&self, fleet: &mut Fleet, release: &str) -> anyhow::Result<Deploy> {
        let log = self.logs.join(format!("up-{release}.log"));
        let started = Instant::now();
        let mut up = crate::system::command(&self.binary)
            .args(["up", "--wait", "--release", release])
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .context("cannot start provision up")?;
        crate::rehearse::interruption::started(up.id());
        let status = loop {
            if let Some(status) = up.try_wait()? {
                break Some(status);
            }
            if started.elapsed() > DEPLOY_LIMIT {
                let _ = up.kill();
                let _ = up.wait();
                break None;
            }
            if let Err(e) = fleet.tick() {
                let _ = up.kill();
                let _ = up.wait();
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        crate::rehearse::interruption::stopped(up.id());
        Ok(Deploy {
            exit_code: status.and_then(|s| s.code()),
            seconds: started.elapsed().as_secs_f64(),
            output: std::fs::read_to_string(&log).unwrap_or_default(),
        })
    }
}

/// The release names the game day publishes.
pub(super) const RELEASE_B: &str = "game-day-b";
const RELEASE_BAD: &str = "game-day-b-prime";

/// Release B (the same binaries under a new name: a new launch template version per
/// tier) replaces A on both tiers under the steady traffic, uploads and votes among it:
/// no request fails, every upload is processed once, `up --wait` exits 0, and every
/// instance runs B.
pub(super) fn rolling_deploy(
    fleet: &mut Fleet,
    aws: &mut Aws,
    outside: &Outside,
    provision: &Provision,
    base: &str,
) -> anyhow::Result<ScenarioSummary> {
    let mut summary = ScenarioSummary {
        name: "rolling deploy".into(),
        ..Default::default()
    };
    provision.publish(RELEASE_B, &provision.api, &provision.worker)?;
    let before = versions(fleet);
    let traffic = Traffic::start_with_uploads(base, "Rolling", super::upload_clip()?)?;
    let (deploy, traffic, uploads) = deployed(
        fleet,
        aws,
        outside,
        provision,
        RELEASE_B,
        traffic,
        &mut summary,
    )?;
    let counts = traffic.counts();
    let after = versions(fleet);
    summary.figure("release", RELEASE_B);
    summary.figure("deploy_s", round1(deploy.seconds));
    summary.figure("up_exit_code", deploy.exit_code.unwrap_or(-1));
    summary.figure("requests", counts.total);
    summary.figure("uploads", uploads.len());
    summary.figure("votes", traffic.votes());
    summary.figure(
        "failures_by_status",
        super::describe_statuses(&counts.other_statuses),
    );
    summary.figure("slowest_answer_s", round1(counts.slowest));
    summary.figure("template_versions_before", before.clone());
    summary.figure("template_versions_after", after.clone());
    summary.require(
        deploy.exit_code == Some(0),
        format!(
            "provision up --wait ended {:?} after {:.0} s:\n{}",
            deploy.exit_code,
            deploy.seconds,
            tail(&deploy.output)
        ),
    );
    summary.require(
        counts.failed() == 0,
        format!(
            "{} of {} requests failed during the deploy",
            counts.failed(),
            counts.total
        ),
    );
    summary.require(!uploads.is_empty(), "no upload was made during the deploy");
    summary.require(
        before != after && after.iter().all(|line| !before.contains(line)),
        format!("instances' template versions before {before:?}, after {after:?}"),
    );
    summary.require(
        summary.videos_processed_twice == 0,
        format!("{} videos processed twice", summary.videos_processed_twice),
    );
    summary.passed = summary.failures.is_empty();
    Ok(summary)
}

/// Release B' (an API that exits at start, the worker as B's) deployed under traffic: its
/// first web instance never passes its health checks, the refresh rolls back by itself,
/// B keeps serving (no request fails), the worker tier is not touched, and `up --wait`
/// exits 1 saying it rolled back to B.
pub(super) fn bad_release(
    fleet: &mut Fleet,
    aws: &mut Aws,
    outside: &Outside,
    provision: &Provision,
    base: &str,
) -> anyhow::Result<ScenarioSummary> {
    let mut summary = ScenarioSummary {
        name: "bad release".into(),
        ..Default::default()
    };
    let failing_api = provision.logs.join("api-that-exits-at-start");
    std::fs::write(
        &failing_api,
        "#!/bin/sh\necho \"anb-api (release B'): exits at start, on purpose\" >&2\nexit 1\n",
    )?;
    provision.publish(RELEASE_BAD, &failing_api, &provision.worker)?;
    let before = versions(fleet);
    let traffic = Traffic::start_with_uploads(base, "Bad", super::upload_clip()?)?;
    let (deploy, traffic, uploads) = deployed(
        fleet,
        aws,
        outside,
        provision,
        RELEASE_BAD,
        traffic,
        &mut summary,
    )?;
    let counts = traffic.counts();
    let after = versions(fleet);
    let rolled_back = deploy
        .output
        .contains(&format!("rolled back to release {RELEASE_B}"));
    summary.figure("release", RELEASE_BAD);
    summary.figure("rolled_back_after_s", round1(deploy.seconds));
    summary.figure("up_exit_code", deploy.exit_code.unwrap_or(-1));
    summary.figure("requests", counts.total);
    summary.figure("uploads", uploads.len());
    summary.figure(
        "failures_by_status",
        super::describe_statuses(&counts.other_statuses),
    );
    summary.figure("template_versions_after", after.clone());
    summary.figure("up_said", said_rollback(&deploy.output));
    summary.require(
        deploy.exit_code == Some(1) && rolled_back,
        format!(
            "provision up --wait ended {:?} and did not say it rolled back to {RELEASE_B}:\n{}",
            deploy.exit_code,
            tail(&deploy.output)
        ),
    );
    summary.require(
        counts.failed() == 0,
        format!(
            "{} of {} requests failed while B' was tried",
            counts.failed(),
            counts.total
        ),
    );
    summary.require(
        before == after,
        format!("instances' template versions before {before:?}, after {after:?}"),
    );
    summary.passed = summary.failures.is_empty();
    Ok(summary)
}

/// `release` deployed under `traffic`; then the traffic stopped, the uploads it made
/// processed (up to 5 min), and the invariants and the requests' failures put in
/// `summary`. The deploy, the traffic's answers and its uploads.
fn deployed(
    fleet: &mut Fleet,
    aws: &mut Aws,
    outside: &Outside,
    provision: &Provision,
    release: &str,
    traffic: Traffic,
    summary: &mut ScenarioSummary,
) -> anyhow::Result<(Deploy, Traffic, Vec<String>)> {
    eprintln!(
        "rehearse: {}: provision up --wait --release {release}",
        summary.name
    );
    let deploy = provision.up(fleet, release)?;
    let traffic = traffic.stop_keeping();
    let uploads = traffic.uploaded();
    let deadline = Instant::now() + Duration::from_secs(5 * 60);
    while outside.processed(&uploads)? < uploads.len() && Instant::now() < deadline {
        fleet.tick()?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let invariants = outside.check(aws, &uploads)?;
    summary.check_invariants(&invariants);
    summary.videos_processed_twice = processed_twice(fleet, &uploads);
    summary.failed_requests = traffic.counts().failed();
    Ok((deploy, traffic, uploads))
}

/// Each member as "tier version", sorted: what runs where, by launch template version.
fn versions(fleet: &Fleet) -> Vec<String> {
    let mut lines: Vec<String> = fleet
        .members
        .values()
        .filter(|m| m.terminating.is_none())
        .map(|m| format!("{} {}", m.instance.tier, m.template_version))
        .collect();
    lines.sort();
    lines
}

/// How many of `videos` the workers' journals say were processed more than once.
fn processed_twice(fleet: &Fleet, videos: &[String]) -> usize {
    let jobs = super::account(&fleet.worker_journals());
    videos
        .iter()
        .filter(|v| jobs.processed.get(*v).copied().unwrap_or(0) > 1)
        .count()
}

/// The line of `up`'s output that says which release the refresh rolled back to, if any.
fn said_rollback(output: &str) -> String {
    output
        .lines()
        .find(|l| l.contains("rolled back to release"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The last lines of a command's output, for a failure's message.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
