//! The same flow with the AWS backends: S3 storage and an SQS queue, on moto.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{fixtures, spawn_app_with, Options};

#[tokio::test]
async fn upload_list_and_download_work_on_s3_and_sqs() {
    let app = spawn_app_with(Options {
        on_aws_emulator: true,
        ..Options::default()
    })
    .await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let id = app.upload_sample(&ana.token, "en la nube").await;

    assert_eq!(
        app.store.list("").await.unwrap(),
        [format!("original/{id}.mp4")]
    );
    let jobs = app.queued_jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].video_id.to_string(), id);

    let list: Vec<Value> = app
        .get("/api/videos", Some(&ana.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["video_id"], id.as_str());

    // The download route redirects to a presigned S3 URL that serves the original bytes.
    let response = app
        .get(&format!("/api/videos/{id}/original"), Some(&ana.token))
        .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("X-Amz-Signature"), "{location}");
    let bytes = reqwest::get(&location)
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        bytes.as_ref(),
        std::fs::read(&fixtures().await.sample).unwrap()
    );

    // Once processed, clients get presigned URLs directly.
    app.publish(&id).await;
    let public: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    let url = public[0]["processed_url"].as_str().unwrap();
    assert!(
        url.contains(&format!("processed/{id}.mp4")) && url.contains("X-Amz-Signature"),
        "{url}"
    );
    let processed = reqwest::get(url)
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(processed.as_ref(), b"processed video bytes");
}

#[tokio::test]
async fn a_bad_upload_leaves_nothing_in_the_bucket_or_the_queue() {
    let app = spawn_app_with(Options {
        on_aws_emulator: true,
        ..Options::default()
    })
    .await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let response = app
        .upload(&ana.token, &fixtures().await.truncated, "roto")
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    app.assert_nothing_left_behind().await;
}
