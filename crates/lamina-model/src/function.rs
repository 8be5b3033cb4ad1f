//! Functions: what Lamina stores about a function version, the request bodies that create
//! and change one, and the `FunctionConfiguration` shape AWS answers with.
//!
//! Create and update are different request types (a create fills defaults, an update
//! changes only what it names) but share one [`SettingsInput`], the members both accept,
//! and one validation of them, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arn::{Account, FunctionRef, NameShape};
use crate::runtime::{self, RuntimeRejection};
use crate::validation::{ValidationError, Violations, patterns};

/// The qualifier of the unpublished, editable version of every function.
pub const LATEST: &str = "$LATEST";

pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3;
pub const MAX_TIMEOUT_SECONDS: i64 = 900;
pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const MIN_MEMORY_MB: i64 = 128;
pub const MAX_MEMORY_MB: i64 = 10240;
pub const DEFAULT_EPHEMERAL_STORAGE_MB: u32 = 512;
pub const MIN_EPHEMERAL_STORAGE_MB: i64 = 512;
pub const MAX_EPHEMERAL_STORAGE_MB: i64 = 10240;
/// AWS measures the variables serialized as a JSON object.
pub const MAX_ENVIRONMENT_BYTES: usize = 4096;
pub const MAX_LAYERS: usize = 5;

/// Variables the runtime sets itself; AWS refuses functions that try to set them.
pub const RESERVED_ENVIRONMENT_KEYS: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// A request that cannot be carried out as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Broke the model's constraints (AWS's `ValidationException`).
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Well-formed but not acceptable (AWS's `InvalidParameterValueException`).
    #[error("{0}")]
    InvalidParameter(String),
    /// A member AWS accepts that Lamina does not implement yet; refused rather than ignored
    /// so nobody believes it took effect.
    #[error("{feature} is not supported by Lamina yet")]
    NotImplemented { feature: String },
}

impl From<RuntimeRejection> for RequestError {
    fn from(rejection: RuntimeRejection) -> Self {
        RequestError::InvalidParameter(rejection.message())
    }
}

/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`.
fn is_function_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    matches!(parts.as_slice(), ["arn", _, "lambda", _, _, "function", name, ..] if !name.is_empty() && parts.len() <= 8)
}

fn not_implemented(feature: &str) -> RequestError {
    RequestError::NotImplemented {
        feature: feature.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Stored records
// ---------------------------------------------------------------------------------------

/// One version of a function (`$LATEST` or a published number) as Lamina stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionVersion {
    pub function_name: String,
    pub version: String,
    pub settings: FunctionSettings,
    pub code: CodeRef,
    pub architecture: String,
    pub revision_id: String,
    /// Already in AWS's format (`2024-05-01T12:34:56.789+0000`).
    pub last_modified: String,
}

/// Everything UpdateFunctionConfiguration can change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSettings {
    pub runtime: Option<String>,
    pub role: String,
    pub handler: Option<String>,
    pub description: String,
    pub timeout_seconds: u32,
    pub memory_mb: u32,
    pub ephemeral_storage_mb: u32,
    /// `None` when the function never had an `Environment`; AWS then omits the member.
    pub environment: Option<BTreeMap<String, String>>,
    pub kms_key_arn: Option<String>,
    pub tracing_mode: String,
    pub layers: Vec<LayerRef>,
    pub logging: LoggingSettings,
    pub dead_letter_target_arn: Option<String>,
}

/// A layer version a function references. The code's digest is kept with the reference,
/// so a function keeps running with a layer version that was deleted after it was added,
/// as on AWS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub arn: String,
    pub code_size: u64,
    /// Hex SHA-256 of the layer's zip: its key in the code store.
    #[serde(default)]
    pub sha256_hex: String,
    #[serde(default)]
    pub unzipped_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggingSettings {
    pub log_format: String,
    pub log_group: String,
    pub application_log_level: Option<String>,
    pub system_log_level: Option<String>,
}

/// The deployment package a version runs: a zip in the content-addressed code store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef {
    /// Hex SHA-256 of the zip: its key in the code store.
    pub sha256_hex: String,
    /// Zipped size in bytes (`CodeSize`).
    pub size: u64,
    pub unzipped_size: u64,
}

impl CodeRef {
    /// `CodeSha256` as AWS prints it: the base64 of the zip's SHA-256.
    pub fn code_sha256(&self) -> String {
        use base64::Engine as _;
        let raw: Vec<u8> = (0..self.sha256_hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.sha256_hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

impl FunctionSettings {
    /// The defaults AWS fills in for a function created with only the required members.
    pub fn defaults(function_name: &str, role: String) -> Self {
        FunctionSettings {
            runtime: None,
            role,
            handler: None,
            description: String::new(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            memory_mb: DEFAULT_MEMORY_MB,
            ephemeral_storage_mb: DEFAULT_EPHEMERAL_STORAGE_MB,
            environment: None,
            kms_key_arn: None,
            tracing_mode: "PassThrough".to_owned(),
            layers: Vec::new(),
            logging: LoggingSettings {
                log_format: "Text".to_owned(),
                log_group: format!("/aws/lambda/{function_name}"),
                application_log_level: None,
                system_log_level: None,
            },
            dead_letter_target_arn: None,
        }
    }

    /// Applies the members `input` names; validation happened before.
    fn apply(&mut self, input: &SettingsInput) {
        if let Some(runtime) = &input.runtime {
            self.runtime = Some(runtime.clone());
        }
        if let Some(role) = &input.role {
            self.role = role.clone();
        }
        if let Some(handler) = &input.handler {
            self.handler = Some(handler.clone());
        }
        if let Some(description) = &input.description {
            self.description = description.clone();
        }
        if let Some(timeout) = input.timeout {
            self.timeout_seconds = timeout as u32;
        }
        if let Some(memory) = input.memory_size {
            self.memory_mb = memory as u32;
        }
        if let Some(storage) = input.ephemeral_storage.as_ref().and_then(|e| e.size) {
            self.ephemeral_storage_mb = storage as u32;
        }
        if let Some(environment) = &input.environment {
            self.environment = Some(environment.variables.clone().unwrap_or_default());
        }
        if let Some(kms) = &input.kms_key_arn {
            self.kms_key_arn = (!kms.is_empty()).then(|| kms.clone());
        }
        if let Some(mode) = input.tracing_config.as_ref().and_then(|t| t.mode.clone()) {
            self.tracing_mode = mode;
        }
        if let Some(logging) = &input.logging_config {
            if let Some(format) = &logging.log_format {
                self.logging.log_format = format.clone();
            }
            if let Some(group) = &logging.log_group {
                self.logging.log_group = group.clone();
            }
            if logging.application_log_level.is_some() {
                self.logging.application_log_level = logging.application_log_level.clone();
            }
            if logging.system_log_level.is_some() {
                self.logging.system_log_level = logging.system_log_level.clone();
            }
        }
        if let Some(dlq) = &input.dead_letter_config {
            self.dead_letter_target_arn = dlq.target_arn.clone().filter(|arn| !arn.is_empty());
        }
    }

    /// Checks that hold across members, after an update was applied: a zip function
    /// needs a runtime and, unless it brings its own `bootstrap`, a handler.
    fn check_complete(&self) -> Result<(), RequestError> {
        let runtime = self.runtime.as_deref().ok_or_else(|| {
            RequestError::InvalidParameter(
                "Runtime and Handler are mandatory parameters for functions created with \
                 deployment packages."
                    .to_owned(),
            )
        })?;
        if self.handler.is_none() && !runtime::is_os_only(runtime) {
            return Err(RequestError::InvalidParameter(
                "Runtime and Handler are mandatory parameters for functions created with \
                 deployment packages."
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

impl FunctionVersion {
    /// Whether this is a published (immutable, numbered) version.
    pub fn is_published(&self) -> bool {
        self.version != LATEST
    }

    /// The `FunctionConfiguration` AWS answers with for this version, named by its own
    /// ARN: unqualified for `$LATEST`, `:N` for a published version.
    pub fn configuration(&self, account: &Account) -> FunctionConfiguration {
        let qualifier = self.is_published().then_some(self.version.as_str());
        self.configuration_as(account, qualifier)
    }

    /// The configuration with `FunctionArn` qualified as the caller named the function:
    /// AWS echoes the qualifier it was asked for (`:$LATEST`, `:7`, `:live`), and answers
    /// an unqualified name with the unqualified ARN.
    pub fn configuration_as(
        &self,
        account: &Account,
        arn_qualifier: Option<&str>,
    ) -> FunctionConfiguration {
        let settings = &self.settings;
        let arn = account.qualified_function_arn(&self.function_name, arn_qualifier);
        FunctionConfiguration {
            function_name: self.function_name.clone(),
            function_arn: arn,
            runtime: settings.runtime.clone(),
            role: settings.role.clone(),
            handler: settings.handler.clone(),
            code_size: self.code.size,
            description: settings.description.clone(),
            timeout: settings.timeout_seconds,
            memory_size: settings.memory_mb,
            last_modified: self.last_modified.clone(),
            code_sha256: self.code.code_sha256(),
            version: self.version.clone(),
            environment: settings
                .environment
                .as_ref()
                .map(|variables| EnvironmentResponse {
                    variables: variables.clone(),
                }),
            kms_key_arn: settings.kms_key_arn.clone(),
            tracing_config: TracingConfigResponse {
                mode: settings.tracing_mode.clone(),
            },
            revision_id: self.revision_id.clone(),
            layers: settings
                .layers
                .iter()
                .map(|layer| LayerResponse {
                    arn: layer.arn.clone(),
                    code_size: layer.code_size,
                })
                .collect(),
            state: "Active".to_owned(),
            last_update_status: "Successful".to_owned(),
            package_type: "Zip".to_owned(),
            architectures: vec![self.architecture.clone()],
            ephemeral_storage: EphemeralStorageResponse {
                size: settings.ephemeral_storage_mb,
            },
            snap_start: SnapStartResponse {
                apply_on: "None".to_owned(),
                optimization_status: "Off".to_owned(),
            },
            logging_config: LoggingConfigResponse {
                log_format: settings.logging.log_format.clone(),
                log_group: settings.logging.log_group.clone(),
                application_log_level: settings.logging.application_log_level.clone(),
                system_log_level: settings.logging.system_log_level.clone(),
            },
            dead_letter_config: settings.dead_letter_target_arn.as_ref().map(|arn| {
                DeadLetterConfigResponse {
                    target_arn: arn.clone(),
                }
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------

/// Members accepted by both CreateFunction and UpdateFunctionConfiguration.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SettingsInput {
    pub runtime: Option<String>,
    pub role: Option<String>,
    pub handler: Option<String>,
    pub description: Option<String>,
    pub timeout: Option<i64>,
    pub memory_size: Option<i64>,
    pub environment: Option<EnvironmentInput>,
    #[serde(rename = "KMSKeyArn")]
    pub kms_key_arn: Option<String>,
    pub tracing_config: Option<TracingConfigInput>,
    pub layers: Option<Vec<String>>,
    pub ephemeral_storage: Option<EphemeralStorageInput>,
    pub logging_config: Option<LoggingConfigInput>,
    pub dead_letter_config: Option<DeadLetterConfigInput>,
    pub vpc_config: Option<VpcConfigInput>,
    pub snap_start: Option<SnapStartInput>,
    pub file_system_configs: Option<Vec<serde_json::Value>>,
    pub image_config: Option<serde_json::Value>,
    pub capacity_provider_config: Option<serde_json::Value>,
    pub durable_config: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnvironmentInput {
    pub variables: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TracingConfigInput {
    pub mode: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EphemeralStorageInput {
    pub size: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoggingConfigInput {
    pub log_format: Option<String>,
    pub application_log_level: Option<String>,
    pub system_log_level: Option<String>,
    pub log_group: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeadLetterConfigInput {
    pub target_arn: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpcConfigInput {
    pub subnet_ids: Option<Vec<String>>,
    pub security_group_ids: Option<Vec<String>>,
    pub ipv6_allowed_for_dual_stack: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapStartInput {
    pub apply_on: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionCodeInput {
    /// Base64, as the JSON protocol carries blobs.
    pub zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    pub s3_key: Option<String>,
    #[serde(rename = "S3ObjectVersion")]
    pub s3_object_version: Option<String>,
    pub image_uri: Option<String>,
    #[serde(rename = "SourceKMSKeyArn")]
    pub source_kms_key_arn: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunctionRequest {
    pub function_name: Option<String>,
    pub code: Option<FunctionCodeInput>,
    pub publish: Option<bool>,
    pub package_type: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub architectures: Option<Vec<String>>,
    pub code_signing_config_arn: Option<String>,
    pub publish_to: Option<String>,
    pub tenancy_config: Option<serde_json::Value>,
    #[serde(flatten)]
    pub settings: SettingsInput,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionConfigurationRequest {
    pub revision_id: Option<String>,
    #[serde(flatten)]
    pub settings: SettingsInput,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateFunctionCodeRequest {
    pub zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    pub s3_key: Option<String>,
    #[serde(rename = "S3ObjectVersion")]
    pub s3_object_version: Option<String>,
    pub image_uri: Option<String>,
    pub publish: Option<bool>,
    pub dry_run: Option<bool>,
    pub revision_id: Option<String>,
    pub architectures: Option<Vec<String>>,
    #[serde(rename = "SourceKMSKeyArn")]
    pub source_kms_key_arn: Option<String>,
    pub publish_to: Option<String>,
}

/// PublishVersion's body.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishVersionRequest {
    pub code_sha256: Option<String>,
    pub description: Option<String>,
    pub revision_id: Option<String>,
    pub publish_to: Option<String>,
}

impl PublishVersionRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        let mut violations = Violations::new();
        if let Some(description) = &self.description {
            violations.length("description", description, 0, 256);
        }
        if let Some(publish_to) = &self.publish_to {
            violations.one_of("publishTo", publish_to, &["LATEST_PUBLISHED"]);
        }
        violations.into_result()?;
        if self.publish_to.is_some() {
            return Err(not_implemented("PublishTo"));
        }
        Ok(())
    }
}

/// The message AWS answers when `CodeSha256` does not match what `$LATEST` runs.
pub fn code_sha256_mismatch(given: &str, current: &str) -> RequestError {
    RequestError::InvalidParameter(format!(
        "CodeSHA256 ({given}) is different from current CodeSHA256 in $LATEST ({current}). \
         Please try again with the CodeSHA256 in $LATEST."
    ))
}

/// Records `Member must not be null` for a required member AWS found missing.
pub fn require<T>(violations: &mut Violations, member: &str, value: &Option<T>) -> bool {
    if value.is_none() {
        violations.push(member, Some("null"), "Member must not be null");
        return false;
    }
    true
}

impl SettingsInput {
    /// Model constraints of every member present, recorded in `violations`.
    pub fn check_constraints(&self, violations: &mut Violations) {
        if let Some(role) = &self.role {
            violations.pattern("role", role, patterns::ROLE_ARN);
        }
        if let Some(handler) = &self.handler {
            violations.length("handler", handler, 0, 128);
            violations.pattern("handler", handler, patterns::HANDLER);
        }
        if let Some(description) = &self.description {
            violations.length("description", description, 0, 256);
        }
        if let Some(timeout) = self.timeout {
            violations.range("timeout", timeout, 1, MAX_TIMEOUT_SECONDS);
        }
        if let Some(memory) = self.memory_size {
            violations.range("memorySize", memory, MIN_MEMORY_MB, MAX_MEMORY_MB);
        }
        if let Some(variables) = self.environment.as_ref().and_then(|e| e.variables.as_ref())
            && variables
                .keys()
                .any(|key| !crate::validation::full_match(patterns::ENVIRONMENT_VARIABLE_NAME, key))
        {
            // The member is sensitive: AWS does not echo it.
            violations.push(
                "environment.variables",
                None,
                &format!(
                    "Map keys must satisfy constraint: [Member must satisfy regular expression \
                     pattern: {}]",
                    patterns::ENVIRONMENT_VARIABLE_NAME
                ),
            );
        }
        if let Some(kms) = &self.kms_key_arn {
            violations.pattern("kMSKeyArn", kms, patterns::KMS_KEY_ARN);
        }
        if let Some(mode) = self.tracing_config.as_ref().and_then(|t| t.mode.as_ref()) {
            violations.one_of("tracingConfig.mode", mode, &["Active", "PassThrough"]);
        }
        if let Some(layers) = &self.layers {
            for (index, layer) in layers.iter().enumerate() {
                let member = format!("layers.{}.member", index + 1);
                violations.length(&member, layer, 1, 140);
                violations.pattern(&member, layer, patterns::LAYER_VERSION_ARN);
            }
        }
        if let Some(storage) = &self.ephemeral_storage {
            match storage.size {
                Some(size) => violations.range(
                    "ephemeralStorage.size",
                    size,
                    MIN_EPHEMERAL_STORAGE_MB,
                    MAX_EPHEMERAL_STORAGE_MB,
                ),
                None => {
                    require::<i64>(violations, "ephemeralStorage.size", &None);
                }
            }
        }
        if let Some(logging) = &self.logging_config {
            if let Some(format) = &logging.log_format {
                violations.one_of("loggingConfig.logFormat", format, &["JSON", "Text"]);
            }
            if let Some(level) = &logging.application_log_level {
                violations.one_of(
                    "loggingConfig.applicationLogLevel",
                    level,
                    &["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"],
                );
            }
            if let Some(level) = &logging.system_log_level {
                violations.one_of(
                    "loggingConfig.systemLogLevel",
                    level,
                    &["DEBUG", "INFO", "WARN"],
                );
            }
            if let Some(group) = &logging.log_group {
                violations.length("loggingConfig.logGroup", group, 1, 512);
                violations.pattern("loggingConfig.logGroup", group, patterns::LOG_GROUP);
            }
        }
        if let Some(target) = self
            .dead_letter_config
            .as_ref()
            .and_then(|d| d.target_arn.as_ref())
        {
            violations.pattern("deadLetterConfig.targetArn", target, patterns::RESOURCE_ARN);
        }
        if let Some(vpc) = &self.vpc_config {
            if let Some(subnets) = &vpc.subnet_ids
                && subnets.len() > 16
            {
                violations.push(
                    "vpcConfig.subnetIds",
                    Some(&format!("[{}]", subnets.join(", "))),
                    "Member must have length less than or equal to 16",
                );
            }
            if let Some(groups) = &vpc.security_group_ids
                && groups.len() > 5
            {
                violations.push(
                    "vpcConfig.securityGroupIds",
                    Some(&format!("[{}]", groups.join(", "))),
                    "Member must have length less than or equal to 5",
                );
            }
        }
        if let Some(apply_on) = self.snap_start.as_ref().and_then(|s| s.apply_on.as_ref()) {
            violations.one_of(
                "snapStart.applyOn",
                apply_on,
                &["PublishedVersions", "None"],
            );
        }
    }

    /// Rules beyond the model's constraints, each answered as AWS answers it.
    pub fn check_semantics(&self) -> Result<(), RequestError> {
        if let Some(runtime) = &self.runtime {
            runtime::check_runtime(runtime)?;
        }
        if let Some(variables) = self.environment.as_ref().and_then(|e| e.variables.as_ref()) {
            let reserved: Vec<&str> = variables
                .keys()
                .map(String::as_str)
                .filter(|key| RESERVED_ENVIRONMENT_KEYS.contains(key))
                .collect();
            if !reserved.is_empty() {
                return Err(RequestError::InvalidParameter(format!(
                    "Lambda was unable to configure your environment variables because the \
                     environment variables you have provided contains reserved keys that are \
                     currently not supported for modification. Reserved keys used in this \
                     request: {}",
                    reserved.join(", ")
                )));
            }
            let measured = serde_json::to_string(variables).unwrap_or_default();
            if measured.len() > MAX_ENVIRONMENT_BYTES {
                return Err(RequestError::InvalidParameter(format!(
                    "Lambda was unable to configure your environment variables because the \
                     environment variables you have provided exceeded the 4KB limit. String \
                     measured: {measured}"
                )));
            }
        }
        if let Some(layers) = &self.layers
            && layers.len() > MAX_LAYERS
        {
            return Err(RequestError::InvalidParameter(
                "Cannot reference more than 5 layers.".to_owned(),
            ));
        }
        if let Some(target) = self
            .dead_letter_config
            .as_ref()
            .and_then(|d| d.target_arn.as_ref())
            .filter(|arn| !arn.is_empty())
            // Asynchronous invocation delivers dead letters to Lamina functions only so far.
            .filter(|arn| !is_function_arn(arn))
        {
            return Err(not_implemented(&format!(
                "DeadLetterConfig with target {target} (only a Lamina function, \
                 arn:aws:lambda:REGION:ACCOUNT:function:NAME, can be a dead-letter target so far; \
                 SQS and SNS targets)"
            )));
        }
        if let Some(vpc) = &self.vpc_config {
            let subnets = vpc.subnet_ids.as_ref().is_some_and(|s| !s.is_empty());
            let groups = vpc
                .security_group_ids
                .as_ref()
                .is_some_and(|g| !g.is_empty());
            if subnets || groups {
                return Err(not_implemented("VpcConfig with subnets or security groups"));
            }
        }
        if self.snap_start.as_ref().and_then(|s| s.apply_on.as_deref()) == Some("PublishedVersions")
        {
            return Err(not_implemented("SnapStart"));
        }
        if self
            .file_system_configs
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            return Err(not_implemented("FileSystemConfigs"));
        }
        if self.image_config.is_some() {
            return Err(not_implemented("ImageConfig (container image functions)"));
        }
        if self.capacity_provider_config.is_some() {
            return Err(not_implemented("CapacityProviderConfig"));
        }
        if self.durable_config.is_some() {
            return Err(not_implemented("DurableConfig"));
        }
        Ok(())
    }
}

/// Checks the `Architectures` member shared by create and update-code.
pub fn check_architectures(architectures: &[String], violations: &mut Violations) {
    let shown = format!("[{}]", architectures.join(", "));
    if architectures.len() != 1 {
        let constraint = if architectures.is_empty() {
            "Member must have length greater than or equal to 1"
        } else {
            "Member must have length less than or equal to 1"
        };
        violations.push("architectures", Some(&shown), constraint);
    }
    if architectures.iter().any(|a| a != "x86_64" && a != "arm64") {
        violations.push(
            "architectures",
            Some(&shown),
            "Member must satisfy constraint: [Member must satisfy enum value set: [x86_64, arm64]]",
        );
    }
}

impl CreateFunctionRequest {
    /// Validates everything that does not need the store or the code, and returns the
    /// settings of the new function.
    pub fn validate(&self) -> Result<(FunctionRef, FunctionSettings), RequestError> {
        let mut violations = Violations::new();
        let function = match &self.function_name {
            Some(name) => FunctionRef::parse(
                name,
                NameShape::FunctionName,
                "functionName",
                &mut violations,
            ),
            None => {
                require(&mut violations, "functionName", &self.function_name);
                None
            }
        };
        require(&mut violations, "role", &self.settings.role);
        require(&mut violations, "code", &self.code);
        self.settings.check_constraints(&mut violations);
        if let Some(package_type) = &self.package_type {
            violations.one_of("packageType", package_type, &["Zip", "Image"]);
        }
        if let Some(architectures) = &self.architectures {
            check_architectures(architectures, &mut violations);
        }
        violations.into_result()?;

        if self.package_type.as_deref() == Some("Image") {
            return Err(not_implemented(
                "PackageType Image (container image functions)",
            ));
        }
        if self.code_signing_config_arn.is_some() {
            return Err(not_implemented("CodeSigningConfigArn"));
        }
        if self.publish_to.is_some() {
            return Err(not_implemented("PublishTo"));
        }
        if self.tenancy_config.is_some() {
            return Err(not_implemented("TenancyConfig"));
        }
        self.settings.check_semantics()?;

        let function = function.expect("a name that passed validation was parsed");
        if function.qualifier.is_some() {
            return Err(RequestError::InvalidParameter(
                "A function name for CreateFunction cannot carry a version or alias qualifier."
                    .to_owned(),
            ));
        }
        let role = self.settings.role.clone().unwrap_or_default();
        let mut settings = FunctionSettings::defaults(&function.name, role);
        settings.apply(&self.settings);
        settings.check_complete()?;
        Ok((function, settings))
    }
}

impl UpdateFunctionConfigurationRequest {
    /// Validates the request and returns `current` with it applied.
    pub fn apply_to(&self, current: &FunctionSettings) -> Result<FunctionSettings, RequestError> {
        let mut violations = Violations::new();
        self.settings.check_constraints(&mut violations);
        violations.into_result()?;
        self.settings.check_semantics()?;
        let mut updated = current.clone();
        updated.apply(&self.settings);
        updated.check_complete()?;
        Ok(updated)
    }
}

impl UpdateFunctionCodeRequest {
    /// Validates the request; returns the new architecture if one was named.
    pub fn validate(&self) -> Result<Option<String>, RequestError> {
        let mut violations = Violations::new();
        if let Some(architectures) = &self.architectures {
            check_architectures(architectures, &mut violations);
        }
        violations.into_result()?;
        if self.image_uri.is_some() {
            return Err(not_implemented("ImageUri (container image functions)"));
        }
        if self.publish_to.is_some() {
            return Err(not_implemented("PublishTo"));
        }
        Ok(self.architectures.as_ref().and_then(|a| a.first().cloned()))
    }
}

// ---------------------------------------------------------------------------------------
// Response shapes
// ---------------------------------------------------------------------------------------

/// The model's `FunctionConfiguration`, as CreateFunction, GetFunctionConfiguration and
/// the update operations return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConfiguration {
    pub function_name: String,
    pub function_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    pub code_size: u64,
    pub description: String,
    pub timeout: u32,
    pub memory_size: u32,
    pub last_modified: String,
    pub code_sha256: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentResponse>,
    #[serde(rename = "KMSKeyArn", skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    pub tracing_config: TracingConfigResponse,
    pub revision_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub layers: Vec<LayerResponse>,
    pub state: String,
    pub last_update_status: String,
    pub package_type: String,
    pub architectures: Vec<String>,
    pub ephemeral_storage: EphemeralStorageResponse,
    pub snap_start: SnapStartResponse,
    pub logging_config: LoggingConfigResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_config: Option<DeadLetterConfigResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnvironmentResponse {
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TracingConfigResponse {
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerResponse {
    pub arn: String,
    pub code_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EphemeralStorageResponse {
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapStartResponse {
    pub apply_on: String,
    pub optimization_status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoggingConfigResponse {
    pub log_format: String,
    pub log_group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_log_level: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeadLetterConfigResponse {
    pub target_arn: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: serde_json::Value) -> CreateFunctionRequest {
        serde_json::from_value(body).unwrap()
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "FunctionName": "f",
            "Role": "arn:aws:iam::123456789012:role/r",
            "Runtime": "python3.12",
            "Handler": "app.handler",
            "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}
        })
    }

    #[test]
    fn create_fills_aws_defaults() {
        let settings = create(minimal()).validate().unwrap().1;
        assert_eq!(settings.timeout_seconds, 3);
        assert_eq!(settings.memory_mb, 128);
        assert_eq!(settings.ephemeral_storage_mb, 512);
        assert_eq!(settings.logging.log_group, "/aws/lambda/f");
        assert_eq!(settings.logging.log_format, "Text");
        assert_eq!(settings.tracing_mode, "PassThrough");
    }

    #[test]
    fn every_violated_constraint_is_reported() {
        let mut body = minimal();
        body["MemorySize"] = 20000.into();
        body["Timeout"] = 901.into();
        body["EphemeralStorage"] = serde_json::json!({"Size": 100});
        let err = create(body).validate().unwrap_err();
        let RequestError::Validation(ValidationError { message }) = err else {
            panic!("expected validation error, got {err:?}");
        };
        assert!(
            message.starts_with("3 validation errors detected: "),
            "{message}"
        );
        assert!(message.contains("Value '20000' at 'memorySize' failed to satisfy constraint: Member must have value less than or equal to 10240"));
        assert!(message.contains("Value '901' at 'timeout'"));
        assert!(message.contains("Value '100' at 'ephemeralStorage.size' failed to satisfy constraint: Member must have value greater than or equal to 512"));
    }

    #[test]
    fn reserved_and_oversized_environments_are_refused() {
        let mut body = minimal();
        body["Environment"] = serde_json::json!({"Variables": {"AWS_REGION": "x"}});
        assert!(matches!(
            create(body).validate(),
            Err(RequestError::InvalidParameter(m)) if m.contains("Reserved keys used in this request: AWS_REGION")
        ));
        let mut body = minimal();
        body["Environment"] = serde_json::json!({"Variables": {"BIG": "x".repeat(5000)}});
        assert!(matches!(
            create(body).validate(),
            Err(RequestError::InvalidParameter(m)) if m.contains("exceeded the 4KB limit")
        ));
    }

    #[test]
    fn zip_functions_need_runtime_and_handler_except_provided() {
        let mut body = minimal();
        body.as_object_mut().unwrap().remove("Handler");
        assert!(matches!(
            create(body.clone()).validate(),
            Err(RequestError::InvalidParameter(_))
        ));
        body["Runtime"] = "provided.al2023".into();
        assert!(create(body).validate().is_ok());
    }

    #[test]
    fn update_changes_only_what_it_names() {
        let current = create(minimal()).validate().unwrap().1;
        let update: UpdateFunctionConfigurationRequest =
            serde_json::from_value(serde_json::json!({"MemorySize": 256})).unwrap();
        let updated = update.apply_to(&current).unwrap();
        assert_eq!(updated.memory_mb, 256);
        assert_eq!(updated.handler, current.handler);
        assert_eq!(updated.timeout_seconds, current.timeout_seconds);
    }

    #[test]
    fn code_sha256_is_base64_of_the_digest() {
        let code = CodeRef {
            sha256_hex: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            size: 0,
            unzipped_size: 0,
        };
        assert_eq!(
            code.code_sha256(),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
