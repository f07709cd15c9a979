//! Rolling a release onto the tiers: an instance refresh per group, one tier after the
//! other, with auto-rollback on the tier's alarms; following a refresh to its end; and
//! the releases the bucket holds with the one each group launches.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;

use crate::aws::Aws;

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
            if let Some(release) = self.launched_release(&group).await? {
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

/// The deploy history as text, oldest first.
pub fn render_deploys(deploys: &[crate::deploy::DeployRecord]) -> String {
    if deploys.is_empty() {
        return "No deploy recorded yet (each `provision up` adds one).\n".to_owned();
    }
    let mut out = format!("Last {} deploy(s), oldest first:\n", deploys.len());
    for d in deploys {
        out.push_str(&format!(
            "  {}  {:<12} {:>6.0} s  {}  {}\n",
            d.started,
            d.release,
            d.seconds,
            if d.succeeded { "ok    " } else { "FAILED" },
            d.outcome
        ));
        out.push_str(&format!("      by {}\n", d.who));
    }
    out
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
            let group_number = group_version.and_then(|v| v.parse::<i64>().ok());
            // A group an older `provision` made launches `$Latest`, which AWS cannot roll
            // back from: it is pinned to the number first, and its instances (launched from
            // whatever `$Latest` was) are refreshed onto it.
            let pinned = group_number.is_none();
            if pinned {
                self.autoscaling
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(&group)
                    .launch_template(crate::resources::compute::template_version(
                        template, latest,
                    ))
                    .send()
                    .await
                    .with_context(|| format!("pin {group} to version {latest} of {template}"))?;
                eprintln!(
                    "  {group}: launches version {latest} of {template} by number from now on \
                     (was {})",
                    group_version.unwrap_or("unset")
                );
            }
            let group_behind = group_number.is_some_and(|v| v < latest);
            if outdated == 0 && !group_behind && !pinned {
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
    /// `poll`, for at most `limit`. Ok when it replaced every instance; an error that says which release the
    /// tier runs when it failed, was cancelled or rolled back.
    pub async fn follow_refresh(
        &self,
        group: &str,
        id: &str,
        poll: Duration,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let mut wait = stack_config::progress::Wait::start(
            format!("the instance refresh of {group}"),
            "about 3–5 min per instance: boot, health checks, 120 s warm-up",
        );
        let started = Instant::now();
        // Read once: the refresh's desired configuration does not change while it runs.
        let mut desired: Option<String> = None;
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
            if desired.is_none() {
                let desired_version = refresh
                    .desired_configuration()
                    .and_then(|d| d.launch_template())
                    .and_then(|t| t.version().map(|v| (t.launch_template_name(), v)));
                desired = Some(match desired_version {
                    Some((Some(template), version)) => match version.parse::<i64>() {
                        Ok(number) => self.release_of(template, number).await?,
                        Err(_) => version.to_owned(),
                    },
                    _ => "the new release".to_owned(),
                });
            }
            let desired = desired.as_deref().unwrap_or_default();
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
                started.elapsed() < limit,
                "{group}: the instance refresh to release {desired} has not ended after {} \
                 min ({status}: {reason}); it goes on without this command: `provision up \
                 --wait` follows it again",
                limit.as_secs() / 60
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
    pub(crate) async fn group_release(&self, group: &str) -> anyhow::Result<String> {
        self.launched_release(group)
            .await?
            .with_context(|| format!("{group} does not exist"))
    }

    /// [`Self::group_release`], or None when the group does not exist.
    async fn launched_release(&self, group: &str) -> anyhow::Result<Option<String>> {
        let found = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .context("describe auto-scaling groups")?;
        let Some(asg) = found.auto_scaling_groups().first() else {
            return Ok(None);
        };
        let template = asg
            .launch_template()
            .with_context(|| format!("{group} has no launch template"))?;
        let version = template.version().unwrap_or_default();
        match (template.launch_template_name(), version.parse::<i64>()) {
            (Some(name), Ok(number)) => self.release_of(name, number).await.map(Some),
            _ => Ok(Some(format!("(template version {version})"))),
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
