//! The worker binary under SIGKILL and SIGTERM: nothing is lost, nothing is done twice over.

use std::process::Stdio;
use std::time::Duration;

use backends::db::VideoStatus;
use testkit::eventually;

use crate::helpers::{make_video, Harness};

/// Starts the worker binary in its own process group with the harness's settings.
pub fn start_worker_binary(h: &Harness, extra: &[(&str, &str)]) -> tokio::process::Child {
    start_worker_binary_logging(h, extra, Stdio::null())
}

/// [`start_worker_binary`] with its log (standard output) sent to `log`.
pub fn start_worker_binary_logging(
    h: &Harness,
    extra: &[(&str, &str)],
    log: Stdio,
) -> tokio::process::Child {
    #[allow(clippy::disallowed_methods)] // the test runs the real binary
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"));
    command.envs(h.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command.envs(extra.iter().copied());
    command.stdout(log).process_group(0).kill_on_drop(true);
    command.spawn().unwrap()
}

pub fn signal(target: &str, name: &str) {
    #[allow(clippy::disallowed_methods)] // delivering a signal to the process under test
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), "--", target])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {target}");
}

/// A 1080p input with noise: several seconds of ffmpeg at the `medium` preset.
async fn slow_input(dir: &std::path::Path) -> std::path::PathBuf {
    make_video(
        dir,
        "slow.mp4",
        "testsrc2=size=1920x1080:rate=30:duration=20",
        &["-vf", "noise=alls=20:allf=t"],
    )
    .await
}

async fn wait_until_processing(h: &Harness, id: uuid::Uuid) {
    h.wait_for(id, VideoStatus::Processing, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // well inside ffmpeg by now
}

#[tokio::test]
async fn a_job_of_a_killed_worker_is_finished_by_another_exactly_once() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let id = h.enqueue(&slow_input(dir.path()).await).await;
    let mut crashed = start_worker_binary(
        &h,
        &[
            ("APP__WORKER__VISIBILITY_TIMEOUT", "3s"),
            ("APP__PROCESSING__X264_PRESET", "medium"),
        ],
    );
    wait_until_processing(&h, id).await;
    // The whole process group, ffmpeg included, as when a machine dies.
    signal(&format!("-{}", crashed.id().unwrap()), "KILL");
    crashed.wait().await.unwrap();
    assert_eq!(
        h.status(id).await.0,
        VideoStatus::Processing,
        "the job finished before the kill"
    );

    let (stop, running) = h.run_worker();
    h.wait_for(id, VideoStatus::Processed, Duration::from_secs(180))
        .await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(
        h.store.list("processed/").await.unwrap(),
        [backends::job::processed_key(id)]
    );
    assert!(h.queue_is_empty().await);
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test]
async fn sigterm_lets_the_current_job_finish_then_exits_cleanly() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "short.mp4",
        "testsrc2=size=1280x720:rate=30:duration=8",
        &["-vf", "noise=alls=20:allf=t"],
    )
    .await;
    let id = h.enqueue(&input).await;
    let mut worker = start_worker_binary(&h, &[("APP__WORKER__SHUTDOWN_GRACE", "120s")]);
    wait_until_processing(&h, id).await;
    signal(&worker.id().unwrap().to_string(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(150), worker.wait())
        .await
        .expect("worker did not exit")
        .unwrap();
    assert!(status.success(), "worker exited with {status}");
    assert_eq!(h.status(id).await.0, VideoStatus::Processed);
    assert!(h.queue_is_empty().await);
}

#[tokio::test]
async fn sigterm_past_the_grace_period_hands_the_job_back_at_once() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let id = h.enqueue(&slow_input(dir.path()).await).await;
    let mut worker = start_worker_binary(
        &h,
        &[
            ("APP__WORKER__SHUTDOWN_GRACE", "1s"),
            ("APP__PROCESSING__X264_PRESET", "medium"),
        ],
    );
    wait_until_processing(&h, id).await;
    signal(&worker.id().unwrap().to_string(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("worker did not exit")
        .unwrap();
    assert!(status.success(), "worker exited with {status}");
    assert_eq!(h.status(id).await.0, VideoStatus::Processing);
    // Released, not left hidden for the 30 min visibility timeout: it is available now.
    let delivery = eventually("the released job", Duration::from_secs(5), || async {
        h.queue
            .receive(1, Duration::ZERO, Duration::from_secs(600))
            .await
            .unwrap()
            .pop()
    })
    .await;
    assert_eq!(delivery.receive_count, 2);
    assert_eq!(h.worker.handle(delivery).await, worker::Outcome::Processed);
    assert_eq!(h.status(id).await.0, VideoStatus::Processed);
}

async fn next_notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buffer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(60), socket.recv(&mut buffer))
        .await
        .expect("no notification within 60 s")
        .unwrap();
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): the worker says it is ready, then feeds
/// the watchdog twice per period from its poll loop, through a job that outlasts the
/// period (waiting for its slot is alive), so only a wedged loop gets the unit restarted.
#[tokio::test]
async fn the_worker_tells_systemd_it_is_ready_and_feeds_the_watchdog_through_a_long_job() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let id = h.enqueue(&slow_input(dir.path()).await).await;
    let mut worker = start_worker_binary(
        &h,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
            ("APP__PROCESSING__X264_PRESET", "medium"),
        ],
    );
    let next = || next_notification(&socket);
    assert_eq!(next().await, "READY=1");
    wait_until_processing(&h, id).await;
    let started = std::time::Instant::now();
    for _ in 0..4 {
        assert_eq!(next().await, "WATCHDOG=1");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "4 feeds took {took:?}; systemd wants one per 2 s"
    );
    assert_eq!(
        h.status(id).await.0,
        VideoStatus::Processing,
        "the job outlasted the feeds"
    );
    signal(&worker.id().unwrap().to_string(), "TERM");
    assert!(worker.wait().await.unwrap().success());
}
