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
