//! The server binary: starts from its settings and drains in-flight requests on SIGTERM.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use testkit::TestDatabase;

use crate::helpers::{fixtures, start_api, token_for};

#[tokio::test]
async fn sigterm_lets_an_upload_in_flight_finish_then_exits_cleanly() {
    let db = TestDatabase::create().await;
    let storage = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("APP__DATABASE__URL", db.url.clone()),
        ("APP__SERVER__SHUTDOWN_TIMEOUT", "20s".to_owned()),
        (
            "APP__STORAGE__LOCAL_DIR",
            storage.path().display().to_string(),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec();
    let (mut server, base) = start_api(&env).await;
    let client = reqwest::Client::new();
    let token = token_for(&client, &base).await;

    // Send the video slowly, in ten pieces over about two seconds.
    let video = std::fs::read(&fixtures().await.sample).unwrap();
    let pieces: Vec<Bytes> = video
        .chunks(video.len().div_ceil(10))
        .map(Bytes::copy_from_slice)
        .collect();
    let slow = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, std::io::Error>(piece)
    });
    let form = Form::new().text("title", "lenta").part(
        "video_file",
        Part::stream(reqwest::Body::wrap_stream(slow)).file_name("clip.mp4"),
    );
    let upload = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/api/videos/upload");
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .multipart(form)
                .send()
                .await
        }
    });

    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = server.id().unwrap().to_string();
    #[allow(clippy::disallowed_methods)] // delivering a signal to the server under test
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());

    let response = upload
        .await
        .unwrap()
        .expect("the in-flight upload was cut off");
    assert_eq!(response.status(), StatusCode::CREATED);
    let status = tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("server did not exit")
        .unwrap();
    assert!(status.success(), "server exited with {status}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM videos")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}
