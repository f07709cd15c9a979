//! What `up` needs beyond converging resources: release artifacts in the bucket, the
//! public URL, and waiting until the load balancer has healthy targets.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use sha2::{Digest, Sha256};

use crate::aws::{error_kind, Aws, ErrorKind};

/// The binaries a release is made of.
pub const ARTIFACTS: [&str; 2] = ["api", "worker"];

/// `artifacts/<release>/<name>`: where instances download a service's binary from.
pub fn artifact_key(release: &str, name: &str) -> String {
    format!("artifacts/{release}/{name}")
}

/// The checksum file next to an artifact, in `sha256sum` format so instances check it
/// with `sha256sum --check`.
pub fn checksum_line(digest: &str, name: &str) -> String {
    format!("{digest}  {name}\n")
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// An object or bucket that is not there. S3 answers a HEAD (and, through some
/// emulators, a GET) of a missing key with a bare 404 that carries no error code.
fn is_missing<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    error_kind(e) == ErrorKind::NotFound
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}

impl Aws {
    /// The text of an object, or `None` when it does not exist.
    async fn read_object(&self, bucket: &str, key: &str) -> anyhow::Result<Option<String>> {
        let read = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .expected_bucket_owner(&self.account_id)
            .send()
            .await;
        match read {
            Ok(object) => {
                let bytes = object.body.collect().await?.into_bytes();
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                Err(e).with_context(|| format!("read s3://{bucket}/{key} (HTTP {status:?})"))
            }
        }
    }

    /// Uploads each `(name, file)` to `artifacts/<release>/<name>`, then its checksum: a
    /// checksum present means its artifact is complete. An artifact already there with
    /// the same checksum is skipped; a different one is refused (releases are immutable).
    pub async fn publish(
        &self,
        bucket: &str,
        release: &str,
        files: &[(String, std::path::PathBuf)],
    ) -> anyhow::Result<()> {
        for (name, path) in files {
            let digest = sha256_of(path)?;
            let key = artifact_key(release, name);
            let checksum_key = format!("{key}.sha256");
            let line = checksum_line(&digest, name);
            match self.read_object(bucket, &checksum_key).await? {
                Some(existing) if existing == line => {
                    eprintln!("  s3://{bucket}/{key} is already published (sha256 {digest})");
                    continue;
                }
                Some(existing) => anyhow::bail!(
                    "release {release} already has a different {name} (sha256 {}); \
                     publish this build under a new release name",
                    existing.split_whitespace().next().unwrap_or("?")
                ),
                None => {}
            }
            let size = std::fs::metadata(path)?.len();
            let started = Instant::now();
            let body = aws_sdk_s3::primitives::ByteStream::from_path(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            self.s3
                .put_object()
                .bucket(bucket)
                .key(&key)
                .expected_bucket_owner(&self.account_id)
                .body(body)
                .send()
                .await
                .with_context(|| format!("upload {} to s3://{bucket}/{key}", path.display()))?;
            self.s3
                .put_object()
                .bucket(bucket)
                .key(&checksum_key)
                .expected_bucket_owner(&self.account_id)
                .content_type("text/plain")
                .body(line.into_bytes().into())
                .send()
                .await
                .with_context(|| format!("upload s3://{bucket}/{checksum_key}"))?;
            eprintln!(
                "  published s3://{bucket}/{key} ({:.1} MB in {:.1} s, sha256 {digest})",
                size as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// The SHA-256 of each of `release`'s binaries that is published, by name, as its
    /// checksum object says (the checksum is written after its binary, so one present
    /// means the binary is complete).
    pub async fn published_digests(
        &self,
        bucket: &str,
        release: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut digests = BTreeMap::new();
        for name in ARTIFACTS {
            let key = format!("{}.sha256", artifact_key(release, name));
            if let Some(line) = self.read_object(bucket, &key).await? {
                let digest = line.split_whitespace().next().unwrap_or_default();
                anyhow::ensure!(
                    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                    "s3://{bucket}/{key} holds no SHA-256: {line:?}"
                );
                digests.insert((*name).to_owned(), digest.to_ascii_lowercase());
            }
        }
        Ok(digests)
    }

    /// The load balancer's DNS name, once it exists.
    pub async fn load_balancer_dns(&self) -> anyhow::Result<Option<String>> {
        let name = crate::names::load_balancer_name(&self.stack);
        match self.elb.describe_load_balancers().names(&name).send().await {
            Ok(found) => Ok(found
                .load_balancers()
                .first()
                .and_then(|lb| lb.dns_name())
                .map(str::to_owned)),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("describe the load balancer"),
        }
    }

    /// Waits until at least `wanted` targets behind the load balancer are healthy,
    /// saying how many are and for how long it has waited.
    pub async fn wait_for_healthy_targets(
        &self,
        wanted: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let name = crate::names::target_group_name(&self.stack);
        let groups = self
            .elb
            .describe_target_groups()
            .names(&name)
            .send()
            .await
            .context("describe the target group")?;
        let arn = groups
            .target_groups()
            .first()
            .and_then(|g| g.target_group_arn())
            .context("the target group does not exist")?
            .to_owned();
        let started = Instant::now();
        let mut wait = stack_config::progress::Wait::start(
            "healthy targets behind the load balancer",
            "instances install and start in 2–4 min",
        );
        loop {
            let health = self
                .elb
                .describe_target_health()
                .target_group_arn(&arn)
                .send()
                .await
                .context("describe target health")?;
            let states: Vec<&str> = health
                .target_health_descriptions()
                .iter()
                .filter_map(|t| t.target_health().and_then(|h| h.state()))
                .map(|s| s.as_str())
                .collect();
            let healthy = states.iter().filter(|s| **s == "healthy").count();
            if healthy >= wanted {
                wait.done(&format!("{healthy} healthy"));
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "after {:.0} min, {healthy} of the {wanted} web instance(s) wanted are healthy \
                 (targets: {states:?}); read the instances' logs (see below) and run `up` again",
                timeout.as_secs_f64() / 60.0
            );
            wait.status(
                &format!("{healthy} of {wanted} healthy, {} registered", states.len()),
                Some(100.0 * healthy as f64 / wanted.max(1) as f64),
            );
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    }
}

/// One release published in the stack's bucket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublishedRelease {
    pub name: String,
    /// When its newest object was uploaded (RFC 3339).
    pub published: String,
    /// Each binary's SHA-256.
    pub digests: BTreeMap<String, String>,
    /// The tiers whose group launches it now.
    pub running_on: Vec<String>,
}

impl Aws {
    /// The releases in `bucket` (under `artifacts/`), oldest first, and which tier's
    /// group launches each.
    pub async fn releases(&self, bucket: &str) -> anyhow::Result<Vec<PublishedRelease>> {
        let mut published: BTreeMap<String, aws_sdk_s3::primitives::DateTime> = BTreeMap::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix("artifacts/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) if e.code() == Some("NoSuchBucket") => return Ok(Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("list s3://{bucket}/artifacts/")),
            };
            for object in page.contents() {
                let Some((release, _)) = object
                    .key()
                    .and_then(|k| k.strip_prefix("artifacts/"))
                    .and_then(|k| k.split_once('/'))
                else {
                    continue;
                };
                let time = object
                    .last_modified()
                    .copied()
                    .unwrap_or(aws_sdk_s3::primitives::DateTime::from_secs(0));
                let newest = published.entry(release.to_owned()).or_insert(time);
                if time.secs() > newest.secs() {
                    *newest = time;
                }
            }
        }
        let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for tier in ["web", "worker"] {
            let group = crate::names::asg_name(&self.stack, tier);
            let missing = self
                .autoscaling
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(&group)
                .send()
                .await
                .context("describe auto-scaling groups")?
                .auto_scaling_groups()
                .is_empty();
            if !missing {
                let release = self.group_release(&group).await?;
                running.entry(release).or_default().push(tier.to_owned());
            }
        }
        let mut releases = Vec::new();
        for (name, time) in published {
            releases.push(PublishedRelease {
                digests: self.published_digests(bucket, &name).await?,
                published: time
                    .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
                    .unwrap_or_default(),
                running_on: running.remove(&name).unwrap_or_default(),
                name,
            });
        }
        releases.sort_by(|a, b| a.published.cmp(&b.published).then(a.name.cmp(&b.name)));
        Ok(releases)
    }
}

/// `provision releases` as text: one line per release, oldest first.
pub fn render_releases(releases: &[PublishedRelease]) -> String {
    if releases.is_empty() {
        return "No release is published yet: `cargo xtask up` publishes one (or `provision \
                publish --release NAME api=FILE worker=FILE`)."
            .to_owned();
    }
    let short = |r: &PublishedRelease, name: &str| {
        r.digests
            .get(name)
            .map_or("-".to_owned(), |d| d[..12.min(d.len())].to_owned())
    };
    let rows: Vec<[String; 5]> = releases
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.published.clone(),
                short(r, "api"),
                short(r, "worker"),
                r.running_on.join(", "),
            ]
        })
        .collect();
    let header = [
        "RELEASE",
        "PUBLISHED",
        "API SHA-256",
        "WORKER SHA-256",
        "RUNS ON",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header)];
    for row in &rows {
        out.push(line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out.push(String::new());
    out.push(
        "Roll back by hand: `provision up --wait --release NAME` (each tier is refreshed onto it, \
         one after the other)."
            .to_owned(),
    );
    out.join("\n")
}

/// Where rolling the tiers onto their newest launch template stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every group runs its template's newest version.
    Done,
    /// A refresh of `group` is under way (started now or earlier): the next tier waits
    /// for it, so the stack never runs more than one extra instance per tier.
    Refreshing { group: String, id: String },
}

/// The statuses of a refresh that has not ended (AWS's `InstanceRefreshStatus`).
const ACTIVE: [&str; 5] = [
    "Pending",
    "InProgress",
    "Cancelling",
    "RollbackInProgress",
    "Baking",
];

/// Max healthy percentage that lets a refresh launch one instance above the group's
/// `max_size` and no more (AWS launches at least one either way): the lab's cap of 9
/// running instances holds with both tiers at their maximum of 3 while one refreshes.
pub fn max_healthy_percentage(max_size: u32) -> i32 {
    let extra = 100_u32.div_ceil(max_size.max(1));
    (100 + extra).min(200) as i32
}

impl Aws {
    /// Rolls the tiers onto their launch templates' newest versions, web first: starts an
    /// instance refresh on the first group that launches an older version (or runs
    /// instances of one), unless a refresh of it is already under way, which the next
    /// tier waits for. A tier already on its newest version is not asked about refreshes. The refresh names the new version, so AWS can roll back to the one the
    /// group ran before, by itself when one of the tier's alarms goes off or new
    /// instances fail their health checks. `group_max` is each tier's `max_size`.
    pub async fn roll_next_tier(&self, group_max: [(&str, u32); 2]) -> anyhow::Result<Rollout> {
        for (tier, max_size) in group_max {
            let group = crate::names::asg_name(&self.stack, tier);
            let found = self
                .autoscaling
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(&group)
                .send()
                .await
                .context("describe auto-scaling groups")?;
            let Some(asg) = found.auto_scaling_groups().first() else {
                continue;
            };
            let Some(template) = asg.launch_template().and_then(|t| t.launch_template_name())
            else {
                continue;
            };
            let latest = crate::resources::compute::latest_template_version(self, template).await?;
            let group_version = asg.launch_template().and_then(|t| t.version());
            let instance_versions: Vec<Option<&str>> = asg
                .instances()
                .iter()
                .map(|i| i.launch_template().and_then(|t| t.version()))
                .collect();
            let outdated = outdated_instances(&instance_versions, latest);
            let group_behind = group_version
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < latest);
            if outdated == 0 && !group_behind {
                continue;
            }
            if let Some(id) = self.active_refresh(&group).await? {
                eprintln!("  {group}: an instance refresh is under way");
                return Ok(Rollout::Refreshing { group, id });
            }
            let release = self.release_of(template, latest).await?;
            let started = self
                .autoscaling
                .start_instance_refresh()
                .auto_scaling_group_name(&group)
                .desired_configuration(
                    aws_sdk_autoscaling::types::DesiredConfiguration::builder()
                        .launch_template(crate::resources::compute::template_version(
                            template, latest,
                        ))
                        .build(),
                )
                .preferences(refresh_preferences(&self.stack, tier, max_size))
                .send()
                .await;
            match started {
                Ok(out) => {
                    eprintln!(
                        "  {group}: replacing {} instance(s) with release {release} (template \
                         version {latest}), one at a time, new ones first; rolls back by itself \
                         if {} goes off",
                        instance_versions.len(),
                        crate::resources::monitoring::refresh_alarms(&self.stack, tier)
                            .join(" or ")
                    );
                    let id = out.instance_refresh_id().unwrap_or_default().to_owned();
                    return Ok(Rollout::Refreshing { group, id });
                }
                Err(e) => anyhow::bail!(
                    "{group}: could not start the instance refresh to release {release}: {}; \
                     its instances keep the release they run. Run `provision up` again",
                    e.message().or(e.code()).unwrap_or("no reason given")
                ),
            }
        }
        Ok(Rollout::Done)
    }

    /// The refresh of `group` that has not ended, if any.
    async fn active_refresh(&self, group: &str) -> anyhow::Result<Option<String>> {
        let refreshes = self
            .autoscaling
            .describe_instance_refreshes()
            .auto_scaling_group_name(group)
            .send()
            .await
            .with_context(|| format!("describe the instance refreshes of {group}"))?;
        Ok(refreshes
            .instance_refreshes()
            .iter()
            .find(|r| r.status().is_some_and(|s| ACTIVE.contains(&s.as_str())))
            .and_then(|r| r.instance_refresh_id())
            .map(str::to_owned))
    }

    /// The release a launch template version installs (its user data's RELEASE).
    pub async fn release_of(&self, template: &str, version: i64) -> anyhow::Result<String> {
        let versions = self
            .ec2
            .describe_launch_template_versions()
            .launch_template_name(template)
            .versions(version.to_string())
            .send()
            .await
            .with_context(|| format!("describe version {version} of {template}"))?;
        let user_data = versions
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
            .and_then(|d| d.user_data())
            .and_then(|encoded| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).ok()
            })
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        Ok(crate::userdata::header(&user_data)
            .remove("RELEASE")
            .unwrap_or_else(|| format!("(template version {version})")))
    }

    /// Follows refresh `id` of `group` to its end, showing its percentage, polling every
    /// `poll`. Ok when it replaced every instance; an error that says which release the
    /// tier runs when it failed, was cancelled or rolled back.
    pub async fn follow_refresh(
        &self,
        group: &str,
        id: &str,
        poll: Duration,
    ) -> anyhow::Result<()> {
        let mut wait = stack_config::progress::Wait::start(
            format!("the instance refresh of {group}"),
            "about 3–5 min per instance: boot, health checks, 120 s warm-up",
        );
        let started = Instant::now();
        loop {
            let found = self
                .autoscaling
                .describe_instance_refreshes()
                .auto_scaling_group_name(group)
                .instance_refresh_ids(id)
                .send()
                .await
                .with_context(|| format!("describe instance refresh {id} of {group}"))?;
            let refresh = found
                .instance_refreshes()
                .first()
                .with_context(|| format!("instance refresh {id} of {group} is gone"))?;
            let status = refresh.status().map(|s| s.as_str()).unwrap_or("unknown");
            let reason = refresh.status_reason().unwrap_or("no reason given");
            let desired_version = refresh
                .desired_configuration()
                .and_then(|d| d.launch_template())
                .and_then(|t| t.version().map(|v| (t.launch_template_name(), v)));
            let desired = match desired_version {
                Some((Some(template), version)) => match version.parse::<i64>() {
                    Ok(number) => self.release_of(template, number).await?,
                    Err(_) => version.to_owned(),
                },
                _ => "the new release".to_owned(),
            };
            match status {
                "Successful" => {
                    wait.done(&format!(
                        "release {desired} on every instance in {:.0} s",
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                "RollbackSuccessful" => {
                    wait.done("rolled back");
                    let now = self.group_release(group).await?;
                    anyhow::bail!(
                        "{group}: release {desired} failed ({reason}) and the instance refresh \
                         rolled back to release {now}, which serves again. Fix the release and \
                         deploy a new one, or `provision up --release {now}` to make {now} the \
                         desired state (until then `up` tries {desired} again)"
                    );
                }
                "Failed" | "Cancelled" | "RollbackFailed" => {
                    wait.done(status);
                    let now = self.group_release(group).await?;
                    anyhow::bail!(
                        "{group}: the instance refresh to release {desired} ended {status} \
                         ({reason}); the group launches release {now}, and its instances may \
                         run either. `provision status` shows them; `provision up` starts a \
                         new refresh"
                    );
                }
                _ => {}
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60 * 60),
                "{group}: the instance refresh to release {desired} has not ended after 60 \
                 min ({status}: {reason}); it goes on without this command: `provision up \
                 --wait` follows it again"
            );
            let percent = refresh.percentage_complete().map(f64::from);
            wait.status(
                &format!(
                    "{status}, release {desired}, {} instance(s) to update",
                    refresh.instances_to_update().unwrap_or_default()
                ),
                percent,
            );
            tokio::time::sleep(poll).await;
        }
    }

    /// The release group `group` launches now (after a refresh, what it ended on).
    async fn group_release(&self, group: &str) -> anyhow::Result<String> {
        let found = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .context("describe auto-scaling groups")?;
        let template = found
            .auto_scaling_groups()
            .first()
            .and_then(|g| g.launch_template())
            .with_context(|| format!("{group} has no launch template"))?;
        let version = template.version().unwrap_or_default();
        match (template.launch_template_name(), version.parse::<i64>()) {
            (Some(name), Ok(number)) => self.release_of(name, number).await,
            _ => Ok(format!("(template version {version})")),
        }
    }
}

/// How a tier's instances are replaced: new instances first (100 % stay healthy), at
/// most one above `max_size`; back to the version before when one of the tier's alarms
/// goes off (`AutoRollback` needs the numbered desired configuration `roll_next_tier`
/// gives). A worker that protects its instance while it holds a job is still replaced
/// (`Refresh`): its termination lifecycle hook lets the job finish first, where `Wait`
/// would stall the refresh for as long as a backlog keeps every worker busy.
fn refresh_preferences(
    stack: &str,
    tier: &str,
    max_size: u32,
) -> aws_sdk_autoscaling::types::RefreshPreferences {
    use aws_sdk_autoscaling::types::{
        AlarmSpecification, RefreshPreferences, ScaleInProtectedInstances, StandbyInstances,
    };
    RefreshPreferences::builder()
        .min_healthy_percentage(100)
        .max_healthy_percentage(max_healthy_percentage(max_size))
        .instance_warmup(120)
        .skip_matching(true)
        .auto_rollback(true)
        .alarm_specification(
            AlarmSpecification::builder()
                .set_alarms(Some(crate::resources::monitoring::refresh_alarms(
                    stack, tier,
                )))
                .build(),
        )
        .scale_in_protected_instances(ScaleInProtectedInstances::Refresh)
        .standby_instances(StandbyInstances::Terminate)
        .build()
}

/// Instances launched from a numbered template version older than `latest`. Versions
/// that are not numbers (`$Latest`) cannot be compared: left alone.
fn outdated_instances(versions: &[Option<&str>], latest: i64) -> usize {
    versions
        .iter()
        .filter(|v| {
            v.and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < latest)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_in_sha256sum_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api");
        std::fs::write(&file, b"abc").unwrap();
        let digest = sha256_of(&file).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            checksum_line(&digest, "api"),
            format!("{digest}  api\n"),
            "two spaces: what `sha256sum --check` reads"
        );
        assert_eq!(artifact_key("r1", "api"), "artifacts/r1/api");
    }

    #[test]
    fn only_instances_on_older_numbered_versions_are_rolled() {
        assert_eq!(
            outdated_instances(&[Some("1"), Some("2"), Some("3"), None, Some("$Latest")], 3),
            2
        );
        assert_eq!(outdated_instances(&[Some("3")], 3), 0);
    }

    #[test]
    fn a_refresh_adds_at_most_one_instance_to_a_full_tier() {
        for max_size in 1..=10_u32 {
            let percent = max_healthy_percentage(max_size);
            assert!((101..=200).contains(&percent), "{max_size}: {percent}");
            // AWS launches up to floor(desired × max / 100) at once.
            let peak = max_size * percent as u32 / 100;
            assert_eq!(peak, max_size + 1, "max_size {max_size}: {percent} %");
        }
    }
}
