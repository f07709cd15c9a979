//! The two auto-scaling groups and their scaling policies: target tracking on the backlog
//! per worker, and the seed's CPU steps for the web tier.

use std::time::Duration;

use anyhow::Context;
use aws_sdk_autoscaling::types::{
    CustomizedMetricSpecification, LaunchTemplateSpecification, Metric, MetricDimension,
    Tag as AsgTag, TargetTrackingConfiguration, TargetTrackingMetricDataQuery,
    TargetTrackingMetricStat,
};

use stack_config::progress::Wait;

use crate::aws::{Aws, DeleteError, Ids, NamesById, STACK_TAG};
use crate::model::{Change, Kind, Observed, Props, Resource};

/// Group metrics collected: in-service instances feed the backlog-per-worker target; the
/// rest is for the dashboard and operators.
const GROUP_METRICS: [&str; 7] = [
    "GroupInServiceInstances",
    "GroupDesiredCapacity",
    "GroupMinSize",
    "GroupMaxSize",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
];

/// The worker's target-tracking metric, as the policy's `metrics` property: `id=` metric
/// (namespace:name:dimension=value:stat) or expression, `;`-separated, the expression last.
pub fn backlog_metrics(queue: &str, worker_group: &str) -> String {
    format!(
        "m1=AWS/SQS:ApproximateNumberOfMessagesVisible:QueueName={queue}:Sum;\
         m2=AWS/AutoScaling:GroupInServiceInstances:AutoScalingGroupName={worker_group}:Average;\
         e1=m1 / m2"
    )
}

pub(super) async fn observe(aws: &Aws, names: &NamesById) -> anyhow::Result<Vec<Observed>> {
    let mut out = Vec::new();
    // Every group with the stack tag, so one the configuration no longer has shows up
    // as an orphan.
    let desired_groups: Vec<String> = ["web", "worker"]
        .iter()
        .map(|t| crate::names::asg_name(&aws.stack, t))
        .collect();
    let found = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .filters(
            aws_sdk_autoscaling::types::Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&aws.stack)
                .build(),
        )
        .send()
        .await
        .context("describe auto-scaling groups")?;
    for g in found.auto_scaling_groups() {
        let name = g.auto_scaling_group_name().unwrap_or_default().to_owned();
        let mut subnets: Vec<String> = g
            .vpc_zone_identifier()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|id| names.name_of(id))
            .collect();
        subnets.sort();
        let mut targets: Vec<String> = g
            .target_group_arns()
            .iter()
            .map(|a| names.name_of(a))
            .collect();
        targets.sort();
        // A paused group is compared by the sizes it returns to: paused is not drift.
        let paused = g
            .tags()
            .iter()
            .find(|t| t.key() == Some(crate::pause::PAUSED_TAG))
            .and_then(|t| crate::pause::PausedGroup::parse(t.value()?));
        let (min, max) = match &paused {
            Some(sizes) => (sizes.min, sizes.max),
            None => (
                g.min_size().unwrap_or_default(),
                g.max_size().unwrap_or_default(),
            ),
        };
        out.push(Observed {
            // Desired capacity belongs to the autoscaler: it is not a property here.
            resource: Resource::new(
                Kind::AutoScalingGroup,
                &name,
                &[
                    (
                        "launch_template",
                        g.launch_template()
                            .and_then(|t| t.launch_template_name())
                            .unwrap_or_default()
                            .into(),
                    ),
                    // Observed only: the version changes through instance refreshes.
                    (
                        "template_version",
                        g.launch_template()
                            .and_then(|t| t.version())
                            .unwrap_or_default()
                            .into(),
                    ),
                    ("min_size", min.to_string()),
                    ("max_size", max.to_string()),
                    ("subnets", subnets.join(",")),
                    (
                        "health_check",
                        g.health_check_type().unwrap_or_default().into(),
                    ),
                    ("target_groups", targets.join(",")),
                    (
                        "metrics_collection",
                        (!g.enabled_metrics().is_empty()).to_string(),
                    ),
                ],
            ),
            id: name.clone(),
        });
        if !desired_groups.contains(&name) {
            continue; // an orphan: its policies go with it
        }
        let policies = aws
            .autoscaling
            .describe_policies()
            .auto_scaling_group_name(&name)
            .send()
            .await
            .context("describe scaling policies")?;
        for p in policies.scaling_policies() {
            let mut props: Vec<(&str, String)> = vec![
                ("group", name.clone()),
                ("policy_type", p.policy_type().unwrap_or_default().into()),
            ];
            if let Some(tracking) = p.target_tracking_configuration() {
                props.push((
                    "target",
                    format_number(tracking.target_value().unwrap_or_default()),
                ));
                props.push((
                    "metrics",
                    tracking
                        .customized_metric_specification()
                        .map(metrics_property)
                        .unwrap_or_default(),
                ));
            } else {
                props.push((
                    "adjustment",
                    p.scaling_adjustment().unwrap_or_default().to_string(),
                ));
                props.push(("cooldown", p.cooldown().unwrap_or_default().to_string()));
            }
            out.push(Observed {
                resource: Resource::new(
                    Kind::ScalingPolicy,
                    p.policy_name().unwrap_or_default(),
                    &props,
                ),
                id: p.policy_arn().unwrap_or_default().to_owned(),
            });
        }
        let hooks = aws
            .autoscaling
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&name)
            .send()
            .await
            .context("describe lifecycle hooks")?;
        for hook in hooks.lifecycle_hooks() {
            let hook_name = hook.lifecycle_hook_name().unwrap_or_default();
            out.push(Observed {
                resource: Resource::new(
                    Kind::LifecycleHook,
                    hook_name,
                    &[
                        ("group", name.clone()),
                        (
                            "transition",
                            hook.lifecycle_transition().unwrap_or_default().into(),
                        ),
                        (
                            "heartbeat_timeout",
                            hook.heartbeat_timeout().unwrap_or_default().to_string(),
                        ),
                        (
                            "default_result",
                            hook.default_result().unwrap_or_default().into(),
                        ),
                    ],
                ),
                id: hook_id(&name, hook_name),
            });
        }
    }
    Ok(out)
}

/// A lifecycle hook's id here: hooks are addressed by group and name together.
fn hook_id(group: &str, hook: &str) -> String {
    format!("{group}/{hook}")
}

/// A group's desired properties in the API's terms.
struct GroupSpec {
    template: String,
    min_size: i32,
    max_size: i32,
    subnets: String,
    target_groups: Vec<String>,
}

fn group_spec(p: &Props, ids: &Ids) -> anyhow::Result<GroupSpec> {
    let subnets: Vec<String> = p["subnets"]
        .split(',')
        .map(|name| ids.id_of(name))
        .collect::<anyhow::Result<_>>()?;
    Ok(GroupSpec {
        template: p["launch_template"].clone(),
        min_size: p["min_size"].parse()?,
        max_size: p["max_size"].parse()?,
        subnets: subnets.join(","),
        target_groups: p["target_groups"]
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|name| ids.id_of(name))
            .collect::<anyhow::Result<_>>()?,
    })
}

pub(super) async fn create_group(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let (name, p) = (change.name.as_str(), &change.desired);
    let spec = group_spec(p, ids)?;
    let version = latest_template_version(aws, &spec.template).await?;
    aws.autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(template_version(&spec.template, version))
        .min_size(spec.min_size)
        .max_size(spec.max_size)
        .vpc_zone_identifier(spec.subnets)
        .health_check_type(&p["health_check"])
        .health_check_grace_period(300)
        .set_target_group_arns(Some(spec.target_groups))
        .tags(
            AsgTag::builder()
                .key(STACK_TAG)
                .value(&aws.stack)
                .propagate_at_launch(false)
                .build(),
        )
        .send()
        .await?;
    collect_group_metrics(aws, name).await?;
    Ok(name.to_owned())
}

/// `id` is the group's name: groups are addressed by name.
pub(super) async fn update_group(
    aws: &Aws,
    change: &Change,
    id: &str,
    ids: &Ids,
) -> anyhow::Result<()> {
    let p = &change.desired;
    let spec = group_spec(p, ids)?;
    // The version a group launches changes only through an instance refresh, which can
    // roll back (`deploy`); a group still on `$Latest` (made by an older `provision`) is
    // pinned to the number it runs now, since a refresh refuses to roll back from there.
    let pinned = match group_template_version(aws, id).await? {
        Some(version) if version.parse::<i64>().is_ok() => None,
        _ => Some(template_version(
            &spec.template,
            latest_template_version(aws, &spec.template).await?,
        )),
    };
    aws.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(id)
        .set_launch_template(pinned)
        .min_size(spec.min_size)
        .max_size(spec.max_size)
        .vpc_zone_identifier(spec.subnets)
        .health_check_type(&p["health_check"])
        .send()
        .await?;
    if !spec.target_groups.is_empty() {
        aws.autoscaling
            .attach_load_balancer_target_groups()
            .auto_scaling_group_name(id)
            .set_target_group_arns(Some(spec.target_groups))
            .send()
            .await?;
    }
    collect_group_metrics(aws, id).await
}

/// A numbered version of launch template `name`.
pub(crate) fn template_version(name: &str, version: i64) -> LaunchTemplateSpecification {
    LaunchTemplateSpecification::builder()
        .launch_template_name(name)
        .version(version.to_string())
        .build()
}

/// The newest version number of launch template `name`.
pub(crate) async fn latest_template_version(aws: &Aws, name: &str) -> anyhow::Result<i64> {
    let found = aws
        .ec2
        .describe_launch_templates()
        .launch_template_names(name)
        .send()
        .await
        .with_context(|| format!("describe launch template {name}"))?;
    found
        .launch_templates()
        .first()
        .and_then(|t| t.latest_version_number())
        .with_context(|| format!("launch template {name} has no versions"))
}

/// The launch template version group `group` launches, as AWS holds it (a number, or
/// `$Latest` / `$Default`); `None` when the group does not exist.
pub(crate) async fn group_template_version(
    aws: &Aws,
    group: &str,
) -> anyhow::Result<Option<String>> {
    let found = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .with_context(|| format!("describe auto-scaling group {group}"))?;
    Ok(found
        .auto_scaling_groups()
        .first()
        .and_then(|g| g.launch_template())
        .and_then(|t| t.version())
        .map(str::to_owned))
}

/// Group metrics feed the backlog-per-instance target and the dashboard.
async fn collect_group_metrics(aws: &Aws, group: &str) -> anyhow::Result<()> {
    aws.autoscaling
        .enable_metrics_collection()
        .auto_scaling_group_name(group)
        .granularity("1Minute")
        .set_metrics(Some(GROUP_METRICS.iter().map(|m| m.to_string()).collect()))
        .send()
        .await?;
    Ok(())
}

/// Creates or replaces a scaling policy (one API call does both); returns its ARN.
pub(super) async fn put_policy(aws: &Aws, change: &Change) -> anyhow::Result<String> {
    let (name, p) = (change.name.as_str(), &change.desired);
    let mut put = aws
        .autoscaling
        .put_scaling_policy()
        .auto_scaling_group_name(&p["group"])
        .policy_name(name)
        .policy_type(&p["policy_type"]);
    if p["policy_type"] == "TargetTrackingScaling" {
        put = put.target_tracking_configuration(
            TargetTrackingConfiguration::builder()
                .target_value(p["target"].parse()?)
                .customized_metric_specification(metric_math(&p["metrics"])?)
                .build(),
        );
    } else {
        put = put
            .adjustment_type("ChangeInCapacity")
            .scaling_adjustment(p["adjustment"].parse()?)
            .cooldown(p["cooldown"].parse()?);
    }
    let created = put.send().await?;
    Ok(created.policy_arn().unwrap_or(name).to_owned())
}

/// Creates or replaces the worker group's termination hook (one call does both).
pub(super) async fn put_lifecycle_hook(aws: &Aws, change: &Change) -> anyhow::Result<String> {
    let (name, p) = (change.name.as_str(), &change.desired);
    aws.autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(&p["group"])
        .lifecycle_hook_name(name)
        .lifecycle_transition(&p["transition"])
        .heartbeat_timeout(p["heartbeat_timeout"].parse()?)
        .default_result(&p["default_result"])
        .send()
        .await?;
    Ok(hook_id(&p["group"], name))
}

pub(super) async fn delete_lifecycle_hook(aws: &Aws, id: &str) -> Result<(), DeleteError> {
    let (group, hook) = id
        .split_once('/')
        .ok_or_else(|| DeleteError::Other(anyhow::anyhow!("bad lifecycle hook id {id}")))?;
    aws.autoscaling
        .delete_lifecycle_hook()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(hook)
        .send()
        .await
        .map(drop)
        .map_err(gone_with_its_group)
}

/// Deletes a scaling policy by its ARN, which names its group and itself
/// (`…:autoScalingGroupName/<group>:policyName/<name>`): the call takes the two names.
pub(super) async fn delete_policy(aws: &Aws, arn: &str) -> Result<(), DeleteError> {
    let part = |label: &str| {
        arn.split(':')
            .find_map(|p| p.strip_prefix(label))
            .map(str::to_owned)
            .ok_or_else(|| DeleteError::Other(anyhow::anyhow!("no {label} in policy {arn}")))
    };
    aws.autoscaling
        .delete_policy()
        .auto_scaling_group_name(part("autoScalingGroupName/")?)
        .policy_name(part("policyName/")?)
        .send()
        .await
        .map(drop)
        .map_err(gone_with_its_group)
}

/// A policy or hook deleted with its group (`down` deletes them at once) is answered
/// with a ValidationError that says it is not found: it is gone, as wanted.
fn gone_with_its_group<E>(e: E) -> DeleteError
where
    E: aws_sdk_autoscaling::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = e.message().unwrap_or_default().to_ascii_lowercase();
    let gone = e.code() == Some("ValidationError")
        && (message.contains("not found") || message.contains("no lifecycle hook found"));
    match DeleteError::from_sdk(e) {
        DeleteError::Aws(_, error) if gone => {
            DeleteError::Aws(crate::aws::ErrorKind::NotFound, error)
        }
        other => other,
    }
}

/// Deletes the group and its instances (force), then waits until it is gone. Its policies go
/// with it.
pub(super) async fn delete_group(aws: &Aws, name: &str) -> Result<(), DeleteError> {
    // force_delete terminates the instances too; then wait until the group is gone.
    aws.autoscaling
        .delete_auto_scaling_group()
        .auto_scaling_group_name(name)
        .force_delete(true)
        .send()
        .await
        .map_err(DeleteError::from_sdk)?;
    let mut wait = Wait::start(format!("{name} and its instances to terminate"), "1–3 min");
    loop {
        let found = aws
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(DeleteError::from_sdk)?;
        let Some(group) = found.auto_scaling_groups().first() else {
            wait.done("deleted");
            return Ok(());
        };
        wait.status(
            &format!("{} instance(s) left", group.instances().len()),
            None,
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        value.to_string()
    }
}

/// One query of a `metrics` property (see [`backlog_metrics`]), whichever API it goes to:
/// target tracking's and CloudWatch alarms' metric math have the same shape in different
/// types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetricQuery {
    Stat {
        id: String,
        namespace: String,
        metric: String,
        dimension: (String, String),
        stat: String,
    },
    /// The expression over the others: the value the policy or alarm reads.
    Expression { id: String, expression: String },
}

/// What the expression of the backlog metric means, shown in the console.
pub(crate) const BACKLOG_LABEL: &str = "videos waiting per worker";

/// A `metrics` property as its queries.
pub(crate) fn parse_metrics(spec: &str) -> anyhow::Result<Vec<MetricQuery>> {
    spec.split(';')
        .map(|part| {
            let (id, rest) = part
                .split_once('=')
                .with_context(|| format!("bad metric query {part}"))?;
            let id = id.to_owned();
            Ok(match rest.split(':').collect::<Vec<_>>()[..] {
                [namespace, metric, dimension, stat] => {
                    let (name, value) = dimension
                        .split_once('=')
                        .with_context(|| format!("bad dimension in {part}"))?;
                    MetricQuery::Stat {
                        id,
                        namespace: namespace.into(),
                        metric: metric.into(),
                        dimension: (name.into(), value.into()),
                        stat: stat.into(),
                    }
                }
                _ => MetricQuery::Expression {
                    id,
                    expression: rest.into(),
                },
            })
        })
        .collect()
}

/// The inverse of [`parse_metrics`], for comparing what AWS holds.
pub(crate) fn format_metrics(queries: &[MetricQuery]) -> String {
    queries
        .iter()
        .map(|q| match q {
            MetricQuery::Stat {
                id,
                namespace,
                metric,
                dimension: (name, value),
                stat,
            } => format!("{id}={namespace}:{metric}:{name}={value}:{stat}"),
            MetricQuery::Expression { id, expression } => format!("{id}={expression}"),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The `metrics` property as target tracking's metric queries.
pub fn metric_math(spec: &str) -> anyhow::Result<CustomizedMetricSpecification> {
    let queries = parse_metrics(spec)?
        .into_iter()
        .map(|q| match q {
            MetricQuery::Stat {
                id,
                namespace,
                metric,
                dimension: (name, value),
                stat,
            } => TargetTrackingMetricDataQuery::builder()
                .id(id)
                .metric_stat(
                    TargetTrackingMetricStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace(namespace)
                                .metric_name(metric)
                                .dimensions(
                                    MetricDimension::builder().name(name).value(value).build(),
                                )
                                .build(),
                        )
                        .stat(stat)
                        .build(),
                )
                .return_data(false)
                .build(),
            MetricQuery::Expression { id, expression } => TargetTrackingMetricDataQuery::builder()
                .id(id)
                .expression(expression)
                .label(BACKLOG_LABEL)
                .return_data(true)
                .build(),
        })
        .collect();
    Ok(CustomizedMetricSpecification::builder()
        .set_metrics(Some(queries))
        .build())
}

/// The inverse of [`metric_math`].
fn metrics_property(spec: &CustomizedMetricSpecification) -> String {
    let queries: Vec<MetricQuery> = spec
        .metrics()
        .iter()
        .map(|q| {
            let id = q.id().unwrap_or_default().to_owned();
            match (q.metric_stat(), q.expression()) {
                (Some(stat), _) => {
                    let metric = stat.metric();
                    let dimension = metric
                        .and_then(|m| m.dimensions().first())
                        .map(|d| {
                            (
                                d.name().unwrap_or_default().to_owned(),
                                d.value().unwrap_or_default().to_owned(),
                            )
                        })
                        .unwrap_or_default();
                    MetricQuery::Stat {
                        id,
                        namespace: metric
                            .and_then(|m| m.namespace())
                            .unwrap_or_default()
                            .into(),
                        metric: metric
                            .and_then(|m| m.metric_name())
                            .unwrap_or_default()
                            .into(),
                        dimension,
                        stat: stat.stat().unwrap_or_default().into(),
                    }
                }
                (None, expression) => MetricQuery::Expression {
                    id,
                    expression: expression.unwrap_or_default().into(),
                },
            }
        })
        .collect();
    format_metrics(&queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_metric_math_round_trips() {
        let spec = backlog_metrics("anb-video-processing", "anb-worker-asg");
        let queries = metric_math(&spec).unwrap();
        assert_eq!(queries.metrics().len(), 3);
        let expression = &queries.metrics()[2];
        assert_eq!(
            (expression.id(), expression.expression()),
            (Some("e1"), Some("m1 / m2"))
        );
        assert_eq!(expression.return_data(), Some(true));
        assert_eq!(metrics_property(&queries), spec);
    }

    #[test]
    fn whole_numbers_print_without_decimals() {
        assert_eq!(format_number(2.0), "2");
        assert_eq!(format_number(2.5), "2.5");
    }
}
