//! The video worker: takes jobs from the queue, runs the one ffmpeg pass of
//! [`pipeline`], stores the result and marks the video processed, deleting the message
//! only then. Delivery is at least once; running a job twice is harmless.
//!
//! Architecture invariant: the worker knows nothing of HTTP; its only contract with the API
//! is `backends::job::VideoJob`.

pub mod logo;
pub mod pipeline;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backends::db::{self, VideoStatus};
use backends::job::{processed_key, VideoJob};
use backends::media::{self, MediaError};
use backends::queue::{Delivery, JobQueue};
use backends::settings::{ProcessingSettings, Settings, WorkerSettings};
use backends::storage::{ObjectStore, StorageError};
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

/// How long to wait before receiving again after the queue itself failed.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(2);

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

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// Retrying cannot help (ffmpeg rejects the input): fail the video now.
    #[error("{0}")]
    Permanent(String),
    /// Storage, database or a timeout: another try may succeed.
    #[error(transparent)]
    Retryable(#[from] anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        Self::Retryable(anyhow::Error::new(e).context("database"))
    }
}

/// Durations of one job's steps, for the per-job log line.
#[derive(Debug, Default)]
struct Timings {
    download: Duration,
    ffmpeg: Duration,
    upload: Duration,
}

pub struct Worker {
    pool: PgPool,
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn JobQueue>,
    settings: WorkerSettings,
    processing: ProcessingSettings,
    /// Holds the logo and each job's scratch folder; removed when the worker is dropped.
    scratch: tempfile::TempDir,
    logo: PathBuf,
    /// Receipts of jobs in progress, to hand them back if shutdown cuts them off.
    in_flight: Mutex<HashSet<String>>,
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
        let pool = db::connect_lazy(&settings.database).context("database url")?;
        if settings.database.migrate {
            db::migrate(&pool)
                .await
                .context("cannot apply database migrations (is PostgreSQL reachable?)")?;
        }
        let store = backends::storage::from_settings(&settings.storage, &settings.aws)
            .await
            .context("object storage")?;
        let queue = backends::queue::from_settings(&settings.queue, &settings.aws, &pool)
            .await
            .context("job queue")?;
        Self::new(
            pool,
            store,
            queue,
            settings.worker.clone(),
            settings.processing.clone(),
        )
    }

    /// A worker over already-connected backends.
    pub fn new(
        pool: PgPool,
        store: Arc<dyn ObjectStore>,
        queue: Arc<dyn JobQueue>,
        settings: WorkerSettings,
        processing: ProcessingSettings,
    ) -> anyhow::Result<Self> {
        let scratch = match &settings.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                tempfile::Builder::new()
                    .prefix("anb-worker-")
                    .tempdir_in(dir)?
            }
            None => tempfile::Builder::new().prefix("anb-worker-").tempdir()?,
        };
        let logo = scratch.path().join("anb-logo.png");
        logo::write_png(&logo).context("cannot write the logo")?;
        Ok(Self {
            pool,
            store,
            queue,
            settings,
            processing,
            scratch,
            logo,
            in_flight: Mutex::new(HashSet::new()),
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
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            }
        });
        while !*shutdown.borrow() {
            while jobs.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot?,
                _ = shutdown.changed() => break,
            };
            // A receive in progress at shutdown is finished, not dropped: SQS may already
            // have handed out a message, which would otherwise stay hidden for the whole
            // visibility timeout. Whatever it returns is handed straight back.
            let receive =
                self.queue
                    .receive(1, self.settings.wait_time, self.settings.visibility_timeout);
            tokio::pin!(receive);
            let received = tokio::select! {
                received = &mut receive => received,
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
        tracing::info!(
            jobs = jobs.len(),
            grace_s = self.settings.shutdown_grace.as_secs(),
            "stopping: no new jobs"
        );
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            jobs.shutdown().await; // drops the jobs: their ffmpeg is killed, scratch removed
            self.release_unfinished().await;
        }
        sweeper.abort();
        tracing::info!("worker stopped");
        Ok(())
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
                match db::fail_unfinished_video(&self.pool, job.video_id, GAVE_UP).await {
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
            ffmpeg_ms = timings.ffmpeg.as_millis() as u64,
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
        match db::find_video(&self.pool, job.video_id).await? {
            // Deleted by its owner while queued: nothing to do. Never existed: a bad message.
            None if db::was_deleted(&self.pool, job.video_id).await? => return Ok(false),
            None => return Err(JobError::Permanent(UNKNOWN_VIDEO.to_owned())),
            Some(video) if matches!(video.status, VideoStatus::Processed | VideoStatus::Failed) => {
                return Ok(false)
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
        match self.store.get_to_file(&job.original_key, &input).await {
            Ok(()) => {}
            Err(StorageError::NotFound { .. }) => {
                return Err(JobError::Permanent(
                    "the original upload is missing from storage".to_owned(),
                ))
            }
            Err(e) => {
                return Err(JobError::Retryable(
                    anyhow::Error::new(e).context("download original"),
                ))
            }
        }
        timings.download = step.elapsed();

        let step = Instant::now();
        let args = pipeline::ffmpeg_args(&input, &self.logo, &output, &self.processing);
        match media::run_ffmpeg(&args, self.settings.ffmpeg_timeout).await {
            Ok(()) => {}
            Err(MediaError::Failed { stderr_tail, .. }) => {
                return Err(JobError::Permanent(format!(
                    "ffmpeg could not process the video: {stderr_tail}"
                )))
            }
            Err(e) => return Err(JobError::Retryable(anyhow::Error::new(e).context("ffmpeg"))),
        }
        timings.ffmpeg = step.elapsed();

        let probe = media::probe(&output, Duration::from_secs(60))
            .await
            .map_err(retryable("probe output"))?;
        let bytes = std::fs::metadata(&output)
            .map_err(retryable("output size"))?
            .len();
        pipeline::check_output(&probe, bytes, self.processing.max_bitrate_kbps).map_err(
            |problem| {
                JobError::Permanent(format!("the processed video failed its check: {problem}"))
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
            // Deleted while processing: do not leave its processed file behind.
            if db::find_video(&self.pool, job.video_id).await?.is_none() {
                self.store
                    .delete(&key)
                    .await
                    .map_err(retryable("remove orphan processed video"))?;
            }
            return Ok(false);
        }
        Ok(true)
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
            Err(JobError::Permanent(reason)) if reason == UNKNOWN_VIDEO => {
                self.dead_letter(delivery, None, format!("{UNKNOWN_VIDEO} {}", job.video_id))
                    .await
            }
            Err(JobError::Permanent(reason)) => {
                tracing::warn!(video.id = %job.video_id, reason, "video failed");
                if let Err(e) = db::fail_unfinished_video(&self.pool, job.video_id, &reason).await {
                    return self
                        .retry(delivery, format!("could not record the failure: {e}"))
                        .await;
                }
                self.delete(delivery, Outcome::Failed(reason)).await
            }
            Err(JobError::Retryable(error)) => {
                let reason = format!("{error:#}");
                let out_of_tries = self
                    .queue
                    .max_receives()
                    .is_some_and(|max| delivery.receive_count >= max);
                if out_of_tries {
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

    /// Moves the message to the dead-letter queue; marks the video failed when there is one.
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
            if let Err(e) = db::fail_unfinished_video(&self.pool, id, &reason).await {
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

const UNKNOWN_VIDEO: &str = "job names an unknown video";
const GAVE_UP: &str = "processing gave up: every attempt ended without a result (the worker \
                       stopped or ran out of time); upload the video again";
/// How long a dead letter stays hidden after a sweep looked at it.
/// Just long enough to page through the queue in one sweep; operators see the dead letters
/// again a second later.
const SWEPT_VISIBILITY: Duration = Duration::from_secs(1);
/// At most this many batches of 10 per sweep.
const SWEEP_BATCHES: usize = 10;

fn retryable<E: Into<anyhow::Error>>(what: &'static str) -> impl FnOnce(E) -> JobError {
    move |e| JobError::Retryable(e.into().context(what))
}
