//! The few API calls xtask's benchmarks and the deploy rehearsal make as a player would.

use anyhow::Context;

/// Signs a new player up under a fresh email address (`<first_name>.<n>@example.com`) and
/// logs in; the access token.
pub async fn signup_new_player(
    client: &reqwest::Client,
    base: &str,
    first_name: &str,
) -> anyhow::Result<String> {
    let email = format!(
        "{}.{}@example.com",
        first_name.to_lowercase(),
        unique_number()
    );
    signup_and_login(client, base, first_name, &email).await
}

/// A number that differs between processes and calls (for names, not for secrets).
pub fn unique_number() -> u32 {
    std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
}

/// Signs a player up with `email` and logs in; the access token.
pub async fn signup_and_login(
    client: &reqwest::Client,
    base: &str,
    first_name: &str,
    email: &str,
) -> anyhow::Result<String> {
    let body = serde_json::json!({
        "first_name": first_name, "last_name": "Prueba", "email": email,
        "password1": "Canasta2026", "password2": "Canasta2026",
        "city": "Cali", "country": "Colombia",
    });
    let response = client
        .post(format!("{base}/api/auth/signup"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().as_u16() == 201,
        "signup answered {}: {}",
        response.status(),
        response.text().await?
    );
    let login: serde_json::Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({"email": email, "password": "Canasta2026"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    login["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the login response")
}

/// Uploads `bytes` as an MP4 titled `title`; the new video's id.
pub async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    bytes: Vec<u8>,
    title: &str,
) -> anyhow::Result<String> {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name("clip.mp4")
        .mime_str("video/mp4")?;
    let form = reqwest::multipart::Form::new()
        .text("title", title.to_owned())
        .part("video_file", part);
    let response = client
        .post(format!("{base}/api/videos/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status.as_u16() == 201, "upload answered {status}: {body}");
    body["task_id"]
        .as_str()
        .map(str::to_owned)
        .context("no task_id")
}

/// `GET /api/videos/{id}` as its owner.
pub async fn video(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
) -> anyhow::Result<serde_json::Value> {
    Ok(client
        .get(format!("{base}/api/videos/{id}"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?)
}
