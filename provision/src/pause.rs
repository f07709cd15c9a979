//! Pause and resume for a lab's budget: `pause` brings both groups to 0 instances (what
//! each had is kept in a tag on the group, so nothing local is needed to come back) and
//! stops the database; `resume` puts both back and waits until the web tier answers.
//!
//! A paused stack is a state, not drift: `status` compares a paused group's sizes from its
//! tag, and says the stack is paused. `up` refuses on a paused stack (it would start the
//! instances at half of a resume).

use std::time::Duration;

use anyhow::Context;
use aws_sdk_autoscaling::types::Tag;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{error_kind, Aws, ErrorKind};
use crate::names::{asg_name, database_name};

/// On a paused group: the sizes it returns to, and since when it is paused. On the
/// database: since when it is stopped.
pub const PAUSED_TAG: &str = "anb:paused";

/// AWS starts a stopped RDS instance again after this long (and bills it again).
pub const RDS_STOP_LIMIT_DAYS: i64 = 7;

/// What a paused group goes back to, as its [`PAUSED_TAG`] holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PausedGroup {
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub since: DateTime<Utc>,
}

impl PausedGroup {
    pub fn tag_value(&self) -> String {
        format!(
            "min={} max={} desired={} since={}",
            self.min,
            self.max,
            self.desired,
            self.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    /// The inverse of [`Self::tag_value`]; None for a value this program did not write
    /// (or sizes no group can have).
    pub fn parse(value: &str) -> Option<Self> {
        let fields: std::collections::HashMap<&str, &str> = value
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let sizes = Self {
            min: fields.get("min")?.parse().ok()?,
            max: fields.get("max")?.parse().ok()?,
            desired: fields.get("desired")?.parse().ok()?,
            since: DateTime::parse_from_rfc3339(fields.get("since")?)
                .ok()?
                .with_timezone(&Utc),
        };
        (0 <= sizes.min && sizes.min <= sizes.max).then_some(sizes)
    }
}

/// A paused stack, as its groups' and database's tags say.
#[derive(Debug, Clone, Serialize)]
pub struct Paused {
    pub since: DateTime<Utc>,
    /// Each paused group's name and what it returns to.
    pub groups: Vec<(String, PausedGroup)>,
    /// When AWS starts the stopped database again by itself (None: not stopped by pause).
    pub database_restarts: Option<DateTime<Utc>>,
    /// The database's status now ("stopped"; "available" once AWS has started it again).
    pub database_status: Option<String>,
}

impl Paused {
    pub fn summary(&self) -> String {
        let started_again = self.database_status.as_deref() == Some("available")
            || self.database_restarts.is_some_and(|at| at <= Utc::now());
        let restarts = match self.database_restarts {
            Some(at) if started_again => format!(
                "; AWS started the database again on {} (7 days after it was stopped) and bills \
                 it: run `provision pause` again to stop it",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
            Some(at) => format!(
                "; AWS starts the stopped database again on {} (run `provision pause` again \
                 after that to stop it again)",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
            None => String::new(),
        };
        format!(
            "paused since {}{restarts}. `provision resume` brings it back",
            self.since.format("%Y-%m-%d %H:%M UTC")
        )
    }
}

impl Aws {
    /// The stack's groups as AWS describes them (those that exist), web first.
    async fn groups(&self) -> anyhow::Result<Vec<aws_sdk_autoscaling::types::AutoScalingGroup>> {
        let found = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(asg_name(&self.stack, "web"))
            .auto_scaling_group_names(asg_name(&self.stack, "worker"))
            .send()
            .await
            .context("describe auto-scaling groups")?;
        let mut groups = found.auto_scaling_groups().to_vec();
        groups.sort_by_key(|g| g.auto_scaling_group_name() != Some(&asg_name(&self.stack, "web")));
        Ok(groups)
    }

    /// Whether the stack is paused, and since when (from the tags `pause` wrote).
    pub async fn paused(&self) -> anyhow::Result<Option<Paused>> {
        let groups: Vec<(String, PausedGroup)> = self
            .groups()
            .await?
            .iter()
            .filter_map(|g| {
                let tag = g.tags().iter().find(|t| t.key() == Some(PAUSED_TAG))?;
                Some((
                    g.auto_scaling_group_name()?.to_owned(),
                    PausedGroup::parse(tag.value()?)?,
                ))
            })
            .collect();
        let database = self.database().await?;
        let database_since = match &database {
            Some((arn, _)) => self.database_paused_since(arn).await?,
            None => None,
        };
        let Some(since) = groups
            .iter()
            .map(|(_, g)| g.since)
            .chain(database_since)
            .min()
        else {
            return Ok(None);
        };
        Ok(Some(Paused {
            since,
            groups,
            database_restarts: database_since
                .map(|at| at + chrono::Duration::days(RDS_STOP_LIMIT_DAYS)),
            database_status: database.map(|(_, status)| status),
        }))
    }

    /// The database's ARN and status, when it exists.
    async fn database(&self) -> anyhow::Result<Option<(String, String)>> {
        match self
            .rds
            .describe_db_instances()
            .db_instance_identifier(database_name(&self.stack))
            .send()
            .await
        {
            Ok(found) => Ok(found.db_instances().first().map(|db| {
                (
                    db.db_instance_arn().unwrap_or_default().to_owned(),
                    db.db_instance_status().unwrap_or_default().to_owned(),
                )
            })),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("describe the database"),
        }
    }

    async fn database_paused_since(&self, arn: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let tags = self
            .rds
            .list_tags_for_resource()
            .resource_name(arn)
            .send()
            .await
            .context("read the database's tags")?;
        Ok(tags
            .tag_list()
            .iter()
            .find(|t| t.key() == Some(PAUSED_TAG))
            .and_then(|t| DateTime::parse_from_rfc3339(t.value()?).ok())
            .map(|at| at.with_timezone(&Utc)))
    }

    /// Both groups to 0 (their sizes kept in a tag), then, once their instances are gone
    /// (a worker finishes the job in hand first: the termination hook waits for it), the
    /// database stopped. Running it again continues; a group already paused keeps the
    /// sizes it was paused with.
    pub async fn pause(&self, drain_limit: Duration) -> anyhow::Result<()> {
        let now = Utc::now();
        let groups = self.groups().await?;
        anyhow::ensure!(
            !groups.is_empty(),
            "stack {} has no auto-scaling groups: nothing to pause (`provision up` creates it)",
            self.stack
        );
        for group in &groups {
            let name = group.auto_scaling_group_name().unwrap_or_default();
            if group.tags().iter().any(|t| t.key() == Some(PAUSED_TAG)) {
                eprintln!("  {name} is already paused");
            } else {
                let sizes = PausedGroup {
                    min: group.min_size().unwrap_or_default(),
                    max: group.max_size().unwrap_or_default(),
                    desired: group.desired_capacity().unwrap_or_default(),
                    since: now,
                };
                // The tag first: a run cut off after it resumes to the right sizes.
                self.autoscaling
                    .create_or_update_tags()
                    .tags(
                        Tag::builder()
                            .resource_id(name)
                            .resource_type("auto-scaling-group")
                            .key(PAUSED_TAG)
                            .value(sizes.tag_value())
                            .propagate_at_launch(false)
                            .build(),
                    )
                    .send()
                    .await
                    .with_context(|| format!("tag {name} as paused"))?;
                eprintln!(
                    "  {name}: {} instance(s) → 0 (min {}, max {} kept for resume)",
                    sizes.desired, sizes.min, sizes.max
                );
            }
            self.autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(name)
                .min_size(0)
                .max_size(0)
                .desired_capacity(0)
                .send()
                .await
                .with_context(|| format!("bring {name} to 0 instances"))?;
        }
        self.wait_for_no_instances(drain_limit).await?;
        match self.database().await? {
            None => eprintln!("  no database to stop"),
            Some((_, status)) if status == "stopped" || status == "stopping" => {
                eprintln!("  the database is already {status}");
            }
            Some((arn, status)) => {
                anyhow::ensure!(
                    status == "available",
                    "the groups are at 0, but the database is {status} and cannot be stopped \
                     now: run `provision pause` again in a few minutes"
                );
                self.rds
                    .add_tags_to_resource()
                    .resource_name(&arn)
                    .tags(
                        aws_sdk_rds::types::Tag::builder()
                            .key(PAUSED_TAG)
                            .value(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .build(),
                    )
                    .send()
                    .await
                    .context("tag the database as paused")?;
                self.rds
                    .stop_db_instance()
                    .db_instance_identifier(database_name(&self.stack))
                    .send()
                    .await
                    .context("stop the database")?;
                eprintln!("  database {} stopping", database_name(&self.stack));
            }
        }
        Ok(())
    }

    /// Waits until neither group has an instance left.
    async fn wait_for_no_instances(&self, limit: Duration) -> anyhow::Result<()> {
        let mut wait = stack_config::progress::Wait::start(
            "the instances to stop",
            "a worker finishes the video in hand first",
        );
        let started = std::time::Instant::now();
        loop {
            let left: usize = self
                .groups()
                .await?
                .iter()
                .map(|g| g.instances().len())
                .sum();
            if left == 0 {
                wait.done("none left");
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "{left} instance(s) still running after {} min; the database is left running \
                 for them. Run `provision pause` again to go on waiting",
                limit.as_secs() / 60
            );
            wait.status(&format!("{left} left"), None);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// The database started (and waited for), then each paused group back to the sizes
    /// in its tag, the tag removed. Running it again continues.
    pub async fn resume(&self, limit: Duration) -> anyhow::Result<()> {
        if let Some((arn, mut status)) = self.database().await? {
            // A `pause` that just ended leaves it stopping: it can be started once stopped.
            let started = std::time::Instant::now();
            while status == "stopping" && started.elapsed() < limit {
                eprintln!("  the database is still stopping; it starts once stopped");
                tokio::time::sleep(Duration::from_secs(10)).await;
                status = self.database().await?.map(|(_, s)| s).unwrap_or_default();
            }
            if status == "stopped" {
                self.rds
                    .start_db_instance()
                    .db_instance_identifier(database_name(&self.stack))
                    .send()
                    .await
                    .context("start the database")?;
                eprintln!("  database {} starting", database_name(&self.stack));
            }
            self.wait_for_database(limit).await?;
            self.rds
                .remove_tags_from_resource()
                .resource_name(&arn)
                .tag_keys(PAUSED_TAG)
                .send()
                .await
                .context("untag the database")?;
        }
        for group in self.groups().await? {
            let name = group.auto_scaling_group_name().unwrap_or_default();
            let Some(sizes) = group
                .tags()
                .iter()
                .find(|t| t.key() == Some(PAUSED_TAG))
                .and_then(|t| PausedGroup::parse(t.value()?))
            else {
                continue;
            };
            self.autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(name)
                .min_size(sizes.min)
                .max_size(sizes.max)
                .desired_capacity(sizes.desired.clamp(sizes.min, sizes.max))
                .send()
                .await
                .with_context(|| format!("bring {name} back"))?;
            self.autoscaling
                .delete_tags()
                .tags(
                    Tag::builder()
                        .resource_id(name)
                        .resource_type("auto-scaling-group")
                        .key(PAUSED_TAG)
                        .build(),
                )
                .send()
                .await
                .with_context(|| format!("untag {name}"))?;
            eprintln!(
                "  {name}: back to {} instance(s) (min {}, max {})",
                sizes.desired, sizes.min, sizes.max
            );
        }
        Ok(())
    }

    /// Waits until the database is available (a stopped one takes a few minutes).
    async fn wait_for_database(&self, limit: Duration) -> anyhow::Result<()> {
        let mut wait =
            stack_config::progress::Wait::start("the database to start", "usually 5–10 min");
        let started = std::time::Instant::now();
        loop {
            let status = self.database().await?.map(|(_, s)| s).unwrap_or_default();
            if status == "available" {
                wait.done("available");
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "the database is still {status} after {} min: run `provision resume` again",
                limit.as_secs() / 60
            );
            wait.status(&status, None);
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_groups_sizes_read_back_from_its_tag() {
        let sizes = PausedGroup {
            min: 1,
            max: 3,
            desired: 2,
            since: DateTime::parse_from_rfc3339("2026-12-04T05:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        assert_eq!(
            sizes.tag_value(),
            "min=1 max=3 desired=2 since=2026-12-04T05:00:00Z"
        );
        assert_eq!(PausedGroup::parse(&sizes.tag_value()), Some(sizes));
        assert_eq!(PausedGroup::parse("yes"), None);
        assert_eq!(
            PausedGroup::parse("min=3 max=1 desired=2 since=2026-12-04T05:00:00Z"),
            None,
            "min over max"
        );
        assert_eq!(PausedGroup::parse("min=1 max=3"), None);
    }
}
