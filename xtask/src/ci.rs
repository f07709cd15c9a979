//! `cargo xtask ci`: everything CI checks, with its own set-up, so that one command run on
//! a fresh Debian machine is enough.

use anyhow::{bail, Context};
use clap::Args;

use crate::paths::scratch_dir;
use crate::postgres::PrivateCluster;
use crate::system::{ensure_installed, install_packages, is_root, output, run_command, which};
use crate::tools::{ensure_moto, ensure_schemathesis};

/// The role the tests use to create a database per test (machine cluster only).
const TEST_ROLE: &str = "anb_test";

#[derive(Debug, Args)]
pub struct CiArgs {
    /// Only run the tests (skip rustfmt, clippy and the worker's speed guard).
    #[arg(long)]
    tests_only: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// A server the tests run themselves (nginx, haproxy), from Debian's package of the same
/// name: it lives in /usr/sbin, which is not on every user's PATH.
fn ensure_server(name: &str) -> anyhow::Result<()> {
    if std::path::Path::new("/usr/sbin").join(name).is_file() || which(name).is_some() {
        return Ok(());
    }
    install_packages(&[name]).with_context(|| format!("{name} is needed"))?;
    // Debian starts the packaged server; the tests only need the program.
    let _ = crate::system::command("systemctl")
        .args(["disable", "--now", name])
        .status();
    Ok(())
}

pub fn run(args: CiArgs) -> anyhow::Result<()> {
    eprintln!(
        "xtask: checking the tree at {}",
        crate::paths::project_root().display()
    );
    ensure_installed(&["ffmpeg", "ffprobe"], "ffmpeg")?;
    // The instances' user data must pass shellcheck, and the web tier's nginx
    // configuration is run for real (provision's userdata tests).
    ensure_installed(&["shellcheck"], "shellcheck")?;
    ensure_server("nginx")?;
    // The rehearsal's load balancer (xtask's rehearse::balancer tests run it for real).
    ensure_server("haproxy")?;
    // The page's browser tests (services/api/tests/it/browser.rs).
    ensure_installed(&["chromium", "chromedriver"], "chromium-driver")?;
    let (admin_url, _private_cluster) = test_database()?;
    let moto_python = ensure_moto()?;
    let schemathesis = ensure_schemathesis()?;
    if !args.tests_only {
        eprintln!("xtask: rustfmt");
        run_command(crate::system::cargo().args(["fmt", "--all", "--", "--check"]))
            .context("code is not formatted: run `cargo fmt --all`")?;
        eprintln!("xtask: clippy");
        run_command(crate::system::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // Before the tests, so the test runner's summary stays the last thing printed.
        eprintln!("xtask: speed guard (bench worker --quick --guard)");
        crate::bench::worker_guard()?;
        eprintln!("xtask: the Postman collection against `cargo xtask dev` (newman)");
        crate::collection::run(crate::collection::CollectionArgs::default())?;
    }
    eprintln!("xtask: tests");
    run_command(
        crate::system::cargo()
            .args(["test", "--workspace"])
            .args(if args.test_args.is_empty() {
                Vec::new()
            } else {
                [vec!["--".to_owned()], args.test_args].concat()
            })
            .env("ANB_TEST_DATABASE_URL", &admin_url)
            .env("ANB_MOTO_PYTHON", &moto_python)
            .env("ANB_SCHEMATHESIS", &schemathesis)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_BACKTRACE", "1"),
    )
}

/// A PostgreSQL URL whose role may create databases and roles: ANB_TEST_DATABASE_URL if set, else the
/// machine's cluster (Debian's pg_ctlcluster, started if down), else a private cluster.
fn test_database() -> anyhow::Result<(String, Option<PrivateCluster>)> {
    if let Ok(url) = std::env::var("ANB_TEST_DATABASE_URL") {
        return Ok((url, None));
    }
    if is_root() && which("apt-get").is_some() {
        if which("pg_lsclusters").is_none() {
            install_packages(&["postgresql"])?;
        }
        let port = start_machine_cluster()?;
        let role = format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TEST_ROLE}') THEN \
             CREATE ROLE {TEST_ROLE} LOGIN PASSWORD '{TEST_ROLE}'; END IF; \
             ALTER ROLE {TEST_ROLE} CREATEDB CREATEROLE; END$$;"
        );
        run_command(crate::system::command("runuser").args([
            "-u",
            "postgres",
            "--",
            "psql",
            "-q",
            "-p",
            &port.to_string(),
            "-c",
            &role,
        ]))?;
        return Ok((
            format!("postgres://{TEST_ROLE}:{TEST_ROLE}@127.0.0.1:{port}/postgres"),
            None,
        ));
    }
    let cluster = PrivateCluster::start(&scratch_dir().join("test-postgres"), 54330, "postgres")?;
    Ok((cluster.url("postgres"), Some(cluster)))
}

/// Starts the first cluster `pg_lsclusters` lists (creating one if there is none) and
/// returns its port.
fn start_machine_cluster() -> anyhow::Result<u16> {
    let list = output(crate::system::command("pg_lsclusters").arg("--no-header"))?;
    let Some(line) = list.lines().find(|l| !l.trim().is_empty()) else {
        bail!("PostgreSQL is installed but has no cluster: create one with pg_createcluster");
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [version, name, port, status, ..] = fields[..] else {
        bail!("cannot read pg_lsclusters output: {line}");
    };
    if status != "online" {
        eprintln!("xtask: starting PostgreSQL cluster {version}/{name}");
        run_command(crate::system::command("pg_ctlcluster").args([version, name, "start"]))?;
    }
    port.parse()
        .with_context(|| format!("bad port in pg_lsclusters output: {line}"))
}
