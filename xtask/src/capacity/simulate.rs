//! `cargo xtask capacity simulate`: the worker tier's scaling policy, as `provision`
//! deploys it from `config/aws.toml`, under an arrival pattern.

use anyhow::Context;

use super::{plot, Report};
use capacity::{Arrivals, Policy, ServiceTime, Setup};
use stack_config::{Config, WorkerTierConfig};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The uploads: constant:10/min[:30m], poisson:10/min[:30m], ramp:0-20/min[:30m],
    /// burst:100, or a CSV file of arrival times in seconds (one per line).
    #[arg(long, default_value = "burst:100")]
    arrivals: String,
    /// Seconds one video takes on a worker (e.g. 4.2s). Default: the service times of the
    /// newest `capacity worker` report at one job per worker.
    #[arg(long, value_parser = parse_seconds)]
    service_time: Option<f64>,
    /// EC2 type for the cost estimate. Default: the worker's in config/aws.toml. Only the
    /// price and CPU credits change: the service time stays the one measured here.
    #[arg(long)]
    instance_type: Option<String>,
    /// Also run the other worker policy on the same arrivals, side by side: the seed's
    /// step table (out above 2 per worker, in below 1, cooldowns 300/600 s) or backlog
    /// target tracking, whichever `worker.scaling_policy` in config/aws.toml does not
    /// deploy (that one is always simulated).
    #[arg(long)]
    compare: bool,
    /// Seconds from launch until a new instance takes jobs (EC2 boot + user data:
    /// packages, release download). The deploy rehearsal measures 42–58 s with a warm
    /// package cache; 120 s is typical on AWS.
    #[arg(long, default_value = "120s", value_parser = parse_seconds)]
    boot_time: f64,
    /// Target tracking's instance warmup: AWS's default (300 s) as provision sets none.
    #[arg(long, default_value = "300s", value_parser = parse_seconds)]
    warmup: f64,
    /// Also search the worker policy's settings (target tracking's backlog target, the step
    /// policy's thresholds) for the cheapest that meets --slo at p95 on these arrivals, with
    /// these service and boot times, and print the config/aws.toml lines to use.
    #[arg(long)]
    recommend: bool,
    /// With --recommend: upload → processed at p95, e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = parse_seconds, requires = "recommend")]
    slo: f64,
    /// Random seed (Poisson arrivals, sampled service times).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also copy the whole report (report.md, data, plots) to DIR: the README's
    /// simulation in docs/capacity is regenerated this way.
    #[arg(long, value_name = "DIR")]
    copy_to: Option<std::path::PathBuf>,
}

/// Seconds: a bare number, or a length in the model's grammar (`4.5s`, `2m`).
fn parse_seconds(text: &str) -> Result<f64, String> {
    let bare = text
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && s.is_finite());
    bare.or_else(|| capacity::arrivals::parse_duration(text))
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds (e.g. 4.5s, 2m)"))
}

/// The worker tier as `provision` deploys it: config/aws.toml read with provision's own
/// types, so a key provision refuses is refused here too.
fn worker_tier(root: &std::path::Path) -> anyhow::Result<WorkerTierConfig> {
    let path = root.join("config/aws.toml");
    Ok(Config::load(Some(&path))
        .with_context(|| format!("reading {}", path.display()))?
        .worker)
}

/// The command line's pattern, or the CSV file of arrival times it names.
fn arrivals(spec: &str) -> anyhow::Result<Arrivals> {
    let path = std::path::Path::new(spec.trim());
    if !path.is_file() {
        return Arrivals::parse(spec);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading arrival times from {}", path.display()))?;
    Arrivals::from_csv(&text, &path.display().to_string())
}

/// One policy's run.
struct Run {
    policy: Policy,
    outcome: capacity::Outcome,
    summary: capacity::Summary,
    cost: capacity::Cost,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let tier = worker_tier(&crate::paths::project_root())?;
    let instance_type = args
        .instance_type
        .clone()
        .unwrap_or(tier.instance_type.clone());
    let price = capacity::price(&instance_type)?;
    let arrivals = arrivals(&args.arrivals)?;
    let (service, service_source) = match args.service_time {
        Some(seconds) => (
            ServiceTime::Fixed(seconds),
            format!("{seconds} s (--service-time)"),
        ),
        None => {
            let (dir, samples) = super::worker::measured_service_times().context(
                "no service time: pass --service-time (e.g. 4s) or run `cargo xtask capacity worker` first",
            )?;
            anyhow::ensure!(
                !samples.is_empty(),
                "{} holds no service times",
                dir.display()
            );
            let service = ServiceTime::Samples(samples);
            let source = format!(
                "measured by `capacity worker` (target/capacity/{}), mean {:.1} s",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                service.mean()
            );
            (service, source)
        }
    };
    // The policy `worker.scaling_policy` deploys first; `--compare` adds the other.
    let tracking = Policy::TargetTracking {
        target: f64::from(tier.backlog_per_instance),
        min: tier.min_size,
        max: tier.max_size,
        warmup_s: args.warmup,
    };
    let step = Policy::step(
        tier.min_size,
        tier.max_size,
        tier.step_out_above,
        tier.step_in_below,
    );
    let mut policies = match tier.scaling_policy {
        stack_config::WorkerScaling::TargetTracking => vec![tracking, step],
        stack_config::WorkerScaling::Step => vec![step, tracking],
    };
    if !args.compare {
        policies.truncate(1);
    }
    let times = arrivals.times(&mut capacity::Rng::new(args.seed));
    anyhow::ensure!(!times.is_empty(), "the arrival pattern has no uploads");
    let runs: Vec<Run> = policies
        .into_iter()
        .map(|policy| {
            let setup = Setup {
                policy: policy.clone(),
                service: service.clone(),
                jobs_per_instance: 1,
                boot_s: args.boot_time,
                seed: args.seed,
            };
            let outcome = capacity::simulate(&times, &setup);
            let summary = capacity::summarize(&outcome);
            let cost = capacity::cost(&summary, price);
            Run {
                policy,
                outcome,
                summary,
                cost,
            }
        })
        .collect();

    let report = Report::create("simulate")?;
    write_data(&report, &runs)?;
    draw(&report, &runs)?;
    let mut md = markdown(
        &report,
        &args,
        &arrivals,
        &service_source,
        &instance_type,
        &runs,
    );
    if args.recommend {
        let template = Setup {
            policy: runs[0].policy.clone(),
            service: service.clone(),
            jobs_per_instance: 1,
            boot_s: args.boot_time,
            seed: args.seed,
        };
        let recommendation = capacity::recommend(&times, &template, args.slo, price);
        report.write_json("recommend.json", &recommendation)?;
        md.push_str(&recommendation_markdown(&recommendation, &runs[0]));
    }
    report.write_text("report.md", &md)?;
    if let Some(dir) = &args.copy_to {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(&report.dir)? {
            let from = entry?.path();
            let to = dir.join(from.file_name().unwrap_or_default());
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    println!("{md}");
    println!("Report: {}", report.dir.display());
    Ok(())
}

fn short_name(policy: &Policy) -> &'static str {
    match policy {
        Policy::TargetTracking { .. } => "target tracking",
        Policy::Step { .. } => "step policy",
        Policy::Fixed { .. } => "fixed",
    }
}

fn write_data(report: &Report, runs: &[Run]) -> anyhow::Result<()> {
    let mut timeline = String::from("policy,t_s,visible,in_flight,in_service,pending,desired\n");
    let mut jobs = String::from("policy,arrival_s,start_s,end_s,instance\n");
    for run in runs {
        let name = short_name(&run.policy);
        for s in &run.outcome.samples {
            timeline.push_str(&format!(
                "{name},{:.0},{},{},{},{},{}\n",
                s.t, s.visible, s.in_flight, s.in_service, s.pending, s.desired
            ));
        }
        for j in &run.outcome.jobs {
            jobs.push_str(&format!(
                "{name},{:.3},{:.3},{:.3},{}\n",
                j.arrival, j.start, j.end, j.instance
            ));
        }
    }
    report.write_text("timeline.csv", &timeline)?;
    report.write_text("jobs.csv", &jobs)?;
    let summaries: Vec<_> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "policy": r.policy, "summary": r.summary, "cost": r.cost, "actions": r.outcome.actions,
            })
        })
        .collect();
    report.write_json("summary.json", &summaries)
}

fn draw(report: &Report, runs: &[Run]) -> anyhow::Result<()> {
    let minutes = |t: f64| t / 60.0;
    let mut depth = Vec::new();
    let mut instances = Vec::new();
    let mut latency = Vec::new();
    for run in runs {
        let name = short_name(&run.policy);
        depth.push((
            name,
            run.outcome
                .samples
                .iter()
                .map(|s| (minutes(s.t), s.visible as f64))
                .collect(),
        ));
        instances.push((
            name,
            run.outcome
                .samples
                .iter()
                .map(|s| (minutes(s.t), f64::from(s.in_service)))
                .collect(),
        ));
        let windows = capacity::latency_over_time(&run.outcome, 60.0);
        latency.push((
            name,
            windows
                .iter()
                .map(|w| (minutes(w.0), w.2 / 60.0))
                .collect::<Vec<_>>(),
        ));
    }
    let label = |series: Vec<(&'static str, Vec<(f64, f64)>)>, what: &str| {
        series
            .into_iter()
            .map(|(name, data)| (format!("{what}, {name}"), data))
            .collect::<Vec<_>>()
    };
    let depth = label(depth, "waiting videos");
    plot::lines(
        &report.path("queue-depth.png"),
        "Videos waiting in the queue",
        "minutes",
        "videos",
        &as_refs(&depth),
    )?;
    let instances = label(instances, "in service");
    plot::lines(
        &report.path("instances.png"),
        "Worker instances in service",
        "minutes",
        "instances",
        &as_refs(&instances),
    )?;
    let latency = label(latency, "p95");
    plot::lines(
        &report.path("upload-to-processed.png"),
        "Upload → processed, p95 of the videos finished in each minute",
        "minutes",
        "minutes",
        &as_refs(&latency),
    )
}

fn as_refs(series: &[(String, Vec<(f64, f64)>)]) -> Vec<(&str, Vec<(f64, f64)>)> {
    series
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect()
}

fn markdown(
    report: &Report,
    args: &SimulateArgs,
    arrivals: &Arrivals,
    service_source: &str,
    instance_type: &str,
    runs: &[Run],
) -> String {
    let mut md = String::from("# Worker tier: scaling policy simulation\n\n## Setup\n\n");
    md.push_str(&report.machine_lines());
    md.push_str(&format!(
        "- Arrivals: {}\n- Service time per video: {service_source}; one job at a time per worker\n- New instance: {} s from launch to taking jobs; CloudWatch 1-minute periods on backlog per instance (waiting messages / in-service instances); followed until the group is back at its minimum, so the instances a burst adds are paid for until they are scaled in\n- Instance type for cost: {instance_type}, price only (the service time is this machine's) — {}\n\n",
        arrivals.describe(),
        args.boot_time,
        capacity::PRICE_SOURCE,
    ));
    md.push_str("## Results\n\n");
    let mut table = crate::table::Table::new(&[
        "policy",
        "videos",
        "p50 upload → processed",
        "p95",
        "max",
        "longest backlog",
        "most instances",
        "instance-hours",
        "cost",
        "per 1 000 videos",
    ]);
    for (index, run) in runs.iter().enumerate() {
        let s = &run.summary;
        // The first run is the policy `worker.scaling_policy` deploys.
        let deployed = if index == 0 { " (deployed)" } else { "" };
        let credits = if run.cost.surplus_credit_usd > 0.0 {
            format!(" (incl. ${:.4} CPU credits)", run.cost.surplus_credit_usd)
        } else {
            String::new()
        };
        table.row([
            format!("{}{deployed}", short_name(&run.policy)),
            s.videos.to_string(),
            format!("{:.1} min", s.p50_s / 60.0),
            format!("{:.1} min", s.p95_s / 60.0),
            format!("{:.1} min", s.max_s / 60.0),
            s.longest_backlog.to_string(),
            s.max_instances.to_string(),
            format!("{:.2}", s.instance_hours),
            format!("${:.4}{credits}", run.cost.total_usd),
            format!("${:.3}", run.cost.per_1000_videos_usd),
        ]);
    }
    md.push_str(&table.markdown());
    md.push_str("\nPolicies:\n");
    for run in runs {
        md.push_str(&format!(
            "- {}: {}\n",
            short_name(&run.policy),
            run.policy.describe()
        ));
        for action in &run.outcome.actions {
            md.push_str(&format!(
                "  - at {:.1} min: {} → {} ({})\n",
                action.t / 60.0,
                action.from,
                action.to,
                action.reason
            ));
        }
    }
    md.push_str("\n## Plots\n\n![queue depth](queue-depth.png)\n\n![instances](instances.png)\n\n![upload to processed](upload-to-processed.png)\n\nRaw data: `timeline.csv` (every 10 s), `jobs.csv` (every video), `summary.json`.\n");
    md
}

/// The search's answer: the candidates that meet the SLO, cheapest first (at most 8), the
/// deployed settings beside them, and the configuration lines for the best.
fn recommendation_markdown(recommendation: &capacity::Recommendation, deployed: &Run) -> String {
    let slo_min = recommendation.slo_s / 60.0;
    let mut md = format!(
        "\n## Recommendation: the cheapest settings with p95 upload → processed ≤ {slo_min:.1} min\n\n"
    );
    let setting = |policy: &Policy| match policy {
        Policy::TargetTracking { target, .. } => format!("target tracking, {target} per worker"),
        Policy::Step {
            out_above,
            in_below,
            ..
        } => format!("step, out above {out_above}, in below {in_below}"),
        Policy::Fixed { instances } => format!("fixed, {instances}"),
    };
    let mut table = crate::table::Table::new(&[
        "settings",
        "p95",
        "most instances",
        "cost",
        "per 1 000 videos",
    ]);
    table.row([
        format!("{} (deployed now)", setting(&deployed.policy)),
        format!("{:.1} min", deployed.summary.p95_s / 60.0),
        deployed.summary.max_instances.to_string(),
        format!("${:.4}", deployed.cost.total_usd),
        format!("${:.3}", deployed.cost.per_1000_videos_usd),
    ]);
    // The deployed settings are the first row already.
    let others = recommendation
        .candidates
        .iter()
        .filter(|c| !c.policy.same_settings(&deployed.policy));
    let shown: Vec<&capacity::Candidate> = match recommendation.best() {
        Some(_) => others.filter(|c| c.meets_slo).take(8).collect(),
        None => others.take(3).collect(),
    };
    for c in &shown {
        table.row([
            setting(&c.policy),
            format!("{:.1} min", c.p95_s / 60.0),
            c.max_instances.to_string(),
            format!("${:.4}", c.total_usd),
            format!("${:.3}", c.per_1000_videos_usd),
        ]);
    }
    md.push_str(&table.markdown());
    match recommendation.best() {
        None => md.push_str(&format!(
            "\nNo setting meets {slo_min:.1} min with these instances (max {} workers): the \
             closest are above. Raise worker.max_size, shorten the boot, or relax the SLO.\n",
            deployed.policy.bounds().1
        )),
        Some(best) if best.policy.same_settings(&deployed.policy) => {
            md.push_str(&format!(
                "\nRecommended: keep the deployed settings ({}, p95 {:.1} min): no other costs \
                 1 % less.\n",
                setting(&best.policy),
                best.p95_s / 60.0
            ));
        }
        Some(best) => {
            let lines = match best.policy {
                Policy::TargetTracking { target, .. } => format!(
                    "[worker]\nscaling_policy = \"target-tracking\"\nbacklog_per_instance = {target}\n"
                ),
                Policy::Step {
                    out_above,
                    in_below,
                    ..
                } => format!(
                    "[worker]\nscaling_policy = \"step\"\nstep_out_above = {out_above}\nstep_in_below = {in_below}\n"
                ),
                Policy::Fixed { .. } => String::new(),
            };
            md.push_str(&format!(
                "\nRecommended: {} (p95 {:.1} min, ${:.3} per 1 000 videos against ${:.3} as \
                 deployed). In config/aws.toml:\n\n```toml\n{lines}```\n",
                setting(&best.policy),
                best.p95_s / 60.0,
                best.per_1000_videos_usd,
                deployed.cost.per_1000_videos_usd
            ));
        }
    }
    md.push_str(&format!(
        "\n{} settings simulated on the same uploads (`recommend.json`); periods and \
         cooldowns are the seed's.\n",
        recommendation.candidates.len()
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accept_a_suffix_and_refuse_nonsense() {
        assert_eq!(parse_seconds("4.5s"), Ok(4.5));
        assert_eq!(parse_seconds("120"), Ok(120.0));
        assert_eq!(parse_seconds("2m"), Ok(120.0));
        assert!(parse_seconds("0s").is_err());
        assert!(parse_seconds("fast").unwrap_err().contains("seconds"));
    }

    #[test]
    fn the_policy_is_read_from_the_deploy_configuration() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let tier = worker_tier(root).unwrap();
        assert!(tier.min_size >= 1 && tier.max_size >= tier.min_size);
        assert!(tier.backlog_per_instance > 0);
        capacity::price(&tier.instance_type).unwrap();
    }
}
