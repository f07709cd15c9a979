//! What a run costs: instance hours at on-demand prices, plus T3 surplus credits.

use anyhow::anyhow;
use serde::Serialize;

use crate::summary::Summary;

/// T3 unlimited surplus credits, Linux, per vCPU-hour (see [`PRICE_SOURCE`]).
const SURPLUS_USD_PER_VCPU_HOUR: f64 = 0.05;

/// EC2 prices for the cost estimate.
#[derive(Clone, Copy, Debug, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
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
