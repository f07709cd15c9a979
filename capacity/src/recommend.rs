//! The operator's question, answered with the model: which worker policy settings meet an
//! upload → processed SLO on given arrivals at the lowest cost. [`recommend`] simulates
//! each candidate (target tracking's backlog target; the step policy's out and in
//! thresholds) on the same arrivals, service times and boot time, and keeps the cheapest
//! that meets the SLO at p95.

use serde::Serialize;

use crate::cost::{cost, InstancePrice};
use crate::policy::Policy;
use crate::sim::{simulate, Setup};
use crate::summary::summarize;

/// Targets and thresholds tried (videos waiting per in-service worker): the seed's 2, and
/// up to far past what one worker clears in a boot time (a 2-minute boot at 4 s a video is
/// 30 videos).
pub const BACKLOG_CANDIDATES: [f64; 16] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0,
];

/// One simulated candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub policy: Policy,
    pub p95_s: f64,
    pub max_instances: u32,
    pub total_usd: f64,
    pub per_1000_videos_usd: f64,
    pub meets_slo: bool,
}

/// Costs this close (a fraction of the cheapest) count as the same: a change of settings
/// is not worth less than that.
const SAME_COST: f64 = 0.01;

/// Every candidate, cheapest first among those meeting the SLO, then the rest by p95.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    pub slo_s: f64,
    pub candidates: Vec<Candidate>,
}

impl Recommendation {
    /// The cheapest candidate meeting the SLO (the lower p95 on a tie), if any does.
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.first().filter(|c| c.meets_slo)
    }
}

/// Simulates target tracking at each of [`BACKLOG_CANDIDATES`] and the step policy at each
/// of them as its out threshold (in below half of it), with `template`'s service time,
/// boot time, seed and the policies' min/max, and ranks them.
pub fn recommend(
    arrivals: &[f64],
    template: &Setup,
    slo_s: f64,
    price: &InstancePrice,
) -> Recommendation {
    let (min, max) = template.policy.bounds();
    let warmup_s = match template.policy {
        Policy::TargetTracking { warmup_s, .. } => warmup_s,
        _ => 300.0,
    };
    let mut policies = Vec::new();
    for target in BACKLOG_CANDIDATES {
        policies.push(Policy::TargetTracking {
            target,
            min,
            max,
            warmup_s,
        });
        policies.push(Policy::step(min, max, target, target / 2.0));
    }
    let mut candidates: Vec<Candidate> = policies
        .into_iter()
        .map(|policy| {
            let setup = Setup {
                policy: policy.clone(),
                ..template.clone()
            };
            let summary = summarize(&simulate(arrivals, &setup));
            let cost = cost(&summary, price);
            Candidate {
                policy,
                p95_s: summary.p95_s,
                max_instances: summary.max_instances,
                total_usd: cost.total_usd,
                per_1000_videos_usd: cost.per_1000_videos_usd,
                meets_slo: summary.p95_s <= slo_s,
            }
        })
        .collect();
    let cheapest = candidates
        .iter()
        .filter(|c| c.meets_slo)
        .map(|c| c.total_usd)
        .fold(f64::INFINITY, f64::min);
    // Among the equally cheap: the settings deployed now (nothing to change), then the
    // seed's, then the lower p95.
    let preference = |c: &Candidate| {
        if c.policy.same_settings(&template.policy) {
            0
        } else if is_seeds(&c.policy) {
            1
        } else {
            2
        }
    };
    let equally_cheap = |c: &Candidate| c.meets_slo && c.total_usd <= cheapest * (1.0 + SAME_COST);
    candidates.sort_by(|a, b| {
        b.meets_slo
            .cmp(&a.meets_slo)
            .then(equally_cheap(b).cmp(&equally_cheap(a)))
            .then_with(|| {
                if equally_cheap(a) {
                    preference(a)
                        .cmp(&preference(b))
                        .then(a.p95_s.total_cmp(&b.p95_s))
                } else if a.meets_slo {
                    a.total_usd.total_cmp(&b.total_usd)
                } else {
                    a.p95_s.total_cmp(&b.p95_s)
                }
            })
    });
    Recommendation { slo_s, candidates }
}

/// The seed's settings: 2 waiting videos per worker, or its step table.
fn is_seeds(policy: &Policy) -> bool {
    policy.same_settings(&Policy::seed_step(1, 1))
        || matches!(policy, Policy::TargetTracking { target, .. } if *target == 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::ServiceTime;

    fn setup() -> Setup {
        Setup {
            policy: Policy::seed_step(1, 3),
            service: ServiceTime::Fixed(4.0),
            jobs_per_instance: 1,
            boot_s: 120.0,
            seed: 1,
        }
    }

    #[test]
    fn the_cheapest_setting_meeting_the_slo_is_recommended_and_none_when_none_does() {
        let price = crate::price("t3.small").unwrap();
        // The seed's burst: 100 uploads at once, 4 s each.
        let burst = vec![0.0; 100];
        let seed = summarize(&simulate(&burst, &setup()));
        let seed_cost = cost(&seed, price).total_usd;
        let recommended = recommend(&burst, &setup(), 7.0 * 60.0, price);
        let best = recommended
            .best()
            .expect("one worker clears 100 × 4 s in 7 min");
        assert!(best.p95_s <= 7.0 * 60.0);
        assert!(best.total_usd <= seed_cost, "{best:?} against {seed_cost}");
        // None meeting the SLO costs less than 99 % of it.
        for other in recommended.candidates.iter().filter(|c| c.meets_slo) {
            assert!(
                other.total_usd >= best.total_usd * (1.0 - SAME_COST),
                "{other:?}"
            );
        }
        assert_eq!(recommended.candidates.len(), 2 * BACKLOG_CANDIDATES.len());

        // Uploads one worker keeps up with: every setting costs the same, so the deployed
        // one is kept.
        let steady: Vec<f64> = (0..100).map(|i| f64::from(i) * 60.0).collect();
        let kept = recommend(&steady, &setup(), 5.0 * 60.0, price);
        assert!(kept.best().unwrap().policy.same_settings(&setup().policy));

        // 100 × 4 s cannot be done in one minute by at most 3 workers.
        let impossible = recommend(&burst, &setup(), 60.0, price);
        assert!(impossible.best().is_none());
        let closest = &impossible.candidates[0];
        assert!(impossible
            .candidates
            .iter()
            .all(|c| c.p95_s >= closest.p95_s));
    }
}
