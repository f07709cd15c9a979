//! A private PostgreSQL cluster in a folder under `target/`, started from the machine's
//! own server binaries: no system service is touched, and it stops when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::system::{self, output, run_command};

#[derive(Debug)]
pub struct PrivateCluster {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    /// The address it listens on (and is administered through).
    host: String,
    pub port: u16,
    /// As root, the server must run as the `postgres` user (it refuses root).
    as_postgres_user: bool,
    /// Further server options it was started with.
    extra_options: String,
}

impl PrivateCluster {
    /// Initialises `data_dir` if needed and starts the server on `preferred_port`, or on a
    /// free port when that one is taken. Creates `database` if it does not exist.
    pub fn start(data_dir: &Path, preferred_port: u16, database: &str) -> anyhow::Result<Self> {
        Self::start_listening(data_dir, "127.0.0.1", preferred_port, database, "")
    }

    /// [`PrivateCluster::start`] listening on `host` (another loopback address, say), with
    /// more server options (`-c name=value …`). On `127.0.0.1` a taken port is replaced by
    /// a free one; elsewhere the port is kept, as a stand-in server needs it.
    pub fn start_listening(
        data_dir: &Path,
        host: &str,
        preferred_port: u16,
        database: &str,
        extra_options: &str,
    ) -> anyhow::Result<Self> {
        let bin_dir = system::postgres_bin_dir()?;
        let as_postgres_user = system::is_root();
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        let mut cluster = Self {
            data_dir,
            bin_dir,
            host: host.to_owned(),
            port: preferred_port,
            as_postgres_user,
            extra_options: extra_options.to_owned(),
        };
        if as_postgres_user {
            run_command(
                crate::system::command("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&cluster.data_dir),
            )
            .context("the private cluster's folder must belong to the postgres user")?;
        }
        if !cluster.data_dir.join("PG_VERSION").exists() {
            eprintln!(
                "xtask: creating a private PostgreSQL cluster in {}",
                cluster.data_dir.display()
            );
            run_command(
                cluster
                    .tool("initdb")
                    .arg("-D")
                    .arg(&cluster.data_dir)
                    .args([
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ])
                    .stdout(std::process::Stdio::null()),
            )?;
        }
        if let Some(port) = cluster.running_port() {
            cluster.port = port;
        } else {
            if host == "127.0.0.1" && TcpListener::bind((host, preferred_port)).is_err() {
                cluster.port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            }
            cluster.start_server()?;
        }
        cluster.wait_ready()?;
        cluster.create_database(database)?;
        Ok(cluster)
    }

    /// Starts the server of this data folder (stopped by [`Self::stop`]) with the settings
    /// it was created with, and waits until it accepts connections.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses={} {}",
            self.port,
            self.data_dir.display(),
            self.host,
            self.extra_options
        );
        run_command(
            self.tool("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(self.data_dir.join("server.log"))
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .stdout(std::process::Stdio::null()),
        )
        .with_context(|| {
            format!(
                "PostgreSQL did not start; see {}",
                self.data_dir.join("server.log").display()
            )
        })?;
        self.wait_ready()
    }

    fn tool(&self, name: &str) -> Command {
        let program = self.bin_dir.join(name);
        if self.as_postgres_user {
            let mut command = crate::system::command("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            crate::system::command(program)
        }
    }

    /// The port of a server already running on this folder (left from an earlier run).
    fn running_port(&self) -> Option<u16> {
        let status = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .ok()?;
        if !status.status.success() {
            return None;
        }
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        // Through the socket in the data folder: works whatever the TCP rules say.
        output(self.tool("psql").arg("-h").arg(&self.data_dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ]))
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.psql("SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("PostgreSQL is not answering"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("invalid database name {name}");
        }
        if self
            .psql(&format!(
                "SELECT 1 FROM pg_database WHERE datname = '{name}'"
            ))?
            .trim()
            .is_empty()
        {
            self.psql(&format!("CREATE DATABASE {name}"))?;
        }
        Ok(())
    }

    pub fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        self.psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .map(drop)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{}:{}/{database}", self.host, self.port)
    }

    /// Puts `files` (name, source) into the cluster's folder, readable by the server only
    /// (as a TLS key must be).
    pub fn install_files(&self, files: &[(&str, &Path)]) -> anyhow::Result<()> {
        for (name, source) in files {
            let target = self.data_dir.join(name);
            std::fs::copy(source, &target)?;
            run_command(crate::system::command("chmod").arg("0600").arg(&target))?;
            if self.as_postgres_user {
                run_command(
                    crate::system::command("chown")
                        .arg("postgres:postgres")
                        .arg(&target),
                )?;
            }
        }
        Ok(())
    }

    /// Replaces the client authentication rules and has the server reload them (and any
    /// setting changed with ALTER SYSTEM).
    pub fn set_hba(&self, rules: &str) -> anyhow::Result<()> {
        std::fs::write(self.data_dir.join("pg_hba.conf"), rules)?;
        run_command(
            self.tool("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("reload")
                .stdout(std::process::Stdio::null()),
        )
    }

    pub fn execute(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        // Through the socket in the data folder: works whatever the TCP rules say.
        output(self.tool("psql").arg("-h").arg(&self.data_dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ]))
    }

    pub fn stop(&self) {
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
