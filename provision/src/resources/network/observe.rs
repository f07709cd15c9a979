//! Reads the stack's network and security groups back by tag, with every id they
//! reference turned into its logical name so the result compares with the desired state.

use anyhow::Context;
use aws_sdk_ec2::types::Tag;

use crate::aws::{observed, Aws, NamesById};
use crate::model::{Kind, Observed};
use crate::resources::security_group;

pub(crate) async fn observe(aws: &Aws) -> anyhow::Result<Vec<Observed>> {
    let filter = aws.stack_filter();
    let (vpcs, subnets, gateways, tables, groups, nats, addresses) = tokio::try_join!(
        Box::pin(async {
            aws.ec2
                .describe_vpcs()
                .filters(filter.clone())
                .send()
                .await
                .context("describe VPCs")
        }),
        Box::pin(async {
            aws.ec2
                .describe_subnets()
                .filters(filter.clone())
                .send()
                .await
                .context("describe subnets")
        }),
        Box::pin(async {
            aws.ec2
                .describe_internet_gateways()
                .filters(filter.clone())
                .send()
                .await
                .context("describe internet gateways")
        }),
        Box::pin(async {
            aws.ec2
                .describe_route_tables()
                .filters(filter.clone())
                .send()
                .await
                .context("describe route tables")
        }),
        Box::pin(async {
            aws.ec2
                .describe_security_groups()
                .filters(filter.clone())
                .send()
                .await
                .context("describe security groups")
        }),
        Box::pin(async {
            aws.ec2
                .describe_nat_gateways()
                .filter(filter.clone())
                .send()
                .await
                .context("describe NAT gateways")
        }),
        Box::pin(async {
            aws.ec2
                .describe_addresses()
                .filters(filter.clone())
                .send()
                .await
                .context("describe Elastic IPs")
        }),
    )?;
    // A NAT gateway stays listed for a while after it is deleted. The tag is checked
    // here too: some emulators ignore the tag filter of this call.
    let nats: Vec<&aws_sdk_ec2::types::NatGateway> = nats
        .nat_gateways()
        .iter()
        .filter(|g| {
            !matches!(
                g.state().map(|s| s.as_str()),
                Some("deleted" | "deleting" | "failed")
            ) && g
                .tags()
                .iter()
                .any(|t| aws.is_stack_tag(t.key(), t.value()))
        })
        .collect();
    // Ids → logical names, so references compare with the desired state.
    let mut names = NamesById::default();
    let name_of = |tags: &[Tag]| {
        tags.iter()
            .find(|t| t.key() == Some("Name"))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_owned()
    };
    for v in vpcs.vpcs() {
        names.insert(v.vpc_id().unwrap_or_default().into(), name_of(v.tags()));
    }
    for s in subnets.subnets() {
        names.insert(s.subnet_id().unwrap_or_default().into(), name_of(s.tags()));
    }
    for g in gateways.internet_gateways() {
        names.insert(
            g.internet_gateway_id().unwrap_or_default().into(),
            name_of(g.tags()),
        );
    }
    for g in groups.security_groups() {
        names.insert(g.group_id().unwrap_or_default().into(), name_of(g.tags()));
    }
    for g in &nats {
        names.insert(
            g.nat_gateway_id().unwrap_or_default().into(),
            name_of(g.tags()),
        );
    }
    for a in addresses.addresses() {
        names.insert(
            a.allocation_id().unwrap_or_default().into(),
            name_of(a.tags()),
        );
    }
    let named = |id: Option<&str>| id.map(|id| names.name_of(id)).unwrap_or_default();
    let mut out = Vec::new();
    for v in vpcs.vpcs() {
        let id = v.vpc_id().unwrap_or_default().to_owned();
        let (hostnames, support) = tokio::try_join!(
            vpc_attribute(
                aws,
                &id,
                aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames
            ),
            vpc_attribute(
                aws,
                &id,
                aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport
            ),
        )?;
        out.push(observed(
            Kind::Vpc,
            name_of(v.tags()),
            id,
            &[
                ("cidr", v.cidr_block().unwrap_or_default().into()),
                ("dns_hostnames", hostnames.to_string()),
                ("dns_support", support.to_string()),
            ],
        ));
    }
    for s in subnets.subnets() {
        out.push(observed(
            Kind::Subnet,
            name_of(s.tags()),
            s.subnet_id().unwrap_or_default().into(),
            &[
                ("cidr", s.cidr_block().unwrap_or_default().into()),
                ("zone", s.availability_zone().unwrap_or_default().into()),
                ("vpc", named(s.vpc_id())),
                (
                    "public_ip_on_launch",
                    s.map_public_ip_on_launch().unwrap_or(false).to_string(),
                ),
            ],
        ));
    }
    for g in gateways.internet_gateways() {
        let vpc = g.attachments().first().and_then(|a| a.vpc_id());
        out.push(observed(
            Kind::InternetGateway,
            name_of(g.tags()),
            g.internet_gateway_id().unwrap_or_default().into(),
            &[("vpc", named(vpc))],
        ));
    }
    for a in addresses.addresses() {
        out.push(observed(
            Kind::ElasticIp,
            name_of(a.tags()),
            a.allocation_id().unwrap_or_default().into(),
            &[(
                "domain",
                a.domain()
                    .map(|d| d.as_str().to_owned())
                    .unwrap_or_default(),
            )],
        ));
    }
    for g in &nats {
        out.push(observed(
            Kind::NatGateway,
            name_of(g.tags()),
            g.nat_gateway_id().unwrap_or_default().into(),
            &[
                ("subnet", named(g.subnet_id())),
                (
                    "address",
                    named(
                        g.nat_gateway_addresses()
                            .first()
                            .and_then(|a| a.allocation_id()),
                    ),
                ),
            ],
        ));
    }
    for t in tables.route_tables() {
        let default_route = t
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
            .and_then(|r| r.gateway_id().or(r.nat_gateway_id()));
        let mut subnets: Vec<String> = t
            .associations()
            .iter()
            .filter_map(|a| a.subnet_id())
            .map(|id| named(Some(id)))
            .collect();
        subnets.sort();
        out.push(observed(
            Kind::RouteTable,
            name_of(t.tags()),
            t.route_table_id().unwrap_or_default().into(),
            &[
                ("vpc", named(t.vpc_id())),
                ("default_route", named(default_route)),
                ("subnets", subnets.join(",")),
            ],
        ));
    }
    out.extend(security_group::observed(groups.security_groups(), &names));
    Ok(out)
}

async fn vpc_attribute(
    aws: &Aws,
    id: &str,
    attribute: aws_sdk_ec2::types::VpcAttributeName,
) -> anyhow::Result<bool> {
    let found = aws
        .ec2
        .describe_vpc_attribute()
        .vpc_id(id)
        .attribute(attribute.clone())
        .send()
        .await
        .context("describe VPC attribute")?;
    let value = match attribute {
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames => found.enable_dns_hostnames(),
        _ => found.enable_dns_support(),
    };
    Ok(value.and_then(|v| v.value()).unwrap_or(false))
}
