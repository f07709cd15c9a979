//! One job, from a delivery to its outcome: keep the message hidden while the video is
//! downloaded, processed and stored, then delete, retry, requeue or dead-letter it.

use super::*;

impl Worker {
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

    pub(crate) async fn run_job(
        &self,
        delivery: &Delivery,
        job: &VideoJob,
        started: Instant,
    ) -> Outcome {
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
    pub(crate) async fn keep_hidden(&self, receipt: &str) -> std::convert::Infallible {
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
    pub(crate) async fn process(
        &self,
        job: &VideoJob,
        timings: &mut Timings,
    ) -> Result<bool, JobError> {
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
    pub(crate) async fn find_video_once_queued(
        &self,
        id: Uuid,
    ) -> Result<Option<db::Video>, sqlx::Error> {
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
    pub(crate) async fn settle(
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

    pub(crate) async fn delete(&self, delivery: &Delivery, outcome: Outcome) -> Outcome {
        match self.queue.delete(&delivery.receipt).await {
            Ok(()) => outcome,
            // The work is done and idempotent: a redelivery will find nothing to do.
            Err(e) => Outcome::Retry(format!("could not delete the message: {e:#}")),
        }
    }

    pub(crate) async fn retry(&self, delivery: &Delivery, reason: String) -> Outcome {
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
    pub(crate) async fn requeue(&self, delivery: &Delivery, reason: String) -> Outcome {
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
    pub(crate) async fn dead_letter(
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
