//! `cargo xtask capacity …`: the capacity plan as commands. Each writes
//! `target/capacity/<UTC time>-<scenario>/` with `report.md`, the raw data and PNG plots.

mod cloudwatch;
pub mod plot;
mod simulate;
mod web;
mod worker;

use std::path::PathBuf;

use anyhow::Context;

use clap::{Args, Subcommand};

/// What a web or worker run measures: a platform it starts on this machine, or a deployed
/// stack through its API (`--target URL`), whose CloudWatch figures the report adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local,
    /// The stack's base URL, without a trailing slash.
    Deployed(String),
}

impl Target {
    /// From `--target`: none is this machine; a URL must be http(s).
    pub fn of(flag: Option<&str>) -> anyhow::Result<Self> {
        let Some(url) = flag else {
            return Ok(Self::Local);
        };
        let url = url.trim().trim_end_matches('/');
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        anyhow::ensure!(
            host.is_some_and(|h| !h.is_empty()),
            "--target {url:?}: expected the stack's URL, like http://anb-alb-123.us-east-1.elb.amazonaws.com \
             (`cargo xtask provision status` prints it)"
        );
        Ok(Self::Deployed(url.to_owned()))
    }
}

#[derive(Debug, Args)]
pub struct CapacityArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// How many concurrent users the web tier serves within its SLO (p95 ≤ 1 s, errors
    /// ≤ 5 %): smoke, ramp-and-hold steps until the SLO breaks, then sustained at 80 % of
    /// the best step. Locally: release API, private PostgreSQL, no worker. With --target,
    /// a deployed stack, and its CloudWatch figures of the run.
    Web(web::WebArgs),
    /// How many videos a minute the worker tier processes, with 1, 2 and 4 jobs at once
    /// per worker: a backlog that saturates it, then a steady arrival rate below that.
    /// With --target, a deployed tier as it is, through its API (and CloudWatch).
    Worker(worker::WorkerArgs),
    /// What the scaling policy deployed by `provision` does under an arrival pattern: a
    /// discrete-event simulation of the worker tier, with queue depth, instances, upload →
    /// processed times and cost.
    Simulate(simulate::SimulateArgs),
}

pub fn run(args: CapacityArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Web(args) => web::run(args),
        Scenario::Worker(args) => worker::run(args),
        Scenario::Simulate(args) => simulate::run(args),
    }
}

/// One run's folder under `target/capacity`.
pub struct Report {
    pub dir: PathBuf,
}

impl Report {
    pub fn create(scenario: &str) -> anyhow::Result<Self> {
        let dir = crate::paths::scratch_dir()
            .join("capacity")
            .join(format!("{}-{scenario}", utc_stamp()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write_text(&self, name: &str, text: &str) -> anyhow::Result<()> {
        std::fs::write(self.path(name), text)?;
        Ok(())
    }

    pub fn append_text(&self, name: &str, text: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path(name))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }

    pub fn write_json(&self, name: &str, value: &impl serde::Serialize) -> anyhow::Result<()> {
        self.write_text(name, &serde_json::to_string_pretty(value)?)
    }

    /// The "machine" lines of a report's setup section.
    pub fn machine_lines(&self) -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let memory_gb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map_or("?".into(), |kb| format!("{:.0}", kb / 1024.0 / 1024.0));
        format!(
            "- Machine: {} cores, {cpu}, {memory_gb} GB RAM\n- Run: {} UTC\n",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            utc_stamp()
        )
    }
}

/// `yyyymmdd-hhmmss` in UTC: report folders sort by time.
pub fn utc_stamp() -> String {
    chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string()
}

/// The newest report of `scenario`, if any.
pub fn latest_report(scenario: &str) -> Option<PathBuf> {
    let root = crate::paths::scratch_dir().join("capacity");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&format!("-{scenario}")))
                && p.join("report.md").is_file()
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Jiffies of the whole machine from /proc/stat: (busy, total).
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn busy_percent_since(&self, before: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1);
        self.busy.saturating_sub(before.busy) as f64 / total as f64 * 100.0
    }
}

pub fn machine_cpu() -> anyhow::Result<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        // user … steal; guest time is already counted in user.
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok(MachineCpu {
        busy: total - idle,
        total,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamp_is_sortable_and_well_formed() {
        let stamp = super::utc_stamp();
        assert_eq!(stamp.len(), 15, "{stamp}");
        assert!(stamp.starts_with("20"), "{stamp}");
        assert_eq!(&stamp[8..9], "-");
    }

    #[test]
    fn a_target_is_this_machine_or_a_stacks_url() {
        use super::Target;
        assert_eq!(Target::of(None).unwrap(), Target::Local);
        assert_eq!(
            Target::of(Some("https://anb.example.org/")).unwrap(),
            Target::Deployed("https://anb.example.org".into())
        );
        for bad in ["anb.example.org", "http://", "ftp://x"] {
            let error = Target::of(Some(bad)).unwrap_err().to_string();
            assert!(error.contains("expected the stack's URL"), "{bad}: {error}");
        }
    }
}
