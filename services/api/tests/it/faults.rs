//! Faults with the real API binary: killed with SIGKILL in the middle of uploads, a flood
//! of logins. What must survive: no orphan file, row or job; every upload that got its
//! 201 processed; the process's memory bounded and its health answering.

use std::sync::Arc;
use std::time::Duration;

use backends::settings::Settings;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::json;
use testkit::{eventually, TestBackends, TestDatabase};

use crate::helpers::{fixtures, peak_rss_kib, spawn_app_with, start_api, token_for, Options};

#[tokio::test]
async fn an_upload_cut_off_between_recording_and_queueing_is_swept_away() {
    let app = spawn_app_with(Options {
        // Short enough for the test, long enough that no complete upload is ever swept.
        extra_env: vec![("APP__UPLOAD__ABANDONED_AFTER", "5s".into())],
        ..Options::default()
    })
    .await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    let kept = app.upload_sample(&player.token, "completa").await;
    // What a process killed after storing the file and before queueing leaves.
    let cut_off = uuid::Uuid::new_v4();
    backends::db::insert_pending_video(
        &app.db.pool,
        cut_off,
        player.id.parse().unwrap(),
        "cortada",
    )
    .await
    .unwrap();
    let copy = tempfile::NamedTempFile::new()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::copy(&fixtures().await.sample, &copy).unwrap();
    let key = backends::job::original_key(cut_off);
    app.store.put_file(&key, &copy).await.unwrap();
    // Never listed to its owner, then gone with its file.
    let listed: Vec<serde_json::Value> = app
        .get("/api/videos", Some(&player.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    eventually(
        "the cut-off upload to be swept",
        Duration::from_secs(30),
        || async {
            let row = backends::db::find_video(&app.db.pool, cut_off)
                .await
                .unwrap();
            (row.is_none() && !app.store.exists(&key).await.unwrap()).then_some(())
        },
    )
    .await;
    assert!(backends::db::was_deleted(&app.db.pool, cut_off)
        .await
        .unwrap());
    // An upload the sweep overtook finds out when it comes to mark its video queued (the
    // API then answers 503 instead of a 201 for a video that is gone).
    assert!(!backends::db::mark_queued(&app.db.pool, cut_off)
        .await
        .unwrap());
    assert!(
        backends::db::find_video(&app.db.pool, kept.parse().unwrap())
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_slow_upload_and_the_sweep_never_both_win() {
    let app = spawn_app_with(Options::default()).await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    let owner = player.id.parse().unwrap();
    let pool = &app.db.pool;
    // The sweep claims it first: the upload can no longer mark it queued (it answers 503).
    let overtaken = uuid::Uuid::new_v4();
    backends::db::insert_pending_video(pool, overtaken, owner, "lenta")
        .await
        .unwrap();
    assert!(backends::db::claim_abandoned_upload(pool, overtaken)
        .await
        .unwrap());
    assert!(!backends::db::mark_queued(pool, overtaken).await.unwrap());
    // The upload marks it first: the sweep leaves it (and its file) alone.
    let in_time = uuid::Uuid::new_v4();
    backends::db::insert_pending_video(pool, in_time, owner, "a tiempo")
        .await
        .unwrap();
    assert!(backends::db::mark_queued(pool, in_time).await.unwrap());
    assert!(!backends::db::claim_abandoned_upload(pool, in_time)
        .await
        .unwrap());
    assert_eq!(
        backends::db::find_video(pool, in_time)
            .await
            .unwrap()
            .map(|v| v.status),
        Some(backends::db::VideoStatus::Uploaded)
    );
}

#[tokio::test]
async fn an_api_killed_during_eight_uploads_leaves_no_orphan_and_every_201_is_processed() {
    let db = TestDatabase::create().await;
    let backends = TestBackends::local(&db, 5);
    let mut env = backends.env.clone();
    env.extend(
        [
            ("APP__DATABASE__URL", db.url.as_str()),
            ("APP__UPLOAD__MAX_IN_FLIGHT_PER_USER", "8"),
            ("APP__UPLOAD__ABANDONED_AFTER", "5s"),
            ("APP__LIMITS__AUTH_PER_MINUTE", "0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let (mut server, base) = start_api(&env).await;
    let client = reqwest::Client::new();
    let token = token_for(&client, &base).await;

    // Eight uploads at once, sent at different speeds, so the kill finds them at every
    // stage: some answered, some stored but not queued, some still arriving.
    let video = std::fs::read(&fixtures().await.sample).unwrap();
    let mut uploads = Vec::new();
    for i in 0..8u64 {
        let pieces: Vec<bytes::Bytes> = video
            .chunks(video.len().div_ceil(8))
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let pause = Duration::from_millis(40 * i);
        let paced = futures_util::stream::iter(pieces).then(move |piece| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(piece)
        });
        let form = Form::new().text("title", format!("jugada {i}")).part(
            "video_file",
            Part::stream(reqwest::Body::wrap_stream(paced)).file_name("clip.mp4"),
        );
        let request = client
            .post(format!("{base}/api/videos/upload"))
            .bearer_auth(&token)
            .multipart(form)
            .send();
        uploads.push(tokio::spawn(request));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    let mut accepted = Vec::new();
    for upload in uploads {
        if let Ok(Ok(response)) = upload.await {
            if response.status() == StatusCode::CREATED {
                let body: serde_json::Value = response.json().await.unwrap();
                accepted.push(
                    body["task_id"]
                        .as_str()
                        .unwrap()
                        .parse::<uuid::Uuid>()
                        .unwrap(),
                );
            }
        }
    }

    // Back up: the API sweeps what was cut off, a worker drains the queue.
    let (_server, _base) = start_api(&env).await;
    eventually(
        "no upload left pending",
        Duration::from_secs(30),
        || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM videos WHERE queued_at IS NULL")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (pending == 0).then_some(())
        },
    )
    .await;
    let settings = Settings::load_from(&[], env.clone()).unwrap();
    let worker = Arc::new(worker::Worker::build(&settings).await.unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));
    eventually(
        "every video to be processed",
        Duration::from_secs(180),
        || async {
            let unfinished: i64 =
                sqlx::query_scalar("SELECT count(*) FROM videos WHERE status <> 'processed'")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_messages")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            (unfinished == 0 && queued == 0).then_some(())
        },
    )
    .await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    let rows: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM videos ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for id in &accepted {
        assert!(rows.contains(id), "an upload that got 201 is gone: {id}");
    }
    // Every stored file belongs to a video, and every video has both of its files.
    let mut expected: Vec<String> = rows
        .iter()
        .flat_map(|id| {
            [
                backends::job::original_key(*id),
                backends::job::processed_key(*id),
            ]
        })
        .collect();
    expected.sort();
    // (Besides the videos' files, storage holds the worker's `health/` objects.)
    let mut stored = backends.store.list("original/").await.unwrap();
    stored.extend(backends.store.list("processed/").await.unwrap());
    assert_eq!(stored, expected);
    eprintln!(
        "killed during 8 uploads: {} answered 201, {} videos kept, all processed",
        accepted.len(),
        rows.len()
    );
}

#[tokio::test]
async fn a_flood_of_300_parallel_logins_keeps_memory_bounded_and_health_answering() {
    let db = TestDatabase::create().await;
    let storage = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("APP__DATABASE__URL", db.url.as_str()),
        (
            "APP__STORAGE__LOCAL_DIR",
            &storage.path().display().to_string(),
        ),
        // The rate limit would refuse most of them first: this is about the hashing.
        ("APP__LIMITS__AUTH_PER_MINUTE", "0"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let (server, base) = start_api(&env).await;
    let pid = server.id().unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let token = token_for(&client, &base).await;
    drop(token);

    let logins: Vec<_> = (0..300)
        .map(|i| {
            let request = client
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"email": format!("nadie{i}@example.com"), "password": "Canasta2026"}))
                .send();
            tokio::spawn(async move {
                let response = request.await.unwrap();
                let retry_after = response.headers().contains_key("retry-after");
                (response.status(), retry_after)
            })
        })
        .collect();
    // Health keeps answering while they run.
    let mut health_checks = 0;
    let mut running = true;
    while running {
        for path in ["/api/health", "/api/health/live"] {
            // Generous: the test suite runs beside it on the same two cores.
            let response = tokio::time::timeout(
                Duration::from_secs(10),
                client.get(format!("{base}{path}")).send(),
            )
            .await
            .expect("health did not answer within 10 s")
            .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            health_checks += 1;
        }
        running = logins.iter().any(|l| !l.is_finished());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut refused, mut busy) = (0, 0);
    for login in logins {
        match login.await.unwrap() {
            (StatusCode::UNAUTHORIZED, _) => refused += 1,
            (StatusCode::SERVICE_UNAVAILABLE, true) => busy += 1,
            other => panic!("a login answered {other:?}"),
        }
    }
    let peak_mib = peak_rss_kib(pid) / 1024;
    eprintln!(
        "300 parallel logins: {refused} checked (401), {busy} told to retry (503), \
         {health_checks} health checks answered, API peak RSS {peak_mib} MiB"
    );
    assert_eq!(refused + busy, 300);
    assert!(peak_mib < 250, "the API reached {peak_mib} MiB");
}
