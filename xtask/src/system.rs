//! Running commands and making sure the machine has what a command needs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use std::time::{Duration, Instant};
use testkit::tools::is_set_by_cargo;

use anyhow::{bail, Context};

/// A command for `program`: the one place xtask makes one, since running other programs
/// is what xtask is for (the workspace forbids spawning elsewhere without a reason).
#[allow(clippy::disallowed_methods)] // xtask's spawning happens here, see above
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    Command::new(program)
}

/// Runs `command`, failing with its rendering when it fails.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let shown = render(command);
    let status = command
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` and returns its standard output.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let shown = render(command);
    let out = command
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn render(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The full path of `program` on PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    output(command("id").arg("-u"))
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false)
}

fn has_apt() -> bool {
    which("apt-get").is_some()
}

/// Makes sure each of `programs` is on PATH, installing the Debian `package` with apt
/// when running as root on Debian/Ubuntu; otherwise says exactly what to run.
pub fn ensure_installed(programs: &[&str], package: &str) -> anyhow::Result<()> {
    if programs.iter().all(|p| which(p).is_some()) {
        return Ok(());
    }
    install_packages(&[package]).with_context(|| format!("{} is needed", programs.join(", ")))?;
    if let Some(missing) = programs.iter().find(|p| which(p).is_none()) {
        bail!("installed {package} but {missing} is still not on PATH");
    }
    Ok(())
}

pub fn install_packages(packages: &[&str]) -> anyhow::Result<()> {
    if !(is_root() && has_apt()) {
        bail!(
            "install it first: sudo apt-get install -y {}",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(", "));
    run_command(command("apt-get").args(["update", "-qq"]))?;
    run_command(
        command("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The newest PostgreSQL server binaries on this machine (Debian keeps them under
/// /usr/lib/postgresql/<version>/bin), installing the `postgresql` package if there are none.
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = newest_postgres_bin_dir() {
        return Ok(dir);
    }
    install_packages(&["postgresql"]).context("PostgreSQL is needed")?;
    newest_postgres_bin_dir().context("installed postgresql but found no server binaries")
}

fn newest_postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    // Elsewhere (macOS, other distributions) the binaries are simply on PATH.
    which("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Builds the workspace's `binaries` and returns where each executable is. `--workspace`
/// (with `--bin` to build only these) resolves dependency features as `cargo test
/// --workspace` does, so the AWS SDK crates compiled for the tests are reused; building
/// one package alone (`-p provision`) resolves them differently and recompiles them
/// (about 5 minutes on 2 cores). The paths are the ones cargo reports for this build, not
/// `target/<profile>/<name>`: clones sharing a CARGO_TARGET_DIR overwrite those copies.
pub fn build_binaries(
    binaries: &[&str],
    release: bool,
) -> anyhow::Result<std::collections::HashMap<String, PathBuf>> {
    let mut build = cargo();
    build.args([
        "build",
        "--workspace",
        "--message-format=json-render-diagnostics",
    ]);
    for binary in binaries {
        build.args(["--bin", binary]);
    }
    if release {
        build.arg("--release");
    }
    let shown = render(&build);
    let out = build
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    let mut built = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        if let Some(executable) = message["executable"].as_str() {
            if binaries.contains(&name) {
                built.insert(name.to_owned(), PathBuf::from(executable));
            }
        }
    }
    for binary in binaries {
        anyhow::ensure!(
            built.contains_key(*binary),
            "cargo built no executable named {binary}"
        );
    }
    Ok(built)
}

/// `cargo`, in the workspace root, without the variables `cargo run` set for xtask itself
/// (see [`is_set_by_cargo`]).
pub fn cargo() -> Command {
    let mut command = command(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(crate::paths::project_root());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if is_set_by_cargo(&name) {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// Polls `/api/health` until it answers, failing early if the API process exits.
pub async fn wait_healthy(api: &mut Child, base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    // Generous: a debug build migrating its database on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(status) = api.try_wait()? {
            bail!("the API exited during start-up ({status}); its log is above");
        }
        let healthy = client
            .get(format!("{base}/api/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the API did not become healthy at {base}/api/health within 120 s")
}

/// The release or debug API at `api_bin`, ready to spawn on a free loopback port over
/// `database_url` and the local folder `storage`, with a throwaway signing key and warnings
/// only; with its base URL. Callers add what their run needs and spawn it.
pub fn local_api(
    api_bin: &Path,
    database_url: &str,
    storage: &Path,
) -> anyhow::Result<(Command, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut api = command(api_bin);
    api.env("APP__DATABASE__URL", database_url)
        .env("APP__SERVER__PORT", port.to_string())
        .env("APP__STORAGE__LOCAL_DIR", storage)
        .env(
            "APP__AUTH__JWT_SECRET",
            "xtask-local-secret-xtask-local-secret-01",
        )
        .env("APP__LOG__FILTER", "warn")
        .stdin(std::process::Stdio::null());
    Ok((api, format!("http://127.0.0.1:{port}")))
}

/// Asks the process to stop gracefully (SIGTERM), then waits for it: killed after 10 s.
pub fn stop(child: &mut Child) {
    stop_all(&mut [child], Duration::from_secs(10));
}

/// Asks every process to stop gracefully (SIGTERM) at once, waits for them, and kills
/// those still running after `limit`: the stop takes `limit` at most, however many there
/// are (one after another, a caller that itself gets killed after its own limit would
/// leave the later ones running).
pub fn stop_all(children: &mut [&mut Child], limit: Duration) {
    // A status that cannot be read (the child reaped elsewhere) counts as exited.
    let running = |child: &mut Child| matches!(child.try_wait(), Ok(None));
    for child in children.iter_mut() {
        if running(child) {
            let _ = command("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }
    let deadline = std::time::Instant::now() + limit;
    for child in children.iter_mut() {
        while running(child) {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use super::{command, stop_all};

    /// Two processes that ignore SIGTERM are both killed within one limit, not one after
    /// the other: `cargo xtask dev` stopped its worker then its API that way, and was
    /// itself killed before reaching the API, which kept running after CI.
    #[test]
    fn stopping_several_processes_takes_one_limit_and_leaves_none_running() {
        // Each says so once SIGTERM is ignored (then becomes `sleep`, still ignoring it).
        let stubborn = || {
            let mut child = command("sh")
                .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("its line");
            assert_eq!(line.trim(), "ready");
            child
        };
        let (mut first, mut second) = (stubborn(), stubborn());
        let began = Instant::now();
        stop_all(&mut [&mut first, &mut second], Duration::from_secs(2));
        let took = began.elapsed();
        assert!(took < Duration::from_secs(4), "took {took:?}");
        for child in [&mut first, &mut second] {
            assert!(child.try_wait().expect("status").is_some(), "still running");
        }
    }
}
