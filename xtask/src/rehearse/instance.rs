//! The instances: a cached Debian 12 root filesystem, copied per instance, given its user
//! data and what EC2 provides, booted with systemd-nspawn, and reached with nsenter.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::stand_ins::Pki;
use super::{StackFacts, BASE_PACKAGES};
use crate::system::{output, run_command};

// ------------------------------------------------------------------ root filesystem

/// The cached Debian 12 root filesystem (built once with debootstrap from Debian's
/// mirror); returns its path and whether it was built now.
pub(super) fn debian_rootfs(dir: &Path) -> anyhow::Result<(PathBuf, bool)> {
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
        crate::system::command("debootstrap")
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

/// The packages a tier's user data installs (`install_packages`' own list and the tier's
/// call of it), sorted; an error when the script no longer reads as expected.
pub(super) fn user_data_packages(user_data: &str) -> anyhow::Result<Vec<String>> {
    let common = user_data
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("retry apt-get install -y -q --no-install-recommends ")
                .and_then(|rest| rest.strip_suffix("\"$@\""))
        })
        .context("the user data's install_packages has no apt-get install line")?;
    let tier = user_data
        .lines()
        .find_map(|l| l.trim().strip_prefix("install_packages "))
        .context("the user data calls no install_packages")?;
    let mut packages: Vec<String> = common
        .split_whitespace()
        .chain(tier.split_whitespace())
        .map(str::to_owned)
        .collect();
    packages.sort();
    packages.dedup();
    Ok(packages)
}

/// `rootfs` with `packages` installed (as a team bakes an AMI), cached beside it: the
/// user data's own `apt-get install` then finds them installed, so a boot takes seconds
/// instead of the half minute or more of unpacking. The quick game day's instances boot
/// from it, so that CI can afford its many boots; the full one installs as the seed's
/// stock image does. The path, and whether it was baked now.
pub(super) fn baked_rootfs(
    rootfs: &Path,
    packages: &[String],
    apt_cache: &Path,
) -> anyhow::Result<(PathBuf, bool)> {
    let key = packages.join(" ");
    let baked = rootfs.with_file_name(format!("debian12-with-{}", packages.join("-")));
    let marker = baked.join(".anb-baked");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == key) {
        return Ok((baked, false));
    }
    let building = baked.with_extension("building");
    let _ = std::fs::remove_dir_all(&building);
    let _ = std::fs::remove_dir_all(&baked);
    eprintln!("rehearse: baking a root filesystem with {key} (once, about a minute)");
    run_command(
        crate::system::command("cp")
            .args(["-a", "--reflink=auto"])
            .arg(rootfs)
            .arg(&building),
    )?;
    std::fs::create_dir_all(apt_cache.join("partial"))?;
    run_command(
        crate::system::command("systemd-nspawn")
            .args([
                "--register=no",
                "--keep-unit",
                "-q",
                "--resolv-conf=copy-host",
            ])
            .arg("-D")
            .arg(&building)
            .arg(format!(
                "--bind={}:/var/cache/apt/archives",
                apt_cache.display()
            ))
            .args([
                "sh",
                "-c",
                &format!(
                    "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o \
                     DPkg::Options::=--force-unsafe-io install -y -q --no-install-recommends \
                     {key}"
                ),
            ])
            .stdout(Stdio::null()),
    )?;
    std::fs::write(building.join(".anb-baked"), &key)?;
    std::fs::rename(&building, &baked)?;
    Ok((baked, true))
}

// -------------------------------------------------------------------- instances

/// The target group's health check (provision's `health_check_path`), through nginx.
const LOAD_BALANCER_HEALTH_CHECK: &str = "http://127.0.0.1:80/api/health/live";

/// Where an instance finds what the harness serves: the database stand-in, the RDS
/// bundle's host, and the AWS endpoint.
pub(super) struct Reach {
    pub(super) database: std::net::Ipv4Addr,
    pub(super) truststore: std::net::Ipv4Addr,
    pub(super) endpoint: String,
}

/// Where a booting instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    UserDataRunning,
    ServiceStarting,
    /// The service is active; the web tier's health check does not pass yet.
    HealthCheckFailing,
    Healthy,
}

impl Progress {
    fn describe(self) -> &'static str {
        match self {
            Self::UserDataRunning => "user data running",
            Self::ServiceStarting => "service starting",
            Self::HealthCheckFailing => "service up, health check not yet passing",
            Self::Healthy => "healthy",
        }
    }
}

/// One instance: a copy of the root filesystem booted by systemd-nspawn.
pub(super) struct Instance {
    pub(super) tier: &'static str,
    /// Its machine's and root directory's name: the tier, or on the game day the EC2
    /// instance id it stands for.
    pub(super) name: String,
    /// Its own network namespace (the game day), or None to share this machine's.
    pub(super) netns: Option<super::network::Netns>,
    /// The unit whose start means the instance is healthy.
    pub(super) unit: &'static str,
    pub(super) root: PathBuf,
    pub(super) log: PathBuf,
    pub(super) nspawn: Option<Child>,
    /// PID of the container's init (systemd), to run commands inside with nsenter.
    pub(super) leader: Option<u32>,
    pub(super) booted: Option<Instant>,
}

impl Instance {
    pub(super) fn create(
        dir: &Path,
        rootfs: &Path,
        name: &str,
        tier: &'static str,
        unit: &'static str,
    ) -> anyhow::Result<Self> {
        let root = dir.join("instances").join(name);
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(root.parent().unwrap_or(dir))?;
        run_command(
            crate::system::command("cp")
                .args(["-a", "--reflink=auto"])
                .arg(rootfs)
                .arg(&root),
        )?;
        // dpkg syncs every file it unpacks, which EC2's volumes absorb but which makes the
        // user data's installs here several times slower when containers boot together on
        // this machine's disk; the instance's files are thrown away with it. The package
        // lists' translations are not needed either.
        std::fs::write(
            root.join("etc/dpkg/dpkg.cfg.d/rehearsal-unsafe-io"),
            "force-unsafe-io\n",
        )?;
        std::fs::write(
            root.join("etc/apt/apt.conf.d/99rehearsal-no-translations"),
            "Acquire::Languages \"none\";\n",
        )?;
        Ok(Self {
            tier,
            name: name.to_owned(),
            netns: None,
            unit,
            log: dir.join("instances").join(format!("{name}.console.log")),
            root,
            nspawn: None,
            leader: None,
            booted: None,
        })
    }

    /// The user data where cloud-init keeps it, and a unit that runs it once at first
    /// boot, as cloud-init does on EC2 (output appended to /var/log/cloud-init-output.log).
    pub(super) fn install_user_data(&self, user_data: &str) -> anyhow::Result<()> {
        let cloud = self.root.join("var/lib/cloud/instance");
        std::fs::create_dir_all(&cloud)?;
        let script = cloud.join("user-data.txt");
        std::fs::write(&script, user_data)?;
        run_command(crate::system::command("chmod").arg("0700").arg(&script))?;
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
    pub(super) fn provide(
        &self,
        pki: &Pki,
        facts: &StackFacts,
        reach: &Reach,
    ) -> anyhow::Result<()> {
        let hosts = self.root.join("etc/hosts");
        let mut text = std::fs::read_to_string(&hosts).unwrap_or_default();
        text.push_str(&format!(
            "{} {}\n{} truststore.pki.rds.amazonaws.com\n",
            reach.database, facts.db_host, reach.truststore
        ));
        std::fs::write(&hosts, text)?;
        std::fs::write(
            self.root.join("etc/hostname"),
            format!("rehearse-{}\n", self.name),
        )?;
        let anchors = self.root.join("usr/local/share/ca-certificates");
        std::fs::create_dir_all(&anchors)?;
        std::fs::copy(&pki.ca, anchors.join("anb-rehearsal.crt"))?;
        run_command(
            crate::system::command("chroot")
                .arg(&self.root)
                .args(["update-ca-certificates", "--fresh"])
                .stdout(Stdio::null()),
        )?;
        std::fs::write(
            self.root.join("etc/default/anb"),
            format!(
                "# cargo xtask rehearse: AWS calls go to the emulator\nAWS_ENDPOINT_URL={}\n",
                reach.endpoint
            ),
        )?;
        Ok(())
    }

    pub(super) fn boot(&mut self, apt_cache: &Path) -> anyhow::Result<()> {
        if super::interruption::interrupted() {
            bail!("interrupted: the {} instance is not booted", self.tier);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut nspawn = crate::system::command("systemd-nspawn");
        nspawn
            .args(["--register=no", "--keep-unit", "-q", "-b"])
            .arg("-D")
            .arg(&self.root)
            .arg(format!("--machine=rehearse-{}", self.name));
        if let Some(netns) = &self.netns {
            // Its own interface; the name server is this machine's, reached through NAT.
            nspawn
                .arg(format!("--network-namespace-path={}", netns.path()))
                .arg("--resolv-conf=copy-host");
        }
        let child = nspawn
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
        super::interruption::started(nspawn);
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
    pub(super) fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let leader = self.leader.context("not booted")?;
        output(
            crate::system::command("nsenter")
                .args(["-t", &leader.to_string(), "-a", "--"])
                .args(args),
        )
    }

    /// Waits until the user data has run, the tier's service is active and, on the web
    /// tier, nginx answers the load balancer's health check (the unit is active as soon as
    /// the API process starts, a few seconds before it listens); seconds since boot.
    pub(super) fn wait_healthy(&mut self, limit: Duration) -> anyhow::Result<f64> {
        let booted = self.booted.context("not booted")?;
        let mut wait = stack_config::progress::Wait::start(
            format!("the {} instance to be healthy", self.tier),
            "the first boot installs packages",
        );
        loop {
            let progress = self.progress()?;
            if progress == Progress::Healthy {
                wait.done("healthy");
                return Ok(booted.elapsed().as_secs_f64());
            }
            if booted.elapsed() > limit {
                bail!("not healthy after {limit:?} ({})", progress.describe());
            }
            wait.status(progress.describe(), None);
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// One look at a booted instance: how far it is, or an error once its user data
    /// failed or its container exited.
    pub(super) fn progress(&mut self) -> anyhow::Result<Progress> {
        let user_data = self
            .exec(&[
                "systemctl",
                "show",
                "-p",
                "ActiveState,Result,ConditionResult",
                "rehearsal-user-data.service",
            ])
            .unwrap_or_default();
        // Written when the user data has run, on the first boot (later boots skip it,
        // as on EC2). Not the unit's condition result: that reads "no" before it runs.
        let user_data_done = self
            .root
            .join("var/lib/cloud/instance/boot-finished")
            .exists();
        if user_data.contains("Result=exit-code") || user_data.contains("ActiveState=failed") {
            bail!("the user data failed ({})", user_data.replace('\n', " "));
        }
        if let Some(child) = self.nspawn.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the container exited ({status}); see {}",
                    self.log.display()
                );
            }
        }
        if !user_data_done {
            return Ok(Progress::UserDataRunning);
        }
        let service = self
            .exec(&["systemctl", "is-active", self.unit])
            .unwrap_or_default();
        Ok(if service.trim() != "active" {
            Progress::ServiceStarting
        } else if !self.passes_health_check() {
            Progress::HealthCheckFailing
        } else {
            Progress::Healthy
        })
    }

    /// What the load balancer asks of a web instance before it sends it requests; the
    /// worker tier has no load balancer in front.
    fn passes_health_check(&self) -> bool {
        self.tier != "web"
            || self
                .exec(&[
                    "curl",
                    "--fail",
                    "--silent",
                    "--max-time",
                    "2",
                    "--output",
                    "/dev/null",
                    LOAD_BALANCER_HEALTH_CHECK,
                ])
                .is_ok()
    }

    /// The tier's service's journal, one message a line.
    pub(super) fn service_journal(&self) -> anyhow::Result<String> {
        self.exec(&["journalctl", "-u", self.unit, "-o", "cat", "--no-pager"])
    }

    pub(super) fn unit_states(&self) -> String {
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

    pub(super) fn print_failure_details(&self) {
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

    /// Power lost: the container's init killed with everything in it, and on the game day
    /// its link to the bridge cut, so requests to it go unanswered rather than refused.
    pub(super) fn power_off(&mut self) {
        if let Some(netns) = &self.netns {
            let _ = crate::system::command("ip")
                .args(["-n", &netns.name, "link", "set", "eth0", "down"])
                .status();
        }
        if let Some(leader) = self.leader.take() {
            let _ = crate::system::command("kill")
                .args(["-KILL", &leader.to_string()])
                .status();
        }
        if let Some(mut child) = self.nspawn.take() {
            let _ = child.wait();
            super::interruption::stopped(child.id());
        }
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            crate::system::stop(&mut child);
            super::interruption::stopped(child.id());
        }
    }

    /// Shuts the instance down as `poweroff` would (systemd stops every unit, each within
    /// its own stop timeout) and waits for it; seconds taken.
    pub(super) fn shut_down(&mut self, limit: Duration) -> anyhow::Result<f64> {
        let began = Instant::now();
        if self.nspawn.is_none() {
            bail!("the {} instance is not running", self.tier)
        }
        // Before the child is taken: if this fails, `stop` still has it.
        self.exec(&["systemctl", "poweroff"])?;
        let Some(mut child) = self.nspawn.take() else {
            bail!("the {} instance is not running", self.tier)
        };
        loop {
            if child.try_wait()?.is_some() {
                self.leader = None;
                super::interruption::stopped(child.id());
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

    pub(super) fn remove(&self) {
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

#[cfg(test)]
mod tests {
    use super::user_data_packages;

    #[test]
    fn the_packages_are_read_from_the_user_data() {
        let user_data = "install_packages() {\n    retry apt-get update -q\n    retry apt-get \
            install -y -q --no-install-recommends awscli python3 curl \"$@\"\n}\n\
            install_tier() {\n    install_packages nginx ffmpeg\n}\n";
        assert_eq!(
            user_data_packages(user_data).unwrap(),
            ["awscli", "curl", "ffmpeg", "nginx", "python3"]
        );
        assert!(user_data_packages("install_tier() { :; }").is_err());
    }
}
