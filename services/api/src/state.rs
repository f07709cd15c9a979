//! What every handler shares: the backends, the settings they need, the limits, and the
//! URLs of a video's files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use backends::db::{Video, VideoStatus};
use backends::job::{original_key, processed_key};
use backends::queue::JobQueue;
use backends::settings::UploadSettings;
use backends::storage::ObjectStore;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::limits;
use crate::snapshot::Snapshot;

/// Everything a handler needs, shared by all workers.
#[derive(Debug)]
pub struct AppState {
    pub pool: PgPool,
    /// For `/api/health` alone (see [`backends::Backends::health_pool`]).
    pub health_pool: PgPool,
    pub store: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    pub upload: UploadSettings,
    pub staging_dir: PathBuf,
    pub presign_ttl: Duration,
    pub public_base_url: Option<String>,
    pub rankings: Snapshot<Vec<backends::db::PlayerScore>>,
    pub public_videos: Snapshot<Vec<backends::db::PublicVideo>>,
    pub hashing: crate::auth::HashingSlots,
    pub auth_rate: limits::RateLimit,
    pub vote_rate: limits::RateLimit,
    pub uploads_in_flight: limits::UploadsInFlight,
    pub max_public_videos: i64,
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl AppState {
    /// The client's address, for its rate limits (see [`limits::client_address`]).
    pub fn client_address(&self, req: &HttpRequest) -> std::net::IpAddr {
        limits::client_address(req, &self.trusted_proxies)
    }

    /// The base of URLs handed to clients: configured, or as the client reached us.
    pub fn base_url(&self, req: &HttpRequest) -> String {
        match &self.public_base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None => {
                let info = req.connection_info();
                format!("{}://{}", info.scheme(), info.host())
            }
        }
    }

    /// A presigned storage URL when the backend has them, else the API's download route.
    async fn object_url(&self, base: &str, key: &str, route: String) -> Result<String, ApiError> {
        let presigned = self
            .store
            .presigned_url(key, self.presign_ttl)
            .await
            .map_err(|e| ApiError::unavailable("El almacenamiento no está disponible.", e))?;
        Ok(presigned.unwrap_or_else(|| format!("{base}{route}")))
    }

    pub async fn original_url(&self, base: &str, video: &Video) -> Result<String, ApiError> {
        let route = format!("/api/videos/{}/original", video.id);
        self.object_url(base, &original_key(video.id), route).await
    }

    /// Set only once the video is processed.
    pub async fn processed_url(
        &self,
        base: &str,
        video: &Video,
    ) -> Result<Option<String>, ApiError> {
        if video.status != VideoStatus::Processed {
            return Ok(None);
        }
        self.processed_url_of(base, video.id).await.map(Some)
    }

    pub async fn processed_url_of(&self, base: &str, id: Uuid) -> Result<String, ApiError> {
        let route = format!("/api/videos/{id}/processed");
        self.object_url(base, &processed_key(id), route).await
    }
}
