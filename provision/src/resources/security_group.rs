//! Security groups: their ingress rules as one comparable string, sorted
//! `proto:port from source` joined by `;`, where the source is a CIDR or another group's
//! logical name. [`rules`] writes that format for the desired state and [`observed`] reads
//! AWS's groups back into it; `create`/`update` turn it into AWS permissions.

use anyhow::Context;
use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, SecurityGroup, UserIdGroupPair};

use crate::aws::{
    error_kind, observed as observed_resource, Aws, DeleteError, ErrorKind, Ids, NamesById,
};
use crate::model::{Action, Change, Kind, Observed, Resource};
use crate::names::Names;

/// Rules as one comparable string: sorted `proto:port from source`.
pub fn rules(rules: &[(u16, &str)]) -> String {
    let mut rules: Vec<String> = rules
        .iter()
        .map(|(port, from)| format!("tcp:{port} from {from}"))
        .collect();
    rules.sort();
    rules.join(";")
}

/// The seed's four groups: the load balancer open on 80/443, the web tier reachable only
/// from it, the worker with no inbound rule, the database only from web and worker.
pub(crate) fn desired(n: &Names) -> Vec<Resource> {
    let vpc = n.of("vpc");
    let mut out = Vec::new();
    let (alb, web, worker, db) = (n.of("alb"), n.of("web"), n.of("worker"), n.of("db"));
    for (name, description, ingress) in [
        (
            &alb,
            "load balancer: HTTP and HTTPS from anywhere",
            rules(&[(80, "0.0.0.0/0"), (443, "0.0.0.0/0")]),
        ),
        (
            &web,
            "web tier: HTTP from the load balancer only",
            rules(&[(80, &alb)]),
        ),
        (&worker, "worker tier: no inbound traffic", String::new()),
        (
            &db,
            "database: PostgreSQL from the web and worker tiers",
            rules(&[(5432, &web), (5432, &worker)]),
        ),
    ] {
        out.push(Resource::new(
            Kind::SecurityGroup,
            name.clone(),
            &[
                ("vpc", vpc.clone()),
                ("description", description.into()),
                ("ingress", ingress),
            ],
        ));
    }
    out
}

/// AWS's view of the stack's groups, in the desired state's terms (names, not ids).
pub(crate) fn observed(groups: &[SecurityGroup], names: &NamesById) -> Vec<Observed> {
    let named = |id: Option<&str>| id.map(|id| names.name_of(id)).unwrap_or_default();
    let name_of = |g: &SecurityGroup| {
        g.tags()
            .iter()
            .find(|t| t.key() == Some("Name"))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_owned()
    };
    let mut out = Vec::new();
    for g in groups {
        let mut rules = Vec::new();
        for p in g.ip_permissions() {
            let port = p.from_port().unwrap_or(-1);
            let proto = p.ip_protocol().unwrap_or_default();
            for range in p.ip_ranges() {
                rules.push(format!(
                    "{proto}:{port} from {}",
                    range.cidr_ip().unwrap_or_default()
                ));
            }
            for pair in p.user_id_group_pairs() {
                rules.push(format!("{proto}:{port} from {}", named(pair.group_id())));
            }
        }
        rules.sort();
        out.push(observed_resource(
            Kind::SecurityGroup,
            name_of(g),
            g.group_id().unwrap_or_default().into(),
            &[
                ("vpc", named(g.vpc_id())),
                ("description", g.description().unwrap_or_default().into()),
                ("ingress", rules.join(";")),
            ],
        ));
    }
    out
}

pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let p = &change.desired;
    let name = change.name.as_str();
    let group = aws
        .ec2
        .create_security_group()
        .group_name(name)
        .description(&p["description"])
        .vpc_id(ids.id_of(&p["vpc"])?)
        .tag_specifications(aws.tags(ResourceType::SecurityGroup, name))
        .send()
        .await?;
    let id = group.group_id().context("no group id")?.to_owned();
    let rules: Vec<&str> = p["ingress"].split(';').filter(|r| !r.is_empty()).collect();
    authorize(aws, &id, &rules, ids).await?;
    Ok(id)
}

/// Authorizes the rules the group lacks and revokes those it should not have.
pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    let Action::Update(fields) = &change.action else {
        return Ok(());
    };
    let Some(ingress) = fields.iter().find(|f| f.field == "ingress") else {
        return Ok(());
    };
    let want: Vec<&str> = ingress
        .new
        .as_deref()
        .unwrap_or_default()
        .split(';')
        .filter(|r| !r.is_empty())
        .collect();
    let have: Vec<&str> = ingress
        .old
        .as_deref()
        .unwrap_or_default()
        .split(';')
        .filter(|r| !r.is_empty())
        .collect();
    let missing: Vec<&str> = want.iter().copied().filter(|r| !have.contains(r)).collect();
    let extra: Vec<&str> = have.iter().copied().filter(|r| !want.contains(r)).collect();
    authorize(aws, id, &missing, ids).await?;
    revoke(aws, id, &extra, ids).await
}

pub(crate) async fn delete(aws: &Aws, id: &str) -> Result<(), DeleteError> {
    aws.ec2
        .delete_security_group()
        .group_id(id)
        .send()
        .await
        .map(drop)
        .map_err(DeleteError::from_sdk)
}

/// One rule (`proto:port from source`) as an AWS permission; a source that is not a CIDR
/// is another group, by logical name.
fn permission(rule: &str, ids: &Ids) -> anyhow::Result<IpPermission> {
    // "tcp:80 from 0.0.0.0/0" or "tcp:5432 from anb-web"
    let (proto_port, source) = rule
        .split_once(" from ")
        .with_context(|| format!("bad rule {rule}"))?;
    let (proto, port) = proto_port
        .split_once(':')
        .with_context(|| format!("bad rule {rule}"))?;
    let port: i32 = port
        .parse()
        .with_context(|| format!("bad port in {rule}"))?;
    let builder = IpPermission::builder()
        .ip_protocol(proto)
        .from_port(port)
        .to_port(port);
    Ok(if source.contains('/') {
        builder
            .ip_ranges(IpRange::builder().cidr_ip(source).build())
            .build()
    } else {
        let group = ids.get(source).unwrap_or(source);
        builder
            .user_id_group_pairs(UserIdGroupPair::builder().group_id(group).build())
            .build()
    })
}

async fn authorize(aws: &Aws, group: &str, rules: &[&str], ids: &Ids) -> anyhow::Result<()> {
    for rule in rules {
        let result = aws
            .ec2
            .authorize_security_group_ingress()
            .group_id(group)
            .ip_permissions(permission(rule, ids)?)
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if error_kind(&e) == ErrorKind::Duplicate => {} // already there
            Err(e) => return Err(e).with_context(|| format!("authorize {rule}")),
        }
    }
    Ok(())
}

async fn revoke(aws: &Aws, group: &str, rules: &[&str], ids: &Ids) -> anyhow::Result<()> {
    for rule in rules {
        let result = aws
            .ec2
            .revoke_security_group_ingress()
            .group_id(group)
            .ip_permissions(permission(rule, ids)?)
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if error_kind(&e) == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("revoke {rule}")),
        }
    }
    Ok(())
}

/// Removes every ingress rule of the stack's security groups that names another
/// group, so the groups can then be deleted in any order.
pub(crate) async fn revoke_cross_references(aws: &Aws) -> anyhow::Result<()> {
    let groups = aws
        .ec2
        .describe_security_groups()
        .filters(aws.stack_filter())
        .send()
        .await?;
    for group in groups.security_groups() {
        let referencing: Vec<IpPermission> = group
            .ip_permissions()
            .iter()
            .filter(|p| !p.user_id_group_pairs().is_empty())
            .cloned()
            .collect();
        if referencing.is_empty() {
            continue;
        }
        aws.ec2
            .revoke_security_group_ingress()
            .group_id(group.group_id().unwrap_or_default())
            .set_ip_permissions(Some(referencing))
            .send()
            .await?;
    }
    Ok(())
}
