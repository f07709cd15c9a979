//! Security groups: their rules as comparable strings, sorted `proto:ports from source`
//! (ingress) and `proto:ports to destination` (egress) joined by `;`. A port range is
//! `80` or `0-65535` (`all` for every port), a protocol `tcp`, `udp`, `icmp` or `all`, and
//! a source an IPv4 or IPv6 CIDR, a prefix list (`pl-…`) or another group's logical name,
//! so every rule AWS can hold is seen and a rule added by hand is drift. [`rules`] writes
//! the format for the desired state, [`observed`] and [`encode`] read AWS's rules into it,
//! [`permission`] turns it back into an AWS permission. Rules are revoked by rule id, then
//! read again: a rule that survives its revoke is an error.

use anyhow::Context;
use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, Ipv6Range, PrefixListId, ResourceType, SecurityGroup,
    SecurityGroupRule, UserIdGroupPair,
};

use crate::aws::{
    error_kind, observed as observed_resource, Aws, DeleteError, ErrorKind, Ids, NamesById,
};
use crate::model::{Action, Change, Kind, Observed, Resource};
use crate::names::Names;

/// TCP ingress rules as one comparable string: sorted `tcp:port from source`.
pub fn rules(rules: &[(u16, &str)]) -> String {
    let mut rules: Vec<String> = rules
        .iter()
        .map(|(port, from)| format!("tcp:{port} from {from}"))
        .collect();
    rules.sort();
    rules.join(";")
}

/// What every group sends: anything, anywhere (AWS's default egress rule).
const ANY_EGRESS: &str = "all:all to 0.0.0.0/0";

/// One rule in the comparable format. `peer` is the source (ingress) or destination.
pub fn encode(
    protocol: &str,
    from: Option<i32>,
    to: Option<i32>,
    egress: bool,
    peer: &str,
) -> String {
    let protocol = if protocol == "-1" { "all" } else { protocol };
    let ports = match (from, to) {
        (None | Some(-1), _) => "all".to_owned(),
        (Some(from), Some(to)) if from != to && to != -1 => format!("{from}-{to}"),
        (Some(port), _) => port.to_string(),
    };
    let direction = if egress { "to" } else { "from" };
    format!("{protocol}:{ports} {direction} {peer}")
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
                ("egress", ANY_EGRESS.into()),
            ],
        ));
    }
    out
}

/// Every rule of one permission (it may hold several peers), encoded.
fn encode_permission(
    p: &IpPermission,
    egress: bool,
    named: &dyn Fn(Option<&str>) -> String,
) -> Vec<String> {
    let protocol = p.ip_protocol().unwrap_or_default();
    let rule = |peer: &str| encode(protocol, p.from_port(), p.to_port(), egress, peer);
    let mut out = Vec::new();
    out.extend(
        p.ip_ranges()
            .iter()
            .map(|r| rule(r.cidr_ip().unwrap_or_default())),
    );
    out.extend(
        p.ipv6_ranges()
            .iter()
            .map(|r| rule(r.cidr_ipv6().unwrap_or_default())),
    );
    out.extend(
        p.prefix_list_ids()
            .iter()
            .map(|l| rule(l.prefix_list_id().unwrap_or_default())),
    );
    out.extend(
        p.user_id_group_pairs()
            .iter()
            .map(|pair| rule(&named(pair.group_id()))),
    );
    out
}

/// One rule as `describe_security_group_rules` reports it, encoded.
fn encode_rule(rule: &SecurityGroupRule, named: &dyn Fn(Option<&str>) -> String) -> String {
    let peer = rule
        .cidr_ipv4()
        .or(rule.cidr_ipv6())
        .or(rule.prefix_list_id())
        .map(str::to_owned)
        .unwrap_or_else(|| named(rule.referenced_group_info().and_then(|g| g.group_id())));
    encode(
        rule.ip_protocol().unwrap_or_default(),
        rule.from_port(),
        rule.to_port(),
        rule.is_egress().unwrap_or(false),
        &peer,
    )
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
        let encoded = |permissions: &[IpPermission], egress: bool| {
            let mut rules: Vec<String> = permissions
                .iter()
                .flat_map(|p| encode_permission(p, egress, &named))
                .collect();
            rules.sort();
            rules.join(";")
        };
        out.push(observed_resource(
            Kind::SecurityGroup,
            name_of(g),
            g.group_id().unwrap_or_default().into(),
            &[
                ("vpc", named(g.vpc_id())),
                ("description", g.description().unwrap_or_default().into()),
                ("ingress", encoded(g.ip_permissions(), false)),
                ("egress", encoded(g.ip_permissions_egress(), true)),
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
    let rules: Vec<&str> = ["ingress", "egress"]
        .iter()
        .flat_map(|field| p[*field].split(';'))
        .filter(|r| !r.is_empty())
        .collect();
    authorize(aws, &id, &rules, ids).await?;
    Ok(id)
}

/// Authorizes the rules the group lacks and revokes, by rule id, those it should not
/// have; then reads the rules again and fails if one it revoked is still there.
pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    let Action::Update(fields) = &change.action else {
        return Ok(());
    };
    let split = |value: Option<&str>| -> Vec<String> {
        value
            .unwrap_or_default()
            .split(';')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    for field in fields
        .iter()
        .filter(|f| f.field == "ingress" || f.field == "egress")
    {
        let (want, have) = (split(field.new.as_deref()), split(field.old.as_deref()));
        missing.extend(want.iter().filter(|r| !have.contains(r)).cloned());
        extra.extend(have.into_iter().filter(|r| !want.contains(r)));
    }
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    authorize(aws, id, &missing, ids).await?;
    if extra.is_empty() {
        return Ok(());
    }
    let (ingress, egress): (Vec<SecurityGroupRule>, Vec<SecurityGroupRule>) =
        rules_of(aws, id, ids)
            .await?
            .into_iter()
            .filter(|(_, encoded)| extra.contains(encoded))
            .map(|(rule, _)| rule)
            .partition(|rule| !rule.is_egress().unwrap_or(false));
    let rule_ids = |rules: &[SecurityGroupRule]| -> Vec<String> {
        rules
            .iter()
            .filter_map(|r| r.security_group_rule_id().map(str::to_owned))
            .collect()
    };
    if !ingress.is_empty() {
        aws.ec2
            .revoke_security_group_ingress()
            .group_id(id)
            .set_security_group_rule_ids(Some(rule_ids(&ingress)))
            .send()
            .await
            .context("revoke ingress rules")?;
    }
    if !egress.is_empty() {
        aws.ec2
            .revoke_security_group_egress()
            .group_id(id)
            .set_security_group_rule_ids(Some(rule_ids(&egress)))
            .send()
            .await
            .context("revoke egress rules")?;
    }
    let survivors: Vec<String> = rules_of(aws, id, ids)
        .await?
        .into_iter()
        .map(|(_, encoded)| encoded)
        .filter(|encoded| extra.contains(encoded))
        .collect();
    anyhow::ensure!(
        survivors.is_empty(),
        "{} still has rule(s) it should not after revoking them: {}",
        change.name,
        survivors.join("; ")
    );
    Ok(())
}

/// The group's rules as AWS lists them, each with its encoding (a referenced group by
/// its logical name when it is one of the stack's).
async fn rules_of(
    aws: &Aws,
    group: &str,
    ids: &Ids,
) -> anyhow::Result<Vec<(SecurityGroupRule, String)>> {
    let pages: Vec<_> = aws
        .ec2
        .describe_security_group_rules()
        .filters(Filter::builder().name("group-id").values(group).build())
        .into_paginator()
        .send()
        .collect::<Result<_, _>>()
        .await
        .with_context(|| format!("describe the rules of {group}"))?;
    let named = |id: Option<&str>| {
        let id = id.unwrap_or_default();
        ids.name_with_id(id).unwrap_or(id).to_owned()
    };
    Ok(pages
        .iter()
        .flat_map(|page| page.security_group_rules())
        .map(|rule| (rule.clone(), encode_rule(rule, &named)))
        .collect())
}

pub(crate) async fn delete(aws: &Aws, _: Kind, id: &str) -> Result<(), DeleteError> {
    aws.ec2
        .delete_security_group()
        .group_id(id)
        .send()
        .await
        .map(drop)
        .map_err(DeleteError::from_sdk)
}

/// One rule in the comparable format as an AWS permission, and whether it is egress.
fn permission(rule: &str, ids: &Ids) -> anyhow::Result<(IpPermission, bool)> {
    // "tcp:80 from 0.0.0.0/0", "tcp:5432 from anb-web", "all:all to 0.0.0.0/0"
    let bad = || format!("bad rule {rule}");
    let (protocol_ports, rest) = rule.split_once(' ').with_context(bad)?;
    let (direction, peer) = rest.split_once(' ').with_context(bad)?;
    let egress = match direction {
        "from" => false,
        "to" => true,
        _ => anyhow::bail!("bad rule {rule}"),
    };
    let (protocol, ports) = protocol_ports.split_once(':').with_context(bad)?;
    let protocol = if protocol == "all" { "-1" } else { protocol };
    let builder = IpPermission::builder().ip_protocol(protocol);
    let builder = match ports {
        "all" => builder,
        ports => {
            let (from, to) = ports.split_once('-').unwrap_or((ports, ports));
            builder
                .from_port(from.parse().with_context(bad)?)
                .to_port(to.parse().with_context(bad)?)
        }
    };
    let builder = if peer.contains('/') && peer.contains(':') {
        builder.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(peer).build())
    } else if peer.contains('/') {
        builder.ip_ranges(IpRange::builder().cidr_ip(peer).build())
    } else if peer.starts_with("pl-") {
        builder.prefix_list_ids(PrefixListId::builder().prefix_list_id(peer).build())
    } else {
        let group = ids.get(peer).unwrap_or(peer);
        builder.user_id_group_pairs(UserIdGroupPair::builder().group_id(group).build())
    };
    Ok((builder.build(), egress))
}

async fn authorize(aws: &Aws, group: &str, rules: &[&str], ids: &Ids) -> anyhow::Result<()> {
    for rule in rules {
        let (permission, egress) = permission(rule, ids)?;
        // The two calls' errors are different types: classify each where it is made.
        let failed = if egress {
            aws.ec2
                .authorize_security_group_egress()
                .group_id(group)
                .ip_permissions(permission)
                .send()
                .await
                .err()
                .map(|e| (error_kind(&e), anyhow::Error::new(e)))
        } else {
            aws.ec2
                .authorize_security_group_ingress()
                .group_id(group)
                .ip_permissions(permission)
                .send()
                .await
                .err()
                .map(|e| (error_kind(&e), anyhow::Error::new(e)))
        };
        match failed {
            None | Some((ErrorKind::Duplicate, _)) => {} // done, or already there
            Some((_, e)) => return Err(e).with_context(|| format!("authorize {rule}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_reads_back_as_it_was_written() {
        let ids: Ids = [("anb-alb".to_owned(), "sg-1".to_owned())]
            .into_iter()
            .collect();
        for rule in [
            "tcp:80 from anb-alb",
            "tcp:0-65535 from 0.0.0.0/0",
            "udp:53 from ::/0",
            "all:all to 0.0.0.0/0",
            "tcp:443 from pl-12345",
        ] {
            let (permission, egress) = permission(rule, &ids).unwrap();
            let named = |id: Option<&str>| {
                let id = id.unwrap_or_default();
                ids.name_with_id(id).unwrap_or(id).to_owned()
            };
            assert_eq!(encode_permission(&permission, egress, &named), [rule]);
        }
    }

    #[test]
    fn a_port_range_is_not_mistaken_for_its_first_port() {
        assert_eq!(
            encode("tcp", Some(0), Some(65535), false, "0.0.0.0/0"),
            "tcp:0-65535 from 0.0.0.0/0"
        );
        assert_eq!(
            encode("tcp", Some(80), Some(80), false, "x"),
            "tcp:80 from x"
        );
        assert_eq!(
            encode("-1", Some(-1), Some(-1), true, "0.0.0.0/0"),
            ANY_EGRESS
        );
        assert_eq!(encode("-1", None, None, true, "0.0.0.0/0"), ANY_EGRESS);
    }
}
