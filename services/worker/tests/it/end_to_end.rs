//! From an upload through the API to a processed video, locally and on S3/SQS.

use std::time::Duration;

use backends::db::VideoStatus;
use backends::settings::Settings;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::helpers::{assert_meets_spec, make_video, Harness};

/// Starts the API over the harness's database, storage and queue, signs up, uploads
/// `file`, and returns the API's base URL, a token and the new video's id.
async fn upload_through_api(h: &Harness, file: &std::path::Path) -> (String, String, uuid::Uuid) {
    let mut env = h.env.clone();
    env.extend([
        ("APP__SERVER__PORT".to_owned(), "0".to_owned()),
        ("APP__SERVER__WORKERS".to_owned(), "1".to_owned()),
        (
            "APP__AUTH__JWT_SECRET".to_owned(),
            "worker-tests-secret-0123456789abcdef".to_owned(),
        ),
    ]);
    let app = api::Application::build(Settings::load_from(&[], env).unwrap())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let signup = json!({"first_name": "Ana", "last_name": "Ruiz", "email": "ana@example.com",
        "password1": "Canasta2026", "password2": "Canasta2026", "city": "Cali", "country": "Colombia"});
    client
        .post(format!("{base}/api/auth/signup"))
        .json(&signup)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let login: Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": "ana@example.com", "password": "Canasta2026"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let part = Part::bytes(std::fs::read(file).unwrap()).file_name("clip.mp4");
    let response = client
        .post(format!("{base}/api/videos/upload"))
        .bearer_auth(&token)
        .multipart(Form::new().text("title", "jugada").part("video_file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    (
        base,
        token,
        body["task_id"].as_str().unwrap().parse().unwrap(),
    )
}

async fn check_flow(h: Harness) {
    let dir = tempfile::tempdir().unwrap();
    let input = make_video(
        dir.path(),
        "clip.mp4",
        "testsrc2=size=1280x720:rate=30:duration=4",
        &["-f", "lavfi", "-i", "sine=duration=4", "-c:a", "aac"],
    )
    .await;
    let (base, token, id) = upload_through_api(&h, &input).await;
    let (stop, running) = h.run_worker();
    h.wait_for(id, VideoStatus::Processed, Duration::from_secs(120))
        .await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    let (_, probe) = h.processed(id).await;
    let seconds = assert_meets_spec(&probe);
    assert!((seconds - 9.0).abs() < 0.3, "{seconds} s");
    assert!(h.queue_is_empty().await);
    // The API now shows it processed, with a URL that serves it.
    let client = reqwest::Client::new();
    let detail: Value = client
        .get(format!("{base}/api/videos/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "processed");
    let url = detail["processed_url"].as_str().unwrap();
    let bytes = client
        .get(url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bytes.len() > 10_000);
}

#[tokio::test]
async fn an_upload_through_the_api_is_processed_locally() {
    check_flow(Harness::local().await).await;
}

#[tokio::test]
async fn an_upload_through_the_api_is_processed_on_s3_and_sqs() {
    check_flow(Harness::on_aws_emulator().await).await;
}
