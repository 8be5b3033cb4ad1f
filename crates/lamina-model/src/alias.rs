//! Aliases: a name that points at one published version (or `$LATEST`) and may route a
//! share of the traffic to one more version (`RoutingConfig.AdditionalVersionWeights`).
//!
//! Create and update are different request types: an update changes only the members it
//! names, and a routing configuration it names (even an empty one) replaces the old one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arn::{Account, is_version_number};
use crate::function::{LATEST, RequestError, require};
use crate::validation::{Violations, full_match};

/// The model's `Alias` pattern. It needs a look-ahead, which the `regex` crate lacks, so
/// it is checked by [`is_alias_name`] and only quoted from here.
pub const ALIAS_PATTERN: &str = r"(?!^[0-9]+$)([a-zA-Z0-9-_]+)";
/// The model's `VersionWithLatestPublished` pattern (CreateAlias, UpdateAlias).
pub const VERSION_WITH_LATEST_PUBLISHED: &str = r"(\$LATEST(\.PUBLISHED)?|[0-9]+)";
/// The model's `AdditionalVersion` pattern (the keys of the weights).
pub const ADDITIONAL_VERSION_PATTERN: &str = r"[0-9]+";

/// At most this many additional versions (AWS's own limit, below the model's).
pub const MAX_ADDITIONAL_VERSIONS: usize = 1;

/// Whether `name` satisfies the model's `Alias` pattern: word characters and dashes, and
/// not only digits (a number names a version).
pub fn is_alias_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !is_version_number(name)
}

/// Checks an alias name member (`name`) against the model's constraints.
pub fn check_alias_name(name: &str, violations: &mut Violations) {
    violations.length("name", name, 1, 128);
    if !is_alias_name(name) {
        violations.push(
            "name",
            Some(name),
            &format!("Member must satisfy regular expression pattern: {ALIAS_PATTERN}"),
        );
    }
}

/// One alias as Lamina stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub function_name: String,
    pub name: String,
    /// The version most traffic goes to: a number or `$LATEST`.
    pub function_version: String,
    pub description: String,
    /// The one other version that receives a share of the traffic, if any.
    pub additional: Option<AdditionalVersion>,
    pub revision_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdditionalVersion {
    pub version: String,
    /// Share of invocations routed to `version`, from 0.0 to 1.0.
    pub weight: f64,
}

impl Alias {
    pub fn configuration(&self, account: &Account) -> AliasConfiguration {
        AliasConfiguration {
            alias_arn: account.qualified_function_arn(&self.function_name, Some(&self.name)),
            name: self.name.clone(),
            function_version: self.function_version.clone(),
            description: self.description.clone(),
            routing_config: self
                .additional
                .as_ref()
                .map(|additional| AliasRoutingConfig {
                    additional_version_weights: BTreeMap::from([(
                        additional.version.clone(),
                        additional.weight,
                    )]),
                }),
            revision_id: self.revision_id.clone(),
        }
    }

    /// Every version the alias can route to.
    pub fn versions(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.function_version.as_str())
            .chain(self.additional.as_ref().map(|a| a.version.as_str()))
    }
}

/// The model's `AliasConfiguration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasConfiguration {
    pub alias_arn: String,
    pub name: String,
    pub function_version: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_config: Option<AliasRoutingConfig>,
    pub revision_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasRoutingConfig {
    pub additional_version_weights: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RoutingConfigInput {
    pub additional_version_weights: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateAliasRequest {
    pub name: Option<String>,
    pub function_version: Option<String>,
    pub description: Option<String>,
    pub routing_config: Option<RoutingConfigInput>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateAliasRequest {
    pub function_version: Option<String>,
    pub description: Option<String>,
    pub routing_config: Option<RoutingConfigInput>,
    pub revision_id: Option<String>,
}

/// What a create or update asks the alias to become, before the store checks that the
/// versions exist.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasTarget {
    pub function_version: String,
    pub description: String,
    pub additional: Option<AdditionalVersion>,
}

/// A weight as AWS prints it (Java's `Double.toString`): `2.0`, `0.5`.
fn java_double(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e7 {
        format!("{value:.1}")
    } else {
        format!("{value}")
    }
}

fn check_function_version(version: &str, violations: &mut Violations) {
    violations.length("functionVersion", version, 1, 1024);
    violations.pattern("functionVersion", version, VERSION_WITH_LATEST_PUBLISHED);
}

fn check_description(description: &str, violations: &mut Violations) {
    violations.length("description", description, 0, 256);
}

fn check_weights(weights: &BTreeMap<String, f64>, violations: &mut Violations) {
    let shown = format!(
        "{{{}}}",
        weights
            .iter()
            .map(|(k, v)| format!("{k}={}", java_double(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let member = "routingConfig.additionalVersionWeights";
    if weights.keys().any(|k| {
        k.is_empty() || k.chars().count() > 1024 || !full_match(ADDITIONAL_VERSION_PATTERN, k)
    }) {
        violations.push(
            member,
            Some(&shown),
            &format!(
                "Map keys must satisfy constraint: [Member must have length less than or equal \
                 to 1024, Member must have length greater than or equal to 1, Member must \
                 satisfy regular expression pattern: {ADDITIONAL_VERSION_PATTERN}]"
            ),
        );
    }
    if weights.values().any(|w| !(0.0..=1.0).contains(w)) {
        violations.push(
            member,
            Some(&shown),
            "Map value must satisfy constraint: [Member must have value less than or equal to \
             1.0, Member must have value greater than or equal to 0.0, Member must not be null]",
        );
    }
}

/// The rules AWS applies to a routing configuration beyond the model's constraints, in the
/// order it applies them.
fn check_routing(
    function_version: &str,
    weights: &BTreeMap<String, f64>,
) -> Result<Option<AdditionalVersion>, RequestError> {
    if weights.len() > MAX_ADDITIONAL_VERSIONS {
        return Err(RequestError::InvalidParameter(
            "Number of items in AdditionalVersionWeights cannot be greater than 1".to_owned(),
        ));
    }
    let Some((version, weight)) = weights.iter().next() else {
        return Ok(None);
    };
    if function_version == LATEST {
        return Err(RequestError::InvalidParameter(
            "$LATEST is not supported for an alias pointing to more than 1 version".to_owned(),
        ));
    }
    if version == function_version {
        return Err(RequestError::InvalidParameter(format!(
            "Invalid function version {version}. Function version {version} is already \
             included in routing configuration."
        )));
    }
    Ok(Some(AdditionalVersion {
        version: version.clone(),
        weight: *weight,
    }))
}

fn refuse_latest_published(function_version: &str) -> Result<(), RequestError> {
    if function_version.starts_with("$LATEST.") {
        return Err(RequestError::NotImplemented {
            feature: format!("FunctionVersion {function_version}"),
        });
    }
    Ok(())
}

impl CreateAliasRequest {
    /// Validates the request; returns the alias name and what it should point at.
    pub fn validate(&self) -> Result<(String, AliasTarget), RequestError> {
        let mut violations = Violations::new();
        match &self.name {
            Some(name) => check_alias_name(name, &mut violations),
            None => {
                require(&mut violations, "name", &self.name);
            }
        }
        match &self.function_version {
            Some(version) => check_function_version(version, &mut violations),
            None => {
                require(&mut violations, "functionVersion", &self.function_version);
            }
        }
        if let Some(description) = &self.description {
            check_description(description, &mut violations);
        }
        let weights = self
            .routing_config
            .as_ref()
            .and_then(|r| r.additional_version_weights.clone())
            .unwrap_or_default();
        check_weights(&weights, &mut violations);
        violations.into_result()?;
        let function_version = self.function_version.clone().unwrap_or_default();
        refuse_latest_published(&function_version)?;
        let additional = check_routing(&function_version, &weights)?;
        Ok((
            self.name.clone().unwrap_or_default(),
            AliasTarget {
                function_version,
                description: self.description.clone().unwrap_or_default(),
                additional,
            },
        ))
    }
}

impl UpdateAliasRequest {
    /// Validates the request and returns `current` with it applied.
    pub fn apply_to(&self, current: &Alias) -> Result<AliasTarget, RequestError> {
        let mut violations = Violations::new();
        if let Some(version) = &self.function_version {
            check_function_version(version, &mut violations);
        }
        if let Some(description) = &self.description {
            check_description(description, &mut violations);
        }
        let weights = self
            .routing_config
            .as_ref()
            .map(|r| r.additional_version_weights.clone().unwrap_or_default());
        if let Some(weights) = &weights {
            check_weights(weights, &mut violations);
        }
        violations.into_result()?;
        let function_version = self
            .function_version
            .clone()
            .unwrap_or_else(|| current.function_version.clone());
        refuse_latest_published(&function_version)?;
        let weights = weights.unwrap_or_else(|| {
            current
                .additional
                .iter()
                .map(|a| (a.version.clone(), a.weight))
                .collect()
        });
        let additional = check_routing(&function_version, &weights)?;
        Ok(AliasTarget {
            function_version,
            description: self
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            additional,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: serde_json::Value) -> Result<(String, AliasTarget), RequestError> {
        serde_json::from_value::<CreateAliasRequest>(body)
            .unwrap()
            .validate()
    }

    fn message(result: Result<(String, AliasTarget), RequestError>) -> String {
        match result.unwrap_err() {
            RequestError::Validation(v) => v.message,
            RequestError::InvalidParameter(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_may_hold_digits_but_not_only_digits() {
        assert!(is_alias_name("2024-01-02"));
        assert!(is_alias_name("live_1"));
        assert!(!is_alias_name("2024"));
        assert!(!is_alias_name("a.b"));
        assert_eq!(
            message(create(
                serde_json::json!({"Name": "2024", "FunctionVersion": "1"})
            )),
            "1 validation error detected: Value '2024' at 'name' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"
        );
    }

    #[test]
    fn weights_are_checked_as_aws_checks_them() {
        let body = |version: &str, weights: serde_json::Value| {
            serde_json::json!({
                "Name": "live",
                "FunctionVersion": version,
                "RoutingConfig": {"AdditionalVersionWeights": weights}
            })
        };
        assert_eq!(
            message(create(body("1", serde_json::json!({"2": 2})))),
            "1 validation error detected: Value '{2=2.0}' at \
             'routingConfig.additionalVersionWeights' failed to satisfy constraint: Map value \
             must satisfy constraint: [Member must have value less than or equal to 1.0, Member \
             must have value greater than or equal to 0.0, Member must not be null]"
        );
        assert!(
            message(create(body("1", serde_json::json!({"$LATEST": 0.5}))))
                .contains("Value '{$LATEST=0.5}' at 'routingConfig.additionalVersionWeights' failed to satisfy constraint: Map keys must satisfy constraint")
        );
        assert_eq!(
            message(create(body("1", serde_json::json!({"1": 0.8, "2": 0.2})))),
            "Number of items in AdditionalVersionWeights cannot be greater than 1"
        );
        assert_eq!(
            message(create(body("$LATEST", serde_json::json!({"1": 0.5})))),
            "$LATEST is not supported for an alias pointing to more than 1 version"
        );
        assert_eq!(
            message(create(body("1", serde_json::json!({"1": 0.5})))),
            "Invalid function version 1. Function version 1 is already included in routing \
             configuration."
        );
        let (_, target) = create(body("1", serde_json::json!({"2": 0.1}))).unwrap();
        assert_eq!(
            target.additional,
            Some(AdditionalVersion {
                version: "2".into(),
                weight: 0.1
            })
        );
        let (_, empty) = create(body("1", serde_json::json!({}))).unwrap();
        assert_eq!(empty.additional, None);
    }

    #[test]
    fn updates_keep_what_they_do_not_name() {
        let current = Alias {
            function_name: "f".into(),
            name: "live".into(),
            function_version: "1".into(),
            description: "d".into(),
            additional: Some(AdditionalVersion {
                version: "2".into(),
                weight: 0.5,
            }),
            revision_id: "r".into(),
        };
        let update: UpdateAliasRequest =
            serde_json::from_value(serde_json::json!({"FunctionVersion": "3"})).unwrap();
        let target = update.apply_to(&current).unwrap();
        assert_eq!(target.function_version, "3");
        assert_eq!(target.description, "d");
        assert_eq!(target.additional, current.additional);
        // Naming the routing configuration replaces it, even when empty.
        let update: UpdateAliasRequest = serde_json::from_value(
            serde_json::json!({"RoutingConfig": {"AdditionalVersionWeights": {}}}),
        )
        .unwrap();
        assert_eq!(update.apply_to(&current).unwrap().additional, None);
        // Moving the primary onto the additional version is refused.
        let update: UpdateAliasRequest =
            serde_json::from_value(serde_json::json!({"FunctionVersion": "2"})).unwrap();
        assert!(update.apply_to(&current).is_err());
    }
}
