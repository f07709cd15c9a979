//! How plans and reports are shown: one line per resource in text, or JSON for scripts.

use serde_json::json;

use crate::model::{Action, Change, FieldChange};

/// How a command's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// One line per resource: `create`, `update (field: old → new)`, `replace (…)`, `ok`,
/// `orphan`. The replace of a resource that holds data ends with "DATA LOSS".
pub fn render(changes: &[Change]) -> String {
    render_with(changes, false, false)
}

/// [`render`], with each resource's AWS id after its name when `ids` is set (`-v`), and
/// DATA LOSS in red when `colour` is.
pub fn render_with(changes: &[Change], ids: bool, colour: bool) -> String {
    let mut out = String::new();
    for change in changes {
        let what = match &change.action {
            Action::Create => "create".to_owned(),
            Action::Ok => "ok".to_owned(),
            Action::Orphan if change.kind.removed_by_up() => {
                "orphan (no longer configured: `up` deletes it)".to_owned()
            }
            Action::Orphan => "orphan (tagged with the stack, not desired)".to_owned(),
            Action::Update(fields) => format!("update ({})", describe(fields)),
            Action::Replace(fields) if change.kind.holds_data() => {
                let warning = if colour {
                    "\x1b[1;31mDATA LOSS\x1b[0m"
                } else {
                    "DATA LOSS"
                };
                format!(
                    "replace ({}; cannot change in place) {warning}: `up` refuses this",
                    describe(fields)
                )
            }
            Action::Replace(fields) => {
                format!("replace ({}; cannot change in place)", describe(fields))
            }
        };
        let id = match (&change.id, ids) {
            (Some(id), true) => format!(" [{id}]"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<16} {:<36} {what}{id}\n",
            change.kind.to_string(),
            change.name
        ));
    }
    let pending = changes.iter().filter(|c| c.is_change()).count();
    out.push_str(&match pending {
        0 => "No changes: the stack matches the configuration.\n".to_owned(),
        n => format!("{n} change(s).\n"),
    });
    out
}

fn describe(fields: &[FieldChange]) -> String {
    fields
        .iter()
        .map(|f| {
            format!(
                "{}: {} → {}",
                f.field,
                f.old.as_deref().unwrap_or("(none)"),
                f.new.as_deref().unwrap_or("(none)")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn print_changes(
    changes: &[Change],
    output: Output,
    verbose: bool,
    cost: Option<&Cost>,
) {
    match output {
        Output::Text => {
            use std::io::IsTerminal;
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            print!("{}", render_with(changes, verbose, colour));
            if let Some(cost) = cost {
                print!("{}", render_cost(cost));
            }
        }
        Output::Json => {
            let items: Vec<_> = changes
                .iter()
                .map(|c| {
                    let (action, fields) = match &c.action {
                        Action::Create => ("create", vec![]),
                        Action::Ok => ("ok", vec![]),
                        Action::Orphan => ("orphan", vec![]),
                        Action::Update(f) => ("update", f.clone()),
                        Action::Replace(f) => ("replace", f.clone()),
                    };
                    let data_loss = matches!(c.action, Action::Replace(_)) && c.kind.holds_data();
                    let fields: Vec<_> = fields.iter().map(|f| json!({"field": f.field, "old": f.old, "new": f.new})).collect();
                    json!({"kind": c.kind.to_string(), "name": c.name, "id": c.id, "action": action, "fields": fields, "data_loss": data_loss})
                })
                .collect();
            let in_sync = !changes.iter().any(Change::is_change);
            let mut answer = json!({"in_sync": in_sync, "resources": items});
            if let Some(cost) = cost {
                answer["cost"] = cost.to_json();
            }
            println!("{answer}");
        }
    }
}

/// The stack's cost an hour, as configured and as deployed now (both at the groups'
/// minimum sizes).
#[derive(Debug, Clone)]
pub struct Cost {
    pub configured: Vec<capacity::CostLine>,
    /// None while the stack is not all deployed.
    pub deployed: Option<Vec<capacity::CostLine>>,
}

fn hourly(lines: &[capacity::CostLine]) -> f64 {
    lines.iter().map(|l| l.usd_per_hour).sum()
}

impl Cost {
    /// What `up` would change the hourly cost by (the whole cost when nothing is there).
    pub fn delta_per_hour(&self) -> f64 {
        hourly(&self.configured) - self.deployed.as_deref().map_or(0.0, hourly)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let configured = hourly(&self.configured);
        json!({
            "prices": capacity::STACK_PRICES_DATE,
            "usd_per_hour": configured,
            "usd_per_month": configured * capacity::HOURS_PER_MONTH,
            "lines": self.configured,
            "deployed_usd_per_hour": self.deployed.as_deref().map(hourly),
            "delta_usd_per_hour": self.delta_per_hour(),
            "delta_usd_per_month": self.delta_per_hour() * capacity::HOURS_PER_MONTH,
        })
    }
}

/// The stack's cost as configured, at the groups' minimum sizes: a line per billable
/// kind and the total an hour and a month; then how much `up` changes it by.
pub fn render_cost(cost: &Cost) -> String {
    let configured = hourly(&cost.configured);
    let mut out = format!(
        "\nCost as configured, at the minimum size ({}): ${configured:.2}/h, about ${:.0} a \
         month\n",
        capacity::STACK_PRICES_DATE,
        configured * capacity::HOURS_PER_MONTH
    );
    for line in &cost.configured {
        out.push_str(&format!("  ${:.4}/h  {}\n", line.usd_per_hour, line.what));
    }
    let delta = cost.delta_per_hour();
    let (per_hour, per_month) = (delta, delta * capacity::HOURS_PER_MONTH);
    out.push_str(&match &cost.deployed {
        None => format!(
            "After `up`: +${per_hour:.2}/h (+${per_month:.0} a month) over what runs now \
             (the stack is not all there yet)\n"
        ),
        Some(_) if per_hour.abs() < 0.000_05 => {
            "After `up`: the same as what runs now\n".to_owned()
        }
        Some(deployed) => format!(
            "After `up`: {per_hour:+.4}/h ({per_month:+.2} a month) against ${:.2}/h as \
             deployed now\n",
            hourly(deployed)
        ),
    });
    out
}

pub(crate) fn report(output: Output, command: &str, data: serde_json::Value, text: &str) {
    match output {
        Output::Text => println!("{text}"),
        Output::Json => println!("{}", json!({"command": command, "result": data})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{diff, Kind, Observed, Resource};

    fn vpc(cidr: &str) -> Resource {
        Resource::new(Kind::Vpc, "anb-vpc", &[("cidr", cidr.into())])
    }

    #[test]
    fn plan_lists_in_creation_order_and_counts_changes() {
        let subnet = Resource::new(
            Kind::Subnet,
            "anb-public-a",
            &[("cidr", "10.0.0.0/24".into())],
        );
        let changes = diff(&[subnet, vpc("10.0.0.0/16")], &[]);
        assert_eq!(changes[0].kind, Kind::Vpc);
        let text = render(&changes);
        assert!(text.ends_with("2 change(s).\n"), "{text}");
        assert!(render(&[]).contains("No changes"));
    }

    #[test]
    fn replacements_and_orphans_read_as_such() {
        let seen = Observed {
            resource: vpc("10.9.0.0/16"),
            id: "vpc-1".into(),
        };
        let text = render(&diff(&[vpc("10.0.0.0/16")], std::slice::from_ref(&seen)));
        assert!(
            text.contains("replace (cidr: 10.9.0.0/16 → 10.0.0.0/16; cannot change in place)"),
            "{text}"
        );
        assert!(render(&diff(&[], &[seen])).contains("orphan"));
    }

    #[test]
    fn replacing_what_holds_data_says_data_loss() {
        let db = |name: &str| {
            Resource::new(
                Kind::Database,
                "anb-postgres",
                &[("database_name", name.into())],
            )
        };
        let seen = Observed {
            resource: db("anb"),
            id: "anb-postgres".into(),
        };
        let changes = diff(&[db("other")], &[seen]);
        let text = render(&changes);
        assert!(
            text.contains("replace (database_name: anb → other; cannot change in place) DATA LOSS"),
            "{text}"
        );
        let red = render_with(&changes, false, true);
        assert!(red.contains("\x1b[1;31mDATA LOSS\x1b[0m"), "{red}");
        assert!(!render(&diff(&[vpc("10.0.0.0/16")], &[])).contains("DATA LOSS"));
    }
}
