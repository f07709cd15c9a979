//! The application load balancer, its target group and its HTTP listener.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_elasticloadbalancingv2::types::{
    Action as ListenerAction, ActionTypeEnum, LoadBalancerSchemeEnum, LoadBalancerTypeEnum,
    ProtocolEnum, Tag, TargetTypeEnum,
};

use crate::aws::{Aws, Ids, NamesById, STACK_TAG};
use crate::model::{Change, Kind, Observed, Props, Resource};
use crate::names::{load_balancer_name, target_group_name, Names};

/// The TLS policy of the HTTPS listener: TLS 1.3 and 1.2 with forward-secret ciphers only,
/// pinned rather than whatever AWS defaults to for listeners made through its API.
const TLS_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";

/// Load-balancer attribute: requests with header names that are not valid HTTP are
/// dropped at the ALB instead of being passed to nginx.
const DROP_INVALID_HEADERS: &str = "routing.http.drop_invalid_header_fields.enabled";
/// On: a stray `aws elbv2 delete-load-balancer` (or another tool) cannot take the stack's
/// front door away (review 3, N21); `down` turns it off just before it deletes.
const DELETION_PROTECTION: &str = "deletion_protection.enabled";
const ACCESS_LOGS: &str = "access_logs.s3.enabled";
const ACCESS_LOGS_BUCKET: &str = "access_logs.s3.bucket";
const ACCESS_LOGS_PREFIX: &str = "access_logs.s3.prefix";
/// The `access_logs` property when the load balancer keeps none; else `s3://bucket/prefix`.
const ACCESS_LOGS_OFF: &str = "off";

/// The ALB in the public subnets, forwarding HTTP to the web tier's target group, which
/// checks `/api/health/live` every 30 s: liveness only, so a database failover does not
/// make the web group replace every instance (`/api/health` stays for monitoring).
/// The load balancer and what goes with it; with `access_logs_bucket`, it logs every
/// request there, under [`super::bucket::ACCESS_LOGS_PREFIX`].
pub(crate) fn desired(
    n: &Names,
    vpc: &str,
    certificate: &str,
    access_logs_bucket: Option<&str>,
) -> Vec<Resource> {
    let access_logs = access_logs_bucket.map_or_else(
        || ACCESS_LOGS_OFF.to_owned(),
        |bucket| format!("s3://{bucket}/{}", super::bucket::ACCESS_LOGS_PREFIX),
    );
    let (lb, targets) = (load_balancer_name(&n.stack), target_group_name(&n.stack));
    let mut out = vec![
        Resource::new(
            Kind::TargetGroup,
            &targets,
            &[
                ("vpc", vpc.to_owned()),
                ("protocol", "HTTP".into()),
                ("port", "80".into()),
                ("health_check_path", "/api/health/live".into()),
                ("health_check_interval", "30".into()),
            ],
        ),
        Resource::new(
            Kind::LoadBalancer,
            &lb,
            &[
                ("scheme", "internet-facing".into()),
                (
                    "subnets",
                    format!("{},{}", n.of("public-a"), n.of("public-b")),
                ),
                ("security_groups", n.of("alb")),
                ("drop_invalid_header_fields", "true".into()),
                ("deletion_protection", "true".into()),
                ("access_logs", access_logs),
            ],
        ),
    ];
    let http = |action: (&str, String)| {
        Resource::new(
            Kind::Listener,
            n.of("http-80"),
            &[
                ("load_balancer", lb.clone()),
                ("protocol", "HTTP".into()),
                ("port", "80".into()),
                action,
            ],
        )
    };
    if certificate.is_empty() {
        out.push(http(("forward_to", targets)));
    } else {
        out.push(http(("redirect_to", "HTTPS:443".into())));
        out.push(Resource::new(
            Kind::Listener,
            n.of("https-443"),
            &[
                ("load_balancer", lb.clone()),
                ("protocol", "HTTPS".into()),
                ("port", "443".into()),
                ("certificate", certificate.to_owned()),
                ("ssl_policy", TLS_POLICY.into()),
                ("forward_to", targets),
            ],
        ));
    }
    out
}

fn elb_tags(aws: &Aws, name: &str) -> [Tag; 2] {
    [
        Tag::builder().key(STACK_TAG).value(&aws.stack).build(),
        Tag::builder().key("Name").value(name).build(),
    ]
}

/// The ARNs among `arns` that carry the stack tag (20 per call, the API's limit).
async fn with_stack_tag<'a>(
    aws: &Aws,
    arns: impl Iterator<Item = &'a str>,
) -> anyhow::Result<std::collections::HashSet<String>> {
    let arns: Vec<&str> = arns.collect();
    let mut tagged = std::collections::HashSet::new();
    for chunk in arns.chunks(20) {
        let described = aws
            .elb
            .describe_tags()
            .set_resource_arns(Some(chunk.iter().map(|a| a.to_string()).collect()))
            .send()
            .await
            .context("describe load-balancing tags")?;
        for description in described.tag_descriptions() {
            let ours = description
                .tags()
                .iter()
                .any(|t| aws.is_stack_tag(t.key(), t.value()));
            if ours {
                tagged.extend(description.resource_arn().map(str::to_owned));
            }
        }
    }
    Ok(tagged)
}

/// The load balancer, target group and listener named after the stack. `names` maps
/// the ids of already observed resources (subnets, groups, VPC) to their names.
pub(crate) async fn observe(aws: &Aws, names: &NamesById) -> anyhow::Result<Vec<Observed>> {
    let mut out = Vec::new();
    // Everything with the stack tag (these calls cannot filter by tag), so what the
    // configuration no longer names shows up as an orphan.
    let all_groups: Vec<_> = aws
        .elb
        .describe_target_groups()
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .context("describe target groups")?
        .iter()
        .flat_map(|p| p.target_groups().to_vec())
        .collect();
    let tagged =
        with_stack_tag(aws, all_groups.iter().filter_map(|g| g.target_group_arn())).await?;
    let groups: Vec<_> = all_groups
        .into_iter()
        .filter(|g| tagged.contains(g.target_group_arn().unwrap_or_default()))
        .collect();
    let mut arn_names: HashMap<String, String> = HashMap::new();
    for g in &groups {
        let arn = g.target_group_arn().unwrap_or_default().to_owned();
        arn_names.insert(
            arn.clone(),
            g.target_group_name().unwrap_or_default().to_owned(),
        );
        out.push(Observed {
            resource: Resource::new(
                Kind::TargetGroup,
                g.target_group_name().unwrap_or_default(),
                &[
                    ("vpc", names.name_of(g.vpc_id().unwrap_or_default())),
                    (
                        "protocol",
                        g.protocol()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    ("port", g.port().unwrap_or_default().to_string()),
                    (
                        "health_check_path",
                        g.health_check_path().unwrap_or_default().to_owned(),
                    ),
                    (
                        "health_check_interval",
                        g.health_check_interval_seconds()
                            .unwrap_or_default()
                            .to_string(),
                    ),
                ],
            ),
            id: arn,
        });
    }
    let balancer_name = load_balancer_name(&aws.stack);
    let all_balancers: Vec<_> = aws
        .elb
        .describe_load_balancers()
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .context("describe load balancers")?
        .iter()
        .flat_map(|p| p.load_balancers().to_vec())
        .collect();
    let tagged = with_stack_tag(
        aws,
        all_balancers.iter().filter_map(|lb| lb.load_balancer_arn()),
    )
    .await?;
    let balancers: Vec<_> = all_balancers
        .into_iter()
        .filter(|lb| tagged.contains(lb.load_balancer_arn().unwrap_or_default()))
        .collect();
    for lb in &balancers {
        let arn = lb.load_balancer_arn().unwrap_or_default().to_owned();
        let mut subnets: Vec<String> = lb
            .availability_zones()
            .iter()
            .filter_map(|z| z.subnet_id())
            .map(|id| names.name_of(id))
            .collect();
        subnets.sort();
        let mut groups: Vec<String> = lb
            .security_groups()
            .iter()
            .map(|g| names.name_of(g))
            .collect();
        groups.sort();
        let attributes = aws
            .elb
            .describe_load_balancer_attributes()
            .load_balancer_arn(&arn)
            .send()
            .await
            .context("describe load balancer attributes")?;
        let attribute = |key: &str| {
            attributes
                .attributes()
                .iter()
                .find(|a| a.key() == Some(key))
                .and_then(|a| a.value())
                .unwrap_or("false")
                .to_owned()
        };
        let drop_invalid_headers = attribute(DROP_INVALID_HEADERS);
        let deletion_protection = attribute(DELETION_PROTECTION);
        let access_logs = if attribute(ACCESS_LOGS) == "true" {
            format!(
                "s3://{}/{}",
                attribute(ACCESS_LOGS_BUCKET),
                attribute(ACCESS_LOGS_PREFIX)
            )
        } else {
            ACCESS_LOGS_OFF.to_owned()
        };
        out.push(Observed {
            resource: Resource::new(
                Kind::LoadBalancer,
                lb.load_balancer_name().unwrap_or_default(),
                &[
                    (
                        "scheme",
                        lb.scheme()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    ("subnets", subnets.join(",")),
                    ("security_groups", groups.join(",")),
                    ("drop_invalid_header_fields", drop_invalid_headers),
                    ("deletion_protection", deletion_protection),
                    ("access_logs", access_logs),
                ],
            ),
            id: arn.clone(),
        });
        if lb.load_balancer_name() != Some(&balancer_name) {
            continue; // an orphan: its listeners go with it
        }
        let listeners = aws
            .elb
            .describe_listeners()
            .load_balancer_arn(&arn)
            .send()
            .await
            .context("describe listeners")?;
        for l in listeners.listeners() {
            let forward = l
                .default_actions()
                .iter()
                .find_map(|a| a.target_group_arn())
                .map(|a| arn_names.get(a).cloned().unwrap_or_else(|| a.to_owned()))
                .unwrap_or_default();
            let port = l.port().unwrap_or_default();
            let mut props = vec![
                ("load_balancer", balancer_name.clone()),
                (
                    "protocol",
                    l.protocol()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                ),
                ("port", port.to_string()),
            ];
            let redirect = l.default_actions().iter().find_map(|a| a.redirect_config());
            match redirect {
                Some(r) => props.push((
                    "redirect_to",
                    format!(
                        "{}:{}",
                        r.protocol().unwrap_or_default(),
                        r.port().unwrap_or_default()
                    ),
                )),
                None => props.push(("forward_to", forward)),
            }
            if let Some(certificate) = l.certificates().first().and_then(|c| c.certificate_arn()) {
                props.push(("certificate", certificate.to_owned()));
            }
            if let Some(policy) = l.ssl_policy() {
                props.push(("ssl_policy", policy.to_owned()));
            }
            let name = match port {
                443 => format!("{}-https-443", aws.stack),
                _ => format!("{}-http-{port}", aws.stack),
            };
            out.push(Observed {
                resource: Resource::new(Kind::Listener, name, &props),
                id: l.listener_arn().unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(out)
}

pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let (kind, name, p) = (change.kind, change.name.as_str(), &change.desired);
    match kind {
        Kind::TargetGroup => {
            let [stack_tag, name_tag] = elb_tags(aws, name);
            let created = aws
                .elb
                .create_target_group()
                .name(name)
                .protocol(ProtocolEnum::from(p["protocol"].as_str()))
                .port(p["port"].parse()?)
                .vpc_id(ids.id_of(&p["vpc"])?)
                .target_type(TargetTypeEnum::Instance)
                .health_check_path(&p["health_check_path"])
                .health_check_interval_seconds(p["health_check_interval"].parse()?)
                .tags(stack_tag)
                .tags(name_tag)
                .send()
                .await?;
            created
                .target_groups()
                .first()
                .and_then(|g| g.target_group_arn())
                .map(str::to_owned)
                .context("no target group arn")
        }
        Kind::LoadBalancer => {
            let [stack_tag, name_tag] = elb_tags(aws, name);
            let mut create = aws
                .elb
                .create_load_balancer()
                .name(name)
                .r#type(LoadBalancerTypeEnum::Application)
                .scheme(LoadBalancerSchemeEnum::from(p["scheme"].as_str()))
                .tags(stack_tag)
                .tags(name_tag);
            for subnet in p["subnets"].split(',') {
                create = create.subnets(ids.id_of(subnet)?);
            }
            for group in p["security_groups"].split(',') {
                create = create.security_groups(ids.id_of(group)?);
            }
            let created = create.send().await?;
            let arn = created
                .load_balancers()
                .first()
                .and_then(|l| l.load_balancer_arn())
                .map(str::to_owned)
                .context("no load balancer arn")?;
            set_attributes(aws, &arn, p).await?;
            Ok(arn)
        }
        Kind::Listener => {
            let created = aws
                .elb
                .create_listener()
                .load_balancer_arn(ids.id_of(&p["load_balancer"])?)
                .protocol(ProtocolEnum::from(p["protocol"].as_str()))
                .port(p["port"].parse()?)
                .default_actions(default_action(p, ids)?)
                .set_certificates(certificates(p))
                .set_ssl_policy(p.get("ssl_policy").cloned())
                .send()
                .await?;
            created
                .listeners()
                .first()
                .and_then(|l| l.listener_arn())
                .map(str::to_owned)
                .context("no listener arn")
        }
        other => anyhow::bail!("{other} is not a load-balancing resource"),
    }
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    let (kind, p) = (change.kind, &change.desired);
    match kind {
        Kind::TargetGroup => {
            aws.elb
                .modify_target_group()
                .target_group_arn(id)
                .health_check_path(&p["health_check_path"])
                .health_check_interval_seconds(p["health_check_interval"].parse()?)
                .send()
                .await?;
        }
        Kind::LoadBalancer => {
            let subnets: Vec<String> = p["subnets"]
                .split(',')
                .map(|name| ids.id_of(name))
                .collect::<anyhow::Result<_>>()?;
            let groups: Vec<String> = p["security_groups"]
                .split(',')
                .map(|name| ids.id_of(name))
                .collect::<anyhow::Result<_>>()?;
            aws.elb
                .set_subnets()
                .load_balancer_arn(id)
                .set_subnets(Some(subnets))
                .send()
                .await?;
            aws.elb
                .set_security_groups()
                .load_balancer_arn(id)
                .set_security_groups(Some(groups))
                .send()
                .await?;
            set_attributes(aws, id, p).await?;
        }
        Kind::Listener => {
            aws.elb
                .modify_listener()
                .listener_arn(id)
                .default_actions(default_action(p, ids)?)
                .set_certificates(certificates(p))
                .set_ssl_policy(p.get("ssl_policy").cloned())
                .send()
                .await?;
        }
        other => anyhow::bail!("{other} is not a load-balancing resource"),
    }
    Ok(())
}

pub(crate) async fn delete(aws: &Aws, kind: Kind, id: &str) -> Result<(), crate::aws::DeleteError> {
    use crate::aws::DeleteError;
    match kind {
        Kind::Listener => aws
            .elb
            .delete_listener()
            .listener_arn(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        Kind::LoadBalancer => {
            // AWS refuses to delete a protected load balancer (OperationNotPermitted).
            aws.elb
                .modify_load_balancer_attributes()
                .load_balancer_arn(id)
                .attributes(attribute(DELETION_PROTECTION, "false"))
                .send()
                .await
                .map_err(DeleteError::from_sdk)?;
            aws.elb
                .delete_load_balancer()
                .load_balancer_arn(id)
                .send()
                .await
                .map(drop)
                .map_err(DeleteError::from_sdk)
        }
        Kind::TargetGroup => aws
            .elb
            .delete_target_group()
            .target_group_arn(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        other => Err(DeleteError::Other(anyhow::anyhow!(
            "{other} is not a load-balancing resource"
        ))),
    }
}

fn attribute(
    key: &str,
    value: &str,
) -> aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute {
    aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute::builder()
        .key(key)
        .value(value)
        .build()
}

async fn set_attributes(aws: &Aws, arn: &str, p: &Props) -> anyhow::Result<()> {
    let request = aws
        .elb
        .modify_load_balancer_attributes()
        .load_balancer_arn(arn)
        .attributes(attribute(
            DROP_INVALID_HEADERS,
            &p["drop_invalid_header_fields"],
        ))
        .attributes(attribute(DELETION_PROTECTION, &p["deletion_protection"]));
    access_log_attributes(&p["access_logs"])
        .into_iter()
        .fold(request, |request, a| request.attributes(a))
        .send()
        .await
        .context("set the load balancer's attributes")?;
    Ok(())
}

/// The attributes for the `access_logs` property: `s3://bucket/prefix`, or off.
fn access_log_attributes(
    access_logs: &str,
) -> Vec<aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute> {
    match access_logs.strip_prefix("s3://") {
        Some(place) => {
            let (bucket, prefix) = place.split_once('/').unwrap_or((place, ""));
            vec![
                attribute(ACCESS_LOGS, "true"),
                attribute(ACCESS_LOGS_BUCKET, bucket),
                attribute(ACCESS_LOGS_PREFIX, prefix),
            ]
        }
        None => vec![attribute(ACCESS_LOGS, "false")],
    }
}

/// Forward to the target group, or redirect ("HTTPS:443") when HTTPS is configured.
fn default_action(p: &Props, ids: &Ids) -> anyhow::Result<ListenerAction> {
    if let Some(redirect) = p.get("redirect_to") {
        let (protocol, port) = redirect.split_once(':').context("bad redirect")?;
        let config = aws_sdk_elasticloadbalancingv2::types::RedirectActionConfig::builder()
            .protocol(protocol)
            .port(port)
            .status_code(
                aws_sdk_elasticloadbalancingv2::types::RedirectActionStatusCodeEnum::Http301,
            )
            .build();
        return Ok(ListenerAction::builder()
            .r#type(ActionTypeEnum::Redirect)
            .redirect_config(config)
            .build());
    }
    Ok(forward(&ids.id_of(&p["forward_to"])?))
}

fn certificates(p: &Props) -> Option<Vec<aws_sdk_elasticloadbalancingv2::types::Certificate>> {
    p.get("certificate").map(|arn| {
        vec![
            aws_sdk_elasticloadbalancingv2::types::Certificate::builder()
                .certificate_arn(arn)
                .build(),
        ]
    })
}

fn forward(target_group_arn: &str) -> ListenerAction {
    ListenerAction::builder()
        .r#type(ActionTypeEnum::Forward)
        .target_group_arn(target_group_arn)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            stack: "anb".into(),
        }
    }

    fn listeners(resources: &[Resource]) -> Vec<&Resource> {
        resources
            .iter()
            .filter(|r| r.kind == Kind::Listener)
            .collect()
    }

    #[test]
    fn without_a_certificate_port_80_forwards_to_the_web_tier() {
        let resources = desired(&names(), "anb-vpc", "", None);
        let [http] = listeners(&resources)[..] else {
            panic!("one listener expected")
        };
        assert_eq!(http.props["forward_to"], target_group_name("anb"));
        assert!(!http.props.contains_key("redirect_to"));
        let ids: Ids = [(target_group_name("anb"), "arn:tg".to_owned())]
            .into_iter()
            .collect();
        let action = default_action(&http.props, &ids).unwrap();
        assert_eq!(action.r#type(), Some(&ActionTypeEnum::Forward));
        assert_eq!(action.target_group_arn(), Some("arn:tg"));
        assert!(certificates(&http.props).is_none());
    }

    #[test]
    fn with_a_certificate_port_80_redirects_and_443_forwards_under_the_pinned_policy() {
        let resources = desired(&names(), "anb-vpc", "arn:aws:acm:cert", None);
        let [http, https] = listeners(&resources)[..] else {
            panic!("two listeners expected")
        };
        let redirect = default_action(&http.props, &Ids::default()).unwrap();
        let config = redirect.redirect_config().unwrap();
        assert_eq!(
            (config.protocol(), config.port()),
            (Some("HTTPS"), Some("443"))
        );
        assert_eq!(https.props["ssl_policy"], TLS_POLICY);
        assert_eq!(https.props["forward_to"], target_group_name("anb"));
        let certificates = certificates(&https.props).unwrap();
        assert_eq!(certificates[0].certificate_arn(), Some("arn:aws:acm:cert"));
    }

    #[test]
    fn the_health_check_asks_only_whether_the_process_lives() {
        let resources = desired(&names(), "anb-vpc", "", None);
        let targets = resources
            .iter()
            .find(|r| r.kind == Kind::TargetGroup)
            .unwrap();
        // Not /api/health: a database failover must not make the group replace every instance.
        assert_eq!(targets.props["health_check_path"], "/api/health/live");
        let lb = resources
            .iter()
            .find(|r| r.kind == Kind::LoadBalancer)
            .unwrap();
        assert_eq!(lb.props["deletion_protection"], "true");
        assert_eq!(lb.props["drop_invalid_header_fields"], "true");
        assert_eq!(lb.props["subnets"], "anb-public-a,anb-public-b");
    }

    #[test]
    fn access_logs_go_to_the_bucket_under_their_prefix_or_are_off() {
        let resources = desired(&names(), "anb-vpc", "", Some("anb-videos"));
        let lb = resources
            .iter()
            .find(|r| r.kind == Kind::LoadBalancer)
            .unwrap();
        let on = access_log_attributes(&lb.props["access_logs"]);
        let attributes: Vec<(&str, &str)> = on
            .iter()
            .map(|a| (a.key().unwrap(), a.value().unwrap()))
            .collect();
        assert_eq!(
            attributes,
            [
                (ACCESS_LOGS, "true"),
                (ACCESS_LOGS_BUCKET, "anb-videos"),
                (ACCESS_LOGS_PREFIX, super::super::bucket::ACCESS_LOGS_PREFIX),
            ]
        );
        let off = access_log_attributes(ACCESS_LOGS_OFF);
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].value(), Some("false"));
    }
}
