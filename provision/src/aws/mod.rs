//! Reading and changing the stack in AWS. Everything is found by its stack tag and Name
//! tag on every run (no local state file), described before it is created, and each AWS
//! error is sorted into a kind before anything else is done with it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use crate::model::{Action, Change, Kind, Observed, Resource};

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

    pub(crate) fn stack_filter(&self) -> Filter {
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
            Box::pin(crate::resources::network::observe(self)),
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
        let name = change.name.as_str();
        match change.kind {
            Kind::Vpc
            | Kind::Subnet
            | Kind::InternetGateway
            | Kind::RouteTable
            | Kind::ElasticIp
            | Kind::NatGateway => crate::resources::network::create(self, change, ids).await,
            Kind::SecurityGroup => {
                crate::resources::security_group::create(self, change, ids).await
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
            Kind::Vpc
            | Kind::Subnet
            | Kind::InternetGateway
            | Kind::RouteTable
            | Kind::ElasticIp
            | Kind::NatGateway => crate::resources::network::update(self, change, id, ids).await,
            Kind::SecurityGroup => {
                crate::resources::security_group::update(self, change, id, ids).await
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
            Kind::Queue => crate::resources::queue::update(self, id, p).await,
        }
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
            Kind::Vpc
            | Kind::Subnet
            | Kind::InternetGateway
            | Kind::RouteTable
            | Kind::ElasticIp
            | Kind::NatGateway => crate::resources::network::delete(self, kind, id).await,
            Kind::SecurityGroup => crate::resources::security_group::delete(self, id).await,
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
            Kind::Alarm | Kind::Dashboard => {
                crate::resources::monitoring::delete(self, kind, id).await
            }
            Kind::Bucket => crate::resources::bucket::delete(self, id).await,
        }
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
