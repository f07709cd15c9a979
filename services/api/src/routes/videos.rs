//! A player's own videos: upload, list, detail, delete, and the two download routes.

use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use backends::db::{self, Video, VideoStatus};
use backends::job::{original_key, processed_key, VideoJob};
use backends::storage::Download;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{AuthUser, Caller};
use crate::error::{ApiError, ErrorBody, NOT_AUTHENTICATED, VIDEO_NOT_FOUND};
use crate::routes::PageQuery;

use crate::upload::{self, StagedUpload};
use crate::AppState;

const NOT_YOURS: &str = "No tienes permiso sobre este video.";
const STORAGE_DOWN: &str = "El almacenamiento de videos no está disponible; intente de nuevo.";
/// What a video whose deletion was cut short shows until it is deleted again.
const DELETE_UNFINISHED: &str =
    "El borrado de este video no terminó; vuelva a borrarlo (código: borrado-pendiente).";
const QUEUE_DOWN: &str = "La cola de procesamiento no está disponible; intente de nuevo.";
const TOO_SLOW_TO_KEEP: &str =
    "El servidor tardó demasiado en guardar el video y lo descartó; intente de nuevo.";

/// Room for the multipart framing and the title around the file itself.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    #[schema(example = "Video subido correctamente. Procesamiento en curso.")]
    message: &'static str,
    /// The video's id, used in every later call.
    task_id: String,
}

/// Multipart form of an upload (for the docs; the handler streams the body).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct UploadForm {
    /// The MP4 file, at most 100 MB.
    #[schema(value_type = String, format = Binary)]
    video_file: Vec<u8>,
    /// 1–500 characters with a visible one, no control characters (trimmed).
    #[schema(
        max_length = 500,
        pattern = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$"
    )]
    title: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VideoSummary {
    video_id: String,
    title: String,
    #[schema(example = "uploaded")]
    status: &'static str,
    uploaded_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
    processed_url: Option<String>,
    /// Why processing failed; only present when `status` is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VideoDetail {
    video_id: String,
    title: String,
    status: &'static str,
    uploaded_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
    original_url: String,
    processed_url: Option<String>,
    votes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteResponse {
    #[schema(example = "El video ha sido eliminado exitosamente.")]
    message: &'static str,
    video_id: String,
}

/// Uploads a video: streamed to disk with the size capped while reading, checked with
/// ffprobe, stored, recorded and queued for processing. On any failure nothing is left
/// behind: no stored object, no row, no queued job.
#[utoipa::path(
    tag = "videos",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 201, body = UploadResponse),
        (status = 400, description = "Not an MP4, corrupt, no video stream, over 100 MB, over the picture size, frame rate or stream count limits, a malformed form, or title missing", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 429, description = "The user has the most uploads in flight already (default 2); retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Storage, database or queue unavailable, or the upload took so long to store that it was discarded; nothing was kept. Retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[post("/api/videos/upload")]
pub async fn upload_video(
    req: HttpRequest,
    user: AuthUser,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Held until the answer: the place is free again whatever happens.
    let _place = state.uploads_in_flight.enter(user.0)?;
    let max = state.upload.max_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max + MULTIPART_OVERHEAD) {
        return Err(upload::too_large(max)); // refused before reading the body
    }
    let receiving = upload::receive(&req, payload, &state.staging_dir, max);
    let staged = tokio::time::timeout(state.upload.receive_timeout, receiving)
        .await
        .map_err(|_| {
            ApiError::bad_request(format!(
                "La subida tardó más de {} segundos; inténtelo de nuevo con una mejor conexión.",
                state.upload.receive_timeout.as_secs()
            ))
        })??;
    upload::validate(&staged.file, &state.upload).await?;
    let video_id = store_record_enqueue(&state, user.0, staged).await?;
    tracing::info!(video.id = %video_id, user.id = %user.0, "video uploaded and queued");
    Ok(HttpResponse::Created().json(UploadResponse {
        message: "Video subido correctamente. Procesamiento en curso.",
        task_id: video_id.to_string(),
    }))
}

/// Record (pending) → store → enqueue → mark queued, undoing the earlier steps when a later
/// one fails. The row comes first so that a crash at any point leaves something findable:
/// a pending row, which the sweep of abandoned uploads removes with its file.
async fn store_record_enqueue(
    state: &AppState,
    owner: Uuid,
    staged: StagedUpload,
) -> Result<Uuid, ApiError> {
    let video_id = Uuid::new_v4();
    let key = original_key(video_id);
    let StagedUpload { title, file, size } = staged;
    db::insert_pending_video(&state.pool, video_id, owner, &title).await?;
    let undo_row = || async {
        if let Err(undo) = db::delete_video(&state.pool, video_id).await {
            tracing::error!(video.id = %video_id, error = %undo, "could not remove the row of a failed upload; the sweep of abandoned uploads will");
        }
    };
    if let Err(e) = state.store.put_file(&key, &file).await {
        undo_row().await;
        return Err(ApiError::unavailable(STORAGE_DOWN, e));
    }
    drop(file); // the staging file was moved or copied into storage
    if let Err(e) = state.queue.send(&VideoJob::new(video_id).to_body()).await {
        undo_store(state, &key).await;
        undo_row().await;
        return Err(ApiError::unavailable(QUEUE_DOWN, e));
    }
    // If this last step fails the client gets 503, as for any other step: the row stays
    // pending, so the sweep of abandoned uploads removes it and its file, and the worker
    // skips the job it finds (pending, then deleted).
    if !db::mark_queued(&state.pool, video_id).await? {
        // The sweep was first: it took this upload for one cut off and claimed it.
        undo_store(state, &key).await;
        return Err(ApiError::unavailable(
            TOO_SLOW_TO_KEEP,
            anyhow::anyhow!(
                "the sweep of abandoned uploads removed {video_id} before it was queued"
            ),
        ));
    }
    tracing::debug!(video.id = %video_id, bytes = size, "upload stored");
    Ok(video_id)
}

async fn undo_store(state: &AppState, key: &str) {
    if let Err(e) = state.store.delete(key).await {
        tracing::error!(
            key,
            error = format!("{e:#}"),
            "could not remove the object of a failed upload"
        );
    }
}

/// The caller's videos in upload order, oldest first (clients take the last as the newest):
/// all of them, or a page with `limit` and `offset`.
#[utoipa::path(
    get,
    path = "/api/videos",
    tag = "videos",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1–100; without it, every video"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 9223372036854775807_i64, description = "≥ 0, default 0"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = [VideoSummary]),
        (status = 400, description = "Parámetro inválido en la consulta.", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, description = "Database unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn list_my_videos(
    req: HttpRequest,
    user: AuthUser,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let videos = db::list_videos_of(&state.pool, user.0, page.limit(), page.offset()).await?;
    let base = state.base_url(&req);
    let mut items = Vec::with_capacity(videos.len());
    for video in videos {
        items.push(VideoSummary {
            video_id: video.id.to_string(),
            processed_url: state.processed_url(&base, &video).await?,
            title: video.title,
            status: video.status.as_str(),
            uploaded_at: video.uploaded_at,
            processed_at: video.processed_at,
            error: video.error,
        });
    }
    Ok(HttpResponse::Ok().json(items))
}

/// Looks up a video the caller owns: 404 when unknown, 403 when someone else's.
async fn owned_video(state: &AppState, user: Uuid, id: Uuid) -> Result<Video, ApiError> {
    let video = db::find_video(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound(VIDEO_NOT_FOUND))?;
    if video.owner_id != user {
        return Err(ApiError::Forbidden(NOT_YOURS));
    }
    Ok(video)
}

/// One of the caller's videos.
#[utoipa::path(
    tag = "videos",
    params(("video_id" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = VideoDetail),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Someone else's video", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, description = "Database or storage unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[get("/api/videos/{video_id}")]
pub async fn video_detail(
    req: HttpRequest,
    user: AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let video = owned_video(&state, user.0, *path).await?;
    let base = state.base_url(&req);
    Ok(HttpResponse::Ok().json(VideoDetail {
        video_id: video.id.to_string(),
        original_url: state.original_url(&base, &video).await?,
        processed_url: state.processed_url(&base, &video).await?,
        title: video.title,
        status: video.status.as_str(),
        uploaded_at: video.uploaded_at,
        processed_at: video.processed_at,
        votes: video.votes,
        error: video.error,
    }))
}

/// Deletes one of the caller's videos and its stored files, while it is not yet public.
#[utoipa::path(
    tag = "videos",
    params(("video_id" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 400, description = "Already public for voting", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, description = "Database or storage unavailable; nothing was deleted. Retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[delete("/api/videos/{video_id}")]
pub async fn delete_video(
    user: AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let published =
        || ApiError::bad_request("El video ya está publicado para votación y no puede eliminarse.");
    let video = owned_video(&state, user.0, *path).await?;
    if video.status == VideoStatus::Processed {
        return Err(published());
    }
    // Claimed first (marked failed), so the worker can no longer publish it; then the
    // files; then the row. A storage failure in between leaves a failed video that its
    // owner can delete again, never a public video whose file is gone.
    if !db::claim_for_deletion(&state.pool, video.id, user.0, DELETE_UNFINISHED).await? {
        return Err(published()); // the worker published it in the meantime
    }
    for key in [processed_key(video.id), original_key(video.id)] {
        state
            .store
            .delete(&key)
            .await
            .map_err(|e| ApiError::unavailable(STORAGE_DOWN, e))?;
    }
    db::delete_claimed_video(&state.pool, video.id).await?;
    tracing::info!(video.id = %video.id, "video deleted");
    Ok(HttpResponse::Ok().json(DeleteResponse {
        message: "El video ha sido eliminado exitosamente.",
        video_id: video.id.to_string(),
    }))
}

/// Downloads the original upload: the owner always, anyone once the video is public.
#[utoipa::path(
    get,
    path = "/api/videos/{video_id}/original",
    tag = "videos",
    params(("video_id" = String, Path)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The MP4", content_type = "video/mp4"),
        (status = 302, description = "Redirect to a presigned storage URL"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "Database or storage unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn download_original(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let video = downloadable_video(&state, caller, *path).await?;
    let name = crate::state::download_name(&video.title, "original");
    serve(&req, &state, &original_key(video.id), &name).await
}

/// The same as `GET /api/videos/{video_id}/original`, at the path existing client
/// collections use.
#[utoipa::path(
    get,
    path = "/api/videos/original/{video_id}",
    tag = "videos",
    operation_id = "download_original_alias",
    params(("video_id" = String, Path)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The MP4", content_type = "video/mp4"),
        (status = 302, description = "Redirect to a presigned storage URL"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "Database or storage unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn download_original_alias(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    download_original(req, caller, path, state).await
}

/// Downloads the processed video: the owner always, anyone once the video is public.
#[utoipa::path(
    get,
    path = "/api/videos/{video_id}/processed",
    tag = "videos",
    params(("video_id" = String, Path)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The MP4", content_type = "video/mp4"),
        (status = 302, description = "Redirect to a presigned storage URL"),
        (status = 400, description = "Not processed yet", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "Database or storage unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn download_processed(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let video = downloadable_video(&state, caller, *path).await?;
    if video.status != VideoStatus::Processed {
        return Err(ApiError::bad_request("El video aún no ha sido procesado."));
    }
    let name = crate::state::download_name(&video.title, "procesado");
    serve(&req, &state, &processed_key(video.id), &name).await
}

/// The same as `GET /api/videos/{video_id}/processed`, at the path existing client
/// collections use.
#[utoipa::path(
    get,
    path = "/api/videos/processed/{video_id}",
    tag = "videos",
    operation_id = "download_processed_alias",
    params(("video_id" = String, Path)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The MP4", content_type = "video/mp4"),
        (status = 302, description = "Redirect to a presigned storage URL"),
        (status = 400, description = "Not processed yet", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "Database or storage unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn download_processed_alias(
    req: HttpRequest,
    caller: Caller,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    download_processed(req, caller, path, state).await
}

async fn downloadable_video(state: &AppState, caller: Caller, id: Uuid) -> Result<Video, ApiError> {
    let video = db::find_video(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound(VIDEO_NOT_FOUND))?;
    if video.status == VideoStatus::Processed {
        return Ok(video); // public
    }
    match caller {
        Caller::Anonymous => Err(ApiError::Unauthorized(NOT_AUTHENTICATED)),
        Caller::InvalidToken => Err(ApiError::Unauthorized(crate::auth::INVALID_TOKEN)),
        Caller::User(user) if user != video.owner_id => Err(ApiError::Forbidden(NOT_YOURS)),
        Caller::User(_) => Ok(video),
    }
}

/// The file under `key`, saved by a browser as `file_name`.
async fn serve(
    req: &HttpRequest,
    state: &AppState,
    key: &str,
    file_name: &str,
) -> Result<HttpResponse, ApiError> {
    let download = match state
        .store
        .download(key, state.presign_ttl, file_name)
        .await
    {
        Ok(download) => download,
        Err(backends::storage::StorageError::NotFound { .. }) => {
            return Err(ApiError::NotFound("Archivo de video no encontrado."))
        }
        Err(e) => return Err(ApiError::unavailable(STORAGE_DOWN, e)),
    };
    match download {
        Download::Presigned(url) => Ok(HttpResponse::Found()
            .insert_header((header::LOCATION, url))
            .finish()),
        Download::LocalFile(path) => {
            // The `.mp4` name gives the video/mp4 type; NamedFile also answers Range requests.
            let file = actix_files::NamedFile::open_async(&path)
                .await
                .map_err(|e| ApiError::unavailable(STORAGE_DOWN, e))?
                .set_content_disposition(header::ContentDisposition {
                    disposition: header::DispositionType::Attachment,
                    parameters: vec![header::DispositionParam::Filename(file_name.to_owned())],
                });
            Ok(file.into_response(req))
        }
    }
}
