//! The network: the VPC, its subnets, the internet gateway and route tables, and the NAT
//! gateway with its Elastic IP (private network mode). It is observed (`observe.rs`)
//! together with the security groups, which need its names.

mod nat;
mod observe;

pub(crate) use observe::observe;

use anyhow::Context;
use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType};

use crate::aws::{error_kind, Aws, DeleteError, ErrorKind, Ids};
use crate::config::{Config, InstanceSubnets};
use crate::model::{Change, Kind, Props, Resource};
use crate::names::Names;

/// The VPC with DNS, a public and a private subnet in each of two zones, the internet
/// gateway and the public route table; in the private network mode also an Elastic IP, a
/// NAT gateway in the first zone and the private route table.
pub(crate) fn desired(n: &Names, config: &Config) -> Vec<Resource> {
    let vpc = n.of("vpc");
    let zones = config.availability_zones();
    let mut out = vec![Resource::new(
        Kind::Vpc,
        &vpc,
        &[
            ("cidr", config.network.vpc_cidr.clone()),
            ("dns_hostnames", "true".into()),
            ("dns_support", "true".into()),
        ],
    )];
    let (mut public_names, mut private_names) = (Vec::new(), Vec::new());
    for (tier, cidrs, public) in [
        ("public", &config.network.public_subnets, true),
        ("private", &config.network.private_subnets, false),
    ] {
        for (i, (cidr, zone)) in cidrs.iter().zip(&zones).enumerate() {
            let name = n.of(&format!("{tier}-{}", ['a', 'b'][i]));
            if public {
                public_names.push(name.clone());
            } else {
                private_names.push(name.clone());
            }
            out.push(Resource::new(
                Kind::Subnet,
                name,
                &[
                    ("cidr", cidr.clone()),
                    ("zone", zone.clone()),
                    ("vpc", vpc.clone()),
                    ("public_ip_on_launch", public.to_string()),
                ],
            ));
        }
    }
    out.push(Resource::new(
        Kind::InternetGateway,
        n.of("igw"),
        &[("vpc", vpc.clone())],
    ));
    out.push(Resource::new(
        Kind::RouteTable,
        n.of("public"),
        &[
            ("vpc", vpc.clone()),
            ("default_route", n.of("igw")),
            ("subnets", public_names.join(",")),
        ],
    ));
    if config.network.instances == InstanceSubnets::Private {
        // One gateway, in the first zone: a zone failure cuts the private subnets' way
        // out until it is back, which docs/deploy.md ("Network modes") weighs against paying for two.
        out.push(Resource::new(
            Kind::ElasticIp,
            n.of("nat-ip"),
            &[("domain", "vpc".into())],
        ));
        out.push(Resource::new(
            Kind::NatGateway,
            n.of("nat"),
            &[("subnet", n.of("public-a")), ("address", n.of("nat-ip"))],
        ));
        out.push(Resource::new(
            Kind::RouteTable,
            n.of("private"),
            &[
                ("vpc", vpc.clone()),
                ("default_route", n.of("nat")),
                ("subnets", private_names.join(",")),
            ],
        ));
    }
    out
}

pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let p = &change.desired;
    // The id of the resource a property names.
    let id_of = |field: &str| ids.id_of(p.get(field).map_or("", String::as_str));
    let name = change.name.as_str();
    match change.kind {
        Kind::Vpc => {
            let vpc = aws
                .ec2
                .create_vpc()
                .cidr_block(&p["cidr"])
                .tag_specifications(aws.tags(ResourceType::Vpc, name))
                .send()
                .await?;
            let id = vpc
                .vpc()
                .and_then(|v| v.vpc_id())
                .context("no VPC id")?
                .to_owned();
            set_vpc_dns(aws, &id, p).await?;
            Ok(id)
        }
        Kind::Subnet => {
            let subnet = aws
                .ec2
                .create_subnet()
                .vpc_id(id_of("vpc")?)
                .cidr_block(&p["cidr"])
                .availability_zone(&p["zone"])
                .tag_specifications(aws.tags(ResourceType::Subnet, name))
                .send()
                .await?;
            let id = subnet
                .subnet()
                .and_then(|s| s.subnet_id())
                .context("no subnet id")?
                .to_owned();
            set_public_ip(aws, &id, p).await?;
            Ok(id)
        }
        Kind::InternetGateway => {
            let gateway = aws
                .ec2
                .create_internet_gateway()
                .tag_specifications(aws.tags(ResourceType::InternetGateway, name))
                .send()
                .await?;
            let id = gateway
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id())
                .context("no gateway id")?
                .to_owned();
            aws.ec2
                .attach_internet_gateway()
                .internet_gateway_id(&id)
                .vpc_id(id_of("vpc")?)
                .send()
                .await?;
            Ok(id)
        }
        Kind::RouteTable => {
            let table = aws
                .ec2
                .create_route_table()
                .vpc_id(id_of("vpc")?)
                .tag_specifications(aws.tags(ResourceType::RouteTable, name))
                .send()
                .await?;
            let id = table
                .route_table()
                .and_then(|t| t.route_table_id())
                .context("no route table id")?
                .to_owned();
            let target = id_of("default_route")?;
            with_route_target(
                aws.ec2
                    .create_route()
                    .route_table_id(&id)
                    .destination_cidr_block("0.0.0.0/0"),
                &target,
            )
            .send()
            .await?;
            for subnet in p["subnets"].split(',').filter(|s| !s.is_empty()) {
                let subnet_id = ids
                    .get(subnet)
                    .with_context(|| format!("{subnet} does not exist yet"))?;
                aws.ec2
                    .associate_route_table()
                    .route_table_id(&id)
                    .subnet_id(subnet_id)
                    .send()
                    .await?;
            }
            Ok(id)
        }
        Kind::ElasticIp => nat::create_address(aws, name).await,
        Kind::NatGateway => {
            nat::create_nat_gateway(aws, name, &id_of("subnet")?, &id_of("address")?).await
        }
        other => anyhow::bail!("{other:?} is not a network resource"),
    }
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    let p = &change.desired;
    match change.kind {
        Kind::Vpc => set_vpc_dns(aws, id, p).await,
        Kind::Subnet => set_public_ip(aws, id, p).await,
        Kind::InternetGateway => {
            let vpc = ids.id_of(&p["vpc"])?;
            aws.ec2
                .attach_internet_gateway()
                .internet_gateway_id(id)
                .vpc_id(vpc)
                .send()
                .await?;
            Ok(())
        }
        Kind::RouteTable => {
            let gateway = ids
                .get(&p["default_route"])
                .context("the gateway does not exist")?;
            let replaced = {
                let replace = aws
                    .ec2
                    .replace_route()
                    .route_table_id(id)
                    .destination_cidr_block("0.0.0.0/0");
                if gateway.starts_with("nat-") {
                    replace.nat_gateway_id(gateway)
                } else {
                    replace.gateway_id(gateway)
                }
            }
            .send()
            .await;
            // No default route yet (a table whose route was removed out of band): add it.
            if let Err(e) = replaced {
                if error_kind(&e) != ErrorKind::NotFound {
                    return Err(anyhow::Error::new(e).context("replace the default route"));
                }
                with_route_target(
                    aws.ec2
                        .create_route()
                        .route_table_id(id)
                        .destination_cidr_block("0.0.0.0/0"),
                    gateway,
                )
                .send()
                .await?;
            }
            for subnet in p["subnets"].split(',').filter(|s| !s.is_empty()) {
                let subnet_id = ids
                    .get(subnet)
                    .with_context(|| format!("{subnet} does not exist"))?;
                let associated = aws
                    .ec2
                    .associate_route_table()
                    .route_table_id(id)
                    .subnet_id(subnet_id)
                    .send()
                    .await;
                match associated {
                    Ok(_) => {}
                    // Already this table's: nothing to do.
                    Err(e) if error_kind(&e) == ErrorKind::Duplicate => {}
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("associate {subnet} with its route table")))
                    }
                }
            }
            Ok(())
        }
        Kind::ElasticIp | Kind::NatGateway => Ok(()),
        other => anyhow::bail!("{other:?} is not a network resource"),
    }
}

pub(crate) async fn delete(aws: &Aws, kind: Kind, id: &str) -> Result<(), DeleteError> {
    match kind {
        Kind::Vpc => aws
            .ec2
            .delete_vpc()
            .vpc_id(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        Kind::Subnet => aws
            .ec2
            .delete_subnet()
            .subnet_id(id)
            .send()
            .await
            .map(drop)
            .map_err(DeleteError::from_sdk),
        Kind::InternetGateway => {
            let found = aws
                .ec2
                .describe_internet_gateways()
                .internet_gateway_ids(id)
                .send()
                .await
                .map_err(DeleteError::from_sdk)?;
            for attachment in found
                .internet_gateways()
                .iter()
                .flat_map(|g| g.attachments())
            {
                if let Some(vpc) = attachment.vpc_id() {
                    aws.ec2
                        .detach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(vpc)
                        .send()
                        .await
                        .map_err(DeleteError::from_sdk)?;
                }
            }
            aws.ec2
                .delete_internet_gateway()
                .internet_gateway_id(id)
                .send()
                .await
                .map(drop)
                .map_err(DeleteError::from_sdk)
        }
        Kind::RouteTable => {
            let found = aws
                .ec2
                .describe_route_tables()
                .route_table_ids(id)
                .send()
                .await
                .map_err(DeleteError::from_sdk)?;
            for association in found.route_tables().iter().flat_map(|t| t.associations()) {
                if association.main() != Some(true) {
                    if let Some(association_id) = association.route_table_association_id() {
                        aws.ec2
                            .disassociate_route_table()
                            .association_id(association_id)
                            .send()
                            .await
                            .map_err(DeleteError::from_sdk)?;
                    }
                }
            }
            aws.ec2
                .delete_route_table()
                .route_table_id(id)
                .send()
                .await
                .map(drop)
                .map_err(DeleteError::from_sdk)
        }
        Kind::ElasticIp => nat::release_address(aws, id).await,
        Kind::NatGateway => nat::delete_nat_gateway(aws, id).await,
        other => Err(DeleteError::Other(anyhow::anyhow!(
            "{other:?} is not a network resource"
        ))),
    }
}

async fn set_vpc_dns(aws: &Aws, id: &str, p: &Props) -> anyhow::Result<()> {
    let on = |field: &str| {
        AttributeBooleanValue::builder()
            .value(p[field] == "true")
            .build()
    };
    aws.ec2
        .modify_vpc_attribute()
        .vpc_id(id)
        .enable_dns_support(on("dns_support"))
        .send()
        .await?;
    aws.ec2
        .modify_vpc_attribute()
        .vpc_id(id)
        .enable_dns_hostnames(on("dns_hostnames"))
        .send()
        .await?;
    Ok(())
}

async fn set_public_ip(aws: &Aws, id: &str, p: &Props) -> anyhow::Result<()> {
    let value = AttributeBooleanValue::builder()
        .value(p["public_ip_on_launch"] == "true")
        .build();
    aws.ec2
        .modify_subnet_attribute()
        .subnet_id(id)
        .map_public_ip_on_launch(value)
        .send()
        .await?;
    Ok(())
}

/// A default route goes to an internet gateway ("igw-…") or a NAT gateway ("nat-…").
fn with_route_target(
    route: aws_sdk_ec2::operation::create_route::builders::CreateRouteFluentBuilder,
    target: &str,
) -> aws_sdk_ec2::operation::create_route::builders::CreateRouteFluentBuilder {
    if target.starts_with("nat-") {
        route.nat_gateway_id(target)
    } else {
        route.gateway_id(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(instances: InstanceSubnets) -> Vec<Resource> {
        let mut config = Config::load(None).unwrap();
        config.network.instances = instances;
        desired(
            &Names {
                stack: "anb".into(),
            },
            &config,
        )
    }

    fn named<'a>(resources: &'a [Resource], name: &str) -> &'a Resource {
        resources
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn subnets_span_two_zones_and_only_public_ones_give_addresses() {
        let resources = network(InstanceSubnets::Public);
        for (name, zone, public) in [
            ("anb-public-a", "us-east-1a", "true"),
            ("anb-public-b", "us-east-1b", "true"),
            ("anb-private-a", "us-east-1a", "false"),
            ("anb-private-b", "us-east-1b", "false"),
        ] {
            let subnet = named(&resources, name);
            assert_eq!(subnet.kind, Kind::Subnet);
            assert_eq!(subnet.props["zone"], zone, "{name}");
            assert_eq!(subnet.props["public_ip_on_launch"], public, "{name}");
            assert_eq!(subnet.props["vpc"], "anb-vpc");
        }
        let public = named(&resources, "anb-public");
        assert_eq!(public.props["default_route"], "anb-igw");
        assert_eq!(public.props["subnets"], "anb-public-a,anb-public-b");
    }

    #[test]
    fn the_public_mode_pays_for_no_nat_gateway() {
        let resources = network(InstanceSubnets::Public);
        assert!(!resources
            .iter()
            .any(|r| matches!(r.kind, Kind::NatGateway | Kind::ElasticIp)));
        assert!(!resources.iter().any(|r| r.name == "anb-private"));
    }

    #[test]
    fn the_private_mode_routes_both_private_subnets_through_one_nat_in_the_first_zone() {
        let resources = network(InstanceSubnets::Private);
        let nat = named(&resources, "anb-nat");
        assert_eq!(nat.kind, Kind::NatGateway);
        assert_eq!(nat.props["subnet"], "anb-public-a");
        assert_eq!(nat.props["address"], "anb-nat-ip");
        assert_eq!(named(&resources, "anb-nat-ip").kind, Kind::ElasticIp);
        let private = named(&resources, "anb-private");
        assert_eq!(private.props["default_route"], "anb-nat");
        assert_eq!(private.props["subnets"], "anb-private-a,anb-private-b");
    }

    #[test]
    fn every_name_a_network_resource_refers_to_is_one_it_declares() {
        let resources = network(InstanceSubnets::Private);
        let declared: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        for r in &resources {
            for field in ["vpc", "default_route", "subnet", "address", "subnets"] {
                let Some(value) = r.props.get(field) else {
                    continue;
                };
                for name in value.split(',') {
                    assert!(declared.contains(&name), "{} names {name}", r.name);
                }
            }
        }
    }
}
