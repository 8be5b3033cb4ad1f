//! Function names and ARNs as AWS accepts them.
//!
//! Wherever the API takes a function name it accepts four spellings, each optionally
//! followed by `:QUALIFIER` (a version or alias):
//! `my-function`, `123456789012:function:my-function` (partial ARN),
//! `arn:aws:lambda:us-east-1:123456789012:function:my-function` (full ARN). The service
//! model's own `FunctionName` pattern describes them; we match with that very pattern and
//! read the parts out of its capture groups, so what we accept is what AWS accepts.

use crate::validation::{Violations, compiled, patterns};

/// The one region and account this Lamina server answers as; every ARN it prints uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub region: String,
    pub account_id: String,
}

impl Account {
    pub fn function_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.region, self.account_id
        )
    }

    pub fn qualified_function_arn(&self, name: &str, qualifier: Option<&str>) -> String {
        match qualifier {
            Some(qualifier) => format!("{}:{qualifier}", self.function_arn(name)),
            None => self.function_arn(name),
        }
    }
}

/// A reference to a function as a caller wrote it, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    pub name: String,
    pub qualifier: Option<String>,
    pub region: Option<String>,
    pub account_id: Option<String>,
}

/// Which model shape the name comes in: it decides the pattern and the length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameShape {
    /// `FunctionName`: create and update operations (max 140 characters).
    FunctionName,
    /// `NamespacedFunctionName`: get, delete, invoke (max 256 characters, `.` allowed).
    Namespaced,
}

impl NameShape {
    fn pattern(self) -> &'static str {
        match self {
            NameShape::FunctionName => patterns::FUNCTION_NAME,
            NameShape::Namespaced => patterns::NAMESPACED_FUNCTION_NAME,
        }
    }

    fn max_len(self) -> usize {
        match self {
            NameShape::FunctionName => 140,
            NameShape::Namespaced => 256,
        }
    }
}

/// What a qualifier names: the unpublished version, a published version (digits only; an
/// alias name can never be all digits), or an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier<'a> {
    Latest,
    Version(&'a str),
    Alias(&'a str),
}

impl<'a> Qualifier<'a> {
    pub fn of(qualifier: Option<&'a str>) -> Qualifier<'a> {
        match qualifier {
            None | Some(crate::function::LATEST) => Qualifier::Latest,
            Some(q) if is_version_number(q) => Qualifier::Version(q),
            Some(alias) => Qualifier::Alias(alias),
        }
    }
}

/// A published version's name: decimal digits.
pub fn is_version_number(qualifier: &str) -> bool {
    !qualifier.is_empty() && qualifier.bytes().all(|b| b.is_ascii_digit())
}

/// The longest bare function name AWS accepts; the shape's larger limit applies to ARNs.
pub const MAX_FUNCTION_NAME_LEN: usize = 64;

impl FunctionRef {
    /// A function of this server's own account, by bare name.
    pub fn named(name: &str, qualifier: Option<&str>) -> FunctionRef {
        FunctionRef {
            name: name.to_owned(),
            qualifier: qualifier.map(str::to_owned),
            region: None,
            account_id: None,
        }
    }

    /// Parses `input` as the member `member` (for messages) of the given shape; constraint
    /// failures are recorded in `violations` as AWS reports them, and `None` returned.
    pub fn parse(
        input: &str,
        shape: NameShape,
        member: &str,
        violations: &mut Violations,
    ) -> Option<FunctionRef> {
        // The common case, a bare name, needs no regular expression: it is on the invoke
        // hot path.
        if !input.is_empty()
            && input.len() <= MAX_FUNCTION_NAME_LEN
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some(FunctionRef {
                name: input.to_owned(),
                qualifier: None,
                region: None,
                account_id: None,
            });
        }
        let before = violations.clone();
        violations.length(member, input, 1, shape.max_len());
        let captures = compiled(shape.pattern()).captures(input);
        if captures.is_none() {
            violations.pattern(member, input, shape.pattern());
        }
        let captures = captures?;
        let name = captures.get(10)?.as_str().to_owned();
        if name.chars().count() > MAX_FUNCTION_NAME_LEN {
            violations.push(
                member,
                Some(input),
                &format!("Member must have length less than or equal to {MAX_FUNCTION_NAME_LEN}"),
            );
        }
        if *violations != before {
            return None;
        }
        Some(FunctionRef {
            name,
            qualifier: captures.get(12).map(|m| m.as_str().to_owned()),
            region: captures
                .get(3)
                .map(|m| m.as_str().trim_end_matches(':').to_owned()),
            account_id: captures
                .get(8)
                .map(|m| m.as_str().trim_end_matches(':').to_owned()),
        })
    }

    /// What the qualifier names.
    pub fn qualifier_kind(&self) -> Qualifier<'_> {
        Qualifier::of(self.qualifier.as_deref())
    }

    /// Whether an ARN given by the caller names this server's region and account (a bare
    /// name always does).
    pub fn is_local_to(&self, account: &Account) -> bool {
        self.region.as_deref().is_none_or(|r| r == account.region)
            && self
                .account_id
                .as_deref()
                .is_none_or(|a| a == account.account_id)
    }

    /// The full ARN of what the caller referred to, for `Function not found` messages; it
    /// keeps the caller's region and account when the ARN named others.
    pub fn display_arn(&self, account: &Account) -> String {
        let region = self.region.as_deref().unwrap_or(&account.region);
        let account_id = self.account_id.as_deref().unwrap_or(&account.account_id);
        let base = format!(
            "arn:aws:lambda:{region}:{account_id}:function:{}",
            self.name
        );
        match &self.qualifier {
            Some(qualifier) => format!("{base}:{qualifier}"),
            None => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Option<FunctionRef> {
        FunctionRef::parse(
            input,
            NameShape::Namespaced,
            "functionName",
            &mut Violations::new(),
        )
    }

    #[test]
    fn accepts_every_spelling_aws_accepts() {
        let plain = parse("my-function").unwrap();
        assert_eq!(plain.name, "my-function");
        assert_eq!(plain.qualifier, None);

        let qualified = parse("my-function:v1").unwrap();
        assert_eq!(qualified.qualifier.as_deref(), Some("v1"));

        let partial = parse("123456789012:function:my-function:$LATEST").unwrap();
        assert_eq!(partial.name, "my-function");
        assert_eq!(partial.account_id.as_deref(), Some("123456789012"));
        assert_eq!(partial.qualifier.as_deref(), Some("$LATEST"));

        let full = parse("arn:aws:lambda:us-west-2:123456789012:function:my-function:7").unwrap();
        assert_eq!(full.name, "my-function");
        assert_eq!(full.region.as_deref(), Some("us-west-2"));
        assert_eq!(full.qualifier.as_deref(), Some("7"));
    }

    #[test]
    fn rejects_bad_names_with_aws_messages() {
        let mut violations = Violations::new();
        let parsed = FunctionRef::parse(
            "bad name",
            NameShape::FunctionName,
            "functionName",
            &mut violations,
        );
        assert!(parsed.is_none());
        let message = violations.into_result().unwrap_err().message;
        assert!(message.contains("Value 'bad name' at 'functionName' failed to satisfy constraint: Member must satisfy regular expression pattern: (arn:"), "{message}");

        let mut violations = Violations::new();
        let long = "a".repeat(65);
        assert!(
            FunctionRef::parse(
                &long,
                NameShape::FunctionName,
                "functionName",
                &mut violations
            )
            .is_none()
        );
        assert!(
            violations
                .into_result()
                .unwrap_err()
                .message
                .ends_with("Member must have length less than or equal to 64")
        );
    }

    #[test]
    fn qualifiers_are_versions_or_aliases() {
        assert_eq!(Qualifier::of(None), Qualifier::Latest);
        assert_eq!(Qualifier::of(Some("$LATEST")), Qualifier::Latest);
        assert_eq!(Qualifier::of(Some("12")), Qualifier::Version("12"));
        assert_eq!(Qualifier::of(Some("live")), Qualifier::Alias("live"));
        assert_eq!(Qualifier::of(Some("2024-01")), Qualifier::Alias("2024-01"));
    }

    #[test]
    fn foreign_arns_are_recognised() {
        let account = Account {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        };
        assert!(parse("f").unwrap().is_local_to(&account));
        let foreign = parse("arn:aws:lambda:us-west-2:000000000000:function:f").unwrap();
        assert!(!foreign.is_local_to(&account));
        assert_eq!(
            foreign.display_arn(&account),
            "arn:aws:lambda:us-west-2:000000000000:function:f"
        );
    }
}
