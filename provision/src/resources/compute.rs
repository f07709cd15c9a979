//! Launch templates, auto-scaling groups and their scaling policies.

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_autoscaling::types::{
    CustomizedMetricSpecification, LaunchTemplateSpecification, Metric, MetricDimension,
    Tag as AsgTag, TargetTrackingConfiguration, TargetTrackingMetricDataQuery,
    TargetTrackingMetricStat,
};
use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataOptionsRequest, RequestLaunchTemplateData, ResourceType, Tag,
    TagSpecification,
};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::aws::{Aws, DeleteError, Ids, NamesById, STACK_TAG};
use crate::config::{Config, InstanceSubnets};
use crate::model::{Kind, Observed, Props, Resource};
use crate::names::{
    asg_name, database_name, launch_template_name, queue_name, target_group_name,
    token_secret_name, Names, Tier,
};
use crate::userdata::{self, Release};

/// Group metrics collected: in-service instances feed the backlog-per-worker target; the
/// rest is for the dashboard and operators.
const GROUP_METRICS: [&str; 7] = [
    "GroupInServiceInstances",
    "GroupDesiredCapacity",
    "GroupMinSize",
    "GroupMaxSize",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
];

/// Debian's AWS account, which publishes the official Debian images.
const DEBIAN_OWNER: &str = "136693071363";

/// The worker's target-tracking metric, as the policy's `metrics` property: `id=` metric
/// (namespace:name:dimension=value:stat) or expression, `;`-separated, the expression last.
pub fn backlog_metrics(queue: &str, worker_group: &str) -> String {
    format!(
        "m1=AWS/SQS:ApproximateNumberOfMessagesVisible:QueueName={queue}:Sum;\
         m2=AWS/AutoScaling:GroupInServiceInstances:AutoScalingGroupName={worker_group}:Average;\
         e1=m1 / m2"
    )
}

/// Every instance's root volume: it holds staged uploads and the worker's scratch files, so
/// it is encrypted whatever the account's default says.
const ROOT_VOLUME: &str = "gp3 16 GiB encrypted";

/// The block device mapping of [`ROOT_VOLUME`], on the device the image boots from.
async fn root_volume(
    aws: &Aws,
    image: &str,
) -> anyhow::Result<aws_sdk_ec2::types::LaunchTemplateBlockDeviceMappingRequest> {
    let images = aws
        .ec2
        .describe_images()
        .image_ids(image)
        .send()
        .await
        .with_context(|| format!("describe image {image}"))?;
    let device = images
        .images()
        .first()
        .and_then(|i| i.root_device_name())
        .unwrap_or("/dev/xvda")
        .to_owned();
    Ok(
        aws_sdk_ec2::types::LaunchTemplateBlockDeviceMappingRequest::builder()
            .device_name(device)
            .ebs(
                aws_sdk_ec2::types::LaunchTemplateEbsBlockDeviceRequest::builder()
                    .volume_type(aws_sdk_ec2::types::VolumeType::Gp3)
                    .volume_size(16)
                    .encrypted(true)
                    .delete_on_termination(true)
                    .build(),
            )
            .build(),
    )
}

/// Launch templates, the two auto-scaling groups, and their scaling: target tracking on
/// the backlog per worker, and the seed's CPU steps for the web tier.
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
                ("root_volume", ROOT_VOLUME.into()),
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
        Kind::ScalingPolicy,
        n.of("worker-backlog"),
        &[
            ("group", worker.clone()),
            ("policy_type", "TargetTrackingScaling".into()),
            ("target", config.worker.backlog_per_instance.to_string()),
            ("metrics", backlog_metrics(&queue_name(&n.stack), &worker)),
        ],
    ));
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

/// The newest official Debian 12 amd64 image in the region.
pub async fn latest_debian_ami(aws: &Aws) -> anyhow::Result<String> {
    let images = aws
        .ec2
        .describe_images()
        .owners(DEBIAN_OWNER)
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("name")
                .values("debian-12-amd64-*")
                .build(),
        )
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("state")
                .values("available")
                .build(),
        )
        .send()
        .await
        .context("look up the Debian 12 image")?;
    let newest = images
        .images()
        .iter()
        .max_by_key(|i| i.creation_date().unwrap_or_default().to_owned());
    newest
        .and_then(|i| i.image_id())
        .map(str::to_owned)
        .context("no Debian 12 image found: set instances.ami in the configuration")
}

pub(crate) async fn observe(aws: &Aws, names: &NamesById) -> anyhow::Result<Vec<Observed>> {
    let mut out = Vec::new();
    let templates = aws
        .ec2
        .describe_launch_templates()
        .filters(aws.stack_filter())
        .send()
        .await
        .context("describe launch templates")?;
    for t in templates.launch_templates() {
        let id = t.launch_template_id().unwrap_or_default().to_owned();
        let versions = aws
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&id)
            .versions("$Latest")
            .send()
            .await
            .context("describe launch template versions")?;
        let Some(data) = versions
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
        else {
            continue;
        };
        let user_data = data
            .user_data()
            .and_then(|encoded| BASE64.decode(encoded).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let header = crate::userdata::header(&user_data);
        let header_value = |name: &str| header.get(name).cloned().unwrap_or_default();
        let root_volume = data
            .block_device_mappings()
            .iter()
            .find_map(|m| m.ebs())
            .map(|ebs| {
                format!(
                    "{} {} GiB{}",
                    ebs.volume_type().map(|t| t.as_str()).unwrap_or("?"),
                    ebs.volume_size().unwrap_or_default(),
                    if ebs.encrypted() == Some(true) {
                        " encrypted"
                    } else {
                        ""
                    }
                )
            })
            .unwrap_or_default();
        out.push(Observed {
            resource: Resource::new(
                Kind::LaunchTemplate,
                t.launch_template_name().unwrap_or_default(),
                &[
                    ("image", data.image_id().unwrap_or_default().into()),
                    ("root_volume", root_volume),
                    (
                        "instance_type",
                        data.instance_type()
                            .map(|t| t.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    (
                        "instance_profile",
                        data.iam_instance_profile()
                            .and_then(|p| p.name())
                            .unwrap_or_default()
                            .into(),
                    ),
                    (
                        "security_group",
                        data.security_group_ids()
                            .first()
                            .map(|g| names.name_of(g))
                            .unwrap_or_default(),
                    ),
                    (
                        "imds_tokens",
                        data.metadata_options()
                            .and_then(|m| m.http_tokens())
                            .map(|t| t.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    ("release", header_value("RELEASE")),
                    ("binary_sha256", header_value("BINARY_SHA256")),
                    ("database", header_value("DATABASE")),
                    ("queue", header_value("QUEUE")),
                    ("token_secret", header_value("TOKEN_SECRET")),
                    ("user_data", user_data),
                ],
            ),
            id,
        });
    }
    // Every group with the stack tag, so one the configuration no longer has shows up
    // as an orphan.
    let desired_groups: Vec<String> = ["web", "worker"]
        .iter()
        .map(|t| crate::names::asg_name(&aws.stack, t))
        .collect();
    let found = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .filters(
            aws_sdk_autoscaling::types::Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&aws.stack)
                .build(),
        )
        .send()
        .await
        .context("describe auto-scaling groups")?;
    for g in found.auto_scaling_groups() {
        let name = g.auto_scaling_group_name().unwrap_or_default().to_owned();
        let mut subnets: Vec<String> = g
            .vpc_zone_identifier()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|id| names.name_of(id))
            .collect();
        subnets.sort();
        let mut targets: Vec<String> = g
            .target_group_arns()
            .iter()
            .map(|a| names.name_of(a))
            .collect();
        targets.sort();
        out.push(Observed {
            // Desired capacity belongs to the autoscaler: it is not a property here.
            resource: Resource::new(
                Kind::AutoScalingGroup,
                &name,
                &[
                    (
                        "launch_template",
                        g.launch_template()
                            .and_then(|t| t.launch_template_name())
                            .unwrap_or_default()
                            .into(),
                    ),
                    ("min_size", g.min_size().unwrap_or_default().to_string()),
                    ("max_size", g.max_size().unwrap_or_default().to_string()),
                    ("subnets", subnets.join(",")),
                    (
                        "health_check",
                        g.health_check_type().unwrap_or_default().into(),
                    ),
                    ("target_groups", targets.join(",")),
                    (
                        "metrics_collection",
                        (!g.enabled_metrics().is_empty()).to_string(),
                    ),
                ],
            ),
            id: name.clone(),
        });
        if !desired_groups.contains(&name) {
            continue; // an orphan: its policies go with it
        }
        let policies = aws
            .autoscaling
            .describe_policies()
            .auto_scaling_group_name(&name)
            .send()
            .await
            .context("describe scaling policies")?;
        for p in policies.scaling_policies() {
            let mut props: Vec<(&str, String)> = vec![
                ("group", name.clone()),
                ("policy_type", p.policy_type().unwrap_or_default().into()),
            ];
            if let Some(tracking) = p.target_tracking_configuration() {
                props.push((
                    "target",
                    format_number(tracking.target_value().unwrap_or_default()),
                ));
                props.push((
                    "metrics",
                    tracking
                        .customized_metric_specification()
                        .map(metrics_property)
                        .unwrap_or_default(),
                ));
            } else {
                props.push((
                    "adjustment",
                    p.scaling_adjustment().unwrap_or_default().to_string(),
                ));
                props.push(("cooldown", p.cooldown().unwrap_or_default().to_string()));
            }
            out.push(Observed {
                resource: Resource::new(
                    Kind::ScalingPolicy,
                    p.policy_name().unwrap_or_default(),
                    &props,
                ),
                id: p.policy_arn().unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(out)
}

pub(crate) async fn put(
    aws: &Aws,
    kind: Kind,
    name: &str,
    id: Option<&str>,
    p: &Props,
    ids: &Ids,
) -> anyhow::Result<String> {
    match kind {
        Kind::LaunchTemplate => {
            let instance_tags =
                aws_sdk_ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key(STACK_TAG).value(&aws.stack).build())
                    .tags(
                        Tag::builder()
                            .key("Name")
                            .value(name.trim_end_matches("-template"))
                            .build(),
                    )
                    .build();
            let data = RequestLaunchTemplateData::builder()
                .image_id(&p["image"])
                .instance_type(aws_sdk_ec2::types::InstanceType::from(
                    p["instance_type"].as_str(),
                ))
                .iam_instance_profile(
                    LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                        .name(&p["instance_profile"])
                        .build(),
                )
                .security_group_ids(ids.id_of(&p["security_group"])?)
                // IMDSv2 only: credentials cannot be read by a forged request.
                .metadata_options(
                    LaunchTemplateInstanceMetadataOptionsRequest::builder()
                        .http_tokens(LaunchTemplateHttpTokensState::Required)
                        .build(),
                )
                .tag_specifications(instance_tags)
                .block_device_mappings(root_volume(aws, &p["image"]).await?)
                .user_data(BASE64.encode(&p["user_data"]))
                .build();
            match id {
                None => {
                    let created = aws
                        .ec2
                        .create_launch_template()
                        .launch_template_name(name)
                        .launch_template_data(data)
                        .tag_specifications(
                            TagSpecification::builder()
                                .resource_type(ResourceType::LaunchTemplate)
                                .tags(Tag::builder().key(STACK_TAG).value(&aws.stack).build())
                                .tags(Tag::builder().key("Name").value(name).build())
                                .build(),
                        )
                        .send()
                        .await?;
                    created
                        .launch_template()
                        .and_then(|t| t.launch_template_id())
                        .map(str::to_owned)
                        .context("no launch template id")
                }
                Some(id) => {
                    // A new version; the groups use $Latest, so new instances get it.
                    aws.ec2
                        .create_launch_template_version()
                        .launch_template_id(id)
                        .launch_template_data(data)
                        .send()
                        .await?;
                    Ok(id.to_owned())
                }
            }
        }
        Kind::AutoScalingGroup => {
            let template = LaunchTemplateSpecification::builder()
                .launch_template_name(&p["launch_template"])
                .version("$Latest")
                .build();
            let subnets: Vec<String> = p["subnets"]
                .split(',')
                .map(|name| ids.id_of(name))
                .collect::<anyhow::Result<_>>()?;
            let targets: Vec<String> = p["target_groups"]
                .split(',')
                .filter(|t| !t.is_empty())
                .map(|name| ids.id_of(name))
                .collect::<anyhow::Result<_>>()?;
            if id.is_none() {
                aws.autoscaling
                    .create_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(template)
                    .min_size(p["min_size"].parse()?)
                    .max_size(p["max_size"].parse()?)
                    .vpc_zone_identifier(subnets.join(","))
                    .health_check_type(&p["health_check"])
                    .health_check_grace_period(300)
                    .set_target_group_arns(Some(targets))
                    .tags(
                        AsgTag::builder()
                            .key(STACK_TAG)
                            .value(&aws.stack)
                            .propagate_at_launch(false)
                            .build(),
                    )
                    .send()
                    .await?;
            } else {
                aws.autoscaling
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(template)
                    .min_size(p["min_size"].parse()?)
                    .max_size(p["max_size"].parse()?)
                    .vpc_zone_identifier(subnets.join(","))
                    .health_check_type(&p["health_check"])
                    .send()
                    .await?;
                if !targets.is_empty() {
                    aws.autoscaling
                        .attach_load_balancer_target_groups()
                        .auto_scaling_group_name(name)
                        .set_target_group_arns(Some(targets))
                        .send()
                        .await?;
                }
            }
            // Group metrics feed the backlog-per-instance target and the dashboard.
            aws.autoscaling
                .enable_metrics_collection()
                .auto_scaling_group_name(name)
                .granularity("1Minute")
                .set_metrics(Some(GROUP_METRICS.iter().map(|m| m.to_string()).collect()))
                .send()
                .await?;
            Ok(name.to_owned())
        }
        Kind::ScalingPolicy => {
            let mut put = aws
                .autoscaling
                .put_scaling_policy()
                .auto_scaling_group_name(&p["group"])
                .policy_name(name)
                .policy_type(&p["policy_type"]);
            if p["policy_type"] == "TargetTrackingScaling" {
                put = put.target_tracking_configuration(
                    TargetTrackingConfiguration::builder()
                        .target_value(p["target"].parse()?)
                        .customized_metric_specification(metric_math(&p["metrics"])?)
                        .build(),
                );
            } else {
                put = put
                    .adjustment_type("ChangeInCapacity")
                    .scaling_adjustment(p["adjustment"].parse()?)
                    .cooldown(p["cooldown"].parse()?);
            }
            let created = put.send().await?;
            Ok(created.policy_arn().unwrap_or(name).to_owned())
        }
        other => anyhow::bail!("{other} is not a compute resource"),
    }
}

pub(crate) async fn delete(aws: &Aws, kind: Kind, name: &str, id: &str) -> Result<(), DeleteError> {
    match kind {
        Kind::LaunchTemplate => aws
            .ec2
            .delete_launch_template()
            .launch_template_id(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        Kind::ScalingPolicy => Ok(()), // deleted with its group
        Kind::AutoScalingGroup => {
            // force_delete terminates the instances too; then wait until the group is gone.
            aws.autoscaling
                .delete_auto_scaling_group()
                .auto_scaling_group_name(name)
                .force_delete(true)
                .send()
                .await
                .map_err(DeleteError::from_sdk)?;
            let started = Instant::now();
            loop {
                let found = aws
                    .autoscaling
                    .describe_auto_scaling_groups()
                    .auto_scaling_group_names(name)
                    .send()
                    .await
                    .map_err(DeleteError::from_sdk)?;
                if found.auto_scaling_groups().is_empty() {
                    return Ok(());
                }
                eprintln!(
                    "  waiting for {name} and its instances to terminate ({:.0} s so far)",
                    started.elapsed().as_secs_f64()
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
        other => Err(DeleteError::Other(anyhow::anyhow!(
            "{other} is not a compute resource"
        ))),
    }
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        value.to_string()
    }
}

/// The `metrics` property (see [`backlog_metrics`]) as the API's metric queries.
pub fn metric_math(spec: &str) -> anyhow::Result<CustomizedMetricSpecification> {
    let mut queries = Vec::new();
    for part in spec.split(';') {
        let (id, rest) = part
            .split_once('=')
            .with_context(|| format!("bad metric query {part}"))?;
        let query = match rest.split(':').collect::<Vec<_>>()[..] {
            [namespace, metric, dimension, stat] => {
                let (dimension, value) = dimension
                    .split_once('=')
                    .with_context(|| format!("bad dimension in {part}"))?;
                let metric = Metric::builder()
                    .namespace(namespace)
                    .metric_name(metric)
                    .dimensions(
                        MetricDimension::builder()
                            .name(dimension)
                            .value(value)
                            .build(),
                    )
                    .build();
                TargetTrackingMetricDataQuery::builder()
                    .id(id)
                    .metric_stat(
                        TargetTrackingMetricStat::builder()
                            .metric(metric)
                            .stat(stat)
                            .build(),
                    )
                    .return_data(false)
                    .build()
            }
            _ => TargetTrackingMetricDataQuery::builder()
                .id(id)
                .expression(rest)
                .label("videos waiting per worker")
                .return_data(true)
                .build(),
        };
        queries.push(query);
    }
    Ok(CustomizedMetricSpecification::builder()
        .set_metrics(Some(queries))
        .build())
}

/// The inverse of [`metric_math`], for comparing what AWS holds.
fn metrics_property(spec: &CustomizedMetricSpecification) -> String {
    spec.metrics()
        .iter()
        .map(|q| {
            let id = q.id().unwrap_or_default();
            match (q.metric_stat(), q.expression()) {
                (Some(stat), _) => {
                    let metric = stat.metric();
                    let dimension = metric
                        .and_then(|m| m.dimensions().first())
                        .map(|d| {
                            format!(
                                "{}={}",
                                d.name().unwrap_or_default(),
                                d.value().unwrap_or_default()
                            )
                        })
                        .unwrap_or_default();
                    format!(
                        "{id}={}:{}:{dimension}:{}",
                        metric.and_then(|m| m.namespace()).unwrap_or_default(),
                        metric.and_then(|m| m.metric_name()).unwrap_or_default(),
                        stat.stat().unwrap_or_default()
                    )
                }
                (None, Some(expression)) => format!("{id}={expression}"),
                (None, None) => id.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_metric_math_round_trips() {
        let spec = backlog_metrics("anb-video-processing", "anb-worker-asg");
        let queries = metric_math(&spec).unwrap();
        assert_eq!(queries.metrics().len(), 3);
        let expression = &queries.metrics()[2];
        assert_eq!(
            (expression.id(), expression.expression()),
            (Some("e1"), Some("m1 / m2"))
        );
        assert_eq!(expression.return_data(), Some(true));
        assert_eq!(metrics_property(&queries), spec);
    }

    #[test]
    fn whole_numbers_print_without_decimals() {
        assert_eq!(format_number(2.0), "2");
        assert_eq!(format_number(2.5), "2.5");
    }
}
