//! The figures a run is judged by: upload → processed percentiles, the longest backlog,
//! the most instances at once, instance and busy hours.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::sim::{InstanceLife, JobRecord, Outcome};
use crate::stats::percentile;

/// Summary figures of a run.
#[derive(Clone, Debug, Serialize)]
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
