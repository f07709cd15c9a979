//! `cargo xtask rehearse`: a deploy rehearsed on this machine. The real `cargo xtask up`
//! converges a stack on moto; then one web and one worker instance boot as Debian 12
//! systemd containers (`systemd-nspawn -b`), each running as its first boot the user data
//! read back from its launch template, byte for byte. Around them the harness provides
//! what EC2 and the VPC would: the instance metadata service (IMDSv2) on
//! 169.254.169.254, the database endpoint's name (a private PostgreSQL with TLS on
//! 127.0.0.2, the RDS stand-in), the RDS certificate bundle's download (a local HTTPS
//! server on 127.0.0.3 under a harness CA the containers trust), and the AWS endpoint
//! (the boot script's one seam, `/etc/default/anb`). Then a smoke flow goes through the
//! web instance's nginx on port 80.
//!
//! The containers share this machine's network (loopback included), so nothing leaves it
//! but the containers' apt downloads from Debian's mirror (cached under `target/`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::postgres::PrivateCluster;
use crate::system::{ensure_installed, install_packages, is_root, output, run_command, which};
use crate::{project_root, scratch_dir};

/// What cannot be rehearsed here, said with every run.
const NOT_REHEARSED: &str = "the load balancer (the smoke flow talks to the web \
instance's nginx directly), auto scaling and instance refresh, the CloudWatch agent's \
download (logs.cloudwatch_agent = false here), IAM permissions (moto does not evaluate \
them), and RDS itself (a local PostgreSQL with TLS stands in)";

/// The stack the rehearsal converges on moto.
const STACK: &str = "rehearse";

/// Packages of the cached root filesystem: what a Debian 12 cloud image boots with that
/// `debootstrap --variant=minbase` leaves out. The boot script installs the rest itself.
const BASE_PACKAGES: &str =
    "systemd,systemd-sysv,dbus,ca-certificates,curl,iproute2,procps,gnupg,less";

#[derive(Debug, Args)]
pub struct RehearseArgs {
    /// Leave the instances, moto and the stand-ins running, and print how to get a shell
    /// in each instance and how to tear everything down later.
    #[arg(long)]
    keep: bool,
}

/// One line of the final table.
struct Step {
    name: String,
    outcome: Result<String, String>,
}

#[derive(Default)]
struct Report {
    steps: Vec<Step>,
}

impl Report {
    fn pass(&mut self, name: &str, detail: String) {
        eprintln!("rehearse: {name}: {detail}");
        self.steps.push(Step {
            name: name.to_owned(),
            outcome: Ok(detail),
        });
    }

    fn fail(&mut self, name: &str, error: &anyhow::Error) {
        eprintln!("rehearse: {name} FAILED: {error:#}");
        self.steps.push(Step {
            name: name.to_owned(),
            outcome: Err(format!("{error:#}")),
        });
    }

    fn print(&self) {
        println!("\n== cargo xtask rehearse ==");
        for step in &self.steps {
            let (verdict, detail) = match &step.outcome {
                Ok(detail) => ("pass", detail.as_str()),
                Err(error) => ("FAIL", error.as_str()),
            };
            println!("  {verdict:<5} {:<34} {detail}", step.name);
        }
        println!("  not rehearsed: {NOT_REHEARSED}");
    }

    fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.outcome.is_ok())
    }
}

pub fn run(args: RehearseArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask rehearse boots containers with systemd-nspawn, which needs root \
             (run it as root on Debian 12)"
        );
    }
    if ["systemd-nspawn", "debootstrap", "nft"]
        .iter()
        .any(|program| which(program).is_none())
    {
        install_packages(&["systemd-container", "debootstrap", "nftables"])?;
    }
    ensure_installed(&["nginx"], "nginx")?;
    ensure_installed(&["openssl"], "openssl")?;
    ensure_installed(&["ffmpeg"], "ffmpeg")?;
    let dir = scratch_dir().join("rehearse");
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let mut report = Report::default();
    let mut world = World::default();
    let outcome = rehearse(&dir, &mut world, &mut report);
    if let Err(e) = &outcome {
        report.fail("rehearsal", e);
    }
    for instance in &world.instances {
        if !report.passed() {
            instance.print_failure_details();
        }
    }
    report.print();
    println!(
        "  total {:.0} s (root filesystem {})",
        started.elapsed().as_secs_f64(),
        world.rootfs_note
    );
    if args.keep {
        world.keep();
    } else {
        world.tear_down();
    }
    if report.passed() {
        Ok(())
    } else {
        bail!("the rehearsal failed (see the table above)")
    }
}

/// Everything the rehearsal started, so it can be torn down (or kept) whatever happened.
#[derive(Default)]
struct World {
    moto: Option<Child>,
    endpoint: String,
    database: Option<PrivateCluster>,
    truststore: Option<Child>,
    imds: Option<Imds>,
    instances: Vec<Instance>,
    rootfs_note: String,
}

fn rehearse(dir: &Path, world: &mut World, report: &mut Report) -> anyhow::Result<()> {
    let began = Instant::now();
    let (rootfs, cold) = debian_rootfs(dir)?;
    world.rootfs_note = if cold {
        format!("built in {:.0} s", began.elapsed().as_secs_f64())
    } else {
        "cached".to_owned()
    };
    report.pass("Debian 12 root filesystem", world.rootfs_note.clone());

    let pki = Pki::create(&dir.join("pki"))?;

    // The AWS APIs.
    let python = crate::tools::ensure_moto()?;
    let port = free_port()?;
    let moto =
        testkit::tools::spawn_moto(&python, port, Stdio::null()).context("cannot start moto")?;
    world.moto = Some(moto);
    world.endpoint = format!("http://127.0.0.1:{port}");
    wait_for_port(("127.0.0.1", port), Duration::from_secs(60))?;

    // The real deploy, against moto.
    let config = stack_config(dir)?;
    let began = Instant::now();
    run_command(
        Command::new(std::env::current_exe()?)
            .current_dir(project_root())
            .args([
                "up",
                "--debug",
                "--no-wait",
                "--stack",
                STACK,
                "--endpoint-url",
            ])
            .arg(&world.endpoint)
            .arg("--config")
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    .context("cargo xtask up against moto")?;
    report.pass(
        "cargo xtask up (moto)",
        format!("{:.0} s", began.elapsed().as_secs_f64()),
    );
    let facts = StackFacts::read(&python, &world.endpoint)?;

    // What the VPC and RDS would provide.
    world.database = Some(stand_in_database(dir, &pki, &facts)?);
    world.truststore = Some(truststore(dir, &pki)?);
    world.imds = Some(Imds::start(&facts.region)?);
    report.pass(
        "stand-ins",
        format!(
            "database {}:{} on 127.0.0.2, RDS bundle on 127.0.0.3:443, IMDSv2 on 169.254.169.254",
            facts.db_host, facts.db_port
        ),
    );

    // The instances share this machine's network: the web instance's nginx needs port 80
    // and its API 8000.
    for port in [80, 8000] {
        if TcpListener::bind(("0.0.0.0", port)).is_err() {
            bail!(
                "port {port} is taken on this machine (a kept rehearsal? `ss -ltnp \
                 'sport = :{port}'` says who), and the web instance needs it"
            );
        }
    }
    let apt_cache = dir.join("apt-archives");
    std::fs::create_dir_all(apt_cache.join("partial"))?;
    for (tier, user_data, unit) in [
        ("web", &facts.web_user_data, "anb-api.service"),
        ("worker", &facts.worker_user_data, "anb-worker.service"),
    ] {
        let instance = Instance::create(dir, &rootfs, tier, unit)?;
        instance.install_user_data(user_data)?;
        instance.provide(&pki, &facts, &world.endpoint)?;
        world.instances.push(instance);
    }
    for instance in &mut world.instances {
        instance.boot(&apt_cache)?;
    }
    for instance in &mut world.instances {
        let name = format!("{} instance healthy", instance.tier);
        match instance.wait_healthy(Duration::from_secs(30 * 60)) {
            Ok(seconds) => report.pass(
                &name,
                format!("{seconds:.0} s from boot ({})", instance.unit_states()),
            ),
            Err(e) => {
                report.fail(&name, &e);
                bail!("the {} instance did not come up", instance.tier);
            }
        }
    }
    smoke_flow(report)?;
    restarts(dir, world, &python, &facts, report)
}

/// The second scenario: the database password is rotated (in Secrets Manager and in the
/// database, as RDS does), a job is put in flight, both instances shut down (the worker
/// with the job in hand) and boot again. The services must come back on their own with
/// the new password read again, and the job must end processed: finished within the
/// worker's grace, or handed back and done after the restart.
fn restarts(
    dir: &Path,
    world: &mut World,
    python: &Path,
    facts: &StackFacts,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rotated = format!("Rotated-{}-x", rand_suffix());
    output(Command::new(python).args([
        "-c",
        ROTATE_PASSWORD,
        &world.endpoint,
        STACK,
        "us-east-1",
        &rotated,
    ]))
    .context("rotate the database password in the emulator's Secrets Manager")?;
    let database = world.database.as_ref().context("no database")?;
    database.execute(
        "postgres",
        &format!("ALTER ROLE \"{}\" PASSWORD '{rotated}'", facts.db_user),
    )?;
    report.pass(
        "password rotated",
        "in Secrets Manager and in the database".into(),
    );

    let runtime = tokio::runtime::Runtime::new()?;
    let long_clip = dir.join("clip-30s.mp4");
    crate::bench::generate_once(
        &long_clip,
        "a 30 s 1080p clip",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30:duration=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    )?;
    let video = runtime.block_on(start_job_in_flight(&long_clip))?;
    let mut worker_stop = 0.0;
    for instance in world.instances.iter_mut().rev() {
        let seconds = instance.shut_down(Duration::from_secs(240))?;
        if instance.tier == "worker" {
            worker_stop = seconds;
        }
    }
    let status_at_stop = database
        .execute(
            &facts.db_name,
            &format!("SELECT status FROM videos WHERE id = '{video}'"),
        )?
        .trim()
        .to_owned();
    report.pass(
        "worker stopped with a job in hand",
        format!(
            "stopped in {worker_stop:.0} s; the job was {status_at_stop} ({})",
            if status_at_stop == "processed" {
                "finished within the grace"
            } else {
                "handed back"
            }
        ),
    );
    let apt_cache = dir.join("apt-archives");
    for instance in &mut world.instances {
        instance.boot(&apt_cache)?;
    }
    for instance in &mut world.instances {
        let name = format!("{} instance back after reboot", instance.tier);
        match instance.wait_healthy(Duration::from_secs(300)) {
            Ok(seconds) => report.pass(
                &name,
                format!("{seconds:.0} s ({})", instance.unit_states()),
            ),
            Err(e) => {
                report.fail(&name, &e);
                bail!("the {} instance did not come back", instance.tier);
            }
        }
    }
    let after = runtime.block_on(after_restart(&video));
    match after {
        Ok(detail) => report.pass("after restart (new password read)", detail),
        Err(e) => {
            report.fail("after restart (new password read)", &e);
            return Err(e);
        }
    }
    Ok(())
}

/// Sets the database's managed secret to a new password (what a rotation does).
const ROTATE_PASSWORD: &str = r#"
import json, sys
import boto3
endpoint, stack, region, password = sys.argv[1:5]
kw = dict(endpoint_url=endpoint, region_name=region,
          aws_access_key_id="testing", aws_secret_access_key="testing")
db = boto3.client("rds", **kw).describe_db_instances(
    DBInstanceIdentifier=f"{stack}-postgres")["DBInstances"][0]
sm = boto3.client("secretsmanager", **kw)
arn = db["MasterUserSecret"]["SecretArn"]
login = json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])
login["password"] = password
sm.put_secret_value(SecretId=arn, SecretString=json.dumps(login))
"#;

const BASE: &str = "http://127.0.0.1:80";

/// Uploads `clip` and returns its id once the worker has taken it.
async fn start_job_in_flight(clip: &Path) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let token = signup(&client, BASE, "Restart").await?;
    let bytes = tokio::fs::read(clip).await?;
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name("clip.mp4")
        .mime_str("video/mp4")?;
    let form = reqwest::multipart::Form::new()
        .text("title", "In flight")
        .part("video_file", part);
    let response = client
        .post(format!("{BASE}/api/videos/upload"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await?;
    let body: serde_json::Value = response.json().await?;
    let video = body["task_id"].as_str().context("no task_id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let detail: serde_json::Value = client
            .get(format!("{BASE}/api/videos/{video}"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        match detail["status"].as_str() {
            Some("processing") => return Ok(video),
            Some("processed") => bail!("the job finished before the worker could be stopped"),
            _ if Instant::now() > deadline => bail!("the worker did not take the job: {detail}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A login (the API reads the rotated password again at start) and the job in flight
/// processed.
async fn after_restart(video: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let token = signup(&client, BASE, "Again").await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let public: serde_json::Value = client
            .get(format!("{BASE}/api/public/videos?limit=100"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let listed = public
            .as_array()
            .is_some_and(|all| all.iter().any(|v| v["video_id"] == video));
        if listed {
            return Ok("signup and login work; the job in flight is processed and public".into());
        }
        if Instant::now() > deadline {
            bail!("the job in flight is not processed 5 min after the restart");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl World {
    fn tear_down(&mut self) {
        for instance in &mut self.instances {
            instance.stop();
            instance.remove();
        }
        if let Some(imds) = self.imds.take() {
            imds.stop();
        }
        if let Some(mut nginx) = self.truststore.take() {
            crate::system::stop(&mut nginx);
        }
        if let Some(database) = self.database.take() {
            database.stop();
        }
        if let Some(mut moto) = self.moto.take() {
            let _ = moto.kill();
            let _ = moto.wait();
        }
    }

    fn keep(&mut self) {
        println!("\nKept running (--keep):");
        for instance in &self.instances {
            println!(
                "  {} instance: a shell with `nsenter -t {} -a bash`; its journal with `nsenter -t {} -a journalctl -b`",
                instance.tier,
                instance.leader.unwrap_or_default(),
                instance.leader.unwrap_or_default()
            );
        }
        println!("  moto: {}", self.endpoint);
        println!(
            "  tear down: kill the processes above (`pkill -f 'systemd-nspawn.*rehearse-'`, \
             `pkill -f moto.server`), `nft delete table ip {IMDS_TABLE}`, and \
             `rm -rf target/rehearse/instances`"
        );
        // Dropping these would stop them.
        std::mem::forget(self.database.take());
        std::mem::forget(self.truststore.take());
        std::mem::forget(self.moto.take());
        if let Some(imds) = self.imds.take() {
            std::mem::forget(imds);
        }
        std::mem::forget(std::mem::take(&mut self.instances));
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(address: (&str, u16), limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nothing listens on {}:{} after {limit:?}",
                address.0,
                address.1
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// ------------------------------------------------------------------ root filesystem

/// The cached Debian 12 root filesystem (built once with debootstrap from Debian's
/// mirror); returns its path and whether it was built now.
fn debian_rootfs(dir: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let rootfs = dir.join("debian12-rootfs");
    let marker = rootfs.join(".anb-rootfs");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == BASE_PACKAGES) {
        return Ok((rootfs, false));
    }
    let building = dir.join("debian12-rootfs.building");
    let _ = std::fs::remove_dir_all(&building);
    let _ = std::fs::remove_dir_all(&rootfs);
    eprintln!("rehearse: building a Debian 12 root filesystem (debootstrap, about a minute)");
    run_command(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={BASE_PACKAGES}")])
            .args(["bookworm"])
            .arg(&building)
            .arg("http://deb.debian.org/debian")
            .stdout(Stdio::null()),
    )?;
    // As on a cloud image: security updates, and no root password prompt on the console.
    std::fs::write(
        building.join("etc/apt/sources.list"),
        "deb http://deb.debian.org/debian bookworm main\n\
         deb http://deb.debian.org/debian bookworm-updates main\n\
         deb http://deb.debian.org/debian-security bookworm-security main\n",
    )?;
    std::fs::write(building.join(".anb-rootfs"), BASE_PACKAGES)?;
    std::fs::rename(&building, &rootfs)?;
    Ok((rootfs, true))
}

// ------------------------------------------------------------------------- PKI

/// A harness certificate authority (trusted by the containers, as AWS's roots are on
/// EC2) and the server certificates the stand-ins present.
struct Pki {
    ca: PathBuf,
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = dir.join("ca.pem");
        if !ca.exists() {
            run_command(
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                    ])
                    .args(["-subj", "/CN=ANB rehearsal CA"])
                    .arg("-keyout")
                    .arg(dir.join("ca.key"))
                    .arg("-out")
                    .arg(&ca)
                    .stderr(Stdio::null()),
            )?;
        }
        Ok(Self {
            ca,
            dir: dir.to_owned(),
        })
    }

    /// A certificate for `host` signed by the CA: (certificate, key).
    fn issue(&self, host: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("{host}.pem"));
        let key = self.dir.join(format!("{host}.key"));
        let request = self.dir.join(format!("{host}.csr"));
        let extensions = self.dir.join(format!("{host}.ext"));
        std::fs::write(&extensions, format!("subjectAltName=DNS:{host}\n"))?;
        run_command(
            Command::new("openssl")
                .args(["req", "-newkey", "rsa:2048", "-nodes"])
                .args(["-subj", &format!("/CN={host}")])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&request)
                .stderr(Stdio::null()),
        )?;
        run_command(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "3650", "-in"])
                .arg(&request)
                .arg("-CA")
                .arg(&self.ca)
                .arg("-CAkey")
                .arg(self.dir.join("ca.key"))
                .args(["-CAcreateserial", "-extfile"])
                .arg(&extensions)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null()),
        )?;
        Ok((cert, key))
    }
}

// ------------------------------------------------------------------ the stack on moto

/// The rehearsal's stack configuration: the project's, with one of moto's images and the
/// log agent off (its download is not rehearsed).
fn stack_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(project_root().join("config/aws.toml"))?;
    let text = text
        .replace("ami = \"\"", "ami = \"ami-1e749f67\"")
        .replace("cloudwatch_agent = true", "cloudwatch_agent = false");
    let path = dir.join("stack.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// What the harness reads back from the emulator: each tier's user data as EC2 would
/// hand it to the instance, and the database's endpoint and managed master login.
#[derive(serde::Deserialize)]
struct StackFacts {
    web_user_data: String,
    worker_user_data: String,
    region: String,
    db_host: String,
    db_port: u16,
    db_name: String,
    db_user: String,
    db_password: String,
}

/// Reads the facts with boto3 (moto's own dependency), so xtask links no AWS SDK.
const READ_FACTS: &str = r#"
import base64, json, sys
import boto3
endpoint, stack, region = sys.argv[1:4]
kw = dict(endpoint_url=endpoint, region_name=region,
          aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
out = {"region": region}
for tier in ("web", "worker"):
    v = ec2.describe_launch_template_versions(
        LaunchTemplateName=f"{stack}-{tier}-template", Versions=["$Latest"])
    data = v["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]
    out[f"{tier}_user_data"] = base64.b64decode(data).decode()
db = boto3.client("rds", **kw).describe_db_instances(
    DBInstanceIdentifier=f"{stack}-postgres")["DBInstances"][0]
out["db_host"], out["db_port"] = db["Endpoint"]["Address"], db["Endpoint"]["Port"]
out["db_name"] = db["DBName"]
login = json.loads(boto3.client("secretsmanager", **kw).get_secret_value(
    SecretId=db["MasterUserSecret"]["SecretArn"])["SecretString"])
out["db_user"], out["db_password"] = login["username"], login["password"]
print(json.dumps(out))
"#;

impl StackFacts {
    fn read(python: &Path, endpoint: &str) -> anyhow::Result<Self> {
        let text =
            output(Command::new(python).args(["-c", READ_FACTS, endpoint, STACK, "us-east-1"]))
                .context("read the launch templates and the database back from moto")?;
        serde_json::from_str(&text).context("moto's answer")
    }
}

// ----------------------------------------------------------------- the stand-ins

/// A private PostgreSQL on 127.0.0.2 at the endpoint's port, with TLS under a certificate
/// for the endpoint's name, the managed login's role and the database, and password
/// authentication over TLS only (as `rds.force_ssl` does).
fn stand_in_database(dir: &Path, pki: &Pki, facts: &StackFacts) -> anyhow::Result<PrivateCluster> {
    // Kept between runs (a server left running by an interrupted run is reused); the
    // database itself is made anew.
    let data_dir = dir.join("rds");
    let (cert, key) = pki.issue(&facts.db_host)?;
    let cluster =
        PrivateCluster::start_listening(&data_dir, "127.0.0.2", facts.db_port, "postgres", "")?;
    cluster.install_files(&[("server.crt", &cert), ("server.key", &key)])?;
    for setting in [
        "ssl = on",
        "ssl_cert_file = 'server.crt'",
        "ssl_key_file = 'server.key'",
    ] {
        cluster.execute("postgres", &format!("ALTER SYSTEM SET {setting}"))?;
    }
    let password = facts.db_password.replace('\'', "''");
    let user = &facts.db_user;
    cluster.drop_database(&facts.db_name)?;
    cluster.execute(
        "postgres",
        &format!(
            "DO $$ BEGIN CREATE ROLE \"{user}\"; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ),
    )?;
    cluster.execute(
        "postgres",
        &format!("ALTER ROLE \"{user}\" LOGIN PASSWORD '{password}'"),
    )?;
    cluster.execute(
        "postgres",
        &format!("CREATE DATABASE \"{}\" OWNER \"{user}\"", facts.db_name),
    )?;
    cluster.set_hba(
        "local all all trust\n\
         hostssl all all 127.0.0.0/8 scram-sha-256\n",
    )?;
    Ok(cluster)
}

/// `https://truststore.pki.rds.amazonaws.com/<region>/<region>-bundle.pem`, served on
/// 127.0.0.3:443 by nginx: the bundle is the harness CA, which signed the stand-in
/// database's certificate.
fn truststore(dir: &Path, pki: &Pki) -> anyhow::Result<Child> {
    let host = "truststore.pki.rds.amazonaws.com";
    let (cert, key) = pki.issue(host)?;
    let root = dir.join("truststore");
    let region_dir = root.join("www/us-east-1");
    std::fs::create_dir_all(&region_dir)?;
    std::fs::copy(&pki.ca, region_dir.join("us-east-1-bundle.pem"))?;
    std::fs::create_dir_all(root.join("logs"))?;
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\npid {root}/nginx.pid;\nerror_log {root}/logs/error.log;\n\
             events {{}}\nhttp {{\n  access_log {root}/logs/access.log;\n\
               server {{\n    listen 127.0.0.3:443 ssl;\n    server_name {host};\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 root {root}/www;\n  }}\n}}\n",
            root = root.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start nginx for the RDS bundle")?;
    wait_for_port(("127.0.0.3", 443), Duration::from_secs(10))?;
    Ok(child)
}

/// The instance metadata service, IMDSv2 only (the launch templates require tokens):
/// region, instance identity, and the instance role's credentials, which moto accepts.
struct Imds {
    stop: Arc<AtomicBool>,
}

const IMDS_ADDRESS: &str = "169.254.169.254";

/// The nftables table that sends 169.254.169.254:80 to the metadata service.
const IMDS_TABLE: &str = "anb_rehearse_imds";

impl Imds {
    /// Listens on a free loopback port; connections to 169.254.169.254:80 are sent there
    /// (DNAT), so port 80 stays free for the web instance's nginx, as on EC2 where the
    /// metadata service is not on the instance.
    fn start(region: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", IMDS_TABLE])
            .stderr(Stdio::null())
            .status();
        for rule in [
            format!("add table ip {IMDS_TABLE}"),
            format!(
                "add chain ip {IMDS_TABLE} output {{ type nat hook output priority -100; }}"
            ),
            format!(
                "add rule ip {IMDS_TABLE} output ip daddr {IMDS_ADDRESS} tcp dport 80 dnat to 127.0.0.1:{port}"
            ),
        ] {
            run_command(Command::new("nft").arg(rule))
                .context("route 169.254.169.254 to the metadata service (nftables)")?;
        }
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let region = region.to_owned();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let region = region.clone();
                        std::thread::spawn(move || {
                            let _ = serve_imds(stream, &region);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self { stop })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", IMDS_TABLE])
            .status();
    }
}

/// The token every metadata request must carry.
const IMDS_TOKEN: &str = "rehearsal-imds-token";
const ROLE: &str = "rehearsal-instance";

fn serve_imds(stream: TcpStream, region: &str) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut token = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "x-aws-ec2-metadata-token" => token = Some(value.trim().to_owned()),
            "content-length" => length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let expires = chrono_free_expiry();
    let (status, text) = match (method, path) {
        ("PUT", "/latest/api/token") => (200, IMDS_TOKEN.to_owned()),
        _ if token.as_deref() != Some(IMDS_TOKEN) => (401, String::new()),
        ("GET", "/latest/meta-data/placement/region") => (200, region.to_owned()),
        ("GET", "/latest/meta-data/placement/availability-zone") => (200, format!("{region}a")),
        ("GET", "/latest/meta-data/instance-id") => (200, "i-0rehearsal".to_owned()),
        ("GET", "/latest/meta-data/iam/security-credentials/") => (200, ROLE.to_owned()),
        ("GET", p) if p == format!("/latest/meta-data/iam/security-credentials/{ROLE}") => (
            200,
            serde_json::json!({
                "Code": "Success", "Type": "AWS-HMAC", "LastUpdated": "2026-01-01T00:00:00Z",
                "AccessKeyId": "testing", "SecretAccessKey": "testing", "Token": "testing",
                "Expiration": expires,
            })
            .to_string(),
        ),
        ("GET", "/latest/dynamic/instance-identity/document") => (
            200,
            serde_json::json!({"region": region, "accountId": "123456789012",
                               "instanceId": "i-0rehearsal", "availabilityZone": format!("{region}a")})
            .to_string(),
        ),
        _ => (404, String::new()),
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    Ok(())
}

/// Six hours from now, in the format IMDS uses (UTC, RFC 3339), from the system clock.
fn chrono_free_expiry() -> String {
    let out = Command::new("date")
        .args(["-u", "-d", "+6 hours", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "2099-01-01T00:00:00Z".to_owned())
}

// -------------------------------------------------------------------- instances

/// One instance: a copy of the root filesystem booted by systemd-nspawn.
struct Instance {
    tier: &'static str,
    /// The unit whose start means the instance is healthy.
    unit: &'static str,
    root: PathBuf,
    log: PathBuf,
    nspawn: Option<Child>,
    /// PID of the container's init (systemd), to run commands inside with nsenter.
    leader: Option<u32>,
    booted: Option<Instant>,
}

impl Instance {
    fn create(
        dir: &Path,
        rootfs: &Path,
        tier: &'static str,
        unit: &'static str,
    ) -> anyhow::Result<Self> {
        let root = dir.join("instances").join(tier);
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(root.parent().unwrap_or(dir))?;
        run_command(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(rootfs)
                .arg(&root),
        )?;
        Ok(Self {
            tier,
            unit,
            log: dir.join("instances").join(format!("{tier}.console.log")),
            root,
            nspawn: None,
            leader: None,
            booted: None,
        })
    }

    /// The user data where cloud-init keeps it, and a unit that runs it once at first
    /// boot, as cloud-init does on EC2 (output appended to /var/log/cloud-init-output.log).
    fn install_user_data(&self, user_data: &str) -> anyhow::Result<()> {
        let cloud = self.root.join("var/lib/cloud/instance");
        std::fs::create_dir_all(&cloud)?;
        let script = cloud.join("user-data.txt");
        std::fs::write(&script, user_data)?;
        run_command(Command::new("chmod").arg("0700").arg(&script))?;
        let unit = "rehearsal-user-data.service";
        std::fs::write(
            self.root.join("etc/systemd/system").join(unit),
            "[Unit]\n\
             Description=Run the instance's user data once, as cloud-init does on EC2\n\
             After=network-online.target\nWants=network-online.target\n\
             ConditionPathExists=!/var/lib/cloud/instance/boot-finished\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\nTimeoutStartSec=0\n\
             ExecStart=/var/lib/cloud/instance/user-data.txt\n\
             ExecStartPost=/usr/bin/touch /var/lib/cloud/instance/boot-finished\n\
             StandardOutput=append:/var/log/cloud-init-output.log\nStandardError=inherit\n\n\
             [Install]\nWantedBy=multi-user.target\n",
        )?;
        let wants = self.root.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants)?;
        let link = wants.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), link)?;
        Ok(())
    }

    /// What EC2 and the VPC provide around the instance: name resolution for the
    /// database endpoint and the RDS bundle's host, trust in the harness CA (as in AWS's
    /// roots on a real image), and the AWS endpoint through the boot script's seam.
    fn provide(&self, pki: &Pki, facts: &StackFacts, endpoint: &str) -> anyhow::Result<()> {
        let hosts = self.root.join("etc/hosts");
        let mut text = std::fs::read_to_string(&hosts).unwrap_or_default();
        text.push_str(&format!(
            "127.0.0.2 {}\n127.0.0.3 truststore.pki.rds.amazonaws.com\n",
            facts.db_host
        ));
        std::fs::write(&hosts, text)?;
        std::fs::write(
            self.root.join("etc/hostname"),
            format!("rehearse-{}\n", self.tier),
        )?;
        let anchors = self.root.join("usr/local/share/ca-certificates");
        std::fs::create_dir_all(&anchors)?;
        std::fs::copy(&pki.ca, anchors.join("anb-rehearsal.crt"))?;
        run_command(
            Command::new("chroot")
                .arg(&self.root)
                .args(["update-ca-certificates", "--fresh"])
                .stdout(Stdio::null()),
        )?;
        std::fs::write(
            self.root.join("etc/default/anb"),
            format!("# cargo xtask rehearse: AWS calls go to the emulator\nAWS_ENDPOINT_URL={endpoint}\n"),
        )?;
        Ok(())
    }

    fn boot(&mut self, apt_cache: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("systemd-nspawn")
            .args(["--register=no", "--keep-unit", "-q", "-b"])
            .arg("-D")
            .arg(&self.root)
            .arg(format!("--machine=rehearse-{}", self.tier))
            .arg(format!(
                "--bind={}:/var/cache/apt/archives",
                apt_cache.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start systemd-nspawn")?;
        self.booted = Some(Instant::now());
        let nspawn = child.id();
        self.nspawn = Some(child);
        // The container's init is the first `systemd` below the nspawn process.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.leader.is_none() {
            self.leader = find_descendant(nspawn, "systemd");
            if Instant::now() > deadline {
                bail!(
                    "the {} container did not start systemd; see {}",
                    self.tier,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs `args` inside the container; its standard output.
    fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let leader = self.leader.context("not booted")?;
        output(
            Command::new("nsenter")
                .args(["-t", &leader.to_string(), "-a", "--"])
                .args(args),
        )
    }

    /// Waits until the user data has run and the tier's service is active; seconds since
    /// boot.
    fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<f64> {
        let booted = self.booted.context("not booted")?;
        let mut last_report = Instant::now();
        loop {
            let user_data = self
                .exec(&[
                    "systemctl",
                    "show",
                    "-p",
                    "ActiveState,Result,ConditionResult",
                    "rehearsal-user-data.service",
                ])
                .unwrap_or_default();
            // On a later boot the user data is skipped (it runs once, as on EC2).
            let user_data_done = user_data.contains("ActiveState=active")
                || user_data.contains("ConditionResult=no");
            if user_data.contains("Result=exit-code") || user_data.contains("ActiveState=failed") {
                bail!("the user data failed ({})", user_data.replace('\n', " "));
            }
            let service = self
                .exec(&["systemctl", "is-active", self.unit])
                .unwrap_or_default();
            if user_data_done && service.trim() == "active" {
                return Ok(booted.elapsed().as_secs_f64());
            }
            if booted.elapsed() > limit {
                bail!(
                    "not healthy after {limit:?} (user data: {})",
                    user_data.replace('\n', " ")
                );
            }
            if let Some(child) = self.nspawn.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the container exited ({status}); see {}",
                        self.log.display()
                    );
                }
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "rehearse: waiting for the {} instance ({:.0} s since boot; the first boot installs packages)",
                    self.tier,
                    booted.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn unit_states(&self) -> String {
        ["rehearsal-user-data.service", self.unit]
            .iter()
            .map(|unit| {
                let state = self
                    .exec(&["systemctl", "show", "-p", "ActiveState", "--value", unit])
                    .unwrap_or_else(|_| "unknown".into());
                format!("{unit} {}", state.trim())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn print_failure_details(&self) {
        if self.leader.is_none() {
            return;
        }
        println!("\n-- {} instance: {}", self.tier, self.unit_states());
        for (what, args) in [
            (
                "journal (last 40 lines)",
                vec!["journalctl", "-b", "--no-pager", "-n", "40"],
            ),
            (
                "boot script log (last 30 lines)",
                vec!["tail", "-n", "30", "/var/log/cloud-init-output.log"],
            ),
        ] {
            println!("-- {} {what}:", self.tier);
            match self.exec(&args) {
                Ok(text) => println!("{text}"),
                Err(e) => println!("(cannot read it: {e:#})"),
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            crate::system::stop(&mut child);
        }
    }

    /// Shuts the instance down as `poweroff` would (systemd stops every unit, each within
    /// its own stop timeout) and waits for it; seconds taken.
    fn shut_down(&mut self, limit: Duration) -> anyhow::Result<f64> {
        let began = Instant::now();
        let Some(mut child) = self.nspawn.take() else {
            bail!("the {} instance is not running", self.tier)
        };
        self.exec(&["systemctl", "poweroff"])?;
        loop {
            if child.try_wait()?.is_some() {
                self.leader = None;
                return Ok(began.elapsed().as_secs_f64());
            }
            if began.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the {} instance did not shut down within {limit:?}",
                    self.tier
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The first process named `name` below `pid` (breadth first).
fn find_descendant(pid: u32, name: &str) -> Option<u32> {
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == name {
                return Some(child);
            }
            queue.insert(0, child);
        }
    }
    None
}

// ------------------------------------------------------------------- smoke flow

/// Signup, login, upload through the web instance's nginx; the worker instance processes
/// it; download; a second player votes; the rankings name the first.
fn smoke_flow(report: &mut Report) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async { smoke(report).await })
}

async fn smoke(report: &mut Report) -> anyhow::Result<()> {
    let base = "http://127.0.0.1:80";
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let clip = scratch_dir().join("rehearse/clip.mp4");
    if !clip.exists() {
        crate::bench::generate_once(
            &clip,
            "a 5 s 720p clip",
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1280x720:rate=30:duration=5",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ],
        )?;
    }
    let step =
        |report: &mut Report, name: &str, result: anyhow::Result<String>| -> anyhow::Result<()> {
            match result {
                Ok(detail) => {
                    report.pass(name, detail);
                    Ok(())
                }
                Err(e) => {
                    report.fail(name, &e);
                    Err(e)
                }
            }
        };
    let player = signup(&client, base, "Rehearsal").await;
    step(
        report,
        "signup + login (via nginx)",
        player
            .as_ref()
            .map(|_| "201, 200".to_owned())
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    )?;
    let token = player?;
    let started = Instant::now();
    let upload = async {
        let bytes = tokio::fs::read(&clip).await?;
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("clip.mp4")
            .mime_str("video/mp4")?;
        let form = reqwest::multipart::Form::new()
            .text("title", "Rehearsal")
            .part("video_file", part);
        let response = client
            .post(format!("{base}/api/videos/upload"))
            .bearer_auth(&token)
            .multipart(form)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        anyhow::ensure!(status.as_u16() == 201, "upload answered {status}: {body}");
        body["task_id"]
            .as_str()
            .map(str::to_owned)
            .context("no task_id")
    }
    .await;
    step(
        report,
        "upload",
        upload
            .as_ref()
            .map(|id| format!("201, video {id}"))
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    )?;
    let video = upload?;
    let processed = async {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let detail: serde_json::Value = client
                .get(format!("{base}/api/videos/{video}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            match detail["status"].as_str() {
                Some("processed") => {
                    return Ok::<_, anyhow::Error>(
                        detail["processed_url"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                }
                Some("failed") => bail!("the worker failed it: {detail}"),
                _ if Instant::now() > deadline => bail!("not processed after 5 min: {detail}"),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    .await;
    step(
        report,
        "processed by the worker instance",
        processed
            .as_ref()
            .map(|_| {
                format!(
                    "{:.1} s after the upload's 201",
                    started.elapsed().as_secs_f64()
                )
            })
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    )?;
    let url = processed?;
    let download = async {
        let response = client.get(&url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "download answered {}",
            response.status()
        );
        let bytes = response.bytes().await?;
        anyhow::ensure!(bytes.len() > 1000 && &bytes[4..8] == b"ftyp", "not an MP4");
        Ok(format!("{} bytes of MP4", bytes.len()))
    }
    .await;
    step(report, "download processed", download)?;
    let vote = async {
        let fan = signup(&client, base, "Fan").await?;
        let response = client
            .post(format!("{base}/api/public/videos/{video}/vote"))
            .bearer_auth(&fan)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().as_u16() == 200,
            "vote answered {}",
            response.status()
        );
        // The public snapshot refreshes every few seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rankings: serde_json::Value = client
                .get(format!("{base}/api/public/rankings"))
                .send()
                .await?
                .json()
                .await?;
            let first = &rankings[0];
            if first["votes"].as_i64() == Some(1) {
                return Ok(format!("first: {} with 1 vote", first["username"]));
            }
            if Instant::now() > deadline {
                bail!("rankings do not show the vote: {rankings}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    .await;
    step(report, "vote + rankings", vote)?;
    Ok(())
}

async fn signup(client: &reqwest::Client, base: &str, first: &str) -> anyhow::Result<String> {
    let email = format!(
        "{}.{}@example.com",
        first.to_lowercase(),
        std::process::id() ^ rand_suffix()
    );
    let body = serde_json::json!({
        "first_name": first, "last_name": "Prueba", "email": email,
        "password1": "Canasta2026", "password2": "Canasta2026",
        "city": "Cali", "country": "Colombia",
    });
    let response = client
        .post(format!("{base}/api/auth/signup"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().as_u16() == 201,
        "signup answered {}: {}",
        response.status(),
        response.text().await?
    );
    let login: serde_json::Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({"email": email, "password": "Canasta2026"}))
        .send()
        .await?
        .json()
        .await?;
    login["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token")
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}
