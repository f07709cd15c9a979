//! Instance refreshes carried out on the containers, as AWS carries out the one `provision
//! up` starts (minimum healthy 100 %: new instances first, one at a time): an instance of
//! the desired launch template version is launched; once it is in service (a web one
//! healthy behind the load balancer) and its warm-up has passed, one of the old version
//! leaves, a worker through its termination lifecycle hook (the job in hand finishes), a
//! web instance drained by the load balancer for its deregistration delay; and so on
//! until none is left. A new instance that fails its health checks, or one of the alarms
//! the refresh names going off, rolls it back: the group goes back to the version it
//! launched before, the new instances are replaced the same way, and the refresh ends
//! `RollbackSuccessful`. The stand-in reports each step to whoever follows the refresh
//! (`provision up --wait`).
//!
//! moto reports every instance of a group as launched from its template's default
//! version, so the default is moved with the group's version and each container keeps
//! the version it was launched from ([`super::Member::template_version`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::Fleet;

/// A refresh under way.
pub(in crate::rehearse) struct Rolling {
    id: String,
    group: String,
    template: String,
    desired: String,
    /// The version the group launched before: a rollback goes back to it.
    previous: String,
    /// The instance warm-up, compressed as the policy's clock is.
    warmup: Duration,
    /// The alarms whose going off rolls it back.
    alarms: Vec<String>,
    /// Why it rolls back, once it does.
    rollback: Option<String>,
    /// The step's new instance: the members before it was asked for, then its id once the
    /// fleet launched it, then since when it has been in service.
    new_instance: Option<NewInstance>,
    /// The old instance on its way out, until it is gone.
    leaving: Option<String>,
    /// Instances replaced so far, and how many there were to replace.
    replaced: usize,
    to_replace: usize,
    started: Instant,
}

struct NewInstance {
    known_before: BTreeSet<String>,
    id: Option<String>,
    in_service_since: Option<Instant>,
}

impl Rolling {
    /// The version the group's instances are being moved to.
    fn target(&self) -> &str {
        if self.rollback.is_some() {
            &self.previous
        } else {
            &self.desired
        }
    }
}

impl Fleet<'_> {
    /// Whether a refresh of `group` is being carried out.
    pub(super) fn refreshes(&self, group: &str) -> bool {
        self.refreshing.as_ref().is_some_and(|r| r.group == group)
    }

    /// One step of the refresh under way, or the start of one `provision` asked for.
    pub(super) fn follow_refreshes(&mut self) -> anyhow::Result<()> {
        if self.refreshing.is_none() {
            self.begin_refresh()?;
        }
        let Some(rolling) = self.refreshing.as_ref() else {
            return Ok(());
        };
        if rolling.rollback.is_none() {
            if let Some(alarm) = self.alarm_in_alarm(&rolling.alarms.clone())? {
                self.roll_back(format!("The alarm {alarm} is in ALARM state"))?;
            }
        }
        let Some(rolling) = self.refreshing.as_mut() else {
            return Ok(());
        };
        if let Some(leaving) = &rolling.leaving {
            if self.members.contains_key(leaving) {
                return Ok(());
            }
            rolling.leaving = None;
            rolling.replaced += 1;
            self.report_refresh();
        }
        let Some(rolling) = self.refreshing.as_mut() else {
            return Ok(());
        };
        let target = rolling.target().to_owned();
        if let Some(step) = rolling.new_instance.as_mut() {
            if step.id.is_none() {
                step.id = self
                    .members
                    .iter()
                    .find(|(id, m)| {
                        m.group == rolling.group
                            && m.template_version == target
                            && !step.known_before.contains(*id)
                    })
                    .map(|(id, _)| id.clone());
            }
            let Some(id) = step.id.clone() else {
                return Ok(()); // moto launched it; the fleet boots it at its next round
            };
            let Some(member) = self.members.get(&id) else {
                return Ok(()); // lost: `refresh_replacement_failed` decided
            };
            let in_service = member.healthy_at.is_some()
                && (member.instance.tier != "web"
                    || self.balancer.as_ref().and_then(|b| b.state(&id))
                        == Some(super::super::balancer::TargetState::Healthy));
            if !in_service {
                return Ok(());
            }
            let since = *step.in_service_since.get_or_insert_with(Instant::now);
            if since.elapsed() < rolling.warmup {
                return Ok(());
            }
            rolling.new_instance = None;
            // The oldest in the new one's zone first, so the zones stay balanced.
            let zone = member.zone.clone();
            let outdated = self.outdated_members();
            let old = outdated
                .iter()
                .find(|id| self.members.get(*id).is_some_and(|m| m.zone == zone))
                .or(outdated.first())
                .cloned();
            if let Some(old) = old {
                self.replace_old(&old)?;
            }
            return Ok(());
        }
        if self.outdated_members().is_empty() {
            return self.end_refresh();
        }
        self.launch_new_instance()
    }

    /// Takes on the refresh `provision` started on one of the groups, if any.
    fn begin_refresh(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.groups.iter().map(|g| g.name.clone()).collect();
        for group in names {
            let Some(order) = self.provided.autoscaling.active_refresh(&group) else {
                continue;
            };
            let Some((template, desired)) = order.desired.clone() else {
                // `provision` always names the version (auto-rollback needs it).
                anyhow::bail!("the refresh of {group} names no desired configuration");
            };
            let previous = self
                .group_versions
                .get(&group)
                .cloned()
                .unwrap_or_else(|| desired.clone());
            let warmup_aws = order
                .preferences
                .get("InstanceWarmup")
                .and_then(|w| w.parse::<f64>().ok())
                .unwrap_or(300.0);
            let alarms = order
                .preferences
                .iter()
                .filter(|(k, _)| k.starts_with("AlarmSpecification.Alarms.member."))
                .map(|(_, v)| v.clone())
                .collect();
            self.refreshing = Some(Rolling {
                id: order.id.clone(),
                group: group.clone(),
                template: template.clone(),
                desired: desired.clone(),
                previous: previous.clone(),
                warmup: Duration::from_secs_f64(warmup_aws / self.compression),
                alarms,
                rollback: None,
                new_instance: None,
                leaving: None,
                replaced: 0,
                to_replace: 0,
                started: Instant::now(),
            });
            let to_replace = self.outdated_members().len();
            if let Some(rolling) = self.refreshing.as_mut() {
                rolling.to_replace = to_replace;
            }
            self.launch_version(&group, &template, &desired)?;
            self.event(format!(
                "instance refresh of {group}: template version {previous} → {desired}, \
                 {to_replace} instance(s), new ones first (warm-up {warmup_aws:.0} s)"
            ));
            self.report_refresh();
            return Ok(());
        }
        Ok(())
    }

    /// The group's members not on the version the refresh moves to (nor leaving
    /// already), oldest first.
    pub(super) fn outdated_members(&self) -> Vec<String> {
        let Some(rolling) = self.refreshing.as_ref() else {
            return Vec::new();
        };
        let mut outdated: Vec<(&Instant, &String)> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.group == rolling.group
                    && m.template_version != rolling.target()
                    && m.terminating.is_none()
                    && m.draining_since.is_none()
            })
            .map(|(id, m)| (&m.launched, id))
            .collect();
        outdated.sort();
        outdated.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Makes the group launch `version` (its template's default moved with it, as moto
    /// reports a launched instance's version from it).
    fn launch_version(&mut self, group: &str, template: &str, version: &str) -> anyhow::Result<()> {
        self.aws.call(
            "ec2",
            "modify_launch_template",
            json!({ "LaunchTemplateName": template, "DefaultVersion": version }),
        )?;
        self.aws.call(
            "autoscaling",
            "update_auto_scaling_group",
            json!({
                "AutoScalingGroupName": group,
                "LaunchTemplate": { "LaunchTemplateName": template, "Version": version },
            }),
        )?;
        self.group_versions
            .insert(group.to_owned(), version.to_owned());
        Ok(())
    }

    /// One instance above the group's capacity, of the version the refresh moves to.
    fn launch_new_instance(&mut self) -> anyhow::Result<()> {
        // Read now: a termination earlier in this round may have lowered it.
        let answer = self.groups_answer()?;
        let Some(rolling) = self.refreshing.as_mut() else {
            return Ok(());
        };
        let desired = answer
            .iter()
            .find(|g| g["AutoScalingGroupName"] == rolling.group.as_str())
            .and_then(|g| g["DesiredCapacity"].as_u64())
            .context("the refreshed group's desired capacity")? as u32;
        rolling.new_instance = Some(NewInstance {
            known_before: self.members.keys().cloned().collect(),
            id: None,
            in_service_since: None,
        });
        let group = rolling.group.clone();
        self.aws.call(
            "autoscaling",
            "set_desired_capacity",
            json!({ "AutoScalingGroupName": group, "DesiredCapacity": desired + 1, "HonorCooldown": false }),
        )?;
        Ok(())
    }

    /// Sends old instance `id` on its way out: a worker through the hook, a web instance
    /// through the load balancer's drain.
    fn replace_old(&mut self, id: &str) -> anyhow::Result<()> {
        let Some(rolling) = self.refreshing.as_mut() else {
            return Ok(());
        };
        rolling.leaving = Some(id.to_owned());
        let group = rolling.group.clone();
        let hook = self
            .groups
            .iter()
            .find(|g| g.name == group)
            .and_then(|g| g.hook.clone());
        match hook {
            Some((hook, _)) => self.hold_for_termination(id, &hook, "instance refresh"),
            None => self.drain_and_terminate(id),
        }
    }

    /// The first of `alarms` in state ALARM, if any.
    fn alarm_in_alarm(&mut self, alarms: &[String]) -> anyhow::Result<Option<String>> {
        if alarms.is_empty() {
            return Ok(None);
        }
        let answer = self.aws.call(
            "cloudwatch",
            "describe_alarms",
            json!({ "AlarmNames": alarms }),
        )?;
        Ok(answer["MetricAlarms"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["StateValue"] == "ALARM")
            .and_then(|a| a["AlarmName"].as_str().map(str::to_owned)))
    }

    /// When lost instance `id` is the refresh's new one: it is terminated (the capacity
    /// back to what it was) and the refresh rolls back. Whether it was.
    pub(super) fn refresh_replacement_failed(
        &mut self,
        id: &str,
        why: &str,
    ) -> anyhow::Result<bool> {
        let is_new = self.refreshing.as_ref().is_some_and(|r| {
            r.new_instance
                .as_ref()
                .is_some_and(|n| n.id.as_deref() == Some(id))
        });
        if !is_new {
            return Ok(false);
        }
        self.event(format!(
            "{id}, the instance refresh's new instance, failed its health checks ({why})"
        ));
        self.aws.call(
            "autoscaling",
            "terminate_instance_in_auto_scaling_group",
            json!({ "InstanceId": id, "ShouldDecrementDesiredCapacity": true }),
        )?;
        self.retire(id, "failed its health checks during the instance refresh");
        if let Some(rolling) = self.refreshing.as_mut() {
            rolling.new_instance = None;
            if rolling.rollback.is_some() {
                // The version before fails too: AWS's rollback fails.
                let reason = format!("{id} of the version before failed its health checks");
                self.end_with("RollbackFailed", &reason);
                return Ok(true);
            }
        }
        self.roll_back(format!(
            "Instance refresh failed: new instance {id} failed its health checks"
        ))?;
        Ok(true)
    }

    /// Turns the refresh into a rollback to the version the group launched before.
    fn roll_back(&mut self, reason: String) -> anyhow::Result<()> {
        let Some(rolling) = self.refreshing.as_mut() else {
            return Ok(());
        };
        rolling.rollback = Some(reason.clone());
        let (group, template, previous) = (
            rolling.group.clone(),
            rolling.template.clone(),
            rolling.previous.clone(),
        );
        self.launch_version(&group, &template, &previous)?;
        let to_replace = self.outdated_members().len();
        if let Some(rolling) = self.refreshing.as_mut() {
            (rolling.replaced, rolling.to_replace) = (0, to_replace);
        }
        self.event(format!(
            "instance refresh of {group} rolls back to template version {previous}: {reason}"
        ));
        self.report_refresh();
        Ok(())
    }

    /// Every instance is on the version the refresh moved to.
    fn end_refresh(&mut self) -> anyhow::Result<()> {
        let Some(rolling) = self.refreshing.as_ref() else {
            return Ok(());
        };
        let reason = rolling.rollback.clone();
        match reason {
            Some(reason) => self.end_with("RollbackSuccessful", &reason),
            None => self.end_with("Successful", ""),
        }
        Ok(())
    }

    fn end_with(&mut self, status: &'static str, reason: &str) {
        let Some(rolling) = self.refreshing.take() else {
            return;
        };
        self.provided
            .autoscaling
            .advance_refresh(&rolling.id, status, reason, 100, 0);
        self.event(format!(
            "instance refresh of {} ended {status} after {:.0} s ({} instance(s) replaced)",
            rolling.group,
            rolling.started.elapsed().as_secs_f64(),
            rolling.replaced
        ));
    }

    /// Tells the stand-in where the refresh stands.
    fn report_refresh(&self) {
        let Some(rolling) = self.refreshing.as_ref() else {
            return;
        };
        let (status, reason) = match &rolling.rollback {
            Some(reason) => ("RollbackInProgress", reason.clone()),
            None => (
                "InProgress",
                "Replacing instances, new ones first".to_owned(),
            ),
        };
        let percent = (100 * rolling.replaced)
            .checked_div(rolling.to_replace)
            .unwrap_or(100) as u32;
        self.provided.autoscaling.advance_refresh(
            &rolling.id,
            status,
            &reason,
            percent,
            rolling.to_replace.saturating_sub(rolling.replaced),
        );
    }
}
