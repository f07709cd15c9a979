//! `worker`: processes uploaded videos from the job queue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

/// Processes uploaded ANB Rising Stars videos: takes jobs from the queue, runs ffmpeg,
/// stores the result and marks the video processed.
///
/// Settings come from the built-in defaults (config/default.toml), then each --config file
/// in order, then APP__SECTION__KEY environment variables (DATABASE_URL works too). On
/// SIGTERM or Ctrl-C it takes no new jobs, finishes the current one within
/// worker.shutdown_grace (or hands it back to the queue), and exits 0.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file to layer over the defaults (repeatable, e.g. config/local.toml).
    #[arg(
        long = "config",
        value_name = "FILE",
        env = "APP_CONFIG",
        value_delimiter = ',',
        global = true
    )]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Take and process jobs until stopped (what runs with no subcommand).
    Run,
    /// Send every job of the dead-letter queue back to the queue, its video reset to
    /// `uploaded` (after an outage, or once a bug is fixed), print how many, and exit.
    /// Messages that are not jobs stay in the dead-letter queue.
    Redrive,
    /// Print, one per line, the ffmpeg arguments the worker would use for INPUT → OUTPUT
    /// with the current settings, writing the logo to LOGO: to run or time ffmpeg by hand.
    FfmpegArgs {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        logo: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match backends::settings::Settings::load(&cli.config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::FfmpegArgs {
        input,
        output,
        logo,
    }) = &cli.command
    {
        if let Err(e) = worker::logo::write_png(logo) {
            eprintln!("worker: cannot write the logo: {e:#}");
            return ExitCode::FAILURE;
        }
        for arg in worker::pipeline::ffmpeg_args(input, logo, output, &settings.processing) {
            println!("{}", arg.to_string_lossy());
        }
        return ExitCode::SUCCESS;
    }
    backends::init_tracing(&settings.log);
    let worker = match worker::Worker::build(&settings).await {
        Ok(worker) => Arc::new(worker),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker cannot start");
            eprintln!("worker: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Redrive) = cli.command {
        return match worker.redrive().await {
            Ok(moved) => {
                println!("{moved} job(s) sent back to the queue");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("worker: redrive failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stop signal received");
        let _ = stop.send(true);
    });
    match worker.run(stopped).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
