//! Every way the log store can fail.

/// A failure of the log store; the API maps each variant to its AWS exception in
/// `api::ApiError::aws_error`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log database failed to {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("log group {group} does not exist")]
    GroupNotFound { group: String },
    #[error("log stream {stream} does not exist in log group {group}")]
    StreamNotFound { group: String, stream: String },
    /// A batch containing events appended before a flush could not be committed.
    #[error("log events could not be written: {detail}")]
    WriteFailed { detail: String },
    /// The writer thread has stopped (the store was dropped or the thread panicked).
    #[error("the log writer has stopped; events can no longer be stored")]
    WriterStopped,
}

pub(crate) fn db(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> LogError {
    move |source| LogError::Database { operation, source }
}
