//! The server binary: starts from its settings and drains in-flight requests on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use backends::testing::{eventually, free_port, TestDatabase};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;

use crate::helpers::{fixtures, JWT_SECRET};

#[tokio::test]
async fn sigterm_lets_an_upload_in_flight_finish_then_exits_cleanly() {
    let db = TestDatabase::create().await;
    let storage = tempfile::tempdir().unwrap();
    let port = free_port();
    #[allow(clippy::disallowed_methods)] // the test runs the real binary
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .env("APP__DATABASE__URL", &db.url)
        .env("APP__SERVER__PORT", port.to_string())
        .env("APP__SERVER__SHUTDOWN_TIMEOUT", "20s")
        .env("APP__AUTH__JWT_SECRET", JWT_SECRET)
        .env("APP__STORAGE__LOCAL_DIR", storage.path())
        .env("APP__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually("the server to come up", Duration::from_secs(30), || async {
        client
            .get(format!("{base}/api/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
    })
    .await;

    let email = format!("ana.{}@example.com", uuid::Uuid::new_v4().simple());
    let signup = serde_json::json!({"first_name": "Ana", "last_name": "Ruiz", "email": email,
        "password1": "Canasta2026", "password2": "Canasta2026", "city": "Cali", "country": "Colombia"});
    assert_eq!(
        client
            .post(format!("{base}/api/auth/signup"))
            .json(&signup)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let login: serde_json::Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({"email": email, "password": "Canasta2026"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();

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
