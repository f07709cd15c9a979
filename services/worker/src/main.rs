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
/// worker.shutdown_grace (or hands it back to the queue), and exits 0. On an auto-scaling
/// group (worker.autoscaling_group and worker.lifecycle_hook set) it protects its instance
/// from scale-in while it holds a job, and when the group terminates the instance it
/// finishes the job in hand, however long, then completes the termination hook.
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
    /// Process the local file INPUT into OUTPUT exactly as a job would (bumpers encoded
    /// first, then the main part and the join), without the queue, database or storage:
    /// to check a problem video or time the processing by hand. Prints each run's seconds
    /// (main part + join) on standard output, one line per run.
    Transcode {
        /// The upload to process (MP4/MOV).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the processed MP4 (replaced if it exists).
        #[arg(long)]
        output: PathBuf,
        /// Process the file this many times (the bumpers are encoded once).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Keep the logo, the bumpers and each run's parts in DIR (missing or empty)
        /// instead of a temporary folder: to look at each part.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
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
    if let Some(Command::Transcode {
        input,
        output,
        runs,
        work_dir,
    }) = &cli.command
    {
        return match transcode(input, output, *runs, work_dir.as_deref(), &settings).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e:#}");
                ExitCode::FAILURE
            }
        };
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
    let stop = Arc::new(stop);
    tokio::spawn({
        let stop = stop.clone();
        async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received");
            let _ = stop.send(true);
        }
    });
    let lifecycle = match worker::lifecycle::Lifecycle::connect(&settings).await {
        Ok(lifecycle) => lifecycle.map(Arc::new),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot follow the instance's lifecycle: no scale-in protection, and a \
                 termination stops the worker as SIGTERM does"
            );
            None
        }
    };
    match worker::systemd::Notifier::from_env() {
        Ok(Some(notifier)) => tell_systemd(notifier, worker.clone()),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable"),
    }
    if let Some(lifecycle) = &lifecycle {
        // Restarted by systemd after it finished draining: nothing more to take; the
        // completion is tried again (it may not have gone through) and the process idles,
        // alive for the watchdog, until the instance goes.
        if lifecycle
            .target_state()
            .await
            .is_ok_and(|state| state == worker::lifecycle::TERMINATING)
        {
            tracing::info!("the group is terminating this instance: taking no jobs");
            lifecycle.mark_terminating();
            lifecycle.complete().await;
            worker.idle_until(wait_for_stop_signal()).await;
            return ExitCode::SUCCESS;
        }
        lifecycle.clone().follow(worker.clone(), stop.clone());
    }
    let ran = worker.run(stopped).await;
    if let Some(lifecycle) = &lifecycle {
        lifecycle.complete().await;
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}

async fn transcode(
    input: &std::path::Path,
    output: &std::path::Path,
    runs: u32,
    work_dir: Option<&std::path::Path>,
    settings: &backends::settings::Settings,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let timeout = settings.worker.ffmpeg_timeout;
    let scratch = tempfile::tempdir()?;
    let dir = match work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            if std::fs::read_dir(dir)?.next().is_some() {
                anyhow::bail!("{} is not empty", dir.display());
            }
            dir
        }
        None => scratch.path(),
    };
    let started = std::time::Instant::now();
    let transcoder = worker::transcode::Transcoder::prepare(dir, &settings.processing).await?;
    eprintln!(
        "bumpers encoded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for run in 1..=runs {
        let job = dir.join(format!("run-{run}"));
        std::fs::create_dir_all(&job)?;
        let took = transcoder.run(input, &job, output, timeout).await?;
        eprintln!(
            "run {run}: main part {:.2} s, join {:.2} s",
            took.main.as_secs_f64(),
            took.join.as_secs_f64()
        );
        println!("{:.3}", (took.main + took.join).as_secs_f64());
    }
    Ok(())
}

/// Tells systemd the worker is up (`Type=notify`), then feeds its watchdog twice per
/// `WatchdogSec` while the poll loop beats; when the loop stops beating the feeding stops
/// and systemd restarts the service (its jobs come back to the queue).
fn tell_systemd(notifier: worker::systemd::Notifier, worker: Arc<worker::Worker>) {
    if let Err(e) = notifier.notify("READY=1") {
        tracing::warn!(error = %e, "cannot tell systemd the worker is ready");
    }
    let Some(interval) = worker::systemd::watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut every = tokio::time::interval(interval / 2);
        loop {
            every.tick().await;
            let quiet = worker.since_last_beat();
            if quiet < interval / 2 {
                let _ = notifier.notify("WATCHDOG=1");
            } else {
                tracing::error!(
                    quiet_s = quiet.as_secs(),
                    "the poll loop has stopped: no longer feeding the systemd watchdog"
                );
            }
        }
    });
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
