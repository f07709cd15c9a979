//! `provision`: plan, converge, check and tear down the AWS stack.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use provision::{Output, Safeguards, Stack, StackOptions, Sync};

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
    /// Take over the stack's lock from a run of `up` or `down` that died (killed, its
    /// machine gone). `up` and `down` hold it while they run; another stops at once with
    /// who holds it and since when.
    #[arg(long, global = true)]
    force_unlock: bool,
    /// Release of the services the instances run (published with `publish`). Default: the
    /// release the launch templates already name. A new one rolls the instances.
    #[arg(long, global = true, env = "ANB_RELEASE", value_parser = parse_release)]
    release: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what `up` would change, per resource; changes nothing.
    Plan,
    /// Create what is missing and update what differs; a second run changes nothing.
    /// Instances on an older launch template are replaced, new ones first. Never replaces
    /// the database or the bucket unasked: it stops first and says why.
    Up {
        /// Then follow each tier's instance refresh to its end, web first, then worker
        /// (percentage shown; exit 1 with the release it went back to when AWS rolled one
        /// back), and wait (up to 30 min) until the load balancer has healthy web
        /// instances. Without it, `up` starts the first tier's refresh and returns; the
        /// next `up` starts the next tier.
        #[arg(long)]
        wait: bool,
        /// Allow replacing the database when a setting that cannot change in place
        /// differs (name, master user, engine, encryption): a snapshot is taken and waited
        /// for first, then the database is deleted and created empty.
        #[arg(long)]
        replace_database: bool,
        /// Create the (missing) database from this RDS snapshot, e.g. the final snapshot
        /// `down` took, instead of empty.
        #[arg(long, value_name = "SNAPSHOT_ID")]
        restore_from: Option<String>,
    },
    /// Upload a release's binaries (with SHA-256 checksums) to artifacts/<release>/ in the
    /// stack's bucket, creating the bucket if needed. Needs --release.
    Publish {
        /// The binaries, as NAME=FILE: api=target/release/api worker=target/release/worker.
        #[arg(required = true, value_parser = parse_artifact)]
        artifacts: Vec<(String, PathBuf)>,
    },
    /// Compare the live stack with the configuration. Exit 0 in sync, 2 drift, 1 error.
    /// A paused stack is in sync (it says it is paused).
    Status {
        /// Also the stack's health: each tier's instances (zone, lifecycle state, health,
        /// release, age) and instance refresh, the load balancer's view of each target, the
        /// queue and dead letters, each alarm, who the alerts reach (and who has not
        /// confirmed), the database, a pause, the drift and the cost. Exit 3 when
        /// unhealthy (an alarm in ALARM, an unhealthy instance or target, no healthy web
        /// instance, the database not available, dead letters); else as `status`.
        #[arg(long)]
        health: bool,
        /// With --health: read again and redraw every SECONDS (Ctrl-C stops); on a
        /// terminal the screen is redrawn in place, else one report after another.
        #[arg(long, value_name = "SECONDS", requires = "health", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Bring both groups to 0 instances (their sizes kept in tags on the groups) and stop
    /// the database, for a lab's budget: what still costs is printed. AWS starts a stopped
    /// database again after 7 days (`status --health` shows the date). `up` refuses on a
    /// paused stack; `resume` brings it back.
    Pause,
    /// Start the database, put both groups back to their sizes, and wait (up to 30 min)
    /// until the load balancer has healthy web instances.
    Resume,
    /// Read the stack's CloudWatch Logs (/anb/<stack>: each instance's service journal and
    /// boot log), oldest first. `--video ID` traces one video from the API's upload line
    /// to the worker's processed line.
    Logs {
        /// Only this tier's instances (their service and boot logs).
        #[arg(long, value_parser = ["web", "worker"])]
        tier: Option<String>,
        /// Start: an RFC 3339 time or a duration ago (30m, 2h).
        #[arg(long, value_parser = parse_time, default_value = "1h")]
        since: chrono::DateTime<chrono::Utc>,
        /// Keep polling (every 2 s) and print new lines as they come; Ctrl-C stops.
        #[arg(short, long)]
        follow: bool,
        /// Only the lines that name this video id.
        #[arg(long, value_name = "ID")]
        video: Option<String>,
        /// Only this instance's logs (its id, i-…).
        #[arg(long, value_name = "ID")]
        instance: Option<String>,
    },
    /// List the releases published in the stack's bucket, oldest first: name, upload
    /// time, each binary's SHA-256, and which tier's group launches it. To roll back by
    /// hand, `up --wait --release NAME` with an older one.
    Releases,
    /// Delete every resource tagged with the stack, dependents first; re-run until clean.
    /// The bucket stays, with the videos and releases in it (the next `up` uses it again);
    /// the database leaves a final snapshot (`<stack>-final-<time>`) and its automated
    /// backups; the token secret stays restorable for 7 days.
    Down {
        #[command(flatten)]
        flags: stack_config::cli::DownFlags,
    },
    /// Print the stack's CloudWatch figures over a time range, a point a minute: load
    /// balancer requests, response time (mean, p95) and 5xx, instances in service and CPU
    /// of each tier, videos waiting and in flight. `--output json` for programs (the
    /// capacity commands read it).
    Metrics {
        /// Start: an RFC 3339 time (2026-12-01T10:00:00Z) or a duration ago (30m, 2h).
        #[arg(long, value_parser = parse_time, default_value = "1h")]
        since: chrono::DateTime<chrono::Utc>,
        /// End: an RFC 3339 time or a duration ago (default: now).
        #[arg(long, value_parser = parse_time, default_value = "0s")]
        until: chrono::DateTime<chrono::Utc>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            match provision::aws::stale_credentials(&e) {
                Some(line) => eprintln!("provision: {line}"),
                None => eprintln!("provision: {e:#}"),
            }
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
    if let Command::Logs {
        tier,
        since,
        follow,
        video,
        instance,
    } = &cli.command
    {
        // Reads CloudWatch Logs only.
        let aws = provision::aws::Aws::connect(
            &config.stack.name,
            &config.stack.region,
            cli.endpoint_url.as_deref(),
        )
        .await?;
        let query = provision::logs::LogQuery {
            tier: tier.clone(),
            instance: instance.clone(),
            video: video.clone(),
            since: Some(*since),
        };
        let output = cli.output;
        aws.print_logs(
            &query,
            *follow,
            std::time::Duration::from_secs(2),
            |line| match output {
                Output::Text => println!("{}", line.render()),
                Output::Json => println!("{}", serde_json::to_string(line).unwrap_or_default()),
            },
        )
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Metrics { since, until } = cli.command {
        // Reads CloudWatch only: no image lookup or other set-up of a stack to change.
        let aws = provision::aws::Aws::connect(
            &config.stack.name,
            &config.stack.region,
            cli.endpoint_url.as_deref(),
        )
        .await?;
        let metrics = aws.metrics(since, until).await?;
        match cli.output {
            Output::Text => print!("{}", metrics.render()),
            Output::Json => println!("{}", serde_json::to_string_pretty(&metrics)?),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let safeguards = match &cli.command {
        Command::Up {
            replace_database,
            restore_from,
            ..
        } => Safeguards {
            replace_database: *replace_database,
            restore_from: restore_from.clone(),
            ..Safeguards::default()
        },
        Command::Down { flags } => Safeguards {
            skip_final_snapshot: flags.skip_final_snapshot,
            purge: flags.purge,
            delete_videos: flags.delete_videos,
            ..Safeguards::default()
        },
        _ => Safeguards::default(),
    };
    let options = StackOptions {
        endpoint: cli.endpoint_url.clone(),
        verbose: cli.verbose,
        release: cli.release.clone(),
        safeguards,
    };
    let stack = Stack::open(config, options).await?;
    // One operator at a time for what changes the stack.
    let command_name = match cli.command {
        Command::Up { .. } => Some("up"),
        Command::Down { .. } => Some("down"),
        Command::Pause => Some("pause"),
        Command::Resume => Some("resume"),
        _ => None,
    };
    let lock = match command_name {
        Some(name) => {
            stack
                .aws
                .lock(&stack.bucket(), name, cli.force_unlock)
                .await?
        }
        None => None,
    };
    let result = async {
        Ok(match cli.command {
            Command::Plan => {
                stack.plan(cli.output).await?;
                ExitCode::SUCCESS
            }
            Command::Up { wait, .. } => {
                // Refused before anything is attempted: nothing to record.
                if let Some(paused) = stack.aws.paused().await? {
                    anyhow::bail!(
                        "nothing changed: stack {} is {}; run `provision resume` first, then `up`",
                        stack.config.stack.name,
                        paused.summary()
                    );
                }
                let started = chrono::Utc::now();
                let result = up(&stack, cli.output, wait).await;
                record_deploy(&stack, started, wait, &result).await;
                result?
            }
            Command::Publish { artifacts } => {
                let release = cli
                    .release
                    .context("publish needs --release NAME (or ANB_RELEASE)")?;
                stack.publish(&release, &artifacts).await?;
                println!(
                    "Published release {release} to s3://{}/artifacts/{release}/",
                    stack.bucket()
                );
                ExitCode::SUCCESS
            }
            Command::Status { health: false, .. } => match stack.status(cli.output).await? {
                Sync::InSync => ExitCode::SUCCESS,
                Sync::Drift => ExitCode::from(2),
            },
            Command::Status {
                health: true,
                watch,
            } => health(&stack, cli.output, watch).await?,
            Command::Pause => {
                stack.pause().await?;
                ExitCode::SUCCESS
            }
            Command::Resume => {
                stack.resume().await?;
                ExitCode::SUCCESS
            }
            Command::Releases => {
                stack.releases(cli.output).await?;
                ExitCode::SUCCESS
            }
            Command::Metrics { .. } | Command::Logs { .. } => unreachable!("answered above"),
            Command::Down { flags } => {
                let delete_videos = flags.delete_videos;
                if !flags.yes && !provision::confirm_down(&stack.config.stack.name, delete_videos)?
                {
                    eprintln!("Not confirmed: nothing deleted.");
                    return Ok(ExitCode::FAILURE);
                }
                let left = stack.down().await?;
                if left.is_empty() && !delete_videos {
                    println!(
                        "Stack {} is gone but for its bucket {} (--delete-videos deletes it).",
                        stack.config.stack.name,
                        stack.bucket()
                    );
                    ExitCode::SUCCESS
                } else if left.is_empty() {
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
    .await;
    if let Some(lock) = lock {
        if let Err(e) = lock.release(&stack.aws).await {
            match provision::aws::stale_credentials(&e) {
                // The command's own error (printed last) already says what to do.
                Some(_) => eprintln!(
                    "provision: the stack's lock stays behind (the credentials expired before \
                     it could be released): add --force-unlock when you run the command again"
                ),
                None => eprintln!("provision: {e:#}"),
            }
        }
    }
    result
}

/// `up`, with `--wait` following each tier's refresh and then the load balancer.
async fn up(stack: &Stack, output: Output, wait: bool) -> anyhow::Result<ExitCode> {
    stack.up(output).await?;
    let (url, logs) = stack.endpoints().await?;
    if wait {
        let waited = match stack.roll(true).await {
            Ok(()) => {
                stack
                    .wait_for_healthy_targets(std::time::Duration::from_secs(30 * 60))
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = waited {
            eprintln!("Logs:\n  {}", logs.trim_end().replace('\n', "\n  "));
            return Err(e);
        }
    }
    if let Some(url) = url {
        println!("URL: {url}/api/health");
    }
    println!("Logs:\n  {}", logs.trim_end().replace('\n', "\n  "));
    Ok(ExitCode::SUCCESS)
}

/// Appends this run of `up` to the stack's deploy history (`provision releases`); a
/// failure to write it is said, and changes nothing of the outcome.
async fn record_deploy(
    stack: &Stack,
    started: chrono::DateTime<chrono::Utc>,
    wait: bool,
    result: &anyhow::Result<ExitCode>,
) {
    // Expired credentials cannot write the record either: the command's line says it all.
    if let Err(e) = result {
        if provision::aws::stale_credentials(e).is_some() {
            return;
        }
    }
    let outcome = match result {
        Ok(_) if wait => "rolled out".to_owned(),
        Ok(_) => "applied; the rollout goes on (`provision status --health`)".to_owned(),
        Err(e) => format!("{e:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    let record = async {
        let record = provision::deploy::DeployRecord {
            release: stack
                .target_release()
                .await
                .unwrap_or_else(|_| "(none)".into()),
            who: stack.aws.caller.clone(),
            started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            seconds: (chrono::Utc::now() - started).num_milliseconds() as f64 / 1000.0,
            succeeded: result.is_ok(),
            outcome,
        };
        stack.aws.record_deploy(&stack.bucket(), &record).await
    };
    if let Err(e) = record.await {
        eprintln!("provision: could not record this deploy in the bucket: {e:#}");
    }
}

/// `status --health`, once or every `watch` seconds. Exit 3 unhealthy, 2 drift, 0.
async fn health(stack: &Stack, output: Output, watch: Option<u64>) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let redraw = watch.is_some() && std::io::stdout().is_terminal();
    loop {
        let health = match (stack.health().await, watch) {
            (Ok(health), _) => health,
            (Err(e), None) => return Err(e),
            // Watching: one failed read (a throttle, a blip) is said, and the next one
            // tried; expired credentials end it.
            (Err(e), Some(seconds)) => {
                if provision::aws::stale_credentials(&e).is_some() {
                    return Err(e);
                }
                eprintln!("provision: could not read the stack ({e:#}); again in {seconds} s");
                tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
                continue;
            }
        };
        match output {
            Output::Text if redraw => print!("\x1b[H\x1b[2J{}", health.render()),
            Output::Text => print!("{}", health.render()),
            Output::Json => {
                let mut value = serde_json::to_value(&health)?;
                value["problems"] = serde_json::json!(health.problems());
                println!("{value}");
            }
        }
        let code = if !health.problems().is_empty() {
            ExitCode::from(3)
        } else if !health.drift.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
        let Some(seconds) = watch else {
            return Ok(code);
        };
        if !redraw && output == Output::Text {
            println!();
        }
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    }
}

/// An RFC 3339 time, or a duration before now ("30m", "2h", "0s").
fn parse_time(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    let ago = humantime_serde::re::humantime::parse_duration(value).map_err(|_| {
        format!(
            "{value:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration ago (30m)"
        )
    })?;
    chrono::Duration::from_std(ago)
        .map(|ago| chrono::Utc::now() - ago)
        .map_err(|e| e.to_string())
}

fn parse_release(value: &str) -> Result<String, String> {
    if provision::userdata::valid_release(value) {
        Ok(value.to_owned())
    } else {
        Err("a release is 1–64 letters, digits, '.', '_' or '-', not starting with '.'".into())
    }
}

fn parse_artifact(value: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = value
        .split_once('=')
        .ok_or_else(|| format!("{value}: expected NAME=FILE, e.g. api=target/release/api"))?;
    if !["api", "worker"].contains(&name) {
        return Err(format!("{name}: the artifacts are api and worker"));
    }
    let file = PathBuf::from(file);
    if !file.is_file() {
        return Err(format!("{}: no such file", file.display()));
    }
    Ok((name.to_owned(), file))
}
