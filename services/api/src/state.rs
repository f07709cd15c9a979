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
    async fn object_url(
        &self,
        base: &str,
        key: &str,
        route: String,
        download_as: Option<&str>,
    ) -> Result<String, ApiError> {
        let presigned = self
            .store
            .presigned_url(key, self.presign_ttl, download_as)
            .await
            .map_err(|e| ApiError::unavailable("El almacenamiento no está disponible.", e))?;
        Ok(presigned.unwrap_or_else(|| format!("{base}{route}")))
    }

    /// Where the owner downloads the original: a presigned URL saves it as a file (the
    /// page navigates to it: its CSP lets no script fetch from storage).
    pub async fn original_url(&self, base: &str, video: &Video) -> Result<String, ApiError> {
        let route = format!("/api/videos/{}/original", video.id);
        let name = download_name(&video.title, "original");
        self.object_url(base, &original_key(video.id), route, Some(&name))
            .await
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
        // Shown in pages' video players as much as downloaded: no file name.
        let route = format!("/api/videos/{id}/processed");
        self.object_url(base, &processed_key(id), route, None).await
    }
}

/// The name a download of a video's `kind` file is saved as: its title in ASCII letters,
/// digits and dashes (what any header and file system take), then the kind.
pub fn download_name(title: &str, kind: &str) -> String {
    let mut name = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
        if name.len() >= 60 {
            break;
        }
    }
    let name = name.trim_end_matches('-');
    let name = if name.is_empty() { "video" } else { name };
    format!("{name}-{kind}.mp4")
}

#[cfg(test)]
mod tests {
    use super::download_name;

    #[test]
    fn download_names_are_plain_ascii_from_the_title() {
        assert_eq!(
            download_name("Mi mejor clavada", "original"),
            "Mi-mejor-clavada-original.mp4"
        );
        assert_eq!(
            download_name("¡Pérez \"3\"!", "processed"),
            "P-rez-3-processed.mp4"
        );
        assert_eq!(
            download_name("<img src=x>", "original"),
            "img-src-x-original.mp4"
        );
        assert_eq!(download_name("…", "original"), "video-original.mp4");
        assert!(download_name(&"a".repeat(500), "original").len() < 80);
    }
}
