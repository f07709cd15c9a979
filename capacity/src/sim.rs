//! A discrete-event model of the worker tier. Uploads arrive, wait in SQS (FIFO), and run
//! on EC2 workers whose number a scaling policy changes, so questions like "what does a
//! burst of 100 uploads do with at most 3 workers" are answered before paying AWS to find
//! out.
//!
//! State only changes at events (arrival, job completion, instance entering service,
//! policy evaluation on CloudWatch's 60 s clock); samples of the state are taken every
//! [`SAMPLE_EVERY`] seconds for plotting.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use serde::Serialize;

use crate::policy::{Policy, PolicyState, Reading, POLICY_PERIOD};
use crate::Rng;

/// Seconds between two entries of [`Outcome::samples`].
pub const SAMPLE_EVERY: f64 = 10.0;
/// Longest the simulation follows the group after the last upload is processed, waiting
/// for it to scale back in.
const SCALE_IN_WAIT_LIMIT: f64 = 4.0 * 3600.0;

/// How long one job takes on a worker.
#[derive(Clone, Debug)]
pub enum ServiceTime {
    /// Always this many seconds.
    Fixed(f64),
    /// Exponentially distributed with this mean in seconds (for tests against M/M/c).
    Exponential(f64),
    /// Measured service times in seconds, drawn uniformly at random; should not be empty.
    Samples(Vec<f64>),
}

impl ServiceTime {
    /// Mean seconds per job.
    pub fn mean(&self) -> f64 {
        match self {
            Self::Fixed(seconds) | Self::Exponential(seconds) => *seconds,
            Self::Samples(samples) if samples.is_empty() => 0.0,
            Self::Samples(samples) => samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }

    fn draw(&self, rng: &mut Rng) -> f64 {
        match self {
            Self::Fixed(seconds) => *seconds,
            Self::Exponential(mean) => rng.exponential(*mean),
            Self::Samples(samples) => {
                let index = (rng.next_f64() * samples.len() as f64) as usize;
                samples
                    .get(index.min(samples.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(0.0)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Setup {
    pub policy: Policy,
    pub service: ServiceTime,
    /// Jobs one instance runs at once; 1 for the worker as built (0 is taken as 1).
    pub jobs_per_instance: u32,
    /// Seconds from launch until an instance takes jobs (EC2 boot + user data).
    pub boot_s: f64,
    /// Seed for the service-time draws.
    pub seed: u64,
}

/// What happened to one upload; times in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub arrival: f64,
    pub start: f64,
    pub end: f64,
    /// Index into [`Outcome::instances`].
    pub instance: usize,
}

/// The tier at one instant; one every [`SAMPLE_EVERY`] seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t: f64,
    /// Jobs waiting in the queue (SQS "visible" messages).
    pub visible: usize,
    /// Jobs being processed.
    pub in_flight: usize,
    /// Instances taking jobs (not counting ones finishing a last job after a scale-in).
    pub in_service: u32,
    /// Instances launched but still booting.
    pub pending: u32,
    /// The group's desired capacity as last set by the policy.
    pub desired: u32,
}

/// One change of capacity by the policy.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingAction {
    pub t: f64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// One instance's life; billed from `launched`.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceLife {
    pub launched: f64,
    /// When it took (or would have taken) jobs; a `terminated` before this means it never did.
    pub in_service: f64,
    /// None if still running when the last job finished.
    pub terminated: Option<f64>,
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// In arrival order.
    pub jobs: Vec<JobRecord>,
    pub samples: Vec<Sample>,
    pub actions: Vec<ScalingAction>,
    pub instances: Vec<InstanceLife>,
    /// When the run ends: the last job finished and, under a scaling policy, the group is
    /// back at its minimum (or the last arrival, if there are no jobs).
    pub end: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InstanceState {
    Pending,
    InService,
    /// Chosen for scale-in while busy: takes no new jobs, terminates when its jobs end.
    Draining,
    Terminated,
}

#[derive(Clone, Debug)]
struct Instance {
    launched: f64,
    in_service_at: f64,
    terminated: Option<f64>,
    state: InstanceState,
    busy: u32,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    start: f64,
    end: f64,
    instance: usize,
}

#[derive(Clone, Copy, Debug)]
enum EventKind {
    Completion { instance: usize },
    InstanceReady { instance: usize },
    Arrival { job: usize },
    PolicyTick,
}

impl EventKind {
    /// Order at equal times: a worker freed at t takes the job arriving at t, and the policy
    /// sees the queue after everything else that happened at t.
    fn rank(self) -> u8 {
        match self {
            Self::Completion { .. } => 0,
            Self::InstanceReady { .. } => 1,
            Self::Arrival { .. } => 2,
            Self::PolicyTick => 3,
        }
    }
}

#[derive(Debug)]
struct Event {
    t: f64,
    kind: EventKind,
    /// Insertion order, the last tie-break, so equal events run first-scheduled first.
    seq: u64,
}

impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest, so every comparison is reversed: earliest first.
        other
            .t
            .total_cmp(&self.t)
            .then_with(|| other.kind.rank().cmp(&self.kind.rank()))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

#[derive(Default)]
struct EventQueue {
    heap: BinaryHeap<Event>,
    next_seq: u64,
}

impl EventQueue {
    fn push(&mut self, t: f64, kind: EventKind) {
        self.heap.push(Event {
            t,
            kind,
            seq: self.next_seq,
        });
        self.next_seq += 1;
    }

    fn pop(&mut self) -> Option<Event> {
        self.heap.pop()
    }

    fn peek_time(&self) -> Option<f64> {
        self.heap.peek().map(|event| event.t)
    }
}

struct Sim<'a> {
    setup: &'a Setup,
    arrivals: &'a [f64],
    min: u32,
    jobs_per_instance: u32,
    boot_s: f64,
    rng: Rng,
    events: EventQueue,
    runs: Vec<Option<Run>>,
    queue: VecDeque<usize>,
    instances: Vec<Instance>,
    /// Instances not yet terminated, in launch order.
    live: Vec<usize>,
    in_flight: usize,
    completed: usize,
    desired: u32,
    policy_state: PolicyState,
    samples: Vec<Sample>,
    next_sample: u64,
    actions: Vec<ScalingAction>,
    end: f64,
}

/// Runs the tier on these arrival times (seconds; need not be sorted, non-finite ones are
/// dropped, negative ones count as 0) until every upload is processed and the group is
/// back at its minimum size.
pub fn simulate(arrivals: &[f64], setup: &Setup) -> Outcome {
    let mut arrival_times: Vec<f64> = arrivals
        .iter()
        .copied()
        .filter(|t| t.is_finite())
        .map(|t| t.max(0.0))
        .collect();
    arrival_times.sort_by(f64::total_cmp);
    let mut sim = Sim::new(&arrival_times, setup);
    sim.run();
    sim.into_outcome()
}

impl<'a> Sim<'a> {
    fn new(arrivals: &'a [f64], setup: &'a Setup) -> Self {
        let (min, _) = setup.policy.bounds();
        // A negative or NaN boot time would put events in the past.
        let boot_s = if setup.boot_s.is_finite() {
            setup.boot_s.max(0.0)
        } else {
            0.0
        };
        let mut sim = Sim {
            setup,
            arrivals,
            min,
            jobs_per_instance: setup.jobs_per_instance.max(1),
            boot_s,
            rng: Rng::new(setup.seed),
            events: EventQueue::default(),
            runs: vec![None; arrivals.len()],
            queue: VecDeque::new(),
            instances: Vec::new(),
            live: Vec::new(),
            in_flight: 0,
            completed: 0,
            desired: min,
            policy_state: PolicyState::default(),
            samples: Vec::new(),
            next_sample: 0,
            actions: Vec::new(),
            end: arrivals.last().copied().unwrap_or(0.0),
        };
        for _ in 0..min {
            let id = sim.instances.len();
            sim.instances.push(Instance {
                launched: 0.0,
                in_service_at: 0.0,
                terminated: None,
                state: InstanceState::InService,
                busy: 0,
            });
            sim.live.push(id);
        }
        for (job, &t) in arrivals.iter().enumerate() {
            sim.events.push(t, EventKind::Arrival { job });
        }
        if !matches!(setup.policy, Policy::Fixed { .. }) {
            // The first datapoint describes the first full minute.
            sim.events.push(POLICY_PERIOD, EventKind::PolicyTick);
        }
        sim
    }

    /// Until every upload is processed and, under a scaling policy, the group is back at
    /// its minimum: the instances a burst added are paid for until they are scaled in.
    fn run(&mut self) {
        while self.completed < self.arrivals.len() || self.scaled_out_after_the_work() {
            // Some instance is always in service or booting (min ≥ 1), so while uploads are
            // outstanding a completion or an instance-ready event is always due.
            let Some(event) = self.events.pop() else {
                break;
            };
            if self.completed == self.arrivals.len() {
                self.end = self.end.max(event.t);
            }
            self.take_samples(event.t, false);
            match event.kind {
                EventKind::Completion { instance } => {
                    self.in_flight -= 1;
                    self.completed += 1;
                    self.end = self.end.max(event.t);
                    let worker = &mut self.instances[instance];
                    worker.busy -= 1;
                    if worker.state == InstanceState::Draining && worker.busy == 0 {
                        self.terminate(instance, event.t);
                    }
                }
                EventKind::InstanceReady { instance } => {
                    // It may have been scaled in while still booting.
                    if self.instances[instance].state == InstanceState::Pending {
                        self.instances[instance].state = InstanceState::InService;
                    }
                }
                EventKind::Arrival { job } => self.queue.push_back(job),
                EventKind::PolicyTick => {
                    self.evaluate_policy(event.t);
                    self.events
                        .push(event.t + POLICY_PERIOD, EventKind::PolicyTick);
                }
            }
            self.dispatch(event.t);
        }
        self.take_samples(self.end, true);
    }

    /// Records the samples due before `t` (or at it, when `inclusive`); the state is
    /// constant between events, so the current state is theirs.
    fn take_samples(&mut self, t: f64, inclusive: bool) {
        loop {
            let sample_t = self.next_sample as f64 * SAMPLE_EVERY;
            let due = if inclusive {
                sample_t <= t
            } else {
                sample_t < t
            };
            if !due {
                break;
            }
            let sample = Sample {
                t: sample_t,
                visible: self.queue.len(),
                in_flight: self.in_flight,
                in_service: self.count(InstanceState::InService),
                pending: self.count(InstanceState::Pending),
                desired: self.desired,
            };
            self.samples.push(sample);
            self.next_sample += 1;
        }
    }

    fn count(&self, state: InstanceState) -> u32 {
        self.live
            .iter()
            .filter(|&&id| self.instances[id].state == state)
            .count() as u32
    }

    /// Free slots on in-service instances take the oldest waiting jobs, lowest instance first.
    fn dispatch(&mut self, t: f64) {
        for &id in &self.live {
            while self.instances[id].state == InstanceState::InService
                && self.instances[id].busy < self.jobs_per_instance
            {
                let Some(job) = self.queue.pop_front() else {
                    return;
                };
                let drawn = self.setup.service.draw(&mut self.rng);
                // A negative, NaN or infinite service time would stall or reverse the clock.
                let service = if drawn.is_finite() {
                    drawn.max(0.0)
                } else {
                    0.0
                };
                self.instances[id].busy += 1;
                self.in_flight += 1;
                self.runs[job] = Some(Run {
                    start: t,
                    end: t + service,
                    instance: id,
                });
                self.events
                    .push(t + service, EventKind::Completion { instance: id });
            }
        }
    }

    fn launch(&mut self, t: f64, count: u32) {
        for _ in 0..count {
            let id = self.instances.len();
            let in_service_at = t + self.boot_s;
            self.instances.push(Instance {
                launched: t,
                in_service_at,
                terminated: None,
                state: InstanceState::Pending,
                busy: 0,
            });
            self.live.push(id);
            self.events
                .push(in_service_at, EventKind::InstanceReady { instance: id });
        }
    }

    fn terminate(&mut self, id: usize, t: f64) {
        let instance = &mut self.instances[id];
        instance.state = InstanceState::Terminated;
        instance.terminated = Some(t);
        self.live.retain(|&live_id| live_id != id);
    }

    fn newest_live(&self, wanted: impl Fn(&Instance) -> bool) -> Option<usize> {
        self.live
            .iter()
            .rev()
            .copied()
            .find(|&id| wanted(&self.instances[id]))
    }

    /// Whether, all uploads done, the group still has more than its minimum (and the wait
    /// for the policy to scale in is below a bound, should a policy never do it).
    fn scaled_out_after_the_work(&self) -> bool {
        !matches!(self.setup.policy, Policy::Fixed { .. })
            && self.live.len() > self.min as usize
            && self
                .events
                .peek_time()
                .is_some_and(|t| t < self.end + SCALE_IN_WAIT_LIMIT)
    }

    /// Removes one instance from the group's capacity, if there is one to remove.
    fn scale_in_one(&mut self, t: f64) {
        // Losing nothing first: a booting or idle instance, newest first. A busy one keeps
        // its job until it ends (the worker's lifecycle hook), so no upload is lost or redone.
        let idle = self
            .newest_live(|i| i.state == InstanceState::Pending)
            .or_else(|| self.newest_live(|i| i.state == InstanceState::InService && i.busy == 0));
        if let Some(id) = idle {
            self.terminate(id, t);
        } else if let Some(id) = self.newest_live(|i| i.state == InstanceState::InService) {
            self.instances[id].state = InstanceState::Draining;
        }
    }

    fn evaluate_policy(&mut self, t: f64) {
        let reading = Reading {
            t,
            visible: self.queue.len(),
            in_service: self.count(InstanceState::InService),
            pending: self.count(InstanceState::Pending),
            newest_in_service_at: self
                .live
                .iter()
                .map(|&id| &self.instances[id])
                .filter(|instance| instance.state == InstanceState::InService)
                .map(|instance| instance.in_service_at)
                .max_by(f64::total_cmp),
        };
        let Some(decision) = self.setup.policy.decide(&reading, &mut self.policy_state) else {
            return;
        };
        if decision.to > decision.from {
            self.launch(t, decision.to - decision.from);
        } else {
            // The policy scales in only above its minimum (≥ 1), so some instance is
            // booting or in service.
            self.scale_in_one(t);
        }
        self.actions.push(ScalingAction {
            t,
            from: decision.from,
            to: decision.to,
            reason: decision.reason,
        });
        self.desired = decision.to;
    }

    fn into_outcome(self) -> Outcome {
        let jobs: Vec<JobRecord> = self
            .arrivals
            .iter()
            .zip(&self.runs)
            .map(|(&arrival, run)| match run {
                Some(run) => JobRecord {
                    arrival,
                    start: run.start,
                    end: run.end,
                    instance: run.instance,
                },
                // Unreachable while min ≥ 1 (see `run`); NaN keeps such a bug visible rather
                // than plausible.
                None => JobRecord {
                    arrival,
                    start: f64::NAN,
                    end: f64::NAN,
                    instance: usize::MAX,
                },
            })
            .collect();
        let instances: Vec<InstanceLife> = self
            .instances
            .iter()
            .map(|instance| InstanceLife {
                launched: instance.launched,
                in_service: instance.in_service_at,
                terminated: instance.terminated,
            })
            .collect();
        Outcome {
            jobs,
            samples: self.samples,
            actions: self.actions,
            instances,
            end: self.end,
        }
    }
}
