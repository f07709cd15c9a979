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
                    ("min_size", g.min_size().unwrap_or_default().to_string()),
                    ("max_size", g.max_size().unwrap_or_default().to_string()),
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
    }
    Ok(out)
}

/// A group's desired properties in the API's terms.
struct GroupSpec {
    template: LaunchTemplateSpecification,
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
        template: LaunchTemplateSpecification::builder()
            .launch_template_name(&p["launch_template"])
            .version("$Latest")
            .build(),
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
    aws.autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(spec.template)
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
    aws.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(id)
        .launch_template(spec.template)
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

/// The `metrics` property (see [`backlog_metrics`]) as the API's metric queries.
pub fn metric_math(spec: &str) -> anyhow::Result<CustomizedMetricSpecification> {
    let mut queries = Vec::new();
    for part in spec.split(';') {
        let (id, rest) = part
            .split_once('=')
            .with_context(|| format!("bad metric query {part}"))?;
        let query = match rest.split(':').collect::<Vec<_>>()[..] {
            [namespace, metric, dimension, stat] => {
                let (dimension, value) = dimension
                    .split_once('=')
                    .with_context(|| format!("bad dimension in {part}"))?;
                let metric = Metric::builder()
                    .namespace(namespace)
                    .metric_name(metric)
                    .dimensions(
                        MetricDimension::builder()
                            .name(dimension)
                            .value(value)
                            .build(),
                    )
                    .build();
                TargetTrackingMetricDataQuery::builder()
                    .id(id)
                    .metric_stat(
                        TargetTrackingMetricStat::builder()
                            .metric(metric)
                            .stat(stat)
                            .build(),
                    )
                    .return_data(false)
                    .build()
            }
            _ => TargetTrackingMetricDataQuery::builder()
                .id(id)
                .expression(rest)
                .label("videos waiting per worker")
                .return_data(true)
                .build(),
        };
        queries.push(query);
    }
    Ok(CustomizedMetricSpecification::builder()
        .set_metrics(Some(queries))
        .build())
}

/// The inverse of [`metric_math`], for comparing what AWS holds.
fn metrics_property(spec: &CustomizedMetricSpecification) -> String {
    spec.metrics()
        .iter()
        .map(|q| {
            let id = q.id().unwrap_or_default();
            match (q.metric_stat(), q.expression()) {
                (Some(stat), _) => {
                    let metric = stat.metric();
                    let dimension = metric
                        .and_then(|m| m.dimensions().first())
                        .map(|d| {
                            format!(
                                "{}={}",
                                d.name().unwrap_or_default(),
                                d.value().unwrap_or_default()
                            )
                        })
                        .unwrap_or_default();
                    format!(
                        "{id}={}:{}:{dimension}:{}",
                        metric.and_then(|m| m.namespace()).unwrap_or_default(),
                        metric.and_then(|m| m.metric_name()).unwrap_or_default(),
                        stat.stat().unwrap_or_default()
                    )
                }
                (None, Some(expression)) => format!("{id}={expression}"),
                (None, None) => id.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(";")
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
