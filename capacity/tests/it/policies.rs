//! The scaling policies: every upload processed once under them, their bounds, cooldowns
//! and warmup in a whole run, and their rules one evaluation at a time.

use std::collections::BTreeMap;

use capacity::sim::{JobRecord, Outcome, ScalingAction, SAMPLE_EVERY};
use capacity::{simulate, Arrivals, Decision, Policy, PolicyState, Reading, Rng, ServiceTime};

use crate::setup;

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
    let scale_ins: Vec<&ScalingAction> = outcome.actions.iter().filter(|a| a.to < a.from).collect();
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

/// A reading at minute `minute` with `visible` jobs waiting on `in_service` settled workers.
fn reading(minute: u32, visible: usize, in_service: u32) -> Reading {
    Reading {
        t: f64::from(minute) * 60.0,
        visible,
        in_service,
        pending: 0,
        newest_in_service_at: Some(-3600.0),
    }
}

/// The decisions of `policy` over consecutive minutes of (visible, in service).
fn decisions(policy: &Policy, minutes: &[(usize, u32)]) -> Vec<Option<(u32, u32)>> {
    let mut state = PolicyState::default();
    minutes
        .iter()
        .enumerate()
        .map(|(minute, &(visible, in_service))| {
            policy
                .decide(&reading(minute as u32 + 1, visible, in_service), &mut state)
                .map(|Decision { from, to, .. }| (from, to))
        })
        .collect()
}

#[test]
fn the_seed_step_adds_one_after_two_minutes_above_two_per_worker_then_cools_down() {
    // 5 waiting on 2 workers is 2.5 per worker: out on the second minute, then not again
    // before the 300 s cooldown ends, though the backlog stays.
    let step = Policy::seed_step(1, 5);
    let got = decisions(&step, &[(5, 2); 8]);
    assert_eq!(got[1], Some((2, 3)));
    assert_eq!(got[2..6], [None; 4], "out cooldown 300 s");
    assert_eq!(
        got[6],
        Some((2, 3)),
        "out again once cooled (capacity read as given)"
    );
    // Exactly 2 per worker is not above 2.
    assert_eq!(decisions(&step, &[(4, 2); 3]), [None; 3]);
}

#[test]
fn the_seed_step_removes_one_after_five_minutes_below_one_per_worker_not_below_min() {
    let step = Policy::seed_step(1, 3);
    let idle = [(0, 3); 6];
    assert_eq!(
        decisions(&step, &idle),
        [None, None, None, None, Some((3, 2)), None]
    );
    // At its minimum it stays, however idle.
    assert_eq!(decisions(&step, &[(0, 1); 7]), [None; 7]);
}

#[test]
fn target_tracking_asks_for_the_capacity_the_backlog_needs_after_three_minutes() {
    let policy = target_tracking();
    // 10 waiting at a target of 2 per instance wants 5, clamped to max 3.
    assert_eq!(
        decisions(&policy, &[(10, 1); 3]),
        [None, None, Some((1, 3))]
    );
    // Booting instances count as capacity: no second launch for the same backlog.
    let mut state = PolicyState::default();
    for minute in 1..=3 {
        let booting = Reading {
            pending: 2,
            ..reading(minute, 10, 1)
        };
        assert_eq!(policy.decide(&booting, &mut state), None, "minute {minute}");
    }
}

#[test]
fn target_tracking_scales_in_one_at_a_time_after_fifteen_minutes_and_never_while_warming_up() {
    let policy = target_tracking();
    let mut got = decisions(&policy, &[(0, 3); 16]);
    assert_eq!(
        got.pop(),
        Some(Some((3, 2))),
        "fifteen minutes below 90 % of the target"
    );
    assert!(got[..14].iter().all(Option::is_none), "{got:?}");
    let mut state = PolicyState::default();
    let mut last = None;
    for minute in 1..=16 {
        let warming = Reading {
            newest_in_service_at: Some(f64::from(minute) * 60.0 - 100.0),
            ..reading(minute, 0, 3)
        };
        last = policy.decide(&warming, &mut state);
    }
    assert_eq!(
        last, None,
        "an instance in service for 100 s is within the 300 s warmup"
    );
}
