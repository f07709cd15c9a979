//! `provision` against moto: up, idempotence, drift, repair, down, the CLI, the private
//! network mode.

use provision::aws::STACK_TAG;
use provision::model::{Action, Kind};
use provision::{Output, Stack, Sync};
use std::process::Command;

use crate::helpers::{
    config_file, config_for, publish_stand_ins, release_r1, stack_tag, status_exit_code, user_data,
};

#[tokio::test]
async fn up_converges_is_idempotent_repairs_drift_and_down_removes_everything() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = Stack::open(config_for(&name), release_r1(&moto.endpoint))
        .await
        .unwrap();

    // An empty account: everything is to be created.
    let plan = stack.plan(Output::Text).await.unwrap();
    assert!(plan.iter().all(|c| c.action == Action::Create), "{plan:?}");
    // Instances could not install an unpublished release: refused before any change.
    let refused = stack.up(Output::Text).await.unwrap_err().to_string();
    assert!(refused.contains("release r1 is not published"), "{refused}");
    assert!(stack.aws.observe(&stack.bucket()).await.unwrap().is_empty());
    publish_stand_ins(&stack, "r1").await;
    let made = stack.up(Output::Text).await.unwrap();
    assert_eq!(
        made,
        plan.len() - 1,
        "all but the bucket, which publish made"
    );

    // What AWS now reports carries each property.
    let ec2 = &stack.aws.ec2;
    let tag = stack_tag(&name);
    let vpcs = ec2
        .describe_vpcs()
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(vpcs.vpcs().len(), 1);
    let vpc_id = vpcs.vpcs()[0].vpc_id().unwrap();
    let hostnames = ec2
        .describe_vpc_attribute()
        .vpc_id(vpc_id)
        .attribute(aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames)
        .send()
        .await
        .unwrap();
    assert_eq!(
        hostnames.enable_dns_hostnames().unwrap().value(),
        Some(true)
    );
    let subnets = ec2
        .describe_subnets()
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    let mut zones: Vec<&str> = subnets
        .subnets()
        .iter()
        .map(|s| s.availability_zone().unwrap())
        .collect();
    zones.sort_unstable();
    assert_eq!(
        zones,
        ["us-east-1a", "us-east-1a", "us-east-1b", "us-east-1b"]
    );
    let groups = ec2
        .describe_security_groups()
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    let group = |suffix: &str| {
        groups
            .security_groups()
            .iter()
            .find(|g| g.group_name() == Some(&format!("{name}-{suffix}")))
            .unwrap()
    };
    let web_rule = &group("web").ip_permissions()[0];
    assert_eq!(web_rule.from_port(), Some(80));
    assert_eq!(
        web_rule.user_id_group_pairs()[0].group_id(),
        group("alb").group_id()
    );
    assert!(
        group("worker").ip_permissions().is_empty(),
        "the worker group takes no inbound traffic"
    );
    let queue_url = stack
        .aws
        .sqs
        .get_queue_url()
        .queue_name(format!("{name}-video-processing"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let attributes = stack
        .aws
        .sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attribute =
        |n: aws_sdk_sqs::types::QueueAttributeName| attributes.attributes().unwrap()[&n].clone();
    assert_eq!(
        attribute(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout),
        "1800"
    );
    assert_eq!(
        attribute(aws_sdk_sqs::types::QueueAttributeName::ReceiveMessageWaitTimeSeconds),
        "20"
    );
    assert!(
        attribute(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
            .contains(&format!("{name}-video-processing-dlq"))
    );

    let alarms = stack
        .aws
        .cloudwatch
        .describe_alarms()
        .alarm_name_prefix(format!("{name}-"))
        .send()
        .await
        .unwrap();
    let backlog = alarms
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{name}-queue-backlog")))
        .unwrap();
    assert_eq!(backlog.threshold(), Some(5.0));
    assert_eq!(
        backlog.metric_name(),
        Some("ApproximateNumberOfMessagesVisible")
    );
    assert_eq!(
        alarms.metric_alarms().len(),
        8,
        "backlog, dead letters, oldest job, new dead letters, web CPU high and low, target 5xx, \
         unhealthy hosts"
    );
    // A refresh's rollback alarm watches this stack's load balancer and target group,
    // named as CloudWatch names them (the ARNs' suffixes).
    let unhealthy = alarms
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{name}-web-unhealthy-hosts")))
        .unwrap();
    let dimensions: Vec<(&str, &str)> = unhealthy
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap(), d.value().unwrap()))
        .collect();
    assert_eq!(dimensions.len(), 2, "{dimensions:?}");
    assert!(
        dimensions[0].0 == "LoadBalancer" && dimensions[0].1.starts_with("app/"),
        "{dimensions:?}"
    );
    assert!(
        dimensions[1].0 == "TargetGroup"
            && dimensions[1]
                .1
                .starts_with(&format!("targetgroup/{name}-web-targets/")),
        "{dimensions:?}"
    );
    let dashboard = stack
        .aws
        .cloudwatch
        .get_dashboard()
        .dashboard_name(format!("{name}-overview"))
        .send()
        .await
        .unwrap();
    assert!(dashboard
        .dashboard_body()
        .unwrap()
        .contains("GroupInServiceInstances"));

    let elb = &stack.aws.elb;
    let target_group = elb
        .describe_target_groups()
        .names(format!("{name}-web-targets"))
        .send()
        .await
        .unwrap();
    let target_group = &target_group.target_groups()[0];
    // Liveness only: a database outage must not make the group replace every instance.
    assert_eq!(target_group.health_check_path(), Some("/api/health/live"));
    assert_eq!(target_group.health_check_interval_seconds(), Some(30));
    let balancer = elb
        .describe_load_balancers()
        .names(format!("{name}-lb"))
        .send()
        .await
        .unwrap();
    let balancer = &balancer.load_balancers()[0];
    assert_eq!(balancer.scheme().unwrap().as_str(), "internet-facing");
    assert_eq!(balancer.availability_zones().len(), 2);
    assert_eq!(
        balancer.security_groups(),
        [group("alb").group_id().unwrap()]
    );
    let listeners = elb
        .describe_listeners()
        .load_balancer_arn(balancer.load_balancer_arn().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(listeners.listeners()[0].port(), Some(80));
    assert_eq!(
        listeners.listeners()[0].default_actions()[0].target_group_arn(),
        target_group.target_group_arn()
    );

    let databases = stack
        .aws
        .rds
        .describe_db_instances()
        .db_instance_identifier(format!("{name}-postgres"))
        .send()
        .await
        .unwrap();
    let database = &databases.db_instances()[0];
    assert_eq!(database.engine(), Some("postgres"));
    assert_eq!(database.db_instance_class(), Some("db.t3.micro"));
    assert_eq!(database.multi_az(), Some(true));
    assert_eq!(database.storage_encrypted(), Some(true));
    assert_eq!(database.publicly_accessible(), Some(false));
    assert_eq!(
        database.db_subnet_group().unwrap().db_subnet_group_name(),
        Some(format!("{name}-db-subnets").as_str())
    );
    assert_eq!(
        database.vpc_security_groups()[0].vpc_security_group_id(),
        group("db").group_id()
    );
    assert!(
        database.master_user_secret().is_some(),
        "the master password must be managed by AWS"
    );

    let autoscaling = &stack.aws.autoscaling;
    let groups_found = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(format!("{name}-web-asg"))
        .auto_scaling_group_names(format!("{name}-worker-asg"))
        .send()
        .await
        .unwrap();
    let asg = |tier: &str| {
        groups_found
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(&format!("{name}-{tier}-asg")))
            .unwrap()
    };
    assert_eq!(
        (asg("worker").min_size(), asg("worker").max_size()),
        (Some(1), Some(3))
    );
    assert_eq!(asg("web").health_check_type(), Some("ELB"));
    assert_eq!(
        asg("web").target_group_arns(),
        [target_group.target_group_arn().unwrap()]
    );
    assert!(
        !asg("worker").enabled_metrics().is_empty(),
        "group metrics collection is off"
    );
    let policies = autoscaling
        .describe_policies()
        .auto_scaling_group_name(format!("{name}-worker-asg"))
        .send()
        .await
        .unwrap();
    let tracking = policies.scaling_policies()[0]
        .target_tracking_configuration()
        .unwrap();
    assert_eq!(tracking.target_value(), Some(2.0));
    let queries = tracking
        .customized_metric_specification()
        .unwrap()
        .metrics();
    assert_eq!(queries.len(), 3);
    assert_eq!(queries[2].expression(), Some("m1 / m2"));
    let template = ec2
        .describe_launch_template_versions()
        .launch_template_name(format!("{name}-worker-template"))
        .versions("$Latest")
        .send()
        .await
        .unwrap();
    let data = template.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(
        data.metadata_options()
            .unwrap()
            .http_tokens()
            .unwrap()
            .as_str(),
        "required"
    );
    assert_eq!(
        data.iam_instance_profile().unwrap().name(),
        Some("LabInstanceProfile")
    );
    // User data names the release and where secrets are, never a secret itself.
    let worker_script = user_data(ec2, &format!("{name}-worker-template")).await;
    assert!(worker_script.contains("RELEASE='r1'"), "{worker_script}");
    assert!(worker_script.contains("install_release worker"));
    let secrets = &stack.aws.secrets;
    let token_key = secrets
        .get_secret_value()
        .secret_id(format!("{name}-jwt-key"))
        .send()
        .await
        .unwrap();
    let token_key = token_key.secret_string().unwrap();
    assert!(token_key.len() >= 64);
    let db = stack
        .aws
        .rds
        .describe_db_instances()
        .db_instance_identifier(format!("{name}-postgres"))
        .send()
        .await
        .unwrap();
    let login = secrets
        .get_secret_value()
        .secret_id(
            db.db_instances()[0]
                .master_user_secret()
                .unwrap()
                .secret_arn()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let login: serde_json::Value = serde_json::from_str(login.secret_string().unwrap()).unwrap();
    let password = login["password"].as_str().unwrap();
    for tier in ["web", "worker"] {
        let text = user_data(ec2, &format!("{name}-{tier}-template")).await;
        assert!(
            !text.contains(token_key),
            "{tier} user data holds the signing key"
        );
        assert!(
            !text.contains(password),
            "{tier} user data holds the DB password"
        );
    }

    // A second run changes nothing, and status agrees.
    assert_eq!(stack.up(Output::Text).await.unwrap(), 0);
    assert!(stack
        .plan(Output::Text)
        .await
        .unwrap()
        .iter()
        .all(|c| c.action == Action::Ok));
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::InSync);
    assert_eq!(status_exit_code(&moto.endpoint, &name), 0);

    // Out-of-band changes are drift, each named.
    let alb = group("alb").group_id().unwrap().to_owned();
    ec2.revoke_security_group_ingress()
        .group_id(&alb)
        .ip_protocol("tcp")
        .from_port(443)
        .to_port(443)
        .cidr_ip("0.0.0.0/0")
        .send()
        .await
        .unwrap();
    stack
        .aws
        .sqs
        .set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "60",
        )
        .send()
        .await
        .unwrap();
    // The autoscaler owns the desired capacity: changing it is not drift. Raising the
    // maximum is.
    autoscaling
        .set_desired_capacity()
        .auto_scaling_group_name(format!("{name}-worker-asg"))
        .desired_capacity(2)
        .send()
        .await
        .unwrap();
    autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(format!("{name}-worker-asg"))
        .max_size(5)
        .send()
        .await
        .unwrap();
    let cloudwatch = &stack.aws.cloudwatch;
    cloudwatch
        .delete_dashboards()
        .dashboard_names(format!("{name}-overview"))
        .send()
        .await
        .unwrap();
    cloudwatch
        .delete_alarms()
        .alarm_names(format!("{name}-dead-letters"))
        .send()
        .await
        .unwrap();
    let drift = stack.changes().await.unwrap();
    let drifted: Vec<(Kind, String)> = drift
        .iter()
        .filter(|c| c.is_change())
        .map(|c| (c.kind, c.name.clone()))
        .collect();
    assert_eq!(
        drifted,
        [
            (Kind::Queue, format!("{name}-video-processing")),
            (Kind::SecurityGroup, format!("{name}-alb")),
            (Kind::AutoScalingGroup, format!("{name}-worker-asg")),
            (Kind::Alarm, format!("{name}-dead-letters")),
            (Kind::Dashboard, format!("{name}-overview")),
        ]
    );
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::Drift);
    assert_eq!(status_exit_code(&moto.endpoint, &name), 2);

    // `up` repairs it.
    assert_eq!(stack.up(Output::Text).await.unwrap(), 5);
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::InSync);

    // Tagged with the stack but no longer in the configuration (a renamed tier, an old
    // target group): orphans, which `status` reports, `up` leaves, and `down` removes.
    let tag_asg = aws_sdk_autoscaling::types::Tag::builder()
        .key(STACK_TAG)
        .value(&name)
        .propagate_at_launch(false)
        .build();
    stack
        .aws
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(format!("{name}-old-asg"))
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_name(format!("{name}-worker-template"))
                .build(),
        )
        .min_size(0)
        .max_size(1)
        .availability_zones("us-east-1a")
        .tags(tag_asg)
        .send()
        .await
        .unwrap();
    let vpc_of_stack = vpc_id.to_owned();
    stack
        .aws
        .elb
        .create_target_group()
        .name(format!("{name}-old-targets"))
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
        .port(8080)
        .vpc_id(vpc_of_stack)
        .tags(
            aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                .key(STACK_TAG)
                .value(&name)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let orphans: Vec<(Kind, String)> = stack
        .changes()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.action == Action::Orphan)
        .map(|c| (c.kind, c.name.clone()))
        .collect();
    assert_eq!(
        orphans,
        [
            (Kind::TargetGroup, format!("{name}-old-targets")),
            (Kind::AutoScalingGroup, format!("{name}-old-asg")),
        ]
    );
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::Drift);
    assert_eq!(
        stack.up(Output::Text).await.unwrap(),
        0,
        "up leaves orphans alone"
    );

    // `down` leaves nothing with the stack tag; a second `down` has nothing to do.
    assert_eq!(stack.down().await.unwrap(), Vec::<String>::new());
    assert!(stack
        .aws
        .rds
        .describe_db_instances()
        .db_instance_identifier(format!("{name}-postgres"))
        .send()
        .await
        .is_err());
    let left = stack
        .aws
        .cloudwatch
        .describe_alarms()
        .alarm_name_prefix(format!("{name}-"))
        .send()
        .await
        .unwrap();
    assert!(left.metric_alarms().is_empty());
    assert!(ec2
        .describe_vpcs()
        .filters(tag.clone())
        .send()
        .await
        .unwrap()
        .vpcs()
        .is_empty());
    assert!(ec2
        .describe_security_groups()
        .filters(tag.clone())
        .send()
        .await
        .unwrap()
        .security_groups()
        .is_empty());
    assert!(ec2
        .describe_subnets()
        .filters(tag)
        .send()
        .await
        .unwrap()
        .subnets()
        .is_empty());
    assert!(stack
        .aws
        .sqs
        .get_queue_url()
        .queue_name(format!("{name}-video-processing"))
        .send()
        .await
        .is_err());
    assert_eq!(stack.down().await.unwrap(), Vec::<String>::new());
}

#[test]
fn cli_explains_itself() {
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let help = Command::new(env!("CARGO_BIN_EXE_provision"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    for word in [
        "plan",
        "up",
        "status",
        "down",
        "--endpoint-url",
        "--stack",
        "--output",
        "publish",
        "--release",
    ] {
        assert!(
            text.contains(word),
            "--help does not mention {word}:\n{text}"
        );
    }
    // A release name goes into S3 keys and a shell script: refused before any AWS call.
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let bad = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args(["plan", "--release", "x'; rm -rf /"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("a release is 1–64 letters"));
}

#[tokio::test]
async fn an_up_killed_halfway_converges_when_run_again() {
    use std::io::{BufRead, BufReader};
    let moto = testkit::autoscaling_stand_in();
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let config = config_file();
    let stack = Stack::open(config_for(&name), release_r1(&moto.endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let mut up = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args([
            "up",
            "--release",
            "r1",
            "--stack",
            &name,
            "--endpoint-url",
            &moto.endpoint,
            "--config",
        ])
        .arg(config.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has started creating things, well before it is done.
    let stderr = BufReader::new(up.stderr.take().unwrap());
    let mut created = 0;
    for line in stderr.lines() {
        if line.unwrap().contains("creating") {
            created += 1;
            if created == 10 {
                up.kill().unwrap();
                break;
            }
        }
    }
    up.wait().unwrap();
    assert_eq!(created, 10, "the run ended before it could be interrupted");

    let left = stack.changes().await.unwrap();
    assert!(
        left.iter().any(|c| c.action == Action::Ok),
        "nothing was created before the kill"
    );
    assert!(
        left.iter().any(|c| c.action == Action::Create),
        "everything was created before the kill"
    );
    stack.up(Output::Text).await.unwrap();
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::InSync);
    assert_eq!(stack.down().await.unwrap(), Vec::<String>::new());
}

#[test]
fn down_without_yes_refuses_when_nobody_can_answer() {
    let moto = testkit::autoscaling_stand_in();
    let config = config_file();
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args([
            "down",
            "--stack",
            "nobody",
            "--endpoint-url",
            &moto.endpoint,
            "--config",
        ])
        .arg(config.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--yes"), "{stderr}");
}

#[tokio::test]
async fn private_mode_routes_the_instances_through_a_nat_gateway_and_down_removes_it() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = config_for(&name);
    config.network.instances = provision::config::InstanceSubnets::Private;
    let stack = Stack::open(config, release_r1(&moto.endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();
    assert_eq!(stack.status(Output::Text).await.unwrap(), Sync::InSync);

    let ec2 = &stack.aws.ec2;
    let tag = stack_tag(&name);
    let nats = ec2
        .describe_nat_gateways()
        .filter(tag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(nats.nat_gateways().len(), 1);
    let nat = &nats.nat_gateways()[0];
    assert_eq!(nat.state().unwrap().as_str(), "available");
    let tables = ec2
        .describe_route_tables()
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    let private = tables
        .route_tables()
        .iter()
        .find(|t| {
            t.tags()
                .iter()
                .any(|t| t.value() == Some(&format!("{name}-private")))
        })
        .unwrap();
    assert!(private.routes().iter().any(|r| {
        r.destination_cidr_block() == Some("0.0.0.0/0")
            && r.nat_gateway_id() == nat.nat_gateway_id()
    }));
    assert_eq!(private.associations().len(), 2);
    let groups = stack
        .aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(format!("{name}-worker-asg"))
        .send()
        .await
        .unwrap();
    let subnets: Vec<String> = groups.auto_scaling_groups()[0]
        .vpc_zone_identifier()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    for subnet in &subnets {
        assert!(
            private
                .associations()
                .iter()
                .any(|a| a.subnet_id() == Some(subnet)),
            "the worker group runs in {subnet}, not a private subnet"
        );
    }

    assert_eq!(stack.down().await.unwrap(), Vec::<String>::new());
    let addresses = ec2.describe_addresses().filters(tag).send().await.unwrap();
    assert!(
        addresses.addresses().is_empty(),
        "the NAT's address is left"
    );
}

#[tokio::test]
async fn the_plan_prints_the_cost_the_deploy_guide_states() {
    let moto = testkit::autoscaling_stand_in();
    let name = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let stack = Stack::open(config_for(&name), release_r1(&moto.endpoint))
        .await
        .unwrap();
    let cost = stack.cost().unwrap();
    let hourly: f64 = cost.iter().map(|l| l.usd_per_hour).sum();
    let monthly = hourly * 730.0;
    // docs/deploy.md's figure is this table's, rounded as it prints it.
    let guide = std::fs::read_to_string(testkit::workspace_root().join("docs/deploy.md")).unwrap();
    let stated = format!("About **${hourly:.2}/h (~${monthly:.0} a month)**");
    assert!(
        guide.contains(&stated),
        "docs/deploy.md should say {stated}"
    );
    let text = provision::plan::render_cost(&provision::plan::Cost {
        configured: cost.clone(),
        deployed: None,
    });
    for kind in [
        "t3.small (web)",
        "RDS db.t3.micro Multi-AZ",
        "load balancer",
        "public IPv4",
    ] {
        assert!(text.contains(kind), "{text}");
    }

    // `plan --output json` carries it.
    let config = config_file();
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args([
            "plan",
            "--output",
            "json",
            "--release",
            "r1",
            "--stack",
            &name,
        ])
        .args(["--endpoint-url", &moto.endpoint, "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let json_hourly = plan["cost"]["usd_per_hour"].as_f64().unwrap();
    assert!((json_hourly - hourly).abs() < 1e-9, "{plan}");
    assert_eq!(plan["cost"]["lines"].as_array().unwrap().len(), cost.len());
    // Nothing deployed: `up` adds the whole cost.
    let delta = plan["cost"]["delta_usd_per_hour"].as_f64().unwrap();
    assert!((delta - hourly).abs() < 1e-9, "{plan}");

    // Deployed, then a second worker at the minimum: the plan's delta is that worker
    // (its instance, volume and public address), read from what is deployed.
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    let text = provision::config::DEFAULT_TOML
        .replace("ami = \"\"", "ami = \"ami-1e749f67\"")
        .replace(
            "[worker]\ninstance_type = \"t3.small\"\nmin_size = 1",
            "[worker]\ninstance_type = \"t3.small\"\nmin_size = 2",
        );
    assert!(text.contains("min_size = 2"));
    std::fs::write(config.path(), text).unwrap();
    #[allow(clippy::disallowed_methods)] // the CLI is tested through its binary
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .args(["plan", "--output", "json", "--stack", &name])
        .args(["--endpoint-url", &moto.endpoint, "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deployed = plan["cost"]["deployed_usd_per_hour"].as_f64().unwrap();
    assert!((deployed - hourly).abs() < 1e-9, "{plan}");
    let delta = plan["cost"]["delta_usd_per_hour"].as_f64().unwrap();
    // t3.small $0.0208/h, a public address $0.005/h, 16 GB of gp3 $0.0018/h.
    assert!((delta - 0.0276).abs() < 0.0005, "{plan}");
    assert!(stack.down().await.unwrap().is_empty());
}
