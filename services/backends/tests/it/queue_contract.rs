//! One contract, two queues: the PostgreSQL queue and SQS (on moto) must behave alike.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use backends::queue::{JobQueue, PgQueue, QueueError, SqsQueue};
use testkit::{moto, TestDatabase};

const MAX_RECEIVES: u32 = 3;
const NO_WAIT: Duration = Duration::ZERO;
const LONG: Duration = Duration::from_secs(60);

async fn with_postgres<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn JobQueue>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = TestDatabase::create().await;
    check(Arc::new(PgQueue::new(
        db.pool.clone(),
        "jobs",
        MAX_RECEIVES,
    )))
    .await;
}

async fn with_sqs<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn JobQueue>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let moto = moto();
    let url = moto.create_queue(MAX_RECEIVES).await;
    let client = backends::queue::sqs_client(&moto.aws_settings()).await;
    check(Arc::new(SqsQueue::connect(client, url).await.unwrap())).await;
}

/// Runs one contract check against both backends.
macro_rules! contract {
    ($name:ident, $check:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn postgres() {
                with_postgres($check).await;
            }
            #[tokio::test]
            async fn sqs() {
                with_sqs($check).await;
            }
        }
    };
}

contract!(sent_message_is_received_once_then_deleted, |q: Arc<
    dyn JobQueue,
>| async move {
    q.send("hello").await.unwrap();
    let got = q.receive(10, NO_WAIT, LONG).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "hello");
    assert_eq!(got[0].receive_count, 1);
    assert!(
        q.receive(10, NO_WAIT, LONG).await.unwrap().is_empty(),
        "in flight yet delivered"
    );
    q.delete(&got[0].receipt).await.unwrap();
    q.change_visibility(&got[0].receipt, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(q.receive(10, NO_WAIT, LONG).await.unwrap().is_empty());
});

contract!(
    unacknowledged_message_returns_after_visibility_timeout,
    |q: Arc<dyn JobQueue>| async move {
        q.send("again").await.unwrap();
        let first = q.receive(1, NO_WAIT, Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.len(), 1);
        let second = q.receive(1, Duration::from_secs(5), LONG).await.unwrap();
        assert_eq!(
            second.len(),
            1,
            "message did not come back after its visibility timeout"
        );
        assert_eq!(second[0].body, "again");
        assert_eq!(second[0].receive_count, 2);
        assert_ne!(second[0].receipt, first[0].receipt);
    }
);

contract!(extending_visibility_keeps_message_hidden, |q: Arc<
    dyn JobQueue,
>| async move {
    q.send("long job").await.unwrap();
    let got = q.receive(1, NO_WAIT, Duration::from_secs(1)).await.unwrap();
    q.change_visibility(&got[0].receipt, LONG).await.unwrap();
    let during = q.receive(1, Duration::from_secs(2), LONG).await.unwrap();
    assert!(
        during.is_empty(),
        "an extended message was handed out again"
    );
});

contract!(
    releasing_visibility_makes_message_available_at_once,
    |q: Arc<dyn JobQueue>| async move {
        q.send("release me").await.unwrap();
        let got = q.receive(1, NO_WAIT, LONG).await.unwrap();
        q.change_visibility(&got[0].receipt, Duration::ZERO)
            .await
            .unwrap();
        let again = q.receive(1, Duration::from_secs(2), LONG).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].body, "release me");
    }
);

contract!(long_poll_returns_a_message_sent_while_waiting, |q: Arc<
    dyn JobQueue,
>| async move {
    let sender = q.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.send("late").await.unwrap();
    });
    let got = q.receive(1, Duration::from_secs(10), LONG).await.unwrap();
    send.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "late");
});

contract!(
    message_moves_to_dead_letter_queue_after_max_receives,
    |q: Arc<dyn JobQueue>| async move {
        assert_eq!(q.max_receives(), Some(MAX_RECEIVES));
        q.send("poison").await.unwrap();
        for attempt in 1..=MAX_RECEIVES {
            let got = q.receive(1, Duration::from_secs(5), LONG).await.unwrap();
            assert_eq!(got.len(), 1, "receive {attempt} found nothing");
            assert_eq!(got[0].receive_count, attempt);
            q.change_visibility(&got[0].receipt, Duration::ZERO)
                .await
                .unwrap();
        }
        assert!(q
            .receive(1, Duration::from_secs(1), LONG)
            .await
            .unwrap()
            .is_empty());
        let dlq = q.dead_letter_queue().unwrap();
        let dead = dlq.receive(10, Duration::from_secs(5), LONG).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
    }
);

contract!(explicit_dead_letter_moves_message_now, |q: Arc<
    dyn JobQueue,
>| async move {
    q.send("{not json").await.unwrap();
    q.send("next").await.unwrap();
    let got = q.receive(1, NO_WAIT, LONG).await.unwrap();
    assert_eq!(got[0].body, "{not json");
    q.dead_letter(&got[0]).await.unwrap();
    let dlq = q.dead_letter_queue().unwrap();
    let dead = dlq.receive(10, Duration::from_secs(5), LONG).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(),
        ["{not json"]
    );
    let rest = q.receive(10, Duration::from_secs(5), LONG).await.unwrap();
    assert_eq!(
        rest.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(),
        ["next"]
    );
});

contract!(concurrent_consumers_never_share_a_message, |q: Arc<
    dyn JobQueue,
>| async move {
    for i in 0..20 {
        q.send(&format!("m{i}")).await.unwrap();
    }
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let q = q.clone();
        consumers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = q
                    .receive(3, Duration::from_millis(500), LONG)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                for d in got {
                    q.delete(&d.receipt).await.unwrap();
                    mine.push(d.body);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 20, "{all:?}");
    assert_eq!(distinct.len(), 20);
});

#[tokio::test]
async fn postgres_stale_receipt_is_reported_as_such() {
    let db = TestDatabase::create().await;
    let q = PgQueue::new(db.pool.clone(), "jobs", MAX_RECEIVES);
    let err = q
        .change_visibility("not-a-receipt", LONG)
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::StaleReceipt), "{err:?}");
}

#[tokio::test]
async fn postgres_notifies_when_a_message_becomes_visible_not_while_a_job_runs() {
    let db = TestDatabase::create().await;
    let q = PgQueue::new(db.pool.clone(), "jobs", MAX_RECEIVES);
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen("queue_messages").await.unwrap();
    q.send("a").await.unwrap();
    assert_eq!(
        next_notification(&mut listener, EXPECTED).await.as_deref(),
        Some("jobs"),
        "sent"
    );
    let delivery = q.receive(1, NO_WAIT, LONG).await.unwrap().remove(0);
    q.change_visibility(&delivery.receipt, LONG).await.unwrap();
    assert_eq!(
        next_notification(&mut listener, UNEXPECTED).await,
        None,
        "received and kept hidden: nothing to wake for"
    );
    q.change_visibility(&delivery.receipt, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        next_notification(&mut listener, EXPECTED).await.as_deref(),
        Some("jobs"),
        "released"
    );
}

/// How long a notification that must come may take (a busy machine), and how long one
/// that must not come is waited for (a notification is sent at commit: it would be there).
const EXPECTED: Duration = Duration::from_secs(10);
const UNEXPECTED: Duration = Duration::from_millis(500);

async fn next_notification(
    listener: &mut sqlx::postgres::PgListener,
    within: Duration,
) -> Option<String> {
    tokio::time::timeout(within, listener.recv())
        .await
        .ok()
        .map(|n| n.unwrap().payload().to_owned())
}
