//! The durable queue behind asynchronous invocation (`InvocationType: Event`,
//! `InvokeAsync`), and the dispatcher that runs what it holds.
//!
//! # Contract of an [`EventQueue`]
//! - [`EventQueue::enqueue`] resolves only once the event is durable: the caller answers
//!   `202` after it, so an acknowledged event survives `kill -9` at any later moment.
//! - [`EventQueue::next_due`] hands out each due event to one consumer (a lease held in
//!   memory). An event stays stored until [`EventQueue::ack`]; after a crash every stored
//!   event is delivered again (at-least-once), those in flight at the crash at once.
//! - [`EventQueue::retry_at`] puts an event back to become due later, with its attempt
//!   count; `persist` says whether the new due time and count must reach the disk
//!   (function-error retries) or may live in memory only (throttles, which after a crash
//!   are simply retried at once).
//!
//! The embedded backend is [`SqliteQueue`] (WAL, `synchronous=FULL`, one writer thread
//! committing many events per fsync). A NATS JetStream backend can implement the same
//! trait: `enqueue` = publish with ack, lease = a pull consumer's ack-wait, `retry_at` =
//! `nak` with delay.

mod config;
pub mod conformance;
mod dispatcher;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use config::{ConfigStore, EventInvokeConfig};
pub use dispatcher::{
    Attempt, DispatchSettings, Dispatcher, EventInvoker, invocation_record, parse_function_arn,
};
pub use sqlite::SqliteQueue;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One asynchronous invocation, from its acceptance to its last attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    /// The request id: the same for every attempt, as on AWS.
    pub id: String,
    pub function_name: String,
    pub qualifier: Option<String>,
    pub payload: Bytes,
    pub client_context: Option<String>,
    /// When the event was accepted (ms since the epoch); its age counts from here.
    pub enqueued_at_ms: i64,
    /// When the event is next due (ms since the epoch).
    pub due_at_ms: i64,
    /// How many times the function has run it (AWS's `approximateInvokeCount`).
    pub attempts: u32,
}

impl QueuedEvent {
    pub fn new(
        id: String,
        function_name: String,
        qualifier: Option<String>,
        payload: Bytes,
        client_context: Option<String>,
    ) -> QueuedEvent {
        let now = now_ms();
        QueuedEvent {
            id,
            function_name,
            qualifier,
            payload,
            client_context,
            enqueued_at_ms: now,
            due_at_ms: now,
            attempts: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the queue's writer has stopped; the event was not stored")]
    WriterStopped,
    #[error("stored event invoke configuration for {function} is corrupt: {detail}")]
    Corrupt { function: String, detail: String },
}

/// A durable queue of events; see the module documentation for the contract.
pub trait EventQueue: Send + Sync + std::fmt::Debug + 'static {
    /// Stores the event; resolves once it is durable.
    fn enqueue(&self, event: QueuedEvent) -> BoxFuture<'static, Result<(), QueueError>>;
    /// The next due event, leased to the caller until `ack` or `retry_at`.
    fn next_due(&self) -> BoxFuture<'_, QueuedEvent>;
    /// The event is finished (ran, or was handed to its destinations): forget it.
    fn ack(&self, id: &str);
    /// The event becomes due again at `event.due_at_ms`.
    fn retry_at(&self, event: QueuedEvent, persist: bool);
    /// Resolves once every change made before the call is durable (for a clean stop).
    fn flush(&self) -> BoxFuture<'static, ()>;
    /// Events stored and not yet acknowledged.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
