//! The page for players and fans, as HTTP sees it: every page and asset is served with a
//! strict Content-Security-Policy, the script and style are our own files with long
//! caching, and no page carries inline script or style.

use reqwest::StatusCode;

use crate::helpers::{spawn_app, spawn_app_with, Options};

#[tokio::test]
async fn every_page_is_html_in_spanish_under_a_strict_content_security_policy() {
    let app = spawn_app().await;
    for path in ["/", "/rankings", "/registro", "/ingresar", "/mis-videos"] {
        let response = app.get(path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(
            headers["content-type"], "text/html; charset=utf-8",
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(rule), "{path}: {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let html = response.text().await.unwrap();
        assert!(
            html.starts_with("<!DOCTYPE html><html lang=\"es\">"),
            "{path}"
        );
        assert!(html.contains(r#"name="viewport""#), "{path}");
        // Scripts only by src, never inline; no style attributes or blocks.
        assert_eq!(html.matches("<script").count(), 1, "{path}");
        assert!(html.contains(r#"<script src="/static/app.js?v="#), "{path}");
        assert!(
            !html.contains("<style") && !html.contains("style="),
            "{path}"
        );
        for handler in [
            "onclick=",
            "onload=",
            "onerror=",
            "onsubmit=",
            "javascript:",
        ] {
            assert!(!html.contains(handler), "{path}: {handler}");
        }
    }
}

#[tokio::test]
async fn the_script_and_style_are_served_with_their_types_and_long_caching() {
    let app = spawn_app().await;
    for (path, content_type, sample) in [
        (
            "/static/app.js",
            "text/javascript; charset=utf-8",
            "sessionStorage",
        ),
        ("/static/app.css", "text/css; charset=utf-8", "--navy"),
    ] {
        let response = app.get(path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], content_type);
        assert!(response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable"));
        assert!(response.text().await.unwrap().contains(sample), "{path}");
    }
}

/// The script writes what the API returns as text only: a title such as
/// `<img src=x onerror=alert(1)>` can never become markup.
#[test]
fn the_script_never_writes_markup() {
    let script = include_str!("../../web/app.js");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
}

/// The upload form states the server's limits, from its settings: with
/// `upload.max_bytes` at 50 MB the page says 50 MB and gives its script that figure, and
/// the title's limit is the API's.
#[tokio::test]
async fn the_upload_form_states_the_servers_own_limits() {
    let app = spawn_app_with(Options {
        extra_env: vec![("APP__UPLOAD__MAX_BYTES", "50000000".to_owned())],
        ..Options::default()
    })
    .await;
    let html = app.get("/mis-videos", None).await.text().await.unwrap();
    assert!(html.contains("Video MP4 (hasta 50 MB)"), "{html}");
    assert!(
        html.contains(r#"data-max-bytes="50000000" data-max-megabytes="50""#),
        "{html}"
    );
    assert!(html.contains(r#"maxlength="500""#), "{html}");
}
