//! Every name the stack gives its resources, and the two tiers. Names are the contract
//! between the desired state and the observed one (resources are found again by name or
//! tag), so both sides take them from here and nowhere else; so does the rehearsal, which
//! reads the stack back from the emulator.

use crate::Config;

/// The two kinds of instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Web,
    Worker,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Web => "web",
            Tier::Worker => "worker",
        }
    }

    /// The release binary its instances run.
    pub fn binary(self) -> &'static str {
        match self {
            Tier::Web => "api",
            Tier::Worker => "worker",
        }
    }

    /// The tier a launch template (`<stack>-<tier>-template`) starts instances of.
    pub fn of_launch_template(name: &str) -> Tier {
        if name.ends_with("-web-template") {
            Tier::Web
        } else {
            Tier::Worker
        }
    }
}

/// Logical names of the stack's own resources: `<stack>-<what>`.
pub struct Names {
    pub stack: String,
}

impl Names {
    pub fn of(&self, what: &str) -> String {
        format!("{}-{what}", self.stack)
    }
}

/// Load-balancing names are looked up by name (they carry tags, but the API filters only
/// by name or ARN). Named apart from the security groups: names are references, so they
/// must be unique.
pub fn load_balancer_name(stack: &str) -> String {
    format!("{stack}-lb")
}

/// Not "<stack>-db": that is the database's security group.
pub fn database_name(stack: &str) -> String {
    format!("{stack}-postgres")
}

/// The video-processing queue (its dead-letter queue is this plus "-dlq").
pub fn queue_name(stack: &str) -> String {
    format!("{stack}-video-processing")
}

/// The SNS topic the stack's alarms notify (`[alerts] emails` subscribe to it).
pub fn alerts_topic_name(stack: &str) -> String {
    format!("{stack}-alerts")
}

/// The Secrets Manager secret holding the key the API signs access tokens with.
pub fn token_secret_name(stack: &str) -> String {
    format!("{stack}-jwt-key")
}

/// The launch template a tier's instances start from ("web" or "worker").
pub fn launch_template_name(stack: &str, tier: &str) -> String {
    format!("{stack}-{tier}-template")
}

pub fn target_group_name(stack: &str) -> String {
    format!("{stack}-web-targets")
}

pub fn bucket_name(config: &Config, account_id: &str) -> String {
    format!("{}-videos-{account_id}", config.stack.name)
}

/// The auto-scaling group of a tier ("web" or "worker"); not "<stack>-web", the group's
/// security group.
/// The worker group's termination lifecycle hook: a terminating worker finishes its job
/// before its instance goes.
pub fn drain_hook_name(stack: &str) -> String {
    format!("{stack}-worker-drain")
}

pub fn asg_name(stack: &str, tier: &str) -> String {
    format!("{stack}-{tier}-asg")
}

/// The dead-letter queue of the video-processing queue.
pub fn dead_letter_queue_name(stack: &str) -> String {
    format!("{}-dlq", queue_name(stack))
}

/// The RDS DB subnet group (over the private subnets).
pub fn db_parameter_group_name(stack: &str) -> String {
    format!("{stack}-db-parameters")
}

pub fn db_subnet_group_name(stack: &str) -> String {
    format!("{stack}-db-subnets")
}
