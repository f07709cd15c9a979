//! What the VPC, RDS and EC2 provide around the instances: a certificate authority the
//! instances trust, a TLS PostgreSQL standing in for RDS, the RDS bundle's download, and
//! the instance metadata service.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{wait_for_port, StackFacts};
use crate::postgres::PrivateCluster;
use crate::system::run_command;

// ------------------------------------------------------------------------- PKI

/// A harness certificate authority (trusted by the containers, as AWS's roots are on
/// EC2) and the server certificates the stand-ins present.
pub(super) struct Pki {
    pub(super) ca: PathBuf,
    dir: PathBuf,
}

impl Pki {
    pub(super) fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = dir.join("ca.pem");
        if !ca.exists() {
            run_command(
                crate::system::command("openssl")
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
    pub(super) fn issue(&self, host: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("{host}.pem"));
        let key = self.dir.join(format!("{host}.key"));
        let request = self.dir.join(format!("{host}.csr"));
        let extensions = self.dir.join(format!("{host}.ext"));
        std::fs::write(&extensions, format!("subjectAltName=DNS:{host}\n"))?;
        run_command(
            crate::system::command("openssl")
                .args(["req", "-newkey", "rsa:2048", "-nodes"])
                .args(["-subj", &format!("/CN={host}")])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&request)
                .stderr(Stdio::null()),
        )?;
        run_command(
            crate::system::command("openssl")
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

// ----------------------------------------------------------------- the stand-ins

/// A private PostgreSQL on 127.0.0.2 at the endpoint's port, with TLS under a certificate
/// for the endpoint's name, the managed login's role and the database, and password
/// authentication over TLS only (as `rds.force_ssl` does).
pub(super) fn stand_in_database(
    dir: &Path,
    pki: &Pki,
    facts: &StackFacts,
) -> anyhow::Result<PrivateCluster> {
    // Kept between runs (a server left running by an interrupted run is reused); the
    // database itself is made anew.
    let data_dir = dir.join("rds");
    let (cert, key) = pki.issue(&facts.db_host)?;
    let cluster =
        PrivateCluster::start_listening(&data_dir, "127.0.0.2", facts.db_port, "postgres", "")?;
    super::interruption::on_interrupt(move || stop_database(&data_dir));
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
    // Loopback for the plain rehearsal's instances; the game day's arrive from their own
    // addresses through the gateway's DNAT (`network`), their source kept.
    cluster.set_hba(&format!(
        "local all all trust\n\
         hostssl all all 127.0.0.0/8 scram-sha-256\n\
         hostssl all all {} scram-sha-256\n",
        super::network::SUBNET_CIDR
    ))?;
    Ok(cluster)
}

/// Stops the stand-in database's server: an interrupted run (a finished one keeps it for
/// the next, see above), and the game day's failover.
pub(super) fn stop_database(data_dir: &Path) {
    if let Ok(bin) = crate::system::postgres_bin_dir() {
        let _ = crate::system::command("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(data_dir)
            .args(["-m", "fast", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `https://truststore.pki.rds.amazonaws.com/<region>/<region>-bundle.pem`, served on
/// 127.0.0.3:443 by nginx: the bundle is the harness CA, which signed the stand-in
/// database's certificate.
pub(super) fn truststore(dir: &Path, pki: &Pki) -> anyhow::Result<Child> {
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
    let child = crate::system::command("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start nginx for the RDS bundle")?;
    super::interruption::started(child.id());
    wait_for_port(("127.0.0.3", 443), Duration::from_secs(10))?;
    Ok(child)
}

/// The instance metadata service, IMDSv2 only (the launch templates require tokens):
/// region, instance identity, the instance role's credentials (which moto accepts) and
/// the Auto Scaling lifecycle state. Each instance is known by its source address (on the
/// game day every instance has its own); any other caller is the one instance of the
/// plain rehearsal.
pub(super) struct Imds {
    stop: Arc<AtomicBool>,
    /// The loopback port it listens on.
    pub(super) port: u16,
    identities: Identities,
}

/// What the metadata service says to one instance.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub(super) instance_id: String,
    pub(super) zone: String,
    /// `autoscaling/target-lifecycle-state`: InService, or Terminated once its group
    /// terminates it.
    pub(super) lifecycle_state: String,
}

type Identities = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Identity>>>;

const IMDS_ADDRESS: &str = "169.254.169.254";

/// The nftables table that sends 169.254.169.254:80 to the metadata service.
const IMDS_TABLE: &str = "anb_rehearse_imds";

impl Imds {
    /// Listens on a free loopback port; connections to 169.254.169.254:80 are sent there
    /// (DNAT), so port 80 stays free for the web instance's nginx, as on EC2 where the
    /// metadata service is not on the instance.
    pub(super) fn start(region: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let _ = crate::system::command("nft")
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
            run_command(crate::system::command("nft").arg(rule))
                .context("route 169.254.169.254 to the metadata service (nftables)")?;
        }
        super::interruption::on_interrupt(delete_imds_route);
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let identities = Identities::default();
        let known = identities.clone();
        let region = region.to_owned();
        // Credentials valid for six hours from now: longer than any rehearsal.
        let expires = credentials_expiry();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let identity = known
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&peer.ip())
                            .cloned()
                            .unwrap_or_else(|| Identity {
                                instance_id: "i-0rehearsal".into(),
                                zone: format!("{region}a"),
                                lifecycle_state: "InService".into(),
                            });
                        let (region, expires) = (region.clone(), expires.clone());
                        std::thread::spawn(move || {
                            let _ = serve_imds(stream, &region, &identity, &expires);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            stop,
            port,
            identities,
        })
    }

    /// What the instance at `address` is told from now on (None: forget it).
    pub(super) fn set_identity(&self, address: std::net::IpAddr, identity: Option<Identity>) {
        let mut identities = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        match identity {
            Some(identity) => identities.insert(address, identity),
            None => identities.remove(&address),
        };
    }

    /// Tells the instance at `address` its group is terminating it.
    pub(super) fn set_terminating(&self, address: std::net::IpAddr) {
        if let Some(identity) = self
            .identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&address)
        {
            identity.lifecycle_state = "Terminated".into();
        }
    }

    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        delete_imds_route();
    }
}

fn delete_imds_route() {
    let _ = crate::system::command("nft")
        .args(["delete", "table", "ip", IMDS_TABLE])
        .stderr(Stdio::null())
        .status();
}

/// The token every metadata request must carry.
const IMDS_TOKEN: &str = "rehearsal-imds-token";
const ROLE: &str = "rehearsal-instance";

fn serve_imds(
    stream: TcpStream,
    region: &str,
    identity: &Identity,
    expires: &str,
) -> anyhow::Result<()> {
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
    let (status, text) = match (method, path) {
        ("PUT", "/latest/api/token") => (200, IMDS_TOKEN.to_owned()),
        _ if token.as_deref() != Some(IMDS_TOKEN) => (401, String::new()),
        ("GET", "/latest/meta-data/placement/region") => (200, region.to_owned()),
        ("GET", "/latest/meta-data/placement/availability-zone") => (200, identity.zone.clone()),
        ("GET", "/latest/meta-data/instance-id") => (200, identity.instance_id.clone()),
        ("GET", "/latest/meta-data/autoscaling/target-lifecycle-state") => {
            (200, identity.lifecycle_state.clone())
        }
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
                               "instanceId": identity.instance_id, "availabilityZone": identity.zone})
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
fn credentials_expiry() -> String {
    let out = crate::system::command("date")
        .args(["-u", "-d", "+6 hours", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "2099-01-01T00:00:00Z".to_owned())
}
