//! Releases rolled out on moto, through the stand-in that answers the instance refreshes
//! moto lacks: groups launch numbered template versions, a new release refreshes web
//! then worker with auto-rollback on the tier's alarms, one that goes wrong rolls back
//! and `up --wait` says so; the worker group's termination hook, the web template's
//! detailed monitoring, and both worker scaling policies converging either way.

use std::process::Command;

use provision::model::{Action, Kind};
use provision::{Output, Stack};

use crate::helpers::{config_file, config_for, publish_stand_ins, release_r1};

/// The template version group `group` launches, as the group reports it.
async fn group_version(stack: &Stack, group: &str) -> String {
    let found = stack
        .aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .unwrap();
    found.auto_scaling_groups()[0]
        .launch_template()
        .and_then(|t| t.version())
        .unwrap_or_default()
        .to_owned()
}

fn with_release(endpoint: &str, release: &str) -> provision::StackOptions {
    provision::StackOptions {
        release: Some(release.to_owned()),
        ..release_r1(endpoint)
    }
}

#[tokio::test]
async fn a_release_refreshes_web_then_worker_and_a_bad_one_rolls_back() {
    let stand_in = testkit::autoscaling_stand_in();
    let name = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (web, worker) = (format!("{name}-web-asg"), format!("{name}-worker-asg"));
    let config = config_for(&name);
    let web_max = config.web.max_size;
    let stack = Stack::open(config, release_r1(&stand_in.endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();

    // Groups name a version number (auto-rollback needs one; `$Latest` cannot go back).
    assert_eq!(group_version(&stack, &web).await, "1");
    assert_eq!(group_version(&stack, &worker).await, "1");
    // The worker group holds a terminating instance until its job is done (or the
    // heartbeat runs out: ffmpeg_timeout 10 min + 5 for the upload).
    let hooks = stack
        .aws
        .autoscaling
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(&worker)
        .send()
        .await
        .unwrap();
    let hook = &hooks.lifecycle_hooks()[0];
    assert_eq!(
        hook.lifecycle_hook_name(),
        Some(&*format!("{name}-worker-drain"))
    );
    assert_eq!(
        hook.lifecycle_transition(),
        Some("autoscaling:EC2_INSTANCE_TERMINATING")
    );
    assert_eq!(hook.heartbeat_timeout(), Some(900));
    assert_eq!(hook.default_result(), Some("CONTINUE"));
    // Web instances report CPU every minute, so "above 70 % for 2 min" can be seen.
    for (tier, detailed) in [("web", true), ("worker", false)] {
        let versions = stack
            .aws
            .ec2
            .describe_launch_template_versions()
            .launch_template_name(format!("{name}-{tier}-template"))
            .versions("1")
            .send()
            .await
            .unwrap();
        let monitoring = versions.launch_template_versions()[0]
            .launch_template_data()
            .and_then(|d| d.monitoring())
            .and_then(|m| m.enabled());
        assert_eq!(monitoring.unwrap_or(false), detailed, "{tier}");
    }
    assert!(stand_in.events(&name).is_empty(), "nothing to roll yet");

    // Release r2: `up` starts the web tier's refresh and returns; the worker waits.
    publish_stand_ins(&stack, "r2").await;
    let r2 = Stack::open(config_for(&name), with_release(&stand_in.endpoint, "r2"))
        .await
        .unwrap();
    r2.up(Output::Text).await.unwrap();
    assert_eq!(stand_in.events(&name), [format!("started {web}")]);
    let started = stand_in.calls("StartInstanceRefresh");
    let request = &started
        .iter()
        .find(|c| c.params["AutoScalingGroupName"] == web)
        .unwrap()
        .params;
    for (key, value) in [
        (
            "DesiredConfiguration.LaunchTemplate.LaunchTemplateName",
            format!("{name}-web-template"),
        ),
        ("DesiredConfiguration.LaunchTemplate.Version", "2".into()),
        ("Preferences.AutoRollback", "true".into()),
        ("Preferences.MinHealthyPercentage", "100".into()),
        // One instance above the maximum of 3, no more: 3 + 3 + 1 stays under the lab's 9.
        (
            "Preferences.MaxHealthyPercentage",
            provision::rollout::max_healthy_percentage(web_max).to_string(),
        ),
        ("Preferences.SkipMatching", "true".into()),
        ("Preferences.ScaleInProtectedInstances", "Refresh".into()),
        (
            "Preferences.AlarmSpecification.Alarms.member.1",
            format!("{name}-web-target-5xx"),
        ),
        (
            "Preferences.AlarmSpecification.Alarms.member.2",
            format!("{name}-web-unhealthy-hosts"),
        ),
    ] {
        assert_eq!(request.get(key), Some(&value), "{key} in {request:?}");
    }
    assert_eq!(web_max, 3);
    assert_eq!(provision::rollout::max_healthy_percentage(web_max), 134);
    // A second `up` while it runs starts nothing new.
    r2.up(Output::Text).await.unwrap();
    assert_eq!(stand_in.events(&name).len(), 1);

    // Following it: web to its end, then worker, each new version named.
    r2.roll(true).await.unwrap();
    assert_eq!(
        stand_in.events(&name),
        [
            format!("started {web}"),
            format!("Successful {web}"),
            format!("started {worker}"),
            format!("Successful {worker}"),
        ]
    );
    let worker_request = stand_in
        .calls("StartInstanceRefresh")
        .into_iter()
        .find(|c| c.params["AutoScalingGroupName"] == worker)
        .unwrap()
        .params;
    assert_eq!(
        worker_request
            .get("Preferences.AlarmSpecification.Alarms.member.1")
            .map(String::as_str),
        Some(&*format!("{name}-worker-new-dead-letters"))
    );
    assert_eq!(group_version(&stack, &web).await, "2");
    assert_eq!(group_version(&stack, &worker).await, "2");
    let plan = r2.changes().await.unwrap();
    assert!(plan.iter().all(|c| c.action == Action::Ok), "{plan:?}");

    // Release r3 sets off the web tier's 5xx alarm: AWS rolls back, `up --wait` exits 1
    // naming the release that serves again, and the worker tier is left alone.
    publish_stand_ins(&stack, "r3").await;
    stand_in.set_outcome(
        &web,
        testkit::RefreshOutcome::RollBack(format!(
            "The alarm {name}-web-target-5xx is in ALARM state"
        )),
    );
    let file = config_file();
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args(["up", "--wait", "--release", "r3", "--stack", &name])
        .args(["--endpoint-url", &stand_in.endpoint, "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rolled back to release r2") && err.contains("web-target-5xx"),
        "{err}"
    );
    assert_eq!(group_version(&stack, &web).await, "2");
    assert_eq!(
        stand_in.events(&name)[4..],
        [
            format!("started {web}"),
            format!("RollbackSuccessful {web}")
        ]
    );

    // `provision releases`: all three, oldest first, and what each tier launches.
    let releases = stack.releases(Output::Text).await.unwrap();
    let listed: Vec<(&str, Vec<String>)> = releases
        .iter()
        .map(|r| (r.name.as_str(), r.running_on.clone()))
        .collect();
    assert_eq!(
        listed,
        [
            ("r1", vec![]),
            ("r2", vec!["web".to_owned(), "worker".to_owned()]),
            ("r3", vec![]),
        ]
    );
    assert!(
        releases.iter().all(|r| r.digests.len() == 2),
        "{releases:?}"
    );
    let table = provision::rollout::render_releases(&releases);
    assert!(table.starts_with("RELEASE"), "{table}");
    assert!(table.contains("up --wait --release NAME"), "{table}");
    // The binary's `up` left a deploy record: who, which release, how it ended.
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args(["releases", "--output", "json", "--stack", &name])
        .args(["--endpoint-url", &stand_in.endpoint, "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deploys = listed["result"]["deploys"].as_array().unwrap();
    assert_eq!(deploys.len(), 1, "{listed:#}");
    assert_eq!(deploys[0]["release"], "r3");
    assert_eq!(deploys[0]["succeeded"], false);
    assert!(
        deploys[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("rolled back to release r2"),
        "{listed:#}"
    );
    assert_eq!(deploys[0]["who"], stack.aws.caller.as_str());

    stack.down().await.unwrap();
}

#[tokio::test]
async fn either_worker_policy_deploys_and_switching_deletes_the_other() {
    let stand_in = testkit::autoscaling_stand_in();
    let name = format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = config_for(&name);
    config.worker.scaling_policy = stack_config::WorkerScaling::Step;
    let stack = Stack::open(config, release_r1(&stand_in.endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();

    // The seed's table: one more worker above 2 videos each for 2 min, one less below 1
    // for 5 min, cooldowns 300 / 600 s.
    let policies = stack
        .aws
        .autoscaling
        .describe_policies()
        .auto_scaling_group_name(format!("{name}-worker-asg"))
        .send()
        .await
        .unwrap();
    let mut found: Vec<(String, Option<i32>, Option<i32>)> = policies
        .scaling_policies()
        .iter()
        .map(|p| {
            (
                p.policy_name().unwrap_or_default().to_owned(),
                p.scaling_adjustment(),
                p.cooldown(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (format!("{name}-worker-scale-in"), Some(-1), Some(600)),
            (format!("{name}-worker-scale-out"), Some(1), Some(300)),
        ]
    );
    let alarms = stack
        .aws
        .cloudwatch
        .describe_alarms()
        .alarm_names(format!("{name}-worker-backlog-high"))
        .alarm_names(format!("{name}-worker-backlog-low"))
        .send()
        .await
        .unwrap();
    let mut rules: Vec<(String, Option<i32>, Option<f64>, usize)> = alarms
        .metric_alarms()
        .iter()
        .map(|a| {
            (
                a.comparison_operator().unwrap().as_str().to_owned(),
                a.evaluation_periods(),
                a.threshold(),
                a.alarm_actions().len(),
            )
        })
        .collect();
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rules,
        [
            ("GreaterThanThreshold".to_owned(), Some(2), Some(2.0), 1),
            ("LessThanThreshold".to_owned(), Some(5), Some(1.0), 1),
        ]
    );
    let plan = stack.changes().await.unwrap();
    assert!(plan.iter().all(|c| c.action == Action::Ok), "{plan:?}");

    // A group an older provision made launches `$Latest`, which cannot roll back: the
    // next roll pins it to the number and refreshes its instances onto it.
    let worker = format!("{name}-worker-asg");
    stack
        .aws
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&worker)
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_name(format!("{name}-worker-template"))
                .version("$Latest")
                .build(),
        )
        .send()
        .await
        .unwrap();
    stack.roll(true).await.unwrap();
    assert_eq!(group_version(&stack, &worker).await, "1");
    assert_eq!(
        stand_in.events(&name),
        [format!("started {worker}"), format!("Successful {worker}")]
    );

    // Back to target tracking: the step policy's four resources are orphans `up` deletes.
    let tracking = Stack::open(config_for(&name), release_r1(&stand_in.endpoint))
        .await
        .unwrap();
    let plan = tracking.changes().await.unwrap();
    let mut orphans: Vec<(Kind, String)> = plan
        .iter()
        .filter(|c| c.action == Action::Orphan)
        .map(|c| (c.kind, c.name.clone()))
        .collect();
    orphans.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        orphans,
        [
            (Kind::Alarm, format!("{name}-worker-backlog-high")),
            (Kind::Alarm, format!("{name}-worker-backlog-low")),
            (Kind::ScalingPolicy, format!("{name}-worker-scale-in")),
            (Kind::ScalingPolicy, format!("{name}-worker-scale-out")),
        ]
    );
    assert!(provision::plan::render(&plan).contains("`up` deletes it"));
    tracking.up(Output::Text).await.unwrap();
    let plan = tracking.changes().await.unwrap();
    assert!(plan.iter().all(|c| c.action == Action::Ok), "{plan:?}");
    assert!(plan
        .iter()
        .any(|c| c.name == format!("{name}-worker-backlog") && c.kind == Kind::ScalingPolicy));

    tracking.down().await.unwrap();
}
