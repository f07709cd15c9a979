//! The database: pool, migrations, and every SQL statement the services run.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::settings::DatabaseSettings;

/// Longest one statement may run before the server cancels it (review 3, N19): no query
/// here takes more than milliseconds, so one that runs this long is waiting on a lock.
pub const STATEMENT_TIMEOUT: &str = "30s";
/// Longest a session may sit in a transaction doing nothing: a client that vanished
/// mid-transaction (a black-holed connection) would otherwise hold its locks until the
/// server's TCP keepalive gives up, hours later.
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "1min";

/// Opens a pool without waiting for the server: the API starts (and answers 503 on
/// `/health`) even while the database is still coming up.
///
/// A server that stops answering without closing anything cannot hang a caller for long:
/// each acquire checks its connection first (sqlx's `test_before_acquire`), and the check
/// and any connect count against `acquire_timeout`. A statement already sent waits for the
/// server, bounded on the instances by TCP retransmission (`net.ipv4.tcp_retries2`, set by
/// the boot script); sqlx 0.8 cannot set TCP keepalive on its sockets.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?.options([
        ("statement_timeout", STATEMENT_TIMEOUT),
        (
            "idle_in_transaction_session_timeout",
            IDLE_IN_TRANSACTION_TIMEOUT,
        ),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

/// Applies the migrations this binary knows and the database lacks. Migrations the
/// database has and this binary does not (a newer release ran first) are left alone: an
/// older release rolled back to must start, not loop refusing the schema under
/// `Restart=always`. That holds because every migration only adds (a release's schema
/// is a superset of the previous one's), which the review of each migration keeps true.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

/// Cheap liveness probe for `/health`.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

// ---------------------------------------------------------------------------------- users

#[derive(Debug, Clone, FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub city: String,
    pub country: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("email already registered")]
    DuplicateEmail,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn insert_user(pool: &PgPool, user: &User) -> Result<(), InsertUserError> {
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, first_name, last_name, city, country)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(user.id)
    .bind(&user.email)
    .bind(&user.password_hash)
    .bind(&user.first_name)
    .bind(&user.last_name)
    .bind(&user.city)
    .bind(&user.country)
    .execute(pool)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            InsertUserError::DuplicateEmail
        } else {
            e.into()
        }
    })?;
    Ok(())
}

pub async fn find_user_by_email(pool: &PgPool, email: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(pool)
        .await
}

// --------------------------------------------------------------------------------- videos

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoStatus {
    Uploaded,
    Processing,
    Processed,
    Failed,
}

impl VideoStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Processing => "processing",
            Self::Processed => "processed",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "uploaded" => Self::Uploaded,
            "processing" => Self::Processing,
            "processed" => Self::Processed,
            // The column's CHECK constraint admits nothing else.
            _ => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, FromRow)]
struct VideoRecord {
    id: Uuid,
    owner_id: Uuid,
    title: String,
    status: String,
    error: Option<String>,
    uploaded_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
    vote_count: i64,
    queued: bool,
}

#[derive(Debug, Clone)]
pub struct Video {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub status: VideoStatus,
    pub error: Option<String>,
    pub uploaded_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub votes: i64,
    /// False while its upload is still being stored and queued (or was cut off doing so).
    pub queued: bool,
}

impl From<VideoRecord> for Video {
    fn from(r: VideoRecord) -> Self {
        Self {
            id: r.id,
            owner_id: r.owner_id,
            title: r.title,
            status: VideoStatus::parse(&r.status),
            error: r.error,
            uploaded_at: r.uploaded_at,
            processed_at: r.processed_at,
            votes: r.vote_count,
            queued: r.queued,
        }
    }
}

const VIDEO_COLUMNS: &str = "id, owner_id, title, status, error, uploaded_at, processed_at, \
                             vote_count, queued_at IS NOT NULL AS queued";

/// Records an upload's video before its file is stored and its job queued: until
/// [`mark_queued`], it is pending (listed nowhere, swept if the upload never finishes).
pub async fn insert_pending_video(
    pool: &PgPool,
    id: Uuid,
    owner_id: Uuid,
    title: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO videos (id, owner_id, title, queued_at) VALUES ($1, $2, $3, NULL)")
        .bind(id)
        .bind(owner_id)
        .bind(title)
        .execute(pool)
        .await
        .map(drop)
}

/// The upload's file is stored and its job queued: the video is the owner's to see.
/// False when the sweep of abandoned uploads has claimed or removed it (the upload took
/// longer than `upload.abandoned_after`): its file is being or has been removed.
pub async fn mark_queued(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query("UPDATE videos SET queued_at = now() WHERE id = $1 AND status = 'uploaded'")
        .bind(id)
        .execute(pool)
        .await
        .map(|done| done.rows_affected() == 1)
}

/// Videos whose upload was cut off (the process died between recording and queueing):
/// still pending `older_than` after they were recorded.
pub async fn abandoned_uploads(
    pool: &PgPool,
    older_than: std::time::Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM videos WHERE queued_at IS NULL
         AND uploaded_at < now() - make_interval(secs => $1)",
    )
    .bind(older_than.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Claims a pending upload for the sweep before its file is removed: from then on
/// [`mark_queued`] refuses it, so an upload that was only slow never gets its 201 for a
/// file the sweep deletes. Returns whether it was claimed (false: it was queued meanwhile).
pub async fn claim_abandoned_upload(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE videos SET status = 'failed', error = 'subida abandonada'
         WHERE id = $1 AND queued_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await
    .map(|done| done.rows_affected() == 1)
}

/// Removes an abandoned upload's row, leaving a tombstone so a job it may have queued is
/// skipped. Only while it is still pending; returns whether it was removed.
pub async fn remove_abandoned_upload(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query("DELETE FROM videos WHERE id = $1 AND queued_at IS NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO deleted_videos (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn find_video(pool: &PgPool, id: Uuid) -> Result<Option<Video>, sqlx::Error> {
    let record: Option<VideoRecord> =
        sqlx::query_as(&format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(record.map(Video::from))
}

/// The owner's videos in upload order, oldest first (pending uploads left out).
/// `limit` `None` lists them all.
pub async fn list_videos_of(
    pool: &PgPool,
    owner_id: Uuid,
    limit: Option<i64>,
    offset: i64,
) -> Result<Vec<Video>, sqlx::Error> {
    let records: Vec<VideoRecord> = sqlx::query_as(&format!(
        "SELECT {VIDEO_COLUMNS} FROM videos WHERE owner_id = $1 AND queued_at IS NOT NULL
         ORDER BY uploaded_at, id LIMIT $2 OFFSET $3"
    ))
    .bind(owner_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok(records.into_iter().map(Video::from).collect())
}

/// Removes an upload that could not be enqueued (the API's undo step).
pub async fn delete_video(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM videos WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(drop)
}

/// First step of deleting the owner's video: unless it is public (processed), marks it
/// `failed` with `reason`, so no worker can publish it any more (a worker only publishes a
/// video still `processing`). Returns whether it was claimed. Then the caller removes the
/// stored files, then [`delete_claimed_video`]: no transaction stays open across storage
/// calls, and a failure in between leaves a failed video its owner can delete again.
pub async fn claim_for_deletion(
    pool: &PgPool,
    id: Uuid,
    owner_id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE videos SET status = 'failed', error = $3
         WHERE id = $1 AND owner_id = $2 AND status <> 'processed'",
    )
    .bind(id)
    .bind(owner_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Last step of a deletion: the row goes, and a tombstone stays so a worker that later
/// receives its job knows it was deleted on purpose.
pub async fn delete_claimed_video(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM videos WHERE id = $1 AND status = 'failed'")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO deleted_videos (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Whether the video was deleted by its owner (as opposed to never having existed).
pub async fn was_deleted(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deleted_videos WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Marks the video `processing` for a worker, unless it is gone or already finished.
/// Returns whether the worker should go on.
pub async fn start_processing(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE videos SET status = 'processing', error = NULL
         WHERE id = $1 AND status IN ('uploaded', 'processing')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Marks the video `processed` now. Guarded: only a video still `processing` changes, so a
/// second run of the same job (at-least-once delivery) changes nothing. Returns whether
/// this call made the change.
pub async fn finish_processing(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE videos SET status = 'processed', processed_at = now(), error = NULL
         WHERE id = $1 AND status = 'processing'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Marks the video `failed` with a reason the owner can read, unless it already finished
/// (processed, or failed with its own reason). Returns whether it changed.
pub async fn fail_unfinished_video(
    pool: &PgPool,
    id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE videos SET status = 'failed', error = $2
         WHERE id = $1 AND status IN ('uploaded', 'processing')",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// The storage identity the videos' files were last checked against, if ever.
pub async fn storage_mark(pool: &PgPool) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT storage_id FROM storage_mark")
        .fetch_optional(pool)
        .await
}

pub async fn set_storage_mark(pool: &PgPool, storage_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO storage_mark (storage_id) VALUES ($1)
         ON CONFLICT (only_row) DO UPDATE SET storage_id = $1, checked_at = now()",
    )
    .bind(storage_id)
    .execute(pool)
    .await
    .map(drop)
}

/// Videos that need a file in storage: every one not failed whose upload completed, with
/// whether it is processed (then the processed file is what it needs).
pub async fn videos_needing_files(pool: &PgPool) -> Result<Vec<(Uuid, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status = 'processed' FROM videos
         WHERE status <> 'failed' AND queued_at IS NOT NULL ORDER BY uploaded_at",
    )
    .fetch_all(pool)
    .await
}

/// Marks a video failed whatever its state but failed; true when it was not failed yet.
pub async fn fail_video(pool: &PgPool, id: Uuid, reason: &str) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE videos SET status = 'failed', error = $2 WHERE id = $1 AND status <> 'failed'",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Videos still waiting for their first try whose job was queued more than `age` ago.
pub async fn videos_waiting_since(
    pool: &PgPool,
    age: std::time::Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM videos WHERE status = 'uploaded'
           AND queued_at < now() - make_interval(secs => $1::float8) ORDER BY queued_at",
    )
    .bind(age.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Restarts the clock of a video's queued job (a new message was just sent for it).
pub async fn mark_requeued(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE videos SET queued_at = now() WHERE id = $1 AND status = 'uploaded'")
        .bind(id)
        .execute(pool)
        .await
        .map(drop)
}

/// Counts one more ffmpeg run that timed out or was killed on the video; returns the count.
pub async fn record_media_failure(pool: &PgPool, id: Uuid) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE videos SET media_failures = media_failures + 1 WHERE id = $1
         RETURNING media_failures",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map(|count| count.unwrap_or(0))
}

/// Puts an unfinished or failed video back to `uploaded`, its failures forgotten, for a
/// job that an operator sends again. A processed video is left alone. Returns whether it
/// changed.
pub async fn requeue_video(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE videos SET status = 'uploaded', error = NULL, media_failures = 0
         WHERE id = $1 AND status IN ('uploaded', 'processing', 'failed')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// A processed video as the public list shows it.
#[derive(Debug, Clone, FromRow)]
pub struct PublicVideo {
    pub id: Uuid,
    pub title: String,
    /// The player's "First Last".
    pub username: String,
    pub city: String,
    /// `city` lower-cased by the database, for case-insensitive filtering.
    pub city_key: String,
    pub vote_count: i64,
    pub processed_at: Option<DateTime<Utc>>,
}

/// The `newest` most recently processed videos, most recent first.
pub async fn public_videos(pool: &PgPool, newest: i64) -> Result<Vec<PublicVideo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.id, v.title, u.first_name || ' ' || u.last_name AS username, u.city,
                lower(u.city) AS city_key, v.vote_count, v.processed_at
         FROM videos v JOIN users u ON u.id = v.owner_id
         WHERE v.status = 'processed'
         ORDER BY v.processed_at DESC, v.id
         LIMIT $1",
    )
    .bind(newest)
    .fetch_all(pool)
    .await
}

// ---------------------------------------------------------------------------------- votes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteOutcome {
    Counted,
    AlreadyVoted,
    /// The video does not exist or is not public (processed) yet.
    NotVotable,
}

/// Records one vote. The primary key on (video, user) settles races: of many identical
/// concurrent votes exactly one is counted.
pub async fn cast_vote(
    pool: &PgPool,
    video_id: Uuid,
    user_id: Uuid,
) -> Result<VoteOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO votes (video_id, user_id)
         SELECT id, $2 FROM videos WHERE id = $1 AND status = 'processed'
         ON CONFLICT DO NOTHING",
    )
    .bind(video_id)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        sqlx::query("UPDATE videos SET vote_count = vote_count + 1 WHERE id = $1")
            .bind(video_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(VoteOutcome::Counted);
    }
    tx.rollback().await?;
    let votable: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM videos WHERE id = $1 AND status = 'processed')",
    )
    .bind(video_id)
    .fetch_one(pool)
    .await?;
    Ok(if votable {
        VoteOutcome::AlreadyVoted
    } else {
        VoteOutcome::NotVotable
    })
}

// ------------------------------------------------------------------------------- rankings

/// One player's line in the rankings: the sum of the votes on all their public videos.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct PlayerScore {
    pub username: String,
    pub city: String,
    /// `city` lower-cased by the database, for case-insensitive filtering.
    pub city_key: String,
    pub votes: i64,
}

/// Every player with at least one public video, most votes first (ties by name, then id,
/// so the order is stable between refreshes).
pub async fn player_scores(pool: &PgPool) -> Result<Vec<PlayerScore>, sqlx::Error> {
    sqlx::query_as(
        "SELECT u.first_name || ' ' || u.last_name AS username, u.city, lower(u.city) AS city_key,
                SUM(v.vote_count)::bigint AS votes
         FROM users u JOIN videos v ON v.owner_id = u.id AND v.status = 'processed'
         GROUP BY u.id
         ORDER BY votes DESC, username, u.id",
    )
    .fetch_all(pool)
    .await
}
