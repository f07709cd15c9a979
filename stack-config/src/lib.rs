//! `config/aws.toml`: what the stack should look like. The file's defaults are the seed's.
//! Its own crate so that `provision` and `cargo xtask` (which must not link the AWS SDK)
//! read the file with the same types, spell every resource name the same way, offer the
//! same flags, read `provision metrics`' JSON with the types it was written with, and show
//! long waits the same way (`progress`).

pub mod cli;
pub mod metrics;
pub mod names;
pub mod progress;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The seed deployment, built in: `provision` works with no file on disk.
pub const DEFAULT_TOML: &str = include_str!("../../config/aws.toml");

/// The services' built-in settings, which the instances run with: read here for the one
/// value the stack is sized by (see [`worker_ffmpeg_timeout`]).
const SERVICES_TOML: &str = include_str!("../../config/default.toml");

/// The longest one ffmpeg run may take on a worker (`[worker] ffmpeg_timeout` of the
/// services' settings). A worker being scaled in may hold a job this long, and the
/// termination lifecycle hook waits for it.
pub fn worker_ffmpeg_timeout() -> Duration {
    #[derive(Deserialize)]
    struct Services {
        worker: ServicesWorker,
    }
    #[derive(Deserialize)]
    struct ServicesWorker {
        #[serde(with = "humantime_serde")]
        ffmpeg_timeout: Duration,
    }
    toml::from_str::<Services>(SERVICES_TOML)
        .expect("config/default.toml has [worker] ffmpeg_timeout")
        .worker
        .ffmpeg_timeout
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub stack: StackConfig,
    pub network: NetworkConfig,
    pub queue: QueueConfig,
    pub load_balancer: LoadBalancerConfig,
    pub database: DatabaseConfig,
    pub instances: InstancesConfig,
    pub logs: LogsConfig,
    pub web: WebTierConfig,
    pub worker: WorkerTierConfig,
    /// Who hears of the alarms (`[alerts]`); a file without the section notifies nobody.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// Who the alarms notify, and the one threshold only they use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// E-mail addresses subscribed to the stack's alerts topic. Each gets a message from
    /// AWS to confirm first; until then it receives nothing.
    #[serde(default)]
    pub emails: Vec<String>,
    /// The oldest waiting video older than this raises an alarm (workers stuck or too few).
    #[serde(with = "humantime_serde", default = "default_oldest_job_age")]
    pub oldest_job_age: Duration,
}

fn default_oldest_job_age() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            emails: Vec::new(),
            oldest_job_age: default_oldest_job_age(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesConfig {
    pub ami: String,
    pub instance_profile: String,
    /// Create one least-privilege role (and instance profile) per tier instead of using
    /// `instance_profile`.
    pub create_roles: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    pub cloudwatch_agent: bool,
    /// The agent's version (a path segment of Amazon's download URL), or "latest".
    pub cloudwatch_agent_version: String,
    pub retention_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebTierConfig {
    pub instance_type: String,
    pub min_size: u32,
    pub max_size: u32,
    pub scale_out_cpu_percent: u32,
    pub scale_in_cpu_percent: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTierConfig {
    pub instance_type: String,
    pub min_size: u32,
    pub max_size: u32,
    /// Target tracking's goal: this many waiting videos per in-service worker.
    pub backlog_per_instance: u32,
    /// Which policy sizes the group (`worker.scaling_policy`).
    #[serde(default)]
    pub scaling_policy: WorkerScaling,
    /// The step policy: one more worker above this many waiting videos per worker…
    #[serde(default = "default_step_out_above")]
    pub step_out_above: f64,
    /// …one less below this many.
    #[serde(default = "default_step_in_below")]
    pub step_in_below: f64,
}

fn default_step_out_above() -> f64 {
    2.0
}

fn default_step_in_below() -> f64 {
    1.0
}

/// How the worker group is sized. Both read the same metric, videos waiting per
/// in-service worker; they differ in how they react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerScaling {
    /// AWS target tracking on `backlog_per_instance` (the design card's choice).
    #[default]
    TargetTracking,
    /// The seed's table: +1 worker after 2 minutes over 2 per worker, −1 after 5 minutes
    /// under 1, cooldowns 300 s / 600 s.
    Step,
}

impl WorkerScaling {
    /// As `config/aws.toml` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::TargetTracking => "target-tracking",
            Self::Step => "step",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    pub certificate_arn: String,
    /// The load balancer writes its access logs to the stack's bucket, under
    /// `alb-logs/` (review 3, N21). Off when a configuration file leaves it out.
    #[serde(default)]
    pub access_logs: bool,
}

/// The account Elastic Load Balancing writes access logs from, per region (AWS's list for
/// regions older than August 2022; newer ones are not listed, and refused).
pub fn elb_log_account(region: &str) -> Option<&'static str> {
    Some(match region {
        "us-east-1" => "127311923021",
        "us-east-2" => "033677994240",
        "us-west-1" => "027434742980",
        "us-west-2" => "797873946194",
        "ca-central-1" => "985666609251",
        "eu-west-1" => "156460612806",
        "eu-west-2" => "652711504416",
        "eu-west-3" => "009996457667",
        "eu-central-1" => "054676820928",
        "eu-north-1" => "897822967062",
        "sa-east-1" => "507241528517",
        "ap-northeast-1" => "582318560864",
        "ap-southeast-1" => "114774131450",
        "ap-southeast-2" => "783225319266",
        "ap-south-1" => "718504428378",
        _ => return None,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL major version ("16"): new databases get its latest minor version, and
    /// the parameter group its family.
    pub engine_version: String,
    pub instance_class: String,
    pub allocated_storage_gb: u32,
    pub multi_az: bool,
    pub database_name: String,
    pub master_username: String,
    /// Days of automated backups (point-in-time recovery); 0 turns them off.
    pub backup_retention_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    pub name: String,
    pub region: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub vpc_cidr: String,
    pub availability_zones: Vec<String>,
    pub public_subnets: Vec<String>,
    pub private_subnets: Vec<String>,
    pub instances: InstanceSubnets,
}

/// Which subnets the instances run in (`network.instances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceSubnets {
    /// Public subnets, public IPs, no inbound beyond the security groups.
    Public,
    /// Private subnets behind a NAT gateway.
    Private,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub receive_wait: Duration,
    pub max_receives: u32,
}

impl Config {
    /// The built-in file, or `path` instead when given.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
            None => DEFAULT_TOML.to_owned(),
        };
        Self::from_toml(&text)
    }

    /// A configuration file's text, checked as `load` checks it.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The two availability zones the stack spans.
    pub fn availability_zones(&self) -> Vec<String> {
        if self.network.availability_zones.is_empty() {
            vec![
                format!("{}a", self.stack.region),
                format!("{}b", self.stack.region),
            ]
        } else {
            self.network.availability_zones.clone()
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.load_balancer.access_logs || elb_log_account(&self.stack.region).is_some(),
            "load_balancer.access_logs: no known Elastic Load Balancing log account for region \
             {}; set it to false",
            self.stack.region
        );
        let name = &self.stack.name;
        let valid_name = !name.is_empty()
            && name.len() <= 20
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            // Names of snapshots (`<stack>-final-<time>`) and RDS resources follow.
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && !name.contains("--");
        anyhow::ensure!(
            valid_name,
            "stack.name must be 1–20 lowercase letters, digits or single dashes, starting with a letter and not ending with a dash"
        );
        let db = &self.database;
        anyhow::ensure!(
            !db.engine_version.is_empty() && db.engine_version.bytes().all(|b| b.is_ascii_digit()),
            "database.engine_version is a PostgreSQL major version such as \"16\""
        );
        anyhow::ensure!(
            db.backup_retention_days <= 35,
            "database.backup_retention_days must be 0–35 (what RDS allows)"
        );
        let agent = &self.logs.cloudwatch_agent_version;
        anyhow::ensure!(
            !agent.is_empty() && agent.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'),
            "logs.cloudwatch_agent_version is \"latest\" or a version such as \"1.300040.0b650\""
        );
        let zones = self.availability_zones().len();
        anyhow::ensure!(zones == 2, "network.availability_zones must name two zones");
        anyhow::ensure!(
            self.network.public_subnets.len() == 2 && self.network.private_subnets.len() == 2,
            "network.public_subnets and network.private_subnets need one CIDR per zone (two each)"
        );
        anyhow::ensure!(
            self.queue.receive_wait <= Duration::from_secs(20),
            "queue.receive_wait must be at most 20s"
        );
        anyhow::ensure!(
            (1..=1000).contains(&self.queue.max_receives),
            "queue.max_receives must be between 1 and 1000"
        );
        for (tier, min, max) in [
            ("web", self.web.min_size, self.web.max_size),
            ("worker", self.worker.min_size, self.worker.max_size),
        ] {
            anyhow::ensure!(min <= max, "{tier}.min_size is larger than {tier}.max_size");
        }
        anyhow::ensure!(
            self.web.scale_in_cpu_percent < self.web.scale_out_cpu_percent,
            "web.scale_in_cpu_percent must be below web.scale_out_cpu_percent"
        );
        anyhow::ensure!(
            self.worker.backlog_per_instance > 0,
            "worker.backlog_per_instance must be at least 1"
        );
        let (out_above, in_below) = (self.worker.step_out_above, self.worker.step_in_below);
        anyhow::ensure!(
            in_below > 0.0 && in_below < out_above && out_above.is_finite(),
            "worker.step_in_below must be above 0 and below worker.step_out_above"
        );
        for email in &self.alerts.emails {
            let valid = email.split_once('@').is_some_and(|(user, domain)| {
                !user.is_empty() && domain.contains('.') && !domain.starts_with('.')
            }) && email.matches('@').count() == 1
                && !email.contains(|c: char| c.is_whitespace() || c == ',');
            anyhow::ensure!(
                valid,
                "alerts.emails: {email:?} is not an e-mail address (name@example.org)"
            );
        }
        let mut addresses: Vec<String> = self
            .alerts
            .emails
            .iter()
            .map(|e| e.to_lowercase())
            .collect();
        addresses.sort();
        if let Some(twice) = addresses.windows(2).find(|w| w[0] == w[1]) {
            anyhow::bail!("alerts.emails lists {} twice", twice[0]);
        }
        let age = self.alerts.oldest_job_age.as_secs();
        anyhow::ensure!(
            (60..=86_400).contains(&age),
            "alerts.oldest_job_age must be between 1m and 24h"
        );
        // The values CloudWatch Logs accepts.
        anyhow::ensure!(
            [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 3653]
                .contains(&self.logs.retention_days),
            "logs.retention_days must be one CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, …)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_file_is_the_seed() {
        let config = Config::load(None).unwrap();
        assert_eq!(config.stack.region, "us-east-1");
        assert_eq!(config.queue.visibility_timeout, Duration::from_secs(1800));
        assert_eq!(config.availability_zones(), ["us-east-1a", "us-east-1b"]);
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused() {
        let bad = DEFAULT_TOML.replace("name = \"anb\"", "name = \"ANB stack\"");
        assert!(toml::from_str::<Config>(&bad)
            .map_err(anyhow::Error::from)
            .and_then(|c| c.validate())
            .is_err());
        let unknown = format!("{DEFAULT_TOML}\n[extra]\nx = 1\n");
        assert!(toml::from_str::<Config>(&unknown).is_err());
    }

    #[test]
    fn the_worker_policy_is_target_tracking_unless_step_is_asked_for() {
        assert_eq!(
            Config::load(None).unwrap().worker.scaling_policy,
            WorkerScaling::TargetTracking
        );
        let step = DEFAULT_TOML.replace(
            "scaling_policy = \"target-tracking\"",
            "scaling_policy = \"step\"",
        );
        assert_eq!(
            Config::from_toml(&step).unwrap().worker.scaling_policy,
            WorkerScaling::Step
        );
        let inverted = step.replace("step_in_below = 1", "step_in_below = 3");
        let refused = Config::from_toml(&inverted).unwrap_err().to_string();
        assert!(refused.contains("worker.step_in_below"), "{refused}");
        let typo = DEFAULT_TOML.replace(
            "scaling_policy = \"target-tracking\"",
            "scaling_policy = \"steps\"",
        );
        let refused = Config::from_toml(&typo).unwrap_err().to_string();
        assert!(
            refused.contains("target-tracking") && refused.contains("step"),
            "{refused}"
        );
    }

    #[test]
    fn alert_addresses_are_checked_and_the_section_is_optional() {
        let without = DEFAULT_TOML.split("\n[alerts]").next().unwrap();
        let config = Config::from_toml(without).unwrap();
        assert!(config.alerts.emails.is_empty());
        assert_eq!(config.alerts.oldest_job_age, Duration::from_secs(900));
        let with = |emails: &str| {
            Config::from_toml(&DEFAULT_TOML.replace("emails = []", &format!("emails = {emails}")))
        };
        assert_eq!(
            with(r#"["ops@anb.example", "a.b@c.org"]"#)
                .unwrap()
                .alerts
                .emails,
            ["ops@anb.example", "a.b@c.org"]
        );
        for bad in [
            r#"["ops"]"#,
            r#"["ops@localhost"]"#,
            r#"["a@b.c, d@e.f"]"#,
            r#"["@x.org"]"#,
        ] {
            let refused = with(bad).unwrap_err().to_string();
            assert!(refused.contains("alerts.emails"), "{bad}: {refused}");
        }
    }

    #[test]
    fn the_hook_is_sized_by_the_services_ffmpeg_timeout() {
        assert_eq!(worker_ffmpeg_timeout(), Duration::from_secs(600));
    }
}
