//! Day-2 commands through the binary against moto: `status --health`, `pause` and
//! `resume`, `logs`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use provision::Stack;

use crate::helpers::{config_for, publish_stand_ins, release_r1};

/// The test configuration file: moto's image, and `edit` applied.
fn config_file_with(edit: impl Fn(String) -> String) -> tempfile::NamedTempFile {
    let config = tempfile::NamedTempFile::new().unwrap();
    let text = provision::config::DEFAULT_TOML.replace("ami = \"\"", "ami = \"ami-1e749f67\"");
    std::fs::write(config.path(), edit(text)).unwrap();
    config
}

fn provision(args: &[&str], stack: &str, endpoint: &str, config: &std::path::Path) -> Output {
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    Command::new(env!("CARGO_BIN_EXE_provision"))
        .args(args)
        .args(["--stack", stack, "--endpoint-url", endpoint, "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn health_json(stack: &str, endpoint: &str, config: &std::path::Path) -> (i32, serde_json::Value) {
    let out = provision(
        &["status", "--health", "--output", "json"],
        stack,
        endpoint,
        config,
    );
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code().unwrap(), report)
}

async fn deployed(name: &str, endpoint: &str, emails: &[&str]) -> Stack {
    let mut config = config_for(name);
    config.alerts.emails = emails.iter().map(|e| (*e).to_owned()).collect();
    let stack = Stack::open(config, release_r1(endpoint)).await.unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(provision::Output::Text).await.unwrap();
    stack
}

#[tokio::test]
async fn health_shows_instances_targets_queue_alarms_and_alerts_and_exits_3_when_unhealthy() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = deployed(&name, &moto.endpoint, &["ops@anb.example"]).await;
    let config = config_file_with(|t| t.replace("emails = []", "emails = [\"ops@anb.example\"]"));
    // An idle stack's scale-in alarm is in ALARM by design: listed, but no problem.
    stack
        .aws
        .cloudwatch
        .set_alarm_state()
        .alarm_name(format!("{name}-web-cpu-low"))
        .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
        .state_reason("CPU 2 % for 5 minutes")
        .send()
        .await
        .unwrap();

    let (code, report) = health_json(&name, &moto.endpoint, config.path());
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["problems"], serde_json::json!([]));
    for (i, tier) in ["web", "worker"].iter().enumerate() {
        let t = &report["tiers"][i];
        assert_eq!(t["tier"], *tier);
        let instances = t["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 1, "{t:#}");
        assert_eq!(instances[0]["release"], "r1");
        assert_eq!(instances[0]["lifecycle"], "InService");
        assert!(instances[0]["zone"]
            .as_str()
            .unwrap()
            .starts_with("us-east-1"));
    }
    assert_eq!(report["targets"][0]["state"], "healthy");
    assert_eq!(report["queue"]["waiting"], 0);
    assert_eq!(report["alerts"][0]["endpoint"], "ops@anb.example");
    assert_eq!(report["database"]["status"], "available");
    assert_eq!(report["drift"], serde_json::json!([]));
    let hourly = report["usd_per_hour"].as_f64().unwrap();
    assert!(hourly > 0.1, "{report:#}");
    let alarms: Vec<&str> = report["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        alarms.contains(&format!("{name}-oldest-job").as_str()),
        "{alarms:?}"
    );

    // A video job in the dead-letter queue and an alarm gone off: unhealthy, each named.
    let dlq = stack
        .aws
        .sqs
        .get_queue_url()
        .queue_name(format!("{name}-video-processing-dlq"))
        .send()
        .await
        .unwrap();
    stack
        .aws
        .sqs
        .send_message()
        .queue_url(dlq.queue_url().unwrap())
        .message_body("{}")
        .send()
        .await
        .unwrap();
    stack
        .aws
        .cloudwatch
        .set_alarm_state()
        .alarm_name(format!("{name}-queue-backlog"))
        .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
        .state_reason("7 videos waiting")
        .send()
        .await
        .unwrap();
    let (code, report) = health_json(&name, &moto.endpoint, config.path());
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(
        report["problems"],
        serde_json::json!([
            format!("alarm {name}-queue-backlog is in ALARM: 7 videos waiting"),
            "1 video job(s) in the dead-letter queue"
        ])
    );
    // The text says the same, with the alert address.
    let out = provision(
        &["status", "--health"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(3), "{shown}");
    for expected in [
        "UNHEALTHY:",
        "dead letters: 1",
        "Alerts reach: ops@anb.example",
        "release r1 (v1)",
        "Cost now: $",
    ] {
        assert!(shown.contains(expected), "{expected}: {shown}");
    }
    assert!(stack.down().await.unwrap().is_empty());
}

#[tokio::test]
async fn pause_keeps_the_sizes_stops_the_database_and_resume_brings_it_back() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = deployed(&name, &moto.endpoint, &[]).await;
    let config = config_file_with(|t| t);
    let groups = || async {
        let found = stack
            .aws
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(format!("{name}-web-asg"))
            .auto_scaling_group_names(format!("{name}-worker-asg"))
            .send()
            .await
            .unwrap();
        let mut sizes: Vec<(String, i32, i32, i32, usize)> = found
            .auto_scaling_groups()
            .iter()
            .map(|g| {
                (
                    g.auto_scaling_group_name().unwrap().to_owned(),
                    g.min_size().unwrap(),
                    g.max_size().unwrap(),
                    g.desired_capacity().unwrap(),
                    g.instances().len(),
                )
            })
            .collect();
        sizes.sort();
        sizes
    };
    let database_status = || async {
        stack
            .aws
            .rds
            .describe_db_instances()
            .db_instance_identifier(format!("{name}-postgres"))
            .send()
            .await
            .unwrap()
            .db_instances()[0]
            .db_instance_status()
            .unwrap()
            .to_owned()
    };
    let running = groups().await;
    assert_eq!(
        running,
        [
            (format!("{name}-web-asg"), 1, 3, 1, 1),
            (format!("{name}-worker-asg"), 1, 3, 1, 1)
        ]
    );

    let out = provision(&["pause"], &name, &moto.endpoint, config.path());
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for expected in [
        "is paused since",
        "AWS starts the stopped database again on",
        "While paused it still costs $",
        "load balancer",
        "RDS storage 20 GB",
    ] {
        assert!(said.contains(expected), "{expected}: {said}");
    }
    assert!(
        !said.contains("× t3.small"),
        "no instance is billed: {said}"
    );
    assert_eq!(
        groups().await,
        [
            (format!("{name}-web-asg"), 0, 0, 0, 0),
            (format!("{name}-worker-asg"), 0, 0, 0, 0)
        ]
    );
    assert_eq!(database_status().await, "stopped");

    // Paused is a state, not drift; `up` refuses; health is not unhealthy for it.
    let out = provision(&["status"], &name, &moto.endpoint, config.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("is paused since"), "{}", text(&out));
    let out = provision(
        &["up", "--release", "r1"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("run `provision resume` first, then `up`"),
        "{}",
        text(&out)
    );
    let (code, report) = health_json(&name, &moto.endpoint, config.path());
    assert_eq!(code, 0, "{report:#}");
    let since =
        chrono::DateTime::parse_from_rfc3339(report["paused"]["since"].as_str().unwrap()).unwrap();
    let restarts = chrono::DateTime::parse_from_rfc3339(
        report["paused"]["database_restarts"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(restarts - since, chrono::Duration::days(7));
    assert!(
        (0.03..0.06).contains(&report["usd_per_hour"].as_f64().unwrap()),
        "{report:#}"
    );

    // A second pause changes nothing and keeps the sizes to come back to.
    let out = provision(&["pause"], &name, &moto.endpoint, config.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already paused"), "{}", text(&out));

    let out = provision(&["resume"], &name, &moto.endpoint, config.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is running again"), "{}", text(&out));
    assert_eq!(groups().await, running);
    assert_eq!(database_status().await, "available");
    let out = provision(&["status"], &name, &moto.endpoint, config.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("paused"), "{}", text(&out));
    let out = provision(&["resume"], &name, &moto.endpoint, config.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is not paused"), "{}", text(&out));
    assert!(stack.down().await.unwrap().is_empty());
}

#[tokio::test]
async fn logs_trace_one_video_from_upload_to_processed_and_follow_new_lines() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = Stack::open(config_for(&name), release_r1(&moto.endpoint))
        .await
        .unwrap();
    let config = config_file_with(|t| t);
    let logs = &stack.aws.logs;
    let group = format!("/anb/{name}");
    let out = provision(&["logs"], &name, &moto.endpoint, config.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!("no log group {group}")),
        "{}",
        text(&out)
    );

    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    let video = "0e4a8c1e-13f7-4b1e-9c55-3c1a2b9d7f00";
    let other = "7b1d2a44-0000-4c3b-8d1e-55aa00bb11cc";
    let now = chrono::Utc::now().timestamp_millis();
    let write = |stream: &'static str, lines: Vec<(i64, String)>| {
        let group = group.clone();
        async move {
            let _ = logs
                .create_log_stream()
                .log_group_name(&group)
                .log_stream_name(stream)
                .send()
                .await;
            let mut put = logs
                .put_log_events()
                .log_group_name(&group)
                .log_stream_name(stream);
            for (at, message) in lines {
                put = put.log_events(
                    aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                        .timestamp(at)
                        .message(message)
                        .build()
                        .unwrap(),
                );
            }
            put.send().await.unwrap();
        }
    };
    let journal =
        |unit: &str, json: String| format!("2026-12-04T05:00:00+0000 ip-10-0-0-5 {unit}: {json}");
    write(
        "i-0web/web",
        vec![
            (now - 60_000, journal("api[812]", format!(r#"{{"level":"INFO","video.id":"{video}","message":"video uploaded and queued"}}"#))),
            (now - 50_000, journal("api[812]", format!(r#"{{"level":"INFO","video.id":"{other}","message":"video uploaded and queued"}}"#))),
        ],
    )
    .await;
    write(
        "i-0wrk/worker",
        vec![(
            now - 30_000,
            journal(
                "worker[901]",
                format!(
                    r#"{{"level":"INFO","span":{{"video.id":"{video}"}},"message":"processed"}}"#
                ),
            ),
        )],
    )
    .await;
    write(
        "i-0wrk/worker-boot",
        vec![(now - 90_000, "Cloud-init finished".to_owned())],
    )
    .await;

    let out = provision(
        &["logs", "--video", video],
        &name,
        &moto.endpoint,
        config.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("i-0web/web") && lines[0].contains("uploaded"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("i-0wrk/worker") && lines[1].contains("processed"),
        "{lines:#?}"
    );

    let out = provision(
        &["logs", "--tier", "worker", "--output", "json"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    let streams: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["stream"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        streams,
        ["i-0wrk/worker-boot", "i-0wrk/worker"],
        "oldest first"
    );
    let out = provision(
        &["logs", "--since", "45s"],
        &name,
        &moto.endpoint,
        config.path(),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out)
    );
    let out = provision(
        &["logs", "--video", "x\" OR \""],
        &name,
        &moto.endpoint,
        config.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("--video takes a video's id"),
        "{}",
        text(&out)
    );

    // --follow prints what is there, then what comes.
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let mut follow = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args([
            "logs",
            "--follow",
            "--tier",
            "web",
            "--stack",
            &name,
            "--endpoint-url",
            &moto.endpoint,
            "--config",
        ])
        .arg(config.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines from a thread, so a follow that prints nothing fails the test instead of
    // hanging it.
    let stdout = BufReader::new(follow.stdout.take().unwrap());
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        lines_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("`logs --follow` printed a line within 30 s")
    };
    for _ in 0..2 {
        let line = next_line();
        assert!(line.contains("uploaded"), "{line}");
    }
    write(
        "i-0web/web",
        vec![(
            chrono::Utc::now().timestamp_millis(),
            journal("api[812]", r#"{"message":"a vote"}"#.to_owned()),
        )],
    )
    .await;
    let line = next_line();
    assert!(line.contains("a vote"), "{line}");
    // Polls look back a while: what was printed is not printed again.
    assert!(
        lines_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .is_err(),
        "a line printed twice"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
    logs.delete_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
}
