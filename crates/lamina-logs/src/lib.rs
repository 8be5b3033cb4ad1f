//! Lamina's function logs: written without blocking by the invoke engine, stored durably
//! in SQLite, and read through the CloudWatch Logs API that `aws logs tail`,
//! `aws logs filter-log-events`, `aws logs get-log-events` and the describe commands use.
//!
//! - [`store`]: [`LogStore`] owns the database and a writer thread; [`LogSink`] is the
//!   engine's handle. `append` pushes into a channel and returns; the writer group-commits
//!   batches (every [`BATCH_INTERVAL`] or [`BATCH_EVENTS`] events, whichever comes first)
//!   in one transaction each, and drops (counting) rather than blocking when more than
//!   [`MAX_PENDING_EVENTS`] are waiting. `flush` waits until everything appended before it
//!   is on disk.
//! - [`api`]: [`router`] answers the AWS JSON 1.1 protocol, `POST /` with
//!   `X-Amz-Target: Logs_20140328.<Operation>`, for DescribeLogGroups, DescribeLogStreams,
//!   GetLogEvents and FilterLogEvents. [`is_logs_request`] lets the composition root route
//!   those requests on the port it shares with the Lambda API.
//! - [`filter`]: CloudWatch's filter-pattern syntax for unstructured events.
//!
//! StartLiveTail is not implemented: `aws logs tail --follow` (AWS CLI v2) polls
//! FilterLogEvents every five seconds with `startTime` set to the newest timestamp it has
//! seen and drops event ids it has already printed; it never uses StartLiveTail.

pub mod api;
mod error;
pub mod filter;
pub mod store;

pub use api::{ApiError, TARGET_PREFIX, is_logs_request, router};
pub use error::LogError;
pub use filter::{FilterPattern, FilterPatternError};
pub use store::{BATCH_EVENTS, BATCH_INTERVAL, LogEvent, LogSink, LogStore, MAX_PENDING_EVENTS};
