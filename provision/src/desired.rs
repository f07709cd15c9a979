//! The desired state: a pure function of the configuration (and the account id, which
//! makes the bucket name globally unique).

use crate::config::Config;
use crate::model::Resource;
use crate::names::{bucket_name, Names};
use crate::resources::{
    alerts, bucket, compute, database, load_balancing, monitoring, network, queue, role, secret,
    security_group,
};
use crate::userdata::Release;

/// What the desired state depends on besides the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Makes the bucket name globally unique.
    pub account_id: &'a str,
    /// `instances.ami`, or the image it was looked up as when empty.
    pub ami: &'a str,
    /// The services' release the instances run, with its binaries' digests.
    pub release: Release<'a>,
    /// Whether AWS is reached over TLS. Through an emulator on plain HTTP the bucket gets
    /// no TLS-only policy: it would (rightly) deny this very tool's requests.
    pub over_tls: bool,
}

pub fn desired_state(config: &Config, inputs: &Inputs) -> Vec<Resource> {
    let Inputs {
        account_id,
        ami,
        release,
        over_tls,
    } = *inputs;
    let n = Names {
        stack: config.stack.name.clone(),
    };
    let vpc = n.of("vpc");
    let mut out = network::desired(&n, config);
    out.extend(security_group::desired(&n));
    let log_writer = config
        .load_balancer
        .access_logs
        .then(|| crate::config::elb_log_account(&config.stack.region))
        .flatten();
    out.push(bucket::desired(
        bucket_name(config, account_id),
        over_tls,
        log_writer.map(|writer| (writer, account_id)),
    ));
    out.push(queue::desired_dead_letter_queue(&n));
    out.extend(alerts::desired(&n, config));
    out.extend(monitoring::desired(&n, config));
    let access_logs_bucket = config
        .load_balancer
        .access_logs
        .then(|| bucket_name(config, account_id));
    out.extend(load_balancing::desired(
        &n,
        &vpc,
        &config.load_balancer.certificate_arn,
        access_logs_bucket.as_deref(),
    ));
    out.extend(database::desired(&n, config));
    out.push(secret::desired(&n));
    out.extend(role::desired(&n, config, account_id));
    out.extend(compute::desired(&n, config, account_id, ami, &release));
    out.push(queue::desired_queue(&n, config));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceSubnets;
    use crate::model::Kind;

    const SEED: Inputs = Inputs {
        account_id: "123456789012",
        ami: "ami-0123",
        release: Release {
            name: "r1",
            api_sha256: "a1",
            worker_sha256: "b2",
        },
        over_tls: true,
    };

    fn find<'a>(all: &'a [Resource], name: &str) -> &'a Resource {
        all.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn seed_network_spans_two_zones_with_public_and_private_subnets() {
        let all = desired_state(&Config::load(None).unwrap(), &SEED);
        assert_eq!(find(&all, "anb-vpc").props["dns_hostnames"], "true");
        for (name, zone, public) in [
            ("anb-public-a", "us-east-1a", "true"),
            ("anb-private-b", "us-east-1b", "false"),
        ] {
            let subnet = find(&all, name);
            assert_eq!(subnet.props["zone"], zone);
            assert_eq!(subnet.props["public_ip_on_launch"], public);
        }
        assert_eq!(
            find(&all, "anb-public").props["subnets"],
            "anb-public-a,anb-public-b"
        );
    }

    #[test]
    fn private_mode_runs_the_instances_behind_a_nat_gateway() {
        let public = desired_state(&Config::load(None).unwrap(), &SEED);
        assert!(public.iter().all(|r| r.kind != Kind::NatGateway));
        assert_eq!(
            find(&public, "anb-worker-asg").props["subnets"],
            "anb-public-a,anb-public-b"
        );
        let mut config = Config::load(None).unwrap();
        config.network.instances = InstanceSubnets::Private;
        let private = desired_state(&config, &SEED);
        for tier in ["web", "worker"] {
            assert_eq!(
                find(&private, &format!("anb-{tier}-asg")).props["subnets"],
                "anb-private-a,anb-private-b"
            );
        }
        let routes = find(&private, "anb-private");
        assert_eq!(routes.props["default_route"], "anb-nat");
        assert_eq!(routes.props["subnets"], "anb-private-a,anb-private-b");
        assert_eq!(find(&private, "anb-nat").props["subnet"], "anb-public-a");
        assert_eq!(find(&private, "anb-nat").props["address"], "anb-nat-ip");
    }

    #[test]
    fn security_groups_are_exactly_the_seeds() {
        let all = desired_state(&Config::load(None).unwrap(), &SEED);
        assert_eq!(
            find(&all, "anb-alb").props["ingress"],
            "tcp:443 from 0.0.0.0/0;tcp:80 from 0.0.0.0/0"
        );
        assert_eq!(
            find(&all, "anb-web").props["ingress"],
            "tcp:80 from anb-alb"
        );
        assert_eq!(find(&all, "anb-worker").props["ingress"], "");
        assert_eq!(
            find(&all, "anb-db").props["ingress"],
            "tcp:5432 from anb-web;tcp:5432 from anb-worker"
        );
    }

    #[test]
    fn the_bucket_accepts_only_tls_when_aws_is_reached_over_tls() {
        let all = desired_state(&Config::load(None).unwrap(), &SEED);
        let policy: serde_json::Value =
            serde_json::from_str(&find(&all, "anb-videos-123456789012").props["policy"]).unwrap();
        assert_eq!(policy["Statement"].as_array().unwrap().len(), 1, "{policy}");
        assert_eq!(
            policy["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"],
            "false"
        );
        let plain_http = Inputs {
            over_tls: false,
            ..SEED
        };
        let all = desired_state(&Config::load(None).unwrap(), &plain_http);
        assert_eq!(find(&all, "anb-videos-123456789012").props["policy"], "");
    }

    #[test]
    fn worker_tracks_backlog_per_instance_with_metric_math() {
        let all = desired_state(&Config::load(None).unwrap(), &SEED);
        let policy = find(&all, "anb-worker-backlog");
        assert_eq!(policy.props["policy_type"], "TargetTrackingScaling");
        assert_eq!(policy.props["target"], "2");
        assert_eq!(policy.props["group"], "anb-worker-asg");
        let metrics = &policy.props["metrics"];
        assert!(metrics.starts_with(
            "m1=AWS/SQS:ApproximateNumberOfMessagesVisible:QueueName=anb-video-processing:"
        ));
        assert!(metrics.contains(
            "m2=AWS/AutoScaling:GroupInServiceInstances:AutoScalingGroupName=anb-worker-asg:"
        ));
        assert!(metrics.ends_with("e1=m1 / m2"));
        assert_eq!(
            find(&all, "anb-worker-asg").props["metrics_collection"],
            "true"
        );
    }

    #[test]
    fn the_step_policy_deploys_the_configured_thresholds() {
        let mut config = Config::load(None).unwrap();
        config.worker.scaling_policy = crate::config::WorkerScaling::Step;
        let seed = desired_state(&config, &SEED);
        assert_eq!(
            find(&seed, "anb-worker-backlog-high").props["threshold"],
            "2"
        );
        assert_eq!(
            find(&seed, "anb-worker-backlog-low").props["threshold"],
            "1"
        );
        // What `capacity simulate --recommend` may print.
        config.worker.step_out_above = 8.0;
        config.worker.step_in_below = 2.5;
        let tuned = desired_state(&config, &SEED);
        assert_eq!(
            find(&tuned, "anb-worker-backlog-high").props["threshold"],
            "8"
        );
        assert_eq!(
            find(&tuned, "anb-worker-backlog-low").props["threshold"],
            "2.5"
        );
    }

    #[test]
    fn web_scales_on_the_seeds_cpu_steps_behind_the_load_balancer() {
        let all = desired_state(&Config::load(None).unwrap(), &SEED);
        let high = find(&all, "anb-web-cpu-high");
        assert_eq!(
            (
                high.props["threshold"].as_str(),
                high.props["evaluation_periods"].as_str()
            ),
            ("70", "2")
        );
        assert_eq!(high.props["action"], "anb-web-scale-out");
        let low = find(&all, "anb-web-cpu-low");
        assert_eq!(
            (
                low.props["threshold"].as_str(),
                low.props["evaluation_periods"].as_str()
            ),
            ("30", "5")
        );
        assert_eq!(find(&all, "anb-web-scale-out").props["cooldown"], "300");
        assert_eq!(find(&all, "anb-web-scale-in").props["cooldown"], "600");
        let group = find(&all, "anb-web-asg");
        assert_eq!(group.props["health_check"], "ELB");
        assert_eq!(group.props["target_groups"], "anb-web-targets");
        assert_eq!(
            (
                group.props["min_size"].as_str(),
                group.props["max_size"].as_str()
            ),
            ("1", "3")
        );
        assert_eq!(
            find(&all, "anb-web-template").props["imds_tokens"],
            "required"
        );
        assert_eq!(
            find(&all, "anb-web-template").props["instance_profile"],
            "LabInstanceProfile"
        );
    }

    #[test]
    fn logical_names_are_unique_because_they_are_references() {
        let all = desired_state(&Config::load(None).unwrap(), &SEED);
        let mut names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "two resources share a name");
    }

    #[test]
    fn every_kind_diffs_field_by_field_into_update_or_replace() {
        use crate::model::{diff, Action, Observed};
        let mut private = Config::load(None).unwrap();
        private.network.instances = InstanceSubnets::Private;
        private.alerts.emails = vec!["ops@anb.example".into()];
        let all = desired_state(&private, &SEED);
        let mut kinds = std::collections::BTreeSet::new();
        for resource in &all {
            kinds.insert(resource.kind);
            let same = Observed {
                resource: resource.clone(),
                id: "id-1".into(),
            };
            assert_eq!(
                diff(std::slice::from_ref(resource), &[same])[0].action,
                Action::Ok,
                "{}",
                resource.name
            );
            for field in resource.props.keys() {
                let mut drifted = resource.clone();
                drifted.props.insert(field.clone(), "something else".into());
                let observed = Observed {
                    resource: drifted,
                    id: "id-1".into(),
                };
                let action = &diff(std::slice::from_ref(resource), &[observed])[0].action;
                let replace = resource.kind.replace_only().contains(&field.as_str());
                match action {
                    Action::Replace(fields) if replace => assert_eq!(fields[0].field, *field),
                    Action::Update(fields) if !replace => assert_eq!(fields[0].field, *field),
                    other => panic!(
                        "{} {}: {field} changed gave {other:?}",
                        resource.kind, resource.name
                    ),
                }
            }
        }
        assert_eq!(
            kinds.len(),
            24,
            "every kind of resource is in the desired state of the private network mode"
        );
    }

    #[test]
    fn a_certificate_adds_https_and_makes_http_redirect() {
        let plain = desired_state(&Config::load(None).unwrap(), &SEED);
        assert_eq!(
            find(&plain, "anb-http-80").props["forward_to"],
            "anb-web-targets"
        );
        assert!(plain.iter().all(|r| r.name != "anb-https-443"));
        let mut config = Config::load(None).unwrap();
        config.load_balancer.certificate_arn = "arn:aws:acm:us-east-1:1:certificate/x".into();
        let secure = desired_state(&config, &SEED);
        assert_eq!(
            find(&secure, "anb-http-80").props["redirect_to"],
            "HTTPS:443"
        );
        let https = find(&secure, "anb-https-443");
        assert_eq!(
            (
                https.props["port"].as_str(),
                https.props["forward_to"].as_str()
            ),
            ("443", "anb-web-targets")
        );
        assert_eq!(
            https.props["certificate"],
            "arn:aws:acm:us-east-1:1:certificate/x"
        );
        assert_eq!(
            https.props["ssl_policy"],
            "ELBSecurityPolicy-TLS13-1-2-2021-06"
        );
    }
}
