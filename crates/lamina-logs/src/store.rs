//! The log store: one SQLite database (WAL, `synchronous=FULL`) written by one background
//! thread and read through a separate connection.
//!
//! ## Writing: a channel and group commit
//! [`LogSink::append`] is called on the invoke path, so it does no I/O and never waits: it
//! adds the event count to a shared `pending` counter and pushes the events into an
//! unbounded channel. The counter bounds memory instead of the channel: when more than
//! [`MAX_PENDING_EVENTS`] are waiting, new events are dropped, counted
//! ([`LogSink::dropped_events`]) and reported with a warning, rather than blocking the
//! function's caller.
//!
//! The writer thread takes the first waiting message, keeps collecting for at most
//! [`BATCH_INTERVAL`] or until [`BATCH_EVENTS`] events, and writes the whole batch in
//! one transaction: one fsync for many invocations' logs. A flush request travels the
//! same channel, so it is answered after every event appended before it has been
//! committed; it also ends the batch early, so a flush does not wait out the interval.
//! Groups and streams are created by the first event that names them.
//!
//! ## Reading
//! Events are ordered by `(timestamp, id)`, where `id` is the row id, increasing in
//! ingestion order. Pagination works on positions in that order ([`EventPosition`]), so
//! it is stable while new events arrive.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{LogError, db};
use crate::filter::FilterPattern;

/// More events than this waiting for the writer and new ones are dropped.
pub const MAX_PENDING_EVENTS: usize = 100_000;
/// How long the writer collects events before committing a batch.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long the writer sleeps between looks at its queue while a batch fills.
const WRITER_NAP: Duration = Duration::from_millis(5);
/// A batch is committed as soon as it holds this many events.
pub const BATCH_EVENTS: usize = 1_000;
/// AWS's cap on the messages of one GetLogEvents or FilterLogEvents response.
pub const MAX_RESPONSE_BYTES: usize = 1_048_576;
/// FilterLogEvents and GetLogEvents stop scanning after this many events and answer with
/// a token to continue (an empty page if need be), as AWS does, so a rare pattern over a
/// large group, or a quiet stream among busy ones, cannot hold the reader long.
pub const MAX_SCANNED_EVENTS: usize = 100_000;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE log_groups (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        creation_time INTEGER NOT NULL,
        stored_bytes  INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE log_streams (
        id                    INTEGER PRIMARY KEY,
        group_id              INTEGER NOT NULL REFERENCES log_groups(id),
        name                  TEXT NOT NULL,
        creation_time         INTEGER NOT NULL,
        first_event_timestamp INTEGER,
        last_event_timestamp  INTEGER,
        last_ingestion_time   INTEGER,
        stored_bytes          INTEGER NOT NULL DEFAULT 0,
        UNIQUE (group_id, name)
    );
    CREATE TABLE log_events (
        id             INTEGER PRIMARY KEY,
        group_id       INTEGER NOT NULL,
        stream_id      INTEGER NOT NULL,
        timestamp      INTEGER NOT NULL,
        ingestion_time INTEGER NOT NULL,
        message        TEXT NOT NULL
    );
    -- Both indexes end in the rowid implicitly: (…, timestamp, id) is the read order.
    CREATE INDEX log_events_by_group ON log_events(group_id, timestamp);
    CREATE INDEX log_events_by_stream ON log_events(stream_id, timestamp);
",
    "
    -- One index serves both reads. Per-stream keys put every active stream's insertion
    -- point somewhere else in the index, and that index cost the writer as much as the
    -- table and the group index together (3.7-6.1 us a row with 32-128 streams against
    -- 2.6-3.0 without it); a group's events arrive in time order, so its index grows at
    -- one end. The stream id rides along, so a stream's read filters the group's events
    -- in the index without visiting the rows of other streams.
    DROP INDEX log_events_by_group;
    DROP INDEX log_events_by_stream;
    CREATE INDEX log_events_by_group_time ON log_events(group_id, timestamp, id, stream_id);
",
];

/// One log line as the engine produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Milliseconds since the Unix epoch; negative values are stored as 0.
    pub timestamp_ms: i64,
    pub message: String,
}

#[derive(Debug)]
struct Append {
    group: String,
    stream: String,
    events: Vec<LogEvent>,
}

#[derive(Debug)]
enum FlushAck {
    Blocking(mpsc::SyncSender<Result<(), String>>),
    Async(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl FlushAck {
    fn send(self, result: Result<(), String>) {
        // A flusher that stopped waiting needs no answer.
        match self {
            FlushAck::Blocking(sender) => {
                let _ = sender.send(result);
            }
            FlushAck::Async(sender) => {
                let _ = sender.send(result);
            }
        }
    }
}

#[derive(Debug)]
enum Command {
    Append(Append),
    Flush(FlushAck),
    Shutdown,
}

#[derive(Debug, Default)]
struct SinkCounters {
    pending: AtomicUsize,
    dropped: AtomicU64,
}

/// The write side of the log store. Cheap to clone; [`append`](Self::append) only pushes
/// into a channel.
#[derive(Debug, Clone)]
pub struct LogSink {
    commands: Sender<Command>,
    counters: Arc<SinkCounters>,
}

impl LogSink {
    /// Queues `events` for `stream` in `group`, creating both on first use. Never blocks:
    /// if the writer is more than [`MAX_PENDING_EVENTS`] behind, or the store is closed,
    /// the events are dropped and counted.
    pub fn append(&self, group: &str, stream: &str, events: Vec<LogEvent>) {
        let count = events.len();
        if count == 0 {
            return;
        }
        let before = self.counters.pending.fetch_add(count, Ordering::Relaxed);
        if before + count > MAX_PENDING_EVENTS {
            self.counters.pending.fetch_sub(count, Ordering::Relaxed);
            self.record_drop(count, group, "the log writer is too far behind");
            return;
        }
        let command = Command::Append(Append {
            group: group.to_owned(),
            stream: stream.to_owned(),
            events,
        });
        if self.commands.send(command).is_err() {
            self.counters.pending.fetch_sub(count, Ordering::Relaxed);
            self.record_drop(count, group, "the log store is closed");
        }
    }

    /// Blocks until everything appended before this call is durable. For tests and
    /// shutdown; do not call it from an async task (use [`flush_async`](Self::flush_async)).
    pub fn flush(&self) -> Result<(), LogError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.commands
            .send(Command::Flush(FlushAck::Blocking(sender)))
            .map_err(|_| LogError::WriterStopped)?;
        match receiver.recv() {
            Ok(result) => result.map_err(|detail| LogError::WriteFailed { detail }),
            Err(_) => Err(LogError::WriterStopped),
        }
    }

    /// [`flush`](Self::flush) for async callers.
    pub async fn flush_async(&self) -> Result<(), LogError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Flush(FlushAck::Async(sender)))
            .map_err(|_| LogError::WriterStopped)?;
        match receiver.await {
            Ok(result) => result.map_err(|detail| LogError::WriteFailed { detail }),
            Err(_) => Err(LogError::WriterStopped),
        }
    }

    /// Events dropped so far because the writer was behind or the store closed.
    pub fn dropped_events(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Events appended but not yet committed (or dropped by a failed commit).
    pub fn pending_events(&self) -> usize {
        self.counters.pending.load(Ordering::Relaxed)
    }

    fn record_drop(&self, count: usize, group: &str, reason: &str) {
        let total = self
            .counters
            .dropped
            .fetch_add(count as u64, Ordering::Relaxed)
            + count as u64;
        let previous = total - count as u64;
        // Warn on the first drop and then once per 10,000 so a flood does not flood the log.
        if previous == 0 || previous / 10_000 != total / 10_000 {
            tracing::warn!(
                group,
                dropped_now = count,
                dropped_total = total,
                "dropping log events: {reason}"
            );
        }
    }
}

/// A log group as DescribeLogGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogGroupSummary {
    pub name: String,
    pub creation_time: i64,
    /// Bytes of message text stored (AWS reports its compressed size; we store raw text).
    pub stored_bytes: i64,
}

/// A log stream as DescribeLogStreams reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStreamSummary {
    pub name: String,
    pub creation_time: i64,
    pub first_event_timestamp: Option<i64>,
    pub last_event_timestamp: Option<i64>,
    pub last_ingestion_time: Option<i64>,
    pub stored_bytes: i64,
}

/// An event as stored, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLogEvent {
    pub id: i64,
    pub stream_name: String,
    pub timestamp: i64,
    pub ingestion_time: i64,
    pub message: String,
}

impl StoredLogEvent {
    pub fn position(&self) -> EventPosition {
        EventPosition {
            timestamp: self.timestamp,
            id: self.id,
        }
    }
}

/// A point in the `(timestamp, id)` order of events. An event is *after* a position when
/// its `(timestamp, id)` is greater, otherwise at or before it. Row ids start at 1, so
/// `(t, 0)` lies before every event stamped `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventPosition {
    pub timestamp: i64,
    pub id: i64,
}

impl EventPosition {
    /// Before every event stamped `timestamp` or later.
    pub fn before_time(timestamp: i64) -> Self {
        EventPosition { timestamp, id: 0 }
    }

    /// After every event stamped before `timestamp`, before every other.
    pub fn before_time_exclusive_end(timestamp: i64) -> Self {
        EventPosition {
            timestamp: timestamp.saturating_sub(1),
            id: i64::MAX,
        }
    }

    /// The position just before `event`.
    fn just_before(event: &StoredLogEvent) -> Self {
        EventPosition {
            timestamp: event.timestamp,
            id: event.id - 1,
        }
    }
}

/// A page of results; `more` says whether the query had further items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// Which log groups to list, in name order.
#[derive(Debug, Clone, Default)]
pub struct GroupQuery {
    pub name_prefix: Option<String>,
    /// Case-sensitive substring (DescribeLogGroups' `logGroupNamePattern`).
    pub name_contains: Option<String>,
    /// Exactly these names (DescribeLogGroups' `logGroupIdentifiers`).
    pub names: Option<Vec<String>>,
    /// Resume after this name.
    pub after_name: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamOrder {
    #[default]
    LogStreamName,
    /// By last event time (streams without events count as 0), then name.
    LastEventTime,
}

/// Where a stream listing resumes: after (or, descending, before) this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCursor {
    pub last_event_time: i64,
    pub name: String,
}

#[derive(Debug, Clone, Default)]
pub struct StreamQuery {
    pub name_prefix: Option<String>,
    pub order: StreamOrder,
    pub descending: bool,
    pub after: Option<StreamCursor>,
    pub limit: usize,
}

impl LogStreamSummary {
    pub fn cursor(&self) -> StreamCursor {
        StreamCursor {
            last_event_time: self.last_event_timestamp.unwrap_or(0),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDirection {
    /// Events after the boundary, oldest first.
    Forward,
    /// Events at or before the boundary, newest first (returned oldest first).
    Backward,
}

/// One page of GetLogEvents.
#[derive(Debug, Clone)]
pub struct StreamRead {
    /// Inclusive.
    pub start_time: Option<i64>,
    /// Exclusive, as GetLogEvents defines it.
    pub end_time: Option<i64>,
    pub boundary: EventPosition,
    pub direction: ReadDirection,
    pub limit: usize,
}

/// A page of GetLogEvents with the positions to continue from in each direction.
#[derive(Debug, Clone)]
pub struct StreamPage {
    /// Oldest first.
    pub events: Vec<StoredLogEvent>,
    /// Read forward from here for the events after this page.
    pub forward: EventPosition,
    /// Read backward from here for the events before this page.
    pub backward: EventPosition,
}

/// One page of FilterLogEvents.
#[derive(Debug, Clone)]
pub struct GroupFilter {
    /// Only these streams (at most 100, as AWS allows).
    pub stream_names: Option<Vec<String>>,
    pub stream_prefix: Option<String>,
    /// Inclusive.
    pub start_time: Option<i64>,
    /// Inclusive, as FilterLogEvents defines it.
    pub end_time: Option<i64>,
    pub pattern: FilterPattern,
    pub after: Option<EventPosition>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct FilterPage {
    pub events: Vec<StoredLogEvent>,
    /// Set when more events may match: continue after this position.
    pub resume_after: Option<EventPosition>,
}

/// Owns the log database and its writer thread. Dropping it commits what is queued and
/// stops the writer; sinks still held afterwards drop what they are given.
#[derive(Debug)]
pub struct LogStore {
    reader: Mutex<Connection>,
    sink: LogSink,
    writer: Option<JoinHandle<()>>,
    region: String,
    account_id: String,
}

fn configure(connection: &mut Connection) -> Result<(), LogError> {
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(db("enable WAL"))?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(db("set synchronous"))?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(db("set busy timeout"))?;
    Ok(())
}

fn migrate(connection: &mut Connection) -> Result<(), LogError> {
    let applied: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db("read schema version"))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let tx = connection.transaction().map_err(db("migrate"))?;
        tx.execute_batch(migration).map_err(db("migrate"))?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(db("migrate"))?;
        tx.commit().map_err(db("migrate"))?;
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl LogStore {
    /// Opens (creating if needed) the log database at `path` and starts its writer thread.
    /// ARNs in API answers use region `us-east-1` and account `000000000000` unless
    /// [`with_arn_scope`](Self::with_arn_scope) says otherwise.
    pub fn open(path: &Path) -> Result<LogStore, LogError> {
        let mut writer_connection = Connection::open(path).map_err(db("open"))?;
        configure(&mut writer_connection)?;
        migrate(&mut writer_connection)?;
        let mut reader = Connection::open(path).map_err(db("open"))?;
        configure(&mut reader)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(db("make the reader read-only"))?;

        let (commands, receiver) = mpsc::channel();
        let counters = Arc::new(SinkCounters::default());
        let writer = Writer {
            connection: writer_connection,
            commands: receiver,
            counters: counters.clone(),
            group_ids: HashMap::new(),
            stream_ids: HashMap::new(),
        };
        let writer = std::thread::Builder::new()
            .name("lamina-log-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| LogError::WriteFailed {
                detail: format!("cannot start the log writer thread: {e}"),
            })?;
        Ok(LogStore {
            reader: Mutex::new(reader),
            sink: LogSink { commands, counters },
            writer: Some(writer),
            region: "us-east-1".to_owned(),
            account_id: "000000000000".to_owned(),
        })
    }

    /// Sets the region and account used in log group and stream ARNs.
    pub fn with_arn_scope(mut self, region: &str, account_id: &str) -> Self {
        self.region = region.to_owned();
        self.account_id = account_id.to_owned();
        self
    }

    /// `arn:aws:logs:REGION:ACCOUNT:log-group:NAME`
    pub fn group_arn(&self, group: &str) -> String {
        format!(
            "arn:aws:logs:{}:{}:log-group:{group}",
            self.region, self.account_id
        )
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite reads leave nothing half-done, so a poisoned lock is still usable.
        self.reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Log groups in name order; fetches one more than `limit` to tell whether more exist.
    pub fn log_groups(&self, query: &GroupQuery) -> Result<Page<LogGroupSummary>, LogError> {
        let connection = self.read();
        let names = query
            .names
            .as_ref()
            .map(|names| serde_json::Value::from(names.clone()).to_string());
        let mut statement = connection
            .prepare_cached(
                "SELECT name, creation_time, stored_bytes FROM log_groups
                 WHERE (?1 IS NULL OR substr(name, 1, length(?1)) = ?1)
                   AND (?2 IS NULL OR instr(name, ?2) > 0)
                   AND (?3 IS NULL OR name > ?3)
                   AND (?4 IS NULL OR name IN (SELECT value FROM json_each(?4)))
                 ORDER BY name LIMIT ?5",
            )
            .map_err(db("list log groups"))?;
        let rows = statement
            .query_map(
                params![
                    query.name_prefix,
                    query.name_contains,
                    query.after_name,
                    names,
                    query.limit as i64 + 1
                ],
                |row| {
                    Ok(LogGroupSummary {
                        name: row.get(0)?,
                        creation_time: row.get(1)?,
                        stored_bytes: row.get(2)?,
                    })
                },
            )
            .map_err(db("list log groups"))?;
        let items = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("list log groups"))?;
        Ok(page(items, query.limit))
    }

    fn group_id(connection: &Connection, group: &str) -> Result<i64, LogError> {
        connection
            .prepare_cached("SELECT id FROM log_groups WHERE name = ?1")
            .and_then(|mut s| s.query_row([group], |row| row.get(0)).optional())
            .map_err(db("find log group"))?
            .ok_or_else(|| LogError::GroupNotFound {
                group: group.to_owned(),
            })
    }

    /// Streams of `group`; fails with [`LogError::GroupNotFound`] if it does not exist.
    pub fn log_streams(
        &self,
        group: &str,
        query: &StreamQuery,
    ) -> Result<Page<LogStreamSummary>, LogError> {
        let connection = self.read();
        let group_id = Self::group_id(&connection, group)?;
        let (direction, comparison) = if query.descending {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        let (order, cursor) = match query.order {
            StreamOrder::LogStreamName => {
                (format!("name {direction}"), format!("name {comparison} ?4"))
            }
            StreamOrder::LastEventTime => (
                format!("coalesce(last_event_timestamp, 0) {direction}, name {direction}"),
                format!("(coalesce(last_event_timestamp, 0), name) {comparison} (?3, ?4)"),
            ),
        };
        let sql = format!(
            "SELECT name, creation_time, first_event_timestamp, last_event_timestamp,
                    last_ingestion_time, stored_bytes
             FROM log_streams
             WHERE group_id = ?1
               AND (?2 IS NULL OR substr(name, 1, length(?2)) = ?2)
               AND (?4 IS NULL OR {cursor})
             ORDER BY {order} LIMIT ?5"
        );
        let mut statement = connection
            .prepare_cached(&sql)
            .map_err(db("list log streams"))?;
        let rows = statement
            .query_map(
                params![
                    group_id,
                    query.name_prefix,
                    query.after.as_ref().map(|c| c.last_event_time),
                    query.after.as_ref().map(|c| c.name.as_str()),
                    query.limit as i64 + 1
                ],
                |row| {
                    Ok(LogStreamSummary {
                        name: row.get(0)?,
                        creation_time: row.get(1)?,
                        first_event_timestamp: row.get(2)?,
                        last_event_timestamp: row.get(3)?,
                        last_ingestion_time: row.get(4)?,
                        stored_bytes: row.get(5)?,
                    })
                },
            )
            .map_err(db("list log streams"))?;
        let items = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(db("list log streams"))?;
        Ok(page(items, query.limit))
    }

    /// One page of a stream's events (GetLogEvents).
    pub fn stream_events(
        &self,
        group: &str,
        stream: &str,
        read: &StreamRead,
    ) -> Result<StreamPage, LogError> {
        self.stream_events_scanning(group, stream, read, MAX_SCANNED_EVENTS)
    }

    /// [`stream_events`](Self::stream_events), passing over at most `scan_cap` of the
    /// group's events.
    fn stream_events_scanning(
        &self,
        group: &str,
        stream: &str,
        read: &StreamRead,
        scan_cap: usize,
    ) -> Result<StreamPage, LogError> {
        let mut connection = self.read();
        // One snapshot for the stream's time span and its events.
        let snapshot = connection.transaction().map_err(db("read log events"))?;
        let group_id = Self::group_id(&snapshot, group)?;
        let (stream_id, first, last): (i64, Option<i64>, Option<i64>) = snapshot
            .prepare_cached(
                "SELECT id, first_event_timestamp, last_event_timestamp FROM log_streams
                 WHERE group_id = ?1 AND name = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![group_id, stream], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
            })
            .map_err(db("find log stream"))?
            .ok_or_else(|| LogError::StreamNotFound {
                group: group.to_owned(),
                stream: stream.to_owned(),
            })?;
        // The group's index is read between the stream's first and last events only, so
        // a stream's read passes over the other streams' events of its own lifetime, not
        // the group's whole history.
        let start = read
            .start_time
            .unwrap_or(i64::MIN)
            .max(first.unwrap_or(i64::MAX));
        let end = read
            .end_time
            .unwrap_or(i64::MAX)
            .min(last.map_or(i64::MIN, |last| last.saturating_add(1)));
        // The side the read starts from is one row-value bound (the token's position,
        // narrowed to the time range), so that SQLite seeks there rather than at the
        // stream's first (or last) event and walks to the position; the other side only
        // stops the scan. Row ids start at 1, so `(t, id) > (start, 0)` is `t >= start`.
        // The scan reads the group's index only (it covers timestamp, id and stream_id)
        // and counts what it passes over; the stream's own events are then read by row id.
        let (sql, seek, stop) = match read.direction {
            ReadDirection::Forward => (
                "SELECT id, timestamp, stream_id FROM log_events
                 WHERE group_id = ?1 AND (timestamp, id) > (?2, ?3) AND timestamp < ?4
                 ORDER BY timestamp, id",
                read.boundary.max(EventPosition {
                    timestamp: start,
                    id: 0,
                }),
                end,
            ),
            ReadDirection::Backward => (
                "SELECT id, timestamp, stream_id FROM log_events
                 WHERE group_id = ?1 AND (timestamp, id) <= (?2, ?3) AND timestamp >= ?4
                 ORDER BY timestamp DESC, id DESC",
                // `t < end` is `(t, id) <= (end - 1, MAX)`; nothing is before i64::MIN.
                read.boundary.min(EventPosition {
                    timestamp: end.saturating_sub(1),
                    id: if end == i64::MIN { i64::MIN } else { i64::MAX },
                }),
                start,
            ),
        };
        let mut scan = snapshot
            .prepare_cached(sql)
            .map_err(db("read log events"))?;
        let mut fetch = snapshot
            .prepare_cached("SELECT ingestion_time, message FROM log_events WHERE id = ?1")
            .map_err(db("read log events"))?;
        let mut rows = scan
            .query(params![group_id, seek.timestamp, seek.id, stop])
            .map_err(db("read log events"))?;
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut scanned = 0;
        // Where the scan stopped short of the range's end, if it did so on its cap.
        let mut stopped_at = None;
        while events.len() < read.limit {
            let Some(row) = rows.next().map_err(db("read log events"))? else {
                break;
            };
            let position = EventPosition {
                timestamp: row.get(1).map_err(db("read log events"))?,
                id: row.get(0).map_err(db("read log events"))?,
            };
            let owner: i64 = row.get(2).map_err(db("read log events"))?;
            scanned += 1;
            if owner == stream_id {
                let (ingestion_time, message): (i64, String) = fetch
                    .query_row(params![position.id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(db("read log events"))?;
                bytes += message.len();
                if bytes > MAX_RESPONSE_BYTES && !events.is_empty() {
                    break;
                }
                events.push(StoredLogEvent {
                    id: position.id,
                    stream_name: stream.to_owned(),
                    timestamp: position.timestamp,
                    ingestion_time,
                    message,
                });
            }
            if scanned >= scan_cap {
                stopped_at = Some(position);
                break;
            }
        }
        if read.direction == ReadDirection::Backward {
            events.reverse();
        }
        let (mut forward, mut backward) = match (events.first(), events.last()) {
            (Some(first), Some(last)) => (last.position(), EventPosition::just_before(first)),
            _ => (read.boundary, read.boundary),
        };
        // Stopped on the cap: the next page in this direction starts past what was scanned
        // (those events are the stream's already in this page, or other streams').
        if let Some(position) = stopped_at {
            match read.direction {
                ReadDirection::Forward => forward = position,
                ReadDirection::Backward => {
                    backward = EventPosition {
                        timestamp: position.timestamp,
                        id: position.id - 1,
                    }
                }
            }
        }
        Ok(StreamPage {
            events,
            forward,
            backward,
        })
    }

    /// One page of a group's events matching `filter`, across streams (FilterLogEvents).
    pub fn filter_events(&self, group: &str, filter: &GroupFilter) -> Result<FilterPage, LogError> {
        let connection = self.read();
        let group_id = Self::group_id(&connection, group)?;
        let names = filter
            .stream_names
            .as_ref()
            .map(|names| serde_json::Value::from(names.clone()).to_string());
        let after = filter.after.unwrap_or(EventPosition {
            timestamp: i64::MIN,
            id: 0,
        });
        let mut statement = connection
            .prepare_cached(
                "SELECT e.id, s.name, e.timestamp, e.ingestion_time, e.message
                 FROM log_events e JOIN log_streams s ON s.id = e.stream_id
                 WHERE e.group_id = ?1 AND e.timestamp >= ?2 AND e.timestamp <= ?3
                   AND (e.timestamp, e.id) > (?4, ?5)
                   AND (?6 IS NULL OR s.name IN (SELECT value FROM json_each(?6)))
                   AND (?7 IS NULL OR substr(s.name, 1, length(?7)) = ?7)
                 ORDER BY e.timestamp, e.id",
            )
            .map_err(db("filter log events"))?;
        let mut rows = statement
            .query(params![
                group_id,
                filter.start_time.unwrap_or(i64::MIN),
                filter.end_time.unwrap_or(i64::MAX),
                after.timestamp,
                after.id,
                names,
                filter.stream_prefix
            ])
            .map_err(db("filter log events"))?;
        let mut events: Vec<StoredLogEvent> = Vec::new();
        let mut bytes = 0;
        let mut scanned = 0;
        let mut resume_after = None;
        while let Some(row) = rows.next().map_err(db("filter log events"))? {
            let position = EventPosition {
                timestamp: row.get(2).map_err(db("filter log events"))?,
                id: row.get(0).map_err(db("filter log events"))?,
            };
            let message: String = row.get(4).map_err(db("filter log events"))?;
            if filter.pattern.matches(&message) {
                let full = events.len() >= filter.limit
                    || (!events.is_empty() && bytes + message.len() > MAX_RESPONSE_BYTES);
                if full {
                    // Another match exists: the caller should ask again.
                    resume_after = events.last().map(StoredLogEvent::position);
                    break;
                }
                bytes += message.len();
                events.push(StoredLogEvent {
                    id: position.id,
                    stream_name: row.get(1).map_err(db("filter log events"))?,
                    timestamp: position.timestamp,
                    ingestion_time: row.get(3).map_err(db("filter log events"))?,
                    message,
                });
            }
            scanned += 1;
            if scanned >= MAX_SCANNED_EVENTS {
                // Resume after the last scanned event: those in between did not match.
                resume_after = Some(position);
                break;
            }
        }
        Ok(FilterPage {
            events,
            resume_after,
        })
    }
}

fn page<T>(mut items: Vec<T>, limit: usize) -> Page<T> {
    let more = items.len() > limit;
    items.truncate(limit);
    Page { items, more }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Sinks may outlive the store, so the channel stays open; tell the writer to
        // commit what it has and stop.
        let _ = self.sink.commands.send(Command::Shutdown);
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the log writer thread panicked");
        }
    }
}

#[derive(Default)]
struct StreamTotals {
    first_timestamp: i64,
    last_timestamp: i64,
    bytes: i64,
}

/// The writer thread's state: its connection and the ids of groups and streams it has
/// already created, so the common append costs one INSERT per event.
struct Writer {
    connection: Connection,
    commands: Receiver<Command>,
    counters: Arc<SinkCounters>,
    group_ids: HashMap<String, i64>,
    stream_ids: HashMap<(i64, String), i64>,
}

impl Writer {
    fn run(mut self) {
        let mut stopping = false;
        while !stopping {
            let first = match self.commands.recv() {
                Ok(command) => command,
                Err(_) => return,
            };
            let mut appends = Vec::new();
            let mut acks = Vec::new();
            let mut events = 0;
            match first {
                Command::Append(append) => {
                    events += append.events.len();
                    appends.push(append);
                }
                Command::Flush(ack) => acks.push(ack),
                Command::Shutdown => stopping = true,
            }
            let deadline = Instant::now() + BATCH_INTERVAL;
            while !stopping && acks.is_empty() && events < BATCH_EVENTS {
                match self.commands.try_recv() {
                    Ok(Command::Append(append)) => {
                        events += append.events.len();
                        appends.push(append);
                    }
                    Ok(Command::Flush(ack)) => acks.push(ack),
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => stopping = true,
                    Err(TryRecvError::Empty) => {
                        let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
                            break;
                        };
                        // Sleep rather than block on the channel: a blocked receiver is
                        // woken by every append, a futex wake and a context switch per
                        // invocation taken from the invoke path's CPU. A flush waits at
                        // most one nap.
                        std::thread::sleep(wait.min(WRITER_NAP));
                    }
                }
            }
            let result = if appends.is_empty() {
                Ok(())
            } else {
                self.commit(&appends).map_err(|error| {
                    // Ids cached during a rolled-back transaction no longer exist.
                    self.group_ids.clear();
                    self.stream_ids.clear();
                    tracing::error!(%error, events, "log batch could not be committed; its events are lost");
                    error.to_string()
                })
            };
            self.counters.pending.fetch_sub(events, Ordering::Relaxed);
            for ack in acks {
                ack.send(result.clone());
            }
        }
    }

    fn commit(&mut self, appends: &[Append]) -> rusqlite::Result<()> {
        let now = now_ms();
        let tx = self.connection.transaction()?;
        let mut streams: HashMap<i64, StreamTotals> = HashMap::new();
        let mut groups: HashMap<i64, i64> = HashMap::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO log_events (group_id, stream_id, timestamp, ingestion_time, message)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for append in appends {
                let group_id = match self.group_ids.get(&append.group) {
                    Some(&id) => id,
                    None => {
                        tx.execute(
                            "INSERT INTO log_groups (name, creation_time) VALUES (?1, ?2)
                             ON CONFLICT (name) DO NOTHING",
                            params![append.group, now],
                        )?;
                        let id: i64 = tx.query_row(
                            "SELECT id FROM log_groups WHERE name = ?1",
                            [&append.group],
                            |row| row.get(0),
                        )?;
                        self.group_ids.insert(append.group.clone(), id);
                        id
                    }
                };
                let stream_key = (group_id, append.stream.clone());
                let stream_id = match self.stream_ids.get(&stream_key) {
                    Some(&id) => id,
                    None => {
                        tx.execute(
                            "INSERT INTO log_streams (group_id, name, creation_time)
                             VALUES (?1, ?2, ?3) ON CONFLICT (group_id, name) DO NOTHING",
                            params![group_id, append.stream, now],
                        )?;
                        let id: i64 = tx.query_row(
                            "SELECT id FROM log_streams WHERE group_id = ?1 AND name = ?2",
                            params![group_id, append.stream],
                            |row| row.get(0),
                        )?;
                        self.stream_ids.insert(stream_key, id);
                        id
                    }
                };
                let totals = streams.entry(stream_id).or_insert(StreamTotals {
                    first_timestamp: i64::MAX,
                    last_timestamp: i64::MIN,
                    bytes: 0,
                });
                let mut bytes = 0;
                for event in &append.events {
                    let timestamp = event.timestamp_ms.max(0);
                    insert.execute(params![group_id, stream_id, timestamp, now, event.message])?;
                    totals.first_timestamp = totals.first_timestamp.min(timestamp);
                    totals.last_timestamp = totals.last_timestamp.max(timestamp);
                    bytes += event.message.len() as i64;
                }
                totals.bytes += bytes;
                *groups.entry(group_id).or_default() += bytes;
            }
            let mut update_stream = tx.prepare_cached(
                "UPDATE log_streams SET
                     first_event_timestamp = min(coalesce(first_event_timestamp, ?2), ?2),
                     last_event_timestamp = max(coalesce(last_event_timestamp, ?3), ?3),
                     last_ingestion_time = ?4,
                     stored_bytes = stored_bytes + ?5
                 WHERE id = ?1",
            )?;
            for (stream_id, totals) in &streams {
                update_stream.execute(params![
                    stream_id,
                    totals.first_timestamp,
                    totals.last_timestamp,
                    now,
                    totals.bytes
                ])?;
            }
            let mut update_group = tx.prepare_cached(
                "UPDATE log_groups SET stored_bytes = stored_bytes + ?2 WHERE id = ?1",
            )?;
            for (group_id, bytes) in &groups {
                update_group.execute(params![group_id, bytes])?;
            }
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(timestamp_ms: i64, message: &str) -> LogEvent {
        LogEvent {
            timestamp_ms,
            message: message.to_owned(),
        }
    }

    fn open() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(&dir.path().join("logs.db")).unwrap();
        (dir, store)
    }

    fn all(limit: usize) -> GroupFilter {
        GroupFilter {
            stream_names: None,
            stream_prefix: None,
            start_time: None,
            end_time: None,
            pattern: FilterPattern::all(),
            after: None,
            limit,
        }
    }

    #[test]
    fn append_flush_and_read_back() {
        let (_dir, store) = open();
        let sink = store.sink();
        sink.append(
            "/aws/lambda/f",
            "s1",
            vec![event(10, "a"), event(30, "ccc")],
        );
        sink.clone()
            .append("/aws/lambda/f", "s2", vec![event(20, "bb")]);
        sink.append("/aws/lambda/g", "s1", vec![]);
        sink.flush().unwrap();
        assert_eq!(sink.pending_events(), 0);

        let groups = store
            .log_groups(&GroupQuery {
                limit: 50,
                ..Default::default()
            })
            .unwrap();
        assert!(!groups.more);
        assert_eq!(groups.items.len(), 1, "empty appends create nothing");
        assert_eq!(groups.items[0].name, "/aws/lambda/f");
        assert_eq!(groups.items[0].stored_bytes, 6);
        assert!(groups.items[0].creation_time > 1_600_000_000_000);

        let streams = store
            .log_streams(
                "/aws/lambda/f",
                &StreamQuery {
                    limit: 50,
                    ..Default::default()
                },
            )
            .unwrap();
        let s1 = &streams.items[0];
        assert_eq!(
            (
                s1.name.as_str(),
                s1.first_event_timestamp,
                s1.last_event_timestamp,
                s1.stored_bytes
            ),
            ("s1", Some(10), Some(30), 4)
        );
        assert!(s1.last_ingestion_time.is_some());

        let filtered = store.filter_events("/aws/lambda/f", &all(100)).unwrap();
        let messages: Vec<_> = filtered.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["a", "bb", "ccc"], "interleaved by timestamp");
        assert_eq!(filtered.events[1].stream_name, "s2");
        assert!(filtered.resume_after.is_none());
    }

    #[test]
    fn missing_group_and_stream_are_errors() {
        let (_dir, store) = open();
        store.sink().append("g", "s", vec![event(1, "x")]);
        store.sink().flush().unwrap();
        assert!(matches!(
            store.log_streams("nope", &StreamQuery::default()),
            Err(LogError::GroupNotFound { .. })
        ));
        let read = StreamRead {
            start_time: None,
            end_time: None,
            boundary: EventPosition::before_time(0),
            direction: ReadDirection::Forward,
            limit: 10,
        };
        assert!(matches!(
            store.stream_events("g", "other", &read),
            Err(LogError::StreamNotFound { .. })
        ));
        assert!(matches!(
            store.filter_events("nope", &all(1)),
            Err(LogError::GroupNotFound { .. })
        ));
    }

    #[test]
    fn stream_reads_page_both_ways() {
        let (_dir, store) = open();
        let sink = store.sink();
        let events = (0..10).map(|i| event(100 + i, &format!("m{i}"))).collect();
        sink.append("g", "s", events);
        sink.flush().unwrap();
        let read = |boundary, direction| {
            store
                .stream_events(
                    "g",
                    "s",
                    &StreamRead {
                        start_time: Some(102),
                        end_time: Some(109),
                        boundary,
                        direction,
                        limit: 3,
                    },
                )
                .unwrap()
        };
        let messages = |page: &StreamPage| {
            page.events
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
        };
        // From the head: the first three in range.
        let head = read(EventPosition::before_time(102), ReadDirection::Forward);
        assert_eq!(messages(&head), ["m2", "m3", "m4"]);
        let next = read(head.forward, ReadDirection::Forward);
        assert_eq!(messages(&next), ["m5", "m6", "m7"]);
        let last = read(next.forward, ReadDirection::Forward);
        assert_eq!(messages(&last), ["m8"], "end time is exclusive");
        let end = read(last.forward, ReadDirection::Forward);
        assert!(end.events.is_empty());
        assert_eq!(end.forward, last.forward, "the end repeats its token");
        // Backward from the page after the head returns the head again.
        let back = read(next.backward, ReadDirection::Backward);
        assert_eq!(messages(&back), ["m2", "m3", "m4"]);
        // From the tail: the newest three, oldest first.
        let tail = read(
            EventPosition::before_time_exclusive_end(109),
            ReadDirection::Backward,
        );
        assert_eq!(messages(&tail), ["m6", "m7", "m8"]);
        let before = read(tail.backward, ReadDirection::Backward);
        assert_eq!(messages(&before), ["m3", "m4", "m5"]);
        // New events appear when reading forward from the tail's forward position.
        sink.append("g", "s", vec![event(108, "late")]);
        sink.flush().unwrap();
        assert_eq!(
            messages(&read(tail.forward, ReadDirection::Forward)),
            ["late"]
        );
    }

    #[test]
    fn a_quiet_stream_among_busy_ones_is_read_in_capped_scans() {
        let (_dir, store) = open();
        let sink = store.sink();
        // Two events of "quiet" around 50 of "busy": a scan capped at 10 takes several
        // pages, some of them empty, whose tokens still move on.
        sink.append("g", "quiet", vec![event(0, "first")]);
        for t in 1..=50 {
            sink.append("g", "busy", vec![event(t, "noise")]);
        }
        sink.append("g", "quiet", vec![event(100, "last")]);
        sink.flush().unwrap();
        for (direction, start) in [
            (ReadDirection::Forward, EventPosition::before_time(i64::MIN)),
            (
                ReadDirection::Backward,
                EventPosition::before_time_exclusive_end(i64::MAX),
            ),
        ] {
            let mut boundary = start;
            let mut messages = Vec::new();
            let mut pages = 0;
            loop {
                let read = StreamRead {
                    start_time: None,
                    end_time: None,
                    boundary,
                    direction,
                    limit: 100,
                };
                let page = store
                    .stream_events_scanning("g", "quiet", &read, 10)
                    .unwrap();
                pages += 1;
                assert!(pages < 20, "the tokens stopped moving");
                let next = match direction {
                    ReadDirection::Forward => page.forward,
                    ReadDirection::Backward => page.backward,
                };
                let mut got: Vec<String> = page.events.into_iter().map(|e| e.message).collect();
                if direction == ReadDirection::Backward {
                    got.reverse();
                }
                messages.extend(got);
                if next == boundary {
                    break;
                }
                boundary = next;
            }
            if direction == ReadDirection::Backward {
                messages.reverse();
            }
            assert_eq!(messages, ["first", "last"], "{direction:?}");
            assert!(pages >= 5, "{direction:?}: {pages} pages");
        }
    }

    #[test]
    fn a_stream_read_takes_only_its_own_events_from_the_group() {
        let (_dir, store) = open();
        let sink = store.sink();
        // Three streams of one group interleaved in time (and in ingestion), and a stream
        // of the same name in another group.
        for i in 0..30 {
            let stream = ["s1", "s2", "s3"][i % 3];
            sink.append(
                "g",
                stream,
                vec![event(100 + i as i64, &format!("{stream}-{i}"))],
            );
        }
        sink.append("h", "s2", vec![event(110, "other group")]);
        sink.flush().unwrap();
        let read = |stream: &str, boundary, direction, limit| {
            store
                .stream_events(
                    "g",
                    stream,
                    &StreamRead {
                        start_time: None,
                        end_time: None,
                        boundary,
                        direction,
                        limit,
                    },
                )
                .unwrap()
                .events
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
        };
        let expected: Vec<String> = (0..30)
            .filter(|i| i % 3 == 1)
            .map(|i| format!("s2-{i}"))
            .collect();
        let from_head = read(
            "s2",
            EventPosition::before_time(i64::MIN),
            ReadDirection::Forward,
            100,
        );
        assert_eq!(from_head, expected);
        let from_tail = read(
            "s2",
            EventPosition::before_time_exclusive_end(i64::MAX),
            ReadDirection::Backward,
            4,
        );
        assert_eq!(from_tail, expected[6..]);
        // A stream that starts after the others reads only its own.
        sink.append("g", "late", vec![event(500, "alone")]);
        sink.flush().unwrap();
        assert_eq!(
            read(
                "late",
                EventPosition::before_time(i64::MIN),
                ReadDirection::Forward,
                10
            ),
            ["alone"]
        );
    }

    #[test]
    fn the_first_schema_is_migrated_with_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.db");
        {
            let mut connection = Connection::open(&path).unwrap();
            configure(&mut connection).unwrap();
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection.pragma_update(None, "user_version", 1).unwrap();
            connection
                .execute_batch(
                    "INSERT INTO log_groups (id, name, creation_time) VALUES (1, 'g', 1);
                     INSERT INTO log_streams (id, group_id, name, creation_time,
                         first_event_timestamp, last_event_timestamp)
                         VALUES (1, 1, 's', 1, 10, 20), (2, 1, 't', 1, 15, 15);
                     INSERT INTO log_events (group_id, stream_id, timestamp, ingestion_time, message)
                         VALUES (1, 1, 10, 30, 'first'), (1, 2, 15, 30, 'other'),
                                (1, 1, 20, 30, 'second');",
                )
                .unwrap();
        }
        let store = LogStore::open(&path).unwrap();
        let messages = store
            .stream_events(
                "g",
                "s",
                &StreamRead {
                    start_time: None,
                    end_time: None,
                    boundary: EventPosition::before_time(i64::MIN),
                    direction: ReadDirection::Forward,
                    limit: 10,
                },
            )
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.message)
            .collect::<Vec<_>>();
        assert_eq!(messages, ["first", "second"]);
        assert_eq!(store.filter_events("g", &all(10)).unwrap().events.len(), 3);
        let indexes: Vec<String> = store
            .read()
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'log_events'",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["log_events_by_group_time"]);
    }

    #[test]
    fn filter_pages_patterns_and_stream_selection() {
        let (_dir, store) = open();
        let sink = store.sink();
        for stream in ["2024/05/01/[$LATEST]aa", "2024/05/01/[$LATEST]bb", "other"] {
            let events = (0..5)
                .map(|i| {
                    event(
                        i * 10,
                        &format!("{} {stream} {i}", if i % 2 == 0 { "ERROR" } else { "INFO" }),
                    )
                })
                .collect();
            sink.append("g", stream, events);
        }
        sink.flush().unwrap();

        let mut filter = all(4);
        filter.pattern = FilterPattern::parse("ERROR -other").unwrap();
        let first = store.filter_events("g", &filter).unwrap();
        assert_eq!(first.events.len(), 4);
        assert!(first.events.iter().all(|e| e.message.starts_with("ERROR")));
        filter.after = first.resume_after;
        let second = store.filter_events("g", &filter).unwrap();
        assert_eq!(second.events.len(), 2);
        assert!(
            second.resume_after.is_none(),
            "no token after the last match"
        );

        let mut by_prefix = all(100);
        by_prefix.stream_prefix = Some("2024/05/01/".to_owned());
        by_prefix.start_time = Some(10);
        by_prefix.end_time = Some(30);
        let events = store.filter_events("g", &by_prefix).unwrap().events;
        assert_eq!(events.len(), 6, "start and end are inclusive");

        let mut by_name = all(100);
        by_name.stream_names = Some(vec!["other".to_owned()]);
        let events = store.filter_events("g", &by_name).unwrap().events;
        assert_eq!(events.len(), 5);
        assert!(events.iter().all(|e| e.stream_name == "other"));
    }

    #[test]
    fn groups_and_streams_page_and_order() {
        let (_dir, store) = open();
        let sink = store.sink();
        for group in ["/aws/lambda/a", "/aws/lambda/b", "/aws/lambda/c", "/other"] {
            sink.append(group, "s", vec![event(1, "x")]);
        }
        sink.append("/aws/lambda/a", "old", vec![event(5, "x")]);
        sink.append("/aws/lambda/a", "new", vec![event(50, "x")]);
        sink.flush().unwrap();

        let mut query = GroupQuery {
            name_prefix: Some("/aws/lambda/".to_owned()),
            limit: 2,
            ..Default::default()
        };
        let first = store.log_groups(&query).unwrap();
        assert!(first.more);
        query.after_name = Some(first.items[1].name.clone());
        let second = store.log_groups(&query).unwrap();
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.items[0].name, "/aws/lambda/c");
        assert!(!second.more);
        let contains = store
            .log_groups(&GroupQuery {
                name_contains: Some("ther".to_owned()),
                limit: 50,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(contains.items.len(), 1);

        let by_time = store
            .log_streams(
                "/aws/lambda/a",
                &StreamQuery {
                    order: StreamOrder::LastEventTime,
                    descending: true,
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        let names: Vec<_> = by_time.items.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["new", "old"]);
        let rest = store
            .log_streams(
                "/aws/lambda/a",
                &StreamQuery {
                    order: StreamOrder::LastEventTime,
                    descending: true,
                    after: Some(by_time.items[1].cursor()),
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.items[0].name, "s");
    }

    #[test]
    fn events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.db");
        {
            let store = LogStore::open(&path).unwrap();
            store.sink().append("g", "s", vec![event(1, "persisted")]);
            store.sink().flush().unwrap();
            // Appended without a flush: dropping the store still commits it.
            store.sink().append("g", "s", vec![event(2, "on shutdown")]);
        }
        let store = LogStore::open(&path).unwrap();
        let events = store.filter_events("g", &all(10)).unwrap().events;
        let messages: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["persisted", "on shutdown"]);
        // Cached ids are not needed: appending to existing groups after reopening works.
        store.sink().append("g", "s", vec![event(3, "again")]);
        store.sink().flush().unwrap();
        let streams = store
            .log_streams(
                "g",
                &StreamQuery {
                    limit: 5,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(streams.items.len(), 1);
        assert_eq!(streams.items[0].last_event_timestamp, Some(3));
    }

    #[test]
    fn a_closed_store_drops_and_counts() {
        let (_dir, store) = open();
        let sink = store.sink();
        drop(store);
        sink.append("g", "s", vec![event(1, "late"), event(2, "later")]);
        assert_eq!(sink.dropped_events(), 2);
        assert!(matches!(sink.flush(), Err(LogError::WriterStopped)));
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let (_dir, store) = open();
        let sink = store.sink();
        // Pretend the writer is far behind.
        sink.counters
            .pending
            .fetch_add(MAX_PENDING_EVENTS, Ordering::Relaxed);
        sink.append("g", "s", vec![event(1, "x")]);
        assert_eq!(sink.dropped_events(), 1);
        sink.counters
            .pending
            .fetch_sub(MAX_PENDING_EVENTS, Ordering::Relaxed);
        sink.append("g", "s", vec![event(1, "y")]);
        sink.flush().unwrap();
        assert_eq!(store.filter_events("g", &all(10)).unwrap().events.len(), 1);
    }

    #[test]
    fn many_appenders_are_group_committed() {
        let (_dir, store) = open();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = store.sink();
                std::thread::spawn(move || {
                    for i in 0..2_500 {
                        sink.append("g", &format!("s{t}"), vec![event(i, "line")]);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        store.sink().flush().unwrap();
        let groups = store
            .log_groups(&GroupQuery {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(groups.items[0].stored_bytes, 4 * 2_500 * 4);
        assert_eq!(store.sink().dropped_events(), 0);
    }
}
