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
use lamina_model::alias::Alias;
use lamina_model::layer::LayerVersion;

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
    #[error("alias {alias} of function {name} already exists")]
    AliasAlreadyExists { name: String, alias: String },
    #[error("alias {alias} of function {name} does not exist")]
    AliasNotFound { name: String, alias: String },
    #[error(
        "alias {alias} of function {name} changed since revision {expected_revision_id} was read"
    )]
    AliasRevisionMismatch {
        name: String,
        alias: String,
        expected_revision_id: String,
    },
    /// An alias may only point at versions that exist.
    #[error("version {version} of function {name} does not exist")]
    VersionNotFound { name: String, version: String },
    /// A policy changed between being read and being replaced.
    #[error("the policy of {resource} changed since revision {expected_revision_id:?} was read")]
    PolicyRevisionMismatch {
        resource: String,
        expected_revision_id: Option<String>,
    },
    #[error("layer version {name}:{version} does not exist")]
    LayerVersionNotFound { name: String, version: u64 },
    /// A version cannot be deleted while aliases route to it.
    #[error("version {version} of {name} is referenced by aliases {aliases:?}")]
    VersionInUse {
        name: String,
        version: String,
        aliases: Vec<String>,
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

/// Provisioned concurrency asked for on a published version or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedConfig {
    pub function_name: String,
    /// A version number or an alias name.
    pub qualifier: String,
    pub requested: u32,
    pub last_modified: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountUsage {
    pub function_count: u64,
    pub total_code_size: u64,
}

/// How to publish `$LATEST` as a new numbered version; the identifiers are chosen by the
/// caller, the number by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    /// Replaces `$LATEST`'s description in the published version, if given.
    pub description: Option<String>,
    /// The new version's own revision id.
    pub version_revision_id: String,
    /// `$LATEST`'s revision id after publishing: AWS moves it, so a caller holding the
    /// old revision sees that something happened.
    pub latest_revision_id: String,
    pub last_modified: String,
}

/// What publishing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub version: FunctionVersion,
    /// False when `$LATEST` had not changed since the last publish: AWS then answers with
    /// that version instead of creating another.
    pub created: bool,
}

/// A resource-based policy as stored: its JSON document and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub revision_id: String,
    pub document: String,
}

/// What deleting one published version found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionDeletion {
    Deleted,
    /// The function exists but not this version; deleting it is a no-op on AWS.
    NoSuchVersion,
    NoSuchFunction,
}

/// The metadata every Lamina server keeps, whatever the backend.
pub trait MetadataStore: Send + Sync + fmt::Debug {
    /// Stores a new function: its `$LATEST` version and its tags, and, with `publish`,
    /// version 1 of it in the same transaction.
    fn create_function(
        &self,
        latest: &FunctionVersion,
        tags: &BTreeMap<String, String>,
        publish: Option<&PublishSpec>,
    ) -> Result<Option<Published>, StoreError>;

    fn get_version(
        &self,
        function_name: &str,
        version: &str,
    ) -> Result<Option<FunctionVersion>, StoreError>;

    /// Replaces `$LATEST` only if its revision is still `expected_revision_id`, so two
    /// concurrent updates cannot silently overwrite each other; with `publish`, publishes
    /// the new `$LATEST` in the same transaction.
    fn replace_latest(
        &self,
        latest: &FunctionVersion,
        expected_revision_id: &str,
        publish: Option<&PublishSpec>,
    ) -> Result<Option<Published>, StoreError>;

    /// Publishes `$LATEST` if its revision is still `expected_latest_revision_id`: the next
    /// version number is allocated durably (numbers are never reused, even after a version
    /// is deleted). An unchanged `$LATEST` returns the version last published from it.
    fn publish_version(
        &self,
        function_name: &str,
        expected_latest_revision_id: &str,
        spec: &PublishSpec,
    ) -> Result<Published, StoreError>;

    /// One function's versions, `$LATEST` first then by number, after `after_order`
    /// (`-1` for the start); `None` if the function does not exist.
    fn list_function_versions(
        &self,
        function_name: &str,
        after_order: i64,
        limit: usize,
    ) -> Result<Option<Vec<FunctionVersion>>, StoreError>;

    /// Deletes one published version (and what hangs off it); refused with
    /// [`StoreError::VersionInUse`] while an alias routes to it.
    fn delete_version(
        &self,
        function_name: &str,
        version: &str,
    ) -> Result<VersionDeletion, StoreError>;

    /// Versions in (function name, version order) order, starting after `after`.
    /// With `all_versions` false only `$LATEST` of each function is listed.
    fn list_versions(
        &self,
        after: Option<&ListPosition>,
        limit: usize,
        all_versions: bool,
    ) -> Result<Vec<FunctionVersion>, StoreError>;

    /// Stores a new alias, checking in the same transaction that the function and every
    /// version it routes to exist.
    fn create_alias(&self, alias: &Alias) -> Result<(), StoreError>;

    fn get_alias(&self, function_name: &str, alias: &str) -> Result<Option<Alias>, StoreError>;

    /// Replaces an alias only if its revision is still `expected_revision_id`; the versions
    /// it routes to must exist.
    fn update_alias(&self, alias: &Alias, expected_revision_id: &str) -> Result<(), StoreError>;

    /// False if there was no such alias.
    fn delete_alias(&self, function_name: &str, alias: &str) -> Result<bool, StoreError>;

    /// A function's aliases in name order after `after`, optionally only those whose
    /// primary version is `version`; `None` if the function does not exist.
    fn list_aliases(
        &self,
        function_name: &str,
        version: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<Alias>>, StoreError>;

    /// Deletes a function with all its versions, aliases and tags; false if it did not
    /// exist.
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

    /// Creates or replaces a provisioned concurrency configuration; false if the function
    /// does not exist.
    fn put_provisioned(&self, config: &ProvisionedConfig) -> Result<bool, StoreError>;

    /// False if there was no such configuration.
    fn delete_provisioned(&self, function_name: &str, qualifier: &str) -> Result<bool, StoreError>;

    /// The configurations of one function, or of all functions.
    fn provisioned(
        &self,
        function_name: Option<&str>,
    ) -> Result<Vec<ProvisionedConfig>, StoreError>;

    fn account_usage(&self) -> Result<AccountUsage, StoreError>;

    /// Stores `layer` as the next version of its layer (its `version` is ignored); the
    /// number is allocated durably and never reused, even after every version of the
    /// layer is deleted.
    fn publish_layer_version(&self, layer: &LayerVersion) -> Result<LayerVersion, StoreError>;

    fn get_layer_version(
        &self,
        layer_name: &str,
        version: u64,
    ) -> Result<Option<LayerVersion>, StoreError>;

    /// Every version of a layer, newest first.
    fn list_layer_versions(&self, layer_name: &str) -> Result<Vec<LayerVersion>, StoreError>;

    /// Every layer version, by layer name and newest first within a layer.
    fn list_all_layer_versions(&self) -> Result<Vec<LayerVersion>, StoreError>;

    /// False if there was no such layer version. Functions that reference it keep their
    /// copy of its code.
    fn delete_layer_version(&self, layer_name: &str, version: u64) -> Result<bool, StoreError>;

    /// The policy of a function (`qualifier` empty), one of its versions or one of its
    /// aliases.
    fn get_function_policy(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<StoredPolicy>, StoreError>;

    /// Replaces that policy (`None` removes it) if its revision is still `expected` (`None`:
    /// there is no policy yet). The function, version or alias must exist; its deletion
    /// takes the policy along.
    fn put_function_policy(
        &self,
        function_name: &str,
        qualifier: &str,
        expected: Option<&str>,
        policy: Option<&StoredPolicy>,
    ) -> Result<(), StoreError>;

    /// The policy of a layer version; [`StoreError::LayerVersionNotFound`] if there is no
    /// such layer version.
    fn get_layer_version_policy(
        &self,
        layer_name: &str,
        version: u64,
    ) -> Result<Option<StoredPolicy>, StoreError>;

    /// Replaces a layer version's policy as [`MetadataStore::put_function_policy`] does.
    fn put_layer_version_policy(
        &self,
        layer_name: &str,
        version: u64,
        expected: Option<&str>,
        policy: Option<&StoredPolicy>,
    ) -> Result<(), StoreError>;

    /// Hex SHA-256 of every zip still needed: the code of every function version, the
    /// layers those versions reference (deleted layer versions included), and every layer
    /// version not deleted. What code GC must keep.
    fn referenced_code(&self) -> Result<HashSet<String>, StoreError>;

    /// The ordered layer digests of every function version that has layers: the merged
    /// `/opt` trees worth keeping.
    fn referenced_layer_lists(&self) -> Result<HashSet<Vec<String>>, StoreError>;
}
