//! The smoke flow through the web instance's nginx, and the requests of the restart
//! scenario.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::Report;
use crate::api_client;
use crate::paths::scratch_dir;

// ------------------------------------------------------------------- smoke flow

/// Signup, login, upload through the web instance's nginx; the worker instance processes
/// it; download; a second player votes; the rankings name the first.
/// The smoke flow against `base` (the load balancer in front of the web instance).
pub(super) fn smoke_flow(report: &mut Report, base: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async { smoke(report, base).await })
}

async fn smoke(report: &mut Report, base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let clip = scratch_dir().join("rehearse/clip.mp4");
    if !clip.exists() {
        crate::media::generate_once(
            &crate::media::Clip::plain(1280, 720, 5),
            &clip,
            "a 5 s 720p clip",
        )?;
    }
    let step =
        |report: &mut Report, name: &str, result: anyhow::Result<String>| -> anyhow::Result<()> {
            match result {
                Ok(detail) => {
                    report.pass(name, detail);
                    Ok(())
                }
                Err(e) => {
                    report.fail(name, &e);
                    Err(e)
                }
            }
        };
    let player = api_client::signup_new_player(&client, base, "Rehearsal").await;
    step(
        report,
        "signup + login (via nginx)",
        player
            .as_ref()
            .map(|_| "201, 200".to_owned())
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    )?;
    let token = player?;
    let started = Instant::now();
    let upload = upload(&client, base, &token, &clip, "Rehearsal").await;
    step(
        report,
        "upload",
        upload
            .as_ref()
            .map(|id| format!("201, video {id}"))
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    )?;
    let video = upload?;
    let processed = async {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let detail = api_client::video(&client, base, &token, &video).await?;
            match detail["status"].as_str() {
                Some("processed") => {
                    return Ok::<_, anyhow::Error>(
                        detail["processed_url"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                }
                Some("failed") => bail!("the worker failed it: {detail}"),
                _ if Instant::now() > deadline => bail!("not processed after 5 min: {detail}"),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    .await;
    step(
        report,
        "processed by the worker instance",
        processed
            .as_ref()
            .map(|_| {
                format!(
                    "{:.1} s after the upload's 201",
                    started.elapsed().as_secs_f64()
                )
            })
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    )?;
    let url = processed?;
    let download = async {
        let response = client.get(&url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "download answered {}",
            response.status()
        );
        let bytes = response.bytes().await?;
        anyhow::ensure!(bytes.len() > 1000 && &bytes[4..8] == b"ftyp", "not an MP4");
        Ok(format!("{} bytes of MP4", bytes.len()))
    }
    .await;
    step(report, "download processed", download)?;
    let vote = async {
        let fan = api_client::signup_new_player(&client, base, "Fan").await?;
        let response = client
            .post(format!("{base}/api/public/videos/{video}/vote"))
            .bearer_auth(&fan)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().as_u16() == 200,
            "vote answered {}",
            response.status()
        );
        // The rankings are a snapshot refreshed every `public.rankings_refresh` (30 s).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let rankings: serde_json::Value = client
                .get(format!("{base}/api/public/rankings"))
                .send()
                .await?
                .json()
                .await?;
            let first = &rankings[0];
            if first["votes"].as_i64() == Some(1) {
                return Ok(format!("first: {} with 1 vote", first["username"]));
            }
            if Instant::now() > deadline {
                bail!("rankings do not show the vote: {rankings}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    .await;
    step(report, "vote + rankings", vote)?;
    Ok(())
}

/// Uploads `clip` as the player with `token`; the new video's id.
async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    clip: &Path,
    title: &str,
) -> anyhow::Result<String> {
    api_client::upload(client, base, token, tokio::fs::read(clip).await?, title).await
}

const BASE: &str = "http://127.0.0.1:80";

/// Uploads `clip` and returns its id once the worker has taken it.
pub(super) async fn start_job_in_flight(clip: &Path) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let token = api_client::signup_new_player(&client, BASE, "Restart").await?;
    let video = upload(&client, BASE, &token, clip, "In flight").await?;
    // A job the worker received before it read the rotated password comes back after the
    // queue's retry delay (30 s).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let detail = api_client::video(&client, BASE, &token, &video).await?;
        match detail["status"].as_str() {
            Some("processing") => return Ok(video),
            Some("processed") => bail!("the job finished before the worker could be stopped"),
            _ if Instant::now() > deadline => bail!("the worker did not take the job: {detail}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sign-up and log-in once the API has read the rotated password again (its first
/// requests on new connections may be refused with 503 until then); how long that took.
pub(super) async fn after_rotation() -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let started = Instant::now();
    let mut refused = 0;
    loop {
        match api_client::signup_new_player(&client, BASE, "Rotated").await {
            Ok(_) => {
                return Ok(format!(
                    "sign-up and log-in work {:.1} s after the rotation ({refused} refused before)",
                    started.elapsed().as_secs_f64()
                ));
            }
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(e.context("the API does not use the rotated password 30 s later"));
            }
            Err(_) => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A login (the API reads the password again at start) and the job in flight
/// processed.
pub(super) async fn after_restart(video: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let token = api_client::signup_new_player(&client, BASE, "Again").await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let public: serde_json::Value = client
            .get(format!("{BASE}/api/public/videos?limit=100"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let listed = public
            .as_array()
            .is_some_and(|all| all.iter().any(|v| v["video_id"] == video));
        if listed {
            return Ok("signup and login work; the job in flight is processed and public".into());
        }
        if Instant::now() > deadline {
            bail!("the job in flight is not processed 5 min after the restart");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
