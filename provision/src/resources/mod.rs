//! One module per family of AWS resources, each with the same parts: what the family's
//! resources should be (`desired…`), what they are (`observe`), and `create`, `update`
//! and `delete`. The three functions below are the only dispatch by `Kind`; the engine
//! calls them.
//!
//! Every family is here; `desired.rs` only puts their desired resources in order.

pub(crate) mod bucket;
pub(crate) mod compute;
pub(crate) mod database;
pub(crate) mod load_balancing;
pub(crate) mod monitoring;
pub(crate) mod nat;
pub(crate) mod network;
pub(crate) mod queue;
pub(crate) mod role;
pub(crate) mod secret;
pub(crate) mod security_group;

use crate::aws::{Aws, DeleteError, Ids};
use crate::model::{Change, Kind};

pub(crate) async fn create(aws: &Aws, change: &Change, ids: &Ids) -> anyhow::Result<String> {
    let p = &change.desired;
    let name = change.name.as_str();
    match change.kind {
        Kind::Vpc
        | Kind::Subnet
        | Kind::InternetGateway
        | Kind::RouteTable
        | Kind::ElasticIp
        | Kind::NatGateway => network::create(aws, change, ids).await,
        Kind::SecurityGroup => security_group::create(aws, change, ids).await,
        Kind::Bucket => bucket::create(aws, name, p).await,
        Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
            load_balancing::create(aws, change.kind, name, p, ids).await
        }
        Kind::DbSubnetGroup | Kind::DbParameterGroup | Kind::Database => {
            database::create(aws, change.kind, name, p, ids).await
        }
        Kind::LaunchTemplate | Kind::AutoScalingGroup | Kind::ScalingPolicy => {
            compute::put(aws, change.kind, name, None, p, ids).await
        }
        Kind::Secret => secret::create(aws, name, p).await,
        Kind::InstanceRole => role::create(aws, name, p).await,
        Kind::Alarm | Kind::Dashboard => {
            monitoring::put(aws, change.kind, name, p, ids).await?;
            Ok(name.to_owned())
        }
        Kind::Queue => queue::create(aws, name, p).await,
    }
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    let p = &change.desired;
    match change.kind {
        Kind::Vpc
        | Kind::Subnet
        | Kind::InternetGateway
        | Kind::RouteTable
        | Kind::ElasticIp
        | Kind::NatGateway => network::update(aws, change, id, ids).await,
        Kind::SecurityGroup => security_group::update(aws, change, id, ids).await,
        Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
            load_balancing::update(aws, change.kind, id, p, ids).await
        }
        Kind::DbSubnetGroup | Kind::DbParameterGroup | Kind::Database => {
            database::update(aws, change.kind, id, p, ids).await
        }
        Kind::LaunchTemplate | Kind::AutoScalingGroup | Kind::ScalingPolicy => {
            compute::put(aws, change.kind, &change.name, Some(id), p, ids)
                .await
                .map(drop)
        }
        Kind::Alarm | Kind::Dashboard => {
            monitoring::put(aws, change.kind, &change.name, p, ids).await
        }
        Kind::Bucket => bucket::update(aws, id, p).await,
        Kind::Secret => secret::update(aws, id, p).await,
        Kind::Queue => queue::update(aws, id, p).await,
        Kind::InstanceRole => role::update(aws, id, p).await,
    }
}

pub(crate) async fn delete(aws: &Aws, kind: Kind, id: &str) -> Result<(), DeleteError> {
    match kind {
        Kind::Vpc
        | Kind::Subnet
        | Kind::InternetGateway
        | Kind::RouteTable
        | Kind::ElasticIp
        | Kind::NatGateway => network::delete(aws, kind, id).await,
        Kind::SecurityGroup => security_group::delete(aws, id).await,
        Kind::Queue => queue::delete(aws, id).await,
        Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
            load_balancing::delete(aws, kind, id).await
        }
        Kind::DbSubnetGroup | Kind::DbParameterGroup | Kind::Database => {
            database::delete(aws, kind, id).await
        }
        Kind::LaunchTemplate | Kind::AutoScalingGroup | Kind::ScalingPolicy => {
            compute::delete(aws, kind, id, id).await
        }
        Kind::Secret => secret::delete(aws, id).await,
        Kind::Alarm | Kind::Dashboard => monitoring::delete(aws, kind, id).await,
        Kind::Bucket => bucket::delete(aws, id).await,
        Kind::InstanceRole => role::delete(aws, id).await,
    }
}
