//! Outages under load, with the real worker binary and the AWS topology (S3 and SQS on
//! moto, PostgreSQL local): the database or the emulator goes away for longer than the
//! whole retry budget of a job (3 deliveries × a 1 s retry delay and a 5 s visibility
//! timeout here; 5 × 30 s and 30 min in production, against outages of minutes), and
//! every queued video is still processed, none failed, the dead-letter queue empty.

use std::time::Duration;

use backends::db::VideoStatus;
use uuid::Uuid;

use crate::helpers::{make_video, Harness, Topology};
use crate::signals::{signal, start_worker_binary_logging};

const VIDEOS: usize = 10;
/// Six times the retry budget above: without the worker's pause, every job in the backlog
/// would use up its deliveries during the outage.
const OUTAGE: Duration = Duration::from_secs(30);

/// Settings that keep the retry budget small, so the outage is long beside it.
const SHORT_RETRIES: [(&str, &str); 5] = [
    ("APP__WORKER__VISIBILITY_TIMEOUT", "5s"),
    ("APP__WORKER__RETRY_DELAY", "1s"),
    ("APP__DATABASE__ACQUIRE_TIMEOUT", "1s"),
    ("APP__AWS__CONNECT_TIMEOUT", "1s"),
    ("APP__AWS__READ_TIMEOUT", "3s"),
];

/// Queues the backlog and starts the worker binary (the short retry budget, then `extra`;
/// its log to `log`); returns once it is under way.
async fn backlog_under_way(
    h: &Harness,
    extra: &[(&str, &str)],
    log: std::process::Stdio,
) -> (Vec<Uuid>, tokio::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "clip.mp4",
        "testsrc2=size=640x360:rate=30:duration=3",
        &[],
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..VIDEOS {
        ids.push(h.enqueue(&input).await);
    }
    let settings = [SHORT_RETRIES.as_slice(), extra].concat();
    let worker = start_worker_binary_logging(h, &settings, log);
    h.wait_for(ids[0], VideoStatus::Processed, Duration::from_secs(120))
        .await;
    (ids, worker)
}

/// Every video processed, none failed, no dead letter; then the worker stops cleanly.
async fn nothing_was_lost(h: &Harness, ids: &[Uuid], mut worker: tokio::process::Child) {
    let mut finished = Vec::new();
    for id in ids {
        let status = testkit::eventually(
            &format!("video {id} to finish"),
            Duration::from_secs(240),
            || async {
                let (status, _) = h.status(*id).await;
                matches!(status, VideoStatus::Processed | VideoStatus::Failed).then_some(status)
            },
        )
        .await;
        finished.push(status);
    }
    assert!(
        finished.iter().all(|s| *s == VideoStatus::Processed),
        "videos lost to the outage: {finished:?}"
    );
    assert!(h.dead_letters().await.is_empty(), "jobs were dead-lettered");
    signal(&worker.id().unwrap().to_string(), "TERM");
    assert!(worker.wait().await.unwrap().success());
}

#[tokio::test]
async fn a_database_outage_longer_than_the_retry_budget_loses_no_video() {
    let h = Harness::build_on(Topology::SharedMoto, &[]).await;
    let (ids, worker) = backlog_under_way(&h, &[], std::process::Stdio::null()).await;
    h.db.refuse_connections().await;
    tokio::time::sleep(OUTAGE).await;
    h.db.accept_connections().await;
    nothing_was_lost(&h, &ids, worker).await;
}

#[tokio::test]
async fn an_emulator_outage_longer_than_the_retry_budget_loses_no_video() {
    let moto = testkit::Moto::start();
    let h = Harness::build_on(Topology::Moto(&moto), &[]).await;
    let (ids, worker) = backlog_under_way(&h, &[], std::process::Stdio::null()).await;
    // The S3 and SQS emulator stops answering (its process is stopped, not killed: the
    // buckets and queues it holds in memory survive, as AWS's do).
    signal(&moto.pid().to_string(), "STOP");
    tokio::time::sleep(OUTAGE).await;
    signal(&moto.pid().to_string(), "CONT");
    nothing_was_lost(&h, &ids, worker).await;
}

/// An API in this process with the harness's settings and `extra` over them; its base URL.
async fn start_api(h: &Harness, extra: &[(&str, &str)]) -> String {
    let mut env: Vec<(String, String)> = h
        .env
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .cloned()
        .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env.push(("APP__AUTH__JWT_SECRET".into(), "x".repeat(32)));
    env.push(("APP__SERVER__PORT".into(), "0".into()));
    let settings = backends::settings::Settings::load_from(&[], env).unwrap();
    let app = api::Application::build(settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    base
}

/// Signs a player up through the API and logs them in; the bearer token.
async fn api_token(client: &reqwest::Client, base: &str) -> String {
    let signup = serde_json::json!({"first_name": "Ana", "last_name": "Ruiz",
        "email": "ana@example.com", "password1": "Canasta2026", "password2": "Canasta2026",
        "city": "Cali", "country": "Colombia"});
    let created = client
        .post(format!("{base}/api/auth/signup"))
        .json(&signup)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let login: serde_json::Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({"email": "ana@example.com", "password": "Canasta2026"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["access_token"].as_str().unwrap().to_owned()
}

/// Review 3, N19: a database that stops answering without closing anything (a stopped
/// server, a black hole) must hang nothing. Both services reach PostgreSQL through a relay
/// that falls silent for 25 s while a backlog arrives: the API answers 503 within seconds
/// (its pool's connection check is bounded by the acquire timeout), the worker says it
/// takes no job, and once the database answers again every video is processed, none
/// failed.
///
/// The relay goes silent once the worker has finished its first video and is waiting on
/// the queue, so no statement of its is in flight: a statement already sent waits for the
/// server's reply whatever the pool does (on the instances TCP retransmission bounds that,
/// `net.ipv4.tcp_retries2` in the boot script), and a silence that began mid-statement
/// would hold the job's slot for the whole outage, with the pause logged only after it.
#[tokio::test]
async fn a_database_that_falls_silent_hangs_no_request_and_loses_no_video() {
    let h = Harness::build_on(Topology::SharedMoto, &[]).await;
    let server =
        h.db.url
            .split_once('@')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap();
    let relay = testkit::SilentRelay::start(server.parse().unwrap()).await;
    let through_relay = relay.url_through(&h.db.url);
    let base = start_api(
        &h,
        &[
            ("APP__DATABASE__URL", &through_relay),
            ("APP__DATABASE__ACQUIRE_TIMEOUT", "2s"),
            ("APP__LIMITS__AUTH_PER_MINUTE", "0"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let token = api_token(&client, &base).await;

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let input = make_video(
        dir.path(),
        "clip.mp4",
        "testsrc2=size=640x360:rate=30:duration=3",
        &[],
    )
    .await;
    let mut ids = vec![h.enqueue(&input).await];
    let settings = [
        SHORT_RETRIES.as_slice(),
        &[("APP__DATABASE__URL", &through_relay)],
    ]
    .concat();
    let worker = start_worker_binary_logging(&h, &settings, log.into());
    h.wait_for(ids[0], VideoStatus::Processed, Duration::from_secs(120))
        .await;
    // The reply to the worker's last statement crosses the relay in well under this.
    tokio::time::sleep(Duration::from_millis(500)).await;

    relay.go_silent();
    for _ in 1..VIDEOS {
        ids.push(h.enqueue(&input).await);
    }
    for path in ["/api/health", "/api/videos"] {
        let started = std::time::Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            client
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{path} hung on the silent database"))
        .unwrap();
        let took = started.elapsed();
        eprintln!(
            "{path} on a silent database: {} after {took:?}",
            response.status()
        );
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{path}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{path} answered after {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logged.contains("a dependency is down: taking no jobs"),
        "the worker did not pause:\n{logged}"
    );
    relay.resume();
    nothing_was_lost(&h, &ids, worker).await;
    let videos = client
        .get(format!("{base}/api/videos"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        videos.status(),
        reqwest::StatusCode::OK,
        "the API did not come back"
    );
}

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let disk = Self { dir };
        disk.mount_with(
            &format!("size={size}"),
            "mount a tmpfs (the tests run as root)",
        );
        disk
    }

    fn resize(&self, size: &str) {
        self.mount_with(&format!("remount,size={size}"), "resize the tmpfs");
    }

    fn mount_with(&self, options: &str, what: &str) {
        #[allow(clippy::disallowed_methods)] // mount(8): no media tool involved
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "cannot {what}");
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        #[allow(clippy::disallowed_methods)] // umount(8)
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Review 3, N5: with the work directory on a 20 MiB tmpfs, a 30 MB upload ended `failed`
/// ("no terminó tras varios intentos") and stayed so once space returned. Now a job cut off
/// by the full disk goes back as a new message (its receives start again: here more times
/// than the queue allows deliveries), a directory short of room takes no job at all, and the
/// video is processed once there is space, with no redrive.
#[tokio::test]
async fn a_full_work_directory_fails_no_video_and_the_job_runs_once_space_returns() {
    let disk = SmallDisk::mount("20m");
    let work_dir = disk.path().display().to_string();
    let h = Harness::build_on(
        Topology::Local,
        &[
            ("APP__WORKER__WORK_DIR", &work_dir),
            // Twice this per job must be free: 10 MB, which the empty 20 MiB disk has.
            ("APP__UPLOAD__MAX_BYTES", "5000000"),
            ("APP__WORKER__RETRY_DELAY", "1s"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clip = make_video(
        dir.path(),
        "clip.mp4",
        "testsrc2=size=640x360:rate=30:duration=3",
        &[],
    )
    .await;
    // 30 MB: the clip and a `free` box, which every MP4 reader skips.
    let mut bytes = std::fs::read(&clip).unwrap();
    let padding = 30_000_000 - bytes.len();
    bytes.extend_from_slice(&u32::try_from(padding).unwrap().to_be_bytes());
    bytes.extend_from_slice(b"free");
    bytes.resize(30_000_000, 0);
    std::fs::write(&clip, &bytes).unwrap();
    let id = h.enqueue(&clip).await;

    for attempt in 1..=crate::helpers::MAX_RECEIVES + 1 {
        let delivery = h.receive().await;
        assert_eq!(delivery.receive_count, 1, "attempt {attempt} was counted");
        match h.worker.handle(delivery).await {
            worker::Outcome::Retry(reason) => {
                assert!(reason.contains("No space left on device"), "{reason}")
            }
            other => panic!("attempt {attempt} on a full disk: {other:?}"),
        }
        assert_ne!(h.status(id).await.0, VideoStatus::Failed);
    }

    // Short of room, the worker takes no job: the same pause as a database outage.
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 15 << 20]).unwrap();
    let refused = h.worker.check_dependencies().await.unwrap_err();
    assert!(refused.contains("work directory"), "{refused}");
    let (stop, running) = h.run_worker();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let received: i32 = sqlx::query_scalar("SELECT receive_count FROM queue_messages")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(received, 0, "a job was taken without room for it");

    // Space returns: the same worker takes the job and finishes it.
    std::fs::remove_file(&ballast).unwrap();
    disk.resize("200m");
    h.wait_for(id, VideoStatus::Processed, Duration::from_secs(120))
        .await;
    assert!(
        h.dead_letters().await.is_empty(),
        "the job was dead-lettered"
    );
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}
