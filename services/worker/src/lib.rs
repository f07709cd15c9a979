//! The video worker: takes jobs from the queue, runs the ffmpeg steps of
//! [`pipeline`] through [`transcode`], stores the result and marks the video processed, deleting the message
//! only then. Delivery is at least once; running a job twice is harmless.
//!
//! Architecture invariant: the worker knows nothing of the API's HTTP; its only contract
//! with the API is `backends::job::VideoJob`. Its one HTTP client is [`lifecycle`]'s, for
//! the instance metadata service and Auto Scaling.

mod dead_letters;
mod dependencies;
mod job;
pub mod lifecycle;
pub mod logo;
pub mod pipeline;
pub mod systemd;
pub mod transcode;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backends::db::{self, VideoStatus};
use backends::job::{original_key, processed_key, VideoJob};
use backends::media::{self, MediaError};
use backends::queue::{Delivery, JobQueue};
use backends::settings::{ProcessingSettings, Settings, WorkerSettings};
use backends::storage::{ObjectStore, StorageError};
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;
use transcode::TranscodeError;
use uuid::Uuid;

/// How long to wait before receiving again after the queue itself failed.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(2);
/// While the database or storage is down, the pause between checks doubles up to this.
const MAX_OUTAGE_PAUSE: Duration = Duration::from_secs(60);
/// Longest one dependency check may take before the dependency counts as down.
const DEPENDENCY_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// A key no video has: asking storage whether it exists tells whether storage answers.
const STORAGE_PROBE_KEY: &str = "health/worker-probe";
/// Where storage keeps its identity (a UUID), written by the first worker to look.
const STORAGE_ID_KEY: &str = "health/storage-id";
/// How long a job waits for the API to mark its video queued before it is retried later,
/// and how often it looks meanwhile.
const QUEUED_GRACE: Duration = Duration::from_secs(2);
const QUEUED_RECHECK: Duration = Duration::from_millis(20);
/// A job still untried this long after it was queued may have expired: the queues keep
/// messages 14 days (`provision`, SQS's longest), and a worker tier stopped that long (a
/// paused lab) would leave its videos `uploaded` for ever. A day's margin; a job resent
/// while its first message still waits runs once and finds the second done.
const RESEND_UNTRIED_AFTER: Duration = Duration::from_secs(13 * 24 * 3600);
/// What a job may take beyond its ffmpeg run (download, upload, database): with
/// `ffmpeg_timeout`, how long a worker whose instance is being terminated waits for the
/// job in hand (the termination hook's heartbeat is the same sum, see `provision`).
pub const JOB_OVERHEAD: Duration = Duration::from_secs(5 * 60);
/// ffmpeg runs that time out or are killed on the same video before it fails for good.
const MAX_MEDIA_FAILURES: i32 = 2;

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The video is processed and the message deleted.
    Processed,
    /// Nothing left to do (already processed, failed or deleted): message deleted.
    AlreadyDone,
    /// A permanent failure: the video is `failed` with this reason, the message deleted.
    Failed(String),
    /// A transient failure: the message goes back to the queue for another try.
    Retry(String),
    /// The message went to the dead-letter queue (malformed, unknown video, or out of tries).
    DeadLettered(String),
}

/// Why a video failed for good, as its owner reads it in `error`: a fixed sentence in
/// Spanish and a short code to quote to support. The details (ffmpeg's stderr, error
/// chains with paths and storage keys) go to the logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// ffmpeg cannot read the upload.
    Unreadable,
    /// The original upload is gone from storage.
    MissingOriginal,
    /// What ffmpeg produced is not the contract's video.
    FailedCheck,
    /// ffmpeg ran out of time, or was killed, on every try it was allowed.
    TooSlow,
    /// No try produced a result (workers stopped, storage or database kept failing).
    GaveUp,
    /// Its files are not in the storage the database now works with (restored onto a new
    /// bucket).
    FilesLost,
}

impl Failure {
    pub fn code(self) -> &'static str {
        match self {
            Self::Unreadable => "video-ilegible",
            Self::MissingOriginal => "original-perdido",
            Self::FailedCheck => "salida-invalida",
            Self::TooSlow => "demasiado-lento",
            Self::GaveUp => "sin-resultado",
            Self::FilesLost => "archivos-perdidos",
        }
    }

    /// The text stored in the video's `error`.
    pub fn reason(self) -> String {
        let sentence = match self {
            Self::Unreadable => {
                "No se pudo procesar el video: el archivo está dañado o usa un formato no compatible."
            }
            Self::MissingOriginal => {
                "No se encontró el archivo original; suba el video de nuevo."
            }
            Self::FailedCheck => "El video procesado no pasó la verificación de calidad.",
            Self::TooSlow => "El video tardó demasiado en procesarse y se descartó.",
            Self::GaveUp => {
                "El procesamiento no terminó tras varios intentos; suba el video de nuevo."
            }
            Self::FilesLost => {
                "Los archivos del video se perdieron al restaurar el sistema; suba el video de nuevo."
            }
        };
        format!("{sentence} (código: {})", self.code())
    }
}

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// Retrying cannot help (ffmpeg rejects the input): fail the video now. `detail` is
    /// for the logs.
    #[error("{detail}")]
    Permanent { failure: Failure, detail: String },
    /// The message names a video that never existed: a bad message.
    #[error("job names an unknown video")]
    UnknownVideo,
    /// Storage, database or a timeout: another try may succeed.
    #[error(transparent)]
    Retryable(#[from] anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        backends::password_rotation::note(&e);
        Self::Retryable(anyhow::Error::new(e).context("database"))
    }
}

/// Durations of one job's steps, for the per-job log line.
#[derive(Debug, Default)]
struct Timings {
    download: Duration,
    ffmpeg: transcode::TranscodeTimings,
    upload: Duration,
}

pub struct Worker {
    pool: PgPool,
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn JobQueue>,
    settings: WorkerSettings,
    processing: ProcessingSettings,
    /// Holds the logo, the bumpers and each job's scratch folder; removed when the worker
    /// is dropped.
    scratch: tempfile::TempDir,
    transcoder: transcode::Transcoder,
    /// Receipts of jobs in progress, to hand them back if shutdown cuts them off.
    in_flight: Mutex<HashSet<String>>,
    /// How many jobs it holds now (the instance is protected from scale-in meanwhile).
    jobs_in_hand: watch::Sender<usize>,
    /// Set when the instance is being terminated: the stop that follows waits for the
    /// jobs in hand to end, not just the SIGTERM grace.
    finish_in_hand: AtomicBool,
    /// Free space the work directory needs before a job is taken: room for the largest
    /// upload and its output, for each job that may run at once.
    min_free_bytes: u64,
    /// When the poll loop last showed it was running (milliseconds since `created`): the
    /// systemd watchdog is fed only while it is recent, so a wedged loop gets restarted.
    last_beat_ms: AtomicU64,
    created: Instant,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Validates the settings and connects the database, storage and queue.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        settings.validate_for_worker()?;
        let backends::Backends {
            pool, store, queue, ..
        } = backends::Backends::connect(settings).await?;
        let min_free_bytes = 2 * settings.upload.max_bytes * settings.worker.concurrency as u64;
        Self::new(
            pool,
            store,
            queue,
            settings.worker.clone(),
            settings.processing.clone(),
            min_free_bytes,
        )
        .await
    }

    /// A worker over already-connected backends; encodes the bumpers, so a machine that
    /// cannot run ffmpeg stops here rather than failing every job.
    pub async fn new(
        pool: PgPool,
        store: Arc<dyn ObjectStore>,
        queue: Arc<dyn JobQueue>,
        settings: WorkerSettings,
        processing: ProcessingSettings,
        min_free_bytes: u64,
    ) -> anyhow::Result<Self> {
        let parent = settings.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        sweep_abandoned_scratch(&parent);
        let scratch = tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempdir_in(&parent)?;
        std::fs::write(
            scratch.path().join(OWNER_FILE),
            std::process::id().to_string(),
        )
        .context("cannot write the scratch folder's owner")?;
        let transcoder = transcode::Transcoder::prepare(scratch.path(), &processing).await?;
        Ok(Self {
            pool,
            store,
            queue,
            settings,
            processing,
            scratch,
            transcoder,
            in_flight: Mutex::new(HashSet::new()),
            jobs_in_hand: watch::Sender::new(0),
            finish_in_hand: AtomicBool::new(false),
            min_free_bytes,
            last_beat_ms: AtomicU64::new(0),
            created: Instant::now(),
        })
    }

    /// Takes and runs jobs until `shutdown` turns true; then finishes the jobs in progress
    /// within the grace period, hands back any it had to stop, and returns.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut jobs = JoinSet::new();
        tracing::info!(concurrency = self.settings.concurrency, "worker started");
        let sweeper = tokio::spawn({
            let worker = self.clone();
            let mut shutdown = shutdown.clone();
            async move {
                let mut every = tokio::time::interval(worker.settings.dead_letter_sweep);
                loop {
                    tokio::select! {
                        _ = every.tick() => {
                            if let Err(e) = worker.sweep_dead_letters().await {
                                tracing::warn!(error = format!("{e:#}"), "dead-letter sweep failed");
                            }
                            if let Err(e) = worker.resend_untried_jobs().await {
                                tracing::warn!(error = format!("{e:#}"), "cannot resend untried jobs");
                            }
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            }
        });
        let mut storage_checked = false;
        while !*shutdown.borrow() {
            while jobs.try_join_next().is_some() {}
            self.beat();
            let slot = tokio::select! {
                slot = self.beating(slots.clone().acquire_owned()) => slot?,
                _ = shutdown.changed() => break,
            };
            // A job taken while the database or storage is down would only fail, and each
            // failure uses up one of its deliveries: an outage of a few minutes would
            // dead-letter the whole backlog. So nothing is taken until both answer.
            if !self
                .beating(self.wait_for_dependencies(&mut shutdown))
                .await
            {
                break;
            }
            if !storage_checked {
                match self.check_storage_identity().await {
                    Ok(()) => storage_checked = true,
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot check which storage the database's files are in; will again"
                    ),
                }
            }
            // A receive in progress at shutdown is finished, not dropped: SQS may already
            // have handed out a message, which would otherwise stay hidden for the whole
            // visibility timeout. Whatever it returns is handed straight back.
            let receive =
                self.queue
                    .receive(1, self.settings.wait_time, self.settings.visibility_timeout);
            tokio::pin!(receive);
            let received = tokio::select! {
                received = self.beating(&mut receive) => received,
                _ = shutdown.changed() => {
                    if let Ok(deliveries) = receive.await {
                        for delivery in deliveries {
                            self.release(&delivery.receipt).await;
                        }
                    }
                    break;
                }
            };
            match received {
                Ok(deliveries) => {
                    // One delivery per slot: receive asks for one.
                    if let Some(delivery) = deliveries.into_iter().next() {
                        let worker = self.clone();
                        jobs.spawn(async move {
                            let _slot = slot;
                            worker.handle(delivery).await
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "cannot receive jobs; retrying");
                    tokio::time::sleep(QUEUE_ERROR_PAUSE).await;
                }
            }
        }
        let grace = if self.finish_in_hand.load(Ordering::Relaxed) {
            self.settings.ffmpeg_timeout + JOB_OVERHEAD
        } else {
            self.settings.shutdown_grace
        };
        tracing::info!(
            jobs = jobs.len(),
            grace_s = grace.as_secs(),
            "stopping: no new jobs"
        );
        // Beating while it waits: systemd's watchdog stays fed through a drain of up to
        // `ffmpeg_timeout` + [`JOB_OVERHEAD`] (an instance being terminated).
        let drained = self
            .beating(tokio::time::timeout(grace, async {
                while jobs.join_next().await.is_some() {}
            }))
            .await;
        if drained.is_err() {
            jobs.shutdown().await; // drops the jobs: their ffmpeg is killed, scratch removed
            self.release_unfinished().await;
        }
        sweeper.abort();
        tracing::info!("worker stopped");
        Ok(())
    }

    /// Awaits `future` taking no job, alive as far as the watchdog is concerned.
    pub async fn idle_until<F: std::future::Future>(&self, future: F) -> F::Output {
        self.beating(future).await
    }

    /// How many jobs the worker holds, as it changes.
    pub fn jobs_in_hand(&self) -> watch::Receiver<usize> {
        self.jobs_in_hand.subscribe()
    }

    /// Makes the next stop wait for the jobs in hand to end (up to `ffmpeg_timeout` plus
    /// [`JOB_OVERHEAD`]) instead of handing them back after `shutdown_grace`: the instance
    /// is being terminated and its lifecycle hook holds it until they are done.
    pub fn finish_jobs_in_hand(&self) {
        self.finish_in_hand.store(true, Ordering::Relaxed);
    }

    /// How long since the poll loop last showed it runs (see [`Worker::beating`]).
    pub fn since_last_beat(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(last)
    }

    fn beat(&self) {
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// Awaits `future` while beating every second from the poll loop's own task: waiting
    /// (for a slot through a 10-minute job, a long poll, an outage) is alive, while a task
    /// stuck inside a poll (a blocked thread, a deadlock) stops beating.
    async fn beating<F: std::future::Future>(&self, future: F) -> F::Output {
        tokio::pin!(future);
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                output = &mut future => return output,
                _ = every_second.tick() => self.beat(),
            }
        }
    }

    /// Hands the messages of stopped jobs back to the queue at once.
    async fn release_unfinished(&self) {
        let unfinished: Vec<String> = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for receipt in unfinished {
            self.release(&receipt).await;
        }
    }

    /// Makes a received message available to other workers at once.
    async fn release(&self, receipt: &str) {
        match self.queue.change_visibility(receipt, Duration::ZERO).await {
            Ok(()) => tracing::info!("handed an unfinished job back to the queue"),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "could not hand a job back; it returns after its visibility timeout"
            ),
        }
    }
}

/// How the system says ENOSPC (`strerror`), in ffmpeg's messages and in Rust's I/O errors.
const DISK_FULL: &str = "No space left on device";

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Scratch folders are named so, and hold the id of the process that made them.
const SCRATCH_PREFIX: &str = "anb-worker-";
const OWNER_FILE: &str = "owner.pid";

/// Removes the scratch folders of workers that are gone (killed, crashed: a clean stop
/// removes its own), so their downloads and half-written outputs do not fill the disk.
/// A folder whose process still runs is left alone.
fn sweep_abandoned_scratch(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        let alive = match owner {
            Some(pid) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            // Made before owner files existed, or cut off while being made: gone if old.
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(3600))),
        };
        if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            tracing::info!(folder = %entry.path().display(), "removed the scratch folder of a worker that is gone");
        }
    }
}
/// How long a dead letter stays hidden after a sweep looked at it.
/// Just long enough to page through the queue in one sweep; operators see the dead letters
/// again a second later.
const SWEPT_VISIBILITY: Duration = Duration::from_secs(1);
/// At most this many batches of 10 per sweep.
const SWEEP_BATCHES: usize = 10;

fn retryable<E: Into<anyhow::Error>>(what: &'static str) -> impl FnOnce(E) -> JobError {
    move |e| JobError::Retryable(e.into().context(what))
}
