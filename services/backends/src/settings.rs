//! Typed configuration: `config/default.toml` (embedded), overlay files, then `APP__…` env vars.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// The defaults, built into every binary so it runs with no file on disk.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// Longest time public data may be stale (the API contract promises at most a minute).
pub const MAX_PUBLIC_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub queue: QueueSettings,
    pub aws: AwsSettings,
    pub auth: AuthSettings,
    pub upload: UploadSettings,
    pub limits: LimitSettings,
    pub public: PublicSettings,
    pub worker: WorkerSettings,
    pub processing: ProcessingSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    #[serde(deserialize_with = "empty_as_none")]
    pub public_base_url: Option<String>,
    pub workers: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(deserialize_with = "address_list")]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    pub migrate: bool,
    #[serde(deserialize_with = "empty_as_none")]
    pub password_secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    pub local_dir: PathBuf,
    #[serde(deserialize_with = "empty_as_none")]
    pub bucket: Option<String>,
    #[serde(deserialize_with = "empty_as_none")]
    pub expected_bucket_owner: Option<String>,
    #[serde(with = "humantime_serde")]
    pub presign_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    Postgres,
    Sqs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub backend: QueueBackend,
    pub name: String,
    #[serde(deserialize_with = "empty_as_none")]
    pub sqs_queue_url: Option<String>,
    pub max_receives: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    pub region: String,
    #[serde(deserialize_with = "empty_as_none")]
    pub endpoint_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSettings {
    pub max_bytes: u64,
    #[serde(deserialize_with = "empty_as_none")]
    pub staging_dir: Option<PathBuf>,
    pub check_duration: bool,
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    pub check_resolution: bool,
    pub min_height: u32,
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    pub max_frame: FrameSize,
    pub max_frame_rate: u32,
    pub max_streams: usize,
    #[serde(with = "humantime_serde")]
    pub receive_timeout: Duration,
    pub max_in_flight_per_user: usize,
    #[serde(with = "humantime_serde")]
    pub abandoned_after: Duration,
}

/// A picture size written "WIDTHxHEIGHT"; as a limit it admits either orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
}

impl FrameSize {
    /// Whether a `width`×`height` picture fits, turned either way.
    pub fn admits(&self, width: u32, height: u32) -> bool {
        let (long, short) = (width.max(height), width.min(height));
        long <= self.width.max(self.height) && short <= self.width.min(self.height)
    }
}

impl<'de> Deserialize<'de> for FrameSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let parsed = text
            .split_once(['x', 'X', '×'])
            .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
        match parsed {
            Some((width, height)) if width > 0 && height > 0 => Ok(Self { width, height }),
            _ => Err(serde::de::Error::custom(format!(
                "\"{text}\" is not a frame size such as \"4096x2160\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub hashing_concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub hashing_wait: Duration,
    pub auth_per_minute: u32,
    pub votes_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicSettings {
    #[serde(with = "humantime_serde")]
    pub rankings_refresh: Duration,
    #[serde(with = "humantime_serde")]
    pub videos_refresh: Duration,
    pub max_public_videos: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub wait_time: Duration,
    #[serde(with = "humantime_serde")]
    pub ffmpeg_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub dead_letter_sweep: Duration,
    #[serde(deserialize_with = "empty_as_none")]
    pub work_dir: Option<PathBuf>,
    /// The Auto Scaling group and termination hook the worker's instance follows (its
    /// user data sets them on AWS); empty: neither (a local run).
    pub autoscaling_group: String,
    pub lifecycle_hook: String,
    /// Where the instance metadata service (IMDSv2) answers.
    pub metadata_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingSettings {
    pub x264_preset: String,
    pub crf: u8,
    pub max_bitrate_kbps: u32,
    #[serde(with = "humantime_serde")]
    pub intro: Duration,
    #[serde(with = "humantime_serde")]
    pub outro: Duration,
}

/// Longest the two bumpers may last together (the contract's limit).
pub const MAX_BUMPERS: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

impl Settings {
    /// Loads the embedded defaults, then each file in `overlays` in order, then the environment.
    pub fn load(overlays: &[PathBuf]) -> Result<Self, SettingsError> {
        Self::load_from(overlays, std::env::vars())
    }

    /// [`Settings::load`] with an explicit environment, so tests need not touch the process's.
    pub fn load_from(
        overlays: &[PathBuf],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        for path in overlays {
            builder = builder.add_source(overlay_file(path)?);
        }
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        if !env.contains_key("APP__DATABASE__URL") {
            if let Some(url) = env.get("DATABASE_URL") {
                builder = builder.set_override("database.url", url.as_str())?;
            }
        }
        let app_env = config::Environment::with_prefix("APP")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(
                env.into_iter()
                    .filter(|(k, _)| k.starts_with("APP__"))
                    .collect(),
            ));
        let settings: Settings = builder.add_source(app_env).build()?.try_deserialize()?;
        settings.validate_common()?;
        Ok(settings)
    }

    /// Checks that hold for every component; each binary checks its own sections on top.
    /// Checks for the sections only the worker reads.
    pub fn validate_for_worker(&self) -> Result<(), SettingsError> {
        let worker = &self.worker;
        if worker.concurrency == 0 {
            return invalid("worker.concurrency must be at least 1");
        }
        if worker.visibility_timeout < Duration::from_secs(2) {
            return invalid("worker.visibility_timeout must be at least 2s");
        }
        if worker.dead_letter_sweep.is_zero() {
            return invalid("worker.dead_letter_sweep must be more than zero");
        }
        if worker.wait_time > Duration::from_secs(20) {
            return invalid("worker.wait_time must be at most 20s (the SQS limit)");
        }
        if self.aws.read_timeout <= worker.wait_time || self.aws.attempt_timeout <= worker.wait_time
        {
            return invalid("aws.read_timeout and aws.attempt_timeout must be longer than worker.wait_time (a long poll waits that long for its answer)");
        }
        let processing = &self.processing;
        if processing.intro + processing.outro > MAX_BUMPERS {
            return invalid("processing.intro + processing.outro must be at most 5s");
        }
        if processing.crf > 51 {
            return invalid("processing.crf must be between 0 and 51");
        }
        const PRESETS: [&str; 9] = [
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
        ];
        if !PRESETS.contains(&processing.x264_preset.as_str()) {
            return invalid("processing.x264_preset must be an x264 preset such as \"veryfast\"");
        }
        if processing.max_bitrate_kbps == 0 || processing.max_bitrate_kbps > 4000 {
            return invalid("processing.max_bitrate_kbps must be between 1 and 4000");
        }
        Ok(())
    }

    fn validate_common(&self) -> Result<(), SettingsError> {
        if self.database.url.expose_secret().is_empty() {
            return invalid("database.url is empty (set DATABASE_URL or APP__DATABASE__URL)");
        }
        if self.storage.backend == StorageBackend::S3 && self.storage.bucket.is_none() {
            return invalid("storage.backend is \"s3\" but storage.bucket is empty");
        }
        if self.queue.backend == QueueBackend::Sqs && self.queue.sqs_queue_url.is_none() {
            return invalid("queue.backend is \"sqs\" but queue.sqs_queue_url is empty");
        }
        if self.queue.max_receives == 0 {
            return invalid("queue.max_receives must be at least 1");
        }
        Ok(())
    }

    /// Checks for the sections only the API reads.
    pub fn validate_for_api(&self) -> Result<(), SettingsError> {
        if self.auth.jwt_secret.expose_secret().len() < 32 {
            return invalid(
                "auth.jwt_secret must be at least 32 bytes (set APP__AUTH__JWT_SECRET)",
            );
        }
        if self.auth.token_ttl.is_zero() {
            return invalid("auth.token_ttl must be more than zero");
        }
        if self.public.rankings_refresh > MAX_PUBLIC_REFRESH
            || self.public.videos_refresh > MAX_PUBLIC_REFRESH
        {
            return invalid(
                "public.rankings_refresh and public.videos_refresh must be at most 60s",
            );
        }
        if self.upload.max_bytes == 0 {
            return invalid("upload.max_bytes must be more than zero");
        }
        if self.upload.min_duration > self.upload.max_duration {
            return invalid("upload.min_duration is longer than upload.max_duration");
        }
        if self.upload.max_in_flight_per_user == 0 {
            return invalid("upload.max_in_flight_per_user must be at least 1");
        }
        if self.upload.max_frame_rate == 0 || self.upload.max_streams == 0 {
            return invalid("upload.max_frame_rate and upload.max_streams must be at least 1");
        }
        Ok(())
    }
}

fn invalid<T>(message: &str) -> Result<T, SettingsError> {
    Err(SettingsError::Invalid(message.to_owned()))
}

fn overlay_file(
    path: &Path,
) -> Result<config::File<config::FileSourceFile, config::FileFormat>, SettingsError> {
    if !path.is_file() {
        return Err(SettingsError::Invalid(format!(
            "configuration file {} does not exist",
            path.display()
        )));
    }
    Ok(config::File::from(path).format(config::FileFormat::Toml))
}

/// A comma-separated list of IP addresses (one string, so an environment variable can set it).
fn address_list<'de, D>(deserializer: D) -> Result<Vec<std::net::IpAddr>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|_| serde::de::Error::custom(format!("\"{a}\" is not an IP address")))
        })
        .collect()
}

/// TOML has no null: an empty string stands for "not set".
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    let value = String::deserialize(deserializer)?;
    Ok((!value.trim().is_empty()).then(|| T::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn frame_limits_admit_either_orientation() {
        let settings = Settings::load_from(&[], env(&[])).unwrap();
        let max = settings.upload.max_frame;
        assert_eq!((max.width, max.height), (4096, 2160));
        assert!(max.admits(3840, 2160) && max.admits(2160, 3840) && max.admits(1280, 720));
        assert!(!max.admits(7680, 4320) && !max.admits(4097, 100) && !max.admits(2200, 2200));
        for bad in ["4096", "x2160", "0x10", "big"] {
            let err = Settings::load_from(&[], env(&[("APP__UPLOAD__MAX_FRAME", bad)]));
            assert!(err.is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_are_a_list_of_addresses() {
        let settings = Settings::load_from(&[], env(&[])).unwrap();
        assert_eq!(
            settings.server.trusted_proxies,
            [
                "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        let none = Settings::load_from(&[], env(&[("APP__SERVER__TRUSTED_PROXIES", "")])).unwrap();
        assert!(none.server.trusted_proxies.is_empty());
        assert!(
            Settings::load_from(&[], env(&[("APP__SERVER__TRUSTED_PROXIES", "nginx")])).is_err()
        );
    }

    #[test]
    fn defaults_parse_and_environment_overrides_them() {
        let settings = Settings::load_from(
            &[],
            env(&[
                ("APP__SERVER__PORT", "9001"),
                ("APP__PUBLIC__RANKINGS_REFRESH", "5s"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.server.port, 9001);
        assert_eq!(settings.public.rankings_refresh, Duration::from_secs(5));
        assert_eq!(settings.upload.max_bytes, 100_000_000);
        assert_eq!(settings.storage.bucket, None);
    }

    #[test]
    fn database_url_falls_back_to_the_conventional_variable() {
        let settings =
            Settings::load_from(&[], env(&[("DATABASE_URL", "postgres://x@h/db")])).unwrap();
        assert_eq!(settings.database.url.expose_secret(), "postgres://x@h/db");
    }

    #[test]
    fn every_file_in_config_parses() {
        // Read at run time: a path compiled in could be another clone's (shared target dirs).
        let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let dir = Path::new(&manifest_dir).join("../../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // aws.toml describes the AWS stack for `provision`, whose own test parses it.
            let for_services = path.file_name().is_some_and(|n| n != "aws.toml");
            if for_services && path.extension().is_some_and(|e| e == "toml") {
                Settings::load_from(std::slice::from_ref(&path), env(&[]))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected config/default.toml and config/local.toml"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::load_from(&[], env(&[("APP__SERVER__PROT", "1")])).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn worker_refuses_bumpers_over_five_seconds_and_unknown_presets() {
        let settings = Settings::load_from(&[], env(&[])).unwrap();
        settings.validate_for_worker().unwrap();
        let long = Settings::load_from(&[], env(&[("APP__PROCESSING__INTRO", "3s")])).unwrap();
        assert!(long
            .validate_for_worker()
            .unwrap_err()
            .to_string()
            .contains("5s"));
        let preset =
            Settings::load_from(&[], env(&[("APP__PROCESSING__X264_PRESET", "warp")])).unwrap();
        assert!(preset.validate_for_worker().is_err());
    }

    #[test]
    fn aws_timeouts_must_outlast_a_long_poll() {
        for (key, value) in [
            ("APP__AWS__READ_TIMEOUT", "20s"),
            ("APP__AWS__ATTEMPT_TIMEOUT", "10s"),
        ] {
            let short = Settings::load_from(&[], env(&[(key, value)])).unwrap();
            let err = short.validate_for_worker().unwrap_err().to_string();
            assert!(err.contains("wait_time"), "{key}: {err}");
        }
    }

    #[test]
    fn api_refuses_a_short_jwt_secret() {
        let settings = Settings::load_from(&[], env(&[])).unwrap();
        let err = settings.validate_for_api().unwrap_err();
        assert!(err.to_string().contains("jwt_secret"), "{err}");
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let settings = Settings::load_from(
            &[],
            env(&[(
                "APP__AUTH__JWT_SECRET",
                "supersecretvalue-supersecretvalue-1234",
            )]),
        )
        .unwrap();
        assert!(!format!("{settings:?}").contains("supersecretvalue"));
    }
}
