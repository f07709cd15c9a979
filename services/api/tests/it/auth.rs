//! Signup, login and what tokens are accepted.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{detail, spawn_app, JWT_SECRET};

fn signup_body(email: &str) -> Value {
    json!({
        "first_name": "Ana", "last_name": "Ruiz", "email": email,
        "password1": "Canasta2026", "password2": "Canasta2026",
        "city": "Bogotá", "country": "Colombia",
    })
}

#[tokio::test]
async fn signup_returns_201_with_the_new_user() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/auth/signup"))
        .json(&signup_body("ana@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Usuario creado exitosamente.");
    assert!(body["user_id"].as_str().is_some_and(|id| !id.is_empty()));
    for (field, value) in [
        ("email", "ana@example.com"),
        ("first_name", "Ana"),
        ("last_name", "Ruiz"),
        ("city", "Bogotá"),
        ("country", "Colombia"),
    ] {
        assert_eq!(body[field], value, "{field}");
    }
    assert!(body.get("password1").is_none() && body.get("password_hash").is_none());
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

#[tokio::test]
async fn signup_refuses_an_email_already_registered_in_any_case() {
    let app = spawn_app().await;
    let first = app
        .client
        .post(app.url("/api/auth/signup"))
        .json(&signup_body("ana@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = app
        .client
        .post(app.url("/api/auth/signup"))
        .json(&signup_body("ANA@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(detail(again).await.contains("email"));
    assert_eq!(app.count_rows("users").await, 1);
}

#[tokio::test]
async fn signup_refuses_each_invalid_body_with_a_clear_detail() {
    let app = spawn_app().await;
    let mut cases: Vec<(String, Value, &str)> = Vec::new();
    for field in [
        "first_name",
        "last_name",
        "email",
        "password1",
        "password2",
        "city",
        "country",
    ] {
        let mut body = signup_body("x@example.com");
        body.as_object_mut().unwrap().remove(field);
        cases.push((format!("missing {field}"), body, field));
        let mut blank = signup_body("x@example.com");
        blank[field] = json!("");
        cases.push((format!("empty {field}"), blank, field));
    }
    let mut mismatch = signup_body("x@example.com");
    mismatch["password2"] = json!("Canasta2027");
    cases.push(("passwords differ".into(), mismatch, "no coinciden"));
    let mut weak = signup_body("x@example.com");
    weak["password1"] = json!("abc");
    weak["password2"] = json!("abc");
    cases.push(("weak password".into(), weak, "contraseña"));
    cases.push((
        "malformed email".into(),
        signup_body("not-an-email"),
        "email",
    ));
    cases.push(("not an object".into(), json!([1, 2]), "JSON"));
    for (name, body, expected) in cases {
        let response = app
            .client
            .post(app.url("/api/auth/signup"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
        let detail = detail(response).await;
        assert!(detail.contains(expected), "{name}: {detail}");
    }
    let garbage = app
        .client
        .post(app.url("/api/auth/signup"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert!(detail(garbage).await.contains("JSON"));
    assert_eq!(app.count_rows("users").await, 0);
}

#[tokio::test]
async fn login_returns_a_bearer_token_for_json_and_form_bodies() {
    let app = spawn_app().await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    let json_login = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": player.email.to_uppercase(), "password": "Canasta2026"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_login.status(), StatusCode::OK);
    assert_eq!(
        json_login.headers()["cache-control"],
        "no-store",
        "a token must never be cached"
    );
    let body: Value = json_login.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        app.get("/api/videos", Some(token)).await.status(),
        StatusCode::OK
    );

    let form_login = app
        .client
        .post(app.url("/api/auth/login"))
        .form(&[
            ("username", player.email.as_str()),
            ("password", "Canasta2026"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form_login.status(), StatusCode::OK);
    let body: Value = form_login.json().await.unwrap();
    assert!(body["access_token"].as_str().is_some());
}

#[tokio::test]
async fn login_answers_401_alike_for_a_wrong_password_and_an_unknown_email() {
    let app = spawn_app().await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    let wrong = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": player.email, "password": "Canasta2027"}))
        .send()
        .await
        .unwrap();
    let unknown = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": "Canasta2026"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(detail(wrong).await, detail(unknown).await);
}

#[tokio::test]
async fn login_without_credentials_is_400() {
    let app = spawn_app().await;
    for body in [
        json!({}),
        json!({"email": "a@b.co"}),
        json!({"password": "x"}),
    ] {
        let response = app
            .client
            .post(app.url("/api/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let huge = serde_json::json!({"email": "a@b.co", "password": "x".repeat(100_000)});
    let too_big = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), StatusCode::BAD_REQUEST);
    assert!(detail(too_big).await.contains("demasiado grande"));
    let garbage = app
        .client
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}

fn forge(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn protected_routes_refuse_missing_tampered_expired_and_unsigned_tokens() {
    let app = spawn_app().await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    let now = jsonwebtoken::get_current_timestamp();
    let expired = forge(
        json!({"sub": player.id, "iat": now - 7200, "exp": now - 3600}),
        JWT_SECRET,
    );
    let other_key = forge(
        json!({"sub": player.id, "iat": now, "exp": now + 3600}),
        "some-other-secret-some-other-secret",
    );
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let payload = player.token.split('.').nth(1).unwrap();
    let unsigned = format!("{header}.{payload}.");
    let mut tampered = player.token.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let bad_tokens = [
        None,
        Some(expired),
        Some(other_key),
        Some(unsigned),
        Some(tampered),
        Some("garbage".to_owned()),
    ];
    let video = uuid::Uuid::new_v4();
    let routes = [
        ("GET", "/api/videos".to_owned()),
        ("GET", format!("/api/videos/{video}")),
        ("DELETE", format!("/api/videos/{video}")),
        ("POST", "/api/videos/upload".to_owned()),
        ("POST", format!("/api/public/videos/{video}/vote")),
    ];
    for (method, path) in &routes {
        for token in &bad_tokens {
            let mut request = app.client.request(method.parse().unwrap(), app.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(response.headers().contains_key("www-authenticate"));
            assert!(!detail(response).await.is_empty());
        }
    }
    assert_eq!(
        app.get("/api/videos", Some(&player.token)).await.status(),
        StatusCode::OK
    );
}
