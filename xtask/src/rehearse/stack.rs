//! The stack the rehearsal converges on moto: its configuration (the project's, with the
//! two keys a rehearsal must change) and the facts read back from the emulator.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use stack_config::names;

use super::STACK;
use crate::paths::project_root;
use crate::system::output;

/// The rehearsal's stack configuration: the project's, with one of moto's images and the
/// log agent off (its download is not rehearsed).
pub(super) fn stack_config(dir: &Path) -> anyhow::Result<PathBuf> {
    write_stack_config(dir, &[])
}

/// The game day's: the rehearsal's, with a one-minute queue visibility timeout, so a job
/// whose worker lost power comes back within the scenario rather than after 30 minutes
/// (the worker extends it every third of it while it works, as it does on AWS).
pub(super) fn game_day_stack_config(dir: &Path) -> anyhow::Result<PathBuf> {
    write_stack_config(
        dir,
        &[
            ("queue", "visibility_timeout", toml::Value::from("60s")),
            // One web instance per zone from the start, as a team runs the tier users
            // reach; `up`, which the deploy scenarios run again, keeps it so.
            ("web", "min_size", toml::Value::from(2)),
        ],
    )
}

fn write_stack_config(dir: &Path, more: &[(&str, &str, toml::Value)]) -> anyhow::Result<PathBuf> {
    let source = project_root().join("config/aws.toml");
    let text = rehearsal_config(&std::fs::read_to_string(&source)?, more)
        .with_context(|| format!("{}", source.display()))?;
    let path = dir.join("stack.toml");
    std::fs::write(&path, text)?;
    // What provision will refuse is refused here, before anything starts.
    stack_config::Config::load(Some(&path))
        .with_context(|| format!("the rehearsal's {}", path.display()))?;
    Ok(path)
}

/// The project's configuration text with the two keys the rehearsal sets and `more`;
/// refused when any is missing (a renamed key would otherwise leave the rehearsal on AWS
/// values).
fn rehearsal_config(text: &str, more: &[(&str, &str, toml::Value)]) -> anyhow::Result<String> {
    let mut config: toml::Table = toml::from_str(text).context("not TOML")?;
    let keys = [
        ("instances", "ami", toml::Value::from("ami-1e749f67")),
        ("logs", "cloudwatch_agent", toml::Value::from(false)),
    ];
    for (section, key, value) in keys.iter().chain(more).cloned() {
        let slot = config
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
            .and_then(|table| table.get_mut(key))
            .with_context(|| format!("no {section}.{key}, which the rehearsal sets"))?;
        *slot = value;
    }
    Ok(toml::to_string(&config)?)
}

/// What the harness reads back from the emulator: each tier's user data as EC2 would
/// hand it to the instance, and the database's endpoint and managed master login.
#[derive(serde::Deserialize)]
pub(super) struct StackFacts {
    pub(super) web_user_data: String,
    pub(super) worker_user_data: String,
    pub(super) region: String,
    pub(super) db_host: String,
    pub(super) db_port: u16,
    pub(super) db_name: String,
    pub(super) db_user: String,
    pub(super) db_password: String,
    /// The web target group's health check and deregistration delay, in seconds.
    pub(super) target_group: TargetGroupFacts,
}

/// The shortest a compressed health check waits for its answer: the instances share two
/// cores with ffmpeg and the harness, and an answer a few hundred milliseconds late would
/// take a healthy target out of rotation (AWS's 5 s default is far from any such delay).
const MIN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The web target group as the emulator holds it.
#[derive(serde::Deserialize)]
pub(super) struct TargetGroupFacts {
    pub(super) path: String,
    pub(super) interval_s: u64,
    pub(super) timeout_s: u64,
    pub(super) healthy_threshold: u32,
    pub(super) unhealthy_threshold: u32,
    pub(super) deregistration_delay_s: u64,
}

impl TargetGroupFacts {
    /// Its health check with every duration divided by `compression` (a rehearsal's
    /// minute is shorter than AWS's; the counts stay), the timeout no shorter than
    /// [`MIN_CHECK_TIMEOUT`].
    pub(super) fn health_check(&self, compression: f64) -> super::balancer::HealthCheck {
        let seconds = |s: u64| Duration::from_secs_f64(s as f64 / compression.max(1.0));
        super::balancer::HealthCheck {
            path: self.path.clone(),
            interval: seconds(self.interval_s),
            timeout: seconds(self.timeout_s).max(MIN_CHECK_TIMEOUT),
            healthy_threshold: self.healthy_threshold,
            unhealthy_threshold: self.unhealthy_threshold,
            deregistration_delay: seconds(self.deregistration_delay_s),
        }
    }
}

/// Reads the facts with boto3 (moto's own dependency), so xtask links no AWS SDK.
const READ_FACTS: &str = r#"
import base64, json, sys
import boto3
endpoint, region, web_template, worker_template, database, target_group = sys.argv[1:7]
kw = dict(endpoint_url=endpoint, region_name=region,
          aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
out = {"region": region}
for tier, template in (("web", web_template), ("worker", worker_template)):
    v = ec2.describe_launch_template_versions(
        LaunchTemplateName=template, Versions=["$Latest"])
    data = v["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]
    out[f"{tier}_user_data"] = base64.b64decode(data).decode()
db = boto3.client("rds", **kw).describe_db_instances(
    DBInstanceIdentifier=database)["DBInstances"][0]
out["db_host"], out["db_port"] = db["Endpoint"]["Address"], db["Endpoint"]["Port"]
out["db_name"] = db["DBName"]
login = json.loads(boto3.client("secretsmanager", **kw).get_secret_value(
    SecretId=db["MasterUserSecret"]["SecretArn"])["SecretString"])
out["db_user"], out["db_password"] = login["username"], login["password"]
elb = boto3.client("elbv2", **kw)
tg = elb.describe_target_groups(Names=[target_group])["TargetGroups"][0]
attributes = {a["Key"]: a["Value"] for a in elb.describe_target_group_attributes(
    TargetGroupArn=tg["TargetGroupArn"])["Attributes"]}
out["target_group"] = {
    "path": tg["HealthCheckPath"],
    "interval_s": tg["HealthCheckIntervalSeconds"],
    "timeout_s": tg["HealthCheckTimeoutSeconds"],
    "healthy_threshold": tg["HealthyThresholdCount"],
    "unhealthy_threshold": tg["UnhealthyThresholdCount"],
    "deregistration_delay_s": int(attributes.get("deregistration_delay.timeout_seconds", "300")),
}
print(json.dumps(out))
"#;

impl StackFacts {
    pub(super) fn read(python: &Path, endpoint: &str) -> anyhow::Result<Self> {
        let text = output(crate::system::command(python).args([
            "-c",
            READ_FACTS,
            endpoint,
            "us-east-1",
            &names::launch_template_name(STACK, "web"),
            &names::launch_template_name(STACK, "worker"),
            &names::database_name(STACK),
            &names::target_group_name(STACK),
        ]))
        .context("read the launch templates, the database and the target group back from moto")?;
        serde_json::from_str(&text).context("moto's answer")
    }
}

#[cfg(test)]
mod tests {
    use super::rehearsal_config;

    #[test]
    fn the_rehearsal_sets_its_two_keys_and_refuses_a_configuration_without_them() {
        let seed = stack_config::DEFAULT_TOML;
        let config =
            stack_config::Config::from_toml(&rehearsal_config(seed, &[]).unwrap()).unwrap();
        assert_eq!(config.instances.ami, "ami-1e749f67");
        assert!(!config.logs.cloudwatch_agent);
        let renamed = seed.replace("cloudwatch_agent =", "log_agent =");
        let error = rehearsal_config(&renamed, &[]).unwrap_err().to_string();
        assert!(error.contains("logs.cloudwatch_agent"), "{error}");
    }
}
