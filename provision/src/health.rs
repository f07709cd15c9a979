//! `provision status --health`: the running stack at a glance. Per tier its instances
//! (zone, lifecycle state, health, release, age) and any instance refresh; the load
//! balancer's view of each target; the queue, the dead letters, each alarm; who the alarms
//! reach; the database; whether the stack is paused; and what it costs. A pure verdict
//! ([`Health::problems`]) turns it into the exit code.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{error_kind, Aws, ErrorKind};
use crate::names::{
    asg_name, database_name, dead_letter_queue_name, queue_name, target_group_name,
};
use crate::pause::Paused;

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub stack: String,
    pub checked_at: DateTime<Utc>,
    pub tiers: Vec<TierHealth>,
    pub targets: Vec<TargetHealth>,
    pub queue: QueueHealth,
    pub alarms: Vec<AlarmState>,
    pub alerts: Vec<AlertAddress>,
    pub database: Option<DatabaseHealth>,
    pub paused: Option<Paused>,
    /// Resources `up` would change (`provision status` lists them).
    pub drift: Vec<String>,
    pub usd_per_hour: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierHealth {
    pub tier: String,
    pub group: String,
    pub exists: bool,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub instances: Vec<InstanceHealth>,
    /// An instance refresh that has not ended: its status and percentage.
    pub refresh: Option<(String, i32)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceHealth {
    pub id: String,
    pub zone: String,
    /// Auto Scaling's lifecycle state: Pending, InService, Terminating:Wait, …
    pub lifecycle: String,
    /// Auto Scaling's health: Healthy or Unhealthy.
    pub health: String,
    pub template_version: String,
    pub release: String,
    pub protected: bool,
    pub age_s: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetHealth {
    pub id: String,
    /// healthy, unhealthy, initial, draining, unused, unavailable.
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueHealth {
    pub waiting: u64,
    pub in_flight: u64,
    /// The oldest waiting video's age, from CloudWatch's last minute (None: no figure).
    pub oldest_age_s: Option<f64>,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlarmState {
    pub name: String,
    /// Notifies the alerts topic: counts in the verdict. The scaling alarms do not (an
    /// idle stack's scale-in alarms are in ALARM by design).
    pub notifies: bool,
    /// OK, ALARM or INSUFFICIENT_DATA.
    pub state: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertAddress {
    pub endpoint: String,
    /// The address has not confirmed yet: it receives nothing.
    pub pending: bool,
    /// In `[alerts] emails`; false for one taken out while pending (AWS drops it).
    pub configured: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseHealth {
    pub status: String,
    pub multi_az: bool,
    pub zone: String,
    pub secondary_zone: Option<String>,
}

impl Health {
    /// What is wrong, one line each; empty when healthy. A paused stack is not unhealthy
    /// for having no instances or a stopped database.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for alarm in self
            .alarms
            .iter()
            .filter(|a| a.notifies && a.state == "ALARM")
        {
            out.push(format!(
                "alarm {} is in ALARM: {}",
                alarm.name, alarm.reason
            ));
        }
        for tier in &self.tiers {
            if !tier.exists {
                out.push(format!("{} does not exist", tier.group));
                continue;
            }
            for instance in tier.instances.iter().filter(|i| i.health != "Healthy") {
                out.push(format!(
                    "{} instance {} is {}",
                    tier.tier, instance.id, instance.health
                ));
            }
        }
        for target in self.targets.iter().filter(|t| t.state == "unhealthy") {
            out.push(format!(
                "target {} fails the health check ({})",
                target.id,
                target.reason.as_deref().unwrap_or("no reason given")
            ));
        }
        if self.paused.is_none() {
            let web_wanted = self
                .tiers
                .iter()
                .find(|t| t.tier == "web")
                .is_some_and(|t| t.desired > 0);
            if web_wanted && !self.targets.iter().any(|t| t.state == "healthy") {
                out.push("no healthy web instance behind the load balancer".to_owned());
            }
            match &self.database {
                Some(db) if db.status != "available" && db.status != "backing-up" => {
                    out.push(format!("the database is {}", db.status));
                }
                None => out.push("the database does not exist".to_owned()),
                Some(_) => {}
            }
        }
        if self.queue.dead_letters > 0 {
            out.push(format!(
                "{} video job(s) in the dead-letter queue",
                self.queue.dead_letters
            ));
        }
        out
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "Stack {} at {}\n",
            self.stack,
            self.checked_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        if let Some(paused) = &self.paused {
            out.push_str(&format!("PAUSED: {}\n", paused.summary()));
        }
        for tier in &self.tiers {
            if !tier.exists {
                out.push_str(&format!("\n{}: no group {}\n", tier.tier, tier.group));
                continue;
            }
            out.push_str(&format!(
                "\n{} ({}): {} instance(s), desired {}, min {}, max {}\n",
                tier.tier,
                tier.group,
                tier.instances.len(),
                tier.desired,
                tier.min,
                tier.max
            ));
            if let Some((status, percent)) = &tier.refresh {
                out.push_str(&format!("  instance refresh {status}: {percent} %\n"));
            }
            for i in &tier.instances {
                let age = i.age_s.map_or("?".to_owned(), human_age);
                let protected = if i.protected { "  protected" } else { "" };
                out.push_str(&format!(
                    "  {:<20} {:<11} {:<18} {:<9} release {} (v{})  up {age}{protected}\n",
                    i.id, i.zone, i.lifecycle, i.health, i.release, i.template_version
                ));
            }
        }
        out.push_str("\nLoad balancer targets:");
        if self.targets.is_empty() {
            out.push_str(" none\n");
        } else {
            out.push('\n');
            for t in &self.targets {
                let reason = t
                    .reason
                    .as_deref()
                    .map_or(String::new(), |r| format!(" ({r})"));
                out.push_str(&format!("  {:<20} {}{reason}\n", t.id, t.state));
            }
        }
        let oldest = self
            .queue
            .oldest_age_s
            .map_or("no figure yet".to_owned(), |s| human_age(s as i64));
        out.push_str(&format!(
            "\nQueue: {} waiting, {} in flight, oldest {oldest}; dead letters: {}\n",
            self.queue.waiting, self.queue.in_flight, self.queue.dead_letters
        ));
        out.push_str("\nAlarms:\n");
        for a in &self.alarms {
            let scaling = if a.notifies { "" } else { "  (scaling)" };
            out.push_str(&format!("  {:<18} {}{scaling}\n", a.state, a.name));
        }
        out.push_str("\nAlerts reach: ");
        if self.alerts.is_empty() {
            out.push_str("nobody ([alerts] emails in the configuration)\n");
        } else {
            let who: Vec<String> = self
                .alerts
                .iter()
                .map(|a| match (a.pending, a.configured) {
                    (true, true) => {
                        format!("{} (pending: confirm the e-mail from AWS)", a.endpoint)
                    }
                    (true, false) => format!(
                        "{} (pending and no longer configured: AWS drops it after 3 days)",
                        a.endpoint
                    ),
                    (false, _) => a.endpoint.clone(),
                })
                .collect();
            out.push_str(&format!("{}\n", who.join(", ")));
        }
        match &self.database {
            Some(db) => out.push_str(&format!(
                "\nDatabase: {}, {}{}\n",
                db.status,
                db.zone,
                match (&db.secondary_zone, db.multi_az) {
                    (Some(standby), true) => format!(", standby in {standby}"),
                    (None, true) => ", Multi-AZ".to_owned(),
                    _ => ", single-AZ".to_owned(),
                }
            )),
            None => out.push_str("\nDatabase: none\n"),
        }
        out.push_str(&format!(
            "\nDrift: {}\nCost now: ${:.3}/h (about ${:.0} a month)\n",
            if self.drift.is_empty() {
                "none".to_owned()
            } else {
                format!("{} change(s): {}", self.drift.len(), self.drift.join(", "))
            },
            self.usd_per_hour,
            self.usd_per_hour * capacity::HOURS_PER_MONTH
        ));
        let problems = self.problems();
        if problems.is_empty() {
            out.push_str("\nHealthy.\n");
        } else {
            out.push_str(&format!("\nUNHEALTHY:\n  {}\n", problems.join("\n  ")));
        }
        out
    }
}

fn human_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

impl Aws {
    /// Everything [`Health`] shows but the drift and the cost, read now.
    /// `alarms`: each alarm's name and whether it notifies the alerts topic.
    pub async fn health_parts(&self, alarms: &[(String, bool)]) -> anyhow::Result<Health> {
        let (tiers, targets, queue, alarms, alerts, database, paused) = tokio::try_join!(
            Box::pin(self.tier_health()),
            Box::pin(self.target_health()),
            Box::pin(self.queue_health()),
            Box::pin(self.alarm_states(alarms)),
            Box::pin(self.alert_addresses()),
            Box::pin(self.database_health()),
            Box::pin(self.paused()),
        )?;
        Ok(Health {
            stack: self.stack.clone(),
            checked_at: Utc::now(),
            tiers,
            targets,
            queue,
            alarms,
            alerts,
            database,
            paused,
            drift: Vec::new(),
            usd_per_hour: 0.0,
        })
    }

    async fn tier_health(&self) -> anyhow::Result<Vec<TierHealth>> {
        let groups = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(asg_name(&self.stack, "web"))
            .auto_scaling_group_names(asg_name(&self.stack, "worker"))
            .send()
            .await
            .context("describe auto-scaling groups")?;
        let ids: Vec<String> = groups
            .auto_scaling_groups()
            .iter()
            .flat_map(|g| g.instances())
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        let mut launched: HashMap<String, DateTime<Utc>> = HashMap::new();
        if !ids.is_empty() {
            let found = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids))
                .send()
                .await
                .context("describe the instances")?;
            for instance in found.reservations().iter().flat_map(|r| r.instances()) {
                if let (Some(id), Some(at)) = (instance.instance_id(), instance.launch_time()) {
                    if let Some(at) = DateTime::from_timestamp(at.secs(), 0) {
                        launched.insert(id.to_owned(), at);
                    }
                }
            }
        }
        let mut releases: HashMap<(String, String), String> = HashMap::new();
        let mut out = Vec::new();
        for tier in ["web", "worker"] {
            let name = asg_name(&self.stack, tier);
            let Some(group) = groups
                .auto_scaling_groups()
                .iter()
                .find(|g| g.auto_scaling_group_name() == Some(&name))
            else {
                out.push(TierHealth {
                    tier: tier.to_owned(),
                    group: name,
                    exists: false,
                    min: 0,
                    max: 0,
                    desired: 0,
                    instances: Vec::new(),
                    refresh: None,
                });
                continue;
            };
            let mut instances = Vec::new();
            for i in group.instances() {
                let template = i.launch_template();
                let template_name = template
                    .and_then(|t| t.launch_template_name())
                    .unwrap_or_default()
                    .to_owned();
                let version = template
                    .and_then(|t| t.version())
                    .unwrap_or_default()
                    .to_owned();
                let key = (template_name.clone(), version.clone());
                let release = match releases.get(&key) {
                    Some(release) => release.clone(),
                    None => {
                        // A version deleted since, or a call refused: the number says enough.
                        let release = match version.parse::<i64>() {
                            Ok(number) if !template_name.is_empty() => self
                                .release_of(&template_name, number)
                                .await
                                .unwrap_or_else(|_| format!("(template version {version})")),
                            _ => format!("(template version {version})"),
                        };
                        releases.insert(key, release.clone());
                        release
                    }
                };
                let id = i.instance_id().unwrap_or_default().to_owned();
                instances.push(InstanceHealth {
                    zone: i.availability_zone().unwrap_or_default().to_owned(),
                    lifecycle: i
                        .lifecycle_state()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    health: i.health_status().unwrap_or_default().to_owned(),
                    template_version: version,
                    release,
                    protected: i.protected_from_scale_in().unwrap_or(false),
                    age_s: launched.get(&id).map(|at| (Utc::now() - *at).num_seconds()),
                    id,
                });
            }
            let refreshes = self
                .autoscaling
                .describe_instance_refreshes()
                .auto_scaling_group_name(&name)
                .send()
                .await
                .with_context(|| format!("describe the instance refreshes of {name}"))?;
            let refresh = refreshes
                .instance_refreshes()
                .iter()
                .find(|r| {
                    r.status().is_some_and(|s| {
                        ["Pending", "InProgress", "Cancelling", "RollbackInProgress"]
                            .contains(&s.as_str())
                    })
                })
                .map(|r| {
                    (
                        r.status()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        r.percentage_complete().unwrap_or_default(),
                    )
                });
            out.push(TierHealth {
                tier: tier.to_owned(),
                group: name,
                exists: true,
                min: group.min_size().unwrap_or_default(),
                max: group.max_size().unwrap_or_default(),
                desired: group.desired_capacity().unwrap_or_default(),
                instances,
                refresh,
            });
        }
        Ok(out)
    }

    async fn target_health(&self) -> anyhow::Result<Vec<TargetHealth>> {
        let groups = match self
            .elb
            .describe_target_groups()
            .names(target_group_name(&self.stack))
            .send()
            .await
        {
            Ok(groups) => groups,
            Err(e) if error_kind(&e) == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("describe the target group"),
        };
        let Some(arn) = groups
            .target_groups()
            .first()
            .and_then(|g| g.target_group_arn())
        else {
            return Ok(Vec::new());
        };
        let health = self
            .elb
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .context("describe target health")?;
        Ok(health
            .target_health_descriptions()
            .iter()
            .map(|t| {
                let h = t.target_health();
                TargetHealth {
                    id: t
                        .target()
                        .and_then(|t| t.id())
                        .unwrap_or_default()
                        .to_owned(),
                    state: h
                        .and_then(|h| h.state())
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    reason: h.and_then(|h| {
                        let reason = h.reason().map(|r| r.as_str().to_owned());
                        match (reason, h.description()) {
                            (Some(r), Some(d)) => Some(format!("{r}: {d}")),
                            (r, d) => r.or(d.map(str::to_owned)),
                        }
                    }),
                }
            })
            .collect())
    }

    async fn queue_health(&self) -> anyhow::Result<QueueHealth> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let counts = |name: String| async move {
            let url = match self.sqs.get_queue_url().queue_name(&name).send().await {
                Ok(found) => found.queue_url().unwrap_or_default().to_owned(),
                Err(e) if error_kind(&e) == ErrorKind::NotFound => return Ok((0, 0)),
                Err(e) => return Err(e).with_context(|| format!("find queue {name}")),
            };
            let attributes = self
                .sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .with_context(|| format!("read queue {name}"))?;
            let get = |a: A| {
                attributes
                    .attributes()
                    .and_then(|m| m.get(&a))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_default()
            };
            anyhow::Ok((
                get(A::ApproximateNumberOfMessages),
                get(A::ApproximateNumberOfMessagesNotVisible),
            ))
        };
        let queue = queue_name(&self.stack);
        let ((waiting, in_flight), (dead, dead_in_flight), oldest) = tokio::try_join!(
            counts(queue.clone()),
            counts(dead_letter_queue_name(&self.stack)),
            self.oldest_message_age(&queue),
        )?;
        Ok(QueueHealth {
            waiting,
            in_flight,
            oldest_age_s: oldest,
            dead_letters: dead + dead_in_flight,
        })
    }

    /// The queue's ApproximateAgeOfOldestMessage over the last 5 minutes, newest point.
    async fn oldest_message_age(&self, queue: &str) -> anyhow::Result<Option<f64>> {
        let now = Utc::now();
        let stats = self
            .cloudwatch
            .get_metric_statistics()
            .namespace("AWS/SQS")
            .metric_name("ApproximateAgeOfOldestMessage")
            .dimensions(
                aws_sdk_cloudwatch::types::Dimension::builder()
                    .name("QueueName")
                    .value(queue)
                    .build(),
            )
            .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                (now - chrono::Duration::minutes(5)).timestamp(),
            ))
            .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                now.timestamp(),
            ))
            .period(60)
            .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
            .send()
            .await
            .context("read the queue's oldest message age")?;
        Ok(stats
            .datapoints()
            .iter()
            .filter_map(|d| Some((d.timestamp()?.secs(), d.maximum()?)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, age)| age))
    }

    async fn alarm_states(&self, alarms: &[(String, bool)]) -> anyhow::Result<Vec<AlarmState>> {
        let names: Vec<String> = alarms.iter().map(|(name, _)| name.clone()).collect();
        let notifies = |name: &str| alarms.iter().any(|(n, notifies)| n == name && *notifies);
        let mut out = Vec::new();
        // DescribeAlarms takes at most 100 names.
        for chunk in names.chunks(100) {
            let found = self
                .cloudwatch
                .describe_alarms()
                .set_alarm_names(Some(chunk.to_vec()))
                .send()
                .await
                .context("describe the alarms")?;
            out.extend(found.metric_alarms().iter().map(|a| {
                AlarmState {
                    name: a.alarm_name().unwrap_or_default().to_owned(),
                    notifies: notifies(a.alarm_name().unwrap_or_default()),
                    state: a
                        .state_value()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    reason: a.state_reason().unwrap_or_default().to_owned(),
                }
            }));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn alert_addresses(&self) -> anyhow::Result<Vec<AlertAddress>> {
        let observed = crate::resources::alerts::observe(self).await?;
        let mut out = Vec::new();
        for subscription in observed
            .iter()
            .filter(|o| o.resource.kind == crate::model::Kind::AlertSubscription)
        {
            let pending = if subscription.id == crate::resources::alerts::PENDING_CONFIRMATION {
                true
            } else {
                // An ARN is returned at once by `subscribe`: the attributes say whether
                // the address has confirmed.
                self.sns
                    .get_subscription_attributes()
                    .subscription_arn(&subscription.id)
                    .send()
                    .await
                    .ok()
                    .and_then(|a| a.attributes()?.get("PendingConfirmation").cloned())
                    .is_some_and(|v| v == "true")
            };
            out.push(AlertAddress {
                endpoint: subscription.resource.props["endpoint"].clone(),
                pending,
                configured: true, // `Stack::health` knows the configuration
            });
        }
        Ok(out)
    }

    async fn database_health(&self) -> anyhow::Result<Option<DatabaseHealth>> {
        match self
            .rds
            .describe_db_instances()
            .db_instance_identifier(database_name(&self.stack))
            .send()
            .await
        {
            Ok(found) => Ok(found.db_instances().first().map(|db| DatabaseHealth {
                status: db.db_instance_status().unwrap_or_default().to_owned(),
                multi_az: db.multi_az().unwrap_or(false),
                zone: db.availability_zone().unwrap_or_default().to_owned(),
                secondary_zone: db.secondary_availability_zone().map(str::to_owned),
            })),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("describe the database"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Health {
        Health {
            stack: "anb".into(),
            checked_at: Utc::now(),
            tiers: ["web", "worker"]
                .iter()
                .map(|tier| TierHealth {
                    tier: (*tier).into(),
                    group: format!("anb-{tier}-asg"),
                    exists: true,
                    min: 1,
                    max: 3,
                    desired: 1,
                    instances: vec![InstanceHealth {
                        id: format!("i-{tier}"),
                        zone: "us-east-1a".into(),
                        lifecycle: "InService".into(),
                        health: "Healthy".into(),
                        template_version: "2".into(),
                        release: "r2".into(),
                        protected: false,
                        age_s: Some(600),
                    }],
                    refresh: None,
                })
                .collect(),
            targets: vec![TargetHealth {
                id: "i-web".into(),
                state: "healthy".into(),
                reason: None,
            }],
            queue: QueueHealth::default(),
            alarms: vec![
                AlarmState {
                    name: "anb-queue-backlog".into(),
                    notifies: true,
                    state: "OK".into(),
                    reason: String::new(),
                },
                // An idle stack's scale-in alarm is in ALARM: that is no problem.
                AlarmState {
                    name: "anb-worker-backlog-low".into(),
                    notifies: false,
                    state: "ALARM".into(),
                    reason: "0 videos per worker".into(),
                },
            ],
            alerts: vec![],
            database: Some(DatabaseHealth {
                status: "available".into(),
                multi_az: true,
                zone: "us-east-1a".into(),
                secondary_zone: Some("us-east-1b".into()),
            }),
            paused: None,
            drift: vec![],
            usd_per_hour: 0.14,
        }
    }

    #[test]
    fn a_healthy_stack_has_no_problems_and_each_fault_is_named() {
        assert_eq!(healthy().problems(), Vec::<String>::new());
        assert!(healthy().render().contains("Healthy."));

        let mut alarm = healthy();
        alarm.alarms[0].state = "ALARM".into();
        alarm.alarms[0].reason = "7 videos waiting".into();
        assert_eq!(
            alarm.problems(),
            ["alarm anb-queue-backlog is in ALARM: 7 videos waiting"]
        );

        let mut no_targets = healthy();
        no_targets.targets[0].state = "unhealthy".into();
        no_targets.targets[0].reason = Some("Target.Timeout: Request timed out".into());
        assert_eq!(
            no_targets.problems(),
            [
                "target i-web fails the health check (Target.Timeout: Request timed out)",
                "no healthy web instance behind the load balancer"
            ]
        );

        let mut database = healthy();
        database.database.as_mut().unwrap().status = "stopped".into();
        database.queue.dead_letters = 2;
        assert_eq!(
            database.problems(),
            [
                "the database is stopped",
                "2 video job(s) in the dead-letter queue"
            ]
        );
    }

    #[test]
    fn a_paused_stack_is_not_unhealthy_for_being_paused() {
        let mut paused = healthy();
        for tier in &mut paused.tiers {
            tier.instances.clear();
            tier.desired = 0;
        }
        paused.targets.clear();
        paused.database.as_mut().unwrap().status = "stopped".into();
        paused.paused = Some(Paused {
            since: Utc::now(),
            groups: vec![],
            database_restarts: Some(Utc::now() + chrono::Duration::days(7)),
            database_status: Some("stopped".into()),
        });
        assert_eq!(paused.problems(), Vec::<String>::new());
        let text = paused.render();
        assert!(text.contains("PAUSED") && text.contains("starts the stopped database again on"));
        // Seven days on, AWS has started it again: said, and so are its costs.
        let paused_state = paused.paused.as_mut().unwrap();
        paused_state.database_restarts = Some(Utc::now() - chrono::Duration::hours(1));
        paused_state.database_status = Some("available".into());
        assert!(paused
            .render()
            .contains("AWS started the database again on"));
    }
}
