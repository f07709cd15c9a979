//! One module per family of AWS resources, each with the same parts: what the family's
//! resources should be (`desired…`), what they are (`observe`), and one signature per
//! operation: `create(aws, change, ids) -> id`, `update(aws, change, id, ids)` and
//! `delete(aws, kind, id)`. A family that can lose data (the database, the token secret)
//! also takes the command's `Safeguards`, last. The three functions below are the only
//! dispatch by `Kind`; the engine calls them.
//!
//! Every family is here; `desired.rs` only puts their desired resources in order.

pub(crate) mod alerts;
pub(crate) mod bucket;
pub(crate) mod compute;
pub(crate) mod database;
pub(crate) mod load_balancing;
pub(crate) mod monitoring;

pub(crate) mod network;
pub(crate) mod queue;
pub(crate) mod role;
pub(crate) mod secret;
pub(crate) mod security_group;

use crate::aws::{Aws, DeleteError, Ids};
use crate::model::{Change, Kind};
use crate::Safeguards;

pub(crate) async fn create(
    aws: &Aws,
    change: &Change,
    ids: &Ids,
    safeguards: &Safeguards,
) -> anyhow::Result<String> {
    match change.kind {
        Kind::Vpc
        | Kind::Subnet
        | Kind::InternetGateway
        | Kind::RouteTable
        | Kind::ElasticIp
        | Kind::NatGateway => network::create(aws, change, ids).await,
        Kind::SecurityGroup => security_group::create(aws, change, ids).await,
        Kind::Bucket => bucket::create(aws, change, ids).await,
        Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
            load_balancing::create(aws, change, ids).await
        }
        Kind::DbSubnetGroup | Kind::DbParameterGroup | Kind::Database => {
            database::create(aws, change, ids, safeguards).await
        }
        Kind::LaunchTemplate
        | Kind::AutoScalingGroup
        | Kind::ScalingPolicy
        | Kind::LifecycleHook => compute::create(aws, change, ids).await,
        Kind::Secret => secret::create(aws, change, ids).await,
        Kind::InstanceRole => role::create(aws, change, ids).await,
        Kind::Alarm | Kind::Dashboard => monitoring::create(aws, change, ids).await,
        Kind::AlertTopic | Kind::AlertSubscription => alerts::create(aws, change, ids).await,
        Kind::Queue => queue::create(aws, change, ids).await,
    }
}

pub(crate) async fn update(aws: &Aws, change: &Change, id: &str, ids: &Ids) -> anyhow::Result<()> {
    match change.kind {
        Kind::Vpc
        | Kind::Subnet
        | Kind::InternetGateway
        | Kind::RouteTable
        | Kind::ElasticIp
        | Kind::NatGateway => network::update(aws, change, id, ids).await,
        Kind::SecurityGroup => security_group::update(aws, change, id, ids).await,
        Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
            load_balancing::update(aws, change, id, ids).await
        }
        Kind::DbSubnetGroup | Kind::DbParameterGroup | Kind::Database => {
            database::update(aws, change, id, ids).await
        }
        Kind::LaunchTemplate
        | Kind::AutoScalingGroup
        | Kind::ScalingPolicy
        | Kind::LifecycleHook => compute::update(aws, change, id, ids).await,
        Kind::Alarm | Kind::Dashboard => monitoring::update(aws, change, id, ids).await,
        Kind::AlertTopic | Kind::AlertSubscription => alerts::update(aws, change, id, ids).await,
        Kind::Bucket => bucket::update(aws, change, id, ids).await,
        Kind::Secret => secret::update(aws, change, id, ids).await,
        Kind::Queue => queue::update(aws, change, id, ids).await,
        Kind::InstanceRole => role::update(aws, change, id, ids).await,
    }
}

pub(crate) async fn delete(
    aws: &Aws,
    kind: Kind,
    id: &str,
    safeguards: &Safeguards,
) -> Result<(), DeleteError> {
    match kind {
        Kind::Vpc
        | Kind::Subnet
        | Kind::InternetGateway
        | Kind::RouteTable
        | Kind::ElasticIp
        | Kind::NatGateway => network::delete(aws, kind, id).await,
        Kind::SecurityGroup => security_group::delete(aws, kind, id).await,
        Kind::Queue => queue::delete(aws, kind, id).await,
        Kind::TargetGroup | Kind::LoadBalancer | Kind::Listener => {
            load_balancing::delete(aws, kind, id).await
        }
        Kind::DbSubnetGroup | Kind::DbParameterGroup | Kind::Database => {
            database::delete(aws, kind, id, safeguards).await
        }
        Kind::LaunchTemplate
        | Kind::AutoScalingGroup
        | Kind::ScalingPolicy
        | Kind::LifecycleHook => compute::delete(aws, kind, id).await,
        Kind::Secret => secret::delete(aws, kind, id, safeguards).await,
        Kind::Alarm | Kind::Dashboard => monitoring::delete(aws, kind, id).await,
        Kind::AlertTopic | Kind::AlertSubscription => alerts::delete(aws, kind, id).await,
        Kind::Bucket => bucket::delete(aws, kind, id).await,
        Kind::InstanceRole => role::delete(aws, kind, id).await,
    }
}
