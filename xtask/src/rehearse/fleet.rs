//! Auto Scaling's part on the game day, for the calls provision and the worker make: each
//! group's containers follow the instances the emulator holds for it (moto launches and
//! terminates them in its EC2 when a desired capacity changes), each booted from the
//! user data of the launch-template version moto gave it, in the zone moto put it in.
//! The worker group's capacity follows the deployed policy evaluated on the live queue
//! with `capacity::Policy::decide`, the function the simulator calls, on a clock
//! compressed [`Fleet::compression`] times (a policy minute is 60/N seconds here; boots
//! and jobs take what they take).
//!
//! Scale-in is AWS's: one instance per decision, never a protected one (the worker
//! protects its instance while it holds a job; with every candidate protected the
//! scale-in waits), the termination lifecycle hook holds the chosen one (its metadata
//! says `Terminated`) until the worker completes the action or the hook's heartbeat
//! timeout passes, and only then is it terminated. An instance whose container dies is
//! marked unhealthy and terminated without lowering the capacity, so moto launches its
//! replacement. Instance refreshes are carried out here too (`refresh`): new instance
//! first, then the old one through the hook or the load balancer's drain, and back to the
//! version before when a new one fails its health checks or a named alarm goes off.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use capacity::{Policy, PolicyState, Reading};
use serde_json::{json, Value};

use super::aws::Aws;
use super::balancer::Balancer;
use super::instance::{Instance, Progress, Reach};
use super::network::Network;
use super::stand_ins::{Identity, Imds, Pki};
use super::StackFacts;

mod refresh;

/// How long EC2's status checks take to report an instance that lost power (they run
/// every minute), in AWS's seconds.
const STATUS_CHECK_AWS_SECONDS: f64 = 60.0;

/// One Auto Scaling group the fleet follows.
pub(super) struct Group {
    pub(super) name: String,
    pub(super) tier: &'static str,
    /// The unit whose start means an instance of it is healthy.
    pub(super) unit: &'static str,
    /// The termination lifecycle hook, if the group has one: name and heartbeat timeout.
    pub(super) hook: Option<(String, Duration)>,
}

/// A container standing for one EC2 instance of a group.
pub(super) struct Member {
    pub(super) instance: Instance,
    pub(super) group: String,
    pub(super) zone: String,
    pub(super) slot: u8,
    pub(super) template_version: String,
    pub(super) launched: Instant,
    pub(super) healthy_at: Option<Instant>,
    /// Since when the termination hook holds it.
    pub(super) terminating: Option<Instant>,
    /// Protected from scale-in, as moto last said.
    pub(super) protected: bool,
    /// Its journal is already kept (read before it was powered off).
    journal_kept: bool,
    /// When its user data was seen finished: the health check grace period counts from
    /// there (a container's boot, not EC2's, comes before).
    user_data_done_at: Option<Instant>,
    /// Since when the load balancer drains it before its termination (a web instance a
    /// refresh replaces).
    draining_since: Option<Instant>,
    /// When it was first seen gone or failing.
    lost_at: Option<Instant>,
}

impl Member {
    fn address(&self) -> Option<IpAddr> {
        self.instance.netns.as_ref().map(|n| IpAddr::V4(n.address))
    }
}

/// The tier at one tick.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct Sample {
    /// Seconds since the fleet started.
    pub(super) t: f64,
    pub(super) visible: usize,
    pub(super) in_flight: usize,
    pub(super) workers_in_service: u32,
    pub(super) workers_booting: u32,
    pub(super) workers_terminating: u32,
    pub(super) worker_desired: u32,
}

/// What the harness provides every instance.
pub(super) struct Provided<'a> {
    pub(super) dir: &'a Path,
    /// Where the run's report goes: each instance's boot log and worker journal land in
    /// its `instances/`.
    pub(super) run_dir: &'a Path,
    pub(super) images: Images<'a>,
    pub(super) pki: &'a Pki,
    pub(super) facts: &'a StackFacts,
    pub(super) reach: Reach,
    pub(super) network: &'a Network,
    pub(super) imds: &'a Imds,
    pub(super) autoscaling: &'a testkit::AutoScalingStandIn,
}

/// What instances boot from.
pub(super) struct Images<'a> {
    /// The Debian 12 root filesystem, as the seed's stock image.
    pub(super) stock: &'a Path,
    /// By tier, an image with the tier's packages installed, when the run uses them.
    pub(super) baked: &'a BTreeMap<&'static str, PathBuf>,
    /// The instances' shared apt downloads.
    pub(super) apt_cache: &'a Path,
}

/// The worker group's policy, evaluated once a (compressed) minute.
struct Scaling {
    policy: Policy,
    state: PolicyState,
    queue_url: String,
    next_evaluation: Instant,
    /// Scale-ins decided but not begun: every candidate was protected.
    owed: u32,
}

pub(super) struct Fleet<'a> {
    provided: Provided<'a>,
    aws: Aws,
    groups: Vec<Group>,
    pub(super) members: BTreeMap<String, Member>,
    user_data: HashMap<(String, String), String>,
    scaling: Scaling,
    /// How many times faster than AWS's the policy's clock runs.
    pub(super) compression: f64,
    started: Instant,
    /// The wall clock at the start (the database's timestamps are wall-clock).
    pub(super) started_wall: chrono::DateTime<chrono::Utc>,
    /// What happened, with seconds since the start: launches, health, decisions, hooks.
    pub(super) events: Vec<(f64, String)>,
    pub(super) samples: Vec<Sample>,
    /// Seconds from launch to healthy of each instance, by tier.
    pub(super) boot_seconds: BTreeMap<&'static str, Vec<f64>>,
    /// The worker journals of instances already gone, for the scenario's job accounting.
    pub(super) retired_worker_journals: Vec<String>,
    /// The most workers in service at once.
    pub(super) max_workers_in_service: u32,
    /// In front of the web tier once attached: healthy web instances are registered,
    /// departing ones deregistered.
    pub(super) balancer: Option<Balancer>,
    /// Each group's (MinSize, MaxSize) as moto last said.
    bounds: BTreeMap<String, (u32, u32)>,
    /// Each group's launch template version as moto last said.
    group_versions: BTreeMap<String, String>,
    /// The health check grace period of each group whose health check type is ELB (AWS
    /// replaces such an instance that is not healthy by its end), in AWS's seconds.
    elb_grace: BTreeMap<String, f64>,
    /// The instance refresh being carried out, if any (one at a time, as `up` starts them).
    refreshing: Option<refresh::Rolling>,
    /// Zones powered off: nothing launches there (AWS's launches in a failed zone fail,
    /// and it launches in the others).
    pub(super) dark_zones: BTreeSet<String>,
    /// Where the search for the next instance's address starts (see [`next_free_slot`]).
    next_slot: u8,
    logs: PathBuf,
}

/// The highest slot, so the last address is 10.231.0.210 in the /24.
const LAST_SLOT: u8 = 200;

/// The first slot at or after `from` (wrapping after [`LAST_SLOT`]) that no member holds.
/// Addresses go round rather than lowest first, as EC2 does not hand a just-released
/// private address straight to the next instance: a load balancer still retrying a dead
/// target's address would otherwise reach the new instance booting there (nginx's
/// default page answered 404 to the steady traffic in a zone loss).
fn next_free_slot(used: &BTreeSet<u8>, from: u8) -> Option<u8> {
    (from..=LAST_SLOT)
        .chain(0..from.min(LAST_SLOT + 1))
        .find(|slot| !used.contains(slot))
}

/// The groups' instances as moto holds them.
struct Held {
    group: String,
    id: String,
    /// The group's zones, in its order.
    group_zones: Vec<String>,
    version: String,
    template: String,
    protected: bool,
}

impl<'a> Fleet<'a> {
    pub(super) fn start(
        provided: Provided<'a>,
        aws: Aws,
        groups: Vec<Group>,
        policy: Policy,
        queue_url: String,
        compression: f64,
    ) -> Self {
        let logs = provided.run_dir.join("instances");
        let _ = std::fs::create_dir_all(&logs);
        Self {
            provided,
            aws,
            groups,
            members: BTreeMap::new(),
            user_data: HashMap::new(),
            scaling: Scaling {
                policy,
                state: PolicyState::default(),
                queue_url,
                next_evaluation: Instant::now(),
                owed: 0,
            },
            compression,
            started: Instant::now(),
            started_wall: chrono::Utc::now(),
            events: Vec::new(),
            samples: Vec::new(),
            boot_seconds: BTreeMap::new(),
            retired_worker_journals: Vec::new(),
            max_workers_in_service: 0,
            balancer: None,
            bounds: BTreeMap::new(),
            group_versions: BTreeMap::new(),
            elb_grace: BTreeMap::new(),
            refreshing: None,
            dark_zones: BTreeSet::new(),
            next_slot: 0,
            logs,
        }
    }

    pub(super) fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn event(&mut self, text: String) {
        let t = self.elapsed();
        eprintln!("rehearse: [{t:6.1} s] {text}");
        self.events.push((t, text));
    }

    /// The policy's clock: seconds since the start as AWS would count them.
    fn policy_time(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64() * self.compression
    }

    /// One round: containers follow the groups, health is read, hooks are followed, and
    /// once a compressed minute the worker policy decides.
    pub(super) fn tick(&mut self) -> anyhow::Result<()> {
        if super::interruption::interrupted() {
            anyhow::bail!("interrupted"); // what it started is being stopped: start nothing
        }
        let (held, desired) = self.held()?;
        for instance in &held {
            if let Some(member) = self.members.get_mut(&instance.id) {
                member.protected = instance.protected;
            } else {
                self.launch(instance)?;
            }
        }
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|id| !held.iter().any(|h| &h.id == *id))
            .cloned()
            .collect();
        for id in gone {
            self.retire(&id, "terminated by its group");
        }
        self.follow_health()?;
        self.follow_hooks()?;
        self.finish_drains()?;
        self.follow_refreshes()?;
        let (visible, in_flight) = self.queue_depth()?;
        if Instant::now() >= self.scaling.next_evaluation {
            // While the worker group is refreshed its counts hold the refresh's extra
            // instance, which the policy would scale in: it waits for the refresh's end.
            if !self.refreshes(self.worker_group()) {
                self.evaluate(visible)?;
            }
            self.scaling.next_evaluation +=
                Duration::from_secs_f64(capacity::policy::POLICY_PERIOD / self.compression);
        }
        self.begin_owed_scale_ins()?;
        let (in_service, booting, terminating) = self.worker_counts();
        self.max_workers_in_service = self.max_workers_in_service.max(in_service);
        let worker_desired = desired.get(self.worker_group()).copied().unwrap_or(0);
        self.samples.push(Sample {
            t: self.elapsed(),
            visible,
            in_flight,
            workers_in_service: in_service,
            workers_booting: booting,
            workers_terminating: terminating,
            worker_desired,
        });
        Ok(())
    }

    /// The names of the groups it follows.
    pub(super) fn group_names(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.name.clone()).collect()
    }

    fn worker_group(&self) -> &str {
        self.groups
            .iter()
            .find(|g| g.tier == "worker")
            .map(|g| g.name.as_str())
            .unwrap_or_default()
    }

    /// Worker members in service, booting and held by the termination hook.
    pub(super) fn worker_counts(&self) -> (u32, u32, u32) {
        let (mut in_service, mut booting, mut terminating) = (0, 0, 0);
        for member in self
            .members
            .values()
            .filter(|m| m.instance.tier == "worker")
        {
            match (member.terminating, member.healthy_at) {
                (Some(_), _) => terminating += 1,
                (None, Some(_)) => in_service += 1,
                (None, None) => booting += 1,
            }
        }
        (in_service, booting, terminating)
    }

    fn groups_answer(&mut self) -> anyhow::Result<Vec<Value>> {
        let names: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
        let answer = self.aws.call(
            "autoscaling",
            "describe_auto_scaling_groups",
            json!({ "AutoScalingGroupNames": names }),
        )?;
        Ok(answer["AutoScalingGroups"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Every instance the groups hold that is not terminated, and each group's desired
    /// capacity.
    fn held(&mut self) -> anyhow::Result<(Vec<Held>, BTreeMap<String, u32>)> {
        let mut held = Vec::new();
        let mut desired = BTreeMap::new();
        for group in self.groups_answer()? {
            let name = group["AutoScalingGroupName"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            desired.insert(
                name.clone(),
                group["DesiredCapacity"].as_u64().unwrap_or_default() as u32,
            );
            let size = |key: &str| group[key].as_u64().unwrap_or_default() as u32;
            self.bounds
                .insert(name.clone(), (size("MinSize"), size("MaxSize")));
            if let Some(version) = group["LaunchTemplate"]["Version"].as_str() {
                self.group_versions.insert(name.clone(), version.to_owned());
            }
            if group["HealthCheckType"] == "ELB" {
                let grace = group["HealthCheckGracePeriod"].as_f64().unwrap_or(300.0);
                self.elb_grace.insert(name.clone(), grace);
            }
            let group_zones: Vec<String> = group["AvailabilityZones"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|z| z.as_str().map(str::to_owned))
                .collect();
            for instance in group["Instances"].as_array().into_iter().flatten() {
                let state = instance["LifecycleState"].as_str().unwrap_or_default();
                if state.starts_with("Terminat") {
                    continue;
                }
                let template = &instance["LaunchTemplate"];
                held.push(Held {
                    group: name.clone(),
                    id: instance["InstanceId"].as_str().unwrap_or_default().into(),
                    group_zones: group_zones.clone(),
                    version: template["Version"].as_str().unwrap_or("$Latest").into(),
                    template: template["LaunchTemplateName"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    protected: instance["ProtectedFromScaleIn"].as_bool().unwrap_or(false),
                });
            }
        }
        Ok((held, desired))
    }

    fn user_data(&mut self, template: &str, version: &str) -> anyhow::Result<String> {
        let key = (template.to_owned(), version.to_owned());
        if let Some(text) = self.user_data.get(&key) {
            return Ok(text.clone());
        }
        let answer = self.aws.call(
            "ec2",
            "describe_launch_template_versions",
            json!({ "LaunchTemplateName": template, "Versions": [version] }),
        )?;
        let encoded = answer["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]
            .as_str()
            .with_context(|| {
                format!("launch template {template} version {version} has no user data")
            })?;
        let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded)?)?;
        self.user_data.insert(key, text.clone());
        Ok(text)
    }

    /// A container for an instance moto launched: its own namespace, the user data of
    /// its template version, its identity in the metadata service; booted.
    fn launch(&mut self, held: &Held) -> anyhow::Result<()> {
        let group = self
            .groups
            .iter()
            .find(|g| g.name == held.group)
            .context("an instance of a group the fleet does not follow")?;
        let (tier, unit) = (group.tier, group.unit);
        let used: BTreeSet<u8> = self.members.values().map(|m| m.slot).collect();
        let slot = next_free_slot(&used, self.next_slot)
            .context("no free address for another instance")?;
        self.next_slot = slot.wrapping_add(1);
        let user_data = self.user_data(&held.template, &held.version)?;
        // moto puts every instance of a group in its first subnet; AWS balances a group
        // over its zones, launching in the one with the fewest of its instances that stay
        // (not those on their way out, nor those a refresh of the group replaces).
        let replaced: BTreeSet<String> = if self.refreshes(&held.group) {
            self.outdated_members().into_iter().collect()
        } else {
            BTreeSet::new()
        };
        let in_zone = |zone: &str| {
            self.members
                .iter()
                .filter(|(id, m)| {
                    m.group == held.group
                        && m.zone == zone
                        && m.terminating.is_none()
                        && m.draining_since.is_none()
                        && !replaced.contains(*id)
                })
                .count()
        };
        let zone = held
            .group_zones
            .iter()
            .filter(|zone| !self.dark_zones.contains(*zone))
            .min_by_key(|zone| in_zone(zone))
            .cloned()
            .context("every zone of the group is powered off")?;
        let p = &self.provided;
        let netns = p.network.attach(slot)?;
        let address = netns.address;
        let booted = (|| {
            let image = p
                .images
                .baked
                .get(tier)
                .map_or(p.images.stock, PathBuf::as_path);
            let mut instance = Instance::create(p.dir, image, &held.id, tier, unit)?;
            instance.netns = Some(netns.clone());
            let outcome = (|| {
                instance.install_user_data(&user_data)?;
                instance.provide(p.pki, p.facts, &p.reach)?;
                p.imds.set_identity(
                    IpAddr::V4(address),
                    Some(Identity {
                        instance_id: held.id.clone(),
                        zone: zone.clone(),
                        lifecycle_state: "InService".into(),
                    }),
                );
                instance.boot(p.images.apt_cache)
            })();
            match outcome {
                Ok(()) => Ok(instance),
                Err(e) => {
                    instance.stop();
                    instance.remove();
                    Err(e)
                }
            }
        })();
        let instance = match booted {
            Ok(instance) => instance,
            Err(e) => {
                p.imds.set_identity(IpAddr::V4(address), None);
                p.network.detach(&netns);
                return Err(e.context(format!("launch {}", held.id)));
            }
        };
        self.members.insert(
            held.id.clone(),
            Member {
                instance,
                group: held.group.clone(),
                zone: zone.clone(),
                slot,
                template_version: held.version.clone(),
                launched: Instant::now(),
                healthy_at: None,
                terminating: None,
                protected: held.protected,
                journal_kept: false,
                lost_at: None,
                user_data_done_at: None,
                draining_since: None,
            },
        );
        self.event(format!(
            "{tier} {} launched in {zone} at {address} (template version {})",
            held.id, held.version
        ));
        Ok(())
    }

    /// Powers a member off and removes its container, namespace and identity; a worker's
    /// journal is kept for the job accounting.
    fn retire(&mut self, id: &str, why: &str) {
        let Some(mut member) = self.members.remove(id) else {
            return;
        };
        if let (Some(balancer), "web", None) =
            (&self.balancer, member.instance.tier, member.draining_since)
        {
            balancer.deregister_in_background(id);
        }
        self.keep_logs(id, &mut member);
        if member.instance.leader.is_some() {
            if member.instance.shut_down(Duration::from_secs(90)).is_err() {
                member.instance.stop();
            }
        } else {
            member.instance.stop();
        }
        member.instance.remove();
        if let Some(address) = member.address() {
            self.provided.imds.set_identity(address, None);
        }
        if let Some(netns) = &member.instance.netns {
            self.provided.network.detach(netns);
        }
        self.event(format!("{} {id} gone ({why})", member.instance.tier));
    }

    /// Reads each booting instance's progress, and replaces lost ones as Auto Scaling's
    /// health checks would find them: a web instance (health check type ELB) once the
    /// load balancer marks it unhealthy, any instance once EC2's status checks notice it
    /// is gone ([`STATUS_CHECK_AWS_SECONDS`], compressed).
    /// A member's boot log (its console, as EC2 keeps it) and a worker's journal, copied to
    /// the run's folder before it goes: the post-mortem of a failure, the job accounting.
    fn keep_logs(&mut self, id: &str, member: &mut Member) {
        if member.instance.tier == "worker" && !member.journal_kept {
            if let Ok(journal) = member.instance.service_journal() {
                let _ = std::fs::write(self.logs.join(format!("{id}.journal")), &journal);
                self.retired_worker_journals.push(journal);
                member.journal_kept = true;
            }
        }
        let _ = std::fs::copy(
            member.instance.root.join("var/log/cloud-init-output.log"),
            self.logs.join(format!("{id}.boot.log")),
        );
    }

    fn follow_health(&mut self) -> anyhow::Result<()> {
        let mut lost = Vec::new();
        let mut healthy = Vec::new();
        let status_check = Duration::from_secs_f64(STATUS_CHECK_AWS_SECONDS / self.compression);
        for (id, member) in &mut self.members {
            let grace = self
                .elb_grace
                .get(&member.group)
                .map(|aws_seconds| Duration::from_secs_f64(aws_seconds / self.compression));
            let failure = if member.instance.leader.is_none() {
                member
                    .instance
                    .booted
                    .is_some()
                    .then(|| "its container is gone (powered off)".to_owned())
            } else {
                match member.instance.progress() {
                    Ok(Progress::Healthy) if member.healthy_at.is_none() => {
                        member.healthy_at = Some(Instant::now());
                        healthy.push((
                            id.clone(),
                            member.instance.tier,
                            member.launched.elapsed().as_secs_f64(),
                        ));
                        None
                    }
                    Ok(Progress::UserDataRunning) => None,
                    Ok(progress) => {
                        let done = *member.user_data_done_at.get_or_insert_with(Instant::now);
                        // Never healthy by the end of the grace period: AWS's ELB health
                        // check takes it out (the rehearsal's web targets enter the load
                        // balancer only once healthy, so its checks cannot say it).
                        grace
                            .filter(|grace| member.healthy_at.is_none() && done.elapsed() >= *grace)
                            .map(|grace| {
                                format!(
                                    "not healthy {:.0} s after its user data finished (the \
                                     group's health check grace period; {progress:?})",
                                    grace.as_secs_f64()
                                )
                            })
                    }
                    Err(e) => Some(format!("{e:#}")),
                }
            };
            let Some(failure) = failure else {
                continue;
            };
            let since = *member.lost_at.get_or_insert_with(Instant::now);
            // A web instance the load balancer sends requests to is replaced on its verdict
            // (the group's ELB health check), which on AWS comes before EC2's.
            let in_rotation = match (&self.balancer, member.instance.tier) {
                (Some(balancer), "web") => balancer.state(id),
                _ => None,
            };
            if failure.starts_with("not healthy") {
                lost.push((id.clone(), failure));
            } else if in_rotation == Some(super::balancer::TargetState::Unhealthy) {
                lost.push((
                    id.clone(),
                    format!("{failure}; the load balancer marked it unhealthy"),
                ));
            } else if in_rotation.is_none() && since.elapsed() >= status_check {
                lost.push((id.clone(), format!("{failure}; EC2's status checks failed")));
            }
        }
        for (id, tier, seconds) in healthy {
            self.boot_seconds.entry(tier).or_default().push(seconds);
            self.event(format!("{tier} {id} healthy {seconds:.0} s after launch"));
            if tier == "web" {
                self.register_with_balancer(&id)?;
            }
        }
        for (id, why) in lost {
            if self.refresh_replacement_failed(&id, &why)? {
                continue;
            }
            self.event(format!("{id} unhealthy ({why}): replacing it"));
            self.aws.call(
                "autoscaling",
                "terminate_instance_in_auto_scaling_group",
                json!({ "InstanceId": id, "ShouldDecrementDesiredCapacity": false }),
            )?;
            self.retire(&id, "replaced after failing its health check");
        }
        Ok(())
    }

    /// Puts the balancer in front of the web tier, its healthy instances registered.
    pub(super) fn attach_balancer(&mut self, balancer: Balancer) -> anyhow::Result<()> {
        self.balancer = Some(balancer);
        let healthy: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.instance.tier == "web" && m.healthy_at.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in healthy {
            self.register_with_balancer(&id)?;
        }
        Ok(())
    }

    fn register_with_balancer(&mut self, id: &str) -> anyhow::Result<()> {
        let address = self
            .members
            .get(id)
            .and_then(|m| m.instance.netns.as_ref())
            .map(|n| std::net::SocketAddr::from((n.address, 80)));
        if let (Some(balancer), Some(address)) = (self.balancer.as_mut(), address) {
            balancer.register(id, address)?;
            self.event(format!("web {id} registered with the load balancer"));
        }
        Ok(())
    }

    /// Powers off every instance in `zone` at once (no shutdown: their init killed, their
    /// link cut, so nothing answers), and launches nothing there from now on. The ids
    /// powered off, and when the power went.
    pub(super) fn power_off_zone(&mut self, zone: &str) -> (Vec<String>, Instant) {
        self.dark_zones.insert(zone.to_owned());
        let ids: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.zone == zone)
            .map(|(id, _)| id.clone())
            .collect();
        // The workers' journals are read before the power goes (what they did until then
        // counts), and all of them first, so the zone goes dark at one moment.
        for id in &ids {
            if let Some(member) = self.members.get_mut(id) {
                if let Some(journal) = (member.instance.tier == "worker")
                    .then(|| member.instance.service_journal())
                    .and_then(Result::ok)
                {
                    self.retired_worker_journals.push(journal);
                    member.journal_kept = true;
                }
            }
        }
        let off = Instant::now();
        for id in &ids {
            if let Some(member) = self.members.get_mut(id) {
                member.instance.power_off();
            }
        }
        self.event(format!(
            "zone {zone} powered off: {}",
            if ids.is_empty() {
                "no instances".to_owned()
            } else {
                ids.join(", ")
            }
        ));
        (ids, off)
    }

    /// Terminations whose hook the worker completed, or whose heartbeat timeout passed.
    fn follow_hooks(&mut self) -> anyhow::Result<()> {
        let mut done = Vec::new();
        for (id, member) in &self.members {
            let (Some(since), Some((hook, heartbeat))) = (
                member.terminating,
                self.groups
                    .iter()
                    .find(|g| g.name == member.group)
                    .and_then(|g| g.hook.clone()),
            ) else {
                continue;
            };
            let autoscaling = self.provided.autoscaling;
            if !autoscaling.termination_pending(&member.group, &hook, id) {
                done.push((
                    id.clone(),
                    format!(
                        "the worker completed the lifecycle action {:.1} s after the hook held it",
                        since.elapsed().as_secs_f64()
                    ),
                ));
            } else if since.elapsed() > heartbeat {
                // In real seconds: the job the worker finishes meanwhile takes real time.
                autoscaling.expire_termination(&member.group, &hook, id);
                done.push((id.clone(), "the hook's heartbeat timeout passed".into()));
            }
        }
        for (id, why) in done {
            self.event(format!("worker {id}: {why}; terminating it"));
            self.aws.call(
                "autoscaling",
                "terminate_instance_in_auto_scaling_group",
                json!({ "InstanceId": id, "ShouldDecrementDesiredCapacity": true }),
            )?;
            self.retire(&id, "terminated after its lifecycle hook");
        }
        Ok(())
    }

    fn queue_depth(&mut self) -> anyhow::Result<(usize, usize)> {
        let answer = self.aws.call(
            "sqs",
            "get_queue_attributes",
            json!({
                "QueueUrl": self.scaling.queue_url,
                "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            }),
        )?;
        let count = |name: &str| {
            answer["Attributes"][name]
                .as_str()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            count("ApproximateNumberOfMessages"),
            count("ApproximateNumberOfMessagesNotVisible"),
        ))
    }

    /// The policy's evaluation of the minute that just ended.
    fn evaluate(&mut self, visible: usize) -> anyhow::Result<()> {
        let now = Instant::now();
        let (in_service, booting, _) = self.worker_counts();
        let newest = self
            .members
            .values()
            .filter(|m| m.instance.tier == "worker" && m.terminating.is_none())
            .filter_map(|m| m.healthy_at)
            .max()
            .map(|at| self.policy_time(at));
        let reading = Reading {
            t: self.policy_time(now),
            visible,
            in_service,
            pending: booting,
            newest_in_service_at: newest,
        };
        let Some(decision) = self
            .scaling
            .policy
            .decide(&reading, &mut self.scaling.state)
        else {
            return Ok(());
        };
        let group = self.worker_group().to_owned();
        let (group_min, group_max) = self.bounds.get(&group).copied().unwrap_or((0, u32::MAX));
        if decision.to < decision.from && decision.to < group_min {
            return Ok(()); // AWS does not scale in past the group's minimum.
        }
        self.event(format!(
            "worker policy: {} → {} ({})",
            decision.from, decision.to, decision.reason
        ));
        if decision.to > decision.from {
            // moto's desired capacity still counts the workers the hook holds (their
            // termination lowers it by one each): on top of what the policy wants.
            let (_, _, terminating) = self.worker_counts();
            let to = (decision.to + terminating).min(group_max);
            self.aws.call(
                "autoscaling",
                "set_desired_capacity",
                json!({ "AutoScalingGroupName": group, "DesiredCapacity": to, "HonorCooldown": false }),
            )?;
        } else {
            // The policy asks again each minute while the capacity it sees has not dropped
            // (a scale-in waiting for an unprotected worker): one owed, not one a minute.
            self.scaling.owed = self.scaling.owed.max(decision.from - decision.to);
        }
        Ok(())
    }

    /// Starts each owed scale-in on the worker [`scale_in_victim`] picks; the hook holds it.
    fn begin_owed_scale_ins(&mut self) -> anyhow::Result<()> {
        let group_min = self
            .bounds
            .get(self.worker_group())
            .map_or(0, |(min, _)| *min);
        while self.scaling.owed > 0 {
            let workers: Vec<&Member> = self
                .members
                .values()
                .filter(|m| m.instance.tier == "worker" && m.terminating.is_none())
                .collect();
            if workers.len() as u32 <= group_min {
                // The minimum was raised meanwhile: AWS never goes below it.
                self.scaling.owed = 0;
                return Ok(());
            }
            let candidates: Vec<Candidate> = workers
                .iter()
                .map(|m| Candidate {
                    id: &m.instance.name,
                    zone: &m.zone,
                    template_version: &m.template_version,
                    protected: m.protected,
                    in_service: m.healthy_at.is_some(),
                })
                .collect();
            let victim = scale_in_victim(&candidates).map(str::to_owned);
            let Some(id) = victim else {
                let protected = workers.iter().filter(|m| m.protected).count();
                let note = format!(
                    "scale-in waits: {protected} of {} workers protected (each holds a job)",
                    workers.len()
                );
                if self.events.last().is_none_or(|(_, last)| *last != note) {
                    self.event(note);
                }
                return Ok(());
            };
            self.scaling.owed -= 1;
            let group = self.worker_group().to_owned();
            let hook = self
                .groups
                .iter()
                .find(|g| g.name == group)
                .and_then(|g| g.hook.clone());
            let Some((hook, _)) = hook else {
                self.aws.call(
                    "autoscaling",
                    "terminate_instance_in_auto_scaling_group",
                    json!({ "InstanceId": id, "ShouldDecrementDesiredCapacity": true }),
                )?;
                self.retire(&id, "scaled in (no lifecycle hook)");
                continue;
            };
            self.hold_for_termination(&id, &hook, "scale-in")?;
        }
        Ok(())
    }

    /// Puts worker `id` into `Terminating:Wait` for `hook` (its metadata says
    /// `Terminated`, the worker finishes its job and completes the action; then
    /// [`Self::follow_hooks`] terminates it).
    fn hold_for_termination(&mut self, id: &str, hook: &str, why: &str) -> anyhow::Result<()> {
        let member = self.members.get_mut(id).context("the chosen worker")?;
        self.provided
            .autoscaling
            .begin_termination(&member.group, hook, id);
        member.terminating = Some(Instant::now());
        if let Some(address) = member.address() {
            self.provided.imds.set_terminating(address);
        }
        let (zone, protected) = (member.zone.clone(), member.protected);
        self.event(format!(
            "{why}: worker {id} ({zone}, {}) held by the lifecycle hook {hook}",
            if protected {
                "holds a job"
            } else {
                "unprotected"
            }
        ));
        Ok(())
    }

    /// Web instances a refresh replaces: out of the load balancer (draining for its
    /// deregistration delay, requests in flight finish), and only then terminated.
    fn drain_and_terminate(&mut self, id: &str) -> anyhow::Result<()> {
        let member = self.members.get_mut(id).context("the web instance")?;
        member.draining_since = Some(Instant::now());
        if let Some(balancer) = &self.balancer {
            balancer.deregister_in_background(id);
        }
        self.event(format!(
            "web {id} deregistered from the load balancer: draining before its termination"
        ));
        Ok(())
    }

    /// Terminates the web instances whose drain is over.
    fn finish_drains(&mut self) -> anyhow::Result<()> {
        let delay = self
            .balancer
            .as_ref()
            .map_or(Duration::ZERO, Balancer::deregistration_delay);
        let drained: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.draining_since.is_some_and(|at| at.elapsed() >= delay))
            .map(|(id, _)| id.clone())
            .collect();
        for id in drained {
            self.aws.call(
                "autoscaling",
                "terminate_instance_in_auto_scaling_group",
                json!({ "InstanceId": id, "ShouldDecrementDesiredCapacity": true }),
            )?;
            self.retire(&id, "drained and terminated");
        }
        Ok(())
    }

    /// The journals of every worker that ran, gone or still running.
    pub(super) fn worker_journals(&self) -> Vec<String> {
        let mut journals = self.retired_worker_journals.clone();
        journals.extend(self.live_worker_journals().into_values());
        journals
    }

    /// The journal of each worker still running, by instance id.
    pub(super) fn live_worker_journals(&self) -> BTreeMap<String, String> {
        self.members
            .iter()
            .filter(|(_, m)| m.instance.tier == "worker" && !m.journal_kept)
            .filter_map(|(id, m)| {
                let journal = m.instance.service_journal().ok()?;
                Some((id.clone(), journal))
            })
            .collect()
    }

    /// Every member powered off and removed.
    pub(super) fn tear_down(&mut self) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            if let Some(mut member) = self.members.remove(&id) {
                self.keep_logs(&id, &mut member);
                member.instance.stop();
                member.instance.remove();
                if let Some(netns) = &member.instance.netns {
                    self.provided.network.detach(netns);
                }
            }
        }
    }
}

/// A worker as the scale-in sees it.
struct Candidate<'a> {
    id: &'a str,
    zone: &'a str,
    template_version: &'a str,
    protected: bool,
    in_service: bool,
}

/// The worker a scale-in terminates, as AWS's default termination policy picks among the
/// unprotected instances in service: from the zone with the most of the group's
/// instances, the oldest launch template version first. None when every one is
/// protected (AWS then waits until one is not).
fn scale_in_victim<'a>(workers: &[Candidate<'a>]) -> Option<&'a str> {
    let per_zone = |zone: &str| workers.iter().filter(|w| w.zone == zone).count();
    let version = |w: &Candidate| w.template_version.parse::<u64>().unwrap_or(u64::MAX);
    workers
        .iter()
        .filter(|w| !w.protected && w.in_service)
        .max_by_key(|w| (per_zone(w.zone), std::cmp::Reverse(version(w))))
        .map(|w| w.id)
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        self.tear_down();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{next_free_slot, scale_in_victim, Candidate, LAST_SLOT};

    #[test]
    fn a_released_address_goes_to_a_new_instance_only_after_the_others() {
        let used: BTreeSet<u8> = [0, 2].into();
        // Slot 1 was just released; the search goes on from 3.
        assert_eq!(next_free_slot(&used, 3), Some(3));
        assert_eq!(next_free_slot(&used, 2), Some(3));
        // Past the last slot it wraps to the lowest free one.
        assert_eq!(next_free_slot(&used, LAST_SLOT + 1), Some(1));
        let full: BTreeSet<u8> = (0..=LAST_SLOT).collect();
        assert_eq!(next_free_slot(&full, 7), None);
    }

    fn worker<'a>(id: &'a str, zone: &'a str, version: &'a str, protected: bool) -> Candidate<'a> {
        Candidate {
            id,
            zone,
            template_version: version,
            protected,
            in_service: true,
        }
    }

    #[test]
    fn scale_in_never_picks_a_protected_worker_and_balances_the_zones_first() {
        let all_busy = [worker("i-1", "a", "1", true), worker("i-2", "b", "1", true)];
        assert_eq!(scale_in_victim(&all_busy), None, "every worker holds a job");
        let one_idle = [
            worker("i-1", "a", "1", true),
            worker("i-2", "b", "1", false),
        ];
        assert_eq!(scale_in_victim(&one_idle), Some("i-2"));
        // Two in zone a, one in b: the scale-in comes from a, the older version first.
        let crowded = [
            worker("i-1", "a", "2", false),
            worker("i-2", "a", "1", false),
            worker("i-3", "b", "1", false),
        ];
        assert_eq!(scale_in_victim(&crowded), Some("i-2"));
        let booting = [Candidate {
            in_service: false,
            ..worker("i-1", "a", "1", false)
        }];
        assert_eq!(
            scale_in_victim(&booting),
            None,
            "a booting worker is not scaled in"
        );
    }
}
