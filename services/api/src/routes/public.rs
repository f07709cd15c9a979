//! What fans see: public videos, votes and rankings.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use backends::db::{self, VoteOutcome};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::routes::PageQuery;
use crate::snapshot::page as page_of;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct PublicVideo {
    video_id: String,
    title: String,
    /// The player's "First Last".
    username: String,
    city: String,
    votes: i64,
    processed_url: Option<String>,
    processed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VoteResponse {
    #[schema(example = "Voto registrado exitosamente.")]
    message: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RankingEntry {
    position: usize,
    username: String,
    city: String,
    votes: i64,
}

/// Videos open for voting (processed), most recently processed first: the newest
/// `public.max_public_videos` (default 1000). A token is accepted but not needed. Served from a snapshot reloaded at most every `public.videos_refresh`
/// (default 5 s), so a new video or vote can take that long to show here.
#[utoipa::path(
    tag = "public",
    params(
        ("city" = Option<String>, Query, description = "Only players from this city (case-insensitive)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 9223372036854775807_i64, description = "≥ 0, default 0"),
    ),
    responses(
        (status = 200, body = [PublicVideo]),
        (status = 400, description = "Parámetro inválido en la consulta.", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[get("/api/public/videos")]
pub async fn public_videos(
    req: HttpRequest,
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let videos = state
        .public_videos
        .get(|| db::public_videos(&state.pool, state.max_public_videos))
        .await?;
    let (limit, offset) = page.bounds(20);
    let base = state.base_url(&req);
    let mut items = Vec::with_capacity(limit.min(videos.len()));
    for (_, video) in page_of(&videos, |v| v.city_key.as_str(), page.city(), limit, offset) {
        items.push(PublicVideo {
            video_id: video.id.to_string(),
            processed_url: Some(state.processed_url_of(&base, video.id).await?),
            title: video.title.clone(),
            username: video.username.clone(),
            city: video.city.clone(),
            votes: video.vote_count,
            processed_at: video.processed_at,
        });
    }
    Ok(HttpResponse::Ok().json(items))
}

/// One vote per user per video; the database settles races.
#[utoipa::path(
    tag = "public",
    params(("video_id" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = VoteResponse),
        (status = 400, description = "Already voted for this video", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Unknown video, or not public yet", body = ErrorBody),
        (status = 429, description = "Too many votes from this address; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[post("/api/public/videos/{video_id}/vote")]
pub async fn vote(
    req: HttpRequest,
    user: AuthUser,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.vote_rate.check(state.client_address(&req))?;
    let video_id = path.into_inner();
    match db::cast_vote(&state.pool, video_id, user.0).await? {
        VoteOutcome::Counted => Ok(HttpResponse::Ok().json(VoteResponse {
            message: "Voto registrado exitosamente.",
        })),
        VoteOutcome::AlreadyVoted => Err(ApiError::bad_request("Ya has votado por este video.")),
        VoteOutcome::NotVotable => Err(ApiError::NotFound(crate::error::VIDEO_NOT_FOUND)),
    }
}

/// Players by total votes on their public videos. Served from a snapshot reloaded at most
/// every `public.rankings_refresh` (default 30 s, never over 60 s), so a new vote can take
/// that long to show here.
#[utoipa::path(
    tag = "public",
    params(
        ("city" = Option<String>, Query, description = "Only players from this city (case-insensitive); positions count within it"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1–100, default 10"),
        ("offset" = Option<i64>, Query, minimum = 0, maximum = 9223372036854775807_i64, description = "≥ 0, default 0"),
    ),
    responses(
        (status = 200, body = [RankingEntry]),
        (status = 400, description = "Parámetro inválido en la consulta.", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[get("/api/public/rankings")]
pub async fn rankings(
    page: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let scores = state
        .rankings
        .get(|| db::player_scores(&state.pool))
        .await?;
    let (limit, offset) = page.bounds(10);
    let entries: Vec<RankingEntry> =
        page_of(&scores, |s| s.city_key.as_str(), page.city(), limit, offset)
            .map(|(position, score)| RankingEntry {
                position,
                username: score.username.clone(),
                city: score.city.clone(),
                votes: score.votes,
            })
            .collect();
    Ok(HttpResponse::Ok().json(entries))
}
