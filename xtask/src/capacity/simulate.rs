//! `cargo xtask capacity simulate`: a discrete-event model of the worker tier. Uploads
//! arrive, wait in SQS (FIFO), and run one at a time on EC2 workers whose number an
//! auto-scaling policy changes, so questions like "what does a burst of 100 uploads do
//! with at most 3 workers" are answered before paying AWS to find out.
//!
//! State only changes at events (arrival, job completion, instance entering service,
//! policy evaluation on CloudWatch's 60 s clock); samples of the state are taken every
//! [`SAMPLE_EVERY`] seconds for plotting.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::Path;

use anyhow::{anyhow, bail, Context};

/// Seconds between two entries of [`Outcome::samples`].
pub const SAMPLE_EVERY: f64 = 10.0;
/// CloudWatch's period for the SQS metrics, and so the policies' evaluation clock.
const POLICY_PERIOD: f64 = 60.0;
/// Longest the simulation follows the group after the last upload is processed, waiting
/// for it to scale back in.
const SCALE_IN_WAIT_LIMIT: f64 = 4.0 * 3600.0;
/// Length of a rate pattern given without one ("constant:10/min").
const DEFAULT_MINUTES: f64 = 60.0;
/// The alarms AWS creates for a target-tracking policy: scale out after 3 one-minute
/// datapoints above the target, scale in after 15 below 90 % of it.
const TARGET_HIGH_PERIODS: u32 = 3;
const TARGET_LOW_PERIODS: u32 = 15;
const TARGET_LOW_FRACTION: f64 = 0.9;
/// T3 unlimited surplus credits, Linux, per vCPU-hour (see [`PRICE_SOURCE`]).
const SURPLUS_USD_PER_VCPU_HOUR: f64 = 0.05;
const ACCEPTED_FORMS: &str = "constant:10/min[:30m], poisson:10/min[:30m], ramp:0-20/min[:30m], \
     burst:100, or the path of a CSV file with one arrival time in seconds per line";

/// Deterministic PRNG (SplitMix64), so runs are reproducible from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        // 53 bits is all an f64 mantissa holds; more would round some draws up to 1.0.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean (inverse transform).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        // 1 − u lies in (0, 1], so the logarithm is finite.
        -mean * (1.0 - self.next_f64()).ln()
    }
}

/// When uploads arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Arrivals {
    /// `per_minute` uploads a minute, evenly spaced, for `minutes`.
    Constant { per_minute: f64, minutes: f64 },
    /// Poisson arrivals at `per_minute`, for `minutes` (seeded).
    Poisson { per_minute: f64, minutes: f64 },
    /// Rate rising linearly from `from` to `to` uploads/min over `minutes` (evenly spaced by
    /// the integral of the rate).
    Ramp { from: f64, to: f64, minutes: f64 },
    /// `count` uploads all at t = 0.
    Burst { count: usize },
    /// Explicit arrival times in seconds.
    Times(Vec<f64>),
}

impl Arrivals {
    /// Parses the CLI forms: "constant:10/min" (60 minutes; "constant:10/min:30m" for 30),
    /// "poisson:10/min[:30m]", "ramp:0-20/min[:30m]", "burst:100", or the path of a CSV file
    /// with one arrival time in seconds per line (a first line that is not a number is taken
    /// as a header; blank lines are skipped). Durations may also be given as "2h" or "90s".
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let spec = spec.trim();
        let (kind, rest) = match spec.split_once(':') {
            Some((kind, rest)) => (kind.to_ascii_lowercase(), Some(rest)),
            None => (spec.to_ascii_lowercase(), None),
        };
        match (kind.as_str(), rest) {
            ("constant", Some(rest)) => {
                let (rate, minutes) = split_duration(spec, rest)?;
                Ok(Self::Constant {
                    per_minute: parse_rate(spec, rate)?,
                    minutes,
                })
            }
            ("poisson", Some(rest)) => {
                let (rate, minutes) = split_duration(spec, rest)?;
                Ok(Self::Poisson {
                    per_minute: parse_rate(spec, rate)?,
                    minutes,
                })
            }
            ("ramp", Some(rest)) => {
                let (rates, minutes) = split_duration(spec, rest)?;
                let (from, to) = parse_ramp(spec, rates)?;
                Ok(Self::Ramp { from, to, minutes })
            }
            ("burst", Some(rest)) => match rest.trim().parse::<usize>() {
                Ok(count) if count > 0 => Ok(Self::Burst { count }),
                _ => bail!(
                    "bad upload count `{rest}` in `{spec}`: expected a whole number above 0 \
                     like burst:100; accepted forms: {ACCEPTED_FORMS}"
                ),
            },
            _ if Path::new(spec).is_file() => read_times_csv(Path::new(spec)),
            ("constant" | "poisson" | "ramp" | "burst", None) => bail!(
                "arrival pattern `{spec}` is missing its parameters; \
                 accepted forms: {ACCEPTED_FORMS}"
            ),
            _ => bail!(
                "unknown arrival pattern `{spec}` (neither a known form nor an existing file); \
                 accepted forms: {ACCEPTED_FORMS}"
            ),
        }
    }

    /// Sorted arrival times in seconds.
    pub fn times(&self, rng: &mut Rng) -> Vec<f64> {
        let mut times: Vec<f64> = match self {
            Self::Constant {
                per_minute,
                minutes,
            } => (0..arrival_count(per_minute * minutes))
                .map(|k| k as f64 * 60.0 / per_minute)
                .collect(),
            Self::Poisson {
                per_minute,
                minutes,
            } => {
                let horizon = minutes * 60.0;
                let mean_gap = 60.0 / per_minute;
                let mut times = Vec::new();
                if mean_gap.is_finite() && mean_gap > 0.0 {
                    let mut t = rng.exponential(mean_gap);
                    while t < horizon {
                        times.push(t);
                        t += rng.exponential(mean_gap);
                    }
                }
                times
            }
            Self::Ramp { from, to, minutes } => {
                // Per second, with Λ(t) = start_rate·t + curvature·t² the expected number of
                // uploads by t; the k-th upload arrives where Λ(t) = k.
                let start_rate = from / 60.0;
                let curvature = (to - from) / 60.0 / (2.0 * minutes * 60.0);
                (0..arrival_count((from + to) / 2.0 * minutes))
                    .map(|k| {
                        let k = k as f64;
                        // The root of curvature·t² + start_rate·t − k written so that it stays
                        // exact for a flat ramp (curvature 0) and avoids cancellation.
                        let root = (start_rate * start_rate + 4.0 * curvature * k)
                            .max(0.0)
                            .sqrt();
                        let denominator = start_rate + root;
                        if denominator > 0.0 {
                            2.0 * k / denominator
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
            Self::Burst { count } => vec![0.0; *count],
            Self::Times(times) => times.clone(),
        };
        times.sort_by(f64::total_cmp);
        times
    }

    /// One line for reports, e.g. "burst of 100 uploads at t = 0".
    pub fn describe(&self) -> String {
        match self {
            Self::Constant {
                per_minute,
                minutes,
            } => {
                format!("{per_minute} uploads/min, evenly spaced, for {minutes} min")
            }
            Self::Poisson {
                per_minute,
                minutes,
            } => {
                format!("Poisson arrivals averaging {per_minute} uploads/min for {minutes} min")
            }
            Self::Ramp { from, to, minutes } => {
                let direction = match to.total_cmp(from) {
                    Ordering::Greater => "rising",
                    Ordering::Less => "falling",
                    Ordering::Equal => "staying",
                };
                format!(
                    "rate {direction} linearly from {from} to {to} uploads/min over {minutes} min"
                )
            }
            Self::Burst { count } => format!("burst of {count} uploads at t = 0"),
            Self::Times(times) if times.is_empty() => "no uploads".to_string(),
            Self::Times(times) => {
                let first = times.iter().copied().fold(f64::INFINITY, f64::min);
                let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!(
                    "{} uploads at given times, t = {first} s to {last} s",
                    times.len()
                )
            }
        }
    }
}

/// How many k = 0, 1, … lie below `expected` uploads.
fn arrival_count(expected: f64) -> usize {
    if expected.is_finite() && expected > 0.0 {
        // The slack keeps a whole number of uploads (600.0) from gaining one through rounding.
        (expected - 1e-9).ceil() as usize
    } else {
        0
    }
}

/// Splits "10/min:30m" into the rate text and the length in minutes.
fn split_duration<'a>(spec: &str, rest: &'a str) -> anyhow::Result<(&'a str, f64)> {
    const UNITS: [(&str, f64); 4] = [("min", 1.0), ("m", 1.0), ("h", 60.0), ("s", 1.0 / 60.0)];
    let Some((rate, duration)) = rest.split_once(':') else {
        return Ok((rest, DEFAULT_MINUTES));
    };
    let text = duration.trim();
    let minutes = UNITS.iter().find_map(|&(suffix, minutes_per_unit)| {
        let number: f64 = text.strip_suffix(suffix)?.trim().parse().ok()?;
        (number.is_finite() && number > 0.0).then_some(number * minutes_per_unit)
    });
    let minutes = minutes.ok_or_else(|| {
        anyhow!(
            "bad duration `{duration}` in `{spec}`: expected a positive length like 30m, 2h \
             or 90s; accepted forms: {ACCEPTED_FORMS}"
        )
    })?;
    Ok((rate, minutes))
}

fn parse_rate(spec: &str, text: &str) -> anyhow::Result<f64> {
    text.trim()
        .strip_suffix("/min")
        .and_then(|number| number.trim().parse::<f64>().ok())
        .filter(|rate| rate.is_finite() && *rate > 0.0)
        .ok_or_else(|| {
            anyhow!(
                "bad rate `{text}` in `{spec}`: expected uploads per minute above 0 \
                 like 10/min; accepted forms: {ACCEPTED_FORMS}"
            )
        })
}

fn parse_ramp(spec: &str, text: &str) -> anyhow::Result<(f64, f64)> {
    let rate = |number: &str| {
        let rate: f64 = number.trim().parse().ok()?;
        (rate.is_finite() && rate >= 0.0).then_some(rate)
    };
    text.trim()
        .strip_suffix("/min")
        .and_then(|range| range.split_once('-'))
        .and_then(|(from, to)| Some((rate(from)?, rate(to)?)))
        .filter(|&(from, to)| from + to > 0.0)
        .ok_or_else(|| {
            anyhow!(
                "bad ramp `{text}` in `{spec}`: expected two rates in uploads per minute \
                 like 0-20/min; accepted forms: {ACCEPTED_FORMS}"
            )
        })
}

fn read_times_csv(path: &Path) -> anyhow::Result<Arrivals> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading arrival times from {}", path.display()))?;
    let mut times = Vec::new();
    let mut first_line = true;
    for (index, line) in text.lines().enumerate() {
        // Spreadsheets like to start files with a byte-order mark.
        let line = line.trim().trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let is_first = std::mem::replace(&mut first_line, false);
        match line.parse::<f64>() {
            Ok(t) if t.is_finite() && t >= 0.0 => times.push(t),
            Ok(_) => bail!(
                "{}:{}: arrival time `{line}` is not a non-negative number of seconds",
                path.display(),
                index + 1
            ),
            Err(_) if is_first => {}
            Err(_) => bail!(
                "{}:{}: `{line}` is not an arrival time in seconds (expected one number per line)",
                path.display(),
                index + 1
            ),
        }
    }
    if times.is_empty() {
        bail!(
            "{} holds no arrival times (expected one number of seconds per line)",
            path.display()
        );
    }
    Ok(Arrivals::Times(times))
}

/// How long one job takes on a worker.
#[derive(Clone, Debug)]
pub enum ServiceTime {
    /// Always this many seconds.
    Fixed(f64),
    /// Exponentially distributed with this mean in seconds (for tests against M/M/c).
    #[allow(dead_code)] // the M/M/c tests' service; the commands use measured or fixed times
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

/// How the number of workers is chosen. Every policy keeps at least one instance: a tier
/// scaled to zero with a backlog below the alarm threshold never scales out again, and the
/// simulation is about getting every upload processed.
#[derive(Clone, Debug, serde::Serialize)]
pub enum Policy {
    /// No scaling: exactly `instances` workers, all in service from t = 0.
    #[allow(dead_code)] // the queueing-theory tests' baseline; the commands simulate policies
    Fixed { instances: u32 },
    /// What `provision` deploys: AWS target tracking on the metric
    /// backlog per instance = ApproximateNumberOfMessagesVisible / GroupInServiceInstances.
    TargetTracking {
        target: f64,
        min: u32,
        max: u32,
        warmup_s: f64,
    },
    /// The seed design's step policy: +1 instance when backlog per instance > out_above for
    /// `out_periods` consecutive 1-minute periods, −1 when < in_below for `in_periods`
    /// consecutive periods; cooldowns after each action.
    Step {
        out_above: f64,
        in_below: f64,
        out_periods: u32,
        in_periods: u32,
        out_cooldown_s: f64,
        in_cooldown_s: f64,
        min: u32,
        max: u32,
    },
}

impl Policy {
    /// The seed's step policy with the given min/max: out_above 2, in_below 1, out_periods 2,
    /// in_periods 5, cooldowns 300 s / 600 s.
    pub fn seed_step(min: u32, max: u32) -> Self {
        Self::Step {
            out_above: 2.0,
            in_below: 1.0,
            out_periods: 2,
            in_periods: 5,
            out_cooldown_s: 300.0,
            in_cooldown_s: 600.0,
            min,
            max,
        }
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Fixed { instances } => format!("fixed at {instances} instance(s), no scaling"),
            Self::TargetTracking {
                target,
                min,
                max,
                warmup_s,
            } => format!(
                "target tracking, backlog per instance {target} (out after \
                 {TARGET_HIGH_PERIODS} min above, in after {TARGET_LOW_PERIODS} min below 90 %), \
                 {min}–{max} instances, warmup {warmup_s} s"
            ),
            Self::Step {
                out_above,
                in_below,
                out_periods,
                in_periods,
                out_cooldown_s,
                in_cooldown_s,
                min,
                max,
            } => format!(
                "step, +1 after {out_periods} min with backlog per instance > {out_above}, \
                 −1 after {in_periods} min < {in_below}, cooldowns {out_cooldown_s} s out / \
                 {in_cooldown_s} s in, {min}–{max} instances"
            ),
        }
    }

    /// (min, max) as simulated: at least one instance, and max never below min.
    fn bounds(&self) -> (u32, u32) {
        let (min, max) = match *self {
            Self::Fixed { instances } => (instances, instances),
            Self::TargetTracking { min, max, .. } | Self::Step { min, max, .. } => (min, max),
        };
        let min = min.max(1);
        (min, max.max(min))
    }
}

/// Everything about the tier except the arrivals.
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
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRecord {
    pub arrival: f64,
    pub start: f64,
    pub end: f64,
    /// Index into [`Outcome::instances`].
    pub instance: usize,
}

/// The tier at one instant; one every [`SAMPLE_EVERY`] seconds.
#[derive(Clone, Debug, serde::Serialize)]
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
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScalingAction {
    pub t: f64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// One instance's life; billed from `launched`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceLife {
    pub launched: f64,
    /// When it took (or would have taken) jobs; a `terminated` before this means it never did.
    pub in_service: f64,
    /// None if still running when the last job finished.
    pub terminated: Option<f64>,
}

/// Everything a run produced.
#[derive(Clone, Debug, serde::Serialize)]
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

/// Consecutive policy datapoints above the scale-out and below the scale-in threshold; a
/// CloudWatch alarm stays in ALARM for as long as its condition keeps holding.
#[derive(Default)]
struct Streaks {
    above: u32,
    below: u32,
}

impl Streaks {
    fn observe(&mut self, above: bool, below: bool) {
        self.above = if above { self.above + 1 } else { 0 };
        self.below = if below { self.below + 1 } else { 0 };
    }
}

struct Sim<'a> {
    setup: &'a Setup,
    arrivals: &'a [f64],
    min: u32,
    max: u32,
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
    streaks: Streaks,
    last_action: Option<f64>,
    last_scale_out: Option<f64>,
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
        let (min, max) = setup.policy.bounds();
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
            max,
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
            streaks: Streaks::default(),
            last_action: None,
            last_scale_out: None,
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

    /// Removes one instance from the group's capacity; false if there is none to remove.
    fn scale_in_one(&mut self, t: f64) -> bool {
        // Losing nothing first: a booting or idle instance, newest first. A busy one keeps
        // its job until it ends (the worker's lifecycle hook), so no upload is lost or redone.
        let idle = self
            .newest_live(|i| i.state == InstanceState::Pending)
            .or_else(|| self.newest_live(|i| i.state == InstanceState::InService && i.busy == 0));
        if let Some(id) = idle {
            self.terminate(id, t);
            return true;
        }
        if let Some(id) = self.newest_live(|i| i.state == InstanceState::InService) {
            self.instances[id].state = InstanceState::Draining;
            return true;
        }
        false
    }

    /// True while an instance boots or has been in service for less than `warmup_s`.
    fn any_warming_up(&self, t: f64, warmup_s: f64) -> bool {
        self.live.iter().any(|&id| {
            let instance = &self.instances[id];
            instance.state == InstanceState::Pending
                || (instance.state == InstanceState::InService
                    && t < instance.in_service_at + warmup_s)
        })
    }

    fn record(&mut self, t: f64, from: u32, to: u32, reason: String) {
        self.actions.push(ScalingAction {
            t,
            from,
            to,
            reason,
        });
        self.desired = to;
        self.last_action = Some(t);
    }

    fn evaluate_policy(&mut self, t: f64) {
        let in_service = self.count(InstanceState::InService);
        let capacity = in_service + self.count(InstanceState::Pending);
        let visible = self.queue.len() as f64;
        // SQS's visible count excludes in-flight messages. With nobody in service the
        // quotient is undefined and the backlog itself is the honest reading.
        let metric = if in_service == 0 {
            visible
        } else {
            visible / f64::from(in_service)
        };
        let setup = self.setup;
        match setup.policy {
            Policy::Fixed { .. } => {}
            Policy::TargetTracking {
                target, warmup_s, ..
            } => {
                self.streaks
                    .observe(metric > target, metric < TARGET_LOW_FRACTION * target);
                // in_service × metric / target, written without the division by in_service so
                // it holds at zero too; `as` saturates (and maps NaN to 0) before the clamp.
                let wanted = ((visible / target).ceil() as u32).clamp(self.min, self.max);
                if self.streaks.above >= TARGET_HIGH_PERIODS {
                    // Booting instances count as capacity, so the same backlog does not
                    // launch again while they come up.
                    if wanted > capacity {
                        self.launch(t, wanted - capacity);
                        let reason = format!(
                            "backlog per instance {metric:.1} above target {target} for {} min",
                            TARGET_HIGH_PERIODS
                        );
                        self.record(t, capacity, wanted, reason);
                    }
                } else if self.streaks.below >= TARGET_LOW_PERIODS
                    && wanted < capacity
                    && !self.any_warming_up(t, warmup_s)
                    && self.scale_in_one(t)
                {
                    // AWS scales in gradually: one instance per evaluation at most.
                    let reason = format!(
                        "backlog per instance {metric:.1} below 90 % of target {target} for {} min",
                        TARGET_LOW_PERIODS
                    );
                    self.record(t, capacity, capacity - 1, reason);
                }
            }
            Policy::Step {
                out_above,
                in_below,
                out_periods,
                in_periods,
                out_cooldown_s,
                in_cooldown_s,
                ..
            } => {
                self.streaks.observe(metric > out_above, metric < in_below);
                if self.streaks.above >= out_periods.max(1) {
                    let cooled = self
                        .last_scale_out
                        .is_none_or(|last| t - last >= out_cooldown_s);
                    if capacity < self.max && cooled {
                        self.launch(t, 1);
                        self.last_scale_out = Some(t);
                        let reason = format!(
                            "backlog per instance {metric:.1} > {out_above} for {out_periods} min"
                        );
                        self.record(t, capacity, capacity + 1, reason);
                    }
                } else if self.streaks.below >= in_periods.max(1) {
                    // Never scales in during the cooldown after any action.
                    let cooled = self
                        .last_action
                        .is_none_or(|last| t - last >= in_cooldown_s);
                    if capacity > self.min && cooled && self.scale_in_one(t) {
                        let reason = format!(
                            "backlog per instance {metric:.1} < {in_below} for {in_periods} min"
                        );
                        self.record(t, capacity, capacity - 1, reason);
                    }
                }
            }
        }
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

/// Summary figures of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub videos: usize,
    /// Upload → processed (end − arrival), seconds.
    pub p50_s: f64,
    pub p95_s: f64,
    pub max_s: f64,
    /// Mean of start − arrival, seconds.
    pub mean_wait_s: f64,
    /// Most jobs waiting at once, exact from the job records (not only at samples).
    pub longest_backlog: usize,
    /// Most instances running (launched, not yet terminated) at once, including booting ones
    /// and ones finishing a last job after a scale-in.
    pub max_instances: u32,
    /// Sum over instances of (terminated or end) − launched, in hours (billed from launch).
    pub instance_hours: f64,
    /// Sum of service times, hours.
    pub busy_hours: f64,
}

/// Summary figures of a run.
pub fn summarize(outcome: &Outcome) -> Summary {
    let jobs = &outcome.jobs;
    let latencies: Vec<f64> = jobs.iter().map(|job| job.end - job.arrival).collect();
    let mean_wait_s = if jobs.is_empty() {
        0.0
    } else {
        jobs.iter().map(|job| job.start - job.arrival).sum::<f64>() / jobs.len() as f64
    };
    let sampled_backlog = outcome
        .samples
        .iter()
        .map(|sample| sample.visible)
        .max()
        .unwrap_or(0);
    let instance_seconds: f64 = outcome
        .instances
        .iter()
        .map(|life| (life.terminated.unwrap_or(outcome.end) - life.launched).max(0.0))
        .sum();
    Summary {
        videos: jobs.len(),
        p50_s: percentile(&latencies, 0.5),
        p95_s: percentile(&latencies, 0.95),
        max_s: latencies.iter().copied().fold(0.0, f64::max),
        mean_wait_s,
        longest_backlog: peak_backlog(jobs).max(sampled_backlog),
        max_instances: peak_instances(&outcome.instances),
        instance_hours: instance_seconds / 3600.0,
        busy_hours: jobs.iter().map(|job| job.end - job.start).sum::<f64>() / 3600.0,
    }
}

fn peak_backlog(jobs: &[JobRecord]) -> usize {
    let mut changes: Vec<(f64, i64)> = Vec::with_capacity(jobs.len() * 2);
    for job in jobs {
        changes.push((job.arrival, 1));
        changes.push((job.start, -1));
    }
    changes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut waiting: i64 = 0;
    let mut peak: i64 = 0;
    for (index, &(t, change)) in changes.iter().enumerate() {
        waiting += change;
        // Everything at one instant happens together (an upload taken the moment it arrives
        // never waits), so measure only once the instant is complete.
        if changes
            .get(index + 1)
            .is_none_or(|next| next.0.total_cmp(&t).is_ne())
        {
            peak = peak.max(waiting);
        }
    }
    usize::try_from(peak).unwrap_or(0)
}

fn peak_instances(instances: &[InstanceLife]) -> u32 {
    let mut changes: Vec<(f64, i32)> = Vec::with_capacity(instances.len() * 2);
    for life in instances {
        changes.push((life.launched, 1));
        if let Some(terminated) = life.terminated {
            changes.push((terminated, -1));
        }
    }
    // At one instant a termination comes before a launch: the two never ran together.
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut running: i32 = 0;
    let mut peak: i32 = 0;
    for (_, change) in changes {
        running += change;
        peak = peak.max(running);
    }
    u32::try_from(peak).unwrap_or(0)
}

/// p-quantile (0..=1) of unsorted values, nearest-rank; 0.0 for empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // The slack keeps 0.95 × 100 from rounding up to rank 96.
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50 and p95 of upload → processed for jobs *finishing* within each window of `window_s`
/// seconds: (window_end_t, p50, p95, count). Windows in which no job finished are left out.
pub fn latency_over_time(outcome: &Outcome, window_s: f64) -> Vec<(f64, f64, f64, usize)> {
    if window_s.is_nan() || window_s <= 0.0 {
        return Vec::new();
    }
    let mut windows: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for job in outcome.jobs.iter().filter(|job| job.end.is_finite()) {
        let index = (job.end / window_s).floor().max(0.0) as u64;
        windows
            .entry(index)
            .or_default()
            .push(job.end - job.arrival);
    }
    windows
        .into_iter()
        .map(|(index, latencies)| {
            let window_end = (index + 1) as f64 * window_s;
            (
                window_end,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.95),
                latencies.len(),
            )
        })
        .collect()
}

/// EC2 prices for the cost estimate.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct InstancePrice {
    pub name: &'static str,
    pub vcpus: u32,
    pub usd_per_hour: f64,
    /// Some(baseline fraction per vCPU) for burstable T3 types.
    pub burst_baseline: Option<f64>,
}

/// Where [`PRICES`] come from.
pub const PRICE_SOURCE: &str = "AWS EC2 On-Demand Linux prices, us-east-1 (aws.amazon.com/ec2/pricing/on-demand), and T3 unlimited surplus credits at $0.05 per vCPU-hour (docs.aws.amazon.com/AWSEC2/latest/UserGuide/burstable-performance-instances-unlimited-mode-concepts.html); as published in 2024-2025, not re-checked at run time";

/// Instance types the cost estimate knows, see [`PRICE_SOURCE`].
pub const PRICES: &[InstancePrice] = &[
    InstancePrice {
        name: "t3.small",
        vcpus: 2,
        usd_per_hour: 0.0208,
        burst_baseline: Some(0.20),
    },
    InstancePrice {
        name: "t3.medium",
        vcpus: 2,
        usd_per_hour: 0.0416,
        burst_baseline: Some(0.20),
    },
    InstancePrice {
        name: "t3.large",
        vcpus: 2,
        usd_per_hour: 0.0832,
        burst_baseline: Some(0.30),
    },
    InstancePrice {
        name: "c7i.large",
        vcpus: 2,
        usd_per_hour: 0.08925,
        burst_baseline: None,
    },
    InstancePrice {
        name: "c6i.large",
        vcpus: 2,
        usd_per_hour: 0.085,
        burst_baseline: None,
    },
    InstancePrice {
        name: "m7i.large",
        vcpus: 2,
        usd_per_hour: 0.1008,
        burst_baseline: None,
    },
];

/// The price of an instance type by name, e.g. "t3.small".
pub fn price(name: &str) -> anyhow::Result<&'static InstancePrice> {
    let wanted = name.trim();
    PRICES
        .iter()
        .find(|price| price.name.eq_ignore_ascii_case(wanted))
        .ok_or_else(|| {
            let known: Vec<&str> = PRICES.iter().map(|price| price.name).collect();
            anyhow!(
                "no price for instance type `{wanted}`; known types: {}",
                known.join(", ")
            )
        })
}

/// What a run costs, in US dollars.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    pub instance_usd: f64,
    pub surplus_credit_usd: f64,
    pub total_usd: f64,
    pub per_1000_videos_usd: f64,
}

/// Cost of the run: instance_hours × price, plus for burstable types the surplus vCPU-hours
/// beyond baseline, priced at $0.05 per vCPU-hour.
pub fn cost(summary: &Summary, price: &InstancePrice) -> Cost {
    let instance_usd = summary.instance_hours * price.usd_per_hour;
    let surplus_credit_usd = match price.burst_baseline {
        Some(baseline) => {
            let vcpus = f64::from(price.vcpus);
            // A busy worker (ffmpeg) uses all its vCPUs; jobs sharing an instance share them,
            // so an instance never uses more than all of its vCPUs for its lifetime.
            let used = summary.busy_hours.min(summary.instance_hours) * vcpus;
            let earned = summary.instance_hours * vcpus * baseline;
            // Credits banked before the run (or granted at launch) are ignored: this is the
            // run on its own, as if every instance started with an empty balance.
            (used - earned).max(0.0) * SURPLUS_USD_PER_VCPU_HOUR
        }
        None => 0.0,
    };
    let total_usd = instance_usd + surplus_credit_usd;
    let per_1000_videos_usd = if summary.videos == 0 {
        0.0
    } else {
        total_usd / summary.videos as f64 * 1000.0
    };
    Cost {
        instance_usd,
        surplus_credit_usd,
        total_usd,
        per_1000_videos_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(policy: Policy, service: ServiceTime) -> Setup {
        Setup {
            policy,
            service,
            jobs_per_instance: 1,
            boot_s: 120.0,
            seed: 7,
        }
    }

    fn poisson(per_second: f64, count: usize, seed: u64) -> Vec<f64> {
        let minutes = count as f64 / per_second / 60.0 * 1.05;
        let times = Arrivals::Poisson {
            per_minute: per_second * 60.0,
            minutes,
        }
        .times(&mut Rng::new(seed));
        assert!(times.len() >= count, "only {} arrivals", times.len());
        times
    }

    /// Erlang C mean wait in queue for M/M/c: C(c, a) / (cμ − λ), a = λ/μ.
    fn erlang_c_wait(servers: u32, lambda: f64, mu: f64) -> f64 {
        let c = f64::from(servers);
        let a = lambda / mu;
        let mut term = 1.0; // a^k / k!
        let mut below = 0.0; // Σ_{k<c} a^k / k!
        for k in 0..servers {
            if k > 0 {
                term *= a / f64::from(k);
            }
            below += term;
        }
        let top = term * a / c * c / (c - a); // a^c / c! × c / (c − a)
        top / (below + top) / (c * mu - lambda)
    }

    fn relative_error(measured: f64, expected: f64) -> f64 {
        (measured / expected - 1.0).abs()
    }

    #[test]
    fn m_d_1_mean_wait_matches_pollaczek_khinchine() {
        // Theory: Poisson arrivals, fixed service S, one server: Wq = ρS / (2(1 − ρ)).
        // Tolerance 5 %: waits are strongly correlated in time at ρ = 0.7, so even 200 000
        // arrivals leave a standard error of about 2 % on the mean (measured across seeds);
        // 5 % is well over two of them, yet a wrong queue discipline or service accounting
        // misses by far more.
        let (service, rho) = (1.0, 0.7);
        let arrivals = poisson(rho / service, 200_000, 11);
        let outcome = simulate(
            &arrivals,
            &setup(Policy::Fixed { instances: 1 }, ServiceTime::Fixed(service)),
        );
        let expected = rho * service / (2.0 * (1.0 - rho));
        let measured = summarize(&outcome).mean_wait_s;
        assert!(
            relative_error(measured, expected) < 0.05,
            "M/D/1 Wq {measured} vs {expected}"
        );
    }

    #[test]
    fn m_m_3_mean_wait_matches_erlang_c() {
        // Theory: Poisson arrivals, exponential service, c = 3 servers: Erlang C,
        // Wq = C(c, a) / (cμ − λ). Tolerance 5 %: random service times add their own noise
        // (a 0.4 % high sample mean of the service times moves Wq by about 2 % at ρ = 0.7),
        // so this run takes 400 000 arrivals to keep the standard error near 1 %.
        let (mean_service, rho, servers) = (1.0, 0.7, 3u32);
        let lambda = rho * f64::from(servers) / mean_service;
        let arrivals = poisson(lambda, 400_000, 12);
        let outcome = simulate(
            &arrivals,
            &setup(
                Policy::Fixed { instances: servers },
                ServiceTime::Exponential(mean_service),
            ),
        );
        let expected = erlang_c_wait(servers, lambda, 1.0 / mean_service);
        let measured = summarize(&outcome).mean_wait_s;
        assert!(
            relative_error(measured, expected) < 0.05,
            "M/M/3 Wq {measured} vs {expected}"
        );
    }

    #[test]
    fn m_d_3_mean_wait_matches_cosmetatos_approximation() {
        // Theory: M/D/c has no simple closed form. The standard approximation halves the
        // M/M/c wait (deterministic service has no service-time variance, and in M/G/1 the
        // wait scales with (1 + cv²)/2); Cosmetatos's correction factor
        // 1 + (1 − ρ)(c − 1)(√(4 + 5c) − 2) / (16ρc) (exact for c = 1) brings it within a
        // few percent of the true value. Tolerance 10 %: the approximation's own error plus
        // the sampling error of the simulated mean.
        let (service, rho, servers) = (1.0, 0.7, 3u32);
        let c = f64::from(servers);
        let lambda = rho * c / service;
        let arrivals = poisson(lambda, 200_000, 13);
        let outcome = simulate(
            &arrivals,
            &setup(
                Policy::Fixed { instances: servers },
                ServiceTime::Fixed(service),
            ),
        );
        let correction =
            1.0 + (1.0 - rho) * (c - 1.0) * ((4.0 + 5.0 * c).sqrt() - 2.0) / (16.0 * rho * c);
        let expected = 0.5 * erlang_c_wait(servers, lambda, 1.0 / service) * correction;
        let measured = summarize(&outcome).mean_wait_s;
        assert!(
            relative_error(measured, expected) < 0.10,
            "M/D/3 Wq {measured} vs {expected}"
        );
    }

    #[test]
    fn littles_law_holds() {
        // Theory: L = λW. Over a run that starts and ends with an empty system it holds
        // exactly, so this checks the bookkeeping: the number in system integrated event by
        // event against λ_effective × mean sojourn from the job records. Tolerance 1 %, far
        // above floating-point rounding.
        let arrivals = poisson(2.1, 20_000, 14);
        let outcome = simulate(
            &arrivals,
            &setup(
                Policy::Fixed { instances: 3 },
                ServiceTime::Exponential(1.0),
            ),
        );
        let mut changes: Vec<(f64, i64)> = outcome
            .jobs
            .iter()
            .flat_map(|job| [(job.arrival, 1), (job.end, -1)])
            .collect();
        changes.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut area, mut in_system, mut previous) = (0.0, 0i64, 0.0);
        for (t, change) in changes {
            area += in_system as f64 * (t - previous);
            in_system += change;
            previous = t;
        }
        assert_eq!(in_system, 0);
        let jobs = outcome.jobs.len() as f64;
        let time_average_in_system = area / outcome.end;
        let lambda = jobs / outcome.end;
        let mean_sojourn = outcome
            .jobs
            .iter()
            .map(|job| job.end - job.arrival)
            .sum::<f64>()
            / jobs;
        assert!(
            relative_error(time_average_in_system, lambda * mean_sojourn) < 0.01,
            "L {time_average_in_system} vs λW {}",
            lambda * mean_sojourn
        );
    }

    fn target_tracking() -> Policy {
        Policy::TargetTracking {
            target: 2.0,
            min: 1,
            max: 3,
            warmup_s: 300.0,
        }
    }

    #[test]
    fn every_upload_is_processed_exactly_once() {
        // Conservation, exact up to float rounding (1e-6 s): each arrival gets one record, runs
        // for one of the drawn service times, on an instance that was in service, and one
        // instance never runs two jobs at once.
        let mut arrivals = Arrivals::Burst { count: 100 }.times(&mut Rng::new(1));
        arrivals.extend(
            Arrivals::Constant {
                per_minute: 4.0,
                minutes: 60.0,
            }
            .times(&mut Rng::new(1)),
        );
        arrivals.sort_by(f64::total_cmp);
        let service_samples = vec![30.0, 60.0, 90.0];
        for policy in [
            Policy::Fixed { instances: 2 },
            target_tracking(),
            Policy::seed_step(1, 3),
        ] {
            let name = policy.describe();
            let fixed = matches!(policy, Policy::Fixed { .. });
            let outcome = simulate(
                &arrivals,
                &setup(policy, ServiceTime::Samples(service_samples.clone())),
            );
            assert_eq!(outcome.jobs.len(), arrivals.len(), "{name}");
            let mut by_instance: BTreeMap<usize, Vec<&JobRecord>> = BTreeMap::new();
            for (job, &arrival) in outcome.jobs.iter().zip(&arrivals) {
                assert!((job.arrival - arrival).abs() < 1e-9, "{name}: {job:?}");
                assert!(
                    job.start >= job.arrival && job.end > job.start,
                    "{name}: {job:?}"
                );
                let service = job.end - job.start;
                assert!(
                    service_samples.iter().any(|s| (s - service).abs() < 1e-6),
                    "{name}: {job:?}"
                );
                let life = &outcome.instances[job.instance];
                assert!(
                    life.in_service <= job.start + 1e-9,
                    "{name}: {job:?} on {life:?}"
                );
                assert!(
                    life.terminated.is_none_or(|t| t >= job.end - 1e-9),
                    "{name}: {job:?} on {life:?}"
                );
                by_instance.entry(job.instance).or_default().push(job);
            }
            for runs in by_instance.values_mut() {
                runs.sort_by(|a, b| a.start.total_cmp(&b.start));
                for pair in runs.windows(2) {
                    assert!(
                        pair[1].start >= pair[0].end - 1e-9,
                        "{name}: overlap {pair:?}"
                    );
                }
            }
            let last_end = outcome.jobs.iter().map(|job| job.end).fold(0.0, f64::max);
            let running_at_end = outcome
                .instances
                .iter()
                .filter(|life| life.terminated.is_none())
                .count();
            if fixed {
                assert!((outcome.end - last_end).abs() < 1e-9, "{name}");
                assert_eq!(running_at_end, 2, "{name}");
            } else {
                // Followed until the instances the burst added are scaled in and paid for.
                assert!(outcome.end >= last_end, "{name}");
                assert_eq!(running_at_end, 1, "{name}: not back at the minimum");
            }
            assert_eq!(
                outcome.samples.len(),
                (outcome.end / SAMPLE_EVERY).floor() as usize + 1,
                "{name}"
            );
        }
    }

    fn assert_within_bounds(outcome: &Outcome, min: u32, max: u32, name: &str) {
        for sample in &outcome.samples {
            let capacity = sample.in_service + sample.pending;
            assert!((min..=max).contains(&capacity), "{name}: {sample:?}");
        }
    }

    #[test]
    fn scaling_policies_respect_bounds_cooldowns_and_warmup() {
        // Policy rules, exact (1e-9 s slack on times that are multiples of 60 s). The burst
        // alone shows both policies reaching max; a trickle after it gives the backlog time to
        // clear so that both scale in, which the cooldown and warmup rules are about.
        let service = ServiceTime::Fixed(60.0);
        let burst = Arrivals::Burst { count: 100 }.times(&mut Rng::new(1));
        for policy in [target_tracking(), Policy::seed_step(1, 3)] {
            let name = policy.describe();
            let outcome = simulate(&burst, &setup(policy, service.clone()));
            assert_within_bounds(&outcome, 1, 3, &name);
            assert!(
                outcome.samples.iter().any(|s| s.in_service == 3),
                "{name} never reached 3"
            );
        }

        let mut burst_then_trickle = burst;
        burst_then_trickle.extend(
            Arrivals::Constant {
                per_minute: 1.0,
                minutes: 120.0,
            }
            .times(&mut Rng::new(1)),
        );
        burst_then_trickle.sort_by(f64::total_cmp);

        let outcome = simulate(
            &burst_then_trickle,
            &setup(target_tracking(), service.clone()),
        );
        assert_within_bounds(&outcome, 1, 3, "target tracking");
        let scale_ins: Vec<&ScalingAction> =
            outcome.actions.iter().filter(|a| a.to < a.from).collect();
        assert!(
            !scale_ins.is_empty(),
            "target tracking never scaled in: {:?}",
            outcome.actions
        );
        for action in scale_ins {
            for life in &outcome.instances {
                let alive =
                    life.launched <= action.t && life.terminated.is_none_or(|end| end >= action.t);
                assert!(
                    !alive || action.t >= life.in_service + 300.0 - 1e-9,
                    "scale-in {action:?} while {life:?} was booting or warming up"
                );
            }
        }

        let outcome = simulate(
            &burst_then_trickle,
            &setup(Policy::seed_step(1, 3), service),
        );
        assert_within_bounds(&outcome, 1, 3, "step");
        assert!(
            outcome.actions.iter().any(|a| a.to < a.from),
            "step never scaled in: {:?}",
            outcome.actions
        );
        let mut previous: Option<&ScalingAction> = None;
        let mut last_scale_out: Option<f64> = None;
        for action in &outcome.actions {
            if action.to < action.from {
                if let Some(previous) = previous {
                    assert!(
                        action.t - previous.t >= 600.0 - 1e-9,
                        "scale-in in cooldown: {action:?} after {previous:?}"
                    );
                }
            } else {
                if let Some(last) = last_scale_out {
                    assert!(
                        action.t - last >= 300.0 - 1e-9,
                        "scale-out in cooldown: {action:?}"
                    );
                }
                last_scale_out = Some(action.t);
            }
            previous = Some(action);
        }
    }

    #[test]
    fn arrival_patterns_parse() {
        let parse = |spec: &str| Arrivals::parse(spec).unwrap();
        assert_eq!(
            parse("constant:10/min"),
            Arrivals::Constant {
                per_minute: 10.0,
                minutes: 60.0
            }
        );
        assert_eq!(
            parse("constant:10/min:30m"),
            Arrivals::Constant {
                per_minute: 10.0,
                minutes: 30.0
            }
        );
        assert_eq!(
            parse("poisson:2.5/min:2h"),
            Arrivals::Poisson {
                per_minute: 2.5,
                minutes: 120.0
            }
        );
        assert_eq!(
            parse("poisson:4/min"),
            Arrivals::Poisson {
                per_minute: 4.0,
                minutes: 60.0
            }
        );
        assert_eq!(
            parse("ramp:0-20/min:30m"),
            Arrivals::Ramp {
                from: 0.0,
                to: 20.0,
                minutes: 30.0
            }
        );
        assert_eq!(parse("burst:100"), Arrivals::Burst { count: 100 });
        for bad in [
            "constant:abc",
            "burst:",
            "nope:1",
            "ramp:5/min",
            "constant:10/min:soon",
            "poisson",
        ] {
            let error = Arrivals::parse(bad).unwrap_err().to_string();
            assert!(
                error.contains(bad) && error.contains("accepted forms"),
                "{bad}: {error}"
            );
        }

        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "capacity-arrivals-{}-{nanos}.csv",
            std::process::id()
        ));
        std::fs::write(&path, "arrival_s\n0\n\n12.5\n3\n").unwrap();
        let parsed = Arrivals::parse(path.to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
        let arrivals = parsed.unwrap();
        assert_eq!(arrivals, Arrivals::Times(vec![0.0, 12.5, 3.0]));
        assert_eq!(arrivals.times(&mut Rng::new(0)), vec![0.0, 3.0, 12.5]);
    }

    #[test]
    fn arrival_patterns_generate_the_expected_counts() {
        let mut rng = Rng::new(3);
        let constant = Arrivals::Constant {
            per_minute: 10.0,
            minutes: 60.0,
        }
        .times(&mut rng);
        assert_eq!(constant.len(), 600);
        assert!((constant[1] - 6.0).abs() < 1e-9 && (constant[599] - 3594.0).abs() < 1e-9);
        // 0 → 20 uploads/min over 30 min averages 10/min: 300 uploads, denser towards the end.
        let ramp = Arrivals::Ramp {
            from: 0.0,
            to: 20.0,
            minutes: 30.0,
        }
        .times(&mut rng);
        assert_eq!(ramp.len(), 300);
        assert!(ramp.windows(2).all(|pair| pair[1] > pair[0]) && ramp[299] < 1800.0);
        assert!(ramp.iter().filter(|&&t| t < 900.0).count() < 100);
        let falling = Arrivals::Ramp {
            from: 20.0,
            to: 0.0,
            minutes: 30.0,
        }
        .times(&mut rng);
        assert_eq!(falling.len(), 300);
        assert!(falling[299] <= 1800.0);
        assert_eq!(Arrivals::Burst { count: 5 }.times(&mut rng), vec![0.0; 5]);
        assert_eq!(
            Arrivals::Burst { count: 100 }.describe(),
            "burst of 100 uploads at t = 0"
        );
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<f64> = (1..=100u32).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn cost_adds_surplus_credits_for_burstable_types() {
        // One instance-hour, busy all of it: a t3.small uses 2 vCPU-hours, earns
        // 1 h × 2 × 0.20 = 0.4, pays 1.6 × $0.05 = $0.08 on top of $0.0208.
        let summary = Summary {
            videos: 60,
            p50_s: 60.0,
            p95_s: 60.0,
            max_s: 60.0,
            mean_wait_s: 0.0,
            longest_backlog: 0,
            max_instances: 1,
            instance_hours: 1.0,
            busy_hours: 1.0,
        };
        let small = cost(&summary, price("t3.small").unwrap());
        assert!((small.instance_usd - 0.0208).abs() < 1e-12);
        assert!((small.surplus_credit_usd - 0.08).abs() < 1e-12);
        assert!((small.total_usd - 0.1008).abs() < 1e-12);
        assert!((small.per_1000_videos_usd - 0.1008 / 60.0 * 1000.0).abs() < 1e-9);
        let compute = cost(&summary, price("c7i.large").unwrap());
        assert_eq!(compute.surplus_credit_usd, 0.0);
        assert!((compute.total_usd - 0.08925).abs() < 1e-12);
        let error = price("t2.nano").unwrap_err().to_string();
        assert!(
            error.contains("t2.nano") && error.contains("t3.small"),
            "{error}"
        );
    }
}
