//! The capacity model checked against queueing theory, its policies' rules, its arrival
//! patterns and its figures, through the crate's public interface.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod arrivals;
mod figures;
mod policies;
mod queueing;

use capacity::{Arrivals, Policy, Rng, ServiceTime, Setup};

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
