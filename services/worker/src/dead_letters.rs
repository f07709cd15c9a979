//! The dead-letter queue and the jobs that never ran: redriving dead letters, marking the
//! videos of jobs the queue gave up on failed, resending jobs still untried after days.

use super::*;

impl Worker {
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
}
