//! The capacity commands as CI runs them (`--quick`, or a short simulation): each writes
//! its report with the figures a reviewer reads, its raw data and real PNG plots.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo_xtask, cargo_xtask_command, workspace_root};

/// Runs `cargo xtask capacity <args>` and returns its report folder (the last line names it).
fn capacity(args: &[&str]) -> PathBuf {
    capacity_with(args, &[])
}

/// [`capacity`] with extra environment variables.
fn capacity_with(args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let mut full = vec!["capacity"];
    full.extend(args);
    let out = cargo_xtask_command(&workspace_root(), &full)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "capacity {args:?} failed:\n{stdout}\n{stderr}"
    );
    let dir = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("Report: "))
        .unwrap_or_else(|| panic!("no report folder printed:\n{stdout}"));
    PathBuf::from(dir)
}

fn assert_report(dir: &std::path::Path, files: &[&str], figures: &[&str]) {
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for figure in figures {
        assert!(
            report.contains(figure),
            "{figure:?} missing from:\n{report}"
        );
    }
    for file in files {
        let bytes = std::fs::read(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
        if file.ends_with(".png") {
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{file} is not a PNG"
            );
            assert!(
                report.contains(&format!("({file})")),
                "report.md does not show {file}"
            );
        } else {
            assert!(!bytes.is_empty(), "{file} is empty");
        }
    }
}

#[test]
fn the_three_capacity_commands_write_reports_with_their_figures() {
    let _serial = crate::CARGO_RUNS.lock().unwrap_or_else(|e| e.into_inner());

    let web = capacity(&["web", "--quick"]);
    assert_report(
        &web,
        &[
            "phases.csv",
            "phases.json",
            "throughput-and-p95.png",
            "errors.png",
            "cpu.png",
        ],
        &[
            "## Setup",
            "| smoke | 5 |",
            "| step 10 users | 10 |",
            "## Capacity found",
            "Generator ceiling:",
            "coordinated-omission",
        ],
    );
    // Whether 10 users stay within the SLO is a measurement of this machine at this moment
    // (the cores are shared with other tests), not something the test decides.
    let report = std::fs::read_to_string(web.join("report.md")).unwrap();
    assert!(
        report.contains("concurrent users** within the SLO")
            || report.contains("No step met the SLO."),
        "no capacity verdict in:\n{report}"
    );

    let worker = capacity(&["worker", "--quick"]);
    assert_report(
        &worker,
        &["levels.csv", "levels.json", "videos-per-minute.png"],
        &["| 1 |", "| 2 |", "videos/min per worker", "queue trend"],
    );

    let simulated = capacity(&[
        "simulate",
        "--arrivals",
        "burst:100",
        "--service-time",
        "4s",
        "--compare",
        "--recommend",
        "--slo",
        "7m",
    ]);
    assert_report(
        &simulated,
        &[
            "timeline.csv",
            "jobs.csv",
            "summary.json",
            "queue-depth.png",
            "instances.png",
            "upload-to-processed.png",
            "recommend.json",
        ],
        &[
            "| target tracking (deployed) | 100 |",
            "| step policy | 100 |",
            "per 1 000 videos",
            "t3.small",
            "## Recommendation: the cheapest settings with p95 upload → processed ≤ 7.0 min",
            "(deployed now)",
            "Recommended: ",
            "[worker]\nscaling_policy = ",
        ],
    );
    // A quick worker report is not a measurement: the simulation must not take it as one.
    let out = cargo_xtask(
        &workspace_root(),
        &["capacity", "simulate", "--arrivals", "burst:5"],
    );
    if !out.status.success() {
        assert!(String::from_utf8_lossy(&out.stderr).contains("--service-time"));
    } else {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("-worker-quick"), "{stdout}");
    }
}

/// A process the test started, killed when dropped, panics included.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process group the test started, ended (SIGTERM to the group) when dropped, panics
/// included: `cargo xtask dev` stops its API, worker and PostgreSQL on SIGTERM.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET path` on 127.0.0.1:`port` answers 200 within `limit`.
fn answers_200(port: u16, path: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let answered = TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head)?;
            Ok(head.ends_with(b" 200"))
        });
        if answered.unwrap_or(false) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The worker scenario against a running platform (`cargo xtask dev`) as against a
/// deployed stack: videos uploaded through the API, states read back from it, and the
/// stack's figures read from CloudWatch by `provision metrics` (moto stands in for it);
/// then the web scenario against the same platform.
#[test]
fn capacity_measures_a_running_platform_through_its_api_and_cloudwatch() {
    let _serial = crate::CARGO_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let python = std::env::var_os("ANB_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            testkit::tools::moto_venv(&workspace_root().join("target")).join("bin/python")
        });
    let moto_port = free_port();
    let moto = testkit::tools::spawn_moto(&python, moto_port, Stdio::null())
        .unwrap_or_else(|e| panic!("cannot start moto with {}: {e}", python.display()));
    let _moto = Killed(moto);
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let api_port = free_port();
    let logs = tempfile::tempdir().unwrap();
    let _platform = Group(
        cargo_xtask_command(&workspace_root(), &["dev", "--port", &api_port.to_string()])
            // Every simulated user of `capacity web` comes from 127.0.0.1: no per-address
            // limit on sign-ups, as the README says to set for such a run.
            .env("APP__LIMITS__AUTH_PER_MINUTE", "0")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.path().join("dev.log")).unwrap())
            .stderr(std::fs::File::create(logs.path().join("dev.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(
        answers_200(moto_port, "/moto-api/", Duration::from_secs(60)),
        "moto did not start"
    );
    assert!(
        answers_200(api_port, "/api/health", Duration::from_secs(600)),
        "cargo xtask dev did not start:\n{}",
        std::fs::read_to_string(logs.path().join("dev.err")).unwrap_or_default()
    );

    // Figures of the stack's queue, now and 45 s on: whenever the run begins, one of them
    // is within a minute before it or within the run.
    let stack = format!("cap{}", std::process::id());
    let put = Command::new(&python)
        .args([
            "-c",
            "import boto3, datetime, sys; boto3.client('cloudwatch', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing').put_metric_data(Namespace='AWS/SQS', \
             MetricData=[{'MetricName': 'ApproximateNumberOfMessagesVisible', 'Value': 3.0, \
             'Timestamp': datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=later), \
             'Dimensions': [{'Name': 'QueueName', 'Value': sys.argv[2]}]} for later in (0, 45)])",
            &endpoint,
            &format!("{stack}-video-processing"),
        ])
        .status()
        .unwrap();
    assert!(put.success());

    let aws = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let target = format!("http://127.0.0.1:{api_port}");
    let report = capacity_with(
        &["worker", "--target", &target, "--quick", "--stack", &stack],
        &aws,
    );
    let web = capacity_with(
        &["web", "--target", &target, "--quick", "--stack", &stack],
        &aws,
    );
    assert_report(
        &report,
        &[
            "outcome.json",
            "states.csv",
            "video-states.png",
            "cloudwatch.json",
            "cloudwatch.csv",
            "cloudwatch-instances.png",
        ],
        &[
            "| saturation | 2 |",
            "| sustained | 2 |",
            "videos/min** for the tier as deployed",
            "## CloudWatch",
            "| 3.000 | 3.000 | 3.000 | messages |",
            "no load balancer",
        ],
    );
    assert_report(
        &web,
        &["phases.json", "cloudwatch.json"],
        &[
            &format!("- Target: {target}"),
            "| step 10 users | 10 |",
            "## Capacity found",
            "## CloudWatch",
            "videos waiting in the queue (max)",
        ],
    );
}
