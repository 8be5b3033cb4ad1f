//! The control-plane service: typed requests in, domain results out. It owns the rules
//! (names, revisions, code limits) and talks to the stores; it knows nothing of HTTP.
//!
//! Its methods block (SQLite, zip extraction, fsync), so HTTP handlers run them on the
//! blocking thread pool. The control plane is not the invoke hot path.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use lamina_model::alias::{
    Alias, AliasConfiguration, AliasTarget, CreateAliasRequest, UpdateAliasRequest,
    check_alias_name,
};
use lamina_model::function::LayerRef;
use lamina_model::function::{
    CodeRef, CreateFunctionRequest, PublishVersionRequest, UpdateFunctionCodeRequest,
    UpdateFunctionConfigurationRequest, code_sha256_mismatch,
};
use lamina_model::layer::{
    LAYER_VERSION_ARN_QUERY_PATTERN, LayerName, LayerVersion, LayerVersionArn,
    LayerVersionsListItem, LayersListItem, PublishLayerVersionRequest, check_list_filters,
    version_below_one,
};
use lamina_model::policy::{
    AccessRequest, AddLayerVersionPermissionRequest, AddPermissionRequest, PolicyDocument,
    Statement, check_statement_id,
};
use lamina_model::validation::patterns;
use lamina_model::{
    Account, FunctionConfiguration, FunctionRef, FunctionVersion, LATEST, NameShape, Qualifier,
    RequestError, Violations,
};
use lamina_runtimes::RuntimeCatalog;
use lamina_store::{
    CodeLimits, CodeStore, ListPosition, MetadataStore, PublishSpec, Published, StoreError,
    StoredPolicy, VersionDeletion, version_order,
};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

mod provisioned;
pub use provisioned::{ListProvisionedConcurrencyConfigsResponse, ProvisionedConcurrencyConfig};

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
    /// How much of `concurrent_executions` must stay unreserved; `None`: AWS's rule.
    minimum_unreserved: Option<u32>,
    /// Held while a function's concurrency settings are checked, stored and handed to the
    /// engine (a reservation, a provisioned configuration, a provisioned alias moving, a
    /// deletion), so no two changes pass their checks against the same headroom and the
    /// engine gets them in the order they were stored, however quickly they change.
    concurrency_changes: std::sync::Mutex<()>,
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

/// Proof that [`ControlPlane::concurrency_changes`] is held.
type ConcurrencyChanges<'a> = std::sync::MutexGuard<'a, ()>;

/// Whoever must forget a function's old state when it changes.
pub trait FunctionChangeListener: Send + Sync + std::fmt::Debug {
    /// The function was deleted: everything about it is stale.
    fn function_changed(&self, function_name: &str);
    /// A function's reserved concurrency was set (`Some`) or removed (`None`).
    fn reservation_changed(&self, function_name: &str, reserved: Option<u32>);
    /// How many environments of each published version of a function are to be kept
    /// initialised; versions not listed get none.
    fn provisioned_targets(
        &self,
        function_name: &str,
        targets: &std::collections::BTreeMap<String, u32>,
    );
    /// How many of those are initialised now.
    fn provisioned_allocated(&self, function_name: &str, version: &str) -> u32;
    /// One version changed: `$LATEST` was updated, or a published version deleted.
    fn version_changed(&self, function_name: &str, version: &str);
    /// An alias was created, changed or deleted: its routing is stale.
    fn alias_changed(&self, function_name: &str, alias: &str);
    /// Code trees still mounted by running environments: collection must keep them even
    /// when no stored version references them any more.
    fn code_in_use(&self) -> std::collections::HashSet<String>;
}

impl FunctionChangeListener for lamina_engine::Engine {
    fn function_changed(&self, function_name: &str) {
        lamina_engine::Engine::function_changed(self, function_name);
    }

    fn reservation_changed(&self, function_name: &str, reserved: Option<u32>) {
        self.concurrency().set_reservation(function_name, reserved);
    }

    fn provisioned_targets(
        &self,
        function_name: &str,
        targets: &std::collections::BTreeMap<String, u32>,
    ) {
        self.set_provisioned_targets(function_name, targets);
    }

    fn provisioned_allocated(&self, function_name: &str, version: &str) -> u32 {
        lamina_engine::Engine::provisioned_allocated(self, function_name, version)
    }

    fn version_changed(&self, function_name: &str, version: &str) {
        lamina_engine::Engine::version_changed(self, function_name, version);
    }

    fn alias_changed(&self, function_name: &str, alias: &str) {
        lamina_engine::Engine::alias_changed(self, function_name, alias);
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
    pub reserved_concurrency: Option<u32>,
}

/// The `Concurrency` shape: a function's reservation, absent when it has none.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Concurrency {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_concurrent_executions: Option<u32>,
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
pub struct ListVersionsResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub versions: Vec<FunctionConfiguration>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliasesResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub aliases: Vec<AliasConfiguration>,
}

/// ListAliases' parameters, already taken off the query string.
#[derive(Debug, Clone, Default)]
pub struct ListAliasesQuery {
    pub function_version: Option<String>,
    pub marker: Option<String>,
    pub max_items: Option<String>,
}

/// ListLayers' and ListLayerVersions' parameters, already taken off the query string.
#[derive(Debug, Clone, Default)]
pub struct ListLayersQuery {
    pub compatible_runtime: Option<String>,
    pub compatible_architecture: Option<String>,
    pub marker: Option<String>,
    pub max_items: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListLayersResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub layers: Vec<LayersListItem>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListLayerVersionsResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub layer_versions: Vec<LayerVersionsListItem>,
}

/// GetPolicy's and GetLayerVersionPolicy's answer: the document as a JSON string.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PolicyResponse {
    pub policy: String,
    pub revision_id: String,
}

/// AddPermission's (and, with its revision, AddLayerVersionPermission's) answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StatementResponse {
    pub statement: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_id: Option<String>,
}

/// How many times a policy change is retried when another change wins the race and the
/// caller did not pin a revision.
const POLICY_ATTEMPTS: usize = 5;

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
            minimum_unreserved: None,
            concurrency_changes: std::sync::Mutex::new(()),
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

    /// The account's concurrency limit (what `lamina serve --concurrency-limit` set).
    pub fn with_concurrency_limit(mut self, limit: u32) -> Self {
        self.concurrent_executions = limit;
        self
    }

    /// How much of the concurrency limit must stay unreserved (what `lamina serve
    /// --minimum-unreserved-concurrency` set); by default AWS's 100, or all of a smaller
    /// limit.
    pub fn with_minimum_unreserved(mut self, minimum: u32) -> Self {
        self.minimum_unreserved = Some(minimum);
        self
    }

    /// How much of the concurrency limit reservations and provisioned concurrency must
    /// leave to functions without a reservation (never more than the limit).
    fn minimum_unreserved(&self) -> u32 {
        self.minimum_unreserved
            .unwrap_or_else(|| {
                lamina_engine::ConcurrencyGovernor::minimum_unreserved(self.concurrent_executions)
            })
            .min(self.concurrent_executions)
    }

    /// Serialises changes of concurrency settings (their checks, their write and handing
    /// them to the engine).
    fn concurrency_changes(&self) -> ConcurrencyChanges<'_> {
        self.concurrency_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn with_change_listener(mut self, listener: Arc<dyn FunctionChangeListener>) -> Self {
        self.change_listener = Some(listener);
        self
    }

    fn function_deleted(&self, function_name: &str) {
        if let Some(listener) = &self.change_listener {
            listener.function_changed(function_name);
        }
    }

    fn version_changed(&self, function_name: &str, version: &str) {
        if let Some(listener) = &self.change_listener {
            listener.version_changed(function_name, version);
        }
    }

    fn alias_changed(&self, function_name: &str, alias: &str) {
        if let Some(listener) = &self.change_listener {
            listener.alias_changed(function_name, alias);
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

    /// The version a reference names: `$LATEST`, a published version, or the version an
    /// alias points at.
    pub fn find_version(&self, function: &FunctionRef) -> Result<FunctionVersion, ApiError> {
        let alias;
        let version = match function.qualifier_kind() {
            Qualifier::Latest => LATEST,
            Qualifier::Version(number) => number,
            Qualifier::Alias(name) => {
                alias = self
                    .store
                    .get_alias(&function.name, name)?
                    .ok_or_else(|| self.not_found(function))?;
                alias.function_version.as_str()
            }
        };
        self.store
            .get_version(&function.name, version)?
            .ok_or_else(|| self.not_found(function))
    }

    /// `$LATEST` of a function an update names: published versions are immutable, and
    /// AWS refuses a qualifier other than `$LATEST` on the operations that change one.
    fn find_latest_for_update(&self, function: &FunctionRef) -> Result<FunctionVersion, ApiError> {
        if function.qualifier_kind() != Qualifier::Latest {
            return Err(latest_only());
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
        if let Some(tags) = &request.tags {
            check_tag_count(tags.len())?;
        }
        let mut settings = settings;
        if let Some(arns) = &request.settings.layers {
            settings.layers = self.resolve_layers(arns)?;
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
        check_unzipped_total(&code, &settings.layers)?;
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
        let publish = (request.publish == Some(true)).then(|| publish_spec(None));
        let published = self.store.create_function(
            &latest,
            &request.tags.clone().unwrap_or_default(),
            publish.as_ref(),
        )?;
        tracing::info!(function = %latest.function_name, "function created");
        // Published on creation, AWS answers with version 1 under the unqualified ARN.
        Ok(match published {
            Some(published) => published.version.configuration_as(&self.account, None),
            None => latest.configuration(&self.account),
        })
    }

    pub fn get_function(&self, function: &FunctionRef) -> Result<FunctionDetails, ApiError> {
        let version = self.find_version(function)?;
        let tags = self.store.tags(&function.name)?.unwrap_or_default();
        let reserved_concurrency = self.store.reserved_concurrency(&function.name)?.flatten();
        Ok(FunctionDetails {
            configuration: version.configuration_as(&self.account, function.qualifier.as_deref()),
            code_sha256_hex: version.code.sha256_hex,
            tags,
            reserved_concurrency,
        })
    }

    pub fn get_function_configuration(
        &self,
        function: &FunctionRef,
    ) -> Result<FunctionConfiguration, ApiError> {
        Ok(self
            .find_version(function)?
            .configuration_as(&self.account, function.qualifier.as_deref()))
    }

    pub fn list_functions(
        &self,
        query: &ListFunctionsQuery,
    ) -> Result<ListFunctionsResponse, ApiError> {
        let mut violations = Violations::new();
        let max_items = parse_max_items(query.max_items.as_deref(), &mut violations)?;
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
        let current = self.find_latest_for_update(function)?;
        check_revision(&current, request.revision_id.as_deref())?;
        let zip = Self::zip_from_source(request.zip_file.as_deref(), request.s3_bucket.as_deref())?;

        let _gc_guard = self.code_gc.read().unwrap_or_else(|p| p.into_inner());
        let code = self.store_code(&zip)?;
        check_unzipped_total(&code, &current.settings.layers)?;
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
        let publish = (request.publish == Some(true)).then(|| publish_spec(None));
        let published = self.replace_latest(
            &updated,
            &current,
            request.revision_id.is_some(),
            publish.as_ref(),
        )?;
        drop(_gc_guard);
        self.version_changed(&updated.function_name, LATEST);
        self.collect_unused_code();
        Ok(match published {
            Some(published) => published.version.configuration(&self.account),
            None => updated.configuration(&self.account),
        })
    }

    pub fn update_function_configuration(
        &self,
        function: &FunctionRef,
        request: UpdateFunctionConfigurationRequest,
    ) -> Result<FunctionConfiguration, ApiError> {
        let current = self.find_latest_for_update(function)?;
        let mut settings = request.apply_to(&current.settings)?;
        if request.settings.runtime.is_some() {
            self.check_runtime_available(settings.runtime.as_deref())?;
        }
        check_revision(&current, request.revision_id.as_deref())?;
        if let Some(arns) = &request.settings.layers {
            settings.layers = self.resolve_layers(arns)?;
            check_unzipped_total(&current.code, &settings.layers)?;
        }
        let updated = FunctionVersion {
            settings,
            revision_id: new_revision_id(),
            last_modified: now(),
            ..current.clone()
        };
        self.replace_latest(&updated, &current, request.revision_id.is_some(), None)?;
        self.version_changed(&updated.function_name, LATEST);
        if request.settings.layers.is_some() {
            // The old layers' merged /opt tree may be unused now.
            self.collect_unused_code();
        }
        Ok(updated.configuration(&self.account))
    }

    /// Stores an update of `$LATEST` (publishing it too with `publish`); a concurrent
    /// update that won the race answers as AWS does: 412 when the caller pinned a
    /// revision, else 409.
    fn replace_latest(
        &self,
        updated: &FunctionVersion,
        current: &FunctionVersion,
        caller_pinned_revision: bool,
        publish: Option<&PublishSpec>,
    ) -> Result<Option<Published>, ApiError> {
        let result = self
            .store
            .replace_latest(updated, &current.revision_id, publish);
        self.lost_race(&updated.function_name, caller_pinned_revision, result)
    }

    /// Maps a compare-and-swap on `$LATEST` that lost to a concurrent change.
    fn lost_race<T>(
        &self,
        function_name: &str,
        caller_pinned_revision: bool,
        result: Result<T, StoreError>,
    ) -> Result<T, ApiError> {
        match result {
            Ok(value) => Ok(value),
            Err(StoreError::RevisionMismatch { .. }) if caller_pinned_revision => {
                Err(ApiError::RevisionMismatch)
            }
            Err(StoreError::RevisionMismatch { .. }) => Err(ApiError::UpdateInProgress {
                arn: self.account.function_arn(function_name),
            }),
            Err(StoreError::NotFound { .. }) => Err(ApiError::FunctionNotFound {
                arn: self.account.function_arn(function_name),
            }),
            Err(other) => Err(other.into()),
        }
    }

    /// PublishVersion: snapshots `$LATEST`'s code and configuration as the next numbered
    /// version, or returns the last version if `$LATEST` has not changed since.
    pub fn publish_version(
        &self,
        function: &FunctionRef,
        request: PublishVersionRequest,
    ) -> Result<FunctionConfiguration, ApiError> {
        request.validate()?;
        let current = self.find_latest_for_update(function)?;
        check_revision(&current, request.revision_id.as_deref())?;
        if let Some(given) = &request.code_sha256 {
            let actual = current.code.code_sha256();
            if *given != actual {
                return Err(code_sha256_mismatch(given, &actual).into());
            }
        }
        let spec = publish_spec(request.description.clone());
        let result =
            self.store
                .publish_version(&current.function_name, &current.revision_id, &spec);
        let published = self.lost_race(
            &current.function_name,
            request.revision_id.is_some(),
            result,
        )?;
        if published.created {
            tracing::info!(
                function = %current.function_name,
                version = %published.version.version,
                "version published"
            );
        }
        Ok(published.version.configuration(&self.account))
    }

    /// ListVersionsByFunction: `$LATEST` (named `:$LATEST`) then the published versions.
    pub fn list_versions_by_function(
        &self,
        function: &FunctionRef,
        marker: Option<&str>,
        max_items: Option<&str>,
    ) -> Result<ListVersionsResponse, ApiError> {
        let mut violations = Violations::new();
        let max_items = parse_max_items(max_items, &mut violations)?;
        violations.into_result().map_err(RequestError::from)?;
        let after = match marker {
            Some(marker) => decode_marker(marker)?.version_order,
            None => -1,
        };
        let mut versions = self
            .store
            .list_function_versions(&function.name, after, max_items + 1)?
            .ok_or_else(|| ApiError::FunctionNotFound {
                arn: self.account.function_arn(&function.name),
            })?;
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
        Ok(ListVersionsResponse {
            next_marker,
            versions: versions
                .iter()
                .map(|v| v.configuration_as(&self.account, Some(&v.version)))
                .collect(),
        })
    }

    /// DeleteFunction: the whole function, or with a qualifier one published version.
    pub fn delete_function(&self, function: &FunctionRef) -> Result<(), ApiError> {
        match function.qualifier_kind() {
            Qualifier::Latest if function.qualifier.is_some() => {
                return Err(RequestError::InvalidParameter(
                    "$LATEST version cannot be deleted without deleting the function.".to_owned(),
                )
                .into());
            }
            Qualifier::Latest => {}
            Qualifier::Version(version) | Qualifier::Alias(version) => {
                return self.delete_version(function, version);
            }
        }
        {
            let _in_order = self.concurrency_changes();
            if !self.store.delete_function(&function.name)? {
                return Err(self.not_found(function));
            }
            tracing::info!(function = %function.name, "function deleted");
            self.function_deleted(&function.name);
            if let Some(listener) = &self.change_listener {
                listener.reservation_changed(&function.name, None);
            }
        }
        self.collect_unused_code();
        Ok(())
    }

    /// Deleting a version that does not exist succeeds, as on AWS; a missing function
    /// does not.
    fn delete_version(&self, function: &FunctionRef, version: &str) -> Result<(), ApiError> {
        // Under the lock a PutProvisionedConcurrencyConfig holds from its check to its
        // write, so a configuration is never written for a version just deleted.
        let in_order = self.concurrency_changes();
        match self.store.delete_version(&function.name, version) {
            Ok(VersionDeletion::Deleted) => {
                tracing::info!(function = %function.name, %version, "version deleted");
                let had_provisioned = self.store.delete_provisioned(&function.name, version)?;
                self.version_changed(&function.name, version);
                if had_provisioned {
                    self.apply_provisioned_held(&function.name, &in_order)?;
                }
                drop(in_order);
                self.collect_unused_code();
                Ok(())
            }
            Ok(VersionDeletion::NoSuchVersion) => Ok(()),
            Ok(VersionDeletion::NoSuchFunction) => Err(ApiError::FunctionNotFound {
                arn: self.account.function_arn(&function.name),
            }),
            Err(StoreError::VersionInUse { aliases, .. }) => {
                Err(ApiError::VersionReferencedByAliases { aliases })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// The alias ARN `function:alias`, for AWS's alias messages.
    fn alias_arn(&self, function: &FunctionRef, alias: &str) -> String {
        self.account
            .qualified_function_arn(&function.name, Some(alias))
    }

    /// Maps the store's refusals of an alias write to AWS's errors.
    fn alias_write_error(
        &self,
        function: &FunctionRef,
        alias: &str,
        target: &AliasTarget,
        error: StoreError,
    ) -> ApiError {
        match error {
            StoreError::NotFound { .. } => ApiError::FunctionNotFound {
                arn: self
                    .account
                    .qualified_function_arn(&function.name, Some(&target.function_version)),
            },
            StoreError::VersionNotFound { version, .. } => ApiError::FunctionNotFound {
                arn: self
                    .account
                    .qualified_function_arn(&function.name, Some(&version)),
            },
            StoreError::AliasAlreadyExists { .. } => ApiError::AliasAlreadyExists {
                arn: self.alias_arn(function, alias),
            },
            StoreError::AliasNotFound { .. } => ApiError::AliasNotFound {
                arn: self.alias_arn(function, alias),
            },
            StoreError::AliasRevisionMismatch { .. } => ApiError::RevisionMismatch,
            other => other.into(),
        }
    }

    /// The function an alias operation names: aliases belong to the function itself, so a
    /// qualified name is refused as AWS refuses it.
    fn unqualified(&self, function: &FunctionRef) -> Result<(), ApiError> {
        if function.qualifier.is_some() {
            return Err(latest_only());
        }
        Ok(())
    }

    pub fn create_alias(
        &self,
        function: &FunctionRef,
        request: CreateAliasRequest,
    ) -> Result<AliasConfiguration, ApiError> {
        let (name, target) = request.validate()?;
        self.unqualified(function)?;
        let alias = Alias {
            function_name: function.name.clone(),
            name: name.clone(),
            function_version: target.function_version.clone(),
            description: target.description.clone(),
            additional: target.additional.clone(),
            revision_id: new_revision_id(),
        };
        self.store
            .create_alias(&alias)
            .map_err(|e| self.alias_write_error(function, &name, &target, e))?;
        self.alias_changed(&function.name, &name);
        tracing::info!(function = %function.name, alias = %name, "alias created");
        Ok(alias.configuration(&self.account))
    }

    /// Validates the alias name of the alias operations that take it from the path.
    fn check_alias_name(name: &str) -> Result<(), ApiError> {
        let mut violations = Violations::new();
        check_alias_name(name, &mut violations);
        Ok(violations.into_result().map_err(RequestError::from)?)
    }

    pub fn get_alias(
        &self,
        function: &FunctionRef,
        name: &str,
    ) -> Result<AliasConfiguration, ApiError> {
        Self::check_alias_name(name)?;
        self.unqualified(function)?;
        let alias = self.store.get_alias(&function.name, name)?.ok_or_else(|| {
            ApiError::CannotFindAlias {
                arn: self.alias_arn(function, name),
            }
        })?;
        Ok(alias.configuration(&self.account))
    }

    pub fn update_alias(
        &self,
        function: &FunctionRef,
        name: &str,
        request: UpdateAliasRequest,
    ) -> Result<AliasConfiguration, ApiError> {
        Self::check_alias_name(name)?;
        self.unqualified(function)?;
        // Moving an alias can make provisioned configurations overlap: the check and the
        // write must not interleave with a PutProvisionedConcurrencyConfig.
        let in_order = self.concurrency_changes();
        let current =
            self.store
                .get_alias(&function.name, name)?
                .ok_or_else(|| ApiError::AliasNotFound {
                    arn: self.alias_arn(function, name),
                })?;
        let target = request.apply_to(&current)?;
        if request
            .revision_id
            .as_deref()
            .is_some_and(|expected| expected != current.revision_id)
        {
            return Err(ApiError::RevisionMismatch);
        }
        let updated = Alias {
            function_version: target.function_version.clone(),
            description: target.description.clone(),
            additional: target.additional.clone(),
            revision_id: new_revision_id(),
            ..current.clone()
        };
        self.check_alias_move(&current, &updated)?;
        self.store
            .update_alias(&updated, &current.revision_id)
            .map_err(|e| self.alias_write_error(function, name, &target, e))?;
        self.alias_changed(&function.name, name);
        // Provisioned concurrency configured on the alias follows it to its new version.
        self.apply_provisioned_held(&function.name, &in_order)?;
        drop(in_order);
        tracing::info!(function = %function.name, alias = %name, "alias updated");
        Ok(updated.configuration(&self.account))
    }

    /// DeleteAlias: deleting an alias that does not exist succeeds, as on AWS.
    pub fn delete_alias(&self, function: &FunctionRef, name: &str) -> Result<(), ApiError> {
        Self::check_alias_name(name)?;
        self.unqualified(function)?;
        // Under the lock a PutProvisionedConcurrencyConfig holds from its check to its
        // write, so a configuration is never written for an alias just deleted.
        let in_order = self.concurrency_changes();
        if self.store.delete_alias(&function.name, name)? {
            if self.store.delete_provisioned(&function.name, name)? {
                self.apply_provisioned_held(&function.name, &in_order)?;
            }
            self.alias_changed(&function.name, name);
            tracing::info!(function = %function.name, alias = %name, "alias deleted");
        }
        Ok(())
    }

    pub fn list_aliases(
        &self,
        function: &FunctionRef,
        query: &ListAliasesQuery,
    ) -> Result<ListAliasesResponse, ApiError> {
        let mut violations = Violations::new();
        let max_items = parse_max_items(query.max_items.as_deref(), &mut violations)?;
        if let Some(version) = &query.function_version {
            violations.length("functionVersion", version, 1, 1024);
            violations.pattern(
                "functionVersion",
                version,
                lamina_model::alias::VERSION_WITH_LATEST_PUBLISHED,
            );
        }
        violations.into_result().map_err(RequestError::from)?;
        self.unqualified(function)?;
        let mut aliases = self
            .store
            .list_aliases(
                &function.name,
                query.function_version.as_deref(),
                query.marker.as_deref(),
                max_items + 1,
            )?
            .ok_or_else(|| ApiError::FunctionNotFound {
                arn: self.account.function_arn(&function.name),
            })?;
        let next_marker = if aliases.len() > max_items {
            aliases.truncate(max_items);
            aliases.last().map(|last| last.name.clone())
        } else {
            None
        };
        Ok(ListAliasesResponse {
            next_marker,
            aliases: aliases
                .iter()
                .map(|a| a.configuration(&self.account))
                .collect(),
        })
    }

    /// Turns the `Layers` member of a create or update into references to stored layer
    /// versions, with AWS's checks: same region, one version per layer, versions exist.
    fn resolve_layers(&self, arns: &[String]) -> Result<Vec<LayerRef>, ApiError> {
        let parsed: Vec<LayerVersionArn> = arns
            .iter()
            .map(|arn| LayerVersionArn::parse(arn).ok_or_else(|| layer_not_found(arn)))
            .collect::<Result<_, _>>()?;
        if let Some(foreign) = parsed.iter().find(|l| l.region != self.account.region) {
            tracing::debug!(region = %foreign.region, "layer in another region");
            return Err(RequestError::InvalidParameter(format!(
                "Layers are not in the same region as the function. Layers are expected to be \
                 in region {}.",
                self.account.region
            ))
            .into());
        }
        for (i, first) in parsed.iter().enumerate() {
            if let Some(j) = parsed[i + 1..]
                .iter()
                .position(|other| other.layer_arn() == first.layer_arn())
            {
                return Err(RequestError::InvalidParameter(format!(
                    "Two different versions of the same layer are not allowed to be referenced \
                     in the same function. {} and {} are versions of the same layer.",
                    arns[i],
                    arns[i + 1 + j]
                ))
                .into());
            }
        }
        let mut layers = Vec::with_capacity(parsed.len());
        for (arn, layer) in arns.iter().zip(&parsed) {
            let stored = if layer.account_id == self.account.account_id {
                self.store.get_layer_version(&layer.name, layer.version)?
            } else {
                None
            };
            let stored = stored.ok_or_else(|| layer_not_found(arn))?;
            layers.push(LayerRef {
                arn: arn.clone(),
                code_size: stored.code.size,
                sha256_hex: stored.code.sha256_hex,
                unzipped_size: stored.code.unzipped_size,
            });
        }
        Ok(layers)
    }

    /// The layer a request path names; `None` if its ARN names another region or account,
    /// where no layer of this server can be.
    fn layer_name(&self, raw: &str) -> Result<Option<LayerName>, ApiError> {
        let mut violations = Violations::new();
        let parsed = LayerName::parse(raw, &mut violations);
        violations.into_result().map_err(RequestError::from)?;
        let parsed = parsed.expect("a name without violations was parsed");
        Ok(parsed.is_local_to(&self.account).then_some(parsed))
    }

    /// PublishLayerVersion: stores the zip and the next version of the layer.
    pub fn publish_layer_version(
        &self,
        raw_name: &str,
        request: PublishLayerVersionRequest,
    ) -> Result<LayerVersion, ApiError> {
        request.validate()?;
        let name = self
            .layer_name(raw_name)?
            .ok_or(ApiError::ResourceNotFound)?;
        let content = request.content.clone().unwrap_or_default();
        let zip = Self::zip_from_source(content.zip_file.as_deref(), content.s3_bucket.as_deref())?;
        let _gc_guard = self.code_gc.read().unwrap_or_else(|p| p.into_inner());
        let code = self.store_code(&zip)?;
        let published = self.store.publish_layer_version(&LayerVersion {
            layer_name: name.name,
            version: 0,
            description: request.description.unwrap_or_default(),
            created_date: now(),
            compatible_runtimes: request.compatible_runtimes,
            compatible_architectures: request.compatible_architectures,
            license_info: request.license_info,
            code,
        })?;
        tracing::info!(layer = %published.layer_name, version = published.version, "layer version published");
        Ok(published)
    }

    fn find_layer_version(
        &self,
        raw_name: &str,
        raw_version: &str,
    ) -> Result<LayerVersion, ApiError> {
        let name = self.layer_name(raw_name)?;
        let version = parse_layer_version_number(raw_version)?;
        match name {
            Some(name) => self.store.get_layer_version(&name.name, version)?,
            None => None,
        }
        .ok_or(ApiError::ResourceNotFound)
    }

    pub fn get_layer_version(
        &self,
        raw_name: &str,
        raw_version: &str,
    ) -> Result<LayerVersion, ApiError> {
        self.find_layer_version(raw_name, raw_version)
    }

    pub fn get_layer_version_by_arn(&self, arn: Option<&str>) -> Result<LayerVersion, ApiError> {
        let mut violations = Violations::new();
        lamina_model::function::require(&mut violations, "arn", &arn);
        if let Some(arn) = arn {
            violations.length("arn", arn, 1, 140);
            violations.pattern("arn", arn, LAYER_VERSION_ARN_QUERY_PATTERN);
        }
        violations.into_result().map_err(RequestError::from)?;
        let parsed = arn
            .and_then(LayerVersionArn::parse)
            .ok_or(ApiError::ResourceNotFound)?;
        if parsed.region != self.account.region || parsed.account_id != self.account.account_id {
            return Err(ApiError::ResourceNotFound);
        }
        self.store
            .get_layer_version(&parsed.name, parsed.version)?
            .ok_or(ApiError::ResourceNotFound)
    }

    /// ListLayers: each layer with its newest version matching the filters.
    pub fn list_layers(&self, query: &ListLayersQuery) -> Result<ListLayersResponse, ApiError> {
        let mut violations = Violations::new();
        let max_items = parse_layer_max_items(query.max_items.as_deref(), &mut violations)?;
        check_list_filters(
            query.compatible_runtime.as_deref(),
            query.compatible_architecture.as_deref(),
            &mut violations,
        );
        violations.into_result().map_err(RequestError::from)?;
        let mut layers: Vec<LayersListItem> = Vec::new();
        for version in self.store.list_all_layer_versions()? {
            if layers
                .last()
                .is_some_and(|l| l.layer_name == version.layer_name)
                || query
                    .marker
                    .as_deref()
                    .is_some_and(|m| version.layer_name.as_str() <= m)
                || !version.matches(
                    query.compatible_runtime.as_deref(),
                    query.compatible_architecture.as_deref(),
                )
            {
                continue;
            }
            layers.push(LayersListItem {
                layer_name: version.layer_name.clone(),
                layer_arn: version.layer_arn(&self.account),
                latest_matching_version: version.list_item(&self.account),
            });
        }
        let next_marker = (layers.len() > max_items).then(|| {
            layers.truncate(max_items);
            layers
                .last()
                .map(|l| l.layer_name.clone())
                .unwrap_or_default()
        });
        Ok(ListLayersResponse {
            next_marker,
            layers,
        })
    }

    /// ListLayerVersions: newest first; an unknown layer has none.
    pub fn list_layer_versions(
        &self,
        raw_name: &str,
        query: &ListLayersQuery,
    ) -> Result<ListLayerVersionsResponse, ApiError> {
        let mut violations = Violations::new();
        let max_items = parse_layer_max_items(query.max_items.as_deref(), &mut violations)?;
        check_list_filters(
            query.compatible_runtime.as_deref(),
            query.compatible_architecture.as_deref(),
            &mut violations,
        );
        let name = LayerName::parse(raw_name, &mut violations);
        violations.into_result().map_err(RequestError::from)?;
        let name = name.filter(|n| n.is_local_to(&self.account));
        let before: Option<u64> = query.marker.as_deref().and_then(|m| m.parse().ok());
        let mut versions: Vec<LayerVersionsListItem> = match name {
            Some(name) => self.store.list_layer_versions(&name.name)?,
            None => Vec::new(),
        }
        .into_iter()
        .filter(|v| before.is_none_or(|b| v.version < b))
        .filter(|v| {
            v.matches(
                query.compatible_runtime.as_deref(),
                query.compatible_architecture.as_deref(),
            )
        })
        .map(|v| v.list_item(&self.account))
        .collect();
        let next_marker = (versions.len() > max_items).then(|| {
            versions.truncate(max_items);
            versions
                .last()
                .map(|v| v.version.to_string())
                .unwrap_or_default()
        });
        Ok(ListLayerVersionsResponse {
            next_marker,
            layer_versions: versions,
        })
    }

    /// DeleteLayerVersion: idempotent, as on AWS. Functions that use the version keep it.
    pub fn delete_layer_version(&self, raw_name: &str, raw_version: &str) -> Result<(), ApiError> {
        let name = self.layer_name(raw_name)?;
        let version = parse_layer_version_number(raw_version)?;
        if let Some(name) = name
            && self.store.delete_layer_version(&name.name, version)?
        {
            tracing::info!(layer = %name.name, version, "layer version deleted");
            self.collect_unused_code();
        }
        Ok(())
    }

    /// The key of the policy a function reference names: empty for the function itself
    /// (`$LATEST` included), else the version or alias.
    fn policy_qualifier(function: &FunctionRef) -> &str {
        match function.qualifier_kind() {
            Qualifier::Latest => "",
            Qualifier::Version(q) | Qualifier::Alias(q) => q,
        }
    }

    /// The ARN statements of this policy name as their `Resource`.
    fn policy_resource(&self, function: &FunctionRef) -> String {
        let qualifier = Self::policy_qualifier(function);
        self.account
            .qualified_function_arn(&function.name, (!qualifier.is_empty()).then_some(qualifier))
    }

    /// The revision of the function, version or alias a policy belongs to, or AWS's
    /// not-found error for it.
    fn policy_target_revision(&self, function: &FunctionRef) -> Result<String, ApiError> {
        match function.qualifier_kind() {
            Qualifier::Latest => Ok(self
                .store
                .get_version(&function.name, LATEST)?
                .ok_or_else(|| ApiError::FunctionNotFound {
                    arn: self.account.function_arn(&function.name),
                })?
                .revision_id),
            Qualifier::Version(version) => {
                if self.store.get_version(&function.name, LATEST)?.is_none() {
                    return Err(ApiError::FunctionNotFound {
                        arn: self.account.function_arn(&function.name),
                    });
                }
                Ok(self
                    .store
                    .get_version(&function.name, version)?
                    .ok_or_else(|| self.not_found(function))?
                    .revision_id)
            }
            Qualifier::Alias(alias) => Ok(self
                .store
                .get_alias(&function.name, alias)?
                .ok_or_else(|| ApiError::CannotFindAlias {
                    arn: self.alias_arn(function, alias),
                })?
                .revision_id),
        }
    }

    fn read_policy(
        stored: Option<StoredPolicy>,
    ) -> Result<Option<(String, PolicyDocument)>, ApiError> {
        stored
            .map(|p| {
                PolicyDocument::from_json(&p.document)
                    .map(|document| (p.revision_id, document))
                    .map_err(|e| ApiError::Internal {
                        detail: format!("stored policy is unreadable: {e}"),
                    })
            })
            .transpose()
    }

    fn stored(document: &PolicyDocument) -> Option<StoredPolicy> {
        (!document.statements.is_empty()).then(|| StoredPolicy {
            revision_id: new_revision_id(),
            document: document.to_json(),
        })
    }

    /// AddPermission: adds a statement to the policy of a function, version or alias.
    pub fn add_permission(
        &self,
        function: &FunctionRef,
        request: AddPermissionRequest,
    ) -> Result<StatementResponse, ApiError> {
        let statement = request.statement(&self.policy_resource(function))?;
        if function.qualifier.as_deref() == Some(LATEST) {
            return Err(RequestError::InvalidParameter(
                "We currently do not support adding policies for $LATEST.".to_owned(),
            )
            .into());
        }
        let qualifier = Self::policy_qualifier(function);
        for _ in 0..POLICY_ATTEMPTS {
            let target_revision = self.policy_target_revision(function)?;
            let current =
                Self::read_policy(self.store.get_function_policy(&function.name, qualifier)?)?;
            let expected_revision = current.as_ref().map(|(r, _)| r.clone());
            if let Some(given) = &request.revision_id
                && *given != expected_revision.clone().unwrap_or(target_revision)
            {
                return Err(ApiError::PolicyRevisionMismatch { layer: false });
            }
            let mut document = current.map(|(_, d)| d).unwrap_or_default();
            if document.statement(&statement.sid).is_some() {
                return Err(ApiError::StatementAlreadyExists { sid: statement.sid });
            }
            document.statements.push(statement.clone());
            match self.store.put_function_policy(
                &function.name,
                qualifier,
                expected_revision.as_deref(),
                Self::stored(&document).as_ref(),
            ) {
                Ok(()) => {
                    tracing::info!(function = %function.name, qualifier, sid = %statement.sid, "permission added");
                    return Ok(StatementResponse {
                        statement: statement.to_json(),
                        revision_id: None,
                    });
                }
                Err(StoreError::PolicyRevisionMismatch { .. }) if request.revision_id.is_none() => {
                    continue;
                }
                Err(error) => return Err(self.policy_write_error(function, error)),
            }
        }
        Err(ApiError::UpdateInProgress {
            arn: self.policy_resource(function),
        })
    }

    /// Maps the store's refusal of a policy write (the resource went away meanwhile).
    fn policy_write_error(&self, function: &FunctionRef, error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound { .. } => ApiError::FunctionNotFound {
                arn: self.account.function_arn(&function.name),
            },
            StoreError::VersionNotFound { .. } => self.not_found(function),
            StoreError::AliasNotFound { alias, .. } => ApiError::CannotFindAlias {
                arn: self.alias_arn(function, &alias),
            },
            StoreError::PolicyRevisionMismatch { .. } => {
                ApiError::PolicyRevisionMismatch { layer: false }
            }
            other => other.into(),
        }
    }

    /// RemovePermission: removes one statement; the last one takes the policy along.
    pub fn remove_permission(
        &self,
        function: &FunctionRef,
        sid: &str,
        revision_id: Option<&str>,
    ) -> Result<(), ApiError> {
        check_statement_id(sid, true)?;
        let qualifier = Self::policy_qualifier(function);
        for _ in 0..POLICY_ATTEMPTS {
            match self.policy_target_revision(function) {
                Err(ApiError::FunctionNotFound { .. }) if function.qualifier.is_none() => {
                    return Err(ApiError::NoPolicyFor {
                        arn: self.account.function_arn(&function.name),
                    });
                }
                Err(error) => return Err(error),
                Ok(_) => {}
            }
            let (current_revision, mut document) =
                Self::read_policy(self.store.get_function_policy(&function.name, qualifier)?)?
                    .ok_or(ApiError::PolicyNotFound)?;
            if revision_id.is_some_and(|given| given != current_revision) {
                return Err(ApiError::PolicyRevisionMismatch { layer: false });
            }
            let before = document.statements.len();
            document.statements.retain(|s| s.sid != sid);
            if document.statements.len() == before {
                return Err(ApiError::StatementNotFound {
                    sid: sid.to_owned(),
                });
            }
            match self.store.put_function_policy(
                &function.name,
                qualifier,
                Some(&current_revision),
                Self::stored(&document).as_ref(),
            ) {
                Ok(()) => {
                    tracing::info!(function = %function.name, qualifier, sid, "permission removed");
                    return Ok(());
                }
                Err(StoreError::PolicyRevisionMismatch { .. }) if revision_id.is_none() => continue,
                Err(error) => return Err(self.policy_write_error(function, error)),
            }
        }
        Err(ApiError::UpdateInProgress {
            arn: self.policy_resource(function),
        })
    }

    /// GetPolicy: the policy of a function, version or alias.
    pub fn get_policy(&self, function: &FunctionRef) -> Result<PolicyResponse, ApiError> {
        let qualifier = Self::policy_qualifier(function);
        let stored = self
            .store
            .get_function_policy(&function.name, qualifier)?
            .ok_or(ApiError::ResourceNotFound)?;
        Ok(PolicyResponse {
            policy: stored.document,
            revision_id: stored.revision_id,
        })
    }

    /// Whether the resource policy of `function` (as named: unqualified, a version or an
    /// alias) allows `request`. For callers that are not the account itself (function URLs
    /// with auth type NONE, event sources): a missing function or policy allows nothing.
    pub fn policy_allows(
        &self,
        function: &FunctionRef,
        request: &AccessRequest<'_>,
    ) -> Result<bool, ApiError> {
        let qualifier = Self::policy_qualifier(function);
        Ok(
            Self::read_policy(self.store.get_function_policy(&function.name, qualifier)?)?
                .is_some_and(|(_, document)| document.allows(request)),
        )
    }

    /// The layer version a layer-permission request names, or AWS's error for a missing one.
    fn permission_layer_version(
        &self,
        raw_name: &str,
        raw_version: &str,
    ) -> Result<(String, u64, String), ApiError> {
        let mut violations = Violations::new();
        let name = LayerName::parse(raw_name, &mut violations);
        violations.into_result().map_err(RequestError::from)?;
        let name = name.expect("a name without violations was parsed");
        let version = parse_layer_version_number(raw_version)?;
        let arn = name.version_arn(&self.account, version as i64);
        if !name.is_local_to(&self.account) {
            return Err(ApiError::LayerVersionDoesNotExist { arn });
        }
        Ok((name.name, version, arn))
    }

    fn layer_policy(
        &self,
        name: &str,
        version: u64,
        arn: &str,
    ) -> Result<Option<(String, PolicyDocument)>, ApiError> {
        match self.store.get_layer_version_policy(name, version) {
            Ok(stored) => Self::read_policy(stored),
            Err(StoreError::LayerVersionNotFound { .. }) => {
                Err(ApiError::LayerVersionDoesNotExist {
                    arn: arn.to_owned(),
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Replaces a layer version's policy if it is still at `expected`. `Ok(false)`: it
    /// changed meanwhile and the caller, who named no revision, should read and try again.
    fn write_layer_policy(
        &self,
        (name, version, arn): (&str, u64, &str),
        expected: Option<&str>,
        stored: Option<&StoredPolicy>,
        caller_named_revision: bool,
    ) -> Result<bool, ApiError> {
        match self
            .store
            .put_layer_version_policy(name, version, expected, stored)
        {
            Ok(()) => Ok(true),
            Err(StoreError::PolicyRevisionMismatch { .. }) if !caller_named_revision => Ok(false),
            Err(StoreError::PolicyRevisionMismatch { .. }) => {
                Err(ApiError::PolicyRevisionMismatch { layer: true })
            }
            Err(StoreError::LayerVersionNotFound { .. }) => {
                Err(ApiError::LayerVersionDoesNotExist {
                    arn: arn.to_owned(),
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// AddLayerVersionPermission.
    pub fn add_layer_version_permission(
        &self,
        raw_name: &str,
        raw_version: &str,
        request: AddLayerVersionPermissionRequest,
        revision_id: Option<&str>,
    ) -> Result<StatementResponse, ApiError> {
        let (name, version, arn) = self.permission_layer_version(raw_name, raw_version)?;
        let statement: Statement = request.statement(&arn)?;
        for _ in 0..POLICY_ATTEMPTS {
            let current = self.layer_policy(&name, version, &arn)?;
            let expected = current.as_ref().map(|(r, _)| r.clone());
            if revision_id.is_some_and(|given| Some(given) != expected.as_deref()) {
                return Err(ApiError::PolicyRevisionMismatch { layer: true });
            }
            let mut document = current.map(|(_, d)| d).unwrap_or_default();
            if document.statement(&statement.sid).is_some() {
                return Err(ApiError::StatementAlreadyExists { sid: statement.sid });
            }
            document.statements.push(statement.clone());
            let stored = Self::stored(&document);
            if self.write_layer_policy(
                (&name, version, &arn),
                expected.as_deref(),
                stored.as_ref(),
                revision_id.is_some(),
            )? {
                return Ok(StatementResponse {
                    statement: statement.to_json(),
                    revision_id: stored.map(|s| s.revision_id),
                });
            }
        }
        Err(ApiError::UpdateInProgress { arn })
    }

    /// RemoveLayerVersionPermission.
    pub fn remove_layer_version_permission(
        &self,
        raw_name: &str,
        raw_version: &str,
        sid: &str,
        revision_id: Option<&str>,
    ) -> Result<(), ApiError> {
        check_statement_id(sid, false)?;
        let (name, version, arn) = self.permission_layer_version(raw_name, raw_version)?;
        for _ in 0..POLICY_ATTEMPTS {
            let (current, mut document) = self
                .layer_policy(&name, version, &arn)?
                .ok_or(ApiError::PolicyNotFound)?;
            if revision_id.is_some_and(|given| given != current) {
                return Err(ApiError::PolicyRevisionMismatch { layer: true });
            }
            let before = document.statements.len();
            document.statements.retain(|s| s.sid != sid);
            if document.statements.len() == before {
                return Err(ApiError::StatementNotFound {
                    sid: sid.to_owned(),
                });
            }
            if self.write_layer_policy(
                (&name, version, &arn),
                Some(&current),
                Self::stored(&document).as_ref(),
                revision_id.is_some(),
            )? {
                return Ok(());
            }
        }
        Err(ApiError::UpdateInProgress { arn })
    }

    /// GetLayerVersionPolicy.
    pub fn get_layer_version_policy(
        &self,
        raw_name: &str,
        raw_version: &str,
    ) -> Result<PolicyResponse, ApiError> {
        let (name, version, arn) = self.permission_layer_version(raw_name, raw_version)?;
        let (revision_id, document) = self
            .layer_policy(&name, version, &arn)?
            .ok_or(ApiError::PolicyNotFound)?;
        Ok(PolicyResponse {
            policy: document.to_json(),
            revision_id,
        })
    }

    /// Removes zips and extracted trees no version uses any more. Failures are logged and
    /// left for the next collection: they never fail the request that triggered it.
    pub fn collect_unused_code(&self) {
        let _exclusive = self.code_gc.write().unwrap_or_else(|p| p.into_inner());
        let result = self
            .store
            .referenced_code()
            .and_then(|mut keep| {
                keep.extend(
                    self.store
                        .referenced_layer_lists()?
                        .iter()
                        .map(|layers| CodeStore::opt_key(layers)),
                );
                Ok(keep)
            })
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

    /// The function a concurrency operation names: reservations belong to the function,
    /// not to a version or alias.
    fn function_for_concurrency(&self, function: &FunctionRef) -> Result<String, ApiError> {
        if function.qualifier.is_some() {
            return Err(RequestError::InvalidParameter(
                "Concurrency can only be set on the function, not on a version or alias. \
                 Please specify a function name or an unqualified function ARN."
                    .to_owned(),
            )
            .into());
        }
        Ok(function.name.clone())
    }

    pub fn put_function_concurrency(
        &self,
        function: &FunctionRef,
        reserved: Option<i64>,
    ) -> Result<Concurrency, ApiError> {
        let name = self.function_for_concurrency(function)?;
        let mut violations = Violations::new();
        let reserved = match reserved {
            None => {
                violations.push(
                    "reservedConcurrentExecutions",
                    Some("null"),
                    "Member must not be null",
                );
                0
            }
            Some(value) => {
                violations.range("reservedConcurrentExecutions", value, 0, i64::MAX);
                value
            }
        };
        violations.into_result().map_err(RequestError::from)?;
        // Negative values were refused above; beyond u32 no account limit could hold it.
        let reserved = u32::try_from(reserved).unwrap_or(u32::MAX);
        // Under the lock from the check to the write, so a concurrent
        // PutProvisionedConcurrencyConfig cannot slip under the new reservation.
        let _in_order = self.concurrency_changes();
        let provisioned: u64 = self
            .store
            .provisioned(Some(&name))?
            .iter()
            .map(|c| u64::from(c.requested))
            .sum();
        if u64::from(reserved) < provisioned {
            return Err(ApiError::ReservedBelowProvisioned {
                reserved,
                provisioned,
            });
        }
        // The provisioned concurrency of other functions without a reservation is taken
        // out of the account limit too: what reservations may share is what is left.
        let provisioned_elsewhere = self.unreserved_provisioned(Some(&name))?;
        let limit_for_reservations = u64::from(self.concurrent_executions)
            .saturating_sub(provisioned_elsewhere)
            .try_into()
            .unwrap_or(u32::MAX);
        if !self.store.set_reserved_concurrency(
            &name,
            Some(reserved),
            limit_for_reservations,
            self.minimum_unreserved(),
        )? {
            return Err(self.not_found(function));
        }
        tracing::info!(function = %name, reserved, "reserved concurrency set");
        if let Some(listener) = &self.change_listener {
            listener.reservation_changed(&name, Some(reserved));
        }
        Ok(Concurrency {
            reserved_concurrent_executions: Some(reserved),
        })
    }

    pub fn get_function_concurrency(
        &self,
        function: &FunctionRef,
    ) -> Result<Concurrency, ApiError> {
        let name = self.function_for_concurrency(function)?;
        match self.store.reserved_concurrency(&name)? {
            None => Err(self.not_found(function)),
            Some(reserved) => Ok(Concurrency {
                reserved_concurrent_executions: reserved,
            }),
        }
    }

    pub fn delete_function_concurrency(&self, function: &FunctionRef) -> Result<(), ApiError> {
        let name = self.function_for_concurrency(function)?;
        let _in_order = self.concurrency_changes();
        if !self.store.set_reserved_concurrency(&name, None, 0, 0)? {
            return Err(self.not_found(function));
        }
        tracing::info!(function = %name, "reserved concurrency removed");
        if let Some(listener) = &self.change_listener {
            listener.reservation_changed(&name, None);
        }
        Ok(())
    }

    pub fn account_settings(&self) -> Result<AccountSettings, ApiError> {
        let usage = self.store.account_usage()?;
        Ok(AccountSettings {
            account_limit: AccountLimit {
                total_code_size: TOTAL_CODE_SIZE_LIMIT,
                code_size_unzipped: self.code_limits.max_unzipped_bytes,
                code_size_zipped: self.code_limits.max_zipped_bytes,
                concurrent_executions: self.concurrent_executions,
                unreserved_concurrent_executions: self.unreserved_concurrency(None)? as u32,
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

/// `MaxItems` of the list operations: 1 to 10,000 per the model; a page holds at most 50.
fn parse_max_items(raw: Option<&str>, violations: &mut Violations) -> Result<usize, ApiError> {
    match raw {
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) => {
                violations.range("maxItems", n, 1, 10000);
                Ok(n.clamp(1, LIST_PAGE_LIMIT as i64) as usize)
            }
            Err(_) => Err(ApiError::MalformedBody {
                detail: format!("MaxItems '{raw}' is not an integer"),
            }),
        },
        None => Ok(LIST_PAGE_LIMIT),
    }
}

/// `MaxItems` of the layer list operations: 1 to 50.
fn parse_layer_max_items(
    raw: Option<&str>,
    violations: &mut Violations,
) -> Result<usize, ApiError> {
    match raw {
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) => {
                violations.range("maxItems", n, 1, LIST_PAGE_LIMIT as i64);
                Ok(n.clamp(1, LIST_PAGE_LIMIT as i64) as usize)
            }
            Err(_) => Err(ApiError::MalformedBody {
                detail: format!("MaxItems '{raw}' is not an integer"),
            }),
        },
        None => Ok(LIST_PAGE_LIMIT),
    }
}

/// The fresh identifiers and timestamp a publish needs.
fn publish_spec(description: Option<String>) -> PublishSpec {
    PublishSpec {
        description,
        version_revision_id: new_revision_id(),
        latest_revision_id: new_revision_id(),
        last_modified: now(),
    }
}

/// AWS's answer to changing anything but `$LATEST`.
fn latest_only() -> ApiError {
    RequestError::InvalidParameter(
        "Current operation does not support versions other than $LATEST. Please set the \
         version to $LATEST or do not set a version in your request."
            .to_owned(),
    )
    .into()
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

/// AWS's answer to a function that references a layer version it cannot find.
fn layer_not_found(arn: &str) -> ApiError {
    RequestError::InvalidParameter(format!("Layer version {arn} does not exist.")).into()
}

/// The 250 MB unzipped quota covers the function's code and all its layers together.
fn check_unzipped_total(code: &CodeRef, layers: &[LayerRef]) -> Result<(), ApiError> {
    let limit = CodeLimits::LAMBDA.max_unzipped_bytes;
    let total = code.unzipped_size + layers.iter().map(|l| l.unzipped_size).sum::<u64>();
    if !layers.is_empty() && total > limit {
        return Err(RequestError::InvalidParameter(format!(
            "Function code combined with layers exceeds the maximum allowed size of {limit} \
             bytes. The actual size is {total} bytes."
        ))
        .into());
    }
    Ok(())
}

/// The layer version number of a request path; AWS refuses numbers below 1.
fn parse_layer_version_number(raw: &str) -> Result<u64, ApiError> {
    let number: i64 = raw.parse().map_err(|_| ApiError::MalformedBody {
        detail: format!("VersionNumber '{raw}' is not an integer"),
    })?;
    if number < 1 {
        return Err(version_below_one().into());
    }
    Ok(number as u64)
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

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_model::policy::Caller;
    use lamina_store::SqliteStore;

    fn control_plane() -> (ControlPlane, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let account = Account {
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
        };
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let code = Arc::new(CodeStore::open(dir.path()).unwrap());
        (ControlPlane::new(account, store, code), dir)
    }

    fn function(name: &str, qualifier: Option<&str>) -> FunctionRef {
        FunctionRef::named(name, qualifier)
    }

    #[test]
    fn policy_allows_evaluates_the_policy_of_the_resource_named() {
        let (cp, _dir) = control_plane();
        published(&cp, "f");
        cp.add_permission(
            &function("f", None),
            serde_json::from_value(serde_json::json!({
                "StatementId": "s3",
                "Action": "lambda:InvokeFunction",
                "Principal": "s3.amazonaws.com",
                "SourceArn": "arn:aws:s3:::uploads"
            }))
            .unwrap(),
        )
        .unwrap();
        let resource = "arn:aws:lambda:us-east-1:123456789012:function:f";
        let from_bucket = AccessRequest {
            source_arn: Some("arn:aws:s3:::uploads"),
            ..AccessRequest::new(
                Caller::Service("s3.amazonaws.com"),
                "lambda:InvokeFunction",
                resource,
            )
        };
        assert!(
            cp.policy_allows(&function("f", None), &from_bucket)
                .unwrap()
        );
        assert!(
            !cp.policy_allows(
                &function("f", None),
                &AccessRequest {
                    source_arn: Some("arn:aws:s3:::other"),
                    ..from_bucket
                }
            )
            .unwrap()
        );
        // Version 1 has no policy of its own; a missing function allows nothing.
        let version_resource = format!("{resource}:1");
        assert!(
            !cp.policy_allows(
                &function("f", Some("1")),
                &AccessRequest {
                    resource: &version_resource,
                    ..from_bucket
                }
            )
            .unwrap()
        );
        assert!(
            !cp.policy_allows(&function("missing", None), &from_bucket)
                .unwrap()
        );
    }

    fn published(cp: &ControlPlane, name: &str) {
        cp.create_function(
            serde_json::from_value(serde_json::json!({
                "FunctionName": name,
                "Role": "arn:aws:iam::123456789012:role/r",
                "Runtime": "provided.al2023",
                "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
                "Publish": true
            }))
            .unwrap(),
        )
        .unwrap();
    }

    /// Two Puts racing for the same unreserved headroom (900 of the default 1,000, with
    /// 100 kept unreserved): each fits alone, both do not, so at most one may pass. Many
    /// rounds, so that without the check and the write under one lock both would pass
    /// in some of them.
    #[test]
    fn racing_provisioned_puts_cannot_both_take_the_same_headroom() {
        let (cp, _dir) = control_plane();
        published(&cp, "a");
        published(&cp, "b");
        for round in 0..200 {
            let start = std::sync::Barrier::new(2);
            let passed = std::thread::scope(|scope| {
                let racers: Vec<_> = ["a", "b"]
                    .into_iter()
                    .map(|name| {
                        let (cp, start) = (&cp, &start);
                        scope.spawn(move || {
                            start.wait();
                            cp.put_provisioned_concurrency(&function(name, Some("1")), Some(500))
                        })
                    })
                    .collect();
                racers
                    .into_iter()
                    .map(|racer| racer.join().unwrap())
                    .filter(Result::is_ok)
                    .count()
            });
            assert_eq!(passed, 1, "round {round}: exactly one Put fits");
            assert!(cp.unreserved_concurrency(None).unwrap() >= 100);
            for name in ["a", "b"] {
                cp.delete_provisioned_concurrency(&function(name, Some("1")))
                    .unwrap();
            }
        }
    }
}
