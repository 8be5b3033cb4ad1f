//! Constraint checks that answer exactly as AWS's request validation does.
//!
//! AWS validates every request member against the constraints of the service model
//! (ranges, lengths, patterns, enums) before the operation runs, and answers
//! `400 ValidationException` with one sentence per violated constraint:
//!
//! ```text
//! 2 validation errors detected: Value '20000' at 'memorySize' failed to satisfy constraint:
//! Member must have value less than or equal to 10240; Value '0' at 'timeout' failed to ...
//! ```
//!
//! Member names are the model's member names with a lower-case first letter, nested
//! members joined by dots (`ephemeralStorage.size`). [`Violations`] collects them so that a
//! request with several problems reports all of them at once, as AWS does.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use regex::Regex;

/// Every constraint a request broke, in the order the members were checked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations {
    messages: Vec<String>,
}

/// A request that broke at least one model constraint (AWS's `ValidationException`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub message: String,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation in AWS's wording; `value` is `None` for sensitive members,
    /// whose values AWS never echoes.
    pub fn push(&mut self, member: &str, value: Option<&str>, constraint: &str) {
        let message = match value {
            Some(value) => {
                format!("Value '{value}' at '{member}' failed to satisfy constraint: {constraint}")
            }
            None => format!("Value at '{member}' failed to satisfy constraint: {constraint}"),
        };
        self.messages.push(message);
    }

    pub fn range(&mut self, member: &str, value: i64, min: i64, max: i64) {
        if value < min {
            self.push(
                member,
                Some(&value.to_string()),
                &format!("Member must have value greater than or equal to {min}"),
            );
        } else if value > max {
            self.push(
                member,
                Some(&value.to_string()),
                &format!("Member must have value less than or equal to {max}"),
            );
        }
    }

    /// Length in characters, as the model counts it.
    pub fn length(&mut self, member: &str, value: &str, min: usize, max: usize) {
        let len = value.chars().count();
        if len < min {
            self.push(
                member,
                Some(value),
                &format!("Member must have length greater than or equal to {min}"),
            );
        } else if len > max {
            self.push(
                member,
                Some(value),
                &format!("Member must have length less than or equal to {max}"),
            );
        }
    }

    /// `pattern` must be one of the [`patterns`] constants: it is matched against the
    /// whole value, as the model means it.
    pub fn pattern(&mut self, member: &str, value: &str, pattern: &'static str) {
        if !full_match(pattern, value) {
            self.push(
                member,
                Some(value),
                &format!("Member must satisfy regular expression pattern: {pattern}"),
            );
        }
    }

    pub fn one_of(&mut self, member: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.push(
                member,
                Some(value),
                &format!(
                    "Member must satisfy enum value set: [{}]",
                    allowed.join(", ")
                ),
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// `Ok` when nothing was violated, else the `ValidationException` to answer.
    pub fn into_result(self) -> Result<(), ValidationError> {
        if self.messages.is_empty() {
            return Ok(());
        }
        let count = self.messages.len();
        let plural = if count == 1 { "" } else { "s" };
        Err(ValidationError {
            message: format!(
                "{count} validation error{plural} detected: {}",
                self.messages.join("; ")
            ),
        })
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.messages.join("; "))
    }
}

/// Patterns from the Lambda service model (`service-2.json`), verbatim, so that the
/// messages quote exactly what AWS quotes.
pub mod patterns {
    pub const FUNCTION_NAME: &str = r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?";
    pub const NAMESPACED_FUNCTION_NAME: &str = r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?";
    pub const QUALIFIER: &str = r"(|[a-zA-Z0-9$_-]+)";
    pub const HANDLER: &str = r"[^\s]+";
    pub const ROLE_ARN: &str = r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+";
    pub const KMS_KEY_ARN: &str = r"(arn:(aws[a-zA-Z-]*)?:[a-z0-9-.]+:.*)|()";
    pub const LAYER_VERSION_ARN: &str =
        r"arn:[a-zA-Z0-9-]+:lambda:[a-zA-Z0-9-]+:\d{12}:layer:[a-zA-Z0-9-_]+:[0-9]+";
    pub const ENVIRONMENT_VARIABLE_NAME: &str = r"[a-zA-Z]([a-zA-Z0-9_])+";
    pub const LOG_GROUP: &str = r"[\.\-_/#A-Za-z0-9]+";
    pub const TAGGABLE_RESOURCE: &str = r"arn:(aws[a-zA-Z-]*):lambda:[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:(function:[a-zA-Z0-9-_]+(:(\$LATEST|[a-zA-Z0-9-_]+))?|code-signing-config:csc-[a-z0-9]{17}|event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|capacity-provider:[a-zA-Z0-9-_]+)";
    pub const RESOURCE_ARN: &str = r"(arn:(aws[a-zA-Z-]*)?:[a-z0-9-.]+:.*)|()";
    pub const MASTER_REGION: &str = r"ALL|[a-z]{2}(-gov)?-[a-z]+-\d{1}";
}

/// The compiled, anchored form of a model pattern. The patterns are a fixed handful, so
/// each is compiled on first use and kept for the life of the process.
pub fn compiled(pattern: &'static str) -> &'static Regex {
    type Cache = Mutex<HashMap<&'static str, &'static Regex>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache.entry(pattern).or_insert_with(|| {
        Box::leak(Box::new(
            Regex::new(&format!("^(?:{pattern})$")).expect("service-model patterns compile"),
        ))
    })
}

pub fn full_match(pattern: &'static str, value: &str) -> bool {
    compiled(pattern).is_match(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_violation_reads_like_aws() {
        let mut v = Violations::new();
        v.range("memorySize", 20000, 128, 10240);
        assert_eq!(
            v.into_result().unwrap_err().message,
            "1 validation error detected: Value '20000' at 'memorySize' failed to satisfy \
             constraint: Member must have value less than or equal to 10240"
        );
    }

    #[test]
    fn several_violations_are_joined_and_counted() {
        let mut v = Violations::new();
        v.range("memorySize", 64, 128, 10240);
        v.range("timeout", 0, 1, 900);
        let message = v.into_result().unwrap_err().message;
        assert!(message.starts_with("2 validation errors detected: Value '64' at 'memorySize'"));
        assert!(message.contains("; Value '0' at 'timeout' failed to satisfy constraint: Member must have value greater than or equal to 1"));
    }

    #[test]
    fn patterns_match_whole_values_only() {
        assert!(full_match(patterns::HANDLER, "index.handler"));
        assert!(!full_match(patterns::HANDLER, "index handler"));
        assert!(full_match(
            patterns::ROLE_ARN,
            "arn:aws:iam::123456789012:role/lambda-role"
        ));
        assert!(!full_match(patterns::ROLE_ARN, "role/lambda-role"));
        assert!(full_match(patterns::FUNCTION_NAME, "my-function"));
        assert!(!full_match(patterns::FUNCTION_NAME, "my function"));
    }

    #[test]
    fn no_violations_is_ok() {
        let mut v = Violations::new();
        v.range("timeout", 3, 1, 900);
        v.length("description", "", 0, 256);
        v.one_of("packageType", "Zip", &["Zip", "Image"]);
        assert!(v.into_result().is_ok());
    }
}
