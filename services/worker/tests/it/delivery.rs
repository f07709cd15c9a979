//! What happens to messages: failures, poison, unknown videos, retries, duplicates.

use std::time::Duration;

use backends::db::VideoStatus;
use backends::job::{original_key, processed_key, VideoJob};
use worker::Outcome;

use crate::helpers::{make_video, Harness, MAX_RECEIVES};

#[tokio::test]
async fn a_corrupt_input_fails_the_video_with_a_reason_and_is_not_retried() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mp4");
    std::fs::write(
        &junk,
        b"\x00\x00\x00\x18ftypisom this is not really a video",
    )
    .unwrap();
    let id = h.enqueue(&junk).await;
    let outcome = h.worker.handle(h.receive().await).await;
    assert!(
        matches!(&outcome, Outcome::Failed(reason) if reason.contains("ffmpeg")),
        "{outcome:?}"
    );
    let (status, error) = h.status(id).await;
    assert_eq!(status, VideoStatus::Failed);
    // The owner reads a fixed reason and its code; ffmpeg's words stay in the logs.
    let error = error.unwrap();
    assert!(error.contains("(código: video-ilegible)"), "{error}");
    assert!(!error.contains("ffmpeg") && !error.contains('/'), "{error}");
    assert!(
        h.queue_is_empty().await,
        "a permanent failure must not come back"
    );
    assert!(h.dead_letters().await.is_empty());
    assert!(!h.store.exists(&processed_key(id)).await.unwrap());
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_next_job_is_still_done() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    h.queue.send("{this is not a job").await.unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    let (stop, running) = h.run_worker();
    h.wait_for(id, VideoStatus::Processed, Duration::from_secs(120))
        .await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(h.dead_letters().await, ["{this is not a job"]);
    assert!(h.queue_is_empty().await);
}

#[tokio::test]
async fn a_job_for_an_unknown_video_is_dead_lettered() {
    let h = Harness::local().await;
    let job = VideoJob::new(uuid::Uuid::new_v4());
    h.queue.send(&job.to_body()).await.unwrap();
    let outcome = h.worker.handle(h.receive().await).await;
    assert!(
        matches!(&outcome, Outcome::DeadLettered(r) if r.contains("unknown video")),
        "{outcome:?}"
    );
    assert_eq!(h.dead_letters().await, [job.to_body()]);
}

#[tokio::test]
async fn transient_failures_are_retried_then_dead_lettered_with_the_video_failed() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    // Storage breaks for real: the original's path becomes a directory, which cannot be read.
    let root = h.storage_dir.as_ref().unwrap().path();
    let original = root.join(original_key(id));
    std::fs::remove_file(&original).unwrap();
    std::fs::create_dir(&original).unwrap();

    for attempt in 1..MAX_RECEIVES {
        let outcome = h.worker.handle(h.receive().await).await;
        assert!(
            matches!(outcome, Outcome::Retry(_)),
            "attempt {attempt}: {outcome:?}"
        );
        assert_eq!(h.status(id).await.0, VideoStatus::Processing);
    }
    let last = h.worker.handle(h.receive().await).await;
    assert!(
        matches!(&last, Outcome::DeadLettered(r) if r.contains("gave up after 3 attempts")),
        "{last:?}"
    );
    let (status, error) = h.status(id).await;
    assert_eq!(status, VideoStatus::Failed);
    let error = error.unwrap();
    assert!(error.contains("(código: sin-resultado)"), "{error}");
    assert!(
        !error.contains("download"),
        "internals shown to the owner: {error}"
    );
    assert_eq!(h.dead_letters().await.len(), 1);
    assert!(h.queue_is_empty().await);
}

#[tokio::test]
async fn running_a_job_twice_is_harmless() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    // The same job delivered twice (at-least-once): the second run finds nothing to do.
    h.queue.send(&VideoJob::new(id).to_body()).await.unwrap();
    assert_eq!(h.worker.handle(h.receive().await).await, Outcome::Processed);
    let processed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT processed_at FROM videos WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(
        h.worker.handle(h.receive().await).await,
        Outcome::AlreadyDone
    );
    let again: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT processed_at FROM videos WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(processed_at, again);
    assert_eq!(
        h.store.list("processed/").await.unwrap(),
        [processed_key(id)]
    );
    assert!(h.queue_is_empty().await);
}

/// The API sends the job, then marks the video queued; a worker woken by the send can be
/// faster than that second statement, and must not spend a retry (30 s) on it.
#[tokio::test]
async fn a_job_that_arrives_before_its_video_is_marked_queued_waits_for_it() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    sqlx::query("UPDATE videos SET queued_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&h.db.pool)
        .await
        .unwrap();
    let pool = h.db.pool.clone();
    let api_marks_it_queued = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(backends::db::mark_queued(&pool, id).await.unwrap());
    });
    assert_eq!(h.worker.handle(h.receive().await).await, Outcome::Processed);
    api_marks_it_queued.await.unwrap();
}

#[tokio::test]
async fn a_video_deleted_while_queued_is_skipped_without_leftovers() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    // What the API's delete does: claimed, files removed, row gone (remembered as deleted).
    assert!(
        backends::db::claim_for_deletion(&h.db.pool, id, h.owner, "borrando")
            .await
            .unwrap()
    );
    h.store.delete(&original_key(id)).await.unwrap();
    backends::db::delete_claimed_video(&h.db.pool, id)
        .await
        .unwrap();
    assert_eq!(
        h.worker.handle(h.receive().await).await,
        Outcome::AlreadyDone
    );
    assert!(h.store.list("").await.unwrap().is_empty());
    assert!(h.queue_is_empty().await);
    assert!(
        h.dead_letters().await.is_empty(),
        "a deletion is not a bad message"
    );
}

#[tokio::test]
async fn a_video_whose_workers_all_died_is_failed_by_the_dead_letter_sweep() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    // Every try ends with the worker gone: the message just comes back, until the queue
    // itself moves it to the dead-letter queue. No worker saw that happen.
    for _ in 0..MAX_RECEIVES {
        let delivery = h.receive().await;
        h.queue
            .change_visibility(&delivery.receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(h
        .queue
        .receive(1, Duration::from_secs(1), Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(h.status(id).await.0, VideoStatus::Uploaded);

    assert_eq!(h.worker.sweep_dead_letters().await.unwrap(), 1);
    let (status, error) = h.status(id).await;
    assert_eq!(status, VideoStatus::Failed);
    assert!(error.unwrap().contains("(código: sin-resultado)"));
    // The dead letter stays for operators, and a second sweep changes nothing.
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM queue_messages WHERE queue LIKE '%-dlq'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(kept, 1);
    assert_eq!(h.worker.sweep_dead_letters().await.unwrap(), 0);
}

#[tokio::test]
async fn an_ffmpeg_run_out_of_time_twice_fails_the_video_for_good() {
    // Too little time for any real run: each try ends in a timeout.
    let h = Harness::build(false, &[("APP__WORKER__FFMPEG_TIMEOUT", "20ms")]).await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "slow.mp4",
        "testsrc2=size=1280x720:rate=30:duration=3",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    let first = h.worker.handle(h.receive().await).await;
    assert!(matches!(first, Outcome::Retry(_)), "{first:?}");
    let second = h.worker.handle(h.receive().await).await;
    assert!(
        matches!(&second, Outcome::Failed(d) if d.contains("2 times")),
        "{second:?}"
    );
    let (status, error) = h.status(id).await;
    assert_eq!(status, VideoStatus::Failed);
    assert!(error.unwrap().contains("(código: demasiado-lento)"));
    assert!(
        h.queue_is_empty().await,
        "a permanent failure must not come back"
    );
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test]
async fn redrive_sends_dead_letters_back_and_their_videos_get_processed() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    // The original cannot be read (its path is a directory) on every try: dead-lettered.
    let root = h.storage_dir.as_ref().unwrap().path();
    let original = root.join(original_key(id));
    std::fs::remove_file(&original).unwrap();
    std::fs::create_dir(&original).unwrap();
    for _ in 0..MAX_RECEIVES {
        h.worker.handle(h.receive().await).await;
    }
    assert_eq!(h.status(id).await.0, VideoStatus::Failed);
    assert_eq!(h.dead_letters().await.len(), 1);
    h.queue.send("not a job").await.unwrap();
    let poison = h.receive().await;
    h.queue.dead_letter(&poison).await.unwrap();

    // Fixed: the operator sends the dead letters back.
    std::fs::remove_dir(&original).unwrap();
    std::fs::copy(&input, &original).unwrap();
    assert_eq!(h.worker.redrive().await.unwrap(), 1);
    let (status, error) = h.status(id).await;
    assert_eq!((status, error), (VideoStatus::Uploaded, None));
    // Only what is not a job stays behind.
    assert_eq!(h.dead_letters().await, ["not a job"]);
    let outcome = h.worker.handle(h.receive().await).await;
    assert_eq!(outcome, Outcome::Processed);
    assert_eq!(h.status(id).await.0, VideoStatus::Processed);
}

#[tokio::test]
async fn a_video_claimed_for_deletion_mid_job_is_never_published() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=640x360:rate=30:duration=2",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    assert!(backends::db::start_processing(&h.db.pool, id)
        .await
        .unwrap());
    // The owner deletes while the worker runs; storage then fails, so the row stays.
    assert!(
        backends::db::claim_for_deletion(&h.db.pool, id, h.owner, "borrado pendiente")
            .await
            .unwrap()
    );
    // The worker finishes: it cannot publish a claimed video.
    assert!(!backends::db::finish_processing(&h.db.pool, id)
        .await
        .unwrap());
    let (status, error) = h.status(id).await;
    assert_eq!(status, VideoStatus::Failed);
    assert_eq!(error.as_deref(), Some("borrado pendiente"));
}

/// The owner deletes while the worker encodes: the API has claimed the video (and may
/// have removed its files already, before the worker stores its output). The worker's
/// output is removed too: no `processed/` object outlives the delete.
#[tokio::test]
async fn a_delete_during_processing_leaves_no_processed_object() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "ok.mp4",
        "testsrc2=size=1280x720:rate=30:duration=4",
        &[],
    )
    .await;
    let id = h.enqueue(&input).await;
    let delivery = h.receive().await;
    let owner_deletes = async {
        h.wait_for(id, VideoStatus::Processing, Duration::from_secs(30))
            .await;
        assert!(
            backends::db::claim_for_deletion(&h.db.pool, id, h.owner, "borrado pendiente")
                .await
                .unwrap()
        );
    };
    let (outcome, ()) = tokio::join!(h.worker.handle(delivery), owner_deletes);
    assert_eq!(outcome, Outcome::AlreadyDone);
    assert_eq!(h.status(id).await.0, VideoStatus::Failed);
    assert!(
        !h.store.exists(&processed_key(id)).await.unwrap(),
        "the processed video of a deleted upload is left in storage"
    );
}

#[tokio::test]
async fn scratch_folders_of_workers_that_are_gone_are_swept_at_start() {
    let work = tempfile::tempdir().unwrap();
    // A worker killed mid-job left its folder (its process id names no running process);
    // another one still runs (this test's own process).
    let abandoned = work.path().join("anb-worker-killed");
    std::fs::create_dir_all(abandoned.join("job-1")).unwrap();
    std::fs::write(abandoned.join("job-1/original.mp4"), vec![0u8; 1024]).unwrap();
    std::fs::write(abandoned.join("owner.pid"), "4194304").unwrap(); // above pid_max
    let running = work.path().join("anb-worker-running");
    std::fs::create_dir_all(&running).unwrap();
    std::fs::write(running.join("owner.pid"), std::process::id().to_string()).unwrap();
    let unrelated = work.path().join("something-else");
    std::fs::create_dir_all(&unrelated).unwrap();

    let dir = work.path().display().to_string();
    let _h = Harness::build(false, &[("APP__WORKER__WORK_DIR", dir.as_str())]).await;
    assert!(
        !abandoned.exists(),
        "the dead worker's scratch folder is still there"
    );
    assert!(running.exists() && unrelated.exists());
}

/// Review 3, N18: a job the queue let expire (workers stopped for longer than its 14 days)
/// is sent again, so the video is processed rather than left `uploaded` for ever; a job
/// queued lately is left alone.
#[tokio::test]
async fn a_video_untried_for_13_days_gets_its_job_again_and_is_processed() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let clip = make_video(
        dir.path(),
        "clip.mp4",
        "testsrc2=size=320x240:rate=30:duration=2",
        &[],
    )
    .await;
    let expired = h.enqueue(&clip).await;
    let recent = h.enqueue(&clip).await;
    // The first job's message is gone, as an expired one is; it was queued 14 days ago.
    let first = h.receive().await;
    assert_eq!(VideoJob::from_body(&first.body).unwrap().video_id, expired);
    h.queue.delete(&first.receipt).await.unwrap();
    let second = h.receive().await;
    h.queue
        .change_visibility(&second.receipt, Duration::ZERO)
        .await
        .unwrap();
    sqlx::query("UPDATE videos SET queued_at = now() - interval '14 days' WHERE id = $1")
        .bind(expired)
        .execute(&h.db.pool)
        .await
        .unwrap();

    assert_eq!(h.worker.resend_untried_jobs().await.unwrap(), 1);
    assert_eq!(
        h.worker.resend_untried_jobs().await.unwrap(),
        0,
        "its clock restarted"
    );
    for _ in 0..2 {
        assert_eq!(h.worker.handle(h.receive().await).await, Outcome::Processed);
    }
    for id in [expired, recent] {
        assert_eq!(h.status(id).await.0, VideoStatus::Processed);
    }
    assert!(h.queue_is_empty().await);
}
