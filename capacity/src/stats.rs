//! The statistics every report uses, in one place: one nearest-rank rule for percentiles
//! (of values, of a histogram) and a least-squares slope.

/// The 1-based nearest rank of the p-quantile (0..=1) among `count` values: the smallest
/// rank whose share of the values reaches p. 0 for no values.
pub fn nearest_rank(count: usize, p: f64) -> usize {
    if count == 0 {
        return 0;
    }
    // The slack keeps 0.95 × 100 (95.00000000000001 in floating point) from rounding up to
    // rank 96.
    let rank = (p.clamp(0.0, 1.0) * count as f64 - 1e-9).ceil() as usize;
    rank.clamp(1, count)
}

/// p-quantile (0..=1) of unsorted values, nearest-rank; 0.0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match nearest_rank(sorted.len(), p) {
        0 => 0.0,
        rank => sorted[rank - 1],
    }
}

/// p-quantile (0..=1) of a histogram given as (value, how many times it was seen) in
/// ascending order of value, nearest-rank; 0.0 for an empty one.
pub fn percentile_of_counts(counts: impl IntoIterator<Item = (f64, usize)> + Clone, p: f64) -> f64 {
    let total: usize = counts.clone().into_iter().map(|(_, count)| count).sum();
    let rank = nearest_rank(total, p);
    let mut seen = 0;
    let mut last = 0.0;
    for (value, count) in counts {
        seen += count;
        last = value;
        if rank > 0 && seen >= rank {
            return value;
        }
    }
    last
}

/// Least-squares slope of y over x; 0.0 with fewer than two points or all x equal.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let covariance: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}
