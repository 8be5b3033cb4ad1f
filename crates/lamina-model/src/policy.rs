//! Resource-based policies: the statements AddPermission and AddLayerVersionPermission add,
//! in the JSON AWS returns, and their evaluation for callers that are not the account
//! itself (function URLs, event sources).
//!
//! A policy belongs to one resource: a function (unqualified), one published version, one
//! alias, or one layer version. AWS returns statements and whole policies as JSON
//! *strings*; the shapes here serialize to exactly the documents AWS prints, member order
//! included:
//!
//! ```json
//! {"Version":"2012-10-17","Id":"default","Statement":[{"Sid":"s3","Effect":"Allow",
//!  "Principal":{"Service":"s3.amazonaws.com"},"Action":"lambda:InvokeFunction",
//!  "Resource":"arn:aws:lambda:us-east-1:123456789012:function:f",
//!  "Condition":{"ArnLike":{"AWS:SourceArn":"arn:aws:s3:::bucket"}}}]}
//! ```

use serde::{Deserialize, Serialize};

use crate::function::{RequestError, require};
use crate::validation::{Violations, full_match};

pub const POLICY_VERSION: &str = "2012-10-17";

/// Patterns of the permission members, verbatim from the service model.
pub mod patterns {
    pub const STATEMENT_ID: &str = r"([a-zA-Z0-9-_]+)";
    pub const NAMESPACED_STATEMENT_ID: &str = r"([a-zA-Z0-9-_.]+)";
    pub const ACTION: &str = r"(lambda:[*]|lambda:[a-zA-Z]+|[*])";
    pub const PRINCIPAL: &str = r"[^\s]+";
    pub const SOURCE_ARN: &str =
        r"arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:([a-z]{2}(-gov)?-[a-z]+-\d{1})?:(\d{12})?:(.*)";
    pub const SOURCE_OWNER: &str = r"\d{12}";
    pub const EVENT_SOURCE_TOKEN: &str = r"[a-zA-Z0-9._\-]+";
    pub const PRINCIPAL_ORG_ID: &str = r"o-[a-z0-9]{10,32}";
    pub const LAYER_ACTION: &str = r"lambda:GetLayerVersion";
    pub const LAYER_PRINCIPAL: &str = r"\d{12}|\*|arn:(aws[a-zA-Z-]*):iam::\d{12}:root";
}

/// A policy document as AWS prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Statement")]
    pub statements: Vec<Statement>,
}

impl Default for PolicyDocument {
    fn default() -> Self {
        PolicyDocument {
            version: POLICY_VERSION.to_owned(),
            id: "default".to_owned(),
            statements: Vec::new(),
        }
    }
}

impl PolicyDocument {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("policies serialize")
    }

    pub fn from_json(json: &str) -> Result<PolicyDocument, serde_json::Error> {
        serde_json::from_str(json)
    }

    pub fn statement(&self, sid: &str) -> Option<&Statement> {
        self.statements.iter().find(|s| s.sid == sid)
    }

    /// Whether any statement allows `request`. Only `Allow` statements exist (AddPermission
    /// makes no others), so the first match decides.
    pub fn allows(&self, request: &AccessRequest<'_>) -> bool {
        self.statements.iter().any(|s| s.allows(request))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "Sid")]
    pub sid: String,
    #[serde(rename = "Effect")]
    pub effect: String,
    #[serde(rename = "Principal")]
    pub principal: Principal,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Resource")]
    pub resource: String,
    #[serde(
        rename = "Condition",
        default,
        skip_serializing_if = "Condition::is_empty"
    )]
    pub condition: Condition,
}

impl Statement {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("statements serialize")
    }
}

/// `"*"`, `{"Service": "s3.amazonaws.com"}` or `{"AWS": "arn:aws:iam::123456789012:root"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Principal {
    Anyone(String),
    Service {
        #[serde(rename = "Service")]
        service: String,
    },
    Aws {
        #[serde(rename = "AWS")]
        aws: String,
    },
}

/// The condition keys AddPermission can set, in the order AWS prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(
        rename = "StringEquals",
        default,
        skip_serializing_if = "StringEquals::is_empty"
    )]
    pub string_equals: StringEquals,
    #[serde(rename = "ArnLike", default, skip_serializing_if = "Option::is_none")]
    pub arn_like: Option<ArnLike>,
    #[serde(rename = "Bool", default, skip_serializing_if = "Option::is_none")]
    pub bool: Option<BoolCondition>,
}

impl Condition {
    pub fn is_empty(&self) -> bool {
        self.string_equals.is_empty() && self.arn_like.is_none() && self.bool.is_none()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringEquals {
    #[serde(
        rename = "AWS:SourceAccount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_account: Option<String>,
    #[serde(
        rename = "lambda:FunctionUrlAuthType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub function_url_auth_type: Option<String>,
    #[serde(
        rename = "aws:PrincipalOrgID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub principal_org_id: Option<String>,
    #[serde(
        rename = "lambda:EventSourceToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub event_source_token: Option<String>,
}

impl StringEquals {
    pub fn is_empty(&self) -> bool {
        self.source_account.is_none()
            && self.function_url_auth_type.is_none()
            && self.principal_org_id.is_none()
            && self.event_source_token.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArnLike {
    #[serde(rename = "AWS:SourceArn")]
    pub source_arn: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoolCondition {
    #[serde(rename = "lambda:InvokedViaFunctionUrl")]
    pub invoked_via_function_url: String,
}

/// Who is calling, for [`PolicyDocument::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// An AWS service principal, e.g. `s3.amazonaws.com`.
    Service(&'a str),
    /// An IAM principal: an account id, or the ARN of a user or role.
    Aws(&'a str),
    /// Nobody authenticated (a function URL with auth type `NONE`).
    Anonymous,
}

/// What a caller wants to do, with the request context conditions are evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    pub caller: Caller<'a>,
    /// `lambda:InvokeFunction`, `lambda:InvokeFunctionUrl`, ...
    pub action: &'a str,
    /// The ARN of the resource acted on (function, version or alias).
    pub resource: &'a str,
    pub source_arn: Option<&'a str>,
    pub source_account: Option<&'a str>,
    pub principal_org_id: Option<&'a str>,
    pub event_source_token: Option<&'a str>,
    pub function_url_auth_type: Option<&'a str>,
    pub invoked_via_function_url: bool,
}

impl<'a> AccessRequest<'a> {
    /// A request with no context beyond who, what and which resource.
    pub fn new(caller: Caller<'a>, action: &'a str, resource: &'a str) -> AccessRequest<'a> {
        AccessRequest {
            caller,
            action,
            resource,
            source_arn: None,
            source_account: None,
            principal_org_id: None,
            event_source_token: None,
            function_url_auth_type: None,
            invoked_via_function_url: false,
        }
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` any one; actions case-insensitively.
fn wildcard_match(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let (pattern, value): (Vec<char>, Vec<char>) = if ignore_case {
        (
            pattern.to_lowercase().chars().collect(),
            value.to_lowercase().chars().collect(),
        )
    } else {
        (pattern.chars().collect(), value.chars().collect())
    };
    let (mut p, mut v) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while v < value.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == value[v]) {
            p += 1;
            v += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, v));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            v = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

impl Statement {
    fn allows(&self, request: &AccessRequest<'_>) -> bool {
        self.effect == "Allow"
            && self.principal_matches(request.caller)
            && wildcard_match(&self.action, request.action, true)
            && wildcard_match(&self.resource, request.resource, false)
            && self.conditions_hold(request)
    }

    fn principal_matches(&self, caller: Caller<'_>) -> bool {
        match (&self.principal, caller) {
            (Principal::Anyone(any), _) => any == "*",
            (Principal::Service { service }, Caller::Service(name)) => service == name,
            (Principal::Aws { aws }, Caller::Aws(who)) => {
                let account = who
                    .strip_prefix("arn:")
                    .and_then(|rest| rest.split(':').nth(3))
                    .unwrap_or(who);
                aws == who || *aws == format!("arn:aws:iam::{account}:root")
            }
            _ => false,
        }
    }

    /// Every condition must hold; a condition on a key the request lacks does not.
    fn conditions_hold(&self, request: &AccessRequest<'_>) -> bool {
        let equals = |expected: &Option<String>, actual: Option<&str>| match expected {
            None => true,
            Some(expected) => actual == Some(expected.as_str()),
        };
        let c = &self.condition;
        equals(&c.string_equals.source_account, request.source_account)
            && equals(
                &c.string_equals.function_url_auth_type,
                request.function_url_auth_type,
            )
            && equals(&c.string_equals.principal_org_id, request.principal_org_id)
            && equals(
                &c.string_equals.event_source_token,
                request.event_source_token,
            )
            && c.arn_like.as_ref().is_none_or(|like| {
                request
                    .source_arn
                    .is_some_and(|arn| wildcard_match(&like.source_arn, arn, false))
            })
            && c.bool.as_ref().is_none_or(|b| {
                b.invoked_via_function_url == request.invoked_via_function_url.to_string()
            })
    }
}

/// AddPermission's body (the qualifier comes from the query string).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddPermissionRequest {
    pub statement_id: Option<String>,
    pub action: Option<String>,
    pub principal: Option<String>,
    pub source_arn: Option<String>,
    pub source_account: Option<String>,
    pub event_source_token: Option<String>,
    pub revision_id: Option<String>,
    #[serde(rename = "PrincipalOrgID")]
    pub principal_org_id: Option<String>,
    pub function_url_auth_type: Option<String>,
    pub invoked_via_function_url: Option<bool>,
}

fn invalid_principal() -> RequestError {
    RequestError::InvalidParameter(
        "The provided principal was invalid. Please check the principal and try again.".to_owned(),
    )
}

/// The `Principal` of a statement, as AWS rewrites what the caller gave.
fn principal_of(given: &str) -> Result<Principal, RequestError> {
    if given == "*" {
        return Ok(Principal::Anyone("*".to_owned()));
    }
    if given.len() == 12 && given.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Principal::Aws {
            aws: format!("arn:aws:iam::{given}:root"),
        });
    }
    if given.starts_with("arn:") {
        if full_match(
            r"arn:(aws[a-zA-Z-]*):iam::\d{12}:(root|user/.+|role/.+|assumed-role/.+)",
            given,
        ) {
            return Ok(Principal::Aws {
                aws: given.to_owned(),
            });
        }
        return Err(invalid_principal());
    }
    // Service principals are DNS names in AWS's domains.
    let service_domain = given.ends_with(".amazonaws.com") || given.ends_with(".amazon.com");
    if service_domain
        && given
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Ok(Principal::Service {
            service: given.to_owned(),
        });
    }
    Err(invalid_principal())
}

impl AddPermissionRequest {
    /// Validates the request and builds its statement for `resource` (the ARN of the
    /// function, version or alias the policy belongs to).
    pub fn statement(&self, resource: &str) -> Result<Statement, RequestError> {
        let mut violations = Violations::new();
        match &self.statement_id {
            Some(sid) => {
                violations.length("statementId", sid, 1, 100);
                violations.pattern("statementId", sid, patterns::STATEMENT_ID);
            }
            None => {
                require(&mut violations, "statementId", &self.statement_id);
            }
        }
        match &self.action {
            Some(action) => violations.pattern("action", action, patterns::ACTION),
            None => {
                require(&mut violations, "action", &self.action);
            }
        }
        match &self.principal {
            Some(principal) => violations.pattern("principal", principal, patterns::PRINCIPAL),
            None => {
                require(&mut violations, "principal", &self.principal);
            }
        }
        if let Some(arn) = &self.source_arn {
            violations.pattern("sourceArn", arn, patterns::SOURCE_ARN);
        }
        if let Some(account) = &self.source_account {
            violations.length("sourceAccount", account, 0, 12);
            violations.pattern("sourceAccount", account, patterns::SOURCE_OWNER);
        }
        if let Some(token) = &self.event_source_token {
            violations.length("eventSourceToken", token, 0, 256);
            violations.pattern("eventSourceToken", token, patterns::EVENT_SOURCE_TOKEN);
        }
        if let Some(org) = &self.principal_org_id {
            violations.length("principalOrgID", org, 12, 34);
            violations.pattern("principalOrgID", org, patterns::PRINCIPAL_ORG_ID);
        }
        if let Some(auth) = &self.function_url_auth_type {
            violations.one_of("functionUrlAuthType", auth, &["NONE", "AWS_IAM"]);
        }
        violations.into_result()?;
        let principal = principal_of(self.principal.as_deref().unwrap_or_default())?;
        Ok(Statement {
            sid: self.statement_id.clone().unwrap_or_default(),
            effect: "Allow".to_owned(),
            principal,
            action: self.action.clone().unwrap_or_default(),
            resource: resource.to_owned(),
            condition: Condition {
                string_equals: StringEquals {
                    source_account: self.source_account.clone(),
                    function_url_auth_type: self.function_url_auth_type.clone(),
                    principal_org_id: self.principal_org_id.clone(),
                    event_source_token: self.event_source_token.clone(),
                },
                arn_like: self
                    .source_arn
                    .clone()
                    .map(|source_arn| ArnLike { source_arn }),
                bool: self
                    .invoked_via_function_url
                    .filter(|v| *v)
                    .map(|v| BoolCondition {
                        invoked_via_function_url: v.to_string(),
                    }),
            },
        })
    }
}

/// AddLayerVersionPermission's body (its `RevisionId` comes from the query string).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddLayerVersionPermissionRequest {
    pub statement_id: Option<String>,
    pub action: Option<String>,
    pub principal: Option<String>,
    pub organization_id: Option<String>,
}

impl AddLayerVersionPermissionRequest {
    pub fn statement(&self, resource: &str) -> Result<Statement, RequestError> {
        let mut violations = Violations::new();
        match &self.statement_id {
            Some(sid) => {
                violations.length("statementId", sid, 1, 100);
                violations.pattern("statementId", sid, patterns::STATEMENT_ID);
            }
            None => {
                require(&mut violations, "statementId", &self.statement_id);
            }
        }
        match &self.action {
            Some(action) => {
                violations.length("action", action, 0, 22);
                violations.pattern("action", action, patterns::LAYER_ACTION);
            }
            None => {
                require(&mut violations, "action", &self.action);
            }
        }
        match &self.principal {
            Some(principal) => {
                violations.pattern("principal", principal, patterns::LAYER_PRINCIPAL)
            }
            None => {
                require(&mut violations, "principal", &self.principal);
            }
        }
        if let Some(org) = &self.organization_id {
            violations.length("organizationId", org, 0, 34);
            violations.pattern("organizationId", org, patterns::PRINCIPAL_ORG_ID);
        }
        violations.into_result()?;
        let principal = principal_of(self.principal.as_deref().unwrap_or_default())?;
        Ok(Statement {
            sid: self.statement_id.clone().unwrap_or_default(),
            effect: "Allow".to_owned(),
            principal,
            action: self.action.clone().unwrap_or_default(),
            resource: resource.to_owned(),
            condition: Condition {
                string_equals: StringEquals {
                    principal_org_id: self.organization_id.clone(),
                    ..StringEquals::default()
                },
                ..Condition::default()
            },
        })
    }
}

/// Checks the `StatementId` of RemovePermission / RemoveLayerVersionPermission.
pub fn check_statement_id(sid: &str, namespaced: bool) -> Result<(), RequestError> {
    let mut violations = Violations::new();
    violations.length("statementId", sid, 1, 100);
    let pattern = if namespaced {
        patterns::NAMESPACED_STATEMENT_ID
    } else {
        patterns::STATEMENT_ID
    };
    violations.pattern("statementId", sid, pattern);
    Ok(violations.into_result()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUNCTION: &str = "arn:aws:lambda:us-east-1:123456789012:function:f";

    fn add(body: serde_json::Value) -> Result<Statement, RequestError> {
        serde_json::from_value::<AddPermissionRequest>(body)
            .unwrap()
            .statement(FUNCTION)
    }

    #[test]
    fn statements_print_as_aws_prints_them() {
        let statement = add(serde_json::json!({
            "StatementId": "s3",
            "Action": "lambda:InvokeFunction",
            "Principal": "s3.amazonaws.com",
            "SourceArn": "arn:aws:s3:::bucket",
        }))
        .unwrap();
        assert_eq!(
            statement.to_json(),
            r#"{"Sid":"s3","Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"lambda:InvokeFunction","Resource":"arn:aws:lambda:us-east-1:123456789012:function:f","Condition":{"ArnLike":{"AWS:SourceArn":"arn:aws:s3:::bucket"}}}"#
        );
        let url = add(serde_json::json!({
            "StatementId": "url",
            "Action": "lambda:InvokeFunctionUrl",
            "Principal": "*",
            "SourceAccount": "123456789012",
            "FunctionUrlAuthType": "NONE",
            "PrincipalOrgID": "o-1234567890",
            "SourceArn": "arn:aws:s3:::bucket",
        }))
        .unwrap();
        assert_eq!(
            url.to_json(),
            r#"{"Sid":"url","Effect":"Allow","Principal":"*","Action":"lambda:InvokeFunctionUrl","Resource":"arn:aws:lambda:us-east-1:123456789012:function:f","Condition":{"StringEquals":{"AWS:SourceAccount":"123456789012","lambda:FunctionUrlAuthType":"NONE","aws:PrincipalOrgID":"o-1234567890"},"ArnLike":{"AWS:SourceArn":"arn:aws:s3:::bucket"}}}"#
        );
        let account = add(serde_json::json!({
            "StatementId": "a", "Action": "lambda:InvokeFunction", "Principal": "111122223333",
        }))
        .unwrap();
        assert_eq!(
            account.principal,
            Principal::Aws {
                aws: "arn:aws:iam::111122223333:root".into()
            }
        );
        let document = PolicyDocument {
            statements: vec![statement, url, account],
            ..PolicyDocument::default()
        };
        assert_eq!(
            PolicyDocument::from_json(&document.to_json()).unwrap(),
            document
        );
    }

    #[test]
    fn bad_members_are_refused_with_aws_messages() {
        let error = add(serde_json::json!({
            "StatementId": "example.com", "Action": "lambda:InvokeFunction", "Principal": "*",
        }))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "1 validation error detected: Value 'example.com' at 'statementId' failed to \
             satisfy constraint: Member must satisfy regular expression pattern: \
             ([a-zA-Z0-9-_]+)"
        );
        let error = add(serde_json::json!({
            "StatementId": "x", "Action": "lambda:InvokeFunction", "Principal": "invalid.nonaws.com",
        }))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "The provided principal was invalid. Please check the principal and try again."
        );
    }

    #[test]
    fn evaluation_checks_principal_action_resource_and_conditions() {
        let document = PolicyDocument {
            statements: vec![
                add(serde_json::json!({
                    "StatementId": "s3", "Action": "lambda:InvokeFunction",
                    "Principal": "s3.amazonaws.com",
                    "SourceArn": "arn:aws:s3:::bucket-*", "SourceAccount": "123456789012",
                }))
                .unwrap(),
                add(serde_json::json!({
                    "StatementId": "url", "Action": "lambda:InvokeFunctionUrl",
                    "Principal": "*", "FunctionUrlAuthType": "NONE",
                }))
                .unwrap(),
                add(serde_json::json!({
                    "StatementId": "all", "Action": "lambda:*", "Principal": "111122223333",
                }))
                .unwrap(),
            ],
            ..PolicyDocument::default()
        };
        let s3 = AccessRequest {
            source_arn: Some("arn:aws:s3:::bucket-logs"),
            source_account: Some("123456789012"),
            ..AccessRequest::new(
                Caller::Service("s3.amazonaws.com"),
                "lambda:InvokeFunction",
                FUNCTION,
            )
        };
        assert!(document.allows(&s3));
        assert!(!document.allows(&AccessRequest {
            source_arn: Some("arn:aws:s3:::other"),
            ..s3
        }));
        assert!(!document.allows(&AccessRequest {
            source_account: None,
            ..s3
        }));
        assert!(!document.allows(&AccessRequest {
            caller: Caller::Service("sqs.amazonaws.com"),
            ..s3
        }));
        assert!(!document.allows(&AccessRequest {
            resource: "arn:aws:lambda:us-east-1:123456789012:function:other",
            ..s3
        }));

        let url = AccessRequest {
            function_url_auth_type: Some("NONE"),
            ..AccessRequest::new(Caller::Anonymous, "lambda:InvokeFunctionUrl", FUNCTION)
        };
        assert!(document.allows(&url));
        assert!(!document.allows(&AccessRequest {
            function_url_auth_type: Some("AWS_IAM"),
            ..url
        }));
        assert!(!document.allows(&AccessRequest::new(
            Caller::Anonymous,
            "lambda:InvokeFunction",
            FUNCTION
        )));

        let account = AccessRequest::new(
            Caller::Aws("arn:aws:iam::111122223333:role/deployer"),
            "lambda:GetFunction",
            FUNCTION,
        );
        assert!(document.allows(&account));
        assert!(!document.allows(&AccessRequest {
            caller: Caller::Aws("444455556666"),
            ..account
        }));
        assert!(PolicyDocument::default().statements.is_empty());
        assert!(!PolicyDocument::default().allows(&account));
    }

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard_match("arn:aws:s3:::*", "arn:aws:s3:::b", false));
        assert!(wildcard_match("a*c?e", "abbbcde", false));
        assert!(!wildcard_match("a*c?e", "abbbce", false));
        assert!(wildcard_match(
            "lambda:invoke*",
            "lambda:InvokeFunction",
            true
        ));
        assert!(!wildcard_match("ARN", "arn", false));
    }
}
