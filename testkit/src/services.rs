//! The services' test harness: a fresh PostgreSQL database per test, one moto server (S3
//! and SQS emulator) per test process, and generated test videos.
//!
//! `cargo xtask ci` provides both services; run alone, `cargo test` needs
//! `ANB_TEST_DATABASE_URL` (a role that may create databases and roles) and `ANB_MOTO_PYTHON` (a
//! Python with `moto[server]`), or the defaults that `cargo xtask ci` sets up.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};

use backends::settings::AwsSettings;
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

use crate::tools::{moto_venv, spawn_moto, MOTO_VERSION};

/// The role `cargo xtask ci` creates on the machine's PostgreSQL cluster.
pub const DEFAULT_ADMIN_URL: &str = "postgres://anb_test:anb_test@127.0.0.1:5432/postgres";

/// The workspace of the crate under test, found at run time from the CARGO_MANIFEST_DIR
/// that `cargo test` sets: clones sharing a target directory share test binaries, so a
/// path compiled in could be another clone's.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .expect("tests are run by cargo, which sets CARGO_MANIFEST_DIR");
    Path::new(&manifest_dir)
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.contains("[workspace]"))
        })
        .expect("the crate under test is in a workspace")
        .to_path_buf()
}

pub fn admin_database_url() -> String {
    std::env::var("ANB_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A database of its own for one test, migrated, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub pool: PgPool,
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// An outage of this database: new connections are refused and every open one is
    /// ended, as when its server stops. (The machine's cluster is shared by tests running
    /// in parallel, so the test's own database goes down, not the whole server.)
    pub async fn refuse_connections(&self) {
        let mut admin = PgConnection::connect(&admin_database_url())
            .await
            .expect("connect as the test admin");
        for statement in [
            format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ),
        ] {
            sqlx::query(&statement)
                .execute(&mut admin)
                .await
                .expect("take the test database down");
        }
    }

    /// The end of [`TestDatabase::refuse_connections`]'s outage.
    pub async fn accept_connections(&self) {
        let mut admin = PgConnection::connect(&admin_database_url())
            .await
            .expect("connect as the test admin");
        sqlx::query(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("bring the test database back");
    }

    pub async fn create() -> Self {
        let admin_url = admin_database_url();
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {admin_url} ({e}); run `cargo xtask ci`, \
                 or set ANB_TEST_DATABASE_URL to a role that may create databases and roles"
            )
        });
        let name = format!("anb_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let options: PgConnectOptions = admin_url.parse().expect("a PostgreSQL URL");
        let options = options.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPool::connect_with(options)
            .await
            .expect("connect to test database");
        backends::db::migrate(&pool)
            .await
            .expect("migrate test database");
        Self { pool, url, name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = admin_database_url();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
            })?;
            Ok::<_, anyhow::Error>(())
        })
        .join();
    }
}

/// The account moto answers as (its default).
pub const MOTO_ACCOUNT: &str = "123456789012";

/// A moto server on a free loopback port. [`moto()`] is the one every test of the process
/// shares; [`Moto::start`] gives a test one of its own (to stop it, say). It exits with the
/// test process (it watches its stdin, which only this process holds), or when dropped.
#[derive(Debug)]
pub struct Moto {
    pub endpoint: String,
    child: Mutex<Child>,
}

fn moto_python() -> PathBuf {
    std::env::var_os("ANB_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| moto_venv(&workspace_root().join("target")).join("bin/python"))
}

/// The moto server shared by the tests of this process.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

impl Moto {
    /// Starts a moto server of its own, stopped when the value is dropped.
    pub fn start() -> Self {
        // The SDK's credential chain needs something; moto accepts anything.
        for (key, value) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ] {
            if std::env::var_os(key).is_none() {
                std::env::set_var(key, value);
            }
        }
        let python = moto_python();
        // The free port is only free when picked: another process may take it before moto
        // binds it, and moto then exits. Another port is tried.
        let (child, address) = (0..3)
            .find_map(|_| {
                let port = free_port();
                let mut child = spawn_moto(&python, port, Stdio::null()).unwrap_or_else(|e| {
                    panic!(
                        "cannot start moto with {} ({e}); run `cargo xtask ci` once, or set \
                         ANB_MOTO_PYTHON to a python with moto[server]=={MOTO_VERSION}",
                        python.display()
                    )
                });
                let address = SocketAddr::from(([127, 0, 0, 1], port));
                match wait_for_port(&mut child, address, Duration::from_secs(60)) {
                    Ok(()) => Some((child, address)),
                    Err(status) => {
                        eprintln!(
                            "moto exited at start on port {port} ({status}); trying another port"
                        );
                        None
                    }
                }
            })
            .expect("moto exited at start three times (its errors are above)");
        Moto {
            endpoint: format!("http://{address}"),
            child: Mutex::new(child),
        }
    }

    /// The server's process id (to stop and continue it, as an outage would).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Moto {
    pub fn aws_settings(&self) -> AwsSettings {
        AwsSettings {
            region: "us-east-1".to_owned(),
            endpoint_url: Some(self.endpoint.clone()),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(120),
            operation_timeout: Duration::from_secs(300),
        }
    }

    /// A new, uniquely named bucket.
    pub async fn create_bucket(&self) -> String {
        let bucket = format!("anb-test-{}", uuid::Uuid::new_v4().simple());
        let client = backends::storage::s3_client(&self.aws_settings()).await;
        client
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create test bucket");
        bucket
    }

    /// A new queue with a dead-letter queue after `max_receives`; returns the queue URL.
    pub async fn create_queue(&self, max_receives: u32) -> String {
        use aws_sdk_sqs::types::QueueAttributeName;
        let client = backends::queue::sqs_client(&self.aws_settings()).await;
        let name = format!("anb-test-{}", uuid::Uuid::new_v4().simple());
        let dlq_url = client
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .expect("create test dead-letter queue")
            .queue_url
            .expect("queue url");
        let dlq_arn = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("read dead-letter queue arn")
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .expect("queue arn");
        let policy = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receives,
        });
        client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
            .send()
            .await
            .expect("create test queue")
            .queue_url
            .expect("queue url")
    }
}

/// Object storage and a job queue for one test, with the `APP__…` settings that point a
/// service at the same ones.
#[derive(Debug)]
pub struct TestBackends {
    pub store: std::sync::Arc<dyn backends::storage::ObjectStore>,
    pub queue: std::sync::Arc<dyn backends::queue::JobQueue>,
    pub env: Vec<(String, String)>,
    /// The local storage root, when storage is local.
    pub storage_dir: Option<tempfile::TempDir>,
}

impl TestBackends {
    /// A temporary directory and the PostgreSQL queue of the default name in `db`.
    pub fn local(db: &TestDatabase, max_receives: u32) -> Self {
        let dir = tempfile::tempdir().expect("temporary storage directory");
        Self {
            store: std::sync::Arc::new(backends::storage::LocalStore::new(dir.path())),
            queue: std::sync::Arc::new(backends::queue::PgQueue::new(
                db.pool.clone(),
                "video-processing",
                max_receives,
            )),
            env: vec![(
                "APP__STORAGE__LOCAL_DIR".into(),
                dir.path().display().to_string(),
            )],
            storage_dir: Some(dir),
        }
    }

    /// A new bucket and queue (dead-lettering after `max_receives`) on the shared moto.
    pub async fn on_moto(max_receives: u32) -> Self {
        Self::on(moto(), max_receives).await
    }

    /// A new bucket and queue (dead-lettering after `max_receives`) on `moto`.
    pub async fn on(moto: &Moto, max_receives: u32) -> Self {
        let bucket = moto.create_bucket().await;
        let queue_url = moto.create_queue(max_receives).await;
        let aws = moto.aws_settings();
        let sqs = backends::queue::SqsQueue::connect(
            backends::queue::sqs_client(&aws).await,
            queue_url.clone(),
        )
        .await
        .expect("open the test queue");
        Self {
            store: std::sync::Arc::new(
                backends::storage::S3Store::new(
                    backends::storage::s3_client(&aws).await,
                    bucket.clone(),
                )
                .expecting_owner(Some(MOTO_ACCOUNT.into())),
            ),
            queue: std::sync::Arc::new(sqs),
            env: vec![
                ("APP__STORAGE__BACKEND".into(), "s3".into()),
                ("APP__STORAGE__BUCKET".into(), bucket),
                (
                    "APP__STORAGE__EXPECTED_BUCKET_OWNER".into(),
                    MOTO_ACCOUNT.into(),
                ),
                ("APP__QUEUE__BACKEND".into(), "sqs".into()),
                ("APP__QUEUE__SQS_QUEUE_URL".into(), queue_url),
                ("APP__AWS__ENDPOINT_URL".into(), moto.endpoint.clone()),
            ],
            storage_dir: None,
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `server` listens on `address`; its exit status if it exits first.
fn wait_for_port(
    server: &mut Child,
    address: SocketAddr,
    limit: Duration,
) -> Result<(), std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(status);
        }
        assert!(
            Instant::now() < deadline,
            "moto did not start listening on {address}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Polls `check` until it returns `Some`, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Test inputs made with ffmpeg's lavfi sources (never downloaded).
pub mod videos {
    use super::*;

    /// An H.264 MP4 of `seconds` at `width`×`height`, with a sine tone when `audio`.
    pub async fn mp4(path: &Path, seconds: u32, width: u32, height: u32, audio: bool) {
        let clip = crate::clip::Clip {
            audio,
            ..crate::clip::Clip::plain(width, height, seconds)
        };
        let mut args = vec!["-y".to_owned()];
        args.extend(clip.ffmpeg_args());
        args.push(path.display().to_string());
        backends::media::run_ffmpeg(&args, Duration::from_secs(120))
            .await
            .expect("generate test video");
    }

    /// An MP4 with an audio track and no video.
    pub async fn audio_only_mp4(path: &Path, seconds: u32) {
        let args = [
            "-y".to_owned(),
            "-f".to_owned(),
            "lavfi".to_owned(),
            "-i".to_owned(),
            format!("sine=frequency=440:duration={seconds}"),
            "-c:a".to_owned(),
            "aac".to_owned(),
            path.display().to_string(),
        ];
        backends::media::run_ffmpeg(&args, Duration::from_secs(60))
            .await
            .expect("generate audio");
    }

    /// A file of `len` bytes that is not a video.
    pub fn junk(path: &Path, len: usize, head: &[u8]) {
        let mut file = std::fs::File::create(path).expect("create junk file");
        file.write_all(head).expect("write junk");
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = len.saturating_sub(head.len());
        while left > 0 {
            let n = left.min(chunk.len());
            file.write_all(&chunk[..n]).expect("write junk");
            left -= n;
        }
    }
}
