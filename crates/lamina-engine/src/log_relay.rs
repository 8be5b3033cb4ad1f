//! An environment's log stream: the function's output and the platform lines, in order.
//!
//! The environment's stdout and stderr share one pipe. A reader task cuts what arrives
//! into lines and appends them to the environment's log stream; the invoker writes the
//! platform lines (`START`, `END`, `REPORT`) itself, under the same lock, so a warm
//! invoke wakes no other task for its log. Because `end` first drains whatever the pipe
//! already holds, an `END` line never overtakes output the function wrote before it
//! answered, and because it runs before the environment takes its next invocation, the
//! next invocation's output cannot slip in ahead of it.
//!
//! It also keeps the text of the current invocation, whose last 4 KB an invoke with
//! `X-Amz-Log-Type: Tail` returns.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lamina_logs::{LogEvent, LogSink};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

/// How much of an invocation's log `Tail` returns.
pub const TAIL_BYTES: usize = 4096;
/// Keep at most this much of the current invocation's text (a little over the tail).
const KEPT_BYTES: usize = 2 * TAIL_BYTES;
/// Each environment keeps its own read buffer for its whole life, idle or not: a thousand
/// warm environments hold a thousand of them. Reads loop until the pipe is empty, so a
/// smaller buffer only means more reads for chatty functions.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// A line longer than this is cut into several events, as CloudWatch caps event size.
const MAX_LINE_BYTES: usize = 256 * 1024;

/// Lamina's runtimes write each log record as one frame, the framing AWS's runtimes use on
/// their telemetry descriptor (`_LAMBDA_TELEMETRY_LOG_FD`): a 4-byte type `a5 5a 00 xx`
/// (the last byte carries the format and level), a 4-byte big-endian length, an 8-byte
/// big-endian timestamp in microseconds, then the message. Here the frames travel in the
/// stdout pipe, between the lines the function prints, so a multi-line record (a
/// traceback, indented JSON) stays one event as on Lambda, in its place among the output.
/// The prefix cannot start UTF-8 text (0xa5 is a continuation byte), and a frame is only
/// taken whole, with a type Lamina's runtimes write and a plausible length; anything else
/// is text. A message longer than an event may be is cut to [`MAX_LINE_BYTES`].
const FRAME_PREFIX: [u8; 3] = [0xa5, 0x5a, 0x00];
/// The last type byte: text (`a55a0003`) or JSON (`a55a0002`) records.
const FRAME_TYPES: [u8; 2] = [0x02, 0x03];
const FRAME_HEADER_BYTES: usize = 16;
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// A frame's own timestamp is taken only this close to the time it is read (otherwise the
/// time it is read): a wrong clock in the environment must not move the stream's times.
const FRAME_CLOCK_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// The parts of a `REPORT` line known when the invocation ends.
pub struct Report {
    /// `REPORT RequestId: ...\tMemory Size: N MB` — everything before `Max Memory Used`.
    pub head: String,
    /// Everything after it (`\tInit Duration: ...`, `\tStatus: ...`).
    pub tail: String,
    /// Peak memory already measured (environments about to be destroyed), else read
    /// from `memory` when the line is written.
    pub measured_mb: Option<u64>,
    pub memory: std::sync::Arc<dyn lamina_sandbox::EnvironmentHandle>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl Report {
    fn line(self) -> String {
        let used_mb = self.measured_mb.unwrap_or_else(|| {
            self.memory
                .max_memory_used_bytes()
                .map(|bytes| bytes.div_ceil(1024 * 1024))
                .unwrap_or(0)
        });
        let mut line = self.head;
        let _ = write!(line, "\tMax Memory Used: {used_mb} MB");
        line.push_str(&self.tail);
        line
    }
}

/// Reads what the pipe holds right now, up to `budget` bytes. A real `read(2)`, not
/// tokio's `try_read`, which answers "would block" without asking the kernel until the
/// reactor has seen the pipe readable — and output written just before a crash may not
/// have been seen yet. The budget matters: a function writing in a tight loop refills the
/// pipe as fast as it is read, and an unbounded drain would never end (holding the lock,
/// a worker thread, and the invocation's end). Returns whether the pipe is still open.
fn drain_now(
    receiver: &pipe::Receiver,
    buffer: &mut [u8],
    relay: &mut Relay,
    mut budget: usize,
) -> bool {
    while budget > 0 {
        let want = buffer.len().min(budget);
        match nix::unistd::read(receiver, &mut buffer[..want]) {
            Ok(0) => return false,
            Ok(n) => {
                relay.output(&buffer[..n]);
                budget -= n;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
    true
}

/// How much one drain takes: more than a pipe holds (64 KB by default), so everything a
/// function wrote before it answered is taken, but bounded against endless writers.
const DRAIN_BUDGET_BYTES: usize = 1024 * 1024;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

enum Frame<'a> {
    Whole {
        message: &'a [u8],
        timestamp_us: u64,
        /// Header and message.
        length: usize,
    },
    Incomplete,
    Text,
}

/// Whether `bytes` (starting with 0xa5) begin with a log frame.
fn frame_at(bytes: &[u8]) -> Frame<'_> {
    let prefix = bytes.len().min(FRAME_PREFIX.len());
    if bytes[..prefix] != FRAME_PREFIX[..prefix] {
        return Frame::Text;
    }
    let word = |range: std::ops::Range<usize>| -> u64 {
        bytes[range].iter().fold(0, |n, b| (n << 8) | u64::from(*b))
    };
    match bytes.get(3) {
        None => return Frame::Incomplete,
        Some(kind) if !FRAME_TYPES.contains(kind) => return Frame::Text,
        Some(_) => {}
    }
    if bytes.len() < 8 {
        return Frame::Incomplete;
    }
    let length = word(4..8) as usize;
    if length > MAX_FRAME_BYTES {
        return Frame::Text;
    }
    if bytes.len() < FRAME_HEADER_BYTES + length {
        return Frame::Incomplete;
    }
    Frame::Whole {
        message: &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length],
        timestamp_us: word(8..16),
        length: FRAME_HEADER_BYTES + length,
    }
}

struct Relay {
    sink: LogSink,
    group: String,
    stream: String,
    /// Read but not yet cut: the start of a frame whose rest has not arrived.
    incoming: Vec<u8>,
    /// The current line's text so far.
    partial: Vec<u8>,
    last_timestamp_ms: i64,
    invocation_text: String,
    pending: Vec<LogEvent>,
}

impl Relay {
    /// One line (without its newline), stamped with the time it is read.
    fn line(&mut self, line: String) {
        self.record(line, now_ms());
    }

    /// One log record, as its frame carried it: one event whatever its newlines.
    fn record(&mut self, message: String, timestamp_ms: i64) {
        self.invocation_text.push_str(&message);
        if !message.ends_with('\n') {
            self.invocation_text.push('\n');
        }
        self.trim_invocation_text();
        let timestamp_ms = self.next_timestamp(timestamp_ms);
        self.pending.push(LogEvent {
            timestamp_ms,
            message,
        });
    }

    /// Events are read back in timestamp order, so a stream's timestamps never go back: a
    /// frame's own time (when it was written) can be earlier than the arrival time given to
    /// a line read just before it.
    fn next_timestamp(&mut self, candidate_ms: i64) -> i64 {
        self.last_timestamp_ms = self.last_timestamp_ms.max(candidate_ms);
        self.last_timestamp_ms
    }

    fn trim_invocation_text(&mut self) {
        if self.invocation_text.len() > KEPT_BYTES {
            let cut = self.invocation_text.len() - TAIL_BYTES;
            let cut = (cut..self.invocation_text.len())
                .find(|i| self.invocation_text.is_char_boundary(*i))
                .unwrap_or(self.invocation_text.len());
            self.invocation_text.drain(..cut);
        }
    }

    fn output(&mut self, bytes: &[u8]) {
        self.incoming.extend_from_slice(bytes);
        let mut at = 0;
        while at < self.incoming.len() {
            let rest = &self.incoming[at..];
            let Some(offset) = rest
                .iter()
                .position(|b| *b == b'\n' || *b == FRAME_PREFIX[0])
            else {
                self.partial.extend_from_slice(rest);
                at = self.incoming.len();
                break;
            };
            self.partial.extend_from_slice(&rest[..offset]);
            at += offset;
            if self.incoming[at] == b'\n' {
                let line = std::mem::take(&mut self.partial);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                self.line(String::from_utf8_lossy(line).into_owned());
                at += 1;
                continue;
            }
            match frame_at(&self.incoming[at..]) {
                Frame::Whole {
                    message,
                    timestamp_us,
                    length,
                } => {
                    let message = &message[..message.len().min(MAX_LINE_BYTES)];
                    let message = String::from_utf8_lossy(message).into_owned();
                    let now = now_ms();
                    let written = (timestamp_us / 1000) as i64;
                    let timestamp = if (written - now).abs() <= FRAME_CLOCK_TOLERANCE_MS {
                        written
                    } else {
                        now
                    };
                    self.record(message, timestamp);
                    at += length;
                }
                // Wait for the rest of the frame (or of its header).
                Frame::Incomplete => break,
                Frame::Text => {
                    self.partial.push(self.incoming[at]);
                    at += 1;
                }
            }
        }
        // One move per read, not one per line.
        self.incoming.drain(..at);
        if self.partial.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.partial);
            self.line(String::from_utf8_lossy(&line).into_owned());
        }
    }

    /// Output without a final newline still belongs to the invocation that wrote it.
    fn flush_partial(&mut self) {
        // What looked like the start of a frame and never became one is text after all:
        // its first byte, and what follows it cut into lines and frames as usual.
        loop {
            let unfinished = std::mem::take(&mut self.incoming);
            let Some((first, rest)) = unfinished.split_first() else {
                break;
            };
            self.partial.push(*first);
            self.output(rest);
        }
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(String::from_utf8_lossy(&line).into_owned());
        }
    }

    fn publish(&mut self) {
        if !self.pending.is_empty() {
            let events = std::mem::take(&mut self.pending);
            self.sink.append(&self.group, &self.stream, events);
        }
    }
}

struct RelayState {
    relay: Relay,
    pipe_open: bool,
    buffer: Vec<u8>,
}

#[derive(Debug)]
struct RelayShared {
    receiver: pipe::Receiver,
    state: Mutex<RelayState>,
    /// Tells the reader the environment is gone: drain once more and stop.
    closed: Notify,
}

impl std::fmt::Debug for RelayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayState")
            .field("stream", &self.relay.stream)
            .field("pipe_open", &self.pipe_open)
            .finish_non_exhaustive()
    }
}

impl RelayShared {
    fn state(&self) -> std::sync::MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RelayState {
    /// Reads everything the pipe holds now (see [`drain_now`]).
    fn drain(&mut self, receiver: &pipe::Receiver) {
        if self.pipe_open {
            let RelayState {
                relay,
                pipe_open,
                buffer,
            } = self;
            *pipe_open = drain_now(receiver, buffer, relay, DRAIN_BUDGET_BYTES);
        }
    }
}

/// One environment's log stream. Dropping it lets the reader finish.
#[derive(Debug)]
pub struct LogRelay {
    shared: Arc<RelayShared>,
}

impl LogRelay {
    /// Starts the reader task for one environment's output pipe.
    pub fn spawn(
        output: std::fs::File,
        sink: LogSink,
        group: String,
        stream: String,
    ) -> std::io::Result<LogRelay> {
        let shared = Arc::new(RelayShared {
            receiver: pipe::Receiver::from_file(output)?,
            state: Mutex::new(RelayState {
                relay: Relay {
                    sink,
                    group,
                    stream,
                    incoming: Vec::new(),
                    partial: Vec::new(),
                    last_timestamp_ms: 0,
                    invocation_text: String::new(),
                    pending: Vec::new(),
                },
                pipe_open: true,
                buffer: vec![0u8; READ_BUFFER_BYTES],
            }),
            closed: Notify::new(),
        });
        tokio::spawn(read_output(shared.clone()));
        Ok(LogRelay { shared })
    }

    /// A platform line outside any invocation (`INIT_START`).
    pub fn platform(&self, line: String) {
        let mut state = self.shared.state();
        state.relay.line(line);
        state.relay.publish();
    }

    /// Starts an invocation's text. The line is published with the invocation's first
    /// output or its end, whichever comes first.
    pub fn start(&self, line: String) {
        let mut state = self.shared.state();
        state.relay.invocation_text.clear();
        state.relay.line(line);
    }

    /// Starts the invocation whose environment failed to initialise: its `START` follows
    /// the init's output (already in the pipe), which stays in the invocation's tail, as
    /// the error it explains.
    pub fn start_after_failed_init(&self, line: String) {
        let mut state = self.shared.state();
        state.drain(&self.shared.receiver);
        state.relay.flush_partial();
        state.relay.line(line);
    }

    /// Ends an invocation: its remaining output, `END`, then `REPORT`. Returns the
    /// invocation's log tail when asked for.
    pub fn end(&self, end_line: String, report: Report, want_tail: bool) -> Option<String> {
        let mut state = self.shared.state();
        // Whatever the function wrote before answering is in the pipe already: take it
        // before the END line.
        state.drain(&self.shared.receiver);
        state.relay.flush_partial();
        state.relay.line(end_line);
        state.relay.line(report.line());
        state.relay.publish();
        want_tail.then(|| tail_of(&state.relay.invocation_text))
    }
}

impl Drop for LogRelay {
    fn drop(&mut self) {
        self.shared.closed.notify_one();
    }
}

/// The reader task: output as it arrives, until the pipe closes or the environment goes.
async fn read_output(shared: Arc<RelayShared>) {
    loop {
        tokio::select! {
            biased;
            _ = shared.closed.notified() => break,
            readable = shared.receiver.readable() => {
                if readable.is_err() {
                    shared.state().pipe_open = false;
                    break;
                }
                // tokio's `try_read` (not a raw read) so that "would block" clears the
                // readiness this task waits on. At most a budget per wake-up, then the
                // lock is released and the task yields: an endless writer must not starve
                // the invoker or the other tasks of this worker.
                let (open, exhausted) = read_available(&shared);
                if !open {
                    break;
                }
                if exhausted {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    // The environment is gone or its output closed: keep what it wrote last.
    let mut state = shared.state();
    state.drain(&shared.receiver);
    state.relay.flush_partial();
    state.relay.publish();
}

/// One wake-up's reading, under the lock: (pipe still open, budget used up).
fn read_available(shared: &RelayShared) -> (bool, bool) {
    let mut state = shared.state();
    let RelayState {
        relay,
        pipe_open,
        buffer,
    } = &mut *state;
    let mut budget = DRAIN_BUDGET_BYTES;
    while budget > 0 {
        match shared.receiver.try_read(buffer) {
            Ok(0) => {
                *pipe_open = false;
                break;
            }
            Ok(n) => {
                relay.output(&buffer[..n]);
                budget = budget.saturating_sub(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                *pipe_open = false;
                break;
            }
        }
    }
    relay.publish();
    (*pipe_open, budget == 0)
}

fn tail_of(text: &str) -> String {
    if text.len() <= TAIL_BYTES {
        return text.to_owned();
    }
    let start = (text.len() - TAIL_BYTES..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug)]
    struct FixedMemory;

    impl lamina_sandbox::EnvironmentHandle for FixedMemory {
        fn pid(&self) -> u32 {
            0
        }
        fn wait(&self) -> Result<lamina_sandbox::EnvironmentExit, lamina_sandbox::SandboxError> {
            unreachable!("not waited on")
        }
        fn kill(&self) {}
        fn max_memory_used_bytes(&self) -> Option<u64> {
            Some(3 * 1024 * 1024)
        }
        fn destroy(&self) {}
    }

    fn report(request_id: &str) -> Report {
        Report {
            head: format!("REPORT RequestId: {request_id}"),
            tail: String::new(),
            measured_mb: None,
            memory: Arc::new(FixedMemory),
        }
    }

    fn messages(store: &lamina_logs::LogStore) -> Vec<String> {
        store.sink().flush().unwrap();
        let filter = lamina_logs::store::GroupFilter {
            stream_names: None,
            stream_prefix: None,
            start_time: None,
            end_time: None,
            pattern: lamina_logs::FilterPattern::all(),
            after: None,
            limit: 1000,
        };
        store
            .filter_events("group", &filter)
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    /// Output written before the function answered lands between START and END, even
    /// when the reader task has not run yet; the tail holds the whole invocation.
    #[tokio::test(flavor = "current_thread")]
    async fn platform_lines_and_output_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = lamina_logs::LogStore::open(&dir.path().join("logs.db")).unwrap();
        let (reader, mut writer) = std::io::pipe().unwrap();
        let reader = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
        let relay = LogRelay::spawn(reader, store.sink(), "group".into(), "stream".into()).unwrap();

        relay.platform("INIT_START".into());
        relay.start("START RequestId: 1".into());
        writer.write_all(b"hello\npartial").unwrap();
        let tail = relay.end("END RequestId: 1".into(), report("1"), true);
        assert_eq!(
            tail.as_deref(),
            Some(
                "START RequestId: 1\nhello\npartial\nEND RequestId: 1\nREPORT RequestId: 1\tMax Memory Used: 3 MB\n"
            )
        );
        relay.start("START RequestId: 2".into());
        let tail = relay.end("END RequestId: 2".into(), report("2"), false);
        assert_eq!(tail, None);
        // Output between invocations reaches the log through the reader task.
        writer.write_all(b"background\n").unwrap();
        drop(writer);
        drop(relay);
        for _ in 0..100 {
            if messages(&store).len() == 10 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            messages(&store),
            [
                "INIT_START",
                "START RequestId: 1",
                "hello",
                "partial",
                "END RequestId: 1",
                "REPORT RequestId: 1\tMax Memory Used: 3 MB",
                "START RequestId: 2",
                "END RequestId: 2",
                "REPORT RequestId: 2\tMax Memory Used: 3 MB",
                "background",
            ]
        );
    }

    fn frame(message: &str, timestamp_us: u64) -> Vec<u8> {
        let mut frame = vec![0xa5, 0x5a, 0x00, 0x03];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&timestamp_us.to_be_bytes());
        frame.extend_from_slice(message.as_bytes());
        frame
    }

    fn relay_for_test() -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let store = lamina_logs::LogStore::open(&dir.path().join("logs.db")).unwrap();
        Relay {
            sink: store.sink(),
            group: "group".into(),
            stream: "stream".into(),
            incoming: Vec::new(),
            partial: Vec::new(),
            last_timestamp_ms: 0,
            invocation_text: String::new(),
            pending: Vec::new(),
        }
    }

    /// A framed record is one event, newlines and all, in its place among printed lines,
    /// wherever the reads cut it; bytes that only look like a frame's start are text.
    #[test]
    fn log_frames_are_one_event_each_among_the_printed_lines() {
        let mut relay = relay_for_test();
        // A frame written a minute from now keeps its time; one from the past cannot go
        // before the events already in the stream.
        let later_us = (now_ms() as u64 + 60_000) * 1000;
        let mut stream = b"printed\nhalf ".to_vec();
        stream.extend(frame(
            "[ERROR] boom\nTraceback (most recent call last):\n  line 1\n",
            later_us,
        ));
        stream.extend_from_slice(b"line\n");
        stream.extend(frame("{\"level\":\"INFO\"}", 5_000));
        stream.extend_from_slice("price \u{a5}5\n".as_bytes()); // "¥" is c2 a5
        stream.extend_from_slice(&[0xa5, 0x5a, 0x00, 0x03, 0xff, 0xff, 0xff, 0xff]);
        stream.extend_from_slice(b"\n");
        // Every split point, including inside headers and messages.
        for cut in 0..stream.len() {
            let mut relay_cut = relay_for_test();
            relay_cut.output(&stream[..cut]);
            relay_cut.output(&stream[cut..]);
            let events: Vec<String> = relay_cut
                .pending
                .iter()
                .map(|e| e.message.clone())
                .collect();
            assert_eq!(events.len(), 6, "cut at {cut}: {events:?}");
        }
        relay.output(&stream);
        let events: Vec<(String, i64)> = relay
            .pending
            .iter()
            .map(|e| (e.message.clone(), e.timestamp_ms))
            .collect();
        assert_eq!(events[0].0, "printed");
        assert_eq!(
            events[1],
            (
                "[ERROR] boom\nTraceback (most recent call last):\n  line 1\n".to_owned(),
                (later_us / 1000) as i64
            )
        );
        assert_eq!(
            events[2].0, "half line",
            "the printed line continues around the frame"
        );
        assert_eq!(
            events[3],
            ("{\"level\":\"INFO\"}".to_owned(), (later_us / 1000) as i64)
        );
        assert!(events.windows(2).all(|w| w[0].1 <= w[1].1), "{events:?}");
        assert_eq!(events[4].0, "price \u{a5}5");
        assert_eq!(
            events[5].0.len(),
            "\u{fffd}Z\0\u{3}\u{fffd}\u{fffd}\u{fffd}\u{fffd}".len()
        );
        assert!(
            relay
                .invocation_text
                .starts_with("printed\n[ERROR] boom\nTraceback")
        );
        // A frame cut short by the end of the output is text.
        let mut relay = relay_for_test();
        relay.output(&frame("never finished", 1)[..10]);
        assert!(relay.pending.is_empty());
        relay.flush_partial();
        assert_eq!(relay.pending.len(), 1);
    }

    /// Frames from a wrong clock, of an unknown type, too long, or cut short are handled
    /// without disturbing the lines around them.
    #[test]
    fn odd_frames_do_not_disturb_the_stream() {
        let mut relay = relay_for_test();
        let before = now_ms();
        relay.output(&frame("from the future", 9_999_999_999_999_000));
        assert!(
            relay.pending[0].timestamp_ms >= before && relay.pending[0].timestamp_ms <= now_ms()
        );
        let mut unknown = frame("unknown type", 1);
        unknown[3] = 0x07;
        unknown.extend_from_slice(b"\n");
        relay.output(&unknown);
        assert_eq!(
            relay.pending.len(),
            2,
            "an unknown type is text, up to its newline"
        );
        let big = "x".repeat(MAX_LINE_BYTES + 10);
        relay.output(&frame(&big, 1));
        assert_eq!(relay.pending[2].message.len(), MAX_LINE_BYTES);
        // A header whose frame never comes: the lines after it are still lines.
        let mut cut = frame("never finished", 1)[..10].to_vec();
        cut.extend_from_slice(b"\nline one\nline two\n");
        relay.output(&cut);
        relay.flush_partial();
        let last: Vec<&str> = relay.pending[3..]
            .iter()
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(last.len(), 3, "{last:?}");
        assert_eq!(&last[1..], ["line one", "line two"]);
    }
}
