//! The video worker: takes jobs from the queue, runs the ffmpeg steps of
//! [`pipeline`] through [`transcode`], stores the result and marks the video processed, deleting the message
//! only then. Delivery is at least once; running a job twice is harmless.
//!
//! Architecture invariant: the worker knows nothing of HTTP; its only contract with the API
//! is `backends::job::VideoJob`.

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
        let drained =
            tokio::time::timeout(grace, async { while jobs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            jobs.shutdown().await; // drops the jobs: their ffmpeg is killed, scratch removed
            self.release_unfinished().await;
        }
        sweeper.abort();
        tracing::info!("worker stopped");
        Ok(())
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

    /// Whether the database and storage answer now and the work directory has room for a
    /// job; the error says which does not.
    pub async fn check_dependencies(&self) -> Result<(), String> {
        let database = tokio::time::timeout(DEPENDENCY_CHECK_TIMEOUT, db::ping(&self.pool)).await;
        match database {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                backends::password_rotation::note(&e);
                return Err(format!("database: {e}"));
            }
            Err(_) => return Err("database: no answer".to_owned()),
        }
        let storage = tokio::time::timeout(
            DEPENDENCY_CHECK_TIMEOUT,
            self.store.exists(STORAGE_PROBE_KEY),
        )
        .await;
        match storage {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("storage: {e:#}")),
            Err(_) => return Err("storage: no answer".to_owned()),
        }
        let megabytes = |bytes: u64| bytes / 1_000_000;
        match free_bytes(self.scratch.path()) {
            Ok(free) if free >= self.min_free_bytes => Ok(()),
            Ok(free) => Err(format!(
                "work directory {}: {} MB free, a job may need {} MB",
                self.scratch.path().display(),
                megabytes(free),
                megabytes(self.min_free_bytes)
            )),
            Err(e) => Err(format!(
                "work directory {}: {e}",
                self.scratch.path().display()
            )),
        }
    }

    /// Waits until [`Self::check_dependencies`] passes, checking less and less often (one
    /// log line when a dependency goes down, one when all are back). False if shutdown came
    /// first.
    async fn wait_for_dependencies(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut pause = Duration::from_secs(1);
        let mut down_since: Option<Instant> = None;
        loop {
            match self.check_dependencies().await {
                Ok(()) => {
                    if let Some(since) = down_since {
                        tracing::info!(
                            down_s = since.elapsed().as_secs(),
                            "database, storage and work directory are back: taking jobs again"
                        );
                    }
                    return true;
                }
                Err(what) => {
                    if down_since.is_none() {
                        tracing::warn!(
                            error = what,
                            "a dependency is down: taking no jobs until it is back"
                        );
                        down_since = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => return false,
                    }
                    pause = (pause * 2).min(MAX_OUTAGE_PAUSE);
                }
            }
        }
    }

    /// Review 3, N4: a database restored onto another bucket (the old one deleted) has rows
    /// whose files are gone, and a processed one would be public without its file. Storage
    /// keeps an identity ([`STORAGE_ID_KEY`]) and the database the one its files were last
    /// checked against; when they differ (or either is missing: the first start of this
    /// release), every video that needs a file is checked and those without are failed,
    /// then the identity is recorded. Two workers starting together may both check: the
    /// check changes nothing the second time.
    pub async fn check_storage_identity(&self) -> anyhow::Result<()> {
        let recorded = db::storage_mark(&self.pool).await?;
        let found = self.read_storage_identity().await?;
        if found.is_some() && found == recorded {
            return Ok(());
        }
        let identity = match found {
            Some(identity) => identity,
            None => {
                let identity = Uuid::new_v4();
                let file = tempfile::NamedTempFile::new_in(self.scratch.path())?;
                std::fs::write(file.path(), identity.to_string())?;
                self.store
                    .put_file(STORAGE_ID_KEY, &file.into_temp_path())
                    .await?;
                identity
            }
        };
        let videos = db::videos_needing_files(&self.pool).await?;
        let mut lost = 0;
        for (id, processed) in &videos {
            let key = if *processed {
                processed_key(*id)
            } else {
                original_key(*id)
            };
            if !self.store.exists(&key).await?
                && db::fail_video(&self.pool, *id, &Failure::FilesLost.reason()).await?
            {
                lost += 1;
                tracing::warn!(video.id = %id, key, "video failed: its file is not in this storage");
            }
        }
        db::set_storage_mark(&self.pool, identity).await?;
        tracing::info!(
            storage = %identity,
            checked = videos.len(),
            failed = lost,
            "checked that the database's videos have their files in this storage"
        );
        Ok(())
    }

    async fn read_storage_identity(&self) -> anyhow::Result<Option<Uuid>> {
        if !self.store.exists(STORAGE_ID_KEY).await? {
            return Ok(None);
        }
        let copy = tempfile::NamedTempFile::new_in(self.scratch.path())?.into_temp_path();
        self.store.get_to_file(STORAGE_ID_KEY, &copy).await?;
        let text = std::fs::read_to_string(&copy)?;
        Ok(Some(text.trim().parse().with_context(|| {
            format!("{STORAGE_ID_KEY} holds {text:?}, not a UUID")
        })?))
    }

    /// Moves every job in the dead-letter queue back to the queue and resets its video to
    /// `uploaded`, for after an outage or a fix. Messages that are not jobs stay where they
    /// are. Returns how many jobs were moved.
    pub async fn redrive(&self) -> anyhow::Result<usize> {
        let dead_letters = self
            .queue
            .dead_letter_queue()
            .context("this queue has no dead-letter queue")?;
        let mut moved = 0;
        let mut kept = Vec::new();
        loop {
            // Hidden for a minute once seen, so one pass meets each message once.
            let batch = dead_letters
                .receive(10, Duration::ZERO, Duration::from_secs(60))
                .await?;
            if batch.is_empty() {
                break;
            }
            for delivery in batch {
                let Ok(job) = VideoJob::from_body(&delivery.body) else {
                    kept.push(delivery.receipt);
                    continue;
                };
                let requeued = db::requeue_video(&self.pool, job.video_id).await?;
                if requeued {
                    self.queue
                        .send(&VideoJob::new(job.video_id).to_body())
                        .await?;
                    moved += 1;
                    tracing::info!(video.id = %job.video_id, "dead letter sent back to the queue");
                } else {
                    tracing::info!(video.id = %job.video_id, "dead letter dropped: its video is processed or deleted");
                }
                dead_letters.delete(&delivery.receipt).await?;
            }
        }
        for receipt in kept {
            dead_letters
                .change_visibility(&receipt, Duration::ZERO)
                .await?;
        }
        Ok(moved)
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

    /// Marks failed the videos whose jobs sit in the dead-letter queue unfinished. The queue
    /// moves a message there by itself when workers died on every try (OOM, a terminated
    /// instance), and the video would otherwise stay `processing` for ever. The dead letters
    /// stay where they are, for operators (hidden for [`SWEPT_VISIBILITY`] while a sweep
    /// pages through them). Returns how many videos were marked.
    pub async fn sweep_dead_letters(&self) -> Result<usize, backends::queue::QueueError> {
        let Some(dead_letters) = self.queue.dead_letter_queue() else {
            return Ok(0);
        };
        let mut marked = 0;
        for _ in 0..SWEEP_BATCHES {
            let batch = dead_letters
                .receive(10, Duration::ZERO, SWEPT_VISIBILITY)
                .await?;
            if batch.is_empty() {
                break;
            }
            for job in batch
                .iter()
                .filter_map(|d| VideoJob::from_body(&d.body).ok())
            {
                match db::fail_unfinished_video(&self.pool, job.video_id, &Failure::GaveUp.reason())
                    .await
                {
                    Ok(true) => {
                        marked += 1;
                        tracing::warn!(video.id = %job.video_id, "video failed: its job was dead-lettered unfinished");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check a dead-lettered job; will look again")
                    }
                }
            }
        }
        Ok(marked)
    }

    /// Review 3, N18: sends a new job for each video still untried
    /// [`RESEND_UNTRIED_AFTER`] after it was queued (its message may have expired), rather
    /// than failing it: its original is still there, so it can still be processed. Returns
    /// how many were sent.
    pub async fn resend_untried_jobs(&self) -> anyhow::Result<usize> {
        let waiting = db::videos_waiting_since(&self.pool, RESEND_UNTRIED_AFTER).await?;
        for id in &waiting {
            self.queue.send(&VideoJob::new(*id).to_body()).await?;
            db::mark_requeued(&self.pool, *id).await?;
            tracing::warn!(video.id = %id, "video untried for 13 days: its job was sent again");
        }
        Ok(waiting.len())
    }

    /// Runs one delivery to its end and settles the message: deleted when done or failed
    /// for good, released for a retry, or dead-lettered. Keeps the message hidden from
    /// other workers while it runs.
    pub async fn handle(&self, delivery: Delivery) -> Outcome {
        let started = Instant::now();
        let job = match VideoJob::from_body(&delivery.body) {
            Ok(job) => job,
            Err(e) => {
                let reason = format!("malformed job message: {e}");
                return self.dead_letter(&delivery, None, reason).await;
            }
        };
        let span = tracing::info_span!("job", video.id = %job.video_id, receive_count = delivery.receive_count);
        self.run_job(&delivery, &job, started)
            .instrument(span)
            .await
    }

    async fn run_job(&self, delivery: &Delivery, job: &VideoJob, started: Instant) -> Outcome {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(delivery.receipt.clone());
        self.jobs_in_hand.send_modify(|n| *n += 1);
        let mut timings = Timings::default();
        let result = tokio::select! {
            result = self.process(job, &mut timings) => result,
            never = self.keep_hidden(&delivery.receipt) => match never {},
        };
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&delivery.receipt);
        let outcome = self.settle(delivery, job, result).await;
        self.jobs_in_hand.send_modify(|n| *n = n.saturating_sub(1));
        let outcome_name = match &outcome {
            Outcome::Processed => "processed",
            Outcome::AlreadyDone => "already_done",
            Outcome::Failed(_) => "failed",
            Outcome::Retry(_) => "retry",
            Outcome::DeadLettered(_) => "dead_lettered",
        };
        tracing::info!(
            video.id = %job.video_id,
            outcome = outcome_name,
            download_ms = timings.download.as_millis() as u64,
            ffmpeg_ms = (timings.ffmpeg.main + timings.ffmpeg.join).as_millis() as u64,
            join_ms = timings.ffmpeg.join.as_millis() as u64,
            upload_ms = timings.upload.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            receive_count = delivery.receive_count,
            "job finished"
        );
        outcome
    }

    /// Extends the message's visibility every third of the timeout, forever.
    async fn keep_hidden(&self, receipt: &str) -> std::convert::Infallible {
        let timeout = self.settings.visibility_timeout;
        loop {
            tokio::time::sleep(timeout / 3).await;
            if let Err(e) = self.queue.change_visibility(receipt, timeout).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not extend the job's visibility; another worker may run it too"
                );
            }
        }
    }

    /// The work itself; `Ok(true)` when this run processed the video, `Ok(false)` when
    /// there was nothing to do.
    async fn process(&self, job: &VideoJob, timings: &mut Timings) -> Result<bool, JobError> {
        match self.find_video_once_queued(job.video_id).await? {
            // Deleted by its owner while queued: nothing to do. Never existed: a bad message.
            None if db::was_deleted(&self.pool, job.video_id).await? => return Ok(false),
            None => return Err(JobError::UnknownVideo),
            Some(video) if matches!(video.status, VideoStatus::Processed | VideoStatus::Failed) => {
                return Ok(false)
            }
            // The upload is still being stored and queued, or was cut off doing so (then
            // it is swept, and the next try finds it deleted).
            Some(video) if !video.queued => {
                return Err(JobError::Retryable(anyhow::anyhow!(
                    "the upload of this video is not complete yet"
                )))
            }
            Some(_) => {}
        }
        if !db::start_processing(&self.pool, job.video_id).await? {
            return Ok(false); // deleted or finished in the meantime
        }
        let scratch = tempfile::Builder::new()
            .prefix("job-")
            .tempdir_in(self.scratch.path())
            .map_err(retryable("scratch folder"))?;
        let input = scratch.path().join("original.mp4");
        let output = scratch.path().join("processed.mp4");

        let step = Instant::now();
        // The key comes from the video id, not from the message: a message cannot point
        // the worker at another object.
        match self
            .store
            .get_to_file(&original_key(job.video_id), &input)
            .await
        {
            Ok(()) => {}
            Err(StorageError::NotFound { .. }) => {
                return Err(JobError::Permanent {
                    failure: Failure::MissingOriginal,
                    detail: "the original upload is missing from storage".to_owned(),
                })
            }
            Err(e) => {
                return Err(JobError::Retryable(
                    anyhow::Error::new(e).context("download original"),
                ))
            }
        }
        timings.download = step.elapsed();

        match self
            .transcoder
            .run(
                &input,
                scratch.path(),
                &output,
                self.settings.ffmpeg_timeout,
            )
            .await
        {
            Ok(took) => timings.ffmpeg = took,
            // A full disk is this machine's fault, not the input's.
            Err(TranscodeError::Main(MediaError::Failed { stderr_tail, .. }))
                if stderr_tail.contains(DISK_FULL) =>
            {
                return Err(JobError::Retryable(anyhow::anyhow!(
                    "ffmpeg: {DISK_FULL}: {stderr_tail}"
                )))
            }
            Err(TranscodeError::Main(MediaError::Failed { stderr_tail, .. })) => {
                return Err(JobError::Permanent {
                    failure: Failure::Unreadable,
                    detail: format!("ffmpeg could not process the video: {stderr_tail}"),
                })
            }
            // Out of time or killed: maybe a busy machine, maybe an input built to be
            // slow. Once more is fair; a second time is the input.
            Err(TranscodeError::Main(
                e @ (MediaError::Timeout { .. } | MediaError::Killed { .. }),
            )) => {
                let failures = db::record_media_failure(&self.pool, job.video_id).await?;
                if failures >= MAX_MEDIA_FAILURES {
                    return Err(JobError::Permanent {
                        failure: Failure::TooSlow,
                        detail: format!("{e} ({failures} times on this video)"),
                    });
                }
                return Err(JobError::Retryable(anyhow::Error::new(e).context("ffmpeg")));
            }
            // The join only copies parts this worker made: a failure there is this
            // machine's, never the input's.
            Err(e) => return Err(JobError::Retryable(anyhow::Error::new(e).context("ffmpeg"))),
        }

        let probe = media::probe(&output, Duration::from_secs(60))
            .await
            .map_err(retryable("probe output"))?;
        let bytes = std::fs::metadata(&output)
            .map_err(retryable("output size"))?
            .len();
        let bumpers = self.processing.intro + self.processing.outro;
        pipeline::check_output(&probe, bytes, self.processing.max_bitrate_kbps, bumpers).map_err(
            |problem| JobError::Permanent {
                failure: Failure::FailedCheck,
                detail: format!("the processed video failed its check: {problem}"),
            },
        )?;

        let step = Instant::now();
        let key = processed_key(job.video_id);
        self.store
            .put_file(&key, &output)
            .await
            .map_err(retryable("upload processed video"))?;
        timings.upload = step.elapsed();

        if !db::finish_processing(&self.pool, job.video_id).await? {
            // Deleted while processing (the row gone, or claimed by a delete that may
            // already have removed the files): do not leave the processed file behind. Only
            // a video another delivery finished keeps it.
            let finished_elsewhere = db::find_video(&self.pool, job.video_id)
                .await?
                .is_some_and(|video| video.status == db::VideoStatus::Processed);
            if !finished_elsewhere {
                self.store
                    .delete(&key)
                    .await
                    .map_err(retryable("remove orphan processed video"))?;
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// The job's video, given up to [`QUEUED_GRACE`] to be marked queued: the API marks it
    /// right after sending the job, and a worker woken by that very send can look first.
    /// Without the grace that race would cost the video a retry delay.
    async fn find_video_once_queued(&self, id: Uuid) -> Result<Option<db::Video>, sqlx::Error> {
        let deadline = Instant::now() + QUEUED_GRACE;
        loop {
            let video = db::find_video(&self.pool, id).await?;
            match &video {
                Some(v) if !v.queued && Instant::now() < deadline => {
                    tokio::time::sleep(QUEUED_RECHECK).await;
                }
                _ => return Ok(video),
            }
        }
    }

    /// Deletes, releases or dead-letters the message according to how the job ended.
    async fn settle(
        &self,
        delivery: &Delivery,
        job: &VideoJob,
        result: Result<bool, JobError>,
    ) -> Outcome {
        match result {
            Ok(true) => self.delete(delivery, Outcome::Processed).await,
            Ok(false) => self.delete(delivery, Outcome::AlreadyDone).await,
            Err(JobError::UnknownVideo) => {
                let reason = format!("job names an unknown video {}", job.video_id);
                self.dead_letter(delivery, None, reason).await
            }
            Err(JobError::Permanent { failure, detail }) => {
                tracing::warn!(video.id = %job.video_id, code = failure.code(), detail, "video failed");
                let recorded =
                    db::fail_unfinished_video(&self.pool, job.video_id, &failure.reason()).await;
                if let Err(e) = recorded {
                    return self
                        .retry(delivery, format!("could not record the failure: {e}"))
                        .await;
                }
                self.delete(delivery, Outcome::Failed(detail)).await
            }
            Err(JobError::Retryable(error)) => {
                let reason = format!("{error:#}");
                if reason.contains(DISK_FULL) {
                    return self.requeue(delivery, reason).await;
                }
                let out_of_tries = self
                    .queue
                    .max_receives()
                    .is_some_and(|max| delivery.receive_count >= max);
                // A failure during an outage says nothing about the job: it is not
                // given up on while the database or storage is down.
                if out_of_tries && self.check_dependencies().await.is_ok() {
                    let failure = format!(
                        "gave up after {} attempts: {reason}",
                        delivery.receive_count
                    );
                    return self
                        .dead_letter(delivery, Some(job.video_id), failure)
                        .await;
                }
                self.retry(delivery, reason).await
            }
        }
    }

    async fn delete(&self, delivery: &Delivery, outcome: Outcome) -> Outcome {
        match self.queue.delete(&delivery.receipt).await {
            Ok(()) => outcome,
            // The work is done and idempotent: a redelivery will find nothing to do.
            Err(e) => Outcome::Retry(format!("could not delete the message: {e:#}")),
        }
    }

    async fn retry(&self, delivery: &Delivery, reason: String) -> Outcome {
        tracing::warn!(reason, "job will be retried");
        if let Err(e) = self
            .queue
            .change_visibility(&delivery.receipt, self.settings.retry_delay)
            .await
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not schedule the retry; the job returns after its visibility timeout"
            );
        }
        Outcome::Retry(reason)
    }

    /// A job cut off by a full work directory goes back as a new message after the retry
    /// delay: its receives start again, so a disk that stays full for an hour dead-letters
    /// nothing, and meanwhile [`Self::check_dependencies`] takes no job until space returns.
    async fn requeue(&self, delivery: &Delivery, reason: String) -> Outcome {
        tracing::warn!(
            reason,
            "the work directory is full: job handed back to the queue"
        );
        match self
            .queue
            .requeue(delivery, self.settings.retry_delay)
            .await
        {
            Ok(()) => Outcome::Retry(reason),
            Err(e) => {
                self.retry(delivery, format!("could not hand the job back: {e:#}"))
                    .await
            }
        }
    }

    /// Moves the message to the dead-letter queue; marks the video failed (gave up) when
    /// there is one. `reason` is for the logs.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        video: Option<Uuid>,
        reason: String,
    ) -> Outcome {
        tracing::error!(
            reason,
            message_id = delivery.message_id,
            "dead-lettering job"
        );
        if let Some(id) = video {
            let failed = db::fail_unfinished_video(&self.pool, id, &Failure::GaveUp.reason()).await;
            if let Err(e) = failed {
                return self
                    .retry(delivery, format!("could not record the failure: {e}"))
                    .await;
            }
        }
        match self.queue.dead_letter(delivery).await {
            Ok(()) => Outcome::DeadLettered(reason),
            Err(e) => {
                self.retry(delivery, format!("could not dead-letter: {e:#}"))
                    .await
            }
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
