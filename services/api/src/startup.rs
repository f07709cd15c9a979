//! Building and running the server: backends connected, migrations applied, the route
//! table, error shapes for actix's own rejections, and the background sweep of uploads
//! cut off by a crash.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::error::InternalError;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use backends::job::original_key;
use backends::settings::{Settings, StorageBackend};
use backends::storage::ObjectStore;
use sqlx::PgPool;
use tracing_actix_web::TracingLogger;
use utoipa::OpenApi;

use crate::auth::TokenKeys;
use crate::error::{self, detail_response};
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::telemetry::RequestSpan;
use crate::{auth, limits, openapi, routes};

/// The Content-Security-Policy of the Swagger UI under `/api/docs/` (review 3, N13): its
/// own files, the OpenAPI document from this origin, and the data: images its stylesheet
/// holds; no inline script, nothing from elsewhere. (The pages have their own, stricter.)
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Adds [`DOCS_CONTENT_SECURITY_POLICY`] to every answer under `/api/docs`.
fn with_docs_policy<S>(
    req: actix_web::dev::ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
{
    let docs = req.path().starts_with("/api/docs");
    let response = service.call(req);
    async move {
        let mut response = response.await?;
        if docs {
            response.headers_mut().insert(
                actix_web::http::header::CONTENT_SECURITY_POLICY,
                actix_web::http::header::HeaderValue::from_static(DOCS_CONTENT_SECURITY_POLICY),
            );
        }
        Ok(response)
    }
}

/// The API server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Validates the settings, connects the backends, applies migrations and binds the
    /// listener (port 0 picks a free one: see [`Application::port`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate_for_api()?;
        let backends::Backends {
            pool,
            health_pool,
            store,
            queue,
        } = backends::Backends::connect(&settings).await?;
        let staging_dir = settings.upload.staging_dir.clone().unwrap_or_else(|| {
            match settings.storage.backend {
                // Same filesystem as the store, so storing an upload is a rename.
                StorageBackend::Local => settings.storage.local_dir.join(".incoming"),
                StorageBackend::S3 => std::env::temp_dir().join("anb-uploads"),
            }
        });
        std::fs::create_dir_all(&staging_dir).with_context(|| {
            format!("cannot create staging directory {}", staging_dir.display())
        })?;
        remove_abandoned_uploads(&staging_dir);
        sweep_abandoned_videos_forever(
            pool.clone(),
            store.clone(),
            settings.upload.abandoned_after,
        );
        let state = web::Data::new(AppState {
            pool,
            health_pool,
            store,
            queue,
            upload: settings.upload.clone(),
            staging_dir,
            presign_ttl: settings.storage.presign_ttl,
            public_base_url: settings.server.public_base_url.clone(),
            rankings: Snapshot::new(settings.public.rankings_refresh),
            public_videos: Snapshot::new(settings.public.videos_refresh),
            hashing: auth::HashingSlots::new(
                settings.limits.hashing_concurrency,
                settings.limits.hashing_wait,
            ),
            auth_rate: limits::RateLimit::per_minute(
                settings.limits.auth_per_minute,
                "Demasiados intentos de acceso desde esta dirección; espere un momento.",
            ),
            vote_rate: limits::RateLimit::per_minute(
                settings.limits.votes_per_minute,
                "Demasiados votos desde esta dirección; espere un momento.",
            ),
            uploads_in_flight: limits::UploadsInFlight::new(settings.upload.max_in_flight_per_user),
            max_public_videos: i64::from(settings.public.max_public_videos),
            trusted_proxies: settings.server.trusted_proxies.clone(),
        });
        let keys = web::Data::new(TokenKeys::new(
            &settings.auth.jwt_secret,
            settings.auth.token_ttl,
        ));
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}",
                    settings.server.host, settings.server.port
                )
            })?;
        let port = listener.local_addr()?.port();
        let openapi = openapi::ApiDoc::openapi();
        let known_paths = web::Data::new(routes::KnownPaths::of(&openapi));
        let mut server =
            HttpServer::new(move || {
                App::new()
                    .wrap_fn(with_docs_policy)
                    .wrap(TracingLogger::<RequestSpan>::new())
                    .app_data(state.clone())
                    .app_data(keys.clone())
                    .app_data(known_paths.clone())
                    .app_data(web::JsonConfig::default().limit(64 * 1024).error_handler(
                        |err, _| {
                            let detail = format!("Cuerpo JSON inválido: {err}");
                            InternalError::from_response(
                                err,
                                detail_response(StatusCode::BAD_REQUEST, &detail),
                            )
                            .into()
                        },
                    ))
                    .app_data(web::QueryConfig::default().error_handler(routes::invalid_query))
                    .app_data(web::PathConfig::default().error_handler(|err, _| {
                        InternalError::from_response(
                            err,
                            detail_response(StatusCode::NOT_FOUND, error::VIDEO_NOT_FOUND),
                        )
                        .into()
                    }))
                    .configure(routes)
                    .service(
                        utoipa_swagger_ui::SwaggerUi::new("/api/docs/{_:.*}")
                            .url("/api/openapi.json", openapi.clone()),
                    )
                    .default_service(web::to(routes::no_route))
            })
            .shutdown_timeout(settings.server.shutdown_timeout.as_secs())
            .listen(listener)?;
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        tracing::info!(
            address = %format!("{}:{port}", settings.server.host),
            storage = ?settings.storage.backend,
            queue = ?settings.queue.backend,
            "API listening"
        );
        Ok(Self {
            port,
            server: server.run(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or Ctrl-C, then lets in-flight requests finish
    /// (up to `server.shutdown_timeout`).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Uploads staged longer ago than this were cut off by a crash: no request is using them.
const ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(3600);

/// Removes staging files a crashed process left behind (a clean stop removes its own).
fn remove_abandoned_uploads(staging_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(staging_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let abandoned = name.to_string_lossy().starts_with(".upload-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_UPLOAD_AGE));
        if abandoned && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed an abandoned upload");
        }
    }
}

/// Removes, at start and then every minute (or sooner, when `abandoned_after` is shorter),
/// the videos whose upload was cut off between recording and queueing: each is claimed
/// (a late upload can no longer mark it queued), then its stored file, then its row are
/// removed (a tombstone makes the worker skip a job one of them may have queued).
fn sweep_abandoned_videos_forever(
    pool: PgPool,
    store: Arc<dyn ObjectStore>,
    abandoned_after: Duration,
) {
    let every = abandoned_after.clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if let Err(e) = sweep_abandoned_videos(&pool, store.as_ref(), abandoned_after).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot sweep abandoned uploads; will try again"
                );
            }
        }
    });
}

/// One pass of [`sweep_abandoned_videos_forever`]; returns how many were removed.
pub async fn sweep_abandoned_videos(
    pool: &PgPool,
    store: &dyn ObjectStore,
    abandoned_after: Duration,
) -> anyhow::Result<usize> {
    let mut removed = 0;
    for id in backends::db::abandoned_uploads(pool, abandoned_after).await? {
        // Claimed first: an upload that was only slow and marks its video queued now is
        // refused (503) rather than answered 201 for a file removed under it.
        if !backends::db::claim_abandoned_upload(pool, id).await? {
            continue;
        }
        store.delete(&original_key(id)).await?;
        if backends::db::remove_abandoned_upload(pool, id).await? {
            removed += 1;
            tracing::info!(video.id = %id, "removed an upload cut off before it was queued");
        }
    }
    Ok(removed)
}

fn routes(cfg: &mut web::ServiceConfig) {
    use routes::{health, pages, public, users, videos};
    cfg.service(pages::videos_page)
        .service(pages::rankings_page)
        .service(pages::signup_page)
        .service(pages::login_page)
        .service(pages::my_videos_page)
        .service(pages::script)
        .service(pages::style)
        .service(health::api_health)
        .service(health::live)
        .service(health::root_health)
        .service(users::signup)
        .service(users::login)
        .service(videos::upload_video)
        // Some clients list with a trailing slash.
        .route("/api/videos", web::get().to(videos::list_my_videos))
        .route("/api/videos/", web::get().to(videos::list_my_videos))
        .service(videos::video_detail)
        .service(videos::delete_video)
        .route(
            "/api/videos/{video_id}/original",
            web::get().to(videos::download_original),
        )
        .route(
            "/api/videos/{video_id}/processed",
            web::get().to(videos::download_processed),
        )
        // The paths existing client collections use.
        .route(
            "/api/videos/original/{video_id}",
            web::get().to(videos::download_original_alias),
        )
        .route(
            "/api/videos/processed/{video_id}",
            web::get().to(videos::download_processed_alias),
        )
        .service(public::public_videos)
        .service(public::vote)
        .service(public::rankings)
        .route(
            "/api/docs",
            web::get().to(|| async {
                actix_web::HttpResponse::PermanentRedirect()
                    .insert_header((actix_web::http::header::LOCATION, "/api/docs/"))
                    .finish()
            }),
        );
}
