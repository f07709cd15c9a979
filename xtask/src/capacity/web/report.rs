//! The web run's report: setup, the phases' table, the capacity found, plots and raw data.

use super::{Phase, WebArgs, MAX_ERROR_RATE, MAX_P95};
use crate::capacity::{plot, Report, Target};

pub(super) fn write_report(
    report: &mut Report,
    args: &WebArgs,
    target: &Target,
    upload_mb: f64,
    ceiling: &Phase,
    phases: &[Phase],
    best: Option<&Phase>,
) -> anyhow::Result<()> {
    let deployed = matches!(target, Target::Deployed(_));
    // The local platform's port was the run's own: the report says what it was instead.
    let measured = match target {
        Target::Deployed(base) => base.clone(),
        Target::Local => "local platform (API + private PostgreSQL, no worker)".to_owned(),
    };
    report.write_json(
        "phases.json",
        &serde_json::json!({ "ceiling": ceiling, "phases": phases }),
    )?;
    let mut csv = String::from("phase,users,seconds,requests,rps,p50_ms,p95_ms,p99_ms,error_rate,api_cpu_percent,api_rss_mb\n");
    for p in std::iter::once(ceiling).chain(phases) {
        csv.push_str(&format!(
            "\"{}\",{},{:.0},{},{:.1},{:.0},{:.0},{:.0},{:.4},{},{}\n",
            p.name,
            p.users,
            p.seconds,
            p.requests,
            p.rps,
            p.p50_ms,
            p.p95_ms,
            p.p99_ms,
            p.error_rate,
            p.api_cpu_percent
                .map_or(String::new(), |c| format!("{c:.0}")),
            p.api_rss_mb.map_or(String::new(), |m| format!("{m:.0}")),
        ));
    }
    report.write_text("phases.csv", &csv)?;
    let steps: Vec<&Phase> = phases
        .iter()
        .filter(|p| p.name.starts_with("step"))
        .collect();
    let series = |f: fn(&Phase) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|p| (p.users as f64, f(p))).collect()
    };
    plot::lines(
        &report.path("throughput-and-p95.png"),
        "Throughput and p95 by users",
        "users",
        "requests/s  |  p95 ms",
        &[
            ("requests/s", series(|p| p.rps)),
            ("p95 (ms)", series(|p| p.p95_ms)),
        ],
    )?;
    plot::lines(
        &report.path("errors.png"),
        "Error rate by users",
        "users",
        "errors (%)",
        &[("errors %", series(|p| p.error_rate * 100.0))],
    )?;
    if steps.iter().all(|p| p.api_cpu_percent.is_some()) {
        plot::lines(
            &report.path("cpu.png"),
            "API CPU by users (100 = one core)",
            "users",
            "CPU %",
            &[("API CPU %", series(|p| p.api_cpu_percent.unwrap_or(0.0)))],
        )?;
    }

    let ratio = best.map(|b| b.rps / ceiling.rps.max(f64::MIN_POSITIVE));
    let mut md = String::new();
    md.push_str("# Web tier capacity\n\n## Setup\n\n");
    md.push_str(&report.machine_lines());
    md.push_str(&format!(
        "- Target: {}\n- Build: {}\n- Upload size: {upload_mb:.1} MB real MP4 (lavfi 720p); mix {}\n- Users: think 0.5–1.5 s between actions; log in once at start (not measured)\n- SLO: p95 < {} ms (goose records times of a second or more to the nearest second) and errors ≤ {} %, counting users who could not log in\n- Load generator: goose {} with coordinated-omission mitigation (average cadence){}\n\n",
        measured,
        if deployed { "as deployed" } else if args.quick { "debug (quick mode)" } else { "release" },
        args.mix,
        MAX_P95.as_millis(),
        MAX_ERROR_RATE * 100.0,
        GOOSE_VERSION,
        if args.quick { "\n- **Quick mode**: phases of seconds; checks the scenario, does not measure capacity" } else { "" },
    ));
    md.push_str("## Phases\n\n");
    let mut table = crate::table::Table::new(&[
        "phase",
        "users",
        "requests/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "API CPU",
        "machine CPU",
        "API RSS",
    ]);
    for p in std::iter::once(ceiling).chain(phases) {
        let mut kinds: Vec<String> = p
            .failures
            .iter()
            .map(|(s, c)| format!("{c}× {s}"))
            .collect();
        if p.failed_logins > 0 {
            kinds.push(format!("{} users could not log in", p.failed_logins));
        }
        let kinds = if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        };
        let percent = |c: Option<f64>| c.map_or("–".into(), |c| format!("{c:.0} %"));
        table.row([
            p.name.clone(),
            p.users.to_string(),
            format!("{:.1}", p.rps),
            format!("{:.0}", p.p50_ms),
            format!("{:.0}", p.p95_ms),
            format!("{:.0}", p.p99_ms),
            format!("{:.2} %{kinds}", p.error_rate * 100.0),
            percent(p.api_cpu_percent),
            percent(p.machine_cpu_percent),
            p.api_rss_mb.map_or("–".into(), |m| format!("{m:.0} MB")),
        ]);
    }
    md.push_str(&table.markdown());
    md.push_str("\n## Capacity found\n\n");
    match best {
        Some(best) => {
            let broke = phases
                .iter()
                .find(|p| p.name.starts_with("step") && !p.within_slo());
            md.push_str(&format!(
                "**{} concurrent users** within the SLO ({:.1} requests/s, p95 {:.0} ms, errors {:.2} %).\n",
                best.users, best.rps, best.p95_ms, best.error_rate * 100.0
            ));
            match broke {
                Some(b) => md.push_str(&format!(
                    "At {} users the SLO broke: p95 {:.0} ms, errors {:.2} %{}{}.\n",
                    b.users,
                    b.p95_ms,
                    b.error_rate * 100.0,
                    b.api_cpu_percent.map_or(String::new(), |c| format!(", API CPU {c:.0} %")),
                    b.machine_cpu_percent.map_or(String::new(), |c| format!(
                        ", machine CPU {c:.0} %{}",
                        if c >= 90.0 { " — the cores were saturated (API, PostgreSQL, ffprobe and the generator share them)" } else { "" }
                    )),
                )),
                None => md.push_str("The SLO still held at the last step (--max-users): the capacity is at least this.\n"),
            }
        }
        None => md.push_str("No step met the SLO.\n"),
    }
    md.push_str(&format!(
        "\nSlowest action at the best step: {}.\n",
        best.and_then(|b| b
            .by_action
            .iter()
            .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map(|(name, (n, p95))| format!("{name} (p95 {p95:.0} ms over {n} requests)")))
            .unwrap_or_else(|| "–".into())
    ));
    md.push_str(&format!(
        "\nGenerator ceiling: {:.0} requests/s on the no-op route with {} users and no pauses (goose, the API's routing and loopback together); the best step used {} of it{}.\n",
        ceiling.rps,
        ceiling.users,
        ratio.map_or("–".into(), |r| format!("{:.1} %", r * 100.0)),
        match ratio {
            Some(r) if r > 0.8 => " — close to the generator's own limit: this measures the generator as much as the API",
            _ => "",
        }
    ));
    if !deployed {
        md.push_str("\nOn one machine the generator, the API and PostgreSQL share the cores: the figures are a lower bound for a web instance with the same cores.\n");
    }
    md.push_str(
        "\n## Plots\n\n![throughput and p95](throughput-and-p95.png)\n\n![errors](errors.png)\n",
    );
    if steps.iter().all(|p| p.api_cpu_percent.is_some()) {
        md.push_str("\n![API CPU](cpu.png)\n");
    }
    md.push_str("\nRaw data: `phases.csv`, `phases.json`.\n");
    report.write_text("report.md", &md)?;
    println!("{md}");
    Ok(())
}

/// The load generator's version, for the report; a test holds it to the workspace's pin.
const GOOSE_VERSION: &str = "0.18.1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_goose_version_the_workspace_pins() {
        let manifest = include_str!("../../../../Cargo.toml");
        assert!(
            manifest.contains(&format!("goose = \"{GOOSE_VERSION}\"")),
            "Cargo.toml pins another goose than GOOSE_VERSION ({GOOSE_VERSION})"
        );
    }
}
