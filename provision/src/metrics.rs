//! `provision metrics`: the stack's CloudWatch figures over a time range, one point a
//! minute (`GetMetricData`), for capacity reports and for reading a load test's effect:
//! the load balancer's requests, response time and 5xx, each tier's instances in service
//! and CPU, and the video queue's depth.

use anyhow::Context;
use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use chrono::{DateTime, Utc};

use crate::aws::{error_kind, Aws, ErrorKind};
use crate::names::{asg_name, load_balancer_name, queue_name};

/// The period asked for. The ALB, SQS and the groups' metrics (collected at 1 minute by
/// the stack) have a point a minute; EC2 CPU has one every 5 minutes (basic monitoring).
pub const PERIOD_SECONDS: i32 = 60;

/// The series that count events (a minute without a point had none).
const COUNTS: [&str; 3] = ["requests", "target_5xx", "elb_5xx"];

pub use stack_config::metrics::{Metrics, Series, Summary};

/// What to ask CloudWatch for: (id, label, unit, namespace, metric, dimension, statistic).
type Query = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    (&'static str, String),
    &'static str,
);

impl Aws {
    /// The stack's figures between `since` and `until`.
    pub async fn metrics(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<Metrics> {
        anyhow::ensure!(since < until, "--since must be before --until");
        let mut notes = Vec::new();
        let queue = queue_name(&self.stack);
        let (web, worker) = (
            asg_name(&self.stack, "web"),
            asg_name(&self.stack, "worker"),
        );
        let mut queries: Vec<Query> = vec![
            (
                "web_in_service",
                "web instances in service",
                "instances",
                "AWS/AutoScaling",
                "GroupInServiceInstances",
                ("AutoScalingGroupName", web.clone()),
                "Average",
            ),
            (
                "worker_in_service",
                "worker instances in service",
                "instances",
                "AWS/AutoScaling",
                "GroupInServiceInstances",
                ("AutoScalingGroupName", worker.clone()),
                "Average",
            ),
            (
                "web_cpu",
                "web CPU (mean of instances)",
                "percent",
                "AWS/EC2",
                "CPUUtilization",
                ("AutoScalingGroupName", web),
                "Average",
            ),
            (
                "worker_cpu",
                "worker CPU (mean of instances)",
                "percent",
                "AWS/EC2",
                "CPUUtilization",
                ("AutoScalingGroupName", worker),
                "Average",
            ),
            (
                "queue_waiting",
                "videos waiting in the queue (max)",
                "messages",
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                ("QueueName", queue.clone()),
                "Maximum",
            ),
            (
                "queue_in_flight",
                "videos being processed (max)",
                "messages",
                "AWS/SQS",
                "ApproximateNumberOfMessagesNotVisible",
                ("QueueName", queue),
                "Maximum",
            ),
        ];
        match self.load_balancer_dimension().await? {
            Some(lb) => queries.extend([
                (
                    "requests",
                    "load balancer requests",
                    "requests/min",
                    "AWS/ApplicationELB",
                    "RequestCount",
                    ("LoadBalancer", lb.clone()),
                    "Sum",
                ),
                (
                    "response_time",
                    "target response time (mean)",
                    "seconds",
                    "AWS/ApplicationELB",
                    "TargetResponseTime",
                    ("LoadBalancer", lb.clone()),
                    "Average",
                ),
                (
                    "response_time_p95",
                    "target response time (each minute's p95)",
                    "seconds",
                    "AWS/ApplicationELB",
                    "TargetResponseTime",
                    ("LoadBalancer", lb.clone()),
                    "p95",
                ),
                (
                    "target_5xx",
                    "5xx from the API",
                    "responses/min",
                    "AWS/ApplicationELB",
                    "HTTPCode_Target_5XX_Count",
                    ("LoadBalancer", lb.clone()),
                    "Sum",
                ),
                (
                    "elb_5xx",
                    "5xx from the load balancer",
                    "responses/min",
                    "AWS/ApplicationELB",
                    "HTTPCode_ELB_5XX_Count",
                    ("LoadBalancer", lb),
                    "Sum",
                ),
            ]),
            None => notes.push(format!(
                "no load balancer {}: its metrics are left out",
                load_balancer_name(&self.stack)
            )),
        }

        let mut series: Vec<Series> = queries
            .iter()
            .map(|(id, label, unit, ..)| Series {
                id: (*id).to_owned(),
                label: (*label).to_owned(),
                unit: (*unit).to_owned(),
                points: Vec::new(),
                summary: None,
            })
            .collect();
        let mut request = self
            .cloudwatch
            .get_metric_data()
            .start_time(AwsDateTime::from_secs(since.timestamp()))
            .end_time(AwsDateTime::from_secs(until.timestamp()));
        for (id, _, _, namespace, metric, (dimension, value), statistic) in &queries {
            request = request.metric_data_queries(
                MetricDataQuery::builder()
                    .id(*id)
                    .metric_stat(
                        MetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace(*namespace)
                                    .metric_name(*metric)
                                    .dimensions(
                                        Dimension::builder().name(*dimension).value(value).build(),
                                    )
                                    .build(),
                            )
                            .period(PERIOD_SECONDS)
                            .stat(*statistic)
                            .build(),
                    )
                    .build(),
            );
        }
        let mut next_token: Option<String> = None;
        loop {
            let page = request
                .clone()
                .set_next_token(next_token.clone())
                .send()
                .await
                .context("CloudWatch GetMetricData")?;
            for message in page.messages() {
                notes.push(format!(
                    "CloudWatch: {}",
                    message.value().unwrap_or_default()
                ));
            }
            for result in page.metric_data_results() {
                if let Some(status) = result.status_code() {
                    if status.as_str() != "Complete" {
                        notes.push(format!(
                            "{}: CloudWatch returned {} data ({})",
                            result.id().unwrap_or_default(),
                            status.as_str(),
                            result
                                .messages()
                                .iter()
                                .filter_map(|m| m.value())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ));
                    }
                }
                let Some(target) = series
                    .iter_mut()
                    .find(|s| Some(s.id.as_str()) == result.id())
                else {
                    continue;
                };
                for (time, value) in result.timestamps().iter().zip(result.values()) {
                    if let Some(time) = DateTime::from_timestamp(time.secs(), 0) {
                        target.points.push((time, *value));
                    }
                }
            }
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        for s in &mut series {
            s.points.sort_by_key(|(time, _)| *time);
            s.points.dedup_by_key(|(time, _)| *time);
        }
        // The load balancer publishes no count for a minute without any: those minutes are
        // zeros, up to the newest minute CloudWatch has published for the stack (later
        // ones may only be unpublished yet).
        let newest = series
            .iter()
            .filter_map(|s| s.points.last())
            .map(|(t, _)| *t)
            .max();
        let oldest = series
            .iter()
            .filter_map(|s| s.points.first())
            .map(|(t, _)| *t)
            .min();
        if let (Some(oldest), Some(newest)) = (oldest, newest) {
            // On the grid CloudWatch answered on (whole minutes on AWS).
            let period = chrono::Duration::seconds(i64::from(PERIOD_SECONDS));
            let mut first = oldest;
            while first - period >= since {
                first -= period;
            }
            for s in series
                .iter_mut()
                .filter(|s| COUNTS.contains(&s.id.as_str()))
            {
                let mut minute = first;
                while minute <= newest {
                    if !s.points.iter().any(|(t, _)| *t == minute) {
                        s.points.push((minute, 0.0));
                    }
                    minute += period;
                }
                s.points.sort_by_key(|(time, _)| *time);
            }
        }
        for s in &mut series {
            s.summary = Summary::of(s.points.iter().map(|(_, v)| *v));
        }
        Ok(Metrics {
            stack: self.stack.clone(),
            region: self.region.clone(),
            since,
            until,
            period_seconds: PERIOD_SECONDS,
            series,
            notes,
        })
    }

    /// The ALB's metric dimension, its ARN's suffix (`app/<name>/<id>`), if it exists.
    async fn load_balancer_dimension(&self) -> anyhow::Result<Option<String>> {
        let name = load_balancer_name(&self.stack);
        match self.elb.describe_load_balancers().names(&name).send().await {
            Ok(found) => Ok(found
                .load_balancers()
                .first()
                .and_then(|lb| lb.load_balancer_arn())
                .and_then(|arn| arn.split_once(":loadbalancer/"))
                .map(|(_, suffix)| suffix.to_owned())),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("describe the load balancer"),
        }
    }
}
