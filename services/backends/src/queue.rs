//! The job queue: one trait with SQS semantics, a PostgreSQL backend and an SQS backend.
//!
//! Semantics both backends share (and the contract tests check): a received message stays
//! invisible for the visibility timeout, then comes back unless deleted; each receive counts
//! and hands out a new receipt; after `max_receives` receives a message moves to the
//! dead-letter queue instead of being delivered again.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use sqlx::PgPool;
use uuid::Uuid;

use crate::settings::{AwsSettings, QueueBackend, QueueSettings};

/// How often the PostgreSQL backend looks for new messages while long-polling, should a
/// notification be missed (the listening connection is being re-established).
const PG_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The channel the `queue_messages_notify` trigger notifies, with the queue's name.
const PG_CHANNEL: &str = "queue_messages";
/// Pause before listening again after the listening connection failed.
const PG_LISTEN_RETRY: Duration = Duration::from_secs(1);
/// SQS's longest long-poll wait.
const SQS_MAX_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The receipt no longer names an in-flight message (deleted, or received again since).
    #[error("receipt is no longer valid")]
    StaleReceipt,
    #[error("queue has no dead-letter queue configured")]
    NoDeadLetterQueue,
    #[error("queue operation failed: {operation}")]
    Backend {
        operation: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

fn backend(operation: &'static str) -> impl FnOnce(anyhow::Error) -> QueueError {
    move |source| QueueError::Backend { operation, source }
}

/// A message handed to one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub body: String,
    /// Proof of this receive: needed to delete the message or change its visibility.
    pub receipt: String,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
}

/// The longest SQS lets a sent message wait before it is visible.
const MAX_SEND_DELAY: Duration = Duration::from_secs(15 * 60);

#[async_trait]
pub trait JobQueue: Send + Sync + Debug {
    /// Enqueues `body`; returns the message id.
    async fn send(&self, body: &str) -> Result<String, QueueError>;
    /// Up to `max` messages (1–10), waiting up to `wait` for the first one; each is hidden
    /// from other consumers for `visibility`.
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;
    /// Hides the message for `timeout` from now (zero releases it at once).
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError>;
    /// Removes a received message for good.
    async fn delete(&self, receipt: &str) -> Result<(), QueueError>;
    /// Moves a received message to the dead-letter queue now (malformed or hopeless jobs).
    async fn dead_letter(&self, delivery: &Delivery) -> Result<(), QueueError>;
    /// Hands a received message back as a new one, visible after `delay` (at most 15
    /// minutes, SQS's limit): its receives count from zero again, for a try that failed
    /// through no fault of the job's.
    async fn requeue(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError>;
    /// Receives after which a message is dead-lettered, if the queue has a dead-letter queue.
    fn max_receives(&self) -> Option<u32>;
    /// The dead-letter queue itself, to inspect or redrive what landed there.
    fn dead_letter_queue(&self) -> Option<Arc<dyn JobQueue>>;
}

/// Builds the configured backend.
pub async fn from_settings(
    queue: &QueueSettings,
    aws: &AwsSettings,
    pool: &PgPool,
) -> Result<Arc<dyn JobQueue>, QueueError> {
    Ok(match queue.backend {
        QueueBackend::Postgres => {
            Arc::new(PgQueue::new(pool.clone(), &queue.name, queue.max_receives))
        }
        QueueBackend::Sqs => {
            let url = queue.sqs_queue_url.clone().unwrap_or_default();
            Arc::new(SqsQueue::connect(sqs_client(aws).await, url).await?)
        }
    })
}

pub async fn sqs_client(aws: &AwsSettings) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&crate::aws_sdk_config(aws).await)
}

// ------------------------------------------------------------------------------- postgres

/// A queue stored in the `queue_messages` table; `FOR UPDATE SKIP LOCKED` lets any number
/// of consumers receive concurrently without handing one message to two of them. A
/// long-polling receive is woken by `NOTIFY` as soon as a message is sent, released or
/// redriven; one that becomes visible with time (a retry delay, a lapsed visibility
/// timeout) is found by the next poll. Listening holds one connection per queue.
#[derive(Debug, Clone)]
pub struct PgQueue {
    pool: PgPool,
    name: String,
    /// None for a dead-letter queue itself.
    max_receives: Option<u32>,
    wakeups: Arc<Wakeups>,
}

/// Wakes the queue's waiting receivers; fed by one listening connection per queue, opened
/// at the first long poll and closed when the last clone of the queue is dropped.
#[derive(Debug, Default)]
struct Wakeups {
    notify: tokio::sync::Notify,
    listener: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get() {
            listener.abort();
        }
    }
}

impl PgQueue {
    pub fn new(pool: PgPool, name: &str, max_receives: u32) -> Self {
        Self {
            pool,
            name: name.to_owned(),
            max_receives: Some(max_receives),
            wakeups: Arc::default(),
        }
    }

    fn start_listening(&self) {
        self.wakeups.listener.get_or_init(|| {
            let (pool, name) = (self.pool.clone(), self.name.clone());
            let wakeups = Arc::downgrade(&self.wakeups);
            tokio::spawn(async move {
                loop {
                    let error = match Self::listen(&pool, &name, &wakeups).await {
                        Ok(()) => return, // the queue is gone
                        Err(e) => e,
                    };
                    tracing::debug!(queue = %name, error = %error, "queue notifications lost; polling until they are back");
                    tokio::time::sleep(PG_LISTEN_RETRY).await;
                }
            })
        });
    }

    /// Wakes the receivers at each notification for this queue, until the queue is
    /// dropped (`Ok`) or the connection fails.
    async fn listen(
        pool: &PgPool,
        name: &str,
        wakeups: &std::sync::Weak<Wakeups>,
    ) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(PG_CHANNEL).await?;
        // Whatever arrived while not listening is found by the receivers' next look.
        match wakeups.upgrade() {
            Some(wakeups) => wakeups.notify.notify_waiters(),
            None => return Ok(()),
        }
        loop {
            let notification = listener.recv().await?;
            if notification.payload() != name {
                continue;
            }
            match wakeups.upgrade() {
                Some(wakeups) => wakeups.notify.notify_waiters(),
                None => return Ok(()),
            }
        }
    }

    fn dead_letter_name(&self) -> String {
        format!("{}-dlq", self.name)
    }

    fn millis(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    async fn try_receive(
        &self,
        max: u32,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if let Some(max_receives) = self.max_receives {
            // A message that was received max_receives times and came back is dead.
            sqlx::query(
                "UPDATE queue_messages SET queue = $2, visible_at = now(), receive_count = 0,
                        receipt = NULL
                 WHERE id IN (SELECT id FROM queue_messages
                              WHERE queue = $1 AND visible_at <= now() AND receive_count >= $3
                              FOR UPDATE SKIP LOCKED)",
            )
            .bind(&self.name)
            .bind(self.dead_letter_name())
            .bind(i32::try_from(max_receives).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        }
        let rows: Vec<(i64, String, Uuid, i32)> = sqlx::query_as(
            "WITH picked AS (
                 SELECT id FROM queue_messages
                 WHERE queue = $1 AND visible_at <= now()
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE queue_messages m
             SET visible_at = now() + make_interval(secs => $3::float8 / 1000),
                 receive_count = m.receive_count + 1, receipt = gen_random_uuid()
             FROM picked WHERE m.id = picked.id
             RETURNING m.id, m.body, m.receipt, m.receive_count",
        )
        .bind(&self.name)
        .bind(i64::from(max.clamp(1, 10)))
        .bind(Self::millis(visibility))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut deliveries: Vec<Delivery> = rows
            .into_iter()
            .map(|(id, body, receipt, count)| Delivery {
                message_id: id.to_string(),
                body,
                receipt: receipt.to_string(),
                receive_count: u32::try_from(count).unwrap_or(0),
            })
            .collect();
        deliveries.sort_by_key(|d| d.message_id.parse::<i64>().unwrap_or(0));
        Ok(deliveries)
    }

    fn receipt(receipt: &str) -> Result<Uuid, QueueError> {
        receipt.parse().map_err(|_| QueueError::StaleReceipt)
    }
}

#[async_trait]
impl JobQueue for PgQueue {
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO queue_messages (queue, body) VALUES ($1, $2) RETURNING id",
        )
        .bind(&self.name)
        .bind(body)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| backend("send")(e.into()))?;
        Ok(id.to_string())
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        if !wait.is_zero() {
            self.start_listening();
        }
        loop {
            // Registered before looking, so a message sent during the look still wakes us.
            let woken = self.wakeups.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let found = self
                .try_receive(max, visibility)
                .await
                .map_err(|e| backend("receive")(e.into()))?;
            let now = tokio::time::Instant::now();
            if !found.is_empty() || now >= deadline {
                return Ok(found);
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(PG_POLL_INTERVAL.min(deadline - now)) => {}
            }
        }
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        let changed = sqlx::query(
            "UPDATE queue_messages SET visible_at = now() + make_interval(secs => $3::float8 / 1000)
             WHERE queue = $1 AND receipt = $2",
        )
        .bind(&self.name)
        .bind(Self::receipt(receipt)?)
        .bind(Self::millis(timeout))
        .execute(&self.pool)
        .await
        .map_err(|e| backend("change_visibility")(e.into()))?;
        if changed.rows_affected() == 0 {
            return Err(QueueError::StaleReceipt);
        }
        Ok(())
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        sqlx::query("DELETE FROM queue_messages WHERE queue = $1 AND receipt = $2")
            .bind(&self.name)
            .bind(Self::receipt(receipt)?)
            .execute(&self.pool)
            .await
            .map_err(|e| backend("delete")(e.into()))?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery) -> Result<(), QueueError> {
        if self.max_receives.is_none() {
            return Err(QueueError::NoDeadLetterQueue);
        }
        let moved = sqlx::query(
            "UPDATE queue_messages SET queue = $3, visible_at = now(), receive_count = 0,
                    receipt = NULL
             WHERE queue = $1 AND receipt = $2",
        )
        .bind(&self.name)
        .bind(Self::receipt(&delivery.receipt)?)
        .bind(self.dead_letter_name())
        .execute(&self.pool)
        .await
        .map_err(|e| backend("dead_letter")(e.into()))?;
        if moved.rows_affected() == 0 {
            return Err(QueueError::StaleReceipt);
        }
        Ok(())
    }

    async fn requeue(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let requeued = sqlx::query(
            "UPDATE queue_messages SET receive_count = 0, receipt = NULL,
                    visible_at = now() + make_interval(secs => $3::float8 / 1000)
             WHERE queue = $1 AND receipt = $2",
        )
        .bind(&self.name)
        .bind(Self::receipt(&delivery.receipt)?)
        .bind(Self::millis(delay.min(MAX_SEND_DELAY)))
        .execute(&self.pool)
        .await
        .map_err(|e| backend("requeue")(e.into()))?;
        if requeued.rows_affected() == 0 {
            return Err(QueueError::StaleReceipt);
        }
        Ok(())
    }

    fn max_receives(&self) -> Option<u32> {
        self.max_receives
    }

    fn dead_letter_queue(&self) -> Option<Arc<dyn JobQueue>> {
        self.max_receives?;
        Some(Arc::new(PgQueue {
            pool: self.pool.clone(),
            name: self.dead_letter_name(),
            max_receives: None,
            wakeups: Arc::default(),
        }))
    }
}

// ------------------------------------------------------------------------------------ sqs

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    /// From the queue's redrive policy: (dead-letter queue URL, maxReceiveCount).
    redrive: Option<(String, u32)>,
}

impl SqsQueue {
    /// Opens the queue at `url`, reading its redrive policy to find the dead-letter queue.
    pub async fn connect(client: aws_sdk_sqs::Client, url: String) -> Result<Self, QueueError> {
        let attributes = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| backend("get_queue_attributes")(e.into()))?;
        let policy = attributes
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy))
            .cloned();
        let redrive = match policy {
            None => None,
            Some(policy) => {
                let (arn, max) = parse_redrive_policy(&policy).ok_or_else(|| {
                    backend("get_queue_attributes")(anyhow::anyhow!(
                        "unreadable redrive policy {policy}"
                    ))
                })?;
                let name = arn.rsplit(':').next().unwrap_or_default().to_owned();
                let dlq = client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| backend("get_queue_url")(e.into()))?;
                dlq.queue_url().map(|u| (u.to_owned(), max))
            }
        };
        Ok(Self {
            client,
            url,
            redrive,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// `{"deadLetterTargetArn": "...", "maxReceiveCount": 5}`; the count is a string or a number.
fn parse_redrive_policy(policy: &str) -> Option<(String, u32)> {
    let value: serde_json::Value = serde_json::from_str(policy).ok()?;
    let arn = value.get("deadLetterTargetArn")?.as_str()?.to_owned();
    let max = match value.get("maxReceiveCount")? {
        serde_json::Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
        serde_json::Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    Some((arn, max))
}

fn whole_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        let sent = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| backend("send")(e.into()))?;
        Ok(sent.message_id().unwrap_or_default().to_owned())
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(1))
            .wait_time_seconds(whole_seconds(wait.min(SQS_MAX_WAIT)))
            .visibility_timeout(whole_seconds(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| backend("receive")(e.into()))?;
        Ok(received
            .messages()
            .iter()
            .map(|m| Delivery {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(whole_seconds(timeout))
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| {
                    s.is_receipt_handle_is_invalid() || s.is_message_not_inflight()
                }) {
                    QueueError::StaleReceipt
                } else {
                    backend("change_visibility")(e.into())
                }
            })
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(drop)
            .map_err(|e| backend("delete")(e.into()))
    }

    async fn dead_letter(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let (dlq_url, _) = self.redrive.as_ref().ok_or(QueueError::NoDeadLetterQueue)?;
        // Copy then delete: a crash in between leaves a duplicate, never a loss.
        self.client
            .send_message()
            .queue_url(dlq_url)
            .message_body(&delivery.body)
            .send()
            .await
            .map_err(|e| backend("dead_letter")(e.into()))?;
        self.delete(&delivery.receipt).await
    }

    async fn requeue(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        // Send then delete, as for a dead letter: a crash in between leaves a duplicate,
        // which the worker finds done, never a loss.
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(&delivery.body)
            .delay_seconds(whole_seconds(delay.min(MAX_SEND_DELAY)))
            .send()
            .await
            .map_err(|e| backend("requeue")(e.into()))?;
        self.delete(&delivery.receipt).await
    }

    fn max_receives(&self) -> Option<u32> {
        self.redrive.as_ref().map(|(_, max)| *max)
    }

    fn dead_letter_queue(&self) -> Option<Arc<dyn JobQueue>> {
        let (url, _) = self.redrive.as_ref()?;
        Some(Arc::new(SqsQueue {
            client: self.client.clone(),
            url: url.clone(),
            redrive: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policies_parse_with_either_count_type() {
        let arn = "arn:aws:sqs:us-east-1:123456789012:jobs-dlq";
        for policy in [
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":4}}"#),
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"4"}}"#),
        ] {
            assert_eq!(parse_redrive_policy(&policy), Some((arn.to_owned(), 4)));
        }
        assert_eq!(parse_redrive_policy(r#"{"maxReceiveCount":4}"#), None);
    }
}
