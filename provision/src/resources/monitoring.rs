//! CloudWatch alarms (a backlog over 5, anything in the dead-letter queue, the oldest
//! video waiting too long, the web tier's 5xx and unhealthy hosts that roll a deploy back)
//! and the stack's dashboard. Each of these alarms notifies the stack's alerts topic when
//! it goes off and when it clears (`resources::alerts`); the scaling alarms only scale.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_cloudwatch::types::MetricAlarm;

use crate::aws::{error_kind, observed, Aws, DeleteError, ErrorKind, Ids, STACK_TAG};
use crate::config::Config;
use crate::model::{Change, Kind, Observed, Resource};
use crate::names::{
    alerts_topic_name, asg_name, dead_letter_queue_name, load_balancer_name, queue_name,
    target_group_name, Names,
};
use crate::resources::compute::MetricQuery;

/// The alarms an instance refresh of each tier watches: one going off during a deploy
/// rolls the tier back to the release before. For the worker, a job that failed every
/// delivery (the release cannot process videos).
pub fn refresh_alarms(stack: &str, tier: &str) -> Vec<String> {
    let n = Names {
        stack: stack.to_owned(),
    };
    match tier {
        "web" => vec![n.of("web-target-5xx"), n.of("web-unhealthy-hosts")],
        _ => vec![n.of("worker-new-dead-letters")],
    }
}

/// The seed's CloudWatch alarms (a backlog over 5, anything in the dead-letter queue) and
/// one dashboard over SQS, the tiers' instances and the load balancer.
pub(crate) fn desired(n: &Names, config: &Config) -> Vec<Resource> {
    let queue = queue_name(&n.stack);
    let dlq = dead_letter_queue_name(&n.stack);
    let lb = load_balancer_name(&n.stack);
    let alarm = |metric_queue: &str, threshold: &str, description: &str| {
        [
            ("namespace", "AWS/SQS".to_owned()),
            ("metric", "ApproximateNumberOfMessagesVisible".to_owned()),
            ("dimension", format!("QueueName={metric_queue}")),
            ("statistic", "Maximum".to_owned()),
            ("period", "60".to_owned()),
            ("evaluation_periods", "1".to_owned()),
            ("comparison", "GreaterThanThreshold".to_owned()),
            ("threshold", threshold.to_owned()),
            ("description", description.to_owned()),
        ]
    };
    let topic = alerts_topic_name(&n.stack);
    let mut out = vec![
        Resource::new(
            Kind::Alarm,
            n.of("queue-backlog"),
            &alarm(&queue, "5", "more than 5 videos waiting for a worker"),
        ),
        Resource::new(
            Kind::Alarm,
            n.of("dead-letters"),
            &alarm(&dlq, "0", "a video job landed in the dead-letter queue"),
        ),
        Resource::new(
            Kind::Alarm,
            n.of("oldest-job"),
            &[
                ("namespace", "AWS/SQS".to_owned()),
                ("metric", "ApproximateAgeOfOldestMessage".to_owned()),
                ("dimension", format!("QueueName={queue}")),
                ("statistic", "Maximum".to_owned()),
                ("period", "60".to_owned()),
                ("evaluation_periods", "1".to_owned()),
                ("comparison", "GreaterThanThreshold".to_owned()),
                (
                    "threshold",
                    config.alerts.oldest_job_age.as_secs().to_string(),
                ),
                (
                    "description",
                    format!(
                        "a video has waited more than {} for a worker",
                        humantime_serde::re::humantime::format_duration(
                            config.alerts.oldest_job_age
                        )
                    ),
                ),
            ],
        ),
        // A worker release's refresh alarm: dead letters *arriving* (the queue's total
        // going up within a minute). The depth itself would stay in ALARM while old dead
        // letters wait for an operator, and roll back every worker refresh meanwhile;
        // visible plus in flight, as the dead-letter sweep hides messages for a moment.
        Resource::new(
            Kind::Alarm,
            n.of("worker-new-dead-letters"),
            &[
                (
                    "metrics",
                    format!(
                        "m1=AWS/SQS:ApproximateNumberOfMessagesVisible:QueueName={dlq}:Maximum;\
                         m2=AWS/SQS:ApproximateNumberOfMessagesNotVisible:QueueName={dlq}:Maximum;\
                         e1=DIFF(m1+m2)"
                    ),
                ),
                ("period", "60".to_owned()),
                ("evaluation_periods", "1".to_owned()),
                ("comparison", "GreaterThanThreshold".to_owned()),
                ("threshold", "0".to_owned()),
                (
                    "description",
                    "video jobs landed in the dead-letter queue in the last minute".to_owned(),
                ),
            ],
        ),
        // Requests the instances answered 5xx (not the load balancer's own, such as 503
        // with no healthy target): a release that serves errors.
        Resource::new(
            Kind::Alarm,
            n.of("web-target-5xx"),
            &[
                ("namespace", "AWS/ApplicationELB".to_owned()),
                ("metric", "HTTPCode_Target_5XX_Count".to_owned()),
                ("dimension", format!("LoadBalancer={lb}")),
                ("statistic", "Sum".to_owned()),
                ("period", "60".to_owned()),
                ("evaluation_periods", "1".to_owned()),
                ("comparison", "GreaterThanThreshold".to_owned()),
                ("threshold", "5".to_owned()),
                (
                    "description",
                    "web instances answered more than 5 requests a minute with 5xx".to_owned(),
                ),
            ],
        ),
        // Targets failing the health check: a release that does not start or answer.
        Resource::new(
            Kind::Alarm,
            n.of("web-unhealthy-hosts"),
            &[
                ("namespace", "AWS/ApplicationELB".to_owned()),
                ("metric", "UnHealthyHostCount".to_owned()),
                (
                    "dimension",
                    format!(
                        "LoadBalancer={lb},TargetGroup={}",
                        target_group_name(&n.stack)
                    ),
                ),
                ("statistic", "Maximum".to_owned()),
                ("period", "60".to_owned()),
                // Longer than a new instance's boot (2–4 min), during which it fails the
                // check as it installs: only a release that never answers sets it off.
                ("evaluation_periods", "5".to_owned()),
                ("comparison", "GreaterThanThreshold".to_owned()),
                ("threshold", "0".to_owned()),
                (
                    "description",
                    "a web instance has failed the load balancer's health check for 5 min"
                        .to_owned(),
                ),
            ],
        ),
        Resource::new(
            Kind::Dashboard,
            n.of("overview"),
            &[("body", dashboard_body(n, config))],
        ),
    ];
    for alarm in out.iter_mut().filter(|r| r.kind == Kind::Alarm) {
        alarm.props.insert("notify".into(), topic.clone());
    }
    out
}

/// The dashboard's JSON, in a canonical form (sorted keys) so it compares as a string.
fn dashboard_body(n: &Names, config: &Config) -> String {
    let region = &config.stack.region;
    let queue = queue_name(&n.stack);
    let (web, worker, lb) = (
        asg_name(&n.stack, "web"),
        asg_name(&n.stack, "worker"),
        load_balancer_name(&n.stack),
    );
    // The ALB's metric dimension is its ARN suffix ("app/<name>/<id>"), unknown until it
    // exists; a SEARCH on the name keeps the desired state a pure function of config.
    let alb_metric = |metric: &str, stat: &str, id: &str| {
        serde_json::json!([{
            "expression": format!("SEARCH('{{AWS/ApplicationELB,LoadBalancer}} MetricName=\"{metric}\" {lb}', '{stat}', 60)"),
            "id": id,
        }])
    };
    let widget = |title: &str, metrics: serde_json::Value, y: u32, x: u32| {
        serde_json::json!({
            "type": "metric", "x": x, "y": y, "width": 12, "height": 6,
            "properties": {"title": title, "region": region, "stat": "Average", "period": 60, "metrics": metrics},
        })
    };
    let body = serde_json::json!({"widgets": [
        widget("SQS: videos waiting and oldest wait (s)", serde_json::json!([
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", queue],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", queue],
        ]), 0, 0),
        widget("Backlog per worker", serde_json::json!([
            [{"expression": "m1 / m2", "label": "videos per worker", "id": "e1"}],
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", queue, {"id": "m1", "visible": false}],
            ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", worker, {"id": "m2", "visible": false}],
        ]), 0, 12),
        widget("Instances in service", serde_json::json!([
            ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", web],
            ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", worker],
        ]), 6, 0),
        widget("CPU %", serde_json::json!([
            ["AWS/EC2", "CPUUtilization", "AutoScalingGroupName", web],
            ["AWS/EC2", "CPUUtilization", "AutoScalingGroupName", worker],
        ]), 6, 12),
        widget("Load balancer: requests, 5xx, latency, healthy hosts", serde_json::json!([
            alb_metric("RequestCount", "Sum", "requests"),
            alb_metric("HTTPCode_Target_5XX_Count", "Sum", "errors"),
            alb_metric("TargetResponseTime", "Average", "latency"),
            [{
                "expression": format!("SEARCH('{{AWS/ApplicationELB,LoadBalancer,TargetGroup}} MetricName=\"HealthyHostCount\" {lb}', 'Minimum', 60)"),
                "id": "healthy",
            }],
        ]), 12, 0),
    ]});
    body.to_string()
}

/// The stack's alarms (found by name prefix, kept when they carry its tag) and its
/// dashboard (by exact name: dashboards carry no tags).
/// Alarms that target tracking creates are named `TargetTracking-…`, so they never match.
pub(crate) async fn observe(aws: &Aws) -> anyhow::Result<Vec<Observed>> {
    let prefix = format!("{}-", aws.stack);
    let dashboard = Names {
        stack: aws.stack.clone(),
    }
    .of("overview");
    let (alarms, dashboards) = tokio::try_join!(
        Box::pin(async {
            aws.cloudwatch
                .describe_alarms()
                .alarm_name_prefix(&prefix)
                .into_paginator()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .context("describe alarms")
        }),
        Box::pin(async {
            aws.cloudwatch
                .list_dashboards()
                .dashboard_name_prefix(&dashboard)
                .send()
                .await
                .context("list dashboards")
        }),
    )?;
    // The prefix also matches other stacks (`anb-staging-…` for stack `anb`) and alarms
    // made by hand: only those carrying this stack's tag are its own.
    let alarms: Vec<&MetricAlarm> = alarms
        .iter()
        .flat_map(|page| page.metric_alarms())
        .collect();
    let owned = futures_util::future::try_join_all(alarms.iter().map(|alarm| async {
        let Some(arn) = alarm.alarm_arn() else {
            return Ok(false);
        };
        let tags = aws
            .cloudwatch
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .with_context(|| format!("read the tags of alarm {arn}"))?;
        anyhow::Ok(
            tags.tags()
                .iter()
                .any(|t| aws.is_stack_tag(t.key(), t.value())),
        )
    }))
    .await?;
    let alarms = alarms
        .into_iter()
        .zip(owned)
        .filter_map(|(alarm, owned)| owned.then_some(alarm));
    let mut out = Vec::new();
    for alarm in alarms {
        let dimension = alarm
            .dimensions()
            .iter()
            .map(|d| {
                format!(
                    "{}={}",
                    d.name().unwrap_or_default(),
                    dimension_name(d.value().unwrap_or_default())
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let name = alarm.alarm_name().unwrap_or_default().to_owned();
        let metrics = metrics_property(alarm.metrics());
        // A metric-math alarm's period is its queries'.
        let period = alarm.period().or_else(|| {
            alarm
                .metrics()
                .iter()
                .find_map(|q| q.metric_stat().and_then(|s| s.period()))
        });
        out.push(observed(
            Kind::Alarm,
            name.clone(),
            name,
            &[
                ("namespace", alarm.namespace().unwrap_or_default().into()),
                ("metric", alarm.metric_name().unwrap_or_default().into()),
                ("dimension", dimension),
                (
                    "statistic",
                    alarm
                        .statistic()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                ),
                ("metrics", metrics),
                ("period", period.unwrap_or_default().to_string()),
                (
                    "evaluation_periods",
                    alarm.evaluation_periods().unwrap_or_default().to_string(),
                ),
                (
                    "comparison",
                    alarm
                        .comparison_operator()
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_default(),
                ),
                (
                    "threshold",
                    alarm.threshold().unwrap_or_default().to_string(),
                ),
                (
                    "description",
                    alarm.alarm_description().unwrap_or_default().into(),
                ),
            ],
        ));
        let props = &mut out.last_mut().expect("just pushed").resource.props;
        props.extend(actions_properties(
            alarm.alarm_actions(),
            alarm.ok_actions(),
        ));
    }
    // Dashboards carry no tags: only the exact name this stack gives its own is read.
    let own_dashboard = dashboards
        .dashboard_entries()
        .iter()
        .filter(|entry| entry.dashboard_name() == Some(dashboard.as_str()));
    for entry in own_dashboard {
        let name = entry.dashboard_name().unwrap_or_default().to_owned();
        let body = match aws
            .cloudwatch
            .get_dashboard()
            .dashboard_name(&name)
            .send()
            .await
        {
            Ok(found) => found.dashboard_body().unwrap_or_default().to_owned(),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context("get dashboard"),
        };
        // Canonical form (sorted keys, no spacing), as the desired body is written.
        let body = serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| v.to_string())
            .unwrap_or(body);
        out.push(observed(
            Kind::Dashboard,
            name.clone(),
            name,
            &[("body", body)],
        ));
    }
    Ok(out)
}

/// An alarm's actions as properties: `action`, the scaling policy's ARN (which
/// [`resolve_actions`] turns into its name), and `notify`, the topic notified both when it
/// goes off and when it clears (a topic notified only one way says so, and differs).
fn actions_properties(on_alarm: &[String], on_ok: &[String]) -> Vec<(String, String)> {
    let is_topic = |arn: &&String| arn.contains(":sns:");
    let mut props = Vec::new();
    if let Some(policy) = on_alarm.iter().find(|arn| !is_topic(arn)) {
        props.push(("action".to_owned(), policy.clone()));
    }
    let topic = |actions: &[String]| {
        actions
            .iter()
            .find(is_topic)
            .map(|arn| crate::resources::alerts::topic_of_arn(arn).to_owned())
    };
    let notify = match (topic(on_alarm), topic(on_ok)) {
        (Some(a), Some(b)) if a == b => Some(a),
        (Some(a), _) => Some(format!("{a} (on alarm only)")),
        (None, Some(b)) => Some(format!("{b} (on OK only)")),
        (None, None) => None,
    };
    props.extend(notify.map(|topic| ("notify".to_owned(), topic)));
    props
}

/// An alarm's action as AWS holds it is a scaling policy's ARN; the desired `action` names
/// the policy. Rewrites each observed action to the name of the policy (among `compute`'s
/// observed resources) it points to, so the two compare.
pub(crate) fn resolve_actions(alarms: &mut [Observed], compute: &[Observed]) {
    let policies: HashMap<&str, &str> = compute
        .iter()
        .filter(|o| o.resource.kind == Kind::ScalingPolicy)
        .map(|o| (o.id.as_str(), o.resource.name.as_str()))
        .collect();
    for alarm in alarms {
        if let Some(action) = alarm.resource.props.get_mut("action") {
            if let Some(name) = policies.get(action.as_str()) {
                *action = (*name).to_owned();
            }
        }
    }
}

pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    put(aws, change, ids).await?;
    Ok(change.name.clone())
}

/// Alarms and dashboards are addressed by name, which `change` carries.
pub(crate) async fn update(aws: &Aws, change: &Change, _: &str, ids: &Ids) -> anyhow::Result<()> {
    put(aws, change, ids).await
}

/// Creates or replaces an alarm or the dashboard (CloudWatch's calls do both).
async fn put(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<()> {
    let (kind, name, p) = (change.kind, change.name.as_str(), &change.desired);
    use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic};
    if kind == Kind::Dashboard {
        aws.cloudwatch
            .put_dashboard()
            .dashboard_name(name)
            .dashboard_body(&p["body"])
            .send()
            .await?;
        return Ok(());
    }
    let period: i32 = p["period"].parse()?;
    let mut put = aws
        .cloudwatch
        .put_metric_alarm()
        .alarm_name(name)
        .alarm_description(&p["description"])
        .set_alarm_actions(non_empty(
            [p.get("action"), p.get("notify")]
                .into_iter()
                .flatten()
                .map(|name| ids.id_of(name))
                .collect::<anyhow::Result<Vec<_>>>()?,
        ))
        .set_ok_actions(
            p.get("notify")
                .map(|t| ids.id_of(t))
                .transpose()?
                .map(|t| vec![t]),
        );
    put = match p.get("metrics") {
        Some(spec) => put.set_metrics(Some(alarm_queries(spec, period)?)),
        None => {
            let mut put = put
                .namespace(&p["namespace"])
                .metric_name(&p["metric"])
                .statistic(Statistic::from(p["statistic"].as_str()))
                .period(period);
            for pair in p["dimension"].split(',') {
                let (dimension, value) = pair.split_once('=').context("bad alarm dimension")?;
                put = put.dimensions(
                    Dimension::builder()
                        .name(dimension)
                        .value(dimension_value(dimension, value, ids)?)
                        .build(),
                );
            }
            put
        }
    };
    put.evaluation_periods(p["evaluation_periods"].parse()?)
        .comparison_operator(ComparisonOperator::from(p["comparison"].as_str()))
        .threshold(p["threshold"].parse()?)
        .tags(
            aws_sdk_cloudwatch::types::Tag::builder()
                .key(STACK_TAG)
                .value(&aws.stack)
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

/// `None` for no actions: a list sent empty is not how the API says "none".
fn non_empty(actions: Vec<String>) -> Option<Vec<String>> {
    (!actions.is_empty()).then_some(actions)
}

/// A dimension's value as CloudWatch wants it. The load balancer's metrics name it and its
/// target group by the end of their ARNs (`app/<name>/<id>`, `targetgroup/<name>/<id>`),
/// known once they exist; desired state names them.
fn dimension_value(dimension: &str, value: &str, ids: &Ids) -> anyhow::Result<String> {
    Ok(match dimension {
        "LoadBalancer" => {
            let arn = ids.id_of(value)?;
            arn.split_once(":loadbalancer/")
                .map(|(_, suffix)| suffix.to_owned())
                .with_context(|| format!("{arn} is no load balancer ARN"))?
        }
        "TargetGroup" => {
            let arn = ids.id_of(value)?;
            arn.rsplit_once(':')
                .map(|(_, suffix)| suffix.to_owned())
                .filter(|suffix| suffix.starts_with("targetgroup/"))
                .with_context(|| format!("{arn} is no target group ARN"))?
        }
        _ => value.to_owned(),
    })
}

/// The inverse of [`dimension_value`]: the name inside `app/<name>/<id>` or
/// `targetgroup/<name>/<id>`, any other value as it is.
fn dimension_name(value: &str) -> &str {
    match value.split('/').collect::<Vec<_>>()[..] {
        ["app" | "targetgroup", name, _] => name,
        _ => value,
    }
}

/// A `metrics` property as an alarm's metric queries, each metric over `period` seconds.
fn alarm_queries(
    spec: &str,
    period: i32,
) -> anyhow::Result<Vec<aws_sdk_cloudwatch::types::MetricDataQuery>> {
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    Ok(crate::resources::compute::parse_metrics(spec)?
        .into_iter()
        .map(|q| match q {
            MetricQuery::Stat {
                id,
                namespace,
                metric,
                dimension: (name, value),
                stat,
            } => MetricDataQuery::builder()
                .id(id)
                .metric_stat(
                    MetricStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace(namespace)
                                .metric_name(metric)
                                .dimensions(Dimension::builder().name(name).value(value).build())
                                .build(),
                        )
                        .period(period)
                        .stat(stat)
                        .build(),
                )
                .return_data(false)
                .build(),
            MetricQuery::Expression { id, expression } => MetricDataQuery::builder()
                .id(id)
                .expression(expression)
                .label(crate::resources::compute::BACKLOG_LABEL)
                .return_data(true)
                .build(),
        })
        .collect())
}

/// The inverse of [`alarm_queries`] (empty for an alarm on one metric).
fn metrics_property(queries: &[aws_sdk_cloudwatch::types::MetricDataQuery]) -> String {
    let queries: Vec<MetricQuery> = queries
        .iter()
        .map(|q| {
            let id = q.id().unwrap_or_default().to_owned();
            match q.metric_stat().and_then(|s| s.metric().map(|m| (s, m))) {
                Some((stat, metric)) => MetricQuery::Stat {
                    id,
                    namespace: metric.namespace().unwrap_or_default().into(),
                    metric: metric.metric_name().unwrap_or_default().into(),
                    dimension: metric
                        .dimensions()
                        .first()
                        .map(|d| {
                            (
                                d.name().unwrap_or_default().to_owned(),
                                d.value().unwrap_or_default().to_owned(),
                            )
                        })
                        .unwrap_or_default(),
                    stat: stat.stat().unwrap_or_default().into(),
                },
                None => MetricQuery::Expression {
                    id,
                    expression: q.expression().unwrap_or_default().into(),
                },
            }
        })
        .collect();
    crate::resources::compute::format_metrics(&queries)
}

pub(crate) async fn delete(aws: &Aws, kind: Kind, id: &str) -> Result<(), DeleteError> {
    if kind == Kind::Dashboard {
        return aws
            .cloudwatch
            .delete_dashboards()
            .dashboard_names(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk);
    }
    aws.cloudwatch
        .delete_alarms()
        .alarm_names(id)
        .send()
        .await
        .map(drop)
        .map_err(DeleteError::from_sdk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_notifies_its_topic_both_ways_or_differs() {
        let topic = "arn:aws:sns:us-east-1:123456789012:anb-alerts".to_owned();
        let policy = "arn:aws:autoscaling:us-east-1:1:scalingPolicy:x".to_owned();
        let props = |on_alarm: &[String], on_ok: &[String]| actions_properties(on_alarm, on_ok);
        assert_eq!(
            props(
                &[policy.clone(), topic.clone()],
                std::slice::from_ref(&topic)
            ),
            [
                ("action".to_owned(), policy.clone()),
                ("notify".to_owned(), "anb-alerts".to_owned())
            ]
        );
        assert_eq!(
            props(std::slice::from_ref(&topic), &[]),
            [("notify".to_owned(), "anb-alerts (on alarm only)".to_owned())]
        );
        assert_eq!(props(&[], &[]), []);
        let notified: Vec<String> = desired(
            &Names {
                stack: "anb".into(),
            },
            &Config::load(None).unwrap(),
        )
        .into_iter()
        .filter(|r| r.props.get("notify").map(String::as_str) == Some("anb-alerts"))
        .map(|r| r.name)
        .collect();
        assert_eq!(
            notified,
            [
                "anb-queue-backlog",
                "anb-dead-letters",
                "anb-oldest-job",
                "anb-worker-new-dead-letters",
                "anb-web-target-5xx",
                "anb-web-unhealthy-hosts"
            ]
        );
    }

    #[test]
    fn alarm_actions_read_back_as_the_names_of_the_policies_they_trigger() {
        let observed = |kind, name: &str, props: &[(&str, String)], id: &str| Observed {
            resource: Resource::new(kind, name, props),
            id: id.into(),
        };
        let mut alarms = vec![
            observed(
                Kind::Alarm,
                "anb-web-cpu-high",
                &[("action", "arn:policy/out".into())],
                "a",
            ),
            // An action that is no policy of the stack stays as AWS reports it: drift.
            observed(
                Kind::Alarm,
                "anb-other",
                &[("action", "arn:elsewhere".into())],
                "b",
            ),
        ];
        let compute = [
            observed(
                Kind::ScalingPolicy,
                "anb-web-scale-out",
                &[],
                "arn:policy/out",
            ),
            observed(
                Kind::AutoScalingGroup,
                "anb-web-asg",
                &[],
                "arn:policy/elsewhere",
            ),
        ];
        resolve_actions(&mut alarms, &compute);
        assert_eq!(alarms[0].resource.props["action"], "anb-web-scale-out");
        assert_eq!(alarms[1].resource.props["action"], "arn:elsewhere");
    }

    fn find<'a>(all: &'a [Resource], name: &str) -> &'a Resource {
        all.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn alarms_watch_the_backlog_and_the_dead_letters() {
        let n = Names {
            stack: "anb".into(),
        };
        let all = desired(&n, &Config::load(None).unwrap());
        let backlog = find(&all, "anb-queue-backlog");
        assert_eq!(backlog.props["dimension"], "QueueName=anb-video-processing");
        assert_eq!(
            (
                backlog.props["comparison"].as_str(),
                backlog.props["threshold"].as_str()
            ),
            ("GreaterThanThreshold", "5")
        );
        assert_eq!(
            find(&all, "anb-dead-letters").props["dimension"],
            "QueueName=anb-video-processing-dlq"
        );
        let body = &find(&all, "anb-overview").props["body"];
        for metric in [
            "ApproximateAgeOfOldestMessage",
            "GroupInServiceInstances",
            "CPUUtilization",
            "HTTPCode_Target_5XX_Count",
            "HealthyHostCount",
            "m1 / m2",
        ] {
            assert!(body.contains(metric), "dashboard lacks {metric}");
        }
    }
}
