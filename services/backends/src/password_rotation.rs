//! Following the database password when it changes under a running service.
//!
//! RDS rotates the password it manages (every 7 days by default) in Secrets Manager and in
//! the database together. Connections already open keep working, but sqlx replaces every
//! connection within its lifetime, and each new one is refused (SQLSTATE 28P01) until the
//! service uses the new password: without this, both tiers would fail their requests and
//! health checks a few minutes after a rotation until someone restarted them.
//!
//! When `database.password_secret` names the secret, a task reads it again whenever a
//! connection is refused for its password (the main error paths call [`note`]) and every
//! few minutes besides (for refusals seen elsewhere), and gives the pool's future
//! connections the new login.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::settings::AwsSettings;

/// Woken by [`note`]: process-wide because a refused password is news for every pool a
/// service has, wherever the error surfaces.
static REFUSED: Notify = Notify::const_new();

/// Read the secret this often even without a refusal, so a rotation is picked up before
/// the connections opened with the old password are all replaced.
const PERIOD: Duration = Duration::from_secs(300);

/// At most one read per this long while connections keep being refused (the database may
/// take the new password a moment before the secret shows it).
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Whether the server refused the login (`invalid_password`), which a rotation causes.
pub fn is_refused_password(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("28P01"))
}

/// Called where database errors surface: a refused password wakes the task that reads the
/// secret again. Any other error is ignored.
pub fn note(err: &sqlx::Error) {
    if is_refused_password(err) {
        REFUSED.notify_one();
    }
}

#[derive(PartialEq, Eq, serde::Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// Reads the secret `secret_id` (an RDS managed secret: JSON with `username` and
/// `password`) once, so the pools' login is current when this returns, then starts the task
/// that keeps it so for the life of the process. A failed read is logged, not fatal: the
/// URL's login stays until a read succeeds.
pub async fn follow(pools: Vec<PgPool>, secret_id: String, aws: &AwsSettings) {
    let client = aws_sdk_secretsmanager::Client::new(&crate::aws_sdk_config(aws).await);
    let mut current: Option<Login> = None;
    apply(&pools, &client, &secret_id, &mut current).await;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(MIN_INTERVAL).await;
            let _ = tokio::time::timeout(PERIOD, REFUSED.notified()).await;
            apply(&pools, &client, &secret_id, &mut current).await;
        }
    });
}

/// Reads the secret (bounded by the AWS settings' operation timeout) and gives the pools'
/// new connections its login if it differs from `current`.
async fn apply(
    pools: &[PgPool],
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
    current: &mut Option<Login>,
) {
    match read(client, secret_id).await {
        Ok(login) if current.as_ref() != Some(&login) => {
            for pool in pools {
                let options = (*pool.connect_options())
                    .clone()
                    .username(&login.username)
                    .password(&login.password);
                pool.set_connect_options(options);
            }
            if current.is_some() {
                tracing::info!(
                    secret = secret_id,
                    "the database password changed in Secrets Manager; new connections use it"
                );
            }
            *current = Some(login);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            secret = secret_id,
            error = format!("{e:#}"),
            "cannot read the database password; new connections keep the last one"
        ),
    }
}

async fn read(client: &aws_sdk_secretsmanager::Client, secret_id: &str) -> anyhow::Result<Login> {
    let secret = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .context("GetSecretValue")?;
    let text = secret
        .secret_string()
        .context("the secret has no string value")?;
    serde_json::from_str(text).context("the secret is not JSON with username and password")
}
