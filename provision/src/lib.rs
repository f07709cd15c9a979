//! `provision`: converges the ANB Rising Stars AWS stack to `config/aws.toml`.
//!
//! Architecture invariant: `plan`, `status` and `up` are one pipeline — desired state
//! (pure, from config) and observed state (read from AWS) go into a pure diff — stopped at
//! different points. This is the only crate that knows VPCs, subnets and security groups;
//! it deploys the services' binaries but never links them.
//!
//! Status: the network (VPC, subnets, internet gateway, public routes), the security
//! groups, the S3 bucket, the SQS queues, the CloudWatch alarms and dashboard, and the
//! load balancer with its target group and HTTP listener, RDS (subnet group and
//! instance), the launch templates, and both auto-scaling groups with their scaling
//! policies are managed. The instances' user data (the deploy path) is not yet.

pub mod aws;
mod compute;
pub mod config;
mod database;
pub mod desired;
mod load_balancing;
pub mod model;

use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use serde_json::json;

use crate::aws::Aws;
use crate::config::Config;
use crate::model::{Action, Change};

/// How a command's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// What `status` found (and its exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    InSync,
    Drift,
}

pub struct Stack {
    pub config: Config,
    pub aws: Aws,
    account_id: String,
    ami: String,
    /// Show AWS ids next to names (`-v`).
    pub verbose: bool,
}

impl Stack {
    pub async fn open(config: Config, endpoint: Option<&str>) -> anyhow::Result<Self> {
        let aws = Aws::connect(&config.stack.name, &config.stack.region, endpoint).await;
        let account_id = aws.account_id().await?;
        let ami = match config.instances.ami.as_str() {
            "" => aws.latest_debian_ami().await?,
            ami => ami.to_owned(),
        };
        Ok(Self {
            config,
            aws,
            account_id,
            ami,
            verbose: false,
        })
    }

    /// Desired versus observed, in creation order, orphans last.
    pub async fn changes(&self) -> anyhow::Result<Vec<Change>> {
        let desired = desired::desired_state(&self.config, &self.account_id, &self.ami);
        let observed = self
            .aws
            .observe(&desired::bucket_name(&self.config, &self.account_id))
            .await?;
        Ok(model::diff(&desired, &observed))
    }

    pub async fn plan(&self, output: Output) -> anyhow::Result<Vec<Change>> {
        let changes = self.changes().await?;
        print_changes(&changes, output, self.verbose);
        Ok(changes)
    }

    /// Converges; returns how many changes were made. Re-running after an interruption
    /// picks up where it stopped: everything is found again by its tags.
    pub async fn up(&self, output: Output) -> anyhow::Result<usize> {
        let started = Instant::now();
        let changes = self.changes().await?;
        let todo: Vec<&Change> = changes
            .iter()
            .filter(|c| c.is_change() && c.action != Action::Orphan)
            .collect();
        if todo.is_empty() {
            report(
                output,
                "up",
                json!({"changes": 0}),
                "No changes: the stack already matches the configuration.",
            );
            return Ok(0);
        }
        eprintln!(
            "Applying {} change(s) to stack {}:",
            todo.len(),
            self.config.stack.name
        );
        self.aws.apply(&changes).await?;
        let orphans = changes
            .iter()
            .filter(|c| c.action == Action::Orphan)
            .count();
        let note = if orphans > 0 {
            format!(" ({orphans} orphan(s) left alone: see `provision status`)")
        } else {
            String::new()
        };
        report(
            output,
            "up",
            json!({"changes": todo.len(), "seconds": started.elapsed().as_secs_f64()}),
            &format!(
                "Done: {} change(s) in {:.1} s{note}.",
                todo.len(),
                started.elapsed().as_secs_f64()
            ),
        );
        Ok(todo.len())
    }

    pub async fn status(&self, output: Output) -> anyhow::Result<Sync> {
        let changes = self.changes().await?;
        print_changes(&changes, output, self.verbose);
        Ok(if changes.iter().any(Change::is_change) {
            Sync::Drift
        } else {
            Sync::InSync
        })
    }

    /// Deletes everything carrying the stack tag, dependents first. Goes on past failures
    /// and returns what is left (empty when clean); running it again continues.
    pub async fn down(&self) -> anyhow::Result<Vec<String>> {
        let bucket = desired::bucket_name(&self.config, &self.account_id);
        let observed = self.aws.observe(&bucket).await?;
        if observed.is_empty() {
            eprintln!(
                "Nothing to delete: no resource carries the stack tag {}.",
                self.config.stack.name
            );
            return Ok(Vec::new());
        }
        if let Err(e) = self.aws.revoke_cross_references().await {
            eprintln!("  could not revoke security-group cross-references: {e:#}");
        }
        // Dependents first: queues and bucket, route tables, groups/subnets/gateway, VPC.
        let mut ordered = observed;
        ordered.sort_by_key(|o| o.resource.kind.teardown_rank());
        for o in &ordered {
            let started = Instant::now();
            eprintln!("  deleting {} {}", o.resource.kind, o.resource.name);
            if let Err(e) = self
                .aws
                .delete(o.resource.kind, &o.resource.name, &o.id)
                .await
            {
                eprintln!(
                    "  could not delete {} {}: {e:#}",
                    o.resource.kind, o.resource.name
                );
            } else if started.elapsed().as_secs() > 5 {
                eprintln!(
                    "  deleted {} {} after {:.0} s",
                    o.resource.kind,
                    o.resource.name,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let left = self.aws.observe(&bucket).await?;
        Ok(left
            .iter()
            .map(|o| format!("{} {} ({})", o.resource.kind, o.resource.name, o.id))
            .collect())
    }
}

fn print_changes(changes: &[Change], output: Output, verbose: bool) {
    match output {
        Output::Text => print!("{}", model::render_with(changes, verbose)),
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
                    let fields: Vec<_> = fields.iter().map(|f| json!({"field": f.field, "old": f.old, "new": f.new})).collect();
                    json!({"kind": c.kind.to_string(), "name": c.name, "id": c.id, "action": action, "fields": fields})
                })
                .collect();
            let in_sync = !changes.iter().any(Change::is_change);
            println!("{}", json!({"in_sync": in_sync, "resources": items}));
        }
    }
}

fn report(output: Output, command: &str, data: serde_json::Value, text: &str) {
    match output {
        Output::Text => println!("{text}"),
        Output::Json => println!("{}", json!({"command": command, "result": data})),
    }
}

/// Asks on the terminal to type the stack name; refuses when there is no terminal.
pub fn confirm_down(stack: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("`down` deletes the whole stack: pass --yes to run it without a terminal");
    }
    eprint!("This deletes every resource of stack {stack}, data included. Type the stack name to go on: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == stack)
}
