//! The figures reports print: percentiles and cost.

use capacity::stats::{percentile, percentile_of_counts, slope};
use capacity::{cost, price, Summary};

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
fn a_histogram_has_the_same_percentiles_as_its_values() {
    let histogram = [(10.0, 90), (100.0, 9), (1000.0, 1)];
    let values: Vec<f64> = histogram
        .iter()
        .flat_map(|&(value, count)| std::iter::repeat_n(value, count))
        .collect();
    for p in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
        assert_eq!(
            percentile_of_counts(histogram, p),
            percentile(&values, p),
            "p = {p}"
        );
    }
    assert_eq!(percentile_of_counts([], 0.5), 0.0);
}

#[test]
fn slope_of_a_line_and_of_a_flat_queue() {
    assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
    assert_eq!(slope(&[(0.0, 2.0), (1.0, 2.0)]), 0.0);
    assert_eq!(slope(&[(0.0, 2.0)]), 0.0);
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
