//! The goose scenario: simulated players and fans signing up once, then uploading and
//! reading the public list and rankings in the `--mix` proportions, and a phase's figures
//! from goose's metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use goose::metrics::{GooseCoordinatedOmissionMitigation, GooseMetrics};
use goose::prelude::*;

use super::{Mix, Phase};
use crate::api_client;

/// What every simulated user of a run shares; each transaction holds an `Arc` of it.
pub(super) struct Crowd {
    /// The file every upload sends (shared, not copied per request).
    pub(super) upload: bytes::Bytes,
    /// The next user's number, for a unique e-mail address.
    pub(super) next_user: AtomicUsize,
    /// Users of the current phase whose sign-up or log-in failed: they send no uploads, so
    /// their failures would otherwise be invisible in the figures.
    pub(super) failed_logins: AtomicUsize,
}

struct Session {
    token: String,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    /// The liveness route, which does nothing: the generator's ceiling.
    NoOp,
    /// Uploads and public reads in the `--mix` proportions.
    Mix,
}

pub(super) async fn attack(
    base: &str,
    crowd: &Arc<Crowd>,
    users: usize,
    ramp: Duration,
    hold: Duration,
    route: Route,
    mix: Mix,
) -> anyhow::Result<GooseMetrics> {
    let think = (Duration::from_millis(500), Duration::from_millis(1500));
    let scenario = match route {
        Route::NoOp => scenario!("no-op").register_transaction(transaction!(live).set_name("live")),
        Route::Mix => {
            let mut scenario = scenario!("player-and-fan")
                .set_wait_time(think.0, think.1)?
                .register_transaction(with_crowd(crowd, Action::LogIn).set_on_start());
            for (weight, action) in [
                (
                    mix.upload,
                    with_crowd(crowd, Action::Upload).set_name("upload"),
                ),
                (mix.list, transaction!(public_list).set_name("public list")),
                (mix.rankings, transaction!(rankings).set_name("rankings")),
            ] {
                if weight > 0 {
                    scenario = scenario.register_transaction(action.set_weight(weight)?);
                }
            }
            scenario
        }
    };
    let hatch_seconds = ramp.as_secs_f64().max(0.001);
    let metrics =
        GooseAttack::initialize_with_config(goose::config::GooseConfiguration::default())?
            .register_scenario(scenario)
            .set_default(GooseDefault::Host, base)?
            .set_default(GooseDefault::Users, users)?
            .set_default(
                GooseDefault::HatchRate,
                format!("{:.3}", users as f64 / hatch_seconds).as_str(),
            )?
            .set_default(GooseDefault::RunTime, hold.as_secs().max(1) as usize)?
            .set_default(GooseDefault::Quiet, 1)?
            .set_default(GooseDefault::NoPrintMetrics, true)?
            .set_default(GooseDefault::NoTelnet, true)?
            .set_default(GooseDefault::NoWebSocket, true)?
            .set_default(
                GooseDefault::CoordinatedOmissionMitigation,
                GooseCoordinatedOmissionMitigation::Average,
            )?
            .execute()
            .await
            .context("the load generator failed")?;
    Ok(metrics)
}

async fn live(user: &mut GooseUser) -> TransactionResult {
    user.get("/api/health/live").await?;
    Ok(())
}

/// The transactions that need what the users share.
#[derive(Clone, Copy)]
enum Action {
    LogIn,
    Upload,
}

/// A transaction running `action` with its own handle on `crowd` (goose's `transaction!`
/// takes a plain function, which could reach shared state only through statics).
fn with_crowd(crowd: &Arc<Crowd>, action: Action) -> Transaction {
    let crowd = crowd.clone();
    Transaction::new(Arc::new(move |user| {
        let crowd = crowd.clone();
        Box::pin(async move {
            match action {
                Action::LogIn => log_in(user, &crowd).await,
                Action::Upload => upload(user, &crowd).await,
            }
        })
    }))
}

/// Each simulated user signs up and logs in once (not measured).
async fn log_in(user: &mut GooseUser, crowd: &Crowd) -> TransactionResult {
    let n = crowd.next_user.fetch_add(1, Ordering::SeqCst);
    let base = user.base_url.to_string();
    let email = format!("capacity-{}-{n}@example.com", std::process::id());
    match api_client::signup_and_login(&user.client, base.trim_end_matches('/'), "Carga", &email)
        .await
    {
        Ok(token) => user.set_session_data(Session { token }),
        Err(e) => {
            crowd.failed_logins.fetch_add(1, Ordering::SeqCst);
            eprintln!("capacity web: user {n} could not log in: {e:#}");
        }
    }
    Ok(())
}

async fn upload(user: &mut GooseUser, crowd: &Crowd) -> TransactionResult {
    let Some(token) = user.get_session_data::<Session>().map(|s| s.token.clone()) else {
        return Ok(());
    };
    let length = crowd.upload.len() as u64;
    let part = reqwest::multipart::Part::stream_with_length(crowd.upload.clone(), length)
        .file_name("clip.mp4")
        .mime_str("video/mp4")
        .expect("a valid MIME type");
    let form = reqwest::multipart::Form::new()
        .text("title", "Prueba de carga")
        .part("video_file", part);
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/api/videos/upload")?
        .bearer_auth(token)
        .multipart(form);
    let request = GooseRequest::builder()
        .set_request_builder(builder)
        .name("upload")
        .expect_status_code(201)
        .build();
    user.request(request).await?;
    Ok(())
}

async fn public_list(user: &mut GooseUser) -> TransactionResult {
    user.get_named("/api/public/videos?limit=20", "public list")
        .await?;
    Ok(())
}

async fn rankings(user: &mut GooseUser) -> TransactionResult {
    user.get_named("/api/public/rankings?limit=20", "rankings")
        .await?;
    Ok(())
}

/// A phase's figures from goose's metrics: response times with coordinated omission
/// mitigated (goose backfills the requests a stalled user did not send), when it had to.
pub(super) fn summarize(name: &str, users: usize, metrics: &GooseMetrics) -> Phase {
    let mut all: BTreeMap<usize, usize> = BTreeMap::new();
    let (mut ok, mut failed) = (0, 0);
    let mut failures = BTreeMap::new();
    let mut by_action = BTreeMap::new();
    for aggregate in metrics.requests.values() {
        let timing = aggregate
            .coordinated_omission_data
            .as_ref()
            .unwrap_or(&aggregate.raw_data);
        for (ms, count) in &timing.times {
            *all.entry(*ms).or_default() += count;
        }
        ok += aggregate.success_count;
        failed += aggregate.fail_count;
        for (status, count) in &aggregate.status_code_counts {
            if !(200..300).contains(status) {
                *failures.entry(*status).or_default() += count;
            }
        }
        by_action.insert(
            aggregate.path.clone(),
            (
                aggregate.success_count + aggregate.fail_count,
                histogram_percentile(&timing.times, 0.95),
            ),
        );
    }
    let requests = ok + failed;
    let seconds = metrics.duration.max(1) as f64;
    Phase {
        name: name.to_owned(),
        users,
        seconds,
        requests,
        rps: requests as f64 / seconds,
        p50_ms: histogram_percentile(&all, 0.50),
        p95_ms: histogram_percentile(&all, 0.95),
        p99_ms: histogram_percentile(&all, 0.99),
        error_rate: if requests == 0 {
            0.0
        } else {
            failed as f64 / requests as f64
        },
        failures,
        api_cpu_percent: None,
        machine_cpu_percent: None,
        api_rss_mb: None,
        by_action,
        failed_logins: 0,
    }
}

/// Nearest-rank percentile of a histogram of milliseconds → counts.
fn histogram_percentile(times: &BTreeMap<usize, usize>, p: f64) -> f64 {
    capacity::stats::percentile_of_counts(times.iter().map(|(&ms, &count)| (ms as f64, count)), p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_nearest_rank() {
        let times: BTreeMap<usize, usize> = [(10, 90), (100, 9), (1000, 1)].into_iter().collect();
        assert_eq!(histogram_percentile(&times, 0.5), 10.0);
        assert_eq!(histogram_percentile(&times, 0.95), 100.0);
        assert_eq!(histogram_percentile(&times, 0.999), 1000.0);
        assert_eq!(histogram_percentile(&BTreeMap::new(), 0.5), 0.0);
    }
}
