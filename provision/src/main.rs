//! `provision`: plan, converge, check and tear down the AWS stack.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use provision::{Output, Stack, Sync};

/// Converges the ANB Rising Stars AWS stack to config/aws.toml, idempotently.
///
/// Resources are found by their stack tag on every run (no local state file), so any
/// command can be interrupted and re-run. Only `down` asks a question.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Stack configuration (default: the built-in config/aws.toml, the seed's deployment).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stack name: every resource is named and tagged from it (overrides the file).
    #[arg(long, global = true)]
    stack: Option<String>,
    /// AWS region (overrides the file).
    #[arg(long, global = true)]
    region: Option<String>,
    /// Send AWS calls to this endpoint instead (an emulator such as moto).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Show each resource's AWS id (and more detail as this grows).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what `up` would change, per resource; changes nothing.
    Plan,
    /// Create what is missing and update what differs; a second run changes nothing.
    Up,
    /// Compare the live stack with the configuration. Exit 0 in sync, 2 drift, 1 error.
    Status,
    /// Delete every resource of the stack, dependents first; re-run until clean.
    Down {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Snapshot the database under this name before deleting it (default: no snapshot).
        #[arg(long, value_name = "SNAPSHOT_ID")]
        final_snapshot: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("provision: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = provision::config::Config::load(cli.config.as_deref())?;
    if let Some(stack) = cli.stack {
        config.stack.name = stack;
    }
    if let Some(region) = cli.region {
        config.stack.region = region;
    }
    let mut stack = Stack::open(config, cli.endpoint_url.as_deref()).await?;
    stack.verbose = cli.verbose;
    Ok(match cli.command {
        Command::Plan => {
            stack.plan(cli.output).await?;
            ExitCode::SUCCESS
        }
        Command::Up => {
            stack.up(cli.output).await?;
            ExitCode::SUCCESS
        }
        Command::Status => match stack.status(cli.output).await? {
            Sync::InSync => ExitCode::SUCCESS,
            Sync::Drift => ExitCode::from(2),
        },
        Command::Down {
            yes,
            final_snapshot,
        } => {
            stack.aws.final_snapshot = final_snapshot;
            if !yes && !provision::confirm_down(&stack.config.stack.name)? {
                eprintln!("Not confirmed: nothing deleted.");
                return Ok(ExitCode::FAILURE);
            }
            let left = stack.down().await?;
            if left.is_empty() {
                println!("Stack {} is gone.", stack.config.stack.name);
                ExitCode::SUCCESS
            } else {
                println!(
                    "Left (run `provision down` again):\n  {}",
                    left.join("\n  ")
                );
                ExitCode::FAILURE
            }
        }
    })
}
