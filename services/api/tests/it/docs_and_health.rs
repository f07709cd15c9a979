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
    let closed_port = testkit::free_port();
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
    // The liveness route the load balancer checks does not depend on the database.
    let live = app.get("/api/health/live", None).await;
    assert_eq!(live.status(), StatusCode::OK);
    // Other routes say so too, rather than failing with a 500.
    let rankings = app.get("/api/public/rankings", None).await;
    assert_eq!(rankings.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// `/api/health` says whether the database answers, not whether the request pool has a
/// connection free: seen in CI, 300 parallel logins queued on the pool made it 503.
#[tokio::test]
async fn health_is_ok_while_every_pooled_connection_is_busy() {
    let app = spawn_app_with(Options {
        extra_env: vec![("APP__DATABASE__MAX_CONNECTIONS", "1".into())],
        ..Options::default()
    })
    .await;
    // The pool's one connection waits on a lock the test holds: a login looks up its user.
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let login = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/api/auth/login"));
        async move {
            let body = serde_json::json!({"email": "nadie@example.com", "password": "x"});
            client.post(url).json(&body).send().await.unwrap().status()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!login.is_finished(), "the login did not wait on the lock");
    let health = app.get("/api/health", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    lock.rollback().await.unwrap();
    assert_eq!(login.await.unwrap(), StatusCode::UNAUTHORIZED);
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
        ("/api/videos/original/{video_id}", "get"),
        ("/api/videos/processed/{video_id}", "get"),
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

#[tokio::test]
async fn a_known_path_asked_with_another_method_is_405_with_allow() {
    let app = spawn_app().await;
    let id = "6f1c4a52-8f5e-4b8e-9d8e-2f3c1a0b9c7d";
    for (method, path, allow) in [
        ("PUT", "/api/auth/signup".to_owned(), "POST"),
        ("GET", "/api/auth/login".to_owned(), "POST"),
        ("DELETE", "/api/videos".to_owned(), "GET"),
        ("OPTIONS", "/api/videos/upload".to_owned(), "POST"),
        ("PATCH", format!("/api/videos/{id}"), "DELETE, GET"),
        ("POST", format!("/api/videos/{id}/processed"), "GET"),
        ("POST", format!("/api/videos/original/{id}"), "GET"),
        ("GET", format!("/api/public/videos/{id}/vote"), "POST"),
        ("POST", "/api/public/rankings".to_owned(), "GET"),
        ("POST", "/api/health".to_owned(), "GET"),
        ("DELETE", "/health".to_owned(), "GET"),
        ("POST", "/".to_owned(), "GET"),
        ("DELETE", "/mis-videos".to_owned(), "GET"),
    ] {
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        assert_eq!(detail(response).await, "Método no permitido.");
    }
    // Unknown paths stay 404, whatever the method.
    let unknown = app
        .client
        .post(app.url("/api/videos/a/b/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_openapi_document_states_the_limits_the_handlers_enforce() {
    let app = spawn_app().await;
    let doc: Value = app
        .get("/api/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    for path in ["/api/public/videos", "/api/public/rankings"] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let param = |name: &str| {
            params
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{path}: no {name}"))["schema"]
                .clone()
        };
        assert_eq!(param("limit")["minimum"], 1, "{path}");
        assert_eq!(param("limit")["maximum"], 100, "{path}");
        assert_eq!(param("offset")["minimum"], 0, "{path}");
        // Each operation lists the 503 every database-backed route can answer.
        assert!(doc["paths"][path]["get"]["responses"]["503"].is_object());
    }
    let signup = &doc["components"]["schemas"]["SignupRequest"]["properties"];
    assert_eq!(signup["email"]["format"], "email");
    assert_eq!(signup["password1"]["minLength"], 8);
    // A request the document calls valid is accepted; one it calls invalid is refused.
    let at_the_limits = app
        .get(
            "/api/public/rankings?limit=100&offset=9223372036854775807",
            None,
        )
        .await;
    assert_eq!(at_the_limits.status(), StatusCode::OK);
    for (query, status) in [("limit=101", 400), ("offset=-1", 400), ("limit=0", 400)] {
        let response = app.get(&format!("/api/public/videos?{query}"), None).await;
        assert_eq!(response.status().as_u16(), status, "{query}");
    }
}
