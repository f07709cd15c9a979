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

/// The date of [`STACK_PRICES`]' figures, shown with every stack cost.
pub const STACK_PRICES_DATE: &str = "us-east-1 on-demand, as published in 2025";

/// What the stack's billable parts cost in us-east-1 (see [`STACK_PRICES_DATE`]).
pub mod stack_prices {
    /// RDS for PostgreSQL, per hour, single-AZ; Multi-AZ is twice.
    pub const RDS_USD_PER_HOUR: &[(&str, f64)] = &[
        ("db.t3.micro", 0.018),
        ("db.t3.small", 0.036),
        ("db.t3.medium", 0.072),
        ("db.t4g.micro", 0.016),
        ("db.t4g.small", 0.032),
    ];
    /// RDS gp2 storage per GB-month, single-AZ; Multi-AZ is twice.
    pub const RDS_STORAGE_USD_PER_GB_MONTH: f64 = 0.115;
    /// An Application Load Balancer per hour, and one LCU-hour (a small stack's use).
    pub const ALB_USD_PER_HOUR: f64 = 0.0225;
    pub const ALB_LCU_USD_PER_HOUR: f64 = 0.008;
    /// A public IPv4 address per hour (each instance in public subnets, the ALB's two,
    /// the NAT gateway's).
    pub const PUBLIC_IPV4_USD_PER_HOUR: f64 = 0.005;
    /// A NAT gateway per hour (data processed is extra: $0.045 per GB).
    pub const NAT_USD_PER_HOUR: f64 = 0.045;
    /// EBS gp3 per GB-month.
    pub const EBS_USD_PER_GB_MONTH: f64 = 0.08;
    /// A Secrets Manager secret per month.
    pub const SECRET_USD_PER_MONTH: f64 = 0.40;
    /// EC2 detailed monitoring per instance-month (7 metrics at $0.30).
    pub const DETAILED_MONITORING_USD_PER_MONTH: f64 = 2.10;
    /// A standard CloudWatch alarm per month.
    pub const ALARM_USD_PER_MONTH: f64 = 0.10;
}

/// Hours in a month, as AWS's price pages count them.
pub const HOURS_PER_MONTH: f64 = 730.0;

/// The parts of a stack that cost money.
#[derive(Clone, Debug)]
pub struct StackShape {
    /// (instance type, instances) of each tier.
    pub web: (String, u32),
    pub worker: (String, u32),
    /// Root volume of each instance, GB.
    pub volume_gb: u32,
    pub web_detailed_monitoring: bool,
    pub database_class: String,
    pub multi_az: bool,
    /// A stopped database (a paused stack) bills its storage only.
    pub database_stopped: bool,
    pub storage_gb: u32,
    /// Instances in public subnets (each with a public address); else behind a NAT.
    pub public_instances: bool,
    pub secrets: u32,
    pub alarms: u32,
}

/// One billable kind and what it costs an hour.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CostLine {
    pub what: String,
    pub usd_per_hour: f64,
}

/// What `shape` costs an hour, one line per billable kind.
pub fn stack_cost(shape: &StackShape) -> anyhow::Result<Vec<CostLine>> {
    use stack_prices::*;
    let monthly = |usd: f64| usd / HOURS_PER_MONTH;
    let az = if shape.multi_az { 2.0 } else { 1.0 };
    let rds = RDS_USD_PER_HOUR
        .iter()
        .find(|(class, _)| *class == shape.database_class)
        .map(|(_, usd)| *usd)
        .ok_or_else(|| anyhow!("no price for database class `{}`", shape.database_class))?;
    let mut lines = Vec::new();
    for (tier, (instance_type, count)) in [("web", &shape.web), ("worker", &shape.worker)] {
        lines.push(CostLine {
            what: format!("{count} × {instance_type} ({tier})"),
            usd_per_hour: f64::from(*count) * price(instance_type)?.usd_per_hour,
        });
    }
    let instances = shape.web.1 + shape.worker.1;
    lines.push(CostLine {
        what: format!(
            "RDS {} {}{}",
            shape.database_class,
            if shape.multi_az {
                "Multi-AZ"
            } else {
                "single-AZ"
            },
            if shape.database_stopped {
                " (stopped)"
            } else {
                ""
            }
        ),
        usd_per_hour: if shape.database_stopped {
            0.0
        } else {
            rds * az
        },
    });
    lines.push(CostLine {
        what: format!("RDS storage {} GB", shape.storage_gb),
        usd_per_hour: monthly(f64::from(shape.storage_gb) * RDS_STORAGE_USD_PER_GB_MONTH * az),
    });
    lines.push(CostLine {
        what: "load balancer (1 LCU)".to_owned(),
        usd_per_hour: ALB_USD_PER_HOUR + ALB_LCU_USD_PER_HOUR,
    });
    let addresses = 2 + if shape.public_instances { instances } else { 1 };
    lines.push(CostLine {
        what: format!("{addresses} public IPv4 addresses"),
        usd_per_hour: f64::from(addresses) * PUBLIC_IPV4_USD_PER_HOUR,
    });
    if !shape.public_instances {
        lines.push(CostLine {
            what: "NAT gateway (plus $0.045 per GB)".to_owned(),
            usd_per_hour: NAT_USD_PER_HOUR,
        });
    }
    let detailed = if shape.web_detailed_monitoring {
        shape.web.1
    } else {
        0
    };
    lines.push(CostLine {
        what: format!(
            "EBS {instances} × {} GB, {} secrets, {} alarms, detailed monitoring of {detailed}",
            shape.volume_gb, shape.secrets, shape.alarms
        ),
        usd_per_hour: monthly(
            f64::from(instances * shape.volume_gb) * EBS_USD_PER_GB_MONTH
                + f64::from(shape.secrets) * SECRET_USD_PER_MONTH
                + f64::from(shape.alarms) * ALARM_USD_PER_MONTH
                + f64::from(detailed) * DETAILED_MONITORING_USD_PER_MONTH,
        ),
    });
    Ok(lines)
}
