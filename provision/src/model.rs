//! Desired and observed resources as plain data, and the pure diff between them.
//!
//! Architecture invariant: nothing here talks to AWS. A resource is a kind, a logical name
//! (`<stack>-…`, also its Name tag) and flat properties; references to other resources
//! are by logical name, so desired and observed state compare directly.

use std::collections::BTreeMap;
use std::fmt;

pub type Props = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Vpc,
    Subnet,
    InternetGateway,
    RouteTable,
    SecurityGroup,
    Bucket,
    Queue,
    Alarm,
    Dashboard,
    AlertTopic,
    AlertSubscription,
    TargetGroup,
    LoadBalancer,
    Listener,
    DbSubnetGroup,
    DbParameterGroup,
    Database,
    LaunchTemplate,
    AutoScalingGroup,
    ScalingPolicy,
    LifecycleHook,
    Secret,
    ElasticIp,
    NatGateway,
    InstanceRole,
}

impl Kind {
    /// Properties that cannot change in place: a difference means delete and recreate.
    pub(crate) fn replace_only(self) -> &'static [&'static str] {
        match self {
            Kind::Vpc => &["cidr"],
            Kind::Subnet => &["cidr", "zone", "vpc"],
            Kind::SecurityGroup => &["vpc", "description"],
            Kind::RouteTable => &["vpc"],
            Kind::TargetGroup => &["vpc", "protocol", "port"],
            Kind::LoadBalancer => &["scheme"],
            Kind::Database => &[
                "engine",
                // This tool does not run major upgrades (they need a new parameter group
                // family and a maintenance window): `up` refuses, and says so.
                "engine_version",
                "encrypted",
                "subnet_group",
                "database_name",
                "master_username",
            ],
            Kind::DbParameterGroup => &["family"],
            Kind::DbSubnetGroup | Kind::LaunchTemplate | Kind::AutoScalingGroup => &[],
            Kind::ScalingPolicy => &["group", "policy_type"],
            Kind::LifecycleHook => &["group", "transition"],
            Kind::InternetGateway
            | Kind::Bucket
            | Kind::Queue
            | Kind::Alarm
            | Kind::Dashboard
            | Kind::Listener
            | Kind::Secret => &[],
            Kind::ElasticIp => &["domain"],
            Kind::NatGateway => &["subnet", "address"],
            Kind::InstanceRole => &["trust"],
            Kind::AlertTopic => &[],
            // One per address: another address is another subscription.
            Kind::AlertSubscription => &["topic", "protocol", "endpoint"],
        }
    }

    /// Whether deleting the resource deletes data no configuration can bring back (every
    /// user, video and vote): `up` never replaces one of these unasked, and `plan` says
    /// DATA LOSS where it would.
    pub fn holds_data(self) -> bool {
        matches!(self, Kind::Database | Kind::Bucket)
    }

    /// Whether `up` deletes one left over from an earlier configuration: it holds no
    /// data and would go on acting on the stack (a scaling policy of the other worker
    /// policy, its alarms), so leaving it would not converge. Other orphans wait for
    /// `down` or an operator.
    pub fn removed_by_up(self) -> bool {
        matches!(
            self,
            Kind::ScalingPolicy | Kind::Alarm | Kind::LifecycleHook | Kind::AlertSubscription
        )
    }

    /// Deletion order, lowest first: whatever depends on a resource goes before it (the
    /// groups and their instances before the launch templates, target group and security
    /// groups; the load balancer before its target group and group; the database before
    /// its subnet group and group; route tables before subnets and the gateway; the VPC
    /// last).
    pub fn teardown_rank(self) -> u8 {
        match self {
            Kind::Alarm
            | Kind::Dashboard
            | Kind::Queue
            | Kind::Bucket
            | Kind::Listener
            | Kind::Database
            | Kind::ScalingPolicy
            | Kind::LifecycleHook
            | Kind::AutoScalingGroup
            | Kind::AlertSubscription
            | Kind::Secret => 0,
            Kind::RouteTable
            | Kind::LoadBalancer
            | Kind::DbSubnetGroup
            | Kind::DbParameterGroup
            | Kind::AlertTopic
            | Kind::LaunchTemplate => 1,
            // After the route through it, before its subnet and its address.
            Kind::NatGateway => 2,
            // After the launch templates naming its instance profile.
            Kind::InstanceRole => 2,
            Kind::SecurityGroup
            | Kind::Subnet
            | Kind::InternetGateway
            | Kind::TargetGroup
            | Kind::ElasticIp => 3,
            Kind::Vpc => 4,
        }
    }

    /// Display order of a plan (creation itself follows references, see `Aws::apply`).
    pub fn order(self) -> u8 {
        match self {
            Kind::Vpc => 0,
            Kind::Subnet | Kind::InternetGateway | Kind::SecurityGroup => 1,
            Kind::RouteTable => 2,
            Kind::Queue
            | Kind::Bucket
            | Kind::Secret
            | Kind::ElasticIp
            | Kind::InstanceRole
            | Kind::AlertTopic => 0,
            Kind::AlertSubscription => 1,
            Kind::NatGateway => 2,
            // Alarms name their queue, so they come after it.
            // After the scaling policies their actions name.
            Kind::Alarm | Kind::Dashboard => 6,
            Kind::LaunchTemplate => 2,
            Kind::AutoScalingGroup => 4,
            Kind::ScalingPolicy | Kind::LifecycleHook => 5,
            Kind::TargetGroup => 2,
            Kind::LoadBalancer => 3,
            Kind::Listener => 4,
            Kind::DbSubnetGroup | Kind::DbParameterGroup => 2,
            Kind::Database => 3,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Vpc => "vpc",
            Kind::Subnet => "subnet",
            Kind::InternetGateway => "internet-gateway",
            Kind::RouteTable => "route-table",
            Kind::SecurityGroup => "security-group",
            Kind::Bucket => "bucket",
            Kind::Queue => "queue",
            Kind::Alarm => "alarm",
            Kind::Dashboard => "dashboard",
            Kind::AlertTopic => "alert-topic",
            Kind::AlertSubscription => "alert-subscription",
            Kind::TargetGroup => "target-group",
            Kind::LoadBalancer => "load-balancer",
            Kind::Listener => "listener",
            Kind::DbSubnetGroup => "db-subnet-group",
            Kind::DbParameterGroup => "db-parameter-group",
            Kind::InstanceRole => "instance-role",
            Kind::Database => "database",
            Kind::LaunchTemplate => "launch-template",
            Kind::AutoScalingGroup => "autoscaling-group",
            Kind::ScalingPolicy => "scaling-policy",
            Kind::LifecycleHook => "lifecycle-hook",
            Kind::Secret => "secret",
            Kind::ElasticIp => "elastic-ip",
            Kind::NatGateway => "nat-gateway",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub props: Props,
}

impl Resource {
    pub fn new(kind: Kind, name: impl Into<String>, props: &[(&str, String)]) -> Self {
        Self {
            kind,
            name: name.into(),
            props: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }
}

/// A resource as found in AWS, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub resource: Resource,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Update(Vec<FieldChange>),
    /// A property AWS cannot change in place differs: delete, then create.
    Replace(Vec<FieldChange>),
    Ok,
    /// Carries the stack tag but is not in the desired state.
    Orphan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub id: Option<String>,
    pub action: Action,
    /// Desired properties (empty for an orphan).
    pub desired: Props,
}

impl Change {
    pub fn is_change(&self) -> bool {
        self.action != Action::Ok
    }
}

/// Compares desired with observed: one change per desired resource, in creation order,
/// then one per orphan.
pub fn diff(desired: &[Resource], observed: &[Observed]) -> Vec<Change> {
    let mut changes: Vec<Change> = desired
        .iter()
        .map(|want| {
            let found = observed
                .iter()
                .find(|o| o.resource.kind == want.kind && o.resource.name == want.name);
            let action = match found {
                None => Action::Create,
                Some(have) => {
                    let fields = field_changes(&want.props, &have.resource.props);
                    let replace = fields
                        .iter()
                        .any(|f| want.kind.replace_only().contains(&f.field.as_str()));
                    match (fields.is_empty(), replace) {
                        (true, _) => Action::Ok,
                        (false, true) => Action::Replace(fields),
                        (false, false) => Action::Update(fields),
                    }
                }
            };
            Change {
                kind: want.kind,
                name: want.name.clone(),
                id: found.map(|o| o.id.clone()),
                action,
                desired: want.props.clone(),
            }
        })
        .collect();
    changes.sort_by_key(|c| c.kind.order());
    for orphan in observed.iter().filter(|o| {
        !desired
            .iter()
            .any(|d| d.kind == o.resource.kind && d.name == o.resource.name)
    }) {
        changes.push(Change {
            kind: orphan.resource.kind,
            name: orphan.resource.name.clone(),
            id: Some(orphan.id.clone()),
            action: Action::Orphan,
            desired: Props::new(),
        });
    }
    changes
}

/// Differences in desired fields. Fields only AWS reports (not desired) are ignored: that
/// is how state owned by someone else (e.g. an autoscaler) stays out of the drift.
fn field_changes(want: &Props, have: &Props) -> Vec<FieldChange> {
    want.iter()
        .filter(|(field, value)| have.get(*field) != Some(value))
        .map(|(field, value)| FieldChange {
            field: field.clone(),
            old: have.get(field).map(|v| shown(v)),
            new: Some(shown(value)),
        })
        .collect()
}

/// A value as a plan shows it: a script (user data) by its SHA-256, anything else as is.
fn shown(value: &str) -> String {
    use sha2::Digest;
    if !value.contains('\n') {
        return value.to_owned();
    }
    let hex = format!("{:x}", sha2::Sha256::digest(value.as_bytes()));
    format!("sha256:{}… ({} lines)", &hex[..12], value.lines().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpc(cidr: &str, dns: &str) -> Resource {
        Resource::new(
            Kind::Vpc,
            "anb-vpc",
            &[("cidr", cidr.into()), ("dns_hostnames", dns.into())],
        )
    }

    fn seen(resource: Resource, id: &str) -> Observed {
        Observed {
            resource,
            id: id.into(),
        }
    }

    #[test]
    fn missing_resources_are_created_and_matching_ones_are_ok() {
        let desired = [vpc("10.0.0.0/16", "true")];
        assert_eq!(diff(&desired, &[])[0].action, Action::Create);
        let same = diff(&desired, &[seen(vpc("10.0.0.0/16", "true"), "vpc-1")]);
        assert_eq!(same[0].action, Action::Ok);
        assert_eq!(same[0].id.as_deref(), Some("vpc-1"));
    }

    #[test]
    fn in_place_changes_update_and_fixed_ones_replace() {
        let desired = [vpc("10.0.0.0/16", "true")];
        let dns = diff(&desired, &[seen(vpc("10.0.0.0/16", "false"), "vpc-1")]);
        assert_eq!(
            dns[0].action,
            Action::Update(vec![FieldChange {
                field: "dns_hostnames".into(),
                old: Some("false".into()),
                new: Some("true".into())
            }])
        );
        let cidr = diff(&desired, &[seen(vpc("10.9.0.0/16", "true"), "vpc-1")]);
        assert_eq!(
            cidr[0].action,
            Action::Replace(vec![FieldChange {
                field: "cidr".into(),
                old: Some("10.9.0.0/16".into()),
                new: Some("10.0.0.0/16".into())
            }])
        );
    }

    #[test]
    fn fields_only_aws_reports_are_not_drift() {
        let desired = [Resource::new(
            Kind::Queue,
            "anb-jobs",
            &[("visibility_timeout", "1800".into())],
        )];
        let mut observed = Resource::new(
            Kind::Queue,
            "anb-jobs",
            &[("visibility_timeout", "1800".into())],
        );
        observed
            .props
            .insert("approximate_messages".into(), "42".into());
        assert_eq!(
            diff(&desired, &[seen(observed, "url")])[0].action,
            Action::Ok
        );
    }

    #[test]
    fn tagged_resources_not_desired_are_orphans() {
        let orphan = seen(Resource::new(Kind::SecurityGroup, "anb-old", &[]), "sg-9");
        let changes = diff(&[], &[orphan]);
        assert_eq!(changes[0].action, Action::Orphan);
    }

    #[test]
    fn teardown_removes_dependents_first() {
        let before = |first: Kind, then: Kind| {
            assert!(
                first.teardown_rank() < then.teardown_rank(),
                "{first} must go before {then}"
            );
        };
        before(Kind::AutoScalingGroup, Kind::LaunchTemplate);
        before(Kind::AutoScalingGroup, Kind::SecurityGroup);
        before(Kind::AutoScalingGroup, Kind::TargetGroup);
        before(Kind::Listener, Kind::LoadBalancer);
        before(Kind::LoadBalancer, Kind::TargetGroup);
        before(Kind::LoadBalancer, Kind::SecurityGroup);
        before(Kind::Database, Kind::DbSubnetGroup);
        before(Kind::Database, Kind::DbParameterGroup);
        before(Kind::Database, Kind::SecurityGroup);
        before(Kind::DbSubnetGroup, Kind::Subnet);
        before(Kind::RouteTable, Kind::Subnet);
        before(Kind::RouteTable, Kind::InternetGateway);
        before(Kind::RouteTable, Kind::NatGateway);
        before(Kind::NatGateway, Kind::Subnet);
        before(Kind::NatGateway, Kind::ElasticIp);
        before(Kind::ElasticIp, Kind::Vpc);
        for kind in [
            Kind::Subnet,
            Kind::InternetGateway,
            Kind::SecurityGroup,
            Kind::TargetGroup,
        ] {
            before(kind, Kind::Vpc);
        }
    }

    #[test]
    fn scripts_show_as_digests() {
        let template = |script: &str| {
            Resource::new(
                Kind::LaunchTemplate,
                "anb-web-template",
                &[("user_data", script.into())],
            )
        };
        let changes = diff(
            &[template("#!/bin/bash\nRELEASE='2'\n")],
            &[seen(template("#!/bin/bash\nRELEASE='1'\n"), "lt-1")],
        );
        let Action::Update(fields) = &changes[0].action else {
            panic!("{changes:?}")
        };
        let (old, new) = (
            fields[0].old.clone().unwrap(),
            fields[0].new.clone().unwrap(),
        );
        assert!(
            old.starts_with("sha256:") && old.ends_with("(2 lines)"),
            "{old}"
        );
        assert_ne!(old, new);
    }
}
