//! Lamina's durable state: the metadata store (functions, versions, tags) behind the
//! [`MetadataStore`] trait, with its embedded SQLite backend, and the content-addressed
//! [`code::CodeStore`] for deployment packages.
//!
//! The trait speaks in domain records (`FunctionVersion`) so that a PostgreSQL backend can
//! follow without the API layer noticing. Every write is durable when the call returns:
//! an acknowledged change survives `kill -9` of the server.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use lamina_model::FunctionVersion;

pub mod code;
pub mod sqlite;

pub use code::{CodeError, CodeLimits, CodeStore, StoredCode};
pub use sqlite::SqliteStore;

/// What can go wrong in a metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("function {name} already exists")]
    AlreadyExists { name: String },
    #[error("function {name} does not exist")]
    NotFound { name: String },
    #[error("function {name} changed since revision {expected_revision_id} was read")]
    RevisionMismatch {
        name: String,
        expected_revision_id: String,
    },
    #[error("reserving concurrency for {name} would leave too little unreserved")]
    ReservationTooLarge {
        name: String,
        /// What must stay unreserved, for the message.
        minimum_unreserved: u32,
    },
    #[error("metadata database failed during {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("stored record for {key} is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
}

/// Where a listing resumes: after this function name and version order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPosition {
    pub function_name: String,
    pub version_order: i64,
}

/// The ordering key of a version within its function: `$LATEST` first, then 1, 2, 3...
pub fn version_order(version: &str) -> i64 {
    version.parse::<i64>().unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountUsage {
    pub function_count: u64,
    pub total_code_size: u64,
}

/// The metadata every Lamina server keeps, whatever the backend.
pub trait MetadataStore: Send + Sync + fmt::Debug {
    /// Stores a new function: its `$LATEST` version and its tags.
    fn create_function(
        &self,
        latest: &FunctionVersion,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;

    fn get_version(
        &self,
        function_name: &str,
        version: &str,
    ) -> Result<Option<FunctionVersion>, StoreError>;

    /// Replaces `$LATEST` only if its revision is still `expected_revision_id`, so two
    /// concurrent updates cannot silently overwrite each other.
    fn replace_latest(
        &self,
        latest: &FunctionVersion,
        expected_revision_id: &str,
    ) -> Result<(), StoreError>;

    /// Versions in (function name, version order) order, starting after `after`.
    /// With `all_versions` false only `$LATEST` of each function is listed.
    fn list_versions(
        &self,
        after: Option<&ListPosition>,
        limit: usize,
        all_versions: bool,
    ) -> Result<Vec<FunctionVersion>, StoreError>;

    /// Deletes a function with all its versions and tags; false if it did not exist.
    fn delete_function(&self, function_name: &str) -> Result<bool, StoreError>;

    /// The function's tags, or `None` if the function does not exist.
    fn tags(&self, function_name: &str) -> Result<Option<BTreeMap<String, String>>, StoreError>;

    /// Adds or overwrites `set` and removes `remove`; false if the function does not exist.
    fn update_tags(
        &self,
        function_name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<bool, StoreError>;

    /// Sets (`Some`) or removes (`None`) a function's reserved concurrency, refusing a
    /// reservation that would leave less than `minimum_unreserved` of `account_limit`
    /// unreserved (checked in the same transaction); false if the function does not exist.
    fn set_reserved_concurrency(
        &self,
        function_name: &str,
        reserved: Option<u32>,
        account_limit: u32,
        minimum_unreserved: u32,
    ) -> Result<bool, StoreError>;

    /// `None` if the function does not exist, else its reservation, if any.
    fn reserved_concurrency(&self, function_name: &str) -> Result<Option<Option<u32>>, StoreError>;

    /// Every reservation, by function name.
    fn reservations(&self) -> Result<Vec<(String, u32)>, StoreError>;

    fn account_usage(&self) -> Result<AccountUsage, StoreError>;

    /// Hex SHA-256 of every zip some version still runs: what code GC must keep.
    fn referenced_code(&self) -> Result<HashSet<String>, StoreError>;
}
