//! Reading and changing the stack in AWS. Everything is found by its stack tag and Name
//! tag on every run (no local state file), described before it is created, and each AWS
//! error is sorted into a kind before anything else is done with it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use aws_sdk_ec2::types::{
    AttributeBooleanValue, Filter, IpPermission, IpRange, ResourceType, Tag, TagSpecification,
    UserIdGroupPair,
};

use crate::model::{Action, Change, Kind, Observed, Props, Resource};

mod error;
mod ids;

pub(crate) use error::DeleteError;
pub use error::{error_kind, ErrorKind};
pub use ids::{Ids, NamesById};

/// The tag every resource of a stack carries.
pub const STACK_TAG: &str = "anb:stack";

#[derive(Debug, Clone)]
pub struct Aws {
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub rds: aws_sdk_rds::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    /// `down`: snapshot the database under this name before deleting it.
    final_snapshot: Option<String>,
    sts: aws_sdk_sts::Client,
    pub stack: String,
    pub region: String,
}

impl Aws {
    pub async fn connect(
        stack: &str,
        region: &str,
        endpoint: Option<&str>,
        final_snapshot: Option<String>,
    ) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()));
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(endpoint.is_some())
            .build();
        Self {
            ec2: aws_sdk_ec2::Client::new(&shared),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sqs: aws_sdk_sqs::Client::new(&shared),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&shared),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&shared),
            rds: aws_sdk_rds::Client::new(&shared),
            autoscaling: aws_sdk_autoscaling::Client::new(&shared),
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
            final_snapshot,
            sts: aws_sdk_sts::Client::new(&shared),
            stack: stack.to_owned(),
            region: region.to_owned(),
        }
    }

    pub async fn account_id(&self) -> anyhow::Result<String> {
        let me = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .context("cannot identify the AWS account (are credentials set?)")?;
        me.account()
            .map(str::to_owned)
            .context("STS returned no account id")
    }

    /// `down`'s final snapshot of the database, if one was asked for.
    pub(crate) fn final_snapshot(&self) -> Option<&str> {
        self.final_snapshot.as_deref()
    }

    /// Whether a tag (of any service's tag type) is this stack's.
    pub(crate) fn is_stack_tag(&self, key: Option<&str>, value: Option<&str>) -> bool {
        key == Some(STACK_TAG) && value == Some(self.stack.as_str())
    }

    fn stack_filter(&self) -> Filter {
        Filter::builder()
            .name(format!("tag:{STACK_TAG}"))
            .values(&self.stack)
            .build()
    }

    pub(crate) fn tags(&self, kind: ResourceType, name: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(kind)
            .tags(Tag::builder().key(STACK_TAG).value(&self.stack).build())
            .tags(Tag::builder().key("Name").value(name).build())
            .build()
    }

    // ------------------------------------------------------------------------ observe

    /// Every resource of the stack as it is now. `bucket` is the desired bucket's name.
    pub async fn observe(&self, bucket: &str) -> anyhow::Result<Vec<Observed>> {
        // Boxed: the SDK's futures are large, and four of them side by side overflow a
        // test thread's stack in debug builds.
        let (network, queues, bucket, mut monitoring, secrets) = tokio::try_join!(
            Box::pin(self.observe_network()),
            Box::pin(crate::resources::queue::observe(self)),
            Box::pin(crate::resources::bucket::observe(self, bucket)),
            Box::pin(crate::resources::monitoring::observe(self)),
            Box::pin(crate::resources::secret::observe(self)),
        )?;
        let mut names: NamesById = network
            .iter()
            .map(|o| (o.id.clone(), o.resource.name.clone()))
            .collect();
        let (load_balancing, database) = tokio::try_join!(
            Box::pin(crate::resources::load_balancing::observe(self, &names)),
            Box::pin(crate::resources::database::observe(self, &names)),
        )?;
        names.extend(
            load_balancing
                .iter()
                .map(|o| (o.id.clone(), o.resource.name.clone())),
        );
        let compute = Box::pin(crate::resources::compute::observe(self, &names)).await?;
        // Alarm actions are policy ARNs; compare them by the policies' names.
        let policies: HashMap<&str, &str> = compute
            .iter()
            .filter(|o| o.resource.kind == Kind::ScalingPolicy)
            .map(|o| (o.id.as_str(), o.resource.name.as_str()))
            .collect();
        for alarm in monitoring.iter_mut() {
            if let Some(action) = alarm.resource.props.get_mut("action") {
                if let Some(name) = policies.get(action.as_str()) {
                    *action = (*name).to_owned();
                }
            }
        }
        Ok(network
            .into_iter()
            .chain(queues)
            .chain(bucket)
            .chain(monitoring)
            .chain(load_balancing)
            .chain(database)
            .chain(compute)
            .chain(secrets)
            .collect())
    }

    async fn observe_network(&self) -> anyhow::Result<Vec<Observed>> {
        let filter = self.stack_filter();
        let (vpcs, subnets, gateways, tables, groups, nats, addresses) = tokio::try_join!(
            Box::pin(async {
                self.ec2
                    .describe_vpcs()
                    .filters(filter.clone())
                    .send()
                    .await
                    .context("describe VPCs")
            }),
            Box::pin(async {
                self.ec2
                    .describe_subnets()
                    .filters(filter.clone())
                    .send()
                    .await
                    .context("describe subnets")
            }),
            Box::pin(async {
                self.ec2
                    .describe_internet_gateways()
                    .filters(filter.clone())
                    .send()
                    .await
                    .context("describe internet gateways")
            }),
            Box::pin(async {
                self.ec2
                    .describe_route_tables()
                    .filters(filter.clone())
                    .send()
                    .await
                    .context("describe route tables")
            }),
            Box::pin(async {
                self.ec2
                    .describe_security_groups()
                    .filters(filter.clone())
                    .send()
                    .await
                    .context("describe security groups")
            }),
            Box::pin(async {
                self.ec2
                    .describe_nat_gateways()
                    .filter(filter.clone())
                    .send()
                    .await
                    .context("describe NAT gateways")
            }),
            Box::pin(async {
                self.ec2
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
                    .any(|t| self.is_stack_tag(t.key(), t.value()))
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
                self.vpc_attribute(
                    &id,
                    aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames
                ),
                self.vpc_attribute(&id, aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport),
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
        for g in groups.security_groups() {
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
            out.push(observed(
                Kind::SecurityGroup,
                name_of(g.tags()),
                g.group_id().unwrap_or_default().into(),
                &[
                    ("vpc", named(g.vpc_id())),
                    ("description", g.description().unwrap_or_default().into()),
                    ("ingress", rules.join(";")),
                ],
            ));
        }
        Ok(out)
    }

    async fn vpc_attribute(
        &self,
        id: &str,
        attribute: aws_sdk_ec2::types::VpcAttributeName,
    ) -> anyhow::Result<bool> {
        let found = self
            .ec2
            .describe_vpc_attribute()
            .vpc_id(id)
            .attribute(attribute.clone())
            .send()
            .await
            .context("describe VPC attribute")?;
        let value = match attribute {
            aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames => {
                found.enable_dns_hostnames()
            }
            _ => found.enable_dns_support(),
        };
        Ok(value.and_then(|v| v.value()).unwrap_or(false))
    }

    // -------------------------------------------------------------------------- apply

    /// Carries out `changes`, as many at once as their references allow (a resource waits
    /// for those its properties name). Orphans are left alone; `down` removes them.
    pub async fn apply(&self, changes: &[Change]) -> anyhow::Result<()> {
        let mut ids: Ids = changes
            .iter()
            .filter_map(|c| c.id.clone().map(|id| (c.name.clone(), id)))
            .collect();
        let mut pending: Vec<&Change> = changes
            .iter()
            .filter(|c| !matches!(c.action, Action::Ok | Action::Orphan))
            .collect();
        // Rounds: everything whose references are settled goes at once.
        while !pending.is_empty() {
            let names: std::collections::HashSet<&str> =
                pending.iter().map(|c| c.name.as_str()).collect();
            let (ready, waiting): (Vec<&Change>, Vec<&Change>) = pending
                .into_iter()
                .partition(|c| !references(c).any(|r| r != c.name && names.contains(r)));
            anyhow::ensure!(
                !ready.is_empty(),
                "resources reference each other in a cycle: {names:?}"
            );
            let results =
                futures_util::future::join_all(ready.iter().map(|c| self.apply_one(c, &ids))).await;
            let mut first_error = None;
            for (change, result) in ready.iter().zip(results) {
                match result {
                    Ok(Some(id)) => {
                        ids.insert(change.name.clone(), id);
                    }
                    Ok(None) => {}
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            pending = waiting;
        }
        Ok(())
    }

    /// One change; returns the new id when it created something.
    async fn apply_one(&self, change: &Change, ids: &Ids) -> anyhow::Result<Option<String>> {
        let what = format!("{} {}", change.kind, change.name);
        let started = std::time::Instant::now();
        let result = match &change.action {
            Action::Ok | Action::Orphan => return Ok(None),
            Action::Create => {
                eprintln!("  creating {what}");
                self.create(change, ids)
                    .await
                    .with_context(|| format!("create {what}"))
                    .map(Some)
            }
            Action::Update(_) => {
                eprintln!("  updating {what}");
                let id = ids.get(&change.name).unwrap_or_default().to_owned();
                self.update(change, &id, ids)
                    .await
                    .with_context(|| format!("update {what}"))
                    .map(|()| None)
            }
            Action::Replace(_) => {
                eprintln!("  replacing {what} (delete, then create)");
                let id = ids.get(&change.name).unwrap_or_default().to_owned();
                self.delete(change.kind, &change.name, &id)
                    .await
                    .with_context(|| format!("delete {what}"))?;
                self.create(change, ids)
                    .await
                    .with_context(|| format!("create {what}"))
                    .map(Some)
            }
        };
        if started.elapsed().as_secs() >= 5 {
            eprintln!("  {what}: {:.0} s", started.elapsed().as_secs_f64());
        }
        result
    }

    async fn create(&self, change: &Change, ids: &Ids) -> anyhow::Result<String> {
        let p = &change.desired;
        // The id of the resource a property names.
        let id_of = |field: &str| ids.id_of(p.get(field).map_or("", String::as_str));
        let name = change.name.as_str();
        match change.kind {
            Kind::Vpc => {
                let vpc = self
                    .ec2
                    .create_vpc()
                    .cidr_block(&p["cidr"])
                    .tag_specifications(self.tags(ResourceType::Vpc, name))
                    .send()
                    .await?;
                let id = vpc
                    .vpc()
                    .and_then(|v| v.vpc_id())
                    .context("no VPC id")?
                    .to_owned();
                self.set_vpc_dns(&id, p).await?;
                Ok(id)
            }
            Kind::Subnet => {
                let subnet = self
                    .ec2
                    .create_subnet()
                    .vpc_id(id_of("vpc")?)
                    .cidr_block(&p["cidr"])
                    .availability_zone(&p["zone"])
                    .tag_specifications(self.tags(ResourceType::Subnet, name))
                    .send()
                    .await?;
                let id = subnet
                    .subnet()
                    .and_then(|s| s.subnet_id())
                    .context("no subnet id")?
                    .to_owned();
                self.set_public_ip(&id, p).await?;
                Ok(id)
            }
            Kind::InternetGateway => {
                let gateway = self
                    .ec2
                    .create_internet_gateway()
                    .tag_specifications(self.tags(ResourceType::InternetGateway, name))
                    .send()
                    .await?;
                let id = gateway
                    .internet_gateway()
                    .and_then(|g| g.internet_gateway_id())
                    .context("no gateway id")?
                    .to_owned();
                self.ec2
                    .attach_internet_gateway()
                    .internet_gateway_id(&id)
                    .vpc_id(id_of("vpc")?)
                    .send()
                    .await?;
                Ok(id)
            }
            Kind::RouteTable => {
                let table = self
                    .ec2
                    .create_route_table()
                    .vpc_id(id_of("vpc")?)
                    .tag_specifications(self.tags(ResourceType::RouteTable, name))
                    .send()
                    .await?;
                let id = table
                    .route_table()
                    .and_then(|t| t.route_table_id())
                    .context("no route table id")?
                    .to_owned();
                let target = id_of("default_route")?;
                with_route_target(
                    self.ec2
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
                    self.ec2
                        .associate_route_table()
                        .route_table_id(&id)
                        .subnet_id(subnet_id)
                        .send()
                        .await?;
                }
                Ok(id)
            }
            Kind::SecurityGroup => {
                let group = self
                    .ec2
                    .create_security_group()
                    .group_name(name)
                    .description(&p["description"])
                    .vpc_id(id_of("vpc")?)
                    .tag_specifications(self.tags(ResourceType::SecurityGroup, name))
                    .send()
                    .await?;
                let id = group.group_id().context("no group id")?.to_owned();
                let rules: Vec<&str> = p["ingress"].split(';').filter(|r| !r.is_empty()).collect();
                self.authorize(&id, &rules, ids).await?;
                Ok(id)
            }
            Kind::Bucket => crate::resources::bucket::create(self, name, p).await,
            Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
                crate::resources::load_balancing::create(self, change.kind, name, p, ids).await
            }
            Kind::DbSubnetGroup | Kind::Database => {
                crate::resources::database::create(self, change.kind, name, p, ids).await
            }
            Kind::LaunchTemplate | Kind::AutoScalingGroup | Kind::ScalingPolicy => {
                crate::resources::compute::put(self, change.kind, name, None, p, ids).await
            }
            Kind::Secret => crate::resources::secret::create(self, name, p).await,
            Kind::ElasticIp => self.create_address(name).await,
            Kind::NatGateway => {
                self.create_nat_gateway(name, &id_of("subnet")?, &id_of("address")?)
                    .await
            }
            Kind::Alarm | Kind::Dashboard => {
                crate::resources::monitoring::put(self, change.kind, name, p, ids).await?;
                Ok(name.to_owned())
            }
            Kind::Queue => crate::resources::queue::create(self, name, p).await,
        }
    }

    async fn update(&self, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
        let p = &change.desired;
        match change.kind {
            Kind::Vpc => self.set_vpc_dns(id, p).await,
            Kind::Subnet => self.set_public_ip(id, p).await,
            Kind::InternetGateway => {
                let vpc = ids.id_of(&p["vpc"])?;
                self.ec2
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
                    let replace = self
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
                if let Err(e) = replaced {
                    if error_kind(&e) != ErrorKind::Other && error_kind(&e) != ErrorKind::NotFound {
                        return Err(e.into());
                    }
                    with_route_target(
                        self.ec2
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
                    let _ = self
                        .ec2
                        .associate_route_table()
                        .route_table_id(id)
                        .subnet_id(subnet_id)
                        .send()
                        .await;
                }
                Ok(())
            }
            Kind::SecurityGroup => {
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
                let missing: Vec<&str> =
                    want.iter().copied().filter(|r| !have.contains(r)).collect();
                let extra: Vec<&str> = have.iter().copied().filter(|r| !want.contains(r)).collect();
                self.authorize(id, &missing, ids).await?;
                self.revoke(id, &extra, ids).await
            }
            Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
                crate::resources::load_balancing::update(self, change.kind, id, p, ids).await
            }
            Kind::DbSubnetGroup | Kind::Database => {
                crate::resources::database::update(self, change.kind, id, p, ids).await
            }
            Kind::LaunchTemplate | Kind::AutoScalingGroup | Kind::ScalingPolicy => {
                crate::resources::compute::put(self, change.kind, &change.name, Some(id), p, ids)
                    .await
                    .map(drop)
            }
            Kind::Alarm | Kind::Dashboard => {
                crate::resources::monitoring::put(self, change.kind, &change.name, p, ids).await
            }
            Kind::Bucket => crate::resources::bucket::update(self, id, p).await,
            Kind::Secret => crate::resources::secret::update(self, id, p).await,
            // Every property of these is replace-only.
            Kind::ElasticIp | Kind::NatGateway => Ok(()),
            Kind::Queue => crate::resources::queue::update(self, id, p).await,
        }
    }

    async fn set_vpc_dns(&self, id: &str, p: &Props) -> anyhow::Result<()> {
        let on = |field: &str| {
            AttributeBooleanValue::builder()
                .value(p[field] == "true")
                .build()
        };
        self.ec2
            .modify_vpc_attribute()
            .vpc_id(id)
            .enable_dns_support(on("dns_support"))
            .send()
            .await?;
        self.ec2
            .modify_vpc_attribute()
            .vpc_id(id)
            .enable_dns_hostnames(on("dns_hostnames"))
            .send()
            .await?;
        Ok(())
    }

    async fn set_public_ip(&self, id: &str, p: &Props) -> anyhow::Result<()> {
        let value = AttributeBooleanValue::builder()
            .value(p["public_ip_on_launch"] == "true")
            .build();
        self.ec2
            .modify_subnet_attribute()
            .subnet_id(id)
            .map_public_ip_on_launch(value)
            .send()
            .await?;
        Ok(())
    }

    fn permission(&self, rule: &str, ids: &Ids) -> anyhow::Result<IpPermission> {
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

    async fn authorize(&self, group: &str, rules: &[&str], ids: &Ids) -> anyhow::Result<()> {
        for rule in rules {
            let result = self
                .ec2
                .authorize_security_group_ingress()
                .group_id(group)
                .ip_permissions(self.permission(rule, ids)?)
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

    async fn revoke(&self, group: &str, rules: &[&str], ids: &Ids) -> anyhow::Result<()> {
        for rule in rules {
            let result = self
                .ec2
                .revoke_security_group_ingress()
                .group_id(group)
                .ip_permissions(self.permission(rule, ids)?)
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

    // ------------------------------------------------------------------------- delete

    /// Deletes one resource, retrying while AWS says something still depends on it.
    pub async fn delete(&self, kind: Kind, name: &str, id: &str) -> anyhow::Result<()> {
        let mut wait = Duration::from_secs(2);
        for attempt in 1..=6 {
            match self.delete_once(kind, id).await {
                Ok(()) => return Ok(()),
                Err(DeleteError::Aws(ErrorKind::NotFound, _)) => return Ok(()),
                Err(DeleteError::Aws(ErrorKind::DependencyViolation | ErrorKind::Throttled, e))
                    if attempt < 6 =>
                {
                    eprintln!(
                        "  waiting {}s for what depends on {kind} {name} to go ({e})",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(DeleteError::Aws(_, e)) => return Err(e),
                Err(DeleteError::Other(e)) => return Err(e),
            }
        }
        bail!("{kind} {name} is still in use")
    }

    async fn delete_once(&self, kind: Kind, id: &str) -> Result<(), DeleteError> {
        match kind {
            Kind::Vpc => self
                .ec2
                .delete_vpc()
                .vpc_id(id)
                .send()
                .await
                .map(drop)
                .map_err(DeleteError::from_sdk),
            Kind::Subnet => self
                .ec2
                .delete_subnet()
                .subnet_id(id)
                .send()
                .await
                .map(drop)
                .map_err(DeleteError::from_sdk),
            Kind::InternetGateway => {
                let found = self
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
                        self.ec2
                            .detach_internet_gateway()
                            .internet_gateway_id(id)
                            .vpc_id(vpc)
                            .send()
                            .await
                            .map_err(DeleteError::from_sdk)?;
                    }
                }
                self.ec2
                    .delete_internet_gateway()
                    .internet_gateway_id(id)
                    .send()
                    .await
                    .map(drop)
                    .map_err(DeleteError::from_sdk)
            }
            Kind::RouteTable => {
                let found = self
                    .ec2
                    .describe_route_tables()
                    .route_table_ids(id)
                    .send()
                    .await
                    .map_err(DeleteError::from_sdk)?;
                for association in found.route_tables().iter().flat_map(|t| t.associations()) {
                    if association.main() != Some(true) {
                        if let Some(association_id) = association.route_table_association_id() {
                            self.ec2
                                .disassociate_route_table()
                                .association_id(association_id)
                                .send()
                                .await
                                .map_err(DeleteError::from_sdk)?;
                        }
                    }
                }
                self.ec2
                    .delete_route_table()
                    .route_table_id(id)
                    .send()
                    .await
                    .map(drop)
                    .map_err(DeleteError::from_sdk)
            }
            Kind::SecurityGroup => self
                .ec2
                .delete_security_group()
                .group_id(id)
                .send()
                .await
                .map(drop)
                .map_err(DeleteError::from_sdk),
            Kind::Queue => crate::resources::queue::delete(self, id).await,
            Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
                crate::resources::load_balancing::delete(self, kind, id).await
            }
            Kind::DbSubnetGroup | Kind::Database => {
                crate::resources::database::delete(self, kind, id).await
            }
            Kind::LaunchTemplate | Kind::AutoScalingGroup | Kind::ScalingPolicy => {
                crate::resources::compute::delete(self, kind, id, id).await
            }
            Kind::Secret => crate::resources::secret::delete(self, id).await,
            Kind::ElasticIp => self.release_address(id).await,
            Kind::NatGateway => self.delete_nat_gateway(id).await,
            Kind::Alarm | Kind::Dashboard => {
                crate::resources::monitoring::delete(self, kind, id).await
            }
            Kind::Bucket => crate::resources::bucket::delete(self, id).await,
        }
    }

    /// Removes every ingress rule of the stack's security groups that names another
    /// group, so the groups can then be deleted in any order.
    pub async fn revoke_cross_references(&self) -> anyhow::Result<()> {
        let groups = self
            .ec2
            .describe_security_groups()
            .filters(self.stack_filter())
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
            self.ec2
                .revoke_security_group_ingress()
                .group_id(group.group_id().unwrap_or_default())
                .set_ip_permissions(Some(referencing))
                .send()
                .await?;
        }
        Ok(())
    }
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

/// The names a change's desired properties mention: what must exist before it.
fn references(change: &Change) -> impl Iterator<Item = &str> {
    change
        .desired
        .iter()
        // A script mentions names in passing; what it depends on is listed beside it.
        .filter(|(field, _)| field.as_str() != "user_data")
        .map(|(_, value)| value)
        .flat_map(|v| v.split([',', ';', ' ']))
        .filter(|token| !token.is_empty())
}

pub(crate) fn observed(kind: Kind, name: String, id: String, props: &[(&str, String)]) -> Observed {
    Observed {
        resource: Resource::new(kind, name, props),
        id,
    }
}
