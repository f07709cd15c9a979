//! Launch templates, auto-scaling groups and their scaling policies: what each tier should
//! be here; the calls for templates in `launch_template`, for groups and policies in
//! `scaling`.

mod launch_template;
mod scaling;

use crate::aws::{Aws, DeleteError, Ids, NamesById};
use crate::config::{Config, InstanceSubnets, WorkerScaling};
use crate::model::{Change, Kind, Observed, Resource};
use crate::names::{
    asg_name, database_name, launch_template_name, queue_name, target_group_name,
    token_secret_name, Names, Tier,
};
use crate::userdata::{self, Release};

pub use launch_template::latest_debian_ami;

/// Each instance's root volume (gp3), GB.
pub const ROOT_VOLUME_GB: u32 = 16;
pub use scaling::backlog_metrics;
pub(crate) use scaling::{
    format_metrics, latest_template_version, parse_metrics, template_version, MetricQuery,
    BACKLOG_LABEL,
};

/// Launch templates, the two auto-scaling groups, the worker group's termination hook, and
/// their scaling: target tracking or the seed's steps on the backlog per worker, and the
/// seed's CPU steps for the web tier.
pub(crate) fn desired(
    n: &Names,
    config: &Config,
    account_id: &str,
    ami: &str,
    release: &Release,
) -> Vec<Resource> {
    let subnets = match config.network.instances {
        InstanceSubnets::Public => format!("{},{}", n.of("public-a"), n.of("public-b")),
        InstanceSubnets::Private => format!("{},{}", n.of("private-a"), n.of("private-b")),
    };
    let mut out = Vec::new();
    for (user_data_tier, instance_type, min, max) in [
        (
            Tier::Web,
            &config.web.instance_type,
            config.web.min_size,
            config.web.max_size,
        ),
        (
            Tier::Worker,
            &config.worker.instance_type,
            config.worker.min_size,
            config.worker.max_size,
        ),
    ] {
        let tier = user_data_tier.name();
        let template = launch_template_name(&n.stack, tier);
        let user_data = userdata::render(user_data_tier, config, account_id, release);
        out.push(Resource::new(
            Kind::LaunchTemplate,
            &template,
            &[
                ("image", ami.to_owned()),
                ("instance_type", instance_type.clone()),
                (
                    "instance_profile",
                    if config.instances.create_roles {
                        super::role::instance_role_name(&n.stack, user_data_tier)
                    } else {
                        config.instances.instance_profile.clone()
                    },
                ),
                ("security_group", n.of(tier)),
                ("imds_tokens", "required".into()),
                // One CPU point a minute instead of five: the web tier's CPU alarms look
                // at 2 and 5 one-minute periods, which basic monitoring mostly leaves
                // empty. The worker scales on queue metrics, which are per minute anyway.
                (
                    "detailed_monitoring",
                    (user_data_tier == Tier::Web).to_string(),
                ),
                ("root_volume", launch_template::ROOT_VOLUME.into()),
                // Read back from the user data's header; named here so that a plan says
                // which release changes, and so the template waits for what it names.
                ("release", release.name.to_owned()),
                (
                    "binary_sha256",
                    release.sha256_for(user_data_tier).to_owned(),
                ),
                ("database", database_name(&n.stack)),
                ("queue", queue_name(&n.stack)),
                ("token_secret", token_secret_name(&n.stack)),
                ("user_data", user_data),
            ],
        ));
        let web = tier == "web";
        out.push(Resource::new(
            Kind::AutoScalingGroup,
            asg_name(&n.stack, tier),
            &[
                ("launch_template", template),
                ("min_size", min.to_string()),
                ("max_size", max.to_string()),
                ("subnets", subnets.clone()),
                ("health_check", if web { "ELB" } else { "EC2" }.into()),
                (
                    "target_groups",
                    if web {
                        target_group_name(&n.stack)
                    } else {
                        String::new()
                    },
                ),
                ("metrics_collection", "true".into()),
            ],
        ));
    }
    let (web, worker) = (asg_name(&n.stack, "web"), asg_name(&n.stack, "worker"));
    out.push(Resource::new(
        Kind::LifecycleHook,
        stack_config::names::drain_hook_name(&n.stack),
        &[
            ("group", worker.clone()),
            ("transition", "autoscaling:EC2_INSTANCE_TERMINATING".into()),
            ("heartbeat_timeout", drain_heartbeat_seconds().to_string()),
            // Past the timeout a terminating instance goes either way; CONTINUE (not
            // ABANDON) still lets any other termination hook run.
            ("default_result", "CONTINUE".into()),
        ],
    ));
    out.extend(worker_scaling(n, config, &worker));
    for (name, adjustment, cooldown) in
        [("web-scale-out", "1", "300"), ("web-scale-in", "-1", "600")]
    {
        out.push(Resource::new(
            Kind::ScalingPolicy,
            n.of(name),
            &[
                ("group", web.clone()),
                ("policy_type", "SimpleScaling".into()),
                ("adjustment", adjustment.into()),
                ("cooldown", cooldown.into()),
            ],
        ));
    }
    for (name, periods, comparison, threshold, action) in [
        (
            "web-cpu-high",
            "2",
            "GreaterThanThreshold",
            config.web.scale_out_cpu_percent,
            "web-scale-out",
        ),
        (
            "web-cpu-low",
            "5",
            "LessThanThreshold",
            config.web.scale_in_cpu_percent,
            "web-scale-in",
        ),
    ] {
        out.push(Resource::new(
            Kind::Alarm,
            n.of(name),
            &[
                ("namespace", "AWS/EC2".into()),
                ("metric", "CPUUtilization".into()),
                ("dimension", format!("AutoScalingGroupName={web}")),
                ("statistic", "Average".into()),
                ("period", "60".into()),
                ("evaluation_periods", periods.into()),
                ("comparison", comparison.into()),
                ("threshold", threshold.to_string()),
                ("description", format!("web tier CPU: {action}")),
                ("action", n.of(action)),
            ],
        ));
    }
    out
}

/// How long a worker being scaled in may go without a heartbeat before its instance is
/// terminated anyway: the longest ffmpeg run the services allow, plus 5 minutes for the
/// download, the upload and the database write around it. The worker sends heartbeats
/// while a job runs longer, so this bounds a worker that died, not a long job.
pub(crate) fn drain_heartbeat_seconds() -> u64 {
    // AWS's longest heartbeat timeout is 7 200 s; past it the worker's heartbeats carry it.
    (stack_config::worker_ffmpeg_timeout().as_secs() + 5 * 60).min(7200)
}

/// The worker group's policy, as `worker.scaling_policy` picks it. Both read the same
/// metric (videos waiting per in-service worker, by metric math).
fn worker_scaling(n: &Names, config: &Config, worker: &str) -> Vec<Resource> {
    let metrics = backlog_metrics(&queue_name(&n.stack), worker);
    match config.worker.scaling_policy {
        WorkerScaling::TargetTracking => vec![Resource::new(
            Kind::ScalingPolicy,
            n.of("worker-backlog"),
            &[
                ("group", worker.to_owned()),
                ("policy_type", "TargetTrackingScaling".into()),
                ("target", config.worker.backlog_per_instance.to_string()),
                ("metrics", metrics),
            ],
        )],
        WorkerScaling::Step => {
            // The simulator's model of the step table is the one deployed.
            let capacity::Policy::Step {
                out_above,
                in_below,
                out_periods,
                in_periods,
                out_cooldown_s,
                in_cooldown_s,
                ..
            } = capacity::Policy::step(
                config.worker.min_size,
                config.worker.max_size,
                config.worker.step_out_above,
                config.worker.step_in_below,
            )
            else {
                unreachable!("Policy::step is a step policy")
            };
            let mut out = Vec::new();
            for (policy, adjustment, cooldown, alarm, periods, comparison, threshold) in [
                (
                    "worker-scale-out",
                    "1",
                    out_cooldown_s,
                    "worker-backlog-high",
                    out_periods,
                    "GreaterThanThreshold",
                    out_above,
                ),
                (
                    "worker-scale-in",
                    "-1",
                    in_cooldown_s,
                    "worker-backlog-low",
                    in_periods,
                    "LessThanThreshold",
                    in_below,
                ),
            ] {
                out.push(Resource::new(
                    Kind::ScalingPolicy,
                    n.of(policy),
                    &[
                        ("group", worker.to_owned()),
                        ("policy_type", "SimpleScaling".into()),
                        ("adjustment", adjustment.into()),
                        ("cooldown", format!("{cooldown:.0}")),
                    ],
                ));
                out.push(Resource::new(
                    Kind::Alarm,
                    n.of(alarm),
                    &[
                        ("metrics", metrics.clone()),
                        ("period", "60".into()),
                        ("evaluation_periods", periods.to_string()),
                        ("comparison", comparison.into()),
                        ("threshold", threshold.to_string()),
                        (
                            "description",
                            format!("videos waiting per worker: {policy}"),
                        ),
                        ("action", n.of(policy)),
                    ],
                ));
            }
            out
        }
    }
}

pub(crate) async fn observe(aws: &Aws, names: &NamesById) -> anyhow::Result<Vec<Observed>> {
    let (templates, groups) = tokio::try_join!(
        launch_template::observe(aws, names),
        scaling::observe(aws, names)
    )?;
    Ok(templates.into_iter().chain(groups).collect())
}

pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    match change.kind {
        Kind::LaunchTemplate => launch_template::create(aws, change, ids).await,
        Kind::AutoScalingGroup => scaling::create_group(aws, change, ids).await,
        Kind::ScalingPolicy => scaling::put_policy(aws, change).await,
        Kind::LifecycleHook => scaling::put_lifecycle_hook(aws, change).await,
        other => anyhow::bail!("{other} is not a compute resource"),
    }
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    match change.kind {
        Kind::LaunchTemplate => launch_template::update(aws, change, id, ids).await,
        Kind::AutoScalingGroup => scaling::update_group(aws, change, id, ids).await,
        Kind::ScalingPolicy => scaling::put_policy(aws, change).await.map(drop),
        Kind::LifecycleHook => scaling::put_lifecycle_hook(aws, change).await.map(drop),
        other => anyhow::bail!("{other} is not a compute resource"),
    }
}

pub(crate) async fn delete(aws: &Aws, kind: Kind, id: &str) -> Result<(), DeleteError> {
    match kind {
        Kind::LaunchTemplate => launch_template::delete(aws, id).await,
        Kind::ScalingPolicy => scaling::delete_policy(aws, id).await,
        Kind::LifecycleHook => scaling::delete_lifecycle_hook(aws, id).await,
        Kind::AutoScalingGroup => scaling::delete_group(aws, id).await,
        other => Err(DeleteError::Other(anyhow::anyhow!(
            "{other} is not a compute resource"
        ))),
    }
}
