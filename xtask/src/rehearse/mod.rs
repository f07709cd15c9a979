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

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

mod instance;
mod interruption;
mod smoke;
mod stand_ins;

use instance::{debian_rootfs, Instance};
use smoke::{after_restart, after_rotation, smoke_flow, start_job_in_flight};
use stand_ins::{stand_in_database, truststore, Imds, Pki};

use stack_config::names;

use crate::paths::{project_root, scratch_dir};
use crate::postgres::PrivateCluster;
use crate::system::{ensure_installed, install_packages, is_root, output, which};

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
    /// Deploy optimised (release) builds of the services, as `cargo xtask up` does for
    /// AWS; by default debug builds, which the tests have already compiled.
    #[arg(long)]
    optimized: bool,
    /// After a passing run, leave the instances, moto and the stand-ins running (this
    /// command waits), print how to get a shell in each instance, and tear down on Ctrl-C.
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
    if let Some(sign) = ec2_host_sign(Path::new("/")) {
        bail!(
            "this machine is an EC2 instance ({sign}): cargo xtask rehearse redirects the \
             metadata address 169.254.169.254 for the whole host to its stand-in, which would \
             hide this instance's own metadata service (and its credentials) while it runs; \
             rehearse on a machine outside EC2"
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
    let _one_at_a_time = machine_lock()?;
    let dir = scratch_dir().join("rehearse");
    std::fs::create_dir_all(&dir)?;
    interruption::watch();
    let instances = dir.join("instances");
    interruption::on_interrupt(move || {
        let _ = std::fs::remove_dir_all(instances);
    });
    let started = Instant::now();
    let mut report = Report::default();
    let mut world = World::default();
    let outcome = rehearse(&dir, args.optimized, &mut world, &mut report);
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
    if args.keep && report.passed() {
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

fn rehearse(
    dir: &Path,
    optimized: bool,
    world: &mut World,
    report: &mut Report,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let (rootfs, cold) = debian_rootfs(&cache_dir())?;
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
    // In this process, not by running this executable again: a build in another clone
    // sharing the target directory may have replaced it meanwhile. moto takes any key.
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ] {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
    crate::deploy::up(crate::deploy::UpArgs::against_emulator(
        &world.endpoint,
        config,
        STACK,
        optimized,
    ))
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
/// database, as RDS does) and the services' connections are ended: the API must answer
/// with the new password, without a restart, and the worker must take a job. Then, with
/// that job in flight, both instances shut down (the worker with the job in hand) and boot
/// again. The services must come back on their own, and the job must end processed:
/// finished within the worker's grace, or handed back and done after the restart.
fn restarts(
    dir: &Path,
    world: &mut World,
    python: &Path,
    facts: &StackFacts,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rotated = format!("Rotated-{}-x", crate::api_client::unique_number());
    output(crate::system::command(python).args([
        "-c",
        ROTATE_PASSWORD,
        &world.endpoint,
        &names::database_name(STACK),
        "us-east-1",
        &rotated,
    ]))
    .context("rotate the database password in the emulator's Secrets Manager")?;
    let database = world.database.as_ref().context("no database")?;
    database.execute(
        "postgres",
        &format!("ALTER ROLE \"{}\" PASSWORD '{rotated}'", facts.db_user),
    )?;
    // The services' open connections would outlive the old password for up to their
    // lifetime; ending them now makes both tiers connect again at once, as they will
    // sooner or later after a real rotation.
    database.execute(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{}'",
            facts.db_user
        ),
    )?;
    report.pass(
        "password rotated",
        "in Secrets Manager and in the database; the services' connections ended".into(),
    );

    let runtime = tokio::runtime::Runtime::new()?;
    let rotation = runtime.block_on(after_rotation());
    match rotation {
        Ok(detail) => report.pass("new password, no restart", detail),
        Err(e) => {
            report.fail("new password, no restart", &e);
            return Err(e);
        }
    }
    let long_clip = dir.join("clip-30s.mp4");
    crate::media::generate_once(
        &crate::media::Clip::plain(1920, 1080, 30),
        &long_clip,
        "a 30 s 1080p clip",
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
endpoint, database, region, password = sys.argv[1:5]
kw = dict(endpoint_url=endpoint, region_name=region,
          aws_access_key_id="testing", aws_secret_access_key="testing")
db = boto3.client("rds", **kw).describe_db_instances(
    DBInstanceIdentifier=database)["DBInstances"][0]
sm = boto3.client("secretsmanager", **kw)
arn = db["MasterUserSecret"]["SecretArn"]
login = json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])
login["password"] = password
sm.put_secret_value(SecretId=arn, SecretString=json.dumps(login))
"#;

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

    /// Leaves everything running until this process is interrupted (moto and the
    /// metadata service live in it), then tears down.
    fn keep(&mut self) {
        println!("\nKept running (--keep) until Ctrl-C here:");
        for instance in &self.instances {
            let leader = instance.leader.unwrap_or_default();
            println!(
                "  {} instance: a shell with `nsenter -t {leader} -a bash`, its journal with \
                 `nsenter -t {leader} -a journalctl -b`",
                instance.tier
            );
        }
        println!("  the API through the web instance's nginx: http://127.0.0.1:80/api/health");
        println!("  moto: {}", self.endpoint);
        interruption::wait();
        self.tear_down();
    }
}

/// Where the root filesystem is kept between runs: in the cargo target directory when it
/// is shared by every clone on this machine (as CI's is), so a fresh clone finds it too;
/// otherwise under this clone's `target/`.
/// Held for the whole rehearsal: it uses what there is one of on a machine (port 80, the
/// metadata address, the firewall table, the machines' names, the cached root filesystem),
/// so a rehearsal from another clone waits for this one.
fn machine_lock() -> anyhow::Result<std::fs::File> {
    let path = std::env::temp_dir().join("anb-rehearse.lock");
    let lock = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "rehearse: another rehearsal is running on this machine; waiting for it (lock {})",
            path.display()
        );
        lock.lock()?;
    }
    Ok(lock)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("anb-rehearse"))
        .unwrap_or_else(|| scratch_dir().join("rehearse"))
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

// ------------------------------------------------------------------ the stack on moto

/// The rehearsal's stack configuration: the project's, with one of moto's images and the
/// log agent off (its download is not rehearsed).
fn stack_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let source = project_root().join("config/aws.toml");
    let text = rehearsal_config(&std::fs::read_to_string(&source)?)
        .with_context(|| format!("{}", source.display()))?;
    let path = dir.join("stack.toml");
    std::fs::write(&path, text)?;
    // What provision will refuse is refused here, before anything starts.
    stack_config::Config::load(Some(&path))
        .with_context(|| format!("the rehearsal's {}", path.display()))?;
    Ok(path)
}

/// The project's configuration text with the two keys the rehearsal sets; refused when
/// either is missing (a renamed key would otherwise leave the rehearsal on AWS values).
fn rehearsal_config(text: &str) -> anyhow::Result<String> {
    let mut config: toml::Table = toml::from_str(text).context("not TOML")?;
    for (section, key, value) in [
        ("instances", "ami", toml::Value::from("ami-1e749f67")),
        ("logs", "cloudwatch_agent", toml::Value::from(false)),
    ] {
        let slot = config
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
            .and_then(|table| table.get_mut(key))
            .with_context(|| format!("no {section}.{key}, which the rehearsal sets"))?;
        *slot = value;
    }
    Ok(toml::to_string(&config)?)
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
endpoint, region, web_template, worker_template, database = sys.argv[1:6]
kw = dict(endpoint_url=endpoint, region_name=region,
          aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
out = {"region": region}
for tier, template in (("web", web_template), ("worker", worker_template)):
    v = ec2.describe_launch_template_versions(
        LaunchTemplateName=template, Versions=["$Latest"])
    data = v["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]
    out[f"{tier}_user_data"] = base64.b64decode(data).decode()
db = boto3.client("rds", **kw).describe_db_instances(
    DBInstanceIdentifier=database)["DBInstances"][0]
out["db_host"], out["db_port"] = db["Endpoint"]["Address"], db["Endpoint"]["Port"]
out["db_name"] = db["DBName"]
login = json.loads(boto3.client("secretsmanager", **kw).get_secret_value(
    SecretId=db["MasterUserSecret"]["SecretArn"])["SecretString"])
out["db_user"], out["db_password"] = login["username"], login["password"]
print(json.dumps(out))
"#;

impl StackFacts {
    fn read(python: &Path, endpoint: &str) -> anyhow::Result<Self> {
        let text = output(crate::system::command(python).args([
            "-c",
            READ_FACTS,
            endpoint,
            "us-east-1",
            &names::launch_template_name(STACK, "web"),
            &names::launch_template_name(STACK, "worker"),
            &names::database_name(STACK),
        ]))
        .context("read the launch templates and the database back from moto")?;
        serde_json::from_str(&text).context("moto's answer")
    }
}

/// What marks the machine under `root` as an EC2 instance, if anything does: Nitro and Xen
/// instances name Amazon in their DMI vendor fields, and older Xen ones start their
/// hypervisor UUID with "ec2".
fn ec2_host_sign(root: &Path) -> Option<String> {
    for field in [
        "sys/class/dmi/id/sys_vendor",
        "sys/class/dmi/id/board_vendor",
        "sys/class/dmi/id/bios_vendor",
    ] {
        let value = std::fs::read_to_string(root.join(field)).unwrap_or_default();
        if value.trim().starts_with("Amazon") {
            return Some(format!("/{field} says {:?}", value.trim()));
        }
    }
    let uuid = std::fs::read_to_string(root.join("sys/hypervisor/uuid")).unwrap_or_default();
    uuid.to_ascii_lowercase()
        .starts_with("ec2")
        .then(|| format!("/sys/hypervisor/uuid is {}", uuid.trim()))
}

#[cfg(test)]
mod tests {
    use super::{ec2_host_sign, rehearsal_config};

    #[test]
    fn the_rehearsal_sets_its_two_keys_and_refuses_a_configuration_without_them() {
        let seed = stack_config::DEFAULT_TOML;
        let config = stack_config::Config::from_toml(&rehearsal_config(seed).unwrap()).unwrap();
        assert_eq!(config.instances.ami, "ami-1e749f67");
        assert!(!config.logs.cloudwatch_agent);
        let renamed = seed.replace("cloudwatch_agent =", "log_agent =");
        let error = rehearsal_config(&renamed).unwrap_err().to_string();
        assert!(error.contains("logs.cloudwatch_agent"), "{error}");
    }

    #[test]
    fn an_ec2_instance_is_recognised_by_its_dmi_vendor_or_hypervisor_uuid() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            ec2_host_sign(root.path()),
            None,
            "an empty root is no EC2 host"
        );
        let dmi = root.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(dmi.join("sys_vendor"), "QEMU\n").unwrap();
        assert_eq!(ec2_host_sign(root.path()), None);
        std::fs::write(dmi.join("board_vendor"), "Amazon EC2\n").unwrap();
        assert!(ec2_host_sign(root.path()).unwrap().contains("Amazon EC2"));

        let xen = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(xen.path().join("sys/hypervisor")).unwrap();
        std::fs::write(
            xen.path().join("sys/hypervisor/uuid"),
            "ec2e1916-9099-7caf-fd21-012345abcdef\n",
        )
        .unwrap();
        assert!(ec2_host_sign(xen.path()).unwrap().contains("ec2e1916"));
    }
}
