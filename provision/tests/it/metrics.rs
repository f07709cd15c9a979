//! `provision metrics` reads the stack's figures from CloudWatch (on moto): the figures
//! put for this stack's load balancer, queue and groups come back a point a minute, and
//! another stack's do not.

use std::process::Command;

use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use provision::metrics::Metrics;

use crate::helpers::{config_file, config_for, release_r1};

async fn put(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    metric: &str,
    dimension: (&str, &str),
    time: chrono::DateTime<chrono::Utc>,
    value: f64,
) {
    cloudwatch
        .put_metric_data()
        .namespace(namespace)
        .metric_data(
            MetricDatum::builder()
                .metric_name(metric)
                .dimensions(
                    Dimension::builder()
                        .name(dimension.0)
                        .value(dimension.1)
                        .build(),
                )
                .timestamp(AwsDateTime::from_secs(time.timestamp()))
                .value(value)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// `provision metrics --stack <stack> --endpoint-url <moto> <args> --config <config>`.
fn metrics_cli(
    stack: &str,
    endpoint: &str,
    args: &[String],
    config: &std::path::Path,
) -> std::process::Output {
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .args(["metrics", "--stack", stack, "--endpoint-url", endpoint])
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test]
async fn metrics_reads_the_stacks_figures_a_point_a_minute() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = provision::Stack::open(config_for(&name), release_r1(&moto.endpoint))
        .await
        .unwrap();
    let aws = &stack.aws;

    // A load balancer of the stack's name (the metrics are keyed by its ARN's suffix).
    let vpc = aws
        .ec2
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap();
    let mut subnets = Vec::new();
    for (cidr, zone) in [("10.9.1.0/24", "us-east-1a"), ("10.9.2.0/24", "us-east-1b")] {
        let subnet = aws
            .ec2
            .create_subnet()
            .vpc_id(vpc_id)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await
            .unwrap();
        subnets.push(subnet.subnet().unwrap().subnet_id().unwrap().to_owned());
    }
    let lb = aws
        .elb
        .create_load_balancer()
        .name(provision::names::load_balancer_name(&name))
        .set_subnets(Some(subnets))
        .send()
        .await
        .unwrap();
    let arn = lb.load_balancers()[0].load_balancer_arn().unwrap();
    let lb_dimension = arn.split_once(":loadbalancer/").unwrap().1.to_owned();

    // A range of whole minutes ending before now, and times inside it.
    let now = chrono::Utc::now().timestamp();
    let since = chrono::DateTime::from_timestamp(now - now % 60 - 600, 0).unwrap();
    let until = since + chrono::Duration::minutes(10);
    let at = |minute: i64, second: i64| since + chrono::Duration::seconds(minute * 60 + second);
    let range = [
        "--since".to_owned(),
        since.to_rfc3339(),
        "--until".to_owned(),
        until.to_rfc3339(),
    ];

    let queue = provision::names::queue_name(&name);
    let worker = provision::names::asg_name(&name, "worker");
    let cw = &aws.cloudwatch;
    for (time, requests) in [(at(6, 5), 100.0), (at(6, 50), 20.0), (at(7, 0), 300.0)] {
        put(
            cw,
            "AWS/ApplicationELB",
            "RequestCount",
            ("LoadBalancer", &lb_dimension),
            time,
            requests,
        )
        .await;
    }
    for (time, waiting) in [(at(6, 5), 7.0), (at(6, 30), 2.0), (at(8, 0), 3.0)] {
        put(
            cw,
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            ("QueueName", &queue),
            time,
            waiting,
        )
        .await;
    }
    put(
        cw,
        "AWS/AutoScaling",
        "GroupInServiceInstances",
        ("AutoScalingGroupName", &worker),
        at(7, 0),
        2.0,
    )
    .await;
    // Another stack's queue, and this one's before the range: not figures of the range.
    put(
        cw,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        ("QueueName", "other-video-processing"),
        at(7, 0),
        99.0,
    )
    .await;
    put(
        cw,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        ("QueueName", &queue),
        at(-2, 0),
        50.0,
    )
    .await;

    let config = config_file();
    let json = [&range[..], &["--output".to_owned(), "json".to_owned()]].concat();
    let out = metrics_cli(&name, &moto.endpoint, &json, config.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: Metrics = serde_json::from_slice(&out.stdout).unwrap();
    let values = |id: &str| -> Vec<f64> {
        metrics
            .series
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no series {id}"))
            .points
            .iter()
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(
        values("requests"),
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 120.0, 300.0, 0.0],
        "summed per minute, oldest first; a count's minutes without a point are zeros up to \
         the newest minute published"
    );
    assert_eq!(
        values("queue_waiting"),
        [7.0, 3.0],
        "the maximum of each minute"
    );
    assert_eq!(values("worker_in_service"), [2.0]);
    assert!(values("web_cpu").is_empty());
    let requests = metrics.series.iter().find(|s| s.id == "requests").unwrap();
    assert_eq!(
        requests.points[6].0,
        at(6, 0),
        "a point names the start of its minute"
    );
    assert_eq!(
        requests.summary,
        Some(provision::metrics::Summary {
            min: 0.0,
            mean: 420.0 / 9.0,
            max: 300.0
        })
    );
    assert!(metrics.notes.is_empty(), "{:?}", metrics.notes);

    // The text form: a row per metric with its figures, and the publication delay.
    let text = metrics_cli(&name, &moto.endpoint, &range, config.path());
    let text = String::from_utf8(text.stdout).unwrap();
    let row = text
        .lines()
        .find(|line| line.contains("load balancer requests"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("46.667") && row.contains("300.000"), "{row}");
    assert!(text.contains("one to three minutes"), "{text}");

    // A range that ends before it starts is refused with a clear message.
    let backwards_range = ["--since", "1m", "--until", "1h"].map(str::to_owned);
    let backwards = metrics_cli(&name, &moto.endpoint, &backwards_range, config.path());
    assert_eq!(backwards.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("--since must be before --until"));
}
