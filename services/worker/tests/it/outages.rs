//! Outages under load, with the real worker binary and the AWS topology (S3 and SQS on
//! moto, PostgreSQL local): the database or the emulator goes away for longer than the
//! whole retry budget of a job (3 deliveries × a 1 s retry delay and a 5 s visibility
//! timeout here; 5 × 30 s and 30 min in production, against outages of minutes), and
//! every queued video is still processed, none failed, the dead-letter queue empty.

use std::time::Duration;

use backends::db::VideoStatus;
use uuid::Uuid;

use crate::helpers::{make_video, Harness, Topology};
use crate::signals::{signal, start_worker_binary};

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

/// Queues the backlog and starts the worker binary; returns once it is under way.
async fn backlog_under_way(h: &Harness) -> (Vec<Uuid>, tokio::process::Child) {
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
    let worker = start_worker_binary(h, &SHORT_RETRIES);
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
    let (ids, worker) = backlog_under_way(&h).await;
    h.db.refuse_connections().await;
    tokio::time::sleep(OUTAGE).await;
    h.db.accept_connections().await;
    nothing_was_lost(&h, &ids, worker).await;
}

#[tokio::test]
async fn an_emulator_outage_longer_than_the_retry_budget_loses_no_video() {
    let moto = testkit::Moto::start();
    let h = Harness::build_on(Topology::Moto(&moto), &[]).await;
    let (ids, worker) = backlog_under_way(&h).await;
    // The S3 and SQS emulator stops answering (its process is stopped, not killed: the
    // buckets and queues it holds in memory survive, as AWS's do).
    signal(&moto.pid().to_string(), "STOP");
    tokio::time::sleep(OUTAGE).await;
    signal(&moto.pid().to_string(), "CONT");
    nothing_was_lost(&h, &ids, worker).await;
}
