//! `cargo xtask bench provision`: wall time and AWS calls of `provision` against moto.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::paths::{project_root, scratch_dir};

const GOAL_SECONDS: f64 = 2.0;

pub fn run() -> anyhow::Result<()> {
    let python = crate::tools::ensure_moto()?;
    let provision = crate::system::build_binaries(&["provision"], false)?
        .remove("provision")
        .context("provision")?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (mut moto, requests) = start_moto(&python, port)?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let result = measure(&provision, &endpoint, &requests);
    let _ = moto.kill();
    let _ = moto.wait();
    let rows = result?;

    println!("\n== cargo xtask bench provision (moto {endpoint}; debug build of provision) ==");
    println!("  {:<26} {:>9} {:>10}", "command", "wall (s)", "AWS calls");
    for (label, seconds, calls) in &rows {
        let goal = match *label {
            "up (no changes)" | "status" => {
                format!(
                    "   [goal < {GOAL_SECONDS} s: {}]",
                    if *seconds < GOAL_SECONDS {
                        "meets goal"
                    } else {
                        "BELOW GOAL"
                    }
                )
            }
            _ => String::new(),
        };
        println!("  {label:<26} {seconds:>9.2} {calls:>10}{goal}");
    }
    // Baseline from the same run: what one AWS call costs when `status` is divided by its
    // calls; concurrency is what keeps the real wall time below calls × that.
    if let Some((_, seconds, calls)) = rows.iter().find(|r| r.0 == "status") {
        println!(
            "  status: {:.1} ms of wall time per AWS call over {calls} calls (moto on loopback; real AWS adds ~20–100 ms a call)",
            seconds * 1000.0 / (*calls).max(1) as f64
        );
    }
    Ok(())
}

/// moto, with every request it logs counted.
fn start_moto(python: &Path, port: u16) -> anyhow::Result<(Child, Arc<AtomicUsize>)> {
    let mut child =
        testkit::tools::spawn_moto(python, port, Stdio::piped()).context("cannot start moto")?;
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let stderr = child.stderr.take().context("moto's stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // werkzeug logs one line per request: ... "POST / HTTP/1.1" 200 -
            if line.contains("\" 2")
                || line.contains("\" 3")
                || line.contains("\" 4")
                || line.contains("\" 5")
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("moto did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((child, requests))
}

fn measure(
    provision: &Path,
    endpoint: &str,
    requests: &AtomicUsize,
) -> anyhow::Result<Vec<(&'static str, f64, usize)>> {
    let config: PathBuf = scratch_dir().join("bench/provision-moto.toml");
    std::fs::create_dir_all(config.parent().context("config folder")?)?;
    let text = std::fs::read_to_string(project_root().join("config/aws.toml"))?
        .replace("ami = \"\"", "ami = \"ami-1e749f67\""); // one of moto's stock images
    std::fs::write(&config, text)?;
    // `up` deploys a release: publish a stand-in (instances never boot on moto).
    let artifact = scratch_dir().join("bench/artifact");
    std::fs::write(&artifact, b"bench")?;
    let api = format!("api={}", artifact.display());
    let worker = format!("worker={}", artifact.display());
    let mut rows = Vec::new();
    for (label, args) in [
        ("publish (new bucket)", vec!["publish", &api, &worker]),
        ("up (empty account)", vec!["up"]),
        ("up (no changes)", vec!["up"]),
        ("status", vec!["status"]),
        ("plan", vec!["plan"]),
        ("down", vec!["down", "--yes", "--delete-videos"]),
    ] {
        // Let moto's log catch up before reading the counter.
        std::thread::sleep(Duration::from_millis(300));
        let before = requests.load(Ordering::Relaxed);
        let started = Instant::now();
        let status = crate::system::command(provision)
            .args(&args)
            .args(["--stack", "bench", "--release", "bench-1"])
            .args(["--endpoint-url", endpoint, "--config"])
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("provision {} failed ({status})", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(300));
        rows.push((label, seconds, requests.load(Ordering::Relaxed) - before));
    }
    Ok(rows)
}
