//! `provision`: converges the ANB Rising Stars AWS stack to `config/aws.toml`.
//!
//! Architecture invariant: `plan`, `status` and `up` are one pipeline — desired state
//! (pure, from config) and observed state (read from AWS) go into a pure diff — stopped at
//! different points. This is the only crate that knows VPCs, subnets and security groups;
//! it deploys the services' binaries but never links them.
//!
//! It manages the network (VPC, subnets, internet gateway, public routes), the security
//! groups, the S3 bucket, the SQS queues, the CloudWatch alarms and dashboard, the load
//! balancer with its target group and listeners, RDS (subnet group and instance), the
//! token signing secret, the launch templates with the instances' user data
//! (`userdata/`, naming a release published under `artifacts/` in the bucket), and both
//! auto-scaling groups with their scaling policies.

pub mod aws;
pub use stack_config as config;
pub mod deploy;
pub mod desired;
mod engine;
pub mod health;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod pause;
pub use stack_config::names;
pub mod plan;
pub(crate) mod resources;
pub mod rollout;
pub mod userdata;

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::aws::Aws;
use crate::config::Config;
use crate::model::{Action, Change};
pub use crate::plan::Output;
use crate::plan::{print_changes, report};

/// What `status` found (and its exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    InSync,
    Drift,
}

/// What a command may do to the stack's data, as its flags say. The defaults are the
/// safe choices: nothing stateful is replaced, `down` keeps the bucket, a final snapshot
/// and the automated backups, and the token secret stays recoverable for 7 days.
#[derive(Debug, Clone, Default)]
pub struct Safeguards {
    /// `up --replace-database`: a database whose configuration cannot change in place may
    /// be replaced, after a snapshot of it is available.
    pub replace_database: bool,
    /// `up --restore-from`: a database that does not exist yet is created from this
    /// snapshot instead of empty.
    pub restore_from: Option<String>,
    /// `down --skip-final-snapshot`: delete the database without a final snapshot.
    pub skip_final_snapshot: bool,
    /// `down --purge`: delete the token secret at once, without the recovery window.
    pub purge: bool,
    /// `down --delete-videos`: delete the bucket too, with every video and release in it.
    pub delete_videos: bool,
}

/// How a command runs, decided before the stack is opened and fixed after.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// An AWS endpoint override (an emulator such as moto).
    pub endpoint: Option<String>,
    /// Show AWS ids next to names (`-v`).
    pub verbose: bool,
    /// The services' release the instances run; `None`: whatever the launch templates
    /// already name.
    pub release: Option<String>,
    /// What the command may do to the stack's data.
    pub safeguards: Safeguards,
}

pub struct Stack {
    pub config: Config,
    pub aws: Aws,
    safeguards: Safeguards,
    ami: String,
    verbose: bool,
    release: Option<String>,
    /// False for an emulator on plain HTTP (see `desired::Inputs`).
    over_tls: bool,
}

impl Stack {
    pub async fn open(config: Config, options: StackOptions) -> anyhow::Result<Self> {
        let StackOptions {
            endpoint,
            verbose,
            release,
            safeguards,
        } = options;
        let endpoint = endpoint.as_deref();
        let aws = Aws::connect(&config.stack.name, &config.stack.region, endpoint).await?;
        let ami = match config.instances.ami.as_str() {
            "" => resources::compute::latest_debian_ami(&aws).await?,
            ami => ami.to_owned(),
        };
        Ok(Self {
            config,
            aws,
            safeguards,
            ami,
            verbose,
            release,
            over_tls: !endpoint.is_some_and(|e| e.starts_with("http://")),
        })
    }

    pub fn bucket(&self) -> String {
        names::bucket_name(&self.config, &self.aws.account_id)
    }

    /// Desired versus observed, in creation order, orphans last.
    pub async fn changes(&self) -> anyhow::Result<Vec<Change>> {
        Ok(self.compare().await?.0)
    }

    /// [`Self::changes`], and what was observed.
    async fn compare(&self) -> anyhow::Result<(Vec<Change>, Vec<model::Observed>)> {
        let observed = self.aws.observe(&self.bucket()).await?;
        let release = self
            .release
            .clone()
            .unwrap_or_else(|| deployed_release(&observed));
        let digests = if release.is_empty() {
            BTreeMap::new()
        } else {
            self.aws.published_digests(&self.bucket(), &release).await?
        };
        let release = userdata::Release {
            name: &release,
            api_sha256: digests.get("api").map_or("", String::as_str),
            worker_sha256: digests.get("worker").map_or("", String::as_str),
        };
        refuse_swapped_binaries(&observed, &release)?;
        let mut changes = model::diff(&self.desired(release), &observed);
        // An address taken out of the file before it confirmed: SNS gives no ARN to
        // unsubscribe it by, it receives nothing, and AWS drops it after 3 days; counting
        // it as drift would fail every `status` until then (`status --health` shows it).
        changes.retain(|c| {
            !(c.kind == model::Kind::AlertSubscription
                && c.action == Action::Orphan
                && c.id.as_deref() == Some(resources::alerts::PENDING_CONFIRMATION))
        });
        Ok((changes, observed))
    }

    fn desired(&self, release: userdata::Release) -> Vec<model::Resource> {
        let inputs = desired::Inputs {
            account_id: &self.aws.account_id,
            ami: &self.ami,
            release,
            over_tls: self.over_tls,
        };
        desired::desired_state(&self.config, &inputs)
    }

    pub async fn plan(&self, output: Output) -> anyhow::Result<Vec<Change>> {
        let (changes, observed) = self.compare().await?;
        let cost = plan::Cost {
            configured: self.cost()?,
            deployed: self.deployed_cost(&observed)?,
        };
        print_changes(&changes, output, self.verbose, Some(&cost));
        Ok(changes)
    }

    /// What the stack costs an hour as configured, at the groups' minimum sizes.
    pub fn cost(&self) -> anyhow::Result<Vec<capacity::CostLine>> {
        let desired = self.desired(userdata::Release::default());
        Ok(cost_of(&desired, &self.config.stack.name, None)?
            .expect("the desired state has both groups and the database"))
    }

    /// What the stack as deployed costs an hour (None when it is not all there yet).
    fn deployed_cost(
        &self,
        observed: &[model::Observed],
    ) -> anyhow::Result<Option<Vec<capacity::CostLine>>> {
        let resources: Vec<model::Resource> = observed.iter().map(|o| o.resource.clone()).collect();
        cost_of(&resources, &self.config.stack.name, None)
    }

    /// Converges; returns how many changes were made. Re-running after an interruption
    /// picks up where it stopped: everything is found again by its tags. Ends by starting
    /// the rolling of the first tier whose instances run an older release (see
    /// [`Stack::roll`]).
    pub async fn up(&self, output: Output) -> anyhow::Result<usize> {
        let started = Instant::now();
        if let Some(paused) = self.aws.paused().await? {
            anyhow::bail!(
                "nothing changed: stack {} is {}; run `provision resume` first, then `up`",
                self.config.stack.name,
                paused.summary()
            );
        }
        let changes = self.changes().await?;
        let todo: Vec<&Change> = changes
            .iter()
            .filter(|c| c.is_change() && (c.action != Action::Orphan || c.kind.removed_by_up()))
            .collect();
        self.refuse_data_loss(&todo)?;
        if todo.is_empty() {
            Box::pin(self.roll(false)).await?;
            report(
                output,
                "up",
                json!({"changes": 0}),
                "No changes: the stack already matches the configuration.",
            );
            return Ok(0);
        }
        self.check_release(&changes, &todo)?;
        eprintln!(
            "Applying {} change(s) to stack {}:",
            todo.len(),
            self.config.stack.name
        );
        self.aws.apply(&changes, &self.safeguards).await?;
        self.delete_superseded(&todo).await?;
        Box::pin(self.roll(false)).await?;
        let orphans = changes
            .iter()
            .filter(|c| c.action == Action::Orphan && !c.kind.removed_by_up())
            .count();
        let note = if orphans > 0 {
            format!(" ({orphans} orphan(s) left alone: see `provision status`)")
        } else {
            String::new()
        };
        report(
            output,
            "up",
            json!({"changes": todo.len(), "seconds": started.elapsed().as_secs_f64()}),
            &format!(
                "Done: {} change(s) in {:.1} s{note}.",
                todo.len(),
                started.elapsed().as_secs_f64()
            ),
        );
        Ok(todo.len())
    }

    /// Deletes what an earlier configuration left that would go on acting on the stack
    /// (the other worker policy's scaling policies and alarms): alarms first, so none
    /// fires into a policy being deleted.
    async fn delete_superseded(&self, todo: &[&Change]) -> anyhow::Result<()> {
        let mut superseded: Vec<&&Change> =
            todo.iter().filter(|c| c.action == Action::Orphan).collect();
        superseded.sort_by_key(|c| c.kind != model::Kind::Alarm);
        for change in superseded {
            eprintln!(
                "  deleting {} {} (no longer configured)",
                change.kind, change.name
            );
            let id = change.id.as_deref().unwrap_or_default();
            self.aws
                .delete(change.kind, &change.name, id, &self.safeguards)
                .await
                .map_err(|e| e.context(format!("delete {} {}", change.kind, change.name)))?;
        }
        Ok(())
    }

    /// Rolls the tiers onto the release their launch templates name, one tier at a time
    /// (web, then worker), so each runs at most one instance above its maximum. Without
    /// `follow` it starts (or finds) the first tier's instance refresh and returns: the
    /// next `up` starts the next tier once that one has ended. With `follow` it waits for
    /// each refresh to end, showing its percentage, and fails with the release the tier
    /// went back to when AWS rolled one back.
    pub async fn roll(&self, follow: bool) -> anyhow::Result<()> {
        let maxima = [
            ("web", self.config.web.max_size),
            ("worker", self.config.worker.max_size),
        ];
        // The emulator answers at once; AWS's figures change every few seconds at most.
        let poll = if self.over_tls {
            std::time::Duration::from_secs(15)
        } else {
            std::time::Duration::from_millis(200)
        };
        // Each instance: a boot, and a worker's drain of up to its hook's heartbeat.
        let most = u64::from(self.config.web.max_size.max(self.config.worker.max_size));
        let limit = std::time::Duration::from_secs(60 * (10 + 20 * most));
        let mut followed: Vec<String> = Vec::new();
        loop {
            // Boxed: the SDK's futures are large, and `up` awaits this inside its own.
            match Box::pin(self.aws.roll_next_tier(maxima)).await? {
                rollout::Rollout::Done => return Ok(()),
                rollout::Rollout::Refreshing { group, id } => {
                    if !follow {
                        eprintln!(
                            "  {group} rolls on without this command (`provision status` shows \
                             it); the next tier starts at the next `up`, or run `provision up \
                             --wait` to follow every tier to the end"
                        );
                        return Ok(());
                    }
                    anyhow::ensure!(
                        followed.len() < 4,
                        "{group}: four instance refreshes ended and a tier still runs an older \
                         release; `provision status` shows its instances"
                    );
                    anyhow::ensure!(
                        !followed.contains(&id),
                        "{group}: instance refresh {id} ended but the group still runs an older \
                         release; `provision status` shows its instances"
                    );
                    Box::pin(self.aws.follow_refresh(&group, &id, poll, limit)).await?;
                    followed.push(id);
                }
            }
        }
    }

    /// `provision releases`: what is published in the bucket and what each tier runs.
    pub async fn releases(&self, output: Output) -> anyhow::Result<Vec<rollout::PublishedRelease>> {
        let releases = self.aws.releases(&self.bucket()).await?;
        let deploys = self.aws.deploy_records(&self.bucket()).await?;
        report(
            output,
            "releases",
            json!({"releases": releases, "deploys": deploys}),
            &format!(
                "{}\n\n{}",
                rollout::render_releases(&releases),
                rollout::render_deploys(&deploys).trim_end()
            ),
        );
        Ok(releases)
    }

    /// The release `up` deploys: the one asked for, else the one the web launch template
    /// names now.
    pub async fn target_release(&self) -> anyhow::Result<String> {
        if let Some(release) = &self.release {
            return Ok(release.clone());
        }
        let template = names::launch_template_name(&self.config.stack.name, "web");
        let version = resources::compute::latest_template_version(&self.aws, &template).await?;
        self.aws.release_of(&template, version).await
    }

    /// Stops `up` before it changes anything when a change would delete data: a bucket or
    /// database replaced (only `--replace-database` allows the database's, after a
    /// snapshot), or `--restore-from` given with no database to create.
    fn refuse_data_loss(&self, todo: &[&Change]) -> anyhow::Result<()> {
        let safeguards = &self.safeguards;
        if let Some(snapshot) = &safeguards.restore_from {
            let creates_database = todo.iter().any(|c| {
                c.kind == model::Kind::Database
                    && matches!(c.action, Action::Create | Action::Replace(_))
            });
            anyhow::ensure!(
                creates_database,
                "nothing changed: --restore-from {snapshot} restores into a new database, and \
                 stack {} already has one (`provision down` first, or add --replace-database)",
                self.config.stack.name
            );
        }
        for change in todo {
            let Action::Replace(fields) = &change.action else {
                continue;
            };
            if !change.kind.holds_data()
                || (change.kind == model::Kind::Database && safeguards.replace_database)
            {
                continue;
            }
            let why: Vec<String> = fields
                .iter()
                .filter(|f| change.kind.replace_only().contains(&f.field.as_str()))
                .map(|f| {
                    format!(
                        "{} ({} → {})",
                        f.field,
                        f.old.as_deref().unwrap_or("none"),
                        f.new.as_deref().unwrap_or("none")
                    )
                })
                .collect();
            let upgrade = fields.iter().any(|f| f.field == "engine_version");
            let way_out = if upgrade {
                "A major version upgrade is done in place with `aws rds modify-db-instance \
                 --engine-version … --allow-major-version-upgrade` (and a parameter group of \
                 the new family), then the configuration follows; or put the old value back"
            } else if change.kind == model::Kind::Database {
                "Put the old value back in the configuration, or run `provision up \
                 --replace-database` to replace it after a snapshot (whose data `up \
                 --restore-from SNAPSHOT` can bring back)"
            } else {
                "Put the old value back in the configuration"
            };
            anyhow::bail!(
                "nothing changed: {} {} would be replaced, deleting the data in it, because {} \
                 cannot change in place. {way_out}.",
                change.kind,
                change.name,
                why.join(", ")
            );
        }
        Ok(())
    }

    /// Refuses to write launch templates whose instances could not install their release:
    /// a template whose binary digest `changes` found no checksum for in the bucket.
    fn check_release(&self, changes: &[Change], todo: &[&Change]) -> anyhow::Result<()> {
        let Some(template) = todo.iter().find(|c| c.kind == model::Kind::LaunchTemplate) else {
            return Ok(());
        };
        let release = template.desired.get("release").cloned().unwrap_or_default();
        anyhow::ensure!(
            !release.is_empty(),
            "no release to deploy: `cargo xtask up` builds and publishes one, or run \
             `provision publish --release NAME api=FILE worker=FILE` then `provision up --release NAME`"
        );
        let missing: Vec<String> = changes
            .iter()
            .filter(|c| c.kind == model::Kind::LaunchTemplate)
            .filter(|c| c.desired.get("binary_sha256").is_none_or(String::is_empty))
            .map(|c| {
                let binary = names::Tier::of_launch_template(&c.name).binary();
                format!(
                    "s3://{}/{}",
                    self.bucket(),
                    deploy::artifact_key(&release, binary)
                )
            })
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "release {release} is not published (missing {}): `provision publish --release {release} …` first",
            missing.join(", ")
        );
        Ok(())
    }

    /// Creates the bucket if needed (with its settings) and uploads the release's
    /// artifacts under `artifacts/<release>/`.
    pub async fn publish(
        &self,
        release: &str,
        files: &[(String, std::path::PathBuf)],
    ) -> anyhow::Result<()> {
        // Only the bucket matters here: observe it alone, not the whole stack.
        let desired: Vec<model::Resource> = self
            .desired(userdata::Release {
                name: release,
                ..userdata::Release::default()
            })
            .into_iter()
            .filter(|r| r.kind == model::Kind::Bucket)
            .collect();
        let observed = resources::bucket::observe(&self.aws, &self.bucket()).await?;
        let bucket: Vec<Change> = model::diff(&desired, &observed)
            .into_iter()
            .filter(Change::is_change)
            .collect();
        if !bucket.is_empty() {
            eprintln!("Preparing bucket {}:", self.bucket());
            self.aws.apply(&bucket, &self.safeguards).await?;
        }
        eprintln!("Publishing release {release}:");
        self.aws.publish(&self.bucket(), release, files).await
    }

    /// The public URL (once the load balancer exists) and where the logs are.
    pub async fn endpoints(&self) -> anyhow::Result<(Option<String>, String)> {
        let scheme = if self.config.load_balancer.certificate_arn.is_empty() {
            "http"
        } else {
            "https"
        };
        let url = self
            .aws
            .load_balancer_dns()
            .await?
            .map(|dns| format!("{scheme}://{dns}"));
        let region = &self.config.stack.region;
        let mut logs = String::new();
        if self.config.logs.cloudwatch_agent {
            logs.push_str(&format!(
                "aws logs tail /anb/{} --follow --region {region}\n",
                self.config.stack.name
            ));
        }
        logs.push_str(&format!(
            "aws ec2 get-console-output --latest --region {region} --instance-id <id>   (boot log; ids: aws autoscaling describe-auto-scaling-groups)\n"
        ));
        Ok((url, logs))
    }

    pub async fn wait_for_healthy_targets(
        &self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        self.aws
            .wait_for_healthy_targets(self.config.web.min_size.max(1) as usize, timeout)
            .await
    }

    pub async fn status(&self, output: Output) -> anyhow::Result<Sync> {
        let changes = self.changes().await?;
        print_changes(&changes, output, self.verbose, None);
        if let (Some(paused), Output::Text) = (self.aws.paused().await?, output) {
            println!("Stack {} is {}.", self.config.stack.name, paused.summary());
        }
        Ok(if changes.iter().any(Change::is_change) {
            Sync::Drift
        } else {
            Sync::InSync
        })
    }

    /// `provision status --health`: the stack's health, drift and cost, read now.
    pub async fn health(&self) -> anyhow::Result<health::Health> {
        let desired = self.desired(userdata::Release::default());
        let alarms: Vec<(String, bool)> = desired
            .iter()
            .filter(|r| r.kind == model::Kind::Alarm)
            .map(|r| (r.name.clone(), r.props.contains_key("notify")))
            .collect();
        let (parts, compared) = tokio::join!(
            Box::pin(self.aws.health_parts(&alarms)),
            Box::pin(self.compare())
        );
        let mut health = parts?;
        for address in &mut health.alerts {
            address.configured = self.config.alerts.emails.contains(&address.endpoint);
        }
        let (changes, observed) = compared?;
        health.drift = changes
            .iter()
            .filter(|c| c.is_change())
            .map(|c| format!("{} {}", c.kind, c.name))
            .collect();
        let resources: Vec<model::Resource> = observed.iter().map(|o| o.resource.clone()).collect();
        // What runs now: each group's desired capacity, the database as it is.
        let desired_of = |tier: &str| {
            health
                .tiers
                .iter()
                .find(|t| t.tier == tier)
                .map_or(0, |t| t.desired.max(0) as u32)
        };
        let running = Running {
            web: desired_of("web"),
            worker: desired_of("worker"),
            database_stopped: health
                .database
                .as_ref()
                .is_some_and(|db| db.status == "stopped"),
        };
        health.usd_per_hour = cost_of(&resources, &self.config.stack.name, Some(running))?
            .map_or(0.0, |lines| lines.iter().map(|l| l.usd_per_hour).sum());
        Ok(health)
    }

    /// `provision pause`: both groups to 0 and the database stopped; says what still
    /// costs while paused.
    pub async fn pause(&self) -> anyhow::Result<()> {
        // A worker being scaled in finishes its video first: at most one ffmpeg run, plus
        // its upload and the instance's shutdown.
        let drain = stack_config::worker_ffmpeg_timeout() + std::time::Duration::from_secs(600);
        eprintln!("Pausing stack {}:", self.config.stack.name);
        self.aws.pause(drain).await?;
        let desired = self.desired(userdata::Release::default());
        let paused = Running {
            web: 0,
            worker: 0,
            database_stopped: true,
        };
        let still = cost_of(&desired, &self.config.stack.name, Some(paused))?
            .expect("the desired state has both groups and the database");
        let hourly: f64 = still.iter().map(|l| l.usd_per_hour).sum();
        let billed: Vec<String> = still
            .iter()
            .filter(|l| l.usd_per_hour > 0.0)
            .map(|l| format!("  ${:.4}/h  {}", l.usd_per_hour, l.what))
            .collect();
        let paused = self
            .aws
            .paused()
            .await?
            .context("the stack's tags do not say it is paused")?;
        println!(
            "Stack {} is {}.\nWhile paused it still costs ${hourly:.3}/h (about ${:.0} a \
             month), besides the bucket's storage:\n{}",
            self.config.stack.name,
            paused.summary(),
            hourly * capacity::HOURS_PER_MONTH,
            billed.join("\n")
        );
        Ok(())
    }

    /// `provision resume`: the database started, the groups back to their sizes, then a
    /// wait (up to 30 min) until the load balancer has healthy web instances.
    pub async fn resume(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.aws.paused().await?.is_some(),
            "stack {} is not paused: nothing to resume",
            self.config.stack.name
        );
        eprintln!("Resuming stack {}:", self.config.stack.name);
        let limit = std::time::Duration::from_secs(30 * 60);
        self.aws.resume(limit).await?;
        self.wait_for_healthy_targets(limit).await?;
        println!("Stack {} is running again.", self.config.stack.name);
        Ok(())
    }

    /// Deletes everything carrying the stack tag, dependents first, but the bucket (with
    /// the videos: a database snapshot without them would restore rows with no files)
    /// unless `--delete-videos`. Goes on past failures and returns what is left (empty when
    /// clean; the kept bucket is not counted); running it again continues.
    pub async fn down(&self) -> anyhow::Result<Vec<String>> {
        let bucket = names::bucket_name(&self.config, &self.aws.account_id);
        let keeps_bucket = !self.safeguards.delete_videos;
        let to_delete =
            |o: &model::Observed| !(keeps_bucket && o.resource.kind == model::Kind::Bucket);
        let all = self.aws.observe(&bucket).await?;
        if keeps_bucket && all.iter().any(|o| o.resource.kind == model::Kind::Bucket) {
            self.say_bucket_kept(&bucket).await;
        }
        let observed: Vec<model::Observed> = all.into_iter().filter(to_delete).collect();
        if observed.is_empty() {
            eprintln!(
                "Nothing to delete: no resource carries the stack tag {}.",
                self.config.stack.name
            );
            return Ok(Vec::new());
        }
        if let Err(e) = resources::security_group::revoke_cross_references(&self.aws).await {
            eprintln!("  could not revoke security-group cross-references: {e:#}");
        }
        // Dependents first (see `Kind::teardown_rank`); within a level, everything at once,
        // so the long waits (the groups' instances, RDS, a NAT gateway) overlap.
        let mut ordered = observed;
        ordered.sort_by_key(|o| o.resource.kind.teardown_rank());
        let levels = ordered
            .chunk_by(|a, b| a.resource.kind.teardown_rank() == b.resource.kind.teardown_rank());
        for level in levels {
            futures_util::future::join_all(level.iter().map(|o| self.delete_one(o))).await;
        }
        let left = self.aws.observe(&bucket).await?;
        Ok(left
            .iter()
            .filter(|o| to_delete(o))
            .map(|o| format!("{} {} ({})", o.resource.kind, o.resource.name, o.id))
            .collect())
    }

    /// Says that the stack's bucket stays, with how much is in it, and how to delete it.
    async fn say_bucket_kept(&self, bucket: &str) {
        let listed = self
            .aws
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .expected_bucket_owner(&self.aws.account_id)
            .send()
            .await;
        let Ok(listed) = listed else {
            return; // no bucket (or not ours): nothing is kept
        };
        let objects = listed.key_count().unwrap_or_default();
        let more = if listed.is_truncated() == Some(true) {
            " or more"
        } else {
            ""
        };
        eprintln!(
            "  keeping bucket {bucket} ({objects}{more} objects: videos and releases); the next \
             `up` uses it again, `provision down --delete-videos` deletes it"
        );
    }
}

/// Stops when the bucket's digest of a binary differs from the one a launch template
/// already pins for the same release: releases are never rewritten (`publish` refuses),
/// so someone replaced the binary and its checksum in the bucket.
fn refuse_swapped_binaries(
    observed: &[model::Observed],
    release: &userdata::Release,
) -> anyhow::Result<()> {
    for template in observed
        .iter()
        .filter(|o| o.resource.kind == model::Kind::LaunchTemplate)
    {
        let props = &template.resource.props;
        let pinned = props.get("binary_sha256").map_or("", String::as_str);
        let tier = names::Tier::of_launch_template(&template.resource.name);
        let in_bucket = release.sha256_for(tier);
        let same_release = props.get("release").map(String::as_str) == Some(release.name);
        anyhow::ensure!(
            !same_release || pinned.is_empty() || in_bucket.is_empty() || pinned == in_bucket,
            "release {} of the {} binary changed in the bucket since it was deployed (sha256 \
             {pinned} pinned in {}, {in_bucket} in the bucket): releases are never rewritten, \
             so it was replaced by someone else. Nothing changed; publish a new release from a \
             trusted build and deploy that.",
            release.name,
            tier.name(),
            template.resource.name
        );
    }
    Ok(())
}

/// What runs, where it is not the configuration's minimum: instances per tier, and
/// whether the database is stopped.
struct Running {
    web: u32,
    worker: u32,
    database_stopped: bool,
}

/// What the stack made of `resources` (desired or observed) costs an hour: at the groups'
/// minimum sizes, or as `running` says. None when the groups, their templates or the
/// database are missing.
fn cost_of(
    resources: &[model::Resource],
    stack: &str,
    running: Option<Running>,
) -> anyhow::Result<Option<Vec<capacity::CostLine>>> {
    let find = |kind: model::Kind, name: &str| {
        resources
            .iter()
            .find(|r| r.kind == kind && r.name == name)
            .map(|r| &r.props)
    };
    let prop = |props: &model::Props, key: &str| props.get(key).cloned().unwrap_or_default();
    let tier = |tier: &str| -> Option<(String, u32)> {
        let template = find(
            model::Kind::LaunchTemplate,
            &names::launch_template_name(stack, tier),
        )?;
        let group = find(model::Kind::AutoScalingGroup, &names::asg_name(stack, tier))?;
        let count = match (&running, tier) {
            (Some(running), "web") => running.web,
            (Some(running), _) => running.worker,
            (None, _) => prop(group, "min_size").parse().ok()?,
        };
        Some((prop(template, "instance_type"), count))
    };
    let (Some(web), Some(worker), Some(database)) = (
        tier("web"),
        tier("worker"),
        find(model::Kind::Database, &names::database_name(stack)),
    ) else {
        return Ok(None);
    };
    let count = |kind: model::Kind| resources.iter().filter(|r| r.kind == kind).count() as u32;
    // Target tracking adds two alarms of its own.
    let tracking = resources.iter().any(|r| {
        r.kind == model::Kind::ScalingPolicy
            && r.props.get("policy_type").map(String::as_str) == Some("TargetTrackingScaling")
    });
    capacity::stack_cost(&capacity::StackShape {
        web,
        worker,
        volume_gb: resources::compute::ROOT_VOLUME_GB,
        web_detailed_monitoring: true,
        database_class: prop(database, "instance_class"),
        multi_az: prop(database, "multi_az") == "true",
        database_stopped: running.as_ref().is_some_and(|r| r.database_stopped),
        storage_gb: prop(database, "allocated_storage")
            .parse()
            .unwrap_or_default(),
        public_instances: count(model::Kind::NatGateway) == 0,
        // The token signing key, and the database's master password RDS keeps.
        secrets: 2,
        alarms: count(model::Kind::Alarm) + if tracking { 2 } else { 0 },
    })
    .map(Some)
}

/// The release the stack's web launch template names (empty when there is none).
fn deployed_release(observed: &[model::Observed]) -> String {
    observed
        .iter()
        .filter(|o| o.resource.kind == model::Kind::LaunchTemplate)
        .find_map(|o| o.resource.props.get("release").filter(|r| !r.is_empty()))
        .cloned()
        .unwrap_or_default()
}

impl Stack {
    /// Deletes one resource, saying so; a failure is reported and left for the final
    /// listing of what is left.
    async fn delete_one(&self, o: &model::Observed) {
        let (kind, name) = (o.resource.kind, &o.resource.name);
        let started = Instant::now();
        eprintln!("  deleting {kind} {name}");
        match self.aws.delete(kind, name, &o.id, &self.safeguards).await {
            Err(e) => eprintln!("  could not delete {kind} {name}: {e:#}"),
            Ok(()) if started.elapsed().as_secs() > 5 => eprintln!(
                "  deleted {kind} {name} after {:.0} s",
                started.elapsed().as_secs_f64()
            ),
            Ok(()) => {}
        }
    }
}

/// Asks on the terminal to type the stack name; refuses when there is no terminal.
pub fn confirm_down(stack: &str, deletes_videos: bool) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("`down` deletes the whole stack: pass --yes to run it without a terminal");
    }
    let videos = if deletes_videos {
        "the bucket with every video too"
    } else {
        "the bucket with the videos stays"
    };
    eprint!(
        "This deletes every resource of stack {stack} (the database after a final snapshot; \
         {videos}). Type the stack name to go on: "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == stack)
}
