//! A database restored onto storage that lacks its files (review 3, N4).

use std::sync::Arc;

use backends::db::VideoStatus;
use backends::settings::Settings;
use worker::{Outcome, Worker};

use crate::helpers::{make_video, Harness};

/// `down --delete-videos`, then `up --restore-from`: the rows come back, the files do not.
/// The first worker on the new storage fails every video whose file is gone, with a reason
/// its owner reads, so none is public without its file; the storage it checked is recorded
/// and not checked again.
#[tokio::test]
async fn a_database_restored_onto_empty_storage_fails_the_videos_whose_files_are_gone() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let clip = make_video(
        dir.path(),
        "clip.mp4",
        "testsrc2=size=320x240:rate=30:duration=2",
        &[],
    )
    .await;
    let processed = h.enqueue(&clip).await;
    assert_eq!(h.worker.handle(h.receive().await).await, Outcome::Processed);
    let queued = h.enqueue(&clip).await;

    // On the storage that has the files, nothing fails.
    h.worker.check_storage_identity().await.unwrap();
    assert_eq!(h.status(processed).await.0, VideoStatus::Processed);
    assert_eq!(h.status(queued).await.0, VideoStatus::Uploaded);

    // The same database, storage made anew.
    let empty = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = h
        .env
        .iter()
        .filter(|(k, _)| k != "APP__STORAGE__LOCAL_DIR")
        .cloned()
        .chain([(
            "APP__STORAGE__LOCAL_DIR".to_owned(),
            empty.path().display().to_string(),
        )])
        .collect();
    let restored = Arc::new(
        Worker::build(&Settings::load_from(&[], env).unwrap())
            .await
            .unwrap(),
    );
    restored.check_storage_identity().await.unwrap();
    for id in [processed, queued] {
        let (status, error) = h.status(id).await;
        assert_eq!(status, VideoStatus::Failed, "video {id}");
        assert!(
            error
                .as_deref()
                .unwrap_or("")
                .contains("(código: archivos-perdidos)"),
            "{error:?}"
        );
    }

    // Recorded: a later start on that storage checks nothing (a video failed by hand
    // stays as it is, proof that no check ran).
    sqlx::query("UPDATE videos SET status = 'processed', error = NULL WHERE id = $1")
        .bind(processed)
        .execute(&h.db.pool)
        .await
        .unwrap();
    restored.check_storage_identity().await.unwrap();
    assert_eq!(h.status(processed).await.0, VideoStatus::Processed);
}
