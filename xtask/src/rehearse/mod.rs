//! `cargo xtask rehearse`: a deploy rehearsed on this machine. The real `cargo xtask up`
//! converges a stack on moto; then one web and one worker instance boot as Debian 12
//! systemd containers (`systemd-nspawn -b`), each running as its first boot the user data
//! read back from its launch template, byte for byte. Around them the harness provides
//! what EC2 and the VPC would: the instance metadata service (IMDSv2) on
//! 169.254.169.254, the database endpoint's name (a private PostgreSQL with TLS on
//! 127.0.0.2, the RDS stand-in), the RDS certificate bundle's download (a local HTTPS
//! server on 127.0.0.3 under a harness CA the containers trust), and the AWS endpoint
//! (the boot script's one seam, `/etc/default/anb`). Then a smoke flow goes through a
//! load balancer (`balancer`: HAProxy run as the target group says) to the web
//! instance's nginx on port 80.
//!
//! The containers share this machine's network (loopback included), so nothing leaves it
//! but the containers' apt downloads from Debian's mirror (cached under `target/`). The
//! game day (`game_day`) gives each instance a network namespace of its own instead
//! (`network`).

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

mod aws;
mod balancer;
mod fleet;
mod game_day;
mod host;
mod instance;
mod interruption;
mod network;
mod report;
mod smoke;
mod stack;
mod stand_ins;

use host::{cache_dir, ec2_host_sign, free_port, machine_lock, wait_for_port};
use instance::{debian_rootfs, Instance};
use report::Report;
use smoke::{after_restart, after_rotation, smoke_flow, start_job_in_flight};
use stack::{stack_config, StackFacts};
use stand_ins::{stand_in_database, truststore, Imds, Pki};

use stack_config::names;

use crate::paths::scratch_dir;
use crate::postgres::PrivateCluster;
use crate::system::{ensure_installed, install_packages, is_root, output, which};

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
    /// The game day instead: each group's instances (several per tier, over two zones,
    /// each in its own network namespace) follow the emulator's groups and the deployed
    /// worker policy, HAProxy in front of the web tier, and scenarios under load and
    /// faults: a burst of uploads that scales the workers out and back in, a database
    /// failover, and a zone's power lost. Writes summary.json, events.json and a plot
    /// under target/rehearse/<time>/.
    #[arg(long, conflicts_with = "keep")]
    game_day: bool,
    /// A smaller game day (fewer uploads, a shorter database outage), as CI runs it.
    #[arg(long, requires = "game_day")]
    quick: bool,
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
    if !Path::new("/usr/sbin/haproxy").is_file() {
        install_packages(&["haproxy"])?; // the load balancer in front of the web instance
    }
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
    let mut report = Report::new(args.game_day);
    let mut world = World::default();
    let outcome = if args.game_day {
        game_day::game_day(
            &dir,
            args.optimized,
            game_day::Size::new(args.quick),
            &mut world,
            &mut report,
        )
    } else {
        rehearse(&dir, args.optimized, &mut world, &mut report)
    };
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
        let instance = Instance::create(dir, &rootfs, tier, tier, unit)?;
        instance.install_user_data(user_data)?;
        instance.provide(
            &pki,
            &facts,
            &instance::Reach {
                database: Ipv4Addr::new(127, 0, 0, 2),
                truststore: Ipv4Addr::new(127, 0, 0, 3),
                endpoint: world.endpoint.clone(),
            },
        )?;
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
    // The smoke flow goes through a load balancer that behaves as the target group says.
    let check = facts
        .target_group
        .health_check(f64::from(BALANCER_COMPRESSION));
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let balancer = balancer::Balancer::start(
        &dir.join("balancer"),
        listen,
        &[(
            "web".to_owned(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 80)),
        )],
        &check,
    )?;
    let waited = Instant::now();
    let entered = balancer.wait_healthy("web", check.interval * (check.healthy_threshold + 3));
    match entered {
        Ok(()) => report.pass(
            "load balancer (HAProxy)",
            format!(
                "the web instance entered after {} checks in {:.1} s (target group: {} every {} s, \
                 healthy after {}, unhealthy after {}; time compressed {BALANCER_COMPRESSION}×)",
                check.healthy_threshold,
                waited.elapsed().as_secs_f64(),
                facts.target_group.path,
                facts.target_group.interval_s,
                facts.target_group.healthy_threshold,
                facts.target_group.unhealthy_threshold,
            ),
        ),
        Err(e) => {
            report.fail("load balancer (HAProxy)", &e);
            bail!("the web instance never passed the target group's health check");
        }
    }
    smoke_flow(report, &format!("http://{listen}"))?;
    // Deregistered as a scale-in or a refresh does: no new request, those in flight end.
    let drained = Instant::now();
    balancer.deregister("web")?;
    report.pass(
        "load balancer drain",
        format!(
            "the web instance deregistered and drained in {:.1} s (deregistration delay {} s, \
             compressed {BALANCER_COMPRESSION}×)",
            drained.elapsed().as_secs_f64(),
            facts.target_group.deregistration_delay_s
        ),
    );
    drop(balancer);
    restarts(dir, world, &python, &facts, report)
}

/// How much faster than AWS's the target group's checks run in the rehearsal.
const BALANCER_COMPRESSION: u32 = 10;

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
