//! `cargo xtask dev`: the whole platform on this machine, with one command.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::paths::{project_root, scratch_dir};
use crate::postgres::PrivateCluster;
use crate::system::ensure_installed;
use crate::system::{stop_all, wait_healthy};

/// How long the API and the worker get to stop on Ctrl-C before they are killed (a job in
/// hand is then handed back and done at the next start).
pub const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Port of the private development cluster (another free one is used if it is taken).
const DEV_POSTGRES_PORT: u16 = 54329;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Port for the API.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Build and run optimised binaries (slower to build, much faster to run).
    #[arg(long)]
    release: bool,
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    ensure_installed(&["ffmpeg", "ffprobe"], "ffmpeg")?;
    // Ctrl-C and SIGTERM (e.g. from `timeout`, a supervisor or `cargo xtask collection`)
    // stop everything, from here on: one that came during the start-up and killed this
    // process at once would leave the API and the private database running.
    let runtime = tokio::runtime::Runtime::new()?;
    let mut stop_signals = runtime.block_on(async { StopSignals::listen() })?;
    let (database_url, cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let cluster = PrivateCluster::start(
                &scratch_dir().join("dev-postgres"),
                DEV_POSTGRES_PORT,
                "anb",
            )?;
            (cluster.url("anb"), Some(cluster))
        }
    };
    let binaries = crate::system::build_binaries(&["api", "worker"], args.release)?;

    let storage = scratch_dir().join("dev-storage");
    let start = |binary: &str| {
        crate::system::command(&binaries[binary])
            .current_dir(project_root())
            .args(["--config", "config/local.toml"])
            .env("APP__DATABASE__URL", &database_url)
            .env("APP__SERVER__PORT", args.port.to_string())
            .env("APP__STORAGE__LOCAL_DIR", &storage)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start the {binary}"))
    };
    let mut api = start("api")?;
    let base = format!("http://127.0.0.1:{}", args.port);
    let mut worker = None;
    let outcome = runtime.block_on(async {
        let running = async {
            // The API applies the migrations; the worker starts once the API is healthy.
            wait_healthy(&mut api, &base).await?;
            let worker = worker.insert(start("worker")?);
            supervise(&mut api, worker, &base, &database_url, cluster.as_ref()).await
        };
        tokio::select! {
            () = stop_signals.recv() => Ok(()),
            outcome = running => outcome,
        }
    });
    match worker.as_mut() {
        Some(worker) => stop_all(&mut [worker, &mut api], STOP_LIMIT),
        None => stop_all(&mut [&mut api], STOP_LIMIT),
    }
    drop(cluster); // stops the private PostgreSQL
    outcome
}

async fn supervise(
    api: &mut Child,
    worker: &mut Child,
    base: &str,
    database_url: &str,
    cluster: Option<&PrivateCluster>,
) -> anyhow::Result<()> {
    let database = match cluster {
        Some(c) => format!(
            "private cluster in target/dev-postgres (port {}), stopped on exit",
            c.port
        ),
        None => format!("DATABASE_URL ({})", redact(database_url)),
    };
    println!(
        "\nANB Rising Stars is running at {base}\n\
         \x20 API docs:  {base}/api/docs/\n\
         \x20 database:  {database}\n\
         \x20 storage:   target/dev-storage (queue: PostgreSQL; one worker processes uploads)\n\n\
         Try it:\n\
         \x20 curl -s -X POST {base}/api/auth/signup -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"first_name\":\"Ana\",\"last_name\":\"Ruiz\",\"email\":\"ana@example.com\",\"password1\":\"Canasta2026\",\"password2\":\"Canasta2026\",\"city\":\"Cali\",\"country\":\"Colombia\"}}'\n\
         \x20 curl -s {base}/api/public/rankings\n\n\
         Ctrl-C stops everything.\n"
    );
    // Until a stop signal ends this future (see `run`), or one of them ends by itself.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(status) = api.try_wait()? {
            bail!("the API exited unexpectedly ({status})");
        }
        if let Some(status) = worker.try_wait()? {
            bail!("the worker exited unexpectedly ({status})");
        }
    }
}

/// Ctrl-C and SIGTERM, listened for from the start (a signal that came before `recv` is
/// kept for it).
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Inside a Tokio runtime.
    fn listen() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}
