//! Layers: zip archives published as numbered, immutable layer versions, which functions
//! reference by ARN (`arn:aws:lambda:REGION:ACCOUNT:layer:NAME:VERSION`) and which are
//! extracted, in order, into `/opt`.
//!
//! A layer version is deleted for new references only: functions that already reference
//! it keep their copy (their [`crate::function::LayerRef`] carries the code's digest), as
//! on AWS.

use serde::{Deserialize, Serialize};

use crate::arn::Account;
use crate::function::{CodeRef, RequestError, require};
use crate::runtime::MODEL_RUNTIMES;
use crate::validation::{Violations, compiled, patterns};

/// The model's `LayerName` pattern: a name, or a layer ARN without a version.
pub const LAYER_NAME_PATTERN: &str =
    r"(arn:[a-zA-Z0-9-]+:lambda:[a-zA-Z0-9-]+:\d{12}:layer:[a-zA-Z0-9-_]+)|[a-zA-Z0-9-_]+";
/// The `Arn` member of GetLayerVersionByArn, as AWS quotes it today.
pub const LAYER_VERSION_ARN_QUERY_PATTERN: &str = r"(arn:(aws[a-zA-Z-]*)?:lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:layer:[a-zA-Z0-9-_]+:[0-9]+)|(arn:[a-zA-Z0-9-]+:lambda:::awslayer:[a-zA-Z0-9-_]+)";

/// A layer name as a caller gave it, with the region and account its ARN named, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerName {
    pub name: String,
    pub region: Option<String>,
    pub account_id: Option<String>,
}

impl LayerName {
    /// Parses the `LayerName` member (a name or a layer ARN).
    pub fn parse(input: &str, violations: &mut Violations) -> Option<LayerName> {
        let before = violations.clone();
        violations.length("layerName", input, 1, 140);
        violations.pattern("layerName", input, LAYER_NAME_PATTERN);
        if *violations != before {
            return None;
        }
        match input.strip_prefix("arn:") {
            Some(_) => {
                let parts: Vec<&str> = input.split(':').collect();
                Some(LayerName {
                    name: parts[6].to_owned(),
                    region: Some(parts[3].to_owned()),
                    account_id: Some(parts[4].to_owned()),
                })
            }
            None => Some(LayerName {
                name: input.to_owned(),
                region: None,
                account_id: None,
            }),
        }
    }

    pub fn is_local_to(&self, account: &Account) -> bool {
        self.region.as_deref().is_none_or(|r| r == account.region)
            && self
                .account_id
                .as_deref()
                .is_none_or(|a| a == account.account_id)
    }

    /// The layer version's ARN in the region and account the caller named.
    pub fn version_arn(&self, account: &Account, version: i64) -> String {
        format!(
            "arn:aws:lambda:{}:{}:layer:{}:{version}",
            self.region.as_deref().unwrap_or(&account.region),
            self.account_id.as_deref().unwrap_or(&account.account_id),
            self.name
        )
    }
}

/// A layer version ARN, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerVersionArn {
    pub region: String,
    pub account_id: String,
    pub name: String,
    pub version: u64,
}

impl LayerVersionArn {
    /// Parses an ARN already known to match the model's `LayerVersionArn` pattern.
    pub fn parse(arn: &str) -> Option<LayerVersionArn> {
        if !compiled(patterns::LAYER_VERSION_ARN).is_match(arn) {
            return None;
        }
        let parts: Vec<&str> = arn.split(':').collect();
        Some(LayerVersionArn {
            region: parts[3].to_owned(),
            account_id: parts[4].to_owned(),
            name: parts[6].to_owned(),
            version: parts[7].parse().ok()?,
        })
    }

    /// The layer this is a version of (the ARN without its version).
    pub fn layer_arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{}:layer:{}",
            self.region, self.account_id, self.name
        )
    }
}

/// One published layer version as Lamina stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerVersion {
    pub layer_name: String,
    pub version: u64,
    pub description: String,
    /// Already in AWS's format.
    pub created_date: String,
    pub compatible_runtimes: Option<Vec<String>>,
    pub compatible_architectures: Option<Vec<String>>,
    pub license_info: Option<String>,
    pub code: CodeRef,
}

impl LayerVersion {
    pub fn layer_arn(&self, account: &Account) -> String {
        format!(
            "arn:aws:lambda:{}:{}:layer:{}",
            account.region, account.account_id, self.layer_name
        )
    }

    pub fn version_arn(&self, account: &Account) -> String {
        format!("{}:{}", self.layer_arn(account), self.version)
    }

    /// GetLayerVersion's (and PublishLayerVersion's) answer; `location` is where the zip
    /// can be downloaded.
    pub fn response(&self, account: &Account, location: String) -> LayerVersionResponse {
        LayerVersionResponse {
            content: LayerVersionContent {
                location,
                code_sha256: self.code.code_sha256(),
                code_size: self.code.size,
            },
            layer_arn: self.layer_arn(account),
            layer_version_arn: self.version_arn(account),
            description: self.description.clone(),
            created_date: self.created_date.clone(),
            version: self.version,
            compatible_runtimes: self.compatible_runtimes.clone(),
            license_info: self.license_info.clone(),
            compatible_architectures: self.compatible_architectures.clone(),
        }
    }

    pub fn list_item(&self, account: &Account) -> LayerVersionsListItem {
        LayerVersionsListItem {
            layer_version_arn: self.version_arn(account),
            version: self.version,
            description: self.description.clone(),
            created_date: self.created_date.clone(),
            compatible_runtimes: self.compatible_runtimes.clone(),
            license_info: self.license_info.clone(),
            compatible_architectures: self.compatible_architectures.clone(),
        }
    }

    /// Whether the version passes ListLayers' / ListLayerVersions' filters.
    pub fn matches(&self, runtime: Option<&str>, architecture: Option<&str>) -> bool {
        let has = |list: &Option<Vec<String>>, wanted: Option<&str>| match wanted {
            None => true,
            Some(wanted) => list.as_ref().is_some_and(|l| l.iter().any(|v| v == wanted)),
        };
        has(&self.compatible_runtimes, runtime) && has(&self.compatible_architectures, architecture)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionContent {
    pub location: String,
    pub code_sha256: String,
    pub code_size: u64,
}

/// The model's `GetLayerVersionResponse` (also PublishLayerVersion's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionResponse {
    pub content: LayerVersionContent,
    pub layer_arn: String,
    pub layer_version_arn: String,
    pub description: String,
    pub created_date: String,
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatible_runtimes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatible_architectures: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerVersionsListItem {
    pub layer_version_arn: String,
    pub version: u64,
    pub description: String,
    pub created_date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatible_runtimes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compatible_architectures: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayersListItem {
    pub layer_name: String,
    pub layer_arn: String,
    pub latest_matching_version: LayerVersionsListItem,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerContentInput {
    #[serde(rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    #[serde(rename = "S3Key")]
    pub s3_key: Option<String>,
    #[serde(rename = "S3ObjectVersion")]
    pub s3_object_version: Option<String>,
    /// Base64, as the JSON protocol carries blobs.
    pub zip_file: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishLayerVersionRequest {
    pub description: Option<String>,
    pub content: Option<LayerContentInput>,
    pub compatible_runtimes: Option<Vec<String>>,
    pub license_info: Option<String>,
    pub compatible_architectures: Option<Vec<String>>,
}

/// Checks a list of runtimes (`compatibleRuntimes`) against the model's enum.
fn check_runtime_list(member: &str, runtimes: &[String], violations: &mut Violations) {
    let shown = format!("[{}]", runtimes.join(", "));
    if runtimes.len() > 15 {
        violations.push(
            member,
            Some(&shown),
            "Member must have length less than or equal to 15",
        );
    }
    if runtimes
        .iter()
        .any(|r| !MODEL_RUNTIMES.contains(&r.as_str()))
    {
        violations.push(
            member,
            Some(&shown),
            &format!(
                "Member must satisfy enum value set: [{}]",
                MODEL_RUNTIMES.join(", ")
            ),
        );
    }
}

/// Checks a list of architectures (`compatibleArchitectures`) against the model.
fn check_architectures_list(
    member: &str,
    architectures: &[String],
    max: usize,
    violations: &mut Violations,
) {
    let shown = format!("[{}]", architectures.join(", "));
    if architectures.len() > max {
        violations.push(
            member,
            Some(&shown),
            &format!("Member must have length less than or equal to {max}"),
        );
    }
    if architectures.iter().any(|a| a != "x86_64" && a != "arm64") {
        violations.push(
            member,
            Some(&shown),
            "Member must satisfy constraint: [Member must satisfy enum value set: [x86_64, \
             arm64], Member must not be null]",
        );
    }
}

impl PublishLayerVersionRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        let mut violations = Violations::new();
        if let Some(description) = &self.description {
            violations.length("description", description, 0, 256);
        }
        require(&mut violations, "content", &self.content);
        if let Some(runtimes) = &self.compatible_runtimes {
            check_runtime_list("compatibleRuntimes", runtimes, &mut violations);
        }
        if let Some(license) = &self.license_info {
            violations.length("licenseInfo", license, 0, 512);
        }
        if let Some(architectures) = &self.compatible_architectures {
            check_architectures_list("compatibleArchitectures", architectures, 2, &mut violations);
        }
        violations.into_result()?;
        Ok(())
    }
}

/// The filters of ListLayers and ListLayerVersions.
pub fn check_list_filters(
    runtime: Option<&str>,
    architecture: Option<&str>,
    violations: &mut Violations,
) {
    if let Some(runtime) = runtime {
        violations.one_of("compatibleRuntime", runtime, MODEL_RUNTIMES);
    }
    if let Some(architecture) = architecture {
        violations.one_of("compatibleArchitecture", architecture, &["x86_64", "arm64"]);
    }
}

/// AWS's answer to a layer version number below 1.
pub fn version_below_one() -> RequestError {
    RequestError::InvalidParameter("Layer Version Cannot be less than 1".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arns_parse() {
        let mut violations = Violations::new();
        let plain = LayerName::parse("my-layer", &mut violations).unwrap();
        assert_eq!(plain.name, "my-layer");
        let arn = LayerName::parse(
            "arn:aws:lambda:us-west-2:123456789012:layer:my-layer",
            &mut violations,
        )
        .unwrap();
        assert_eq!(arn.region.as_deref(), Some("us-west-2"));
        assert!(violations.is_empty());
        assert!(LayerName::parse("bad name", &mut violations).is_none());
        assert!(!violations.is_empty());

        let version =
            LayerVersionArn::parse("arn:aws:lambda:us-east-1:123456789012:layer:l:7").unwrap();
        assert_eq!(version.name, "l");
        assert_eq!(version.version, 7);
        assert_eq!(
            version.layer_arn(),
            "arn:aws:lambda:us-east-1:123456789012:layer:l"
        );
        assert!(LayerVersionArn::parse("arn:aws:lambda:us-east-1:123456789012:layer:l").is_none());
    }

    #[test]
    fn unknown_runtimes_and_architectures_are_refused() {
        let request: PublishLayerVersionRequest = serde_json::from_value(serde_json::json!({
            "Content": {"ZipFile": ""},
            "CompatibleRuntimes": ["cobol"],
            "CompatibleArchitectures": ["sparc"],
        }))
        .unwrap();
        let RequestError::Validation(error) = request.validate().unwrap_err() else {
            panic!("expected a validation error");
        };
        assert!(
            error.message.starts_with(
                "2 validation errors detected: Value '[cobol]' at 'compatibleRuntimes' failed \
                 to satisfy constraint: Member must satisfy enum value set: [nodejs"
            ),
            "{}",
            error.message
        );
        assert!(error.message.contains(
            "Value '[sparc]' at 'compatibleArchitectures' failed to satisfy constraint: Member \
             must satisfy constraint: [Member must satisfy enum value set: [x86_64, arm64], \
             Member must not be null]"
        ));
    }
}
