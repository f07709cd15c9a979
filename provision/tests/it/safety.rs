//! Operator safety on moto: nothing stateful is destroyed by surprise, only what carries
//! the stack's tag is touched, and drift that is really drift is seen and repaired.

use provision::model::Action;
use provision::plan::render;
use provision::{Output, Safeguards, Stack, StackOptions};

use crate::helpers::{config_for, publish_stand_ins, release_r1, status_exit_code};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn with(safeguards: Safeguards, endpoint: &str) -> StackOptions {
    StackOptions {
        safeguards,
        ..release_r1(endpoint)
    }
}

async fn database(stack: &Stack) -> aws_sdk_rds::types::DbInstance {
    let name = format!("{}-postgres", stack.config.stack.name);
    let found = stack
        .aws
        .rds
        .describe_db_instances()
        .db_instance_identifier(&name)
        .send()
        .await
        .unwrap();
    found.db_instances()[0].clone()
}

/// The manual snapshots named after the stack, oldest first.
async fn final_snapshots(stack: &Stack) -> Vec<String> {
    let found = stack
        .aws
        .rds
        .describe_db_snapshots()
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    let prefix = format!("{}-final-", stack.config.stack.name);
    let mut names: Vec<String> = found
        .db_snapshots()
        .iter()
        .filter_map(|s| s.db_snapshot_identifier())
        .filter(|s| s.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// Stands in for the passing of time: moto takes an automated snapshot at every create,
/// named after the minute (`rds:<instance>-<minute>`, whatever the retention), so a
/// database re-created within the same minute, as here, would collide with its
/// predecessor's. On AWS, retained backups have unique names.
async fn let_a_minute_pass(stack: &Stack) {
    let found = stack
        .aws
        .rds
        .describe_db_snapshots()
        .snapshot_type("automated")
        .send()
        .await
        .unwrap();
    let ours = format!("rds:{}-postgres-", stack.config.stack.name);
    for snapshot in found.db_snapshots() {
        let id = snapshot.db_snapshot_identifier().unwrap_or_default();
        if id.starts_with(&ours) {
            stack
                .aws
                .rds
                .delete_db_snapshot()
                .db_snapshot_identifier(id)
                .send()
                .await
                .unwrap();
        }
    }
}

async fn token_secret(
    stack: &Stack,
) -> Option<aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput> {
    stack
        .aws
        .secrets
        .describe_secret()
        .secret_id(format!("{}-jwt-key", stack.config.stack.name))
        .send()
        .await
        .ok()
}

#[tokio::test]
async fn the_database_is_never_replaced_unasked_and_down_leaves_a_snapshot_up_restores() {
    let moto = testkit::autoscaling_stand_in();
    let endpoint = moto.endpoint.as_str();
    let name = unique("s");
    let stack = Stack::open(config_for(&name), release_r1(endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();
    assert_eq!(database(&stack).await.deletion_protection(), Some(true));

    // A database name that cannot change in place: `plan` says DATA LOSS, `up` stops
    // before changing anything and names the field and the way out.
    let mut renamed = config_for(&name);
    renamed.database.database_name = "other".into();
    let careless = Stack::open(renamed.clone(), release_r1(endpoint))
        .await
        .unwrap();
    let plan = render(&careless.changes().await.unwrap());
    assert!(
        plan.contains("database_name: anb → other; cannot change in place) DATA LOSS"),
        "{plan}"
    );
    let refused = careless.up(Output::Text).await.unwrap_err().to_string();
    for words in [
        "nothing changed",
        "database_name (anb → other)",
        "--replace-database",
    ] {
        assert!(refused.contains(words), "{words:?} missing from: {refused}");
    }
    assert_eq!(database(&stack).await.db_name(), Some("anb"), "untouched");
    assert!(final_snapshots(&stack).await.is_empty());

    // Asked for: a snapshot is taken (and is available) before the new database exists.
    let_a_minute_pass(&stack).await;
    let replacing = Stack::open(
        renamed.clone(),
        with(
            Safeguards {
                replace_database: true,
                ..Safeguards::default()
            },
            endpoint,
        ),
    )
    .await
    .unwrap();
    replacing.up(Output::Text).await.unwrap();
    assert_eq!(database(&stack).await.db_name(), Some("other"));
    assert_eq!(final_snapshots(&stack).await.len(), 1);

    // `down` lifts the deletion protection itself, leaves a final snapshot, keeps the
    // token secret restorable, and the bucket with what is in it (review 3, N4: a snapshot
    // without the videos would restore rows with no files); the rest goes.
    std::thread::sleep(std::time::Duration::from_millis(1100)); // snapshot names are per second
    let video = "original/00000000-0000-0000-0000-000000000001.mp4";
    stack
        .aws
        .s3
        .put_object()
        .bucket(stack.bucket())
        .key(video)
        .body(b"a player's video".to_vec().into())
        .send()
        .await
        .unwrap();
    let down = Stack::open(renamed.clone(), with(Safeguards::default(), endpoint))
        .await
        .unwrap();
    assert!(down.down().await.unwrap().is_empty());
    let snapshots = final_snapshots(&stack).await;
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let secret = token_secret(&stack).await.unwrap();
    assert!(secret.deleted_date().is_some(), "scheduled, not purged");
    let left: Vec<_> = stack
        .aws
        .observe(&stack.bucket())
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.resource.kind)
        .collect();
    assert_eq!(
        left,
        [provision::model::Kind::Bucket],
        "all but the bucket goes"
    );
    let kept = stack
        .aws
        .s3
        .get_object()
        .bucket(stack.bucket())
        .key(video)
        .send()
        .await
        .expect("the video outlives `down`");
    assert_eq!(
        kept.body.collect().await.unwrap().into_bytes().as_ref(),
        b"a player's video"
    );

    // `up --restore-from` creates the database from that snapshot (of the database
    // named "other", so with the configuration that names it) and brings the token secret
    // back.
    let_a_minute_pass(&stack).await;
    let latest = snapshots.last().unwrap().clone();
    let restoring = Stack::open(
        renamed.clone(),
        with(
            Safeguards {
                restore_from: Some(latest.clone()),
                ..Safeguards::default()
            },
            endpoint,
        ),
    )
    .await
    .unwrap();
    // The release published before `down` is still in the kept bucket.
    restoring.up(Output::Text).await.unwrap();
    let restored = database(&stack).await;
    let tag = restored
        .tag_list()
        .iter()
        .find(|t| t.key() == Some("anb:restored-from"))
        .and_then(|t| t.value());
    assert_eq!(tag, Some(latest.as_str()));
    assert!(token_secret(&stack).await.unwrap().deleted_date().is_none());
    // Once the database exists, restoring into it is refused.
    let again = restoring.up(Output::Text).await.unwrap_err().to_string();
    assert!(again.contains("already has one"), "{again}");

    // Opting out: no snapshot, the secret gone at once, the bucket and its videos too.
    let purging = Stack::open(
        config_for(&name),
        with(
            Safeguards {
                skip_final_snapshot: true,
                purge: true,
                delete_videos: true,
                ..Safeguards::default()
            },
            endpoint,
        ),
    )
    .await
    .unwrap();
    assert!(purging.down().await.unwrap().is_empty());
    assert_eq!(final_snapshots(&stack).await.len(), 2);
    assert!(token_secret(&stack).await.is_none());
    assert!(
        stack.aws.observe(&stack.bucket()).await.unwrap().is_empty(),
        "nothing left"
    );
}

#[tokio::test]
async fn down_touches_only_what_carries_its_stack_tag() {
    let moto = testkit::autoscaling_stand_in();
    let endpoint = moto.endpoint.as_str();
    let base = unique("o");
    let staging = format!("{base}-staging");
    for name in [&base, &staging] {
        let stack = Stack::open(config_for(name), release_r1(endpoint))
            .await
            .unwrap();
        publish_stand_ins(&stack, "r1").await;
        stack.up(Output::Text).await.unwrap();
    }
    let stack = Stack::open(config_for(&base), release_r1(endpoint))
        .await
        .unwrap();
    // An alarm made by hand, under the stack's name prefix but without its tag.
    let manual = format!("{base}-manual");
    stack
        .aws
        .cloudwatch
        .put_metric_alarm()
        .alarm_name(&manual)
        .namespace("AWS/EC2")
        .metric_name("CPUUtilization")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Average)
        .period(60)
        .evaluation_periods(1)
        .threshold(90.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_exit_code(endpoint, &base),
        0,
        "neither the other stack's alarms nor the manual one are this stack's orphans"
    );

    assert!(stack.down().await.unwrap().is_empty());
    assert_eq!(
        status_exit_code(endpoint, &staging),
        0,
        "the other stack is intact"
    );
    let alarms = stack
        .aws
        .cloudwatch
        .describe_alarms()
        .alarm_name_prefix(format!("{base}-"))
        .send()
        .await
        .unwrap();
    let mut left: Vec<&str> = alarms
        .metric_alarms()
        .iter()
        .filter_map(|a| a.alarm_name())
        .collect();
    left.sort_unstable();
    assert!(left.contains(&manual.as_str()), "{left:?}");
    assert!(
        left.iter().any(|a| a.starts_with(&format!("{staging}-"))),
        "{left:?}"
    );
    assert!(
        !left
            .iter()
            .any(|a| a.starts_with(&format!("{base}-queue"))
                || a.starts_with(&format!("{base}-dlq"))),
        "{left:?}"
    );
    let dashboards = stack
        .aws
        .cloudwatch
        .list_dashboards()
        .dashboard_name_prefix(format!("{staging}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        dashboards.dashboard_entries().len(),
        1,
        "the other stack's dashboard stays"
    );

    purge(&staging, endpoint).await;
}

#[tokio::test]
async fn drift_in_rules_and_policies_is_seen_and_repaired() {
    let moto = testkit::autoscaling_stand_in();
    let endpoint = moto.endpoint.as_str();
    let name = unique("r");
    let stack = Stack::open(config_for(&name), release_r1(endpoint))
        .await
        .unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();
    let ec2 = &stack.aws.ec2;
    let group_id = |group: String| async move {
        let found = ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-name")
                    .values(group)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        found.security_groups()[0].group_id().unwrap().to_owned()
    };
    let web = group_id(format!("{name}-web")).await;
    let worker = group_id(format!("{name}-worker")).await;

    // Out of band: every TCP port open to the world on the web tier, SSH over IPv6 on
    // the worker, and a bucket policy nobody asked for.
    ec2.authorize_security_group_ingress()
        .group_id(&web)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(0)
                .to_port(65535)
                .ip_ranges(
                    aws_sdk_ec2::types::IpRange::builder()
                        .cidr_ip("0.0.0.0/0")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    ec2.authorize_security_group_ingress()
        .group_id(&worker)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ipv6_ranges(
                    aws_sdk_ec2::types::Ipv6Range::builder()
                        .cidr_ipv6("::/0")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let bucket = stack.bucket();
    let foreign_read = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
            "Action": "s3:GetObject",
            "Resource": format!("arn:aws:s3:::{bucket}/*"),
        }],
    });
    stack
        .aws
        .s3
        .put_bucket_policy()
        .bucket(&bucket)
        .policy(foreign_read.to_string())
        .send()
        .await
        .unwrap();
    // The page's downloads need the cross-origin rule: removing it is drift too.
    stack
        .aws
        .s3
        .delete_bucket_cors()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();

    assert_eq!(status_exit_code(endpoint, &name), 2, "the drift is seen");
    let changes = stack.changes().await.unwrap();
    let drift = |resource: &str, field: &str| {
        changes.iter().any(|c| {
            c.name == resource
                && matches!(&c.action, Action::Update(fields) if fields.iter().any(|f| f.field == field))
        })
    };
    assert!(
        drift(&format!("{name}-web"), "ingress"),
        "{}",
        render(&changes)
    );
    assert!(
        drift(&format!("{name}-worker"), "ingress"),
        "{}",
        render(&changes)
    );
    assert!(drift(&bucket, "policy"), "{}", render(&changes));
    assert!(drift(&bucket, "cross_origin"), "{}", render(&changes));
    let text = render(&changes);
    assert!(text.contains("tcp:0-65535 from 0.0.0.0/0"), "{text}");
    assert!(text.contains("tcp:22 from ::/0"), "{text}");

    stack.up(Output::Text).await.unwrap();
    assert_eq!(status_exit_code(endpoint, &name), 0, "repaired");
    let rules = ec2
        .describe_security_group_rules()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("group-id")
                .values(&web)
                .values(&worker)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ingress: Vec<(Option<i32>, Option<i32>)> = rules
        .security_group_rules()
        .iter()
        .filter(|r| r.is_egress() == Some(false))
        .map(|r| (r.from_port(), r.to_port()))
        .collect();
    assert_eq!(
        ingress,
        [(Some(80), Some(80))],
        "only the web tier's port 80 from the ALB"
    );

    // The bucket's settings, read back: public access blocked, encrypted, and (over
    // moto's plain HTTP, where a TLS-only policy would deny this very tool) no policy.
    let s3 = &stack.aws.s3;
    let block = s3
        .get_public_access_block()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let block = block.public_access_block_configuration().unwrap();
    assert_eq!(
        [
            block.block_public_acls(),
            block.ignore_public_acls(),
            block.block_public_policy(),
            block.restrict_public_buckets()
        ],
        [Some(true); 4]
    );
    let encryption = s3
        .get_bucket_encryption()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let rule = &encryption
        .server_side_encryption_configuration()
        .unwrap()
        .rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default()
            .unwrap()
            .sse_algorithm()
            .as_str(),
        "AES256"
    );
    assert!(
        s3.get_bucket_policy().bucket(&bucket).send().await.is_err(),
        "the foreign statement is gone"
    );

    purge(&name, endpoint).await;
}

/// `provision status` of a stack whose configuration creates instance roles.
/// `provision status` with the hardened test's configuration: roles and access logs on.
fn status_exit_code_with_roles(endpoint: &str, stack: &str) -> i32 {
    crate::helpers::status_exit_code_with(endpoint, stack, |text| {
        let text = text.replace("create_roles = false", "create_roles = true");
        assert!(
            text.contains("access_logs = false"),
            "the seed's access_logs line"
        );
        text.replace("access_logs = false", "access_logs = true")
    })
}

/// Deletes the stack without leaving a snapshot or a recoverable secret behind.
async fn purge(name: &str, endpoint: &str) {
    let purging = Stack::open(
        config_for(name),
        with(
            Safeguards {
                skip_final_snapshot: true,
                purge: true,
                ..Safeguards::default()
            },
            endpoint,
        ),
    )
    .await
    .unwrap();
    assert!(purging.down().await.unwrap().is_empty());
}

#[tokio::test]
async fn what_is_created_is_hardened_and_a_swapped_release_is_refused() {
    let moto = testkit::autoscaling_stand_in();
    let endpoint = moto.endpoint.as_str();
    let name = unique("h");
    let mut config = config_for(&name);
    config.instances.create_roles = true;
    config.load_balancer.access_logs = true;
    let stack = Stack::open(config, release_r1(endpoint)).await.unwrap();
    publish_stand_ins(&stack, "r1").await;
    stack.up(Output::Text).await.unwrap();

    // The load balancer drops invalid header fields.
    let elb = &stack.aws.elb;
    let lb = elb
        .describe_load_balancers()
        .names(format!("{name}-lb"))
        .send()
        .await
        .unwrap();
    let attributes = elb
        .describe_load_balancer_attributes()
        .load_balancer_arn(lb.load_balancers()[0].load_balancer_arn().unwrap())
        .send()
        .await
        .unwrap();
    let attribute = |key: &str| {
        attributes
            .attributes()
            .iter()
            .find(|a| a.key() == Some(key))
            .and_then(|a| a.value())
            .map(str::to_owned)
    };
    assert_eq!(
        attribute("routing.http.drop_invalid_header_fields.enabled").as_deref(),
        Some("true")
    );
    // And cannot be deleted by mistake (review 3, N21); `down` lifts it first (moto does
    // not refuse the deletion of a protected one, AWS does: the down tests cover the rest).
    assert_eq!(
        attribute("deletion_protection.enabled").as_deref(),
        Some("true")
    );
    // Asked for, it logs every request to the stack's bucket, which lets the region's
    // Elastic Load Balancing account write there and nowhere else (N21).
    assert_eq!(attribute("access_logs.s3.enabled").as_deref(), Some("true"));
    assert_eq!(attribute("access_logs.s3.bucket"), Some(stack.bucket()));
    assert_eq!(
        attribute("access_logs.s3.prefix").as_deref(),
        Some("alb-logs")
    );
    let policy = stack
        .aws
        .s3
        .get_bucket_policy()
        .bucket(stack.bucket())
        .send()
        .await
        .unwrap();
    let policy: serde_json::Value = serde_json::from_str(policy.policy().unwrap()).unwrap();
    let logs = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "LoadBalancerAccessLogs")
        .expect("the log writer's statement");
    assert_eq!(logs["Principal"]["AWS"], "arn:aws:iam::127311923021:root");
    assert_eq!(
        logs["Resource"],
        format!(
            "arn:aws:s3:::{}/alb-logs/AWSLogs/{}/*",
            stack.bucket(),
            stack.aws.account_id
        )
    );
    assert_eq!(
        stack.up(Output::Text).await.unwrap(),
        0,
        "read back as written"
    );

    // Instances boot from an encrypted root volume, and their user data pins the digest
    // of the binary they install and the account that must own the bucket.
    let ec2 = &stack.aws.ec2;
    let template = format!("{name}-web-template");
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_name(&template)
        .versions("$Latest")
        .send()
        .await
        .unwrap();
    let data = versions.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    let ebs = data.block_device_mappings()[0].ebs().unwrap();
    assert_eq!(ebs.encrypted(), Some(true));
    let script = crate::helpers::user_data(ec2, &template).await;
    let header = provision::userdata::header(&script);
    let published = stack
        .aws
        .published_digests(&stack.bucket(), "r1")
        .await
        .unwrap();
    assert_eq!(header["BINARY_SHA256"], published["api"]);
    assert_eq!(header["ACCOUNT_ID"], testkit::MOTO_ACCOUNT);

    // Each tier runs with a role of its own, whose policy reads back as written; a
    // permission added by hand is drift that `up` removes.
    let profile = data.iam_instance_profile().unwrap().name();
    assert_eq!(profile, Some(format!("{name}-web-instance").as_str()));
    let iam = &stack.aws.iam;
    let role = format!("{name}-worker-instance");
    let instance_profile = iam
        .get_instance_profile()
        .instance_profile_name(&role)
        .send()
        .await
        .unwrap();
    assert_eq!(
        instance_profile.instance_profile().unwrap().roles()[0].role_name(),
        role
    );
    assert_eq!(status_exit_code_with_roles(endpoint, &name), 0, "in sync");
    iam.put_role_policy()
        .role_name(&role)
        .policy_name("least-privilege")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(status_exit_code_with_roles(endpoint, &name), 2, "drift");
    stack.up(Output::Text).await.unwrap();
    assert_eq!(status_exit_code_with_roles(endpoint, &name), 0, "repaired");

    // The database requires TLS through its own parameter group.
    let rds = &stack.aws.rds;
    let parameters = rds
        .describe_db_parameters()
        .db_parameter_group_name(format!("{name}-db-parameters"))
        .source("user")
        .send()
        .await
        .unwrap();
    let force_ssl = parameters
        .parameters()
        .iter()
        .find(|p| p.parameter_name() == Some("rds.force_ssl"))
        .and_then(|p| p.parameter_value());
    assert_eq!(force_ssl, Some("1"));

    // Someone with write access to the bucket swaps the api binary and its checksum:
    // every command that would deploy it stops, naming what changed.
    let key = "artifacts/r1/api";
    for (object, body) in [
        (key.to_owned(), b"evil".to_vec()),
        (
            format!("{key}.sha256"),
            format!("{}  api\n", "e".repeat(64)).into_bytes(),
        ),
    ] {
        stack
            .aws
            .s3
            .put_object()
            .bucket(stack.bucket())
            .key(object)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
    let refused = stack.up(Output::Text).await.unwrap_err().to_string();
    assert!(
        refused.contains("changed in the bucket since it was deployed"),
        "{refused}"
    );
    assert_eq!(
        crate::helpers::user_data(ec2, &template).await,
        script,
        "the template still pins the deployed binary"
    );

    purge(&name, endpoint).await;
    for tier in ["web", "worker"] {
        let role = format!("{name}-{tier}-instance");
        assert!(
            iam.get_role().role_name(&role).send().await.is_err(),
            "{role} left"
        );
        assert!(
            iam.get_instance_profile()
                .instance_profile_name(&role)
                .send()
                .await
                .is_err(),
            "{role} profile left"
        );
    }
}
