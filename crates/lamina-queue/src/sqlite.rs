//! [`SqliteQueue`]: the embedded queue backend.
//!
//! Durability comes from group commit: every change (enqueue, ack, durable retry) is a
//! command to one writer thread, which takes all commands waiting (up to
//! [`MAX_BATCH`]), applies them in one transaction and commits it: one WAL fsync
//! (`synchronous=FULL`) for the whole batch. Only then are the enqueuers told, so a `202`
//! always follows the fsync that holds its event. Under load batches grow by themselves:
//! while one fsync runs, the next batch gathers.
//!
//! Scheduling lives in memory: events are due in a FIFO (`ready`) or waiting for a time
//! (`delayed`, a min-heap); the single consumer waits on a `Notify`. On open, every stored
//! event is loaded back: those whose due time has passed (including any that were
//! running at a crash) are due at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, params};
use tokio::sync::{Notify, oneshot};

use crate::{BoxFuture, EventQueue, QueueError, QueuedEvent, now_ms};

/// The most commands one transaction applies.
pub const MAX_BATCH: usize = 4096;

/// How many payload bytes of waiting events are kept in memory. Beyond it a waiting
/// event keeps only its metadata and its payload is read back from the database when it
/// is dispatched, so a backlog of large events (up to 1 MB each, for hours of retries)
/// costs disk, not the server's memory.
pub const RESIDENT_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

enum Command {
    Enqueue(QueuedEvent, oneshot::Sender<Result<(), QueueError>>),
    Ack(String),
    Reschedule {
        id: String,
        due_at_ms: i64,
        attempts: u32,
    },
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct Schedule {
    ready: VecDeque<Entry>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    /// Payload bytes held by the entries above.
    resident_bytes: usize,
}

/// A waiting event; without its payload when that stayed on disk.
#[derive(Debug)]
struct Entry {
    event: QueuedEvent,
    payload_on_disk: bool,
}

#[derive(Debug)]
struct Delayed(Entry);

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.0.event.due_at_ms == other.0.event.due_at_ms
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.event.due_at_ms.cmp(&other.0.event.due_at_ms)
    }
}

#[derive(Debug)]
struct Scheduler {
    schedule: Mutex<Schedule>,
    wake: Notify,
    resident_budget: usize,
}

impl Scheduler {
    fn new(resident_budget: usize) -> Scheduler {
        Scheduler {
            schedule: Mutex::default(),
            wake: Notify::new(),
            resident_budget,
        }
    }

    /// Schedules a stored event, keeping its payload in memory while the budget allows.
    fn push(&self, mut event: QueuedEvent) {
        {
            let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
            let size = event.payload.len();
            let payload_on_disk = schedule.resident_bytes + size > self.resident_budget;
            if payload_on_disk {
                event.payload = Bytes::new();
            } else {
                schedule.resident_bytes += size;
            }
            let entry = Entry {
                event,
                payload_on_disk,
            };
            if entry.event.due_at_ms <= now_ms() {
                schedule.ready.push_back(entry);
            } else {
                schedule.delayed.push(Reverse(Delayed(entry)));
            }
        }
        self.wake.notify_one();
    }

    /// Schedules again an event whose payload stayed on disk.
    fn push_stripped(&self, event: QueuedEvent) {
        let entry = Entry {
            event,
            payload_on_disk: true,
        };
        {
            let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
            schedule.delayed.push(Reverse(Delayed(entry)));
        }
        self.wake.notify_one();
    }

    /// A due event, or how long until the earliest delayed one is due.
    fn take(&self) -> Result<Entry, Option<Duration>> {
        let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        while schedule
            .delayed
            .peek()
            .is_some_and(|Reverse(Delayed(e))| e.event.due_at_ms <= now)
        {
            let Reverse(Delayed(entry)) = schedule.delayed.pop().expect("peeked");
            schedule.ready.push_back(entry);
        }
        if let Some(entry) = schedule.ready.pop_front() {
            schedule.resident_bytes -= entry.event.payload.len();
            return Ok(entry);
        }
        Err(schedule.delayed.peek().map(|Reverse(Delayed(e))| {
            Duration::from_millis((e.event.due_at_ms - now).max(1) as u64)
        }))
    }
}

/// The embedded durable queue: SQLite with group commit.
#[derive(Debug)]
pub struct SqliteQueue {
    commands: Mutex<mpsc::Sender<Command>>,
    scheduler: Arc<Scheduler>,
    stored: Arc<AtomicUsize>,
    path: PathBuf,
    /// Reads back payloads that were not kept in memory (WAL: reads do not wait for the
    /// writer).
    reader: Arc<Mutex<Connection>>,
}

fn db_error(path: &Path) -> impl Fn(rusqlite::Error) -> QueueError + '_ {
    move |source| QueueError::Database {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection, QueueError> {
    let connection = Connection::open(path).map_err(db_error(path))?;
    connection
        .execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS events (
                 id TEXT PRIMARY KEY,
                 function_name TEXT NOT NULL,
                 qualifier TEXT,
                 payload BLOB NOT NULL,
                 client_context TEXT,
                 enqueued_at_ms INTEGER NOT NULL,
                 due_at_ms INTEGER NOT NULL,
                 attempts INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS event_invoke_configs (
                 function_name TEXT NOT NULL,
                 qualifier TEXT NOT NULL,
                 config TEXT NOT NULL,
                 PRIMARY KEY (function_name, qualifier)
             );",
        )
        .map_err(db_error(path))?;
    Ok(connection)
}

impl SqliteQueue {
    /// Opens (or creates) the queue at `path` and schedules every event stored there.
    pub fn open(path: &Path) -> Result<SqliteQueue, QueueError> {
        SqliteQueue::open_with_resident_payloads(path, RESIDENT_PAYLOAD_BYTES)
    }

    /// [`SqliteQueue::open`] keeping at most `resident_bytes` of waiting payloads in memory.
    pub fn open_with_resident_payloads(
        path: &Path,
        resident_bytes: usize,
    ) -> Result<SqliteQueue, QueueError> {
        let connection = open_connection(path)?;
        let reader = Arc::new(Mutex::new(open_connection(path)?));
        let scheduler = Arc::new(Scheduler::new(resident_bytes));
        let mut recovered = 0usize;
        {
            let mut statement = connection
                .prepare(
                    "SELECT id, function_name, qualifier, payload, client_context, \
                     enqueued_at_ms, due_at_ms, attempts FROM events ORDER BY enqueued_at_ms",
                )
                .map_err(db_error(path))?;
            let rows = statement
                .query_map([], |row| {
                    Ok(QueuedEvent {
                        id: row.get(0)?,
                        function_name: row.get(1)?,
                        qualifier: row.get(2)?,
                        payload: Bytes::from(row.get::<_, Vec<u8>>(3)?),
                        client_context: row.get(4)?,
                        enqueued_at_ms: row.get(5)?,
                        due_at_ms: row.get(6)?,
                        attempts: row.get(7)?,
                    })
                })
                .map_err(db_error(path))?;
            for event in rows {
                scheduler.push(event.map_err(db_error(path))?);
                recovered += 1;
            }
        }
        if recovered > 0 {
            tracing::info!(
                events = recovered,
                "asynchronous events recovered from the queue"
            );
        }
        let stored = Arc::new(AtomicUsize::new(recovered));
        let (sender, receiver) = mpsc::channel();
        let writer_scheduler = scheduler.clone();
        let writer_path = path.to_owned();
        let writer_stored = stored.clone();
        std::thread::Builder::new()
            .name("lamina-queue-writer".to_owned())
            .spawn(move || {
                write_batches(
                    connection,
                    &writer_path,
                    receiver,
                    &writer_scheduler,
                    &writer_stored,
                )
            })
            .map_err(|e| QueueError::Database {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(SqliteQueue {
            commands: Mutex::new(sender),
            scheduler,
            stored,
            path: path.to_owned(),
            reader,
        })
    }

    /// Reads an event's payload back from the database (blocking).
    fn load_payload(reader: &Mutex<Connection>, id: &str) -> Result<Bytes, rusqlite::Error> {
        let reader = reader.lock().unwrap_or_else(|p| p.into_inner());
        let payload: Vec<u8> = reader
            .prepare_cached("SELECT payload FROM events WHERE id = ?1")?
            .query_row(params![id], |row| row.get(0))?;
        Ok(Bytes::from(payload))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, command: Command) -> Result<(), QueueError> {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(command)
            .map_err(|_| QueueError::WriterStopped)
    }
}

/// The writer thread: one transaction and one fsync per batch of waiting commands.
fn write_batches(
    mut connection: Connection,
    path: &Path,
    commands: mpsc::Receiver<Command>,
    scheduler: &Scheduler,
    stored: &AtomicUsize,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = commands.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let result = apply(&mut connection, &batch);
        if let Err(error) = &result {
            tracing::error!(%error, path = %path.display(), "queue batch not stored");
        }
        for command in batch.drain(..) {
            match command {
                Command::Enqueue(event, done) => match &result {
                    Ok(()) => {
                        stored.fetch_add(1, Ordering::Relaxed);
                        scheduler.push(event);
                        let _ = done.send(Ok(()));
                    }
                    Err(error) => {
                        let _ = done.send(Err(QueueError::Database {
                            path: path.display().to_string(),
                            source: rusqlite::Error::ToSqlConversionFailure(
                                error.to_string().into(),
                            ),
                        }));
                    }
                },
                Command::Flush(done) => {
                    let _ = done.send(());
                }
                Command::Ack(_) | Command::Reschedule { .. } => {}
            }
        }
    }
}

fn apply(connection: &mut Connection, batch: &[Command]) -> Result<(), rusqlite::Error> {
    let transaction = connection.transaction()?;
    {
        let mut insert = transaction.prepare_cached(
            "INSERT OR REPLACE INTO events (id, function_name, qualifier, payload, \
             client_context, enqueued_at_ms, due_at_ms, attempts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut delete = transaction.prepare_cached("DELETE FROM events WHERE id = ?1")?;
        let mut reschedule = transaction
            .prepare_cached("UPDATE events SET due_at_ms = ?2, attempts = ?3 WHERE id = ?1")?;
        for command in batch {
            match command {
                Command::Enqueue(event, _) => {
                    insert.execute(params![
                        event.id,
                        event.function_name,
                        event.qualifier,
                        &event.payload[..],
                        event.client_context,
                        event.enqueued_at_ms,
                        event.due_at_ms,
                        event.attempts,
                    ])?;
                }
                Command::Ack(id) => {
                    delete.execute(params![id])?;
                }
                Command::Reschedule {
                    id,
                    due_at_ms,
                    attempts,
                } => {
                    reschedule.execute(params![id, due_at_ms, attempts])?;
                }
                Command::Flush(_) => {}
            }
        }
    }
    transaction.commit()
}

impl EventQueue for SqliteQueue {
    fn enqueue(&self, event: QueuedEvent) -> BoxFuture<'static, Result<(), QueueError>> {
        let (done, stored) = oneshot::channel();
        let sent = self.send(Command::Enqueue(event, done));
        Box::pin(async move {
            sent?;
            stored.await.map_err(|_| QueueError::WriterStopped)?
        })
    }

    fn next_due(&self) -> BoxFuture<'_, QueuedEvent> {
        Box::pin(async move {
            loop {
                match self.scheduler.take() {
                    Ok(Entry {
                        event,
                        payload_on_disk: false,
                    }) => return event,
                    Ok(Entry { mut event, .. }) => {
                        let reader = self.reader.clone();
                        let id = event.id.clone();
                        let loaded = tokio::task::spawn_blocking(move || {
                            SqliteQueue::load_payload(&reader, &id)
                        })
                        .await;
                        match loaded {
                            Ok(Ok(payload)) => {
                                event.payload = payload;
                                return event;
                            }
                            failed => {
                                // Stored (the lease keeps it so) but unreadable now: try
                                // again in a second rather than run it without its payload.
                                tracing::error!(event = %event.id, path = %self.path.display(), error = ?failed.map(|r| r.err()), "cannot read a queued event's payload; retrying in 1 s");
                                event.due_at_ms = now_ms() + 1000;
                                self.scheduler.push_stripped(event);
                            }
                        }
                    }
                    Err(None) => self.scheduler.wake.notified().await,
                    Err(Some(wait)) => {
                        let _ = tokio::time::timeout(wait, self.scheduler.wake.notified()).await;
                    }
                }
            }
        })
    }

    fn ack(&self, id: &str) {
        // Not awaited: an acknowledgement lost in a crash only means one more delivery.
        if self.send(Command::Ack(id.to_owned())).is_ok() {
            self.stored.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn retry_at(&self, event: QueuedEvent, persist: bool) {
        if persist {
            let _ = self.send(Command::Reschedule {
                id: event.id.clone(),
                due_at_ms: event.due_at_ms,
                attempts: event.attempts,
            });
        }
        self.scheduler.push(event);
    }

    fn flush(&self) -> BoxFuture<'static, ()> {
        let (done, flushed) = oneshot::channel();
        let sent = self.send(Command::Flush(done));
        Box::pin(async move {
            if sent.is_ok() {
                let _ = flushed.await;
            }
        })
    }

    fn len(&self) -> usize {
        self.stored.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> QueuedEvent {
        QueuedEvent::new(
            id.to_owned(),
            "f".to_owned(),
            None,
            Bytes::from_static(b"{\"n\":1}"),
            None,
        )
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        crate::conformance::leased_events_return_and_acknowledged_ones_do_not(|| {
            SqliteQueue::open(&path).unwrap()
        })
        .await;
        let path = dir.path().join("b.db");
        crate::conformance::retries_wait_for_their_time(|| SqliteQueue::open(&path).unwrap()).await;
    }

    #[tokio::test]
    async fn concurrent_enqueues_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(SqliteQueue::open(&dir.path().join("queue.db")).unwrap());
        let waits: Vec<_> = (0..2000)
            .map(|i| queue.enqueue(event(&format!("c{i}"))))
            .collect();
        for wait in waits {
            wait.await.unwrap();
        }
        assert_eq!(queue.len(), 2000);
        let connection = Connection::open(dir.path().join("queue.db")).unwrap();
        let count: i64 = connection
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2000);
    }

    /// Beyond the memory budget, waiting events keep only their metadata: their payloads
    /// come back from the database when they are dispatched, whole and in order, also
    /// after a restart and after a retry.
    #[tokio::test]
    async fn payloads_beyond_the_memory_budget_are_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let payload =
            |i: usize| Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100)));
        let queue = SqliteQueue::open_with_resident_payloads(&path, 250).unwrap();
        for i in 0..10 {
            let mut e = event(&format!("e{i}"));
            e.payload = payload(i);
            e.enqueued_at_ms += i as i64;
            queue.enqueue(e).await.unwrap();
        }
        {
            let schedule = queue.scheduler.schedule.lock().unwrap();
            assert!(
                schedule.resident_bytes <= 250,
                "{}",
                schedule.resident_bytes
            );
            assert_eq!(
                schedule.ready.iter().filter(|e| e.payload_on_disk).count(),
                8,
                "two payloads fit in 250 bytes"
            );
        }
        for i in 0..5 {
            let got = queue.next_due().await;
            assert_eq!(
                (got.id.as_str(), &got.payload),
                (format!("e{i}").as_str(), &payload(i))
            );
            if i == 4 {
                // A retry keeps the payload (in memory or on disk).
                let mut again = got;
                again.attempts = 1;
                queue.retry_at(again, true);
            } else {
                queue.ack(&got.id);
            }
        }
        queue.flush().await;
        drop(queue);
        // After a restart: the unacknowledged ones, payloads intact.
        let queue = SqliteQueue::open_with_resident_payloads(&path, 250).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let got = queue.next_due().await;
            let n: usize = got.id[1..].parse().unwrap();
            assert_eq!(got.payload, payload(n), "{}", got.id);
            seen.push(n);
        }
        seen.sort();
        assert_eq!(seen, [4, 5, 6, 7, 8, 9]);
        assert_eq!(queue.scheduler.schedule.lock().unwrap().resident_bytes, 0);
    }
}
