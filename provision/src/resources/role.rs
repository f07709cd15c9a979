//! One least-privilege instance role per tier, with the instance profile of the same name
//! that the tier's launch template names (`instances.create_roles`, off by default:
//! AWS Academy accounts cannot create roles and use `LabInstanceProfile`). Each role
//! carries one inline policy naming exactly the stack's bucket prefixes, queues, secrets,
//! database and log group its tier uses. Roles and profiles live under the IAM path
//! `/anb/<stack>/`, which is how they are listed (IAM cannot filter by tag), and are
//! touched only when they carry the stack's tag.

use anyhow::Context;
use aws_sdk_iam::types::Tag;
use serde_json::{json, Value};

use crate::aws::{error_kind, Aws, DeleteError, ErrorKind, Ids, STACK_TAG};
use crate::config::Config;
use crate::model::{Change, Kind, Observed, Resource};
use crate::names::{
    asg_name, bucket_name, database_name, dead_letter_queue_name, queue_name, token_secret_name,
    Names, Tier,
};

/// The name of the one inline policy each role has.
const POLICY_NAME: &str = "least-privilege";

/// Who may assume the roles: EC2 instances.
const TRUST: &str = "ec2.amazonaws.com";

/// The logical name of a tier's role and instance profile.
pub fn instance_role_name(stack: &str, tier: Tier) -> String {
    format!("{stack}-{}-instance", tier.name())
}

fn path(stack: &str) -> String {
    format!("/anb/{stack}/")
}

/// Both tiers' roles, or none when the configuration does not create roles.
pub(crate) fn desired(n: &Names, config: &Config, account_id: &str) -> Vec<Resource> {
    if !config.instances.create_roles {
        return Vec::new();
    }
    [Tier::Web, Tier::Worker]
        .into_iter()
        .map(|tier| {
            let name = instance_role_name(&n.stack, tier);
            Resource::new(
                Kind::InstanceRole,
                &name,
                &[
                    ("trust", TRUST.into()),
                    ("policy", policy(tier, config, account_id).to_string()),
                    ("profile", name.clone()),
                ],
            )
        })
        .collect()
}

/// What an instance of `tier` does with AWS, and nothing more: the boot script reads its
/// release, the queue's URL, the database's endpoint and its managed password (and, on
/// the web tier, the token key); the API stores originals, presigns downloads, deletes
/// videos and sends jobs; the worker reads originals, stores processed files and works
/// the queue and its dead-letter queue; the CloudWatch agent writes the stack's log group.
pub fn policy(tier: Tier, config: &Config, account_id: &str) -> Value {
    let stack = &config.stack.name;
    let region = &config.stack.region;
    let bucket = format!("arn:aws:s3:::{}", bucket_name(config, account_id));
    let queue = |name: String| format!("arn:aws:sqs:{region}:{account_id}:{name}");
    let database = format!(
        "arn:aws:rds:{region}:{account_id}:db:{}",
        database_name(stack)
    );
    let secrets = format!("arn:aws:secretsmanager:{region}:{account_id}:secret");
    let log_group = format!("arn:aws:logs:{region}:{account_id}:log-group:/anb/{stack}");
    let objects = |prefixes: &[&str]| -> Vec<String> {
        prefixes.iter().map(|p| format!("{bucket}/{p}/*")).collect()
    };
    let mut statements = vec![
        json!({"Sid": "Release", "Effect": "Allow", "Action": "s3:GetObject",
               "Resource": objects(&["artifacts"])}),
        json!({"Sid": "DatabaseEndpoint", "Effect": "Allow",
               "Action": "rds:DescribeDBInstances", "Resource": database}),
        json!({"Sid": "DatabasePassword", "Effect": "Allow",
               "Action": "secretsmanager:GetSecretValue",
               "Resource": format!("{secrets}:rds!db-*"),
               "Condition": {"StringEquals": {
                   "secretsmanager:ResourceTag/aws:rds:primaryDBInstanceArn": database}}}),
        json!({"Sid": "Logs", "Effect": "Allow",
               "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                          "logs:DescribeLogStreams", "logs:PutRetentionPolicy"],
               "Resource": [log_group.clone(), format!("{log_group}:*")]}),
        json!({"Sid": "ListBucket", "Effect": "Allow", "Action": "s3:ListBucket",
               "Resource": bucket.clone()}),
    ];
    match tier {
        Tier::Web => statements.extend([
            json!({"Sid": "Originals", "Effect": "Allow",
                   "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                   "Resource": objects(&["original"])}),
            // Presigned downloads and deletes; only the worker writes processed videos.
            json!({"Sid": "Processed", "Effect": "Allow",
                   "Action": ["s3:GetObject", "s3:DeleteObject"],
                   "Resource": objects(&["processed"])}),
            json!({"Sid": "Jobs", "Effect": "Allow",
                   "Action": ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
                   "Resource": queue(queue_name(stack))}),
            json!({"Sid": "TokenKey", "Effect": "Allow",
                   "Action": "secretsmanager:GetSecretValue",
                   "Resource": format!("{secrets}:{}-*", token_secret_name(stack))}),
        ]),
        Tier::Worker => statements.extend([
            json!({"Sid": "Originals", "Effect": "Allow", "Action": "s3:GetObject",
                   "Resource": objects(&["original"])}),
            // The storage probe of its dependency check (HeadObject needs GetObject, or S3
            // answers 403 even for a missing key) and the bucket's identity, which tells a
            // worker that its database was restored onto another bucket.
            json!({"Sid": "Health", "Effect": "Allow",
                   "Action": ["s3:GetObject", "s3:PutObject"],
                   "Resource": objects(&["health"])}),
            json!({"Sid": "Processed", "Effect": "Allow",
                   "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                   "Resource": objects(&["processed"])}),
            json!({"Sid": "Jobs", "Effect": "Allow",
                   "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage",
                              "sqs:ChangeMessageVisibility", "sqs:SendMessage",
                              "sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
                   "Resource": [queue(queue_name(stack)), queue(dead_letter_queue_name(stack))]}),
            // Its own group only: protection from scale-in while it holds a job, and the
            // termination hook it completes once the job is done.
            json!({"Sid": "Lifecycle", "Effect": "Allow",
                   "Action": ["autoscaling:SetInstanceProtection",
                              "autoscaling:CompleteLifecycleAction",
                              "autoscaling:RecordLifecycleActionHeartbeat"],
                   "Resource": format!(
                       "arn:aws:autoscaling:{region}:{account_id}:autoScalingGroup:*:\
                        autoScalingGroupName/{}", asg_name(stack, "worker"))}),
        ]),
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

fn trust_policy() -> String {
    json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": TRUST}, "Action": "sts:AssumeRole"}]})
    .to_string()
}

fn iam_tags(aws: &Aws, name: &str) -> [Tag; 2] {
    let tag = |key: &str, value: &str| {
        Tag::builder()
            .key(key)
            .value(value)
            .build()
            .expect("key and value are set")
    };
    [tag(STACK_TAG, &aws.stack), tag("Name", name)]
}

/// IAM returns policy documents percent-encoded; compared as normalised JSON.
fn decoded_policy(document: &str) -> String {
    let text = percent_encoding::percent_decode_str(document).decode_utf8_lossy();
    serde_json::from_str::<Value>(&text)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| text.into_owned())
}

pub(crate) async fn observe(aws: &Aws) -> anyhow::Result<Vec<Observed>> {
    let pages: Vec<_> = aws
        .iam
        .list_roles()
        .path_prefix(path(&aws.stack))
        .into_paginator()
        .send()
        .collect::<Result<_, _>>()
        .await
        .context("list IAM roles")?;
    let mut out = Vec::new();
    for role in pages.iter().flat_map(|p| p.roles()) {
        let name = role.role_name();
        let tags = aws
            .iam
            .list_role_tags()
            .role_name(name)
            .send()
            .await
            .with_context(|| format!("read the tags of role {name}"))?;
        if !tags
            .tags()
            .iter()
            .any(|t| aws.is_stack_tag(Some(t.key()), Some(t.value())))
        {
            continue;
        }
        let policy = match aws
            .iam
            .get_role_policy()
            .role_name(name)
            .policy_name(POLICY_NAME)
            .send()
            .await
        {
            Ok(found) => decoded_policy(found.policy_document()),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("read the policy of role {name}")),
        };
        let trust = role
            .assume_role_policy_document()
            .map(decoded_policy)
            .and_then(|doc| serde_json::from_str::<Value>(&doc).ok())
            .and_then(|doc| {
                doc["Statement"][0]["Principal"]["Service"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let profile = match aws
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
        {
            Ok(found) => found
                .instance_profile()
                .filter(|p| p.roles().iter().any(|r| r.role_name() == name))
                .map(|p| p.instance_profile_name().to_owned())
                .unwrap_or_default(),
            Err(e) if error_kind(&e) == ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("read instance profile {name}")),
        };
        out.push(Observed {
            resource: Resource::new(
                Kind::InstanceRole,
                name,
                &[("trust", trust), ("policy", policy), ("profile", profile)],
            ),
            id: name.to_owned(),
        });
    }
    Ok(out)
}

/// The role, its policy, and the instance profile holding it; waits until the profile
/// is readable with its role (IAM is eventually consistent, and a launch template naming
/// a profile EC2 cannot see yet fails its instances).
pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let name = change.name.as_str();
    let [stack_tag, name_tag] = iam_tags(aws, name);
    aws.iam
        .create_role()
        .role_name(name)
        .path(path(&aws.stack))
        .assume_role_policy_document(trust_policy())
        .description(format!("instances of stack {}", aws.stack))
        .tags(stack_tag.clone())
        .tags(name_tag.clone())
        .send()
        .await
        .context("create the role")?;
    update(aws, change, name, ids).await?;
    let poll = std::time::Duration::from_secs(2);
    for _ in 0..30 {
        let found = aws
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await;
        if found.is_ok_and(|f| f.instance_profile().is_some_and(|p| !p.roles().is_empty())) {
            return Ok(name.to_owned());
        }
        tokio::time::sleep(poll).await;
    }
    anyhow::bail!("instance profile {name} did not become visible within a minute")
}

/// Sets the policy and makes sure the instance profile exists and holds the role. `id` is
/// the role's name: IAM addresses roles by name.
pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, _: &Ids) -> anyhow::Result<()> {
    let (name, p) = (id, &change.desired);
    aws.iam
        .put_role_policy()
        .role_name(name)
        .policy_name(POLICY_NAME)
        .policy_document(&p["policy"])
        .send()
        .await
        .context("set the role's policy")?;
    let [stack_tag, name_tag] = iam_tags(aws, name);
    match aws
        .iam
        .create_instance_profile()
        .instance_profile_name(name)
        .path(path(&aws.stack))
        .tags(stack_tag)
        .tags(name_tag)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if error_kind(&e) == ErrorKind::Duplicate => {}
        Err(e) => return Err(e).context("create the instance profile"),
    }
    match aws
        .iam
        .add_role_to_instance_profile()
        .instance_profile_name(name)
        .role_name(name)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // A profile holds one role: already this one.
        Err(e) if matches!(error_kind(&e), ErrorKind::Duplicate | ErrorKind::Other) => {
            let profile = aws
                .iam
                .get_instance_profile()
                .instance_profile_name(name)
                .send()
                .await
                .context("read the instance profile")?;
            let holds_role = profile
                .instance_profile()
                .is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name));
            anyhow::ensure!(
                holds_role,
                "instance profile {name} holds another role: {e}"
            );
            Ok(())
        }
        Err(e) => Err(e).context("add the role to its instance profile"),
    }
}

/// The profile (after taking the role out of it), the policy, then the role.
pub(crate) async fn delete(aws: &Aws, _: Kind, id: &str) -> Result<(), DeleteError> {
    let name = id;
    let gone = |e: &DeleteError| matches!(e, DeleteError::Aws(ErrorKind::NotFound, _));
    let steps = [
        aws.iam
            .remove_role_from_instance_profile()
            .instance_profile_name(name)
            .role_name(name)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        aws.iam
            .delete_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        aws.iam
            .delete_role_policy()
            .role_name(name)
            .policy_name(POLICY_NAME)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
    ];
    for step in steps {
        match step {
            Err(e) if !gone(&e) => return Err(e),
            _ => {}
        }
    }
    aws.iam
        .delete_role()
        .role_name(name)
        .send()
        .await
        .map(drop)
        .map_err(DeleteError::from_sdk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Config {
        let mut config = Config::load(None).unwrap();
        config.instances.create_roles = true;
        config
    }

    fn actions(policy: &Value) -> Vec<String> {
        let mut actions: Vec<String> = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(list) => list
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                _ => vec![],
            })
            .collect();
        actions.sort();
        actions.dedup();
        actions
    }

    #[test]
    fn each_tier_may_do_only_its_own_work() {
        let web = policy(Tier::Web, &seed(), "123456789012");
        let worker = policy(Tier::Worker, &seed(), "123456789012");
        let text = web.to_string() + &worker.to_string();
        assert!(
            !text.contains("\"*\""),
            "no wildcard resource or action: {text}"
        );
        assert!(actions(&web).contains(&"sqs:SendMessage".to_owned()));
        assert!(!actions(&web).contains(&"sqs:ReceiveMessage".to_owned()));
        // The worker protects its own instance and completes its own group's hook.
        let lifecycle = worker["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "Lifecycle")
            .unwrap();
        assert_eq!(
            lifecycle["Resource"],
            "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:\
             autoScalingGroupName/anb-worker-asg"
        );
        assert!(actions(&worker).contains(&"autoscaling:CompleteLifecycleAction".to_owned()));
        assert!(!actions(&web).iter().any(|a| a.starts_with("autoscaling:")));
        assert!(actions(&worker).contains(&"sqs:ReceiveMessage".to_owned()));
        assert!(
            !worker.to_string().contains("anb-jwt-key"),
            "the worker cannot read the token key"
        );
        assert!(web.to_string().contains("anb-jwt-key"));
        let originals = worker["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "Originals")
            .unwrap();
        assert_eq!(
            originals["Action"], "s3:GetObject",
            "the worker only reads originals"
        );
        let health = worker["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "Health")
            .expect("the worker may probe storage");
        assert_eq!(
            health["Resource"],
            json!(["arn:aws:s3:::anb-videos-123456789012/health/*"])
        );
        let web_processed = web["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "Processed")
            .unwrap();
        assert_eq!(
            web_processed["Action"],
            json!(["s3:GetObject", "s3:DeleteObject"]),
            "the web tier never writes processed videos"
        );
    }

    #[test]
    fn roles_exist_only_when_asked_for() {
        let names = Names {
            stack: "anb".into(),
        };
        assert!(desired(&names, &Config::load(None).unwrap(), "1").is_empty());
        let roles = desired(&names, &seed(), "1");
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["anb-web-instance", "anb-worker-instance"]);
    }

    #[test]
    fn iam_policies_read_back_as_written() {
        let written = policy(Tier::Web, &seed(), "1").to_string();
        let encoded =
            percent_encoding::utf8_percent_encode(&written, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert_eq!(decoded_policy(&encoded), written);
    }
}
