//! Health checks, the OpenAPI document and the docs page, and error shapes.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{detail, spawn_app, spawn_app_with, Options};

#[tokio::test]
async fn health_is_ok_on_both_paths() {
    let app = spawn_app().await;
    for path in ["/api/health", "/health"] {
        let response = app.get(path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }
}

#[tokio::test]
async fn health_is_503_when_the_database_is_unreachable() {
    let closed_port = backends::testing::free_port();
    let app = spawn_app_with(Options {
        extra_env: vec![
            (
                "APP__DATABASE__URL",
                format!("postgres://nobody@127.0.0.1:{closed_port}/none"),
            ),
            ("APP__DATABASE__ACQUIRE_TIMEOUT", "1s".into()),
        ],
        ..Options::default()
    })
    .await;
    for path in ["/api/health", "/health"] {
        let response = app.get(path, None).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(detail(response).await.contains("Base de datos"));
    }
    // Other routes say so too, rather than failing with a 500.
    let rankings = app.get("/api/public/rankings", None).await;
    assert_eq!(rankings.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn openapi_document_lists_every_contract_route() {
    let app = spawn_app().await;
    let response = app.get("/api/openapi.json", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/auth/signup", "post"),
        ("/api/auth/login", "post"),
        ("/api/videos/upload", "post"),
        ("/api/videos", "get"),
        ("/api/videos/{video_id}", "get"),
        ("/api/videos/{video_id}", "delete"),
        ("/api/videos/{video_id}/original", "get"),
        ("/api/videos/{video_id}/processed", "get"),
        ("/api/public/videos", "get"),
        ("/api/public/videos/{video_id}/vote", "post"),
        ("/api/public/rankings", "get"),
        ("/api/health", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let bare = app.get("/api/docs", None).await;
    assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(bare.headers()["location"], "/api/docs/");
    let docs = app.get("/api/docs/", None).await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs
        .text()
        .await
        .unwrap()
        .to_lowercase()
        .contains("swagger"));
}

#[tokio::test]
async fn unknown_routes_answer_404_with_a_detail() {
    let app = spawn_app().await;
    let response = app.get("/api/nothing-here", None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(!detail(response).await.is_empty());
}
