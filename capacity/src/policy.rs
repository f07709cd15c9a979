//! How the number of workers is chosen, as pure functions of what CloudWatch would show:
//! [`Policy::decide`] reads one minute's [`Reading`] and the [`PolicyState`] the previous
//! minutes left, and says whether to change the group's capacity. The simulation and
//! anything that drives real instances call the same function.

use serde::Serialize;

/// CloudWatch's period for the SQS metrics, and so the policies' evaluation clock.
pub const POLICY_PERIOD: f64 = 60.0;
/// The alarms AWS creates for a target-tracking policy: scale out after 3 one-minute
/// datapoints above the target, scale in after 15 below 90 % of it.
const TARGET_HIGH_PERIODS: u32 = 3;
const TARGET_LOW_PERIODS: u32 = 15;
const TARGET_LOW_FRACTION: f64 = 0.9;

/// How the number of workers is chosen. Every policy keeps at least one instance: a tier
/// scaled to zero with a backlog below the alarm threshold never scales out again, and the
/// simulation is about getting every upload processed.
#[derive(Clone, Debug, Serialize)]
pub enum Policy {
    /// No scaling: exactly `instances` workers, all in service from t = 0.
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
        Self::step(min, max, 2.0, 1.0)
    }

    /// The seed's step table with other thresholds (`worker.step_out_above`,
    /// `worker.step_in_below`): the same periods and cooldowns.
    pub fn step(min: u32, max: u32, out_above: f64, in_below: f64) -> Self {
        Self::Step {
            out_above,
            in_below,
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

    /// Whether `other` is the same kind of policy with the same settings (bounds aside).
    pub fn same_settings(&self, other: &Policy) -> bool {
        match (self, other) {
            (Self::TargetTracking { target: x, .. }, Self::TargetTracking { target: y, .. }) => {
                x == y
            }
            (
                Self::Step {
                    out_above: a_out,
                    in_below: a_in,
                    ..
                },
                Self::Step {
                    out_above: b_out,
                    in_below: b_in,
                    ..
                },
            ) => a_out == b_out && a_in == b_in,
            (Self::Fixed { instances: x }, Self::Fixed { instances: y }) => x == y,
            _ => false,
        }
    }

    /// (min, max) as simulated: at least one instance, and max never below min.
    pub fn bounds(&self) -> (u32, u32) {
        let (min, max) = match *self {
            Self::Fixed { instances } => (instances, instances),
            Self::TargetTracking { min, max, .. } | Self::Step { min, max, .. } => (min, max),
        };
        let min = min.max(1);
        (min, max.max(min))
    }
}

/// What the policy sees at one evaluation: the group and its queue at time `t`.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Seconds since the start of the run.
    pub t: f64,
    /// Jobs waiting in the queue (SQS's visible messages; in-flight ones excluded).
    pub visible: usize,
    /// Instances taking jobs.
    pub in_service: u32,
    /// Instances launched and still booting: capacity already asked for.
    pub pending: u32,
    /// When the newest in-service instance entered service, if any (for the warmup).
    pub newest_in_service_at: Option<f64>,
}

impl Reading {
    /// Backlog per instance, the metric both policies act on. With nobody in service the
    /// quotient is undefined and the backlog itself is the honest reading.
    pub fn backlog_per_instance(&self) -> f64 {
        let visible = self.visible as f64;
        if self.in_service == 0 {
            visible
        } else {
            visible / f64::from(self.in_service)
        }
    }

    /// In-service and booting instances together.
    pub fn capacity(&self) -> u32 {
        self.in_service + self.pending
    }

    /// True while an instance boots or has been in service for less than `warmup_s`.
    fn warming_up(&self, warmup_s: f64) -> bool {
        self.pending > 0
            || self
                .newest_in_service_at
                .is_some_and(|since| self.t < since + warmup_s)
    }
}

/// What earlier evaluations leave for later ones: the alarms' streaks and the cooldowns'
/// clocks.
#[derive(Clone, Debug, Default)]
pub struct PolicyState {
    /// Consecutive datapoints above the scale-out threshold; a CloudWatch alarm stays in
    /// ALARM for as long as its condition keeps holding.
    above: u32,
    /// Consecutive datapoints below the scale-in threshold.
    below: u32,
    last_action: Option<f64>,
    last_scale_out: Option<f64>,
}

impl PolicyState {
    fn observe(&mut self, above: bool, below: bool) {
        self.above = if above { self.above + 1 } else { 0 };
        self.below = if below { self.below + 1 } else { 0 };
    }

    fn acted(&mut self, t: f64, out: bool) {
        self.last_action = Some(t);
        if out {
            self.last_scale_out = Some(t);
        }
    }
}

/// A change of the group's capacity. Scale-in is always by one instance (AWS scales in
/// gradually: one instance per evaluation at most).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

impl Policy {
    /// One evaluation: the reading of the minute that just ended, and the state the
    /// previous evaluations left. `None` when the capacity stays as it is.
    pub fn decide(&self, reading: &Reading, state: &mut PolicyState) -> Option<Decision> {
        let (min, max) = self.bounds();
        let t = reading.t;
        let capacity = reading.capacity();
        let metric = reading.backlog_per_instance();
        let visible = reading.visible as f64;
        let decision = match *self {
            Self::Fixed { .. } => None,
            Self::TargetTracking {
                target, warmup_s, ..
            } => {
                state.observe(metric > target, metric < TARGET_LOW_FRACTION * target);
                // in_service × metric / target, written without the division by in_service so
                // it holds at zero too; `as` saturates (and maps NaN to 0) before the clamp.
                let wanted = ((visible / target).ceil() as u32).clamp(min, max);
                if state.above >= TARGET_HIGH_PERIODS {
                    // Booting instances count as capacity, so the same backlog does not
                    // launch again while they come up.
                    (wanted > capacity).then(|| Decision {
                        from: capacity,
                        to: wanted,
                        reason: format!(
                            "backlog per instance {metric:.1} above target {target} for \
                             {TARGET_HIGH_PERIODS} min"
                        ),
                    })
                } else if state.below >= TARGET_LOW_PERIODS
                    && wanted < capacity
                    && !reading.warming_up(warmup_s)
                {
                    Some(Decision {
                        from: capacity,
                        to: capacity - 1,
                        reason: format!(
                            "backlog per instance {metric:.1} below 90 % of target {target} \
                             for {TARGET_LOW_PERIODS} min"
                        ),
                    })
                } else {
                    None
                }
            }
            Self::Step {
                out_above,
                in_below,
                out_periods,
                in_periods,
                out_cooldown_s,
                in_cooldown_s,
                ..
            } => {
                state.observe(metric > out_above, metric < in_below);
                if state.above >= out_periods.max(1) {
                    let cooled = state
                        .last_scale_out
                        .is_none_or(|last| t - last >= out_cooldown_s);
                    (capacity < max && cooled).then(|| Decision {
                        from: capacity,
                        to: capacity + 1,
                        reason: format!(
                            "backlog per instance {metric:.1} > {out_above} for {out_periods} min"
                        ),
                    })
                } else if state.below >= in_periods.max(1) {
                    // Never scales in during the cooldown after any action.
                    let cooled = state
                        .last_action
                        .is_none_or(|last| t - last >= in_cooldown_s);
                    (capacity > min && cooled).then(|| Decision {
                        from: capacity,
                        to: capacity - 1,
                        reason: format!(
                            "backlog per instance {metric:.1} < {in_below} for {in_periods} min"
                        ),
                    })
                } else {
                    None
                }
            }
        };
        if let Some(decision) = &decision {
            state.acted(t, decision.to > decision.from);
        }
        decision
    }
}
