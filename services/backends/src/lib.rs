//! What the API and the worker share: the database, object storage, the job queue, media
//! probing, settings, logging set-up and the job message.
//!
//! Architecture invariant: this crate knows nothing of HTTP and links only the S3, SQS and
//! Secrets Manager SDKs (the last to follow a rotated database password); the rest of AWS
//! belongs to `provision`.

pub mod db;
pub mod job;
pub mod media;
pub mod password_rotation;
pub mod queue;
pub mod settings;
pub mod storage;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use settings::{AwsSettings, DatabaseSettings, LogFormat, LogSettings, Settings};

/// What both services run on: the database (migrated first when `database.migrate`),
/// object storage and the job queue, as configured.
#[derive(Debug)]
pub struct Backends {
    pub pool: sqlx::PgPool,
    /// One connection of its own for health checks: a flood of requests queued on `pool`
    /// (300 logins, say) must not read as the database being down.
    pub health_pool: sqlx::PgPool,
    pub store: Arc<dyn storage::ObjectStore>,
    pub queue: Arc<dyn queue::JobQueue>,
}

impl Backends {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let pool = db::connect_lazy(&settings.database).context("database url")?;
        let health_pool = db::connect_lazy(&DatabaseSettings {
            max_connections: 1,
            ..settings.database.clone()
        })
        .context("database url")?;
        if let Some(secret) = &settings.database.password_secret {
            let pools = vec![pool.clone(), health_pool.clone()];
            password_rotation::follow(pools, secret.clone(), &settings.aws).await;
        }
        if settings.database.migrate {
            db::migrate(&pool)
                .await
                .context("cannot apply database migrations (is PostgreSQL reachable?)")?;
        }
        let store = storage::from_settings(&settings.storage, &settings.aws)
            .await
            .context("object storage")?;
        let queue = queue::from_settings(&settings.queue, &settings.aws, &pool)
            .await
            .context("job queue")?;
        Ok(Self {
            pool,
            health_pool,
            store,
            queue,
        })
    }
}

/// The AWS SDK configuration shared by the S3 and SQS clients: the standard credential
/// chain, the configured region, and the endpoint override for emulators.
pub async fn aws_sdk_config(aws: &AwsSettings) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(aws.connect_timeout)
        .read_timeout(aws.read_timeout)
        .operation_attempt_timeout(aws.attempt_timeout)
        .operation_timeout(aws.operation_timeout)
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(aws.region.clone()))
        .timeout_config(timeouts);
    if let Some(endpoint) = &aws.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// Installs the global `tracing` subscriber: JSON on servers, text on a terminal.
/// `RUST_LOG` overrides the configured filter.
pub fn init_tracing(log: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second initialisation (tests start several servers in one process) is harmless.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
