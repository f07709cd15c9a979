//! A deployed stack's CloudWatch figures over a capacity run (`--target`): read by
//! `provision metrics --output json` (xtask links no AWS SDK), written to the report as
//! `cloudwatch.json`/`cloudwatch.csv`, a table and plots.

use std::process::Stdio;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::{plot, Report};

/// What `provision metrics --output json` prints, with the types it prints it with.
pub use stack_config::metrics::{Metrics, Summary};

/// Which stack a `--target` run reads CloudWatch of.
#[derive(Debug, Clone, clap::Args)]
pub struct CloudWatchArgs {
    /// With --target: the stack whose CloudWatch figures (load balancer, instances, CPU,
    /// queue) the report adds, read with the AWS credentials of the environment (default:
    /// the stack named in config/aws.toml).
    #[arg(long)]
    pub stack: Option<String>,
    /// With --target: the stack's AWS region (default: the one in config/aws.toml).
    #[arg(long)]
    pub region: Option<String>,
    /// With --target: do not read CloudWatch (no AWS credentials here).
    #[arg(long)]
    pub no_cloudwatch: bool,
}

impl CloudWatchArgs {
    /// `--stack` and `--region` for provision, as given.
    fn provision_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(stack) = &self.stack {
            flags.extend(["--stack".to_owned(), stack.clone()]);
        }
        if let Some(region) = &self.region {
            flags.extend(["--region".to_owned(), region.clone()]);
        }
        flags
    }
}

/// The figures of `since..until`, by `provision metrics`.
fn read(
    args: &CloudWatchArgs,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> anyhow::Result<Metrics> {
    let provision = crate::deploy::provision_binary()?;
    let mut command = crate::system::command(provision);
    command.args([
        "metrics",
        "--output",
        "json",
        "--since",
        &rfc3339(since),
        "--until",
        &rfc3339(until),
    ]);
    command.args(args.provision_flags());
    let out = command
        .stdin(Stdio::null())
        .output()
        .context("cannot start provision")?;
    if !out.status.success() {
        anyhow::bail!(
            "provision metrics failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("provision metrics printed no figures")
}

/// The CloudWatch section of a `--target` run of `scenario` that began at `run_started`
/// (from a minute before, so the first minute's points are whole, until now); None with
/// `--no-cloudwatch`.
pub fn section_of_run(
    report: &Report,
    args: &CloudWatchArgs,
    scenario: &str,
    run_started: DateTime<Utc>,
) -> anyhow::Result<Option<String>> {
    if args.no_cloudwatch {
        return Ok(None);
    }
    let since = run_started - chrono::Duration::minutes(1);
    let until = Utc::now();
    eprintln!("capacity {scenario}: reading the stack's CloudWatch figures of the run");
    let metrics = read(args, since, until);
    // The run's own figures are measured already: a failure here must not lose them.
    Ok(Some(
        section(report, args, metrics, since, until, run_started).unwrap_or_else(|e| {
            format!("\n## CloudWatch\n\nRead, but not written into the report: {e:#}.\n")
        }),
    ))
}

/// The report's CloudWatch section (and its files): the figures when `metrics` could be
/// read, else why not and the command that reads them later.
fn section(
    report: &Report,
    args: &CloudWatchArgs,
    metrics: anyhow::Result<Metrics>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    run_started: DateTime<Utc>,
) -> anyhow::Result<String> {
    let again = format!(
        "`cargo xtask provision metrics{} --since {} --until {}`",
        args.provision_flags()
            .iter()
            .map(|flag| format!(" {flag}"))
            .collect::<String>(),
        rfc3339(since),
        rfc3339(until)
    );
    let metrics = match metrics {
        Ok(metrics) => metrics,
        Err(e) => {
            return Ok(format!(
                "\n## CloudWatch\n\nNot read: {e:#}.\nWith AWS credentials: {again}.\n"
            ));
        }
    };
    report.write_json("cloudwatch.json", &metrics)?;
    let mut csv = String::from("time,metric,value\n");
    for s in &metrics.series {
        for (time, value) in &s.points {
            csv.push_str(&format!("{},{},{value}\n", time.to_rfc3339(), s.id));
        }
    }
    report.write_text("cloudwatch.csv", &csv)?;

    let mut md = format!(
        "\n## CloudWatch\n\nThe stack's own figures from {} to {} UTC, a point a minute (EC2 CPU every 5 minutes); raw: `cloudwatch.json`, `cloudwatch.csv`.\n\n",
        since.format("%H:%M:%S"),
        until.format("%H:%M:%S"),
    );
    let mut table = crate::table::Table::new(&["metric", "points", "min", "mean", "max", "unit"]);
    for s in &metrics.series {
        let [min, mean, max] = match s.summary {
            Some(Summary { min, mean, max }) => [min, mean, max].map(|v| format!("{v:.3}")),
            None => ["–", "–", "–"].map(str::to_owned),
        };
        table.row([
            s.label.clone(),
            s.points.len().to_string(),
            min,
            mean,
            max,
            s.unit.clone(),
        ]);
    }
    md.push_str(&table.markdown());
    for note in &metrics.notes {
        md.push_str(&format!("\nNote: {note}.\n"));
    }
    md.push_str(&format!(
        "\nCloudWatch publishes a minute's figures one to three minutes after it ends; the last minutes may be missing. Read them again: {again}.\n"
    ));

    let minutes = |id: &str| -> Vec<(f64, f64)> {
        metrics
            .series
            .iter()
            .filter(|s| s.id == id)
            .flat_map(|s| s.points.iter())
            .map(|(time, value)| ((*time - run_started).num_seconds() as f64 / 60.0, *value))
            .collect()
    };
    // (file, title, y axis, [(series id, legend)]).
    type Plot = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    const PLOTS: [Plot; 3] = [
        (
            "cloudwatch-requests.png",
            "Load balancer: requests and 5xx per minute",
            "per minute",
            &[
                ("requests", "requests"),
                ("target_5xx", "5xx (API)"),
                ("elb_5xx", "5xx (load balancer)"),
            ],
        ),
        (
            "cloudwatch-instances.png",
            "Instances in service and videos waiting",
            "count",
            &[
                ("web_in_service", "web instances"),
                ("worker_in_service", "worker instances"),
                ("queue_waiting", "videos waiting"),
            ],
        ),
        (
            "cloudwatch-cpu.png",
            "CPU by tier (mean of instances)",
            "CPU %",
            &[("web_cpu", "web"), ("worker_cpu", "worker")],
        ),
    ];
    for (file, title, y_label, wanted) in PLOTS {
        let series: Vec<(&str, Vec<(f64, f64)>)> = wanted
            .iter()
            .map(|(id, name)| (*name, minutes(id)))
            .filter(|(_, points)| !points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        plot::lines(
            &report.path(file),
            title,
            "minutes since the run began",
            y_label,
            &series,
        )?;
        md.push_str(&format!("\n![{title}]({file})\n"));
    }
    Ok(md)
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
