//! The control-plane service: typed requests in, domain results out. It owns the rules
//! (names, revisions, code limits) and talks to the stores; it knows nothing of HTTP.
//!
//! Its methods block (SQLite, zip extraction, fsync), so HTTP handlers run them on the
//! blocking thread pool. The control plane is not the invoke hot path.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use lamina_model::function::{
    CodeRef, CreateFunctionRequest, UpdateFunctionCodeRequest, UpdateFunctionConfigurationRequest,
};
use lamina_model::validation::patterns;
use lamina_model::{
    Account, FunctionConfiguration, FunctionRef, FunctionVersion, LATEST, NameShape, RequestError,
    Violations,
};
use lamina_runtimes::RuntimeCatalog;
use lamina_store::{CodeLimits, CodeStore, ListPosition, MetadataStore, StoreError, version_order};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// AWS's account-wide limits, reported by GetAccountSettings.
pub const TOTAL_CODE_SIZE_LIMIT: u64 = 80_530_636_800;
pub const DEFAULT_CONCURRENT_EXECUTIONS: u32 = 1000;
/// ListFunctions answers at most this many items, whatever MaxItems says.
const LIST_PAGE_LIMIT: usize = 50;
const MAX_TAGS: usize = 50;

#[derive(Debug)]
pub struct ControlPlane {
    account: Account,
    store: Arc<dyn MetadataStore>,
    code: Arc<CodeStore>,
    code_limits: CodeLimits,
    concurrent_executions: u32,
    /// Told whenever a function's code or configuration changes or it is deleted, so
    /// that nothing keeps running an outdated version (the invoker's warm pool).
    change_listener: Option<Arc<dyn FunctionChangeListener>>,
    /// Held shared from writing a zip until the version that references it is stored,
    /// and exclusively by code garbage collection, so GC never removes a zip that a
    /// request is about to reference.
    code_gc: RwLock<()>,
    /// Which runtimes this server can run: a function of any other is refused.
    runtimes: Arc<RuntimeCatalog>,
}

/// Whoever must forget a function's old state when it changes.
pub trait FunctionChangeListener: Send + Sync + std::fmt::Debug {
    fn function_changed(&self, function_name: &str);
    /// Code trees still mounted by running environments: collection must keep them even
    /// when no stored version references them any more.
    fn code_in_use(&self) -> std::collections::HashSet<String>;
}

impl FunctionChangeListener for lamina_engine::Engine {
    fn function_changed(&self, function_name: &str) {
        lamina_engine::Engine::function_changed(self, function_name);
    }

    fn code_in_use(&self) -> std::collections::HashSet<String> {
        lamina_engine::Engine::code_in_use(self)
    }
}

/// GetFunction's answer, before the handler adds the download URL of the code.
#[derive(Debug, Clone)]
pub struct FunctionDetails {
    pub configuration: FunctionConfiguration,
    pub code_sha256_hex: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctionsResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub functions: Vec<FunctionConfiguration>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountSettings {
    pub account_limit: AccountLimit,
    pub account_usage: AccountUsageResponse,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountLimit {
    pub total_code_size: u64,
    pub code_size_unzipped: u64,
    pub code_size_zipped: u64,
    pub concurrent_executions: u32,
    pub unreserved_concurrent_executions: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountUsageResponse {
    pub total_code_size: u64,
    pub function_count: u64,
}

/// ListFunctions' parameters, already taken off the query string.
#[derive(Debug, Clone, Default)]
pub struct ListFunctionsQuery {
    pub marker: Option<String>,
    pub max_items: Option<String>,
    pub function_version: Option<String>,
    pub master_region: Option<String>,
}

/// The opaque `Marker` of ListFunctions: where the next page starts.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    name: String,
    order: i64,
}

fn new_revision_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn now() -> String {
    lamina_model::aws_timestamp(time::OffsetDateTime::now_utc())
}

impl ControlPlane {
    pub fn new(account: Account, store: Arc<dyn MetadataStore>, code: Arc<CodeStore>) -> Self {
        ControlPlane {
            account,
            store,
            code,
            code_limits: CodeLimits::LAMBDA,
            concurrent_executions: DEFAULT_CONCURRENT_EXECUTIONS,
            change_listener: None,
            code_gc: RwLock::new(()),
            runtimes: Arc::new(RuntimeCatalog::own_bootstraps_only()),
        }
    }

    /// The runtimes functions may use (by default only `provided.*`).
    pub fn with_runtimes(mut self, runtimes: Arc<RuntimeCatalog>) -> Self {
        self.runtimes = runtimes;
        self
    }

    /// Refuses a runtime this server cannot run, naming it and the fix, rather than
    /// storing a function that could never start.
    fn check_runtime_available(&self, runtime: Option<&str>) -> Result<(), ApiError> {
        match runtime.map(|r| self.runtimes.check(r)) {
            Some(Err(unavailable)) => Err(RequestError::InvalidParameter(format!(
                "The runtime parameter of {} is not available on this Lamina server: {}",
                unavailable.runtime, unavailable.reason
            ))
            .into()),
            _ => Ok(()),
        }
    }

    pub fn with_change_listener(mut self, listener: Arc<dyn FunctionChangeListener>) -> Self {
        self.change_listener = Some(listener);
        self
    }

    fn changed(&self, function_name: &str) {
        if let Some(listener) = &self.change_listener {
            listener.function_changed(function_name);
        }
    }

    pub fn account(&self) -> &Account {
        &self.account
    }

    pub fn code_store(&self) -> &CodeStore {
        &self.code
    }

    /// Parses a function name from a path and checks it against the optional `Qualifier`
    /// query parameter, as every function operation does.
    pub fn resolve(
        &self,
        raw_name: &str,
        qualifier: Option<&str>,
        shape: NameShape,
    ) -> Result<FunctionRef, ApiError> {
        let mut violations = Violations::new();
        let parsed = FunctionRef::parse(raw_name, shape, "functionName", &mut violations);
        if let Some(qualifier) = qualifier {
            violations.length("qualifier", qualifier, 1, 128);
            violations.pattern("qualifier", qualifier, patterns::QUALIFIER);
        }
        violations.into_result().map_err(RequestError::from)?;
        let mut function = parsed.expect("a name without violations was parsed");
        match (&function.qualifier, qualifier) {
            (Some(from_name), Some(given)) if from_name != given => {
                return Err(RequestError::InvalidParameter(
                    "The derived qualifier from the function name does not match the specified \
                     qualifier."
                        .to_owned(),
                )
                .into());
            }
            (None, Some(given)) => function.qualifier = Some(given.to_owned()),
            _ => {}
        }
        if !function.is_local_to(&self.account) {
            return Err(ApiError::FunctionNotFound {
                arn: function.display_arn(&self.account),
            });
        }
        Ok(function)
    }

    fn not_found(&self, function: &FunctionRef) -> ApiError {
        ApiError::FunctionNotFound {
            arn: function.display_arn(&self.account),
        }
    }

    /// The version a reference names. Published versions and aliases arrive with the
    /// versions issue; until then only `$LATEST` exists.
    fn find_version(&self, function: &FunctionRef) -> Result<FunctionVersion, ApiError> {
        let version = function.qualifier.as_deref().unwrap_or(LATEST);
        self.store
            .get_version(&function.name, version)?
            .ok_or_else(|| self.not_found(function))
    }

    /// `$LATEST` of a function an update names; qualified names cannot be updated.
    fn find_latest_for_update(&self, function: &FunctionRef) -> Result<FunctionVersion, ApiError> {
        if function.qualifier.as_deref().is_some_and(|q| q != LATEST) {
            return Err(RequestError::InvalidParameter(format!(
                "Only the unpublished version can be changed; {} names a published version or \
                 alias.",
                function.display_arn(&self.account)
            ))
            .into());
        }
        let unqualified = FunctionRef {
            qualifier: None,
            ..function.clone()
        };
        self.find_version(&unqualified)
    }

    fn decode_zip(zip_file: &str) -> Result<Vec<u8>, ApiError> {
        base64::engine::general_purpose::STANDARD
            .decode(zip_file)
            .map_err(|e| ApiError::MalformedBody {
                detail: format!("ZipFile is not valid base64: {e}"),
            })
    }

    /// The zip bytes of a code source, or AWS's error for sources Lamina cannot read.
    fn zip_from_source(
        zip_file: Option<&str>,
        s3_bucket: Option<&str>,
    ) -> Result<Vec<u8>, ApiError> {
        match (zip_file, s3_bucket) {
            (Some(zip), _) => Self::decode_zip(zip),
            (None, Some(bucket)) => Err(RequestError::NotImplemented {
                feature: format!(
                    "code from S3 (bucket {bucket}): Lamina has no S3; upload the archive as ZipFile"
                ),
            }
            .into()),
            (None, None) => Err(RequestError::InvalidParameter(
                "Please provide a source for function code.".to_owned(),
            )
            .into()),
        }
    }

    fn store_code(&self, zip: &[u8]) -> Result<CodeRef, ApiError> {
        let stored = self.code.put_zip(zip, &self.code_limits)?;
        Ok(CodeRef {
            sha256_hex: hex_of(&stored.sha256),
            size: stored.code_size,
            unzipped_size: stored.unzipped_size,
        })
    }

    pub fn create_function(
        &self,
        request: CreateFunctionRequest,
    ) -> Result<FunctionConfiguration, ApiError> {
        let (function, settings) = request.validate()?;
        self.check_runtime_available(settings.runtime.as_deref())?;
        if request.publish == Some(true) {
            return Err(RequestError::NotImplemented {
                feature: "Publish (published versions arrive with the versions issue)".to_owned(),
            }
            .into());
        }
        if let Some(tags) = &request.tags {
            check_tag_count(tags.len())?;
        }
        if !settings.layers.is_empty() {
            return Err(layer_not_found(&settings.layers[0].arn));
        }
        if self.store.get_version(&function.name, LATEST)?.is_some() {
            return Err(ApiError::FunctionAlreadyExists {
                name: function.name,
            });
        }
        let code_input = request.code.clone().unwrap_or_default();
        let zip = Self::zip_from_source(
            code_input.zip_file.as_deref(),
            code_input.s3_bucket.as_deref(),
        )?;

        let _gc_guard = self.code_gc.read().unwrap_or_else(|p| p.into_inner());
        let code = self.store_code(&zip)?;
        let latest = FunctionVersion {
            function_name: function.name.clone(),
            version: LATEST.to_owned(),
            settings,
            code,
            architecture: request
                .architectures
                .as_ref()
                .and_then(|a| a.first().cloned())
                .unwrap_or_else(|| "x86_64".to_owned()),
            revision_id: new_revision_id(),
            last_modified: now(),
        };
        self.store
            .create_function(&latest, &request.tags.clone().unwrap_or_default())?;
        tracing::info!(function = %latest.function_name, "function created");
        Ok(latest.configuration(&self.account))
    }

    pub fn get_function(&self, function: &FunctionRef) -> Result<FunctionDetails, ApiError> {
        let version = self.find_version(function)?;
        let tags = self.store.tags(&function.name)?.unwrap_or_default();
        Ok(FunctionDetails {
            configuration: version.configuration(&self.account),
            code_sha256_hex: version.code.sha256_hex,
            tags,
        })
    }

    pub fn get_function_configuration(
        &self,
        function: &FunctionRef,
    ) -> Result<FunctionConfiguration, ApiError> {
        Ok(self.find_version(function)?.configuration(&self.account))
    }

    pub fn list_functions(
        &self,
        query: &ListFunctionsQuery,
    ) -> Result<ListFunctionsResponse, ApiError> {
        let mut violations = Violations::new();
        let max_items = match &query.max_items {
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) => {
                    violations.range("maxItems", n, 1, 10000);
                    n.clamp(1, LIST_PAGE_LIMIT as i64) as usize
                }
                Err(_) => {
                    return Err(ApiError::MalformedBody {
                        detail: format!("MaxItems '{raw}' is not an integer"),
                    });
                }
            },
            None => LIST_PAGE_LIMIT,
        };
        if let Some(version) = &query.function_version {
            violations.one_of("functionVersion", version, &["ALL"]);
        }
        if let Some(region) = &query.master_region {
            violations.pattern("masterRegion", region, patterns::MASTER_REGION);
        }
        violations.into_result().map_err(RequestError::from)?;
        if query.master_region.is_some() {
            // Lambda@Edge replicas do not exist here: the filtered list is empty.
            return Ok(ListFunctionsResponse {
                next_marker: None,
                functions: Vec::new(),
            });
        }
        let after = match &query.marker {
            Some(marker) => Some(decode_marker(marker)?),
            None => None,
        };
        let all_versions = query.function_version.is_some();
        // One extra row tells whether another page follows.
        let mut versions = self
            .store
            .list_versions(after.as_ref(), max_items + 1, all_versions)?;
        let next_marker = if versions.len() > max_items {
            versions.truncate(max_items);
            versions.last().map(|last| {
                encode_marker(&Marker {
                    name: last.function_name.clone(),
                    order: version_order(&last.version),
                })
            })
        } else {
            None
        };
        Ok(ListFunctionsResponse {
            next_marker,
            functions: versions
                .iter()
                .map(|v| v.configuration(&self.account))
                .collect(),
        })
    }

    pub fn update_function_code(
        &self,
        function: &FunctionRef,
        request: UpdateFunctionCodeRequest,
    ) -> Result<FunctionConfiguration, ApiError> {
        let architecture = request.validate()?;
        if request.publish == Some(true) {
            return Err(RequestError::NotImplemented {
                feature: "Publish (published versions arrive with the versions issue)".to_owned(),
            }
            .into());
        }
        let current = self.find_latest_for_update(function)?;
        check_revision(&current, request.revision_id.as_deref())?;
        let zip = Self::zip_from_source(request.zip_file.as_deref(), request.s3_bucket.as_deref())?;

        let _gc_guard = self.code_gc.read().unwrap_or_else(|p| p.into_inner());
        let code = self.store_code(&zip)?;
        let mut updated = FunctionVersion {
            code,
            revision_id: new_revision_id(),
            last_modified: now(),
            ..current.clone()
        };
        if let Some(architecture) = architecture {
            updated.architecture = architecture;
        }
        if request.dry_run == Some(true) {
            return Ok(FunctionVersion {
                revision_id: current.revision_id,
                last_modified: current.last_modified,
                ..updated
            }
            .configuration(&self.account));
        }
        self.replace_latest(&updated, &current, request.revision_id.is_some())?;
        drop(_gc_guard);
        self.changed(&updated.function_name);
        self.collect_unused_code();
        Ok(updated.configuration(&self.account))
    }

    pub fn update_function_configuration(
        &self,
        function: &FunctionRef,
        request: UpdateFunctionConfigurationRequest,
    ) -> Result<FunctionConfiguration, ApiError> {
        let current = self.find_latest_for_update(function)?;
        let settings = request.apply_to(&current.settings)?;
        if request.settings.runtime.is_some() {
            self.check_runtime_available(settings.runtime.as_deref())?;
        }
        check_revision(&current, request.revision_id.as_deref())?;
        if let Some(layer) = settings.layers.first() {
            return Err(layer_not_found(&layer.arn));
        }
        let updated = FunctionVersion {
            settings,
            revision_id: new_revision_id(),
            last_modified: now(),
            ..current.clone()
        };
        self.replace_latest(&updated, &current, request.revision_id.is_some())?;
        self.changed(&updated.function_name);
        Ok(updated.configuration(&self.account))
    }

    /// Stores an update of `$LATEST`; a concurrent update that won the race answers as
    /// AWS does: 412 when the caller pinned a revision, else 409.
    fn replace_latest(
        &self,
        updated: &FunctionVersion,
        current: &FunctionVersion,
        caller_pinned_revision: bool,
    ) -> Result<(), ApiError> {
        match self.store.replace_latest(updated, &current.revision_id) {
            Ok(()) => Ok(()),
            Err(StoreError::RevisionMismatch { .. }) if caller_pinned_revision => {
                Err(ApiError::RevisionMismatch)
            }
            Err(StoreError::RevisionMismatch { .. }) => Err(ApiError::UpdateInProgress {
                arn: self.account.function_arn(&updated.function_name),
            }),
            Err(StoreError::NotFound { .. }) => Err(ApiError::FunctionNotFound {
                arn: self.account.function_arn(&updated.function_name),
            }),
            Err(other) => Err(other.into()),
        }
    }

    pub fn delete_function(&self, function: &FunctionRef) -> Result<(), ApiError> {
        match function.qualifier.as_deref() {
            Some(LATEST) => {
                return Err(RequestError::InvalidParameter(
                    "$LATEST version cannot be deleted without deleting the function.".to_owned(),
                )
                .into());
            }
            // Only $LATEST exists until versions arrive, so any other qualifier is missing.
            Some(_) => return Err(self.not_found(function)),
            None => {}
        }
        if !self.store.delete_function(&function.name)? {
            return Err(self.not_found(function));
        }
        tracing::info!(function = %function.name, "function deleted");
        self.changed(&function.name);
        self.collect_unused_code();
        Ok(())
    }

    /// Removes zips and extracted trees no version uses any more. Failures are logged and
    /// left for the next collection: they never fail the request that triggered it.
    pub fn collect_unused_code(&self) {
        let _exclusive = self.code_gc.write().unwrap_or_else(|p| p.into_inner());
        let result = self
            .store
            .referenced_code()
            .map_err(ApiError::from)
            .and_then(|mut keep| {
                if let Some(listener) = &self.change_listener {
                    keep.extend(listener.code_in_use());
                }
                Ok(self.code.retain_only(&keep)?)
            });
        match result {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "unused code removed"),
            Err(error) => tracing::warn!(%error, "code garbage collection failed"),
        }
    }

    pub fn account_settings(&self) -> Result<AccountSettings, ApiError> {
        let usage = self.store.account_usage()?;
        Ok(AccountSettings {
            account_limit: AccountLimit {
                total_code_size: TOTAL_CODE_SIZE_LIMIT,
                code_size_unzipped: self.code_limits.max_unzipped_bytes,
                code_size_zipped: self.code_limits.max_zipped_bytes,
                concurrent_executions: self.concurrent_executions,
                // No reservations exist until the concurrency issue lands.
                unreserved_concurrent_executions: self.concurrent_executions,
            },
            account_usage: AccountUsageResponse {
                total_code_size: usage.total_code_size,
                function_count: usage.function_count,
            },
        })
    }

    /// The function a taggable resource ARN names; only unqualified function ARNs carry tags.
    fn tagged_function(&self, resource: &str) -> Result<String, ApiError> {
        let mut violations = Violations::new();
        violations.length("resource", resource, 1, 256);
        violations.pattern("resource", resource, patterns::TAGGABLE_RESOURCE);
        violations.into_result().map_err(RequestError::from)?;
        let function = self.resolve(resource, None, NameShape::FunctionName)?;
        if function.qualifier.is_some() {
            return Err(RequestError::InvalidParameter(
                "Tags on function aliases and versions are not supported. Please specify a \
                 function ARN."
                    .to_owned(),
            )
            .into());
        }
        Ok(function.name)
    }

    pub fn tag_resource(
        &self,
        resource: &str,
        tags: Option<BTreeMap<String, String>>,
    ) -> Result<(), ApiError> {
        let name = self.tagged_function(resource)?;
        let mut violations = Violations::new();
        lamina_model::function::require(&mut violations, "tags", &tags);
        violations.into_result().map_err(RequestError::from)?;
        let tags = tags.unwrap_or_default();
        let existing = self
            .store
            .tags(&name)?
            .ok_or_else(|| ApiError::FunctionNotFound {
                arn: self.account.function_arn(&name),
            })?;
        let new_keys = tags.keys().filter(|k| !existing.contains_key(*k)).count();
        check_tag_count(existing.len() + new_keys)?;
        if !self.store.update_tags(&name, &tags, &[])? {
            return Err(ApiError::FunctionNotFound {
                arn: self.account.function_arn(&name),
            });
        }
        Ok(())
    }

    pub fn untag_resource(&self, resource: &str, keys: &[String]) -> Result<(), ApiError> {
        let name = self.tagged_function(resource)?;
        if !self.store.update_tags(&name, &BTreeMap::new(), keys)? {
            return Err(ApiError::FunctionNotFound {
                arn: self.account.function_arn(&name),
            });
        }
        Ok(())
    }

    pub fn list_tags(&self, resource: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let name = self.tagged_function(resource)?;
        self.store
            .tags(&name)?
            .ok_or_else(|| ApiError::FunctionNotFound {
                arn: self.account.function_arn(&name),
            })
    }
}

fn check_revision(current: &FunctionVersion, expected: Option<&str>) -> Result<(), ApiError> {
    match expected {
        Some(expected) if expected != current.revision_id => Err(ApiError::RevisionMismatch),
        _ => Ok(()),
    }
}

fn check_tag_count(count: usize) -> Result<(), ApiError> {
    if count > MAX_TAGS {
        return Err(RequestError::InvalidParameter(format!(
            "Number of tags exceeds resource tag limit. A resource can have at most {MAX_TAGS} tags."
        ))
        .into());
    }
    Ok(())
}

/// Layers arrive with the versions-and-layers issue; until then no layer version exists.
fn layer_not_found(arn: &str) -> ApiError {
    RequestError::InvalidParameter(format!("Layer version {arn} does not exist.")).into()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn encode_marker(marker: &Marker) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(marker).expect("markers serialize"))
}

fn decode_marker(marker: &str) -> Result<ListPosition, ApiError> {
    let invalid = || -> ApiError {
        RequestError::InvalidParameter(format!("Invalid Marker: {marker}")).into()
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(marker)
        .map_err(|_| invalid())?;
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    Ok(ListPosition {
        function_name: marker.name,
        version_order: marker.order,
    })
}
