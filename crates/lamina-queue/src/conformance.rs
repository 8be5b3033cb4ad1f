//! The contract every [`EventQueue`] backend must keep, as async checks a backend's
//! tests call with a way to open (and reopen, as after a crash) its storage. The SQLite
//! backend runs them in its tests; a JetStream backend must run the same.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{EventQueue, QueuedEvent, now_ms};

fn event(id: &str) -> QueuedEvent {
    QueuedEvent::new(
        id.to_owned(),
        "f".to_owned(),
        None,
        Bytes::from_static(b"{\"n\":1}"),
        None,
    )
}

async fn next(queue: &dyn EventQueue) -> QueuedEvent {
    tokio::time::timeout(Duration::from_secs(5), queue.next_due())
        .await
        .expect("an event is due within 5 s")
}

/// Enqueued events are due in order; a leased, unacknowledged event is due again after
/// a reopen (at-least-once), and acknowledged ones are not.
pub async fn leased_events_return_and_acknowledged_ones_do_not<Q: EventQueue>(
    open: impl Fn() -> Q,
) {
    {
        let queue = open();
        for id in ["e0", "e1", "e2"] {
            queue.enqueue(event(id)).await.unwrap();
        }
        assert_eq!(queue.len(), 3);
        assert_eq!(next(&queue).await.id, "e0");
        let done = next(&queue).await;
        assert_eq!(done.id, "e1");
        queue.ack(&done.id);
        queue.flush().await;
        // e0 leased and never acknowledged, e2 never leased: both come back.
    }
    let queue = open();
    let mut ids = vec![next(&queue).await.id, next(&queue).await.id];
    ids.sort();
    assert_eq!(ids, ["e0", "e2"]);
    assert_eq!(queue.len(), 2);
}

/// A retry is not due before its time and keeps its attempt count, across a reopen too.
pub async fn retries_wait_for_their_time<Q: EventQueue>(open: impl Fn() -> Q) {
    {
        let queue = open();
        queue.enqueue(event("r")).await.unwrap();
        let mut leased = next(&queue).await;
        leased.attempts = 1;
        leased.due_at_ms = now_ms() + 300;
        let started = Instant::now();
        queue.retry_at(leased, true);
        let again = next(&queue).await;
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(again.attempts, 1);
        let mut later = again;
        later.attempts = 2;
        later.due_at_ms = now_ms() + 400;
        queue.retry_at(later, true);
        queue.flush().await;
    }
    let started = Instant::now();
    let queue = open();
    let recovered = next(&queue).await;
    assert_eq!((recovered.id.as_str(), recovered.attempts), ("r", 2));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "kept its due time"
    );
}
