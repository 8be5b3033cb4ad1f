//! One task per environment that turns the function's output into log events.
//!
//! The environment's stdout and stderr share one pipe. The relay reads it, cuts it into
//! lines and appends them to the environment's log stream, interleaved in order with the
//! platform lines the invoker sends (`START`, `END`, `REPORT`). Because both go through
//! this one task, an `END` line never overtakes output the function wrote before it
//! answered: on `End` the relay first drains whatever the pipe already holds.
//!
//! It also keeps the text of the current invocation, whose last 4 KB an invoke with
//! `X-Amz-Log-Type: Tail` returns.

use std::time::{SystemTime, UNIX_EPOCH};

use lamina_logs::{LogEvent, LogSink};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

/// How much of an invocation's log `Tail` returns.
pub const TAIL_BYTES: usize = 4096;
/// Keep at most this much of the current invocation's text (a little over the tail).
const KEPT_BYTES: usize = 2 * TAIL_BYTES;
/// A line longer than this is cut into several events, as CloudWatch caps event size.
const MAX_LINE_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub enum LogControl {
    /// A platform line outside any invocation (`INIT_START`).
    Platform(String),
    Start(String),
    /// Ends an invocation: `END`, then the `REPORT` line with `Max Memory Used` read
    /// here, off the response path, then where to send the invocation's log tail.
    End {
        end_line: String,
        report: Report,
        tail: Option<oneshot::Sender<String>>,
    },
}

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
    fn line(&self) -> String {
        let used_mb = self.measured_mb.unwrap_or_else(|| {
            self.memory
                .max_memory_used_bytes()
                .map(|bytes| bytes.div_ceil(1024 * 1024))
                .unwrap_or(0)
        });
        format!("{}\tMax Memory Used: {used_mb} MB{}", self.head, self.tail)
    }
}

/// Reads whatever the pipe holds right now. A real `read(2)`, not tokio's `try_read`,
/// which answers "would block" without asking the kernel until the reactor has seen the
/// pipe readable — and output written just before a crash may not have been seen yet.
/// Returns whether the pipe is still open.
fn drain_now(receiver: &pipe::Receiver, buffer: &mut [u8], relay: &mut Relay) -> bool {
    loop {
        match nix::unistd::read(receiver, buffer) {
            Ok(0) => return false,
            Ok(n) => relay.output(&buffer[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

struct Relay {
    sink: LogSink,
    group: String,
    stream: String,
    partial: Vec<u8>,
    invocation_text: String,
    pending: Vec<LogEvent>,
}

impl Relay {
    fn line(&mut self, line: String) {
        self.invocation_text.push_str(&line);
        self.invocation_text.push('\n');
        if self.invocation_text.len() > KEPT_BYTES {
            let cut = self.invocation_text.len() - TAIL_BYTES;
            let cut = (cut..self.invocation_text.len())
                .find(|i| self.invocation_text.is_char_boundary(*i))
                .unwrap_or(self.invocation_text.len());
            self.invocation_text.drain(..cut);
        }
        self.pending.push(LogEvent {
            timestamp_ms: now_ms(),
            message: line,
        });
    }

    fn output(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let end = start + offset;
            let line = &self.partial[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let text = String::from_utf8_lossy(line).into_owned();
            self.line(text);
            start = end + 1;
        }
        // One move per read, not one per line.
        self.partial.drain(..start);
        if self.partial.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.partial);
            self.line(String::from_utf8_lossy(&line).into_owned());
        }
    }

    /// Output without a final newline still belongs to the invocation that wrote it.
    fn flush_partial(&mut self) {
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

/// Starts the relay for one environment's output pipe.
pub fn spawn(
    output: std::fs::File,
    sink: LogSink,
    group: String,
    stream: String,
) -> std::io::Result<mpsc::UnboundedSender<LogControl>> {
    let receiver = pipe::Receiver::from_file(output)?;
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let mut relay = Relay {
        sink,
        group,
        stream,
        partial: Vec::new(),
        invocation_text: String::new(),
        pending: Vec::new(),
    };
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut pipe_open = true;
        loop {
            tokio::select! {
                biased;
                control = control_rx.recv() => {
                    let Some(control) = control else {
                        // The environment is gone: keep what it wrote last.
                        if pipe_open {
                            drain_now(&receiver, &mut buffer, &mut relay);
                        }
                        break;
                    };
                    match control {
                        LogControl::Platform(line) => relay.line(line),
                        LogControl::Start(line) => {
                            relay.invocation_text.clear();
                            relay.line(line);
                        }
                        LogControl::End { end_line, report, tail } => {
                            // Whatever the function wrote before answering is in the
                            // pipe already: take it before the END line.
                            if pipe_open {
                                pipe_open = drain_now(&receiver, &mut buffer, &mut relay);
                            }
                            relay.flush_partial();
                            relay.line(end_line);
                            relay.line(report.line());
                            if let Some(tail) = tail {
                                let _ = tail.send(tail_of(&relay.invocation_text));
                            }
                        }
                    }
                    relay.publish();
                }
                readable = receiver.readable(), if pipe_open => {
                    if readable.is_err() {
                        pipe_open = false;
                        continue;
                    }
                    match receiver.try_read(&mut buffer) {
                        Ok(0) => pipe_open = false,
                        Ok(n) => relay.output(&buffer[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => pipe_open = false,
                    }
                    relay.publish();
                }
            }
        }
        relay.flush_partial();
        relay.publish();
    });
    Ok(control_tx)
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
