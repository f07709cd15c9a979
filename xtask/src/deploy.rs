//! `cargo xtask up` / `cargo xtask down`: build, publish and deploy the services with
//! `provision` (run as a program, never linked), or tear the stack down.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use sha2::{Digest, Sha256};

use crate::paths::project_root;
use crate::system::{build_binaries, output, run_command};

/// The newest glibc the default image (Debian 12) has: binaries built against a newer one
/// would not start there.
const DEFAULT_IMAGE_GLIBC: (u32, u32) = (2, 36);

/// What `provision` is pointed at; passed through to it as its global flags.
#[derive(Debug, Args)]
pub struct Target {
    /// Stack configuration (default: the built-in config/aws.toml, the seed's deployment).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stack name (overrides the configuration's).
    #[arg(long)]
    stack: Option<String>,
    /// AWS region (overrides the configuration's).
    #[arg(long)]
    region: Option<String>,
    /// Send AWS calls to this endpoint instead (an emulator such as moto).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
}

impl Target {
    fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, value) in [
            ("--stack", &self.stack),
            ("--region", &self.region),
            ("--endpoint-url", &self.endpoint_url),
        ] {
            if let Some(value) = value {
                flags.extend([flag.to_owned(), value.clone()]);
            }
        }
        if let Some(config) = &self.config {
            flags.extend(["--config".to_owned(), config.display().to_string()]);
        }
        flags
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    target: Target,
    /// Build the services without optimisations: quicker, for trying the deploy path
    /// against an emulator. Never for a real deployment.
    #[arg(long)]
    debug: bool,
    /// Release name. Default: <git commit>-<first 8 hex of the binaries' SHA-256>, so the
    /// same build is the same release and a second `up` changes nothing.
    #[arg(long)]
    release: Option<String>,
    /// Do not wait for healthy instances behind the load balancer.
    #[arg(long)]
    no_wait: bool,
    /// Allow replacing the database when a setting that cannot change in place differs
    /// (a snapshot is taken first). Without it `up` stops and says which setting.
    #[arg(long)]
    replace_database: bool,
    /// Create the (missing) database from this RDS snapshot, e.g. `down`'s final one.
    #[arg(long, value_name = "SNAPSHOT_ID")]
    restore_from: Option<String>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    flags: stack_config::cli::DownFlags,
}

impl UpArgs {
    /// `cargo xtask up --no-wait` of stack `stack` against an emulator at `endpoint` (what
    /// `rehearse` runs), with debug builds unless `optimized`.
    pub fn against_emulator(endpoint: &str, config: PathBuf, stack: &str, optimized: bool) -> Self {
        Self {
            target: Target {
                config: Some(config),
                stack: Some(stack.to_owned()),
                region: None,
                endpoint_url: Some(endpoint.to_owned()),
            },
            debug: !optimized,
            release: None,
            no_wait: true,
            replace_database: false,
            restore_from: None,
        }
    }
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.debug && args.target.endpoint_url.is_none() {
        bail!("--debug builds are for an emulator (--endpoint-url): AWS gets release builds");
    }
    check_glibc(args.target.config.as_deref())?;
    let mut services = build_binaries(&["api", "worker"], !args.debug)?;
    let provision = provision_binary()?;
    let (api, worker) = (services.remove("api"), services.remove("worker"));
    let (api, worker) = (api.context("api")?, worker.context("worker")?);
    let release = match args.release {
        Some(release) => release,
        None => release_name(&[&api, &worker])?,
    };
    let flags = args.target.flags();
    run_command(
        crate::system::command(&provision)
            .args(["publish", "--release", &release])
            .arg(format!("api={}", api.display()))
            .arg(format!("worker={}", worker.display()))
            .args(&flags),
    )?;
    let mut up = crate::system::command(&provision);
    up.args(["up", "--release", &release]).args(&flags);
    if args.replace_database {
        up.arg("--replace-database");
    }
    if let Some(snapshot) = &args.restore_from {
        up.args(["--restore-from", snapshot]);
    }
    if !args.no_wait {
        up.arg("--wait");
    }
    run_command(&mut up)
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let provision = provision_binary()?;
    let mut down = crate::system::command(provision);
    down.arg("down")
        .args(args.target.flags())
        .args(args.flags.to_args());
    run_command(&mut down)
}

/// Runs provision with `args`, attached to this terminal; returns its exit code.
pub fn provision(args: &[String]) -> anyhow::Result<u8> {
    let status = crate::system::command(provision_binary()?)
        .args(args)
        .status()
        .context("cannot start provision")?;
    Ok(status.code().map_or(1, |code| code.clamp(0, 255) as u8))
}

/// `provision`, in a debug build (it spends its time waiting on AWS, not computing).
pub(crate) fn provision_binary() -> anyhow::Result<PathBuf> {
    build_binaries(&["provision"], false)?
        .remove("provision")
        .context("provision")
}

/// `<git commit>-<8 hex of the binaries' SHA-256>` ("-dirty" after the commit when the
/// tree has uncommitted changes; the checksum tells such builds apart).
fn release_name(binaries: &[&Path]) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for binary in binaries {
        let bytes =
            std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
        hasher.update(&bytes);
    }
    let digest = format!("{:x}", hasher.finalize())[..8].to_owned();
    let root = project_root();
    let commit = output(crate::system::command("git").current_dir(&root).args([
        "rev-parse",
        "--short=10",
        "HEAD",
    ]))
    .map(|c| c.trim().to_owned())
    .unwrap_or_else(|_| "nogit".to_owned());
    let dirty = output(
        crate::system::command("git")
            .current_dir(&root)
            .args(["status", "--porcelain"]),
    )
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false);
    Ok(format!(
        "{commit}{}-{digest}",
        if dirty { "-dirty" } else { "" }
    ))
}

/// Refuses to build binaries the default image could not run.
fn check_glibc(config: Option<&Path>) -> anyhow::Result<()> {
    let text = match config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => std::fs::read_to_string(project_root().join("config/aws.toml"))?,
    };
    let config: toml::Value = toml::from_str(&text).context("the stack configuration")?;
    let own_image = config
        .get("instances")
        .and_then(|i| i.get("ami"))
        .and_then(|a| a.as_str())
        .is_some_and(|ami| !ami.is_empty());
    if own_image {
        return Ok(()); // the operator chose the image and answers for its glibc
    }
    let Ok(version) = output(crate::system::command("getconf").arg("GNU_LIBC_VERSION")) else {
        return Ok(()); // not glibc (e.g. macOS): cannot build Linux binaries here anyway
    };
    let newer = parse_glibc(&version).is_some_and(|v| v > DEFAULT_IMAGE_GLIBC);
    if newer {
        bail!(
            "this machine has {} but the default image (Debian 12) has glibc {}.{}: binaries \
             built here would not start there. Build on Debian 12, or set instances.ami to an \
             image with a newer glibc (e.g. Debian 13)",
            version.trim(),
            DEFAULT_IMAGE_GLIBC.0,
            DEFAULT_IMAGE_GLIBC.1
        );
    }
    Ok(())
}

/// "glibc 2.36" → (2, 36).
fn parse_glibc(version: &str) -> Option<(u32, u32)> {
    let number = version.split_whitespace().last()?;
    let mut parts = number.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_compare_as_numbers() {
        assert_eq!(parse_glibc("glibc 2.36\n"), Some((2, 36)));
        assert!(parse_glibc("glibc 2.41").unwrap() > DEFAULT_IMAGE_GLIBC);
        assert!(parse_glibc("glibc 2.5").unwrap() < DEFAULT_IMAGE_GLIBC);
        assert_eq!(parse_glibc("musl"), None);
    }
}
