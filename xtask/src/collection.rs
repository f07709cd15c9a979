//! `cargo xtask collection`: the Postman collection of the whole REST contract
//! (`collections/`), run with newman against `cargo xtask dev` (started here on a free
//! port and stopped after) or against a running stack's URL. CI runs it.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use clap::Args;

use crate::media::{generate_once, Clip};
use crate::paths::{project_root, scratch_dir};
use crate::system::{command, ensure_installed, run_command, stop_all};

/// The newman release the collection is run with.
const NEWMAN_VERSION: &str = "6.2.2";

#[derive(Debug, Default, Args)]
pub struct CollectionArgs {
    /// Run it against this base URL (e.g. a stack's `http://<load balancer>`) instead of a
    /// `cargo xtask dev` started for the run.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
}

pub fn run(args: CollectionArgs) -> anyhow::Result<()> {
    let newman = ensure_newman()?;
    let files = fixtures()?;
    let Some(base) = args.base_url else {
        return with_dev(|base| run_newman(&newman, &files, base));
    };
    run_newman(&newman, &files, base.trim_end_matches('/'))
}

/// The platform from `cargo xtask dev` on a free port while `f` runs, stopped after
/// (SIGTERM: the API, the worker and dev's PostgreSQL go with it, given the time dev
/// gives them and more: killed sooner, dev would leave them running).
fn with_dev(f: impl FnOnce(&str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    eprintln!("xtask: starting `cargo xtask dev --port {port}` for the collection");
    let xtask = std::env::current_exe().context("cannot find xtask's own executable")?;
    let mut dev = command(xtask)
        .args(["dev", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start `cargo xtask dev`")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime
        .block_on(crate::system::wait_healthy(&mut dev, &base))
        .and_then(|()| f(&base));
    stop_all(
        &mut [&mut dev],
        crate::dev::STOP_LIMIT + std::time::Duration::from_secs(20),
    );
    outcome
}

fn run_newman(newman: &PathBuf, files: &PathBuf, base: &str) -> anyhow::Result<()> {
    let collections = project_root().join("collections");
    eprintln!(
        "xtask: newman run collections/anb-rising-stars.postman_collection.json against {base}"
    );
    run_command(
        command(newman)
            .arg("run")
            .arg(collections.join("anb-rising-stars.postman_collection.json"))
            .arg("--environment")
            .arg(collections.join("local.postman_environment.json"))
            .args(["--env-var", &format!("baseUrl={base}")])
            .arg("--working-dir")
            .arg(files)
            .args([
                "--reporters",
                "cli",
                "--color",
                "off",
                "--no-insecure-file-read",
            ]),
    )
    .context("the Postman collection failed against the API (its report is above)")
}

/// The files the collection uploads: a short MP4 and a text file named like one.
fn fixtures() -> anyhow::Result<PathBuf> {
    let dir = scratch_dir().join("collection");
    std::fs::create_dir_all(&dir)?;
    generate_once(
        &Clip::plain(640, 360, 3),
        &dir.join("clip.mp4"),
        "the collection's 3 s clip",
    )?;
    std::fs::write(
        dir.join("not-a-video.mp4"),
        "not a video, whatever its name says\n",
    )?;
    Ok(dir)
}

/// newman, pinned, installed with npm under `target/tools/newman` (npm from Debian's
/// package when missing).
fn ensure_newman() -> anyhow::Result<PathBuf> {
    let prefix = scratch_dir().join("tools/newman");
    let newman = prefix.join("node_modules/.bin/newman");
    let ready = newman.is_file()
        && command(&newman)
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == NEWMAN_VERSION);
    if ready {
        return Ok(newman);
    }
    ensure_installed(&["npm"], "npm")?;
    std::fs::create_dir_all(&prefix)?;
    eprintln!(
        "xtask: installing newman {NEWMAN_VERSION} into {}",
        prefix.display()
    );
    run_command(
        command("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel",
                "error",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(format!("newman@{NEWMAN_VERSION}")),
    )?;
    Ok(newman)
}
