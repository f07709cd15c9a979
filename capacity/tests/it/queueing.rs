//! The simulation against what queueing theory says of the same systems (M/D/1, M/M/3,
//! M/D/3, Little's law).

use capacity::{simulate, summarize, Policy, ServiceTime};

use crate::{poisson, setup};

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
