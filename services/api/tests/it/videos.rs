//! A player's own videos: list, detail, delete, downloads, and who may see what.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{detail, fixtures, spawn_app};

#[tokio::test]
async fn list_shows_only_my_videos_in_upload_order() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let luis = app.signup("Luis", "Paz", "Cali").await;
    let first = app.upload_sample(&ana.token, "primero").await;
    let second = app.upload_sample(&ana.token, "segundo").await;
    let theirs = app.upload_sample(&luis.token, "de luis").await;

    let response = app.get("/api/videos", Some(&ana.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let list: Vec<Value> = response.json().await.unwrap();
    let ids: Vec<&str> = list
        .iter()
        .map(|v| v["video_id"].as_str().unwrap())
        .collect();
    // Oldest first: existing client collections take the last element as the newest.
    assert_eq!(ids, [first.as_str(), second.as_str()]);
    let item = list[0].as_object().unwrap();
    let mut keys: Vec<&str> = item.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "processed_at",
            "processed_url",
            "status",
            "title",
            "uploaded_at",
            "video_id"
        ]
    );
    assert_eq!(item["status"], "uploaded");
    assert!(item["processed_at"].is_null() && item["processed_url"].is_null());

    // A page of it, on request; a bad page is the contract's 400.
    let page: Vec<Value> = app
        .get("/api/videos?limit=1&offset=1", Some(&ana.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["video_id"], second.as_str());
    for bad in ["limit=0", "limit=101", "offset=-1", "limit=x"] {
        let response = app
            .get(&format!("/api/videos?{bad}"), Some(&ana.token))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // The trailing-slash spelling some clients use lists the same.
    let slash: Vec<Value> = app
        .get("/api/videos/", Some(&luis.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(slash.len(), 1);
    assert_eq!(slash[0]["video_id"], theirs.as_str());
}

#[tokio::test]
async fn detail_shows_my_video_and_hides_others() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let luis = app.signup("Luis", "Paz", "Cali").await;
    let id = app.upload_sample(&ana.token, "jugada").await;

    let response = app
        .get(&format!("/api/videos/{id}"), Some(&ana.token))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let video: Value = response.json().await.unwrap();
    assert_eq!(video["video_id"], id.as_str());
    assert_eq!(video["title"], "jugada");
    assert_eq!(video["status"], "uploaded");
    assert_eq!(video["votes"], 0);
    assert!(video["processed_url"].is_null());
    assert!(video["original_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/api/videos/{id}/original")));
    let uploaded_at = video["uploaded_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(uploaded_at).is_ok(),
        "{uploaded_at}"
    );

    let theirs = app
        .get(&format!("/api/videos/{id}"), Some(&luis.token))
        .await;
    assert_eq!(theirs.status(), StatusCode::FORBIDDEN);
    assert!(!detail(theirs).await.is_empty());
}

#[tokio::test]
async fn unknown_and_unparseable_ids_are_404_everywhere() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in [unknown.as_str(), "not-an-id", "12345", "%20"] {
        for (method, path) in [
            ("GET", format!("/api/videos/{id}")),
            ("DELETE", format!("/api/videos/{id}")),
            ("GET", format!("/api/videos/{id}/original")),
            ("GET", format!("/api/videos/{id}/processed")),
            ("POST", format!("/api/public/videos/{id}/vote")),
        ] {
            let response = app
                .client
                .request(method.parse().unwrap(), app.url(&path))
                .bearer_auth(&ana.token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert!(!detail(response).await.is_empty(), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn deleting_an_unpublished_video_removes_row_and_files() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let id = app.upload_sample(&ana.token, "borrar").await;
    let response = app
        .client
        .delete(app.url(&format!("/api/videos/{id}")))
        .bearer_auth(&ana.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "El video ha sido eliminado exitosamente.");
    assert_eq!(body["video_id"], id.as_str());
    assert_eq!(app.count_rows("videos").await, 0);
    assert!(app.store.list("").await.unwrap().is_empty());
    let again = app
        .client
        .delete(app.url(&format!("/api/videos/{id}")))
        .bearer_auth(&ana.token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_failed_video_can_be_deleted() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let id = app.upload_sample(&ana.token, "roto").await;
    sqlx::query("UPDATE videos SET status = 'failed', error = 'ffmpeg rejected the input' WHERE id = $1::uuid")
        .bind(&id).execute(&app.db.pool).await.unwrap();
    let listed: Vec<Value> = app
        .get("/api/videos", Some(&ana.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["status"], "failed");
    assert_eq!(listed[0]["error"], "ffmpeg rejected the input");
    let response = app
        .client
        .delete(app.url(&format!("/api/videos/{id}")))
        .bearer_auth(&ana.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn published_videos_cannot_be_deleted_and_others_cannot_delete_mine() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let luis = app.signup("Luis", "Paz", "Cali").await;
    let mine = app.upload_sample(&ana.token, "mia").await;
    let response = app
        .client
        .delete(app.url(&format!("/api/videos/{mine}")))
        .bearer_auth(&luis.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    app.publish(&mine).await;
    let response = app
        .client
        .delete(app.url(&format!("/api/videos/{mine}")))
        .bearer_auth(&ana.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(detail(response).await.contains("publicado"));
    assert_eq!(app.count_rows("videos").await, 1);
    assert_eq!(app.store.list("").await.unwrap().len(), 2);
}

#[tokio::test]
async fn downloads_follow_ownership_until_the_video_is_public() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let luis = app.signup("Luis", "Paz", "Cali").await;
    let id = app.upload_sample(&ana.token, "jugada").await;
    let original = format!("/api/videos/{id}/original");
    let processed = format!("/api/videos/{id}/processed");

    let response = app.get(&original, Some(&ana.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        std::fs::read(&fixtures().await.sample).unwrap()
    );
    assert_eq!(
        app.get(&original, Some(&luis.token)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get(&original, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let not_yet = app.get(&processed, Some(&ana.token)).await;
    assert_eq!(not_yet.status(), StatusCode::BAD_REQUEST);
    assert!(detail(not_yet).await.contains("procesado"));
    for alias in [
        format!("/api/videos/original/{id}"),
        format!("/api/videos/processed/{id}"),
    ] {
        assert_eq!(
            app.get(&alias, Some(&luis.token)).await.status(),
            StatusCode::FORBIDDEN,
            "{alias}"
        );
        assert_eq!(
            app.get(&alias, None).await.status(),
            StatusCode::UNAUTHORIZED,
            "{alias}"
        );
    }
    let alias_not_yet = app
        .get(&format!("/api/videos/processed/{id}"), Some(&ana.token))
        .await;
    assert_eq!(alias_not_yet.status(), StatusCode::BAD_REQUEST);

    let stale = app.get(&original, Some("not-a-valid-token")).await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);

    app.publish(&id).await;
    // Public now: anyone, even with a stale token, may fetch it.
    let with_stale_token = app.get(&processed, Some("not-a-valid-token")).await;
    assert_eq!(with_stale_token.status(), StatusCode::OK);
    let public = app.get(&processed, None).await;
    assert_eq!(public.status(), StatusCode::OK);
    assert_eq!(
        public.bytes().await.unwrap().as_ref(),
        b"processed video bytes"
    );
    let ranged = app
        .client
        .get(app.url(&processed))
        .header("range", "bytes=0-8")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), b"processed");

    // The paths existing client collections use answer the same, by the same rules.
    let alias = app.get(&format!("/api/videos/processed/{id}"), None).await;
    assert_eq!(alias.status(), StatusCode::OK);
    assert_eq!(
        alias.bytes().await.unwrap().as_ref(),
        b"processed video bytes"
    );
    let alias = app.get(&format!("/api/videos/original/{id}"), None).await;
    assert_eq!(alias.status(), StatusCode::OK);
    assert_eq!(
        alias.bytes().await.unwrap().as_ref(),
        std::fs::read(&fixtures().await.sample).unwrap()
    );

    let video: Value = app
        .get(&format!("/api/videos/{id}"), Some(&ana.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(video["status"], "processed");
    assert!(video["processed_url"]
        .as_str()
        .unwrap()
        .ends_with(&processed));
    assert!(video["processed_at"].is_string());
}
