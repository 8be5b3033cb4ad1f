//! Every way a control-plane request can fail, and the one place that decides which AWS
//! exception, HTTP status and message each failure answers with.
//!
//! AWS clients read the exception name from the `x-amzn-ErrorType` header and the message
//! from the JSON body, whose key follows the exception shape in the service model:
//! `Message` for ResourceNotFoundException and ServiceException, `message` for most
//! others. The match in [`ApiError::aws_error`] has no catch-all arm on purpose: a new
//! variant must be given its exception explicitly.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lamina_engine::{EngineError, ThrottleReason};
use lamina_model::RequestError;
use lamina_store::{CodeError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("function not found: {arn}")]
    FunctionNotFound { arn: String },
    #[error("function {name} already exists")]
    FunctionAlreadyExists { name: String },
    #[error("the revision id given does not match the latest one")]
    RevisionMismatch,
    #[error("an update to {arn} is in progress")]
    UpdateInProgress { arn: String },
    /// AWS's generic not-found answer (layer versions, policies).
    #[error("the resource does not exist")]
    ResourceNotFound,
    /// A resource exists but has no policy (RemovePermission, layer versions).
    #[error("no policy is associated with the resource")]
    PolicyNotFound,
    /// RemovePermission on a function that does not exist.
    #[error("no policy found for {arn}")]
    NoPolicyFor { arn: String },
    #[error("statement {sid} is not in the policy")]
    StatementNotFound { sid: String },
    #[error("statement id {sid} already exists")]
    StatementAlreadyExists { sid: String },
    /// A policy revision given by the caller is not the current one; AWS names a different
    /// API to call for layer policies.
    #[error("the policy revision id given is not the latest")]
    PolicyRevisionMismatch { layer: bool },
    #[error("layer version {arn} does not exist")]
    LayerVersionDoesNotExist { arn: String },
    #[error("alias {arn} already exists")]
    AliasAlreadyExists { arn: String },
    /// GetAlias's wording of a missing alias.
    #[error("cannot find alias {arn}")]
    CannotFindAlias { arn: String },
    /// UpdateAlias's wording of a missing alias.
    #[error("alias not found: {arn}")]
    AliasNotFound { arn: String },
    #[error("the version is referenced by aliases {aliases:?}")]
    VersionReferencedByAliases { aliases: Vec<String> },
    #[error("request body of {size:?} bytes exceeds the {limit}-byte limit of {operation}")]
    BodyTooLarge {
        operation: &'static str,
        size: Option<u64>,
        limit: u64,
    },
    #[error("request body is not valid: {detail}")]
    MalformedBody { detail: String },
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("client context is not base64-encoded JSON")]
    InvalidClientContext,
    #[error("invoke payload is not JSON: {detail}")]
    InvalidPayload { detail: String },
    #[error("authorization header is incomplete: {detail}")]
    IncompleteSignature { detail: String },
    #[error("{method} {path} is not an operation lamina implements")]
    UnknownOperation { method: String, path: String },
    #[error("no provisioned concurrency configuration exists for this qualifier")]
    ProvisionedConcurrencyConfigNotFound,
    /// One of AWS's own overlap refusals, word for word.
    #[error("{message}")]
    ProvisionedConflict { message: &'static str },
    /// PutProvisionedConcurrencyConfig on an alias that routes to a version another
    /// provisioned alias already covers.
    #[error(
        "provisioned concurrency on {function}:{alias} would overlap {function}:{provisioned_by} on version {version}"
    )]
    ProvisionedAliasOverlap {
        function: String,
        alias: String,
        version: String,
        provisioned_by: String,
    },
    /// UpdateAlias that would route a provisioned alias onto a version another
    /// configuration already covers.
    #[error(
        "alias {function}:{alias} has provisioned concurrency and cannot be routed to version {version}, covered by {function}:{provisioned_by}"
    )]
    ProvisionedAliasMove {
        function: String,
        alias: String,
        version: String,
        provisioned_by: String,
    },
    #[error("reserved concurrency {reserved} is below the provisioned {provisioned}")]
    ReservedBelowProvisioned { reserved: u32, provisioned: u64 },
    #[error("the function {arn} doesn't have an EventInvokeConfig")]
    EventInvokeConfigNotFound { arn: String },
    #[error(transparent)]
    Queue(lamina_queue::QueueError),
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::AlreadyExists { name } => ApiError::FunctionAlreadyExists { name },
            other => ApiError::Store(other),
        }
    }
}

/// An error as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: StatusCode,
    pub exception: &'static str,
    /// `Message` or `message`, as the exception's shape spells it.
    pub message_key: &'static str,
    pub message: String,
    /// `User` for caller mistakes, `Service` for ours.
    pub fault: &'static str,
    /// `TooManyRequestsException`'s `Reason` body member and `Retry-After` header.
    pub throttle: Option<Throttle>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub reason: &'static str,
    pub retry_after_seconds: u32,
}

fn user(status: StatusCode, exception: &'static str, message: String) -> AwsError {
    AwsError {
        status,
        exception,
        message_key: "message",
        message,
        fault: "User",
        throttle: None,
    }
}

const COULD_NOT_UNZIP: &str =
    "Could not unzip uploaded file. Please check your file, then try to upload again.";

impl ApiError {
    pub fn aws_error(&self) -> AwsError {
        match self {
            ApiError::Request(RequestError::Validation(validation)) => user(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                validation.message.clone(),
            ),
            ApiError::Request(RequestError::InvalidParameter(message)) => user(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                message.clone(),
            ),
            ApiError::Request(not_implemented @ RequestError::NotImplemented { .. }) => {
                not_implemented_error(not_implemented.to_string())
            }
            ApiError::FunctionNotFound { arn } => not_found(format!("Function not found: {arn}")),
            ApiError::FunctionAlreadyExists { name } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                format!("Function already exist: {name}"),
            ),
            ApiError::RevisionMismatch => user(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailedException",
                "The Revision Id provided does not match the latest Revision Id. Call the \
                 GetFunction/GetAlias API to retrieve the latest Revision Id"
                    .to_owned(),
            ),
            ApiError::UpdateInProgress { arn } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                format!(
                    "The operation cannot be performed at this time. An update is in progress \
                     for resource: {arn}"
                ),
            ),
            ApiError::ResourceNotFound => {
                not_found("The resource you requested does not exist.".to_owned())
            }
            ApiError::PolicyNotFound => {
                not_found("No policy is associated with the given resource.".to_owned())
            }
            ApiError::NoPolicyFor { arn } => not_found(format!("No policy found for: {arn}")),
            ApiError::StatementNotFound { sid } => {
                not_found(format!("Statement {sid} is not found in resource policy."))
            }
            ApiError::StatementAlreadyExists { sid } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                format!(
                    "The statement id ({sid}) provided already exists. Please provide a new \
                     statement id, or remove the existing statement."
                ),
            ),
            ApiError::PolicyRevisionMismatch { layer } => user(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailedException",
                format!(
                    "The Revision Id provided does not match the latest Revision Id. Call the \
                     {} API to retrieve the latest Revision Id",
                    if *layer {
                        "GetLayerPolicy"
                    } else {
                        "GetPolicy"
                    }
                ),
            ),
            ApiError::LayerVersionDoesNotExist { arn } => {
                not_found(format!("Layer version {arn} does not exist."))
            }
            ApiError::AliasAlreadyExists { arn } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                format!("Alias already exists: {arn}"),
            ),
            ApiError::CannotFindAlias { arn } => not_found(format!("Cannot find alias arn: {arn}")),
            ApiError::AliasNotFound { arn } => not_found(format!("Alias not found: {arn}")),
            ApiError::VersionReferencedByAliases { aliases } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                format!(
                    "Unable to delete version because the following aliases reference it: [{}]",
                    aliases.join(", ")
                ),
            ),
            ApiError::BodyTooLarge {
                operation, limit, ..
            } => user(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
                format!("Request must be smaller than {limit} bytes for the {operation} operation"),
            ),
            ApiError::MalformedBody { detail } => user(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                format!("Could not parse request body into json: {detail}"),
            ),
            ApiError::Code(code) => match code {
                CodeError::ZippedTooLarge { limit, .. } => user(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLargeException",
                    format!("Zipped size must be smaller than {limit} bytes"),
                ),
                CodeError::UnzippedTooLarge { limit, .. } => user(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    format!("Unzipped size must be smaller than {limit} bytes"),
                ),
                CodeError::CorruptArchive { .. }
                | CodeError::UnsafeEntry { .. }
                | CodeError::TooManyEntries { .. } => user(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    COULD_NOT_UNZIP.to_owned(),
                ),
                CodeError::MissingBlob { .. } | CodeError::Io { .. } => {
                    service_error(code.to_string())
                }
            },
            ApiError::Store(store) => match store {
                StoreError::AlreadyExists { name } => user(
                    StatusCode::CONFLICT,
                    "ResourceConflictException",
                    format!("Function already exist: {name}"),
                ),
                StoreError::NotFound { name } => AwsError {
                    message_key: "Message",
                    ..user(
                        StatusCode::NOT_FOUND,
                        "ResourceNotFoundException",
                        format!("Function not found: {name}"),
                    )
                },
                StoreError::RevisionMismatch { .. } => ApiError::RevisionMismatch.aws_error(),
                StoreError::ReservationTooLarge {
                    minimum_unreserved, ..
                } => user(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameterValueException",
                    format!(
                        "Specified ReservedConcurrentExecutions for function decreases account's \
                         UnreservedConcurrentExecution below its minimum value of \
                         [{minimum_unreserved}]."
                    ),
                ),
                StoreError::VersionInUse { aliases, .. } => ApiError::VersionReferencedByAliases {
                    aliases: aliases.clone(),
                }
                .aws_error(),
                // The service words these with full ARNs; these arms are the fallback.
                StoreError::AliasAlreadyExists { name, alias } => user(
                    StatusCode::CONFLICT,
                    "ResourceConflictException",
                    format!("Alias already exists: {name}:{alias}"),
                ),
                StoreError::AliasNotFound { name, alias } => {
                    not_found(format!("Alias not found: {name}:{alias}"))
                }
                StoreError::AliasRevisionMismatch { .. } => ApiError::RevisionMismatch.aws_error(),
                StoreError::VersionNotFound { name, version } => {
                    not_found(format!("Function not found: {name}:{version}"))
                }
                StoreError::PolicyRevisionMismatch { .. } => {
                    ApiError::PolicyRevisionMismatch { layer: false }.aws_error()
                }
                StoreError::LayerVersionNotFound { name, version } => {
                    not_found(format!("Layer version {name}:{version} does not exist."))
                }
                StoreError::Database { .. } | StoreError::Corrupt { .. } => {
                    service_error(store.to_string())
                }
            },
            ApiError::Engine(engine) => match engine {
                EngineError::FunctionNotFound { arn } => {
                    ApiError::FunctionNotFound { arn: arn.clone() }.aws_error()
                }
                EngineError::Throttled { reason } => AwsError {
                    throttle: Some(Throttle {
                        reason: reason.as_str(),
                        retry_after_seconds: 1,
                    }),
                    ..user(
                        StatusCode::TOO_MANY_REQUESTS,
                        "TooManyRequestsException",
                        "Rate Exceeded.".to_owned(),
                    )
                },
                EngineError::HostMemoryFull { .. } => AwsError {
                    throttle: Some(Throttle {
                        reason: ThrottleReason::ConcurrentInvocationLimitExceeded.as_str(),
                        retry_after_seconds: 1,
                    }),
                    ..user(
                        StatusCode::TOO_MANY_REQUESTS,
                        "TooManyRequestsException",
                        format!("Rate Exceeded. Lamina: {engine}"),
                    )
                },
                // The environment cannot start: a platform fault, in the exception AWS
                // answers when a function's runtime cannot run (502, SDKs retry it).
                EngineError::RuntimeUnavailable(unavailable) => AwsError {
                    status: StatusCode::BAD_GATEWAY,
                    exception: "InvalidRuntimeException",
                    message_key: "Message",
                    message: sentence(&unavailable.to_string()),
                    fault: "Service",
                    throttle: None,
                },
                EngineError::MissingBootstrap
                | EngineError::Store(_)
                | EngineError::Code(_)
                | EngineError::Sandbox(_)
                | EngineError::Io { .. }
                | EngineError::Internal { .. } => service_error(engine.to_string()),
            },
            ApiError::InvalidClientContext => user(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "Client context must be a valid Base64-encoded JSON object.".to_owned(),
            ),
            ApiError::InvalidPayload { detail } => user(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                format!(
                    "Could not parse request body into json: Could not parse payload into json: {detail}"
                ),
            ),
            ApiError::IncompleteSignature { detail } => user(
                StatusCode::FORBIDDEN,
                "IncompleteSignatureException",
                detail.clone(),
            ),
            ApiError::UnknownOperation { .. } => not_implemented_error(self.to_string()),
            ApiError::ProvisionedConcurrencyConfigNotFound => user(
                StatusCode::NOT_FOUND,
                "ProvisionedConcurrencyConfigNotFoundException",
                "No Provisioned Concurrency Config found for this function".to_owned(),
            ),
            ApiError::ProvisionedConflict { message } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                (*message).to_owned(),
            ),
            // AWS refuses both with ResourceConflictException, but no source we could find
            // records its exact wording for these two cases (its known messages cover an
            // alias over a provisioned version and a version under a provisioned alias),
            // so these follow their style and name what collides.
            ApiError::ProvisionedAliasOverlap {
                function,
                alias: _,
                version,
                provisioned_by,
            } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                format!(
                    "Alias can't be used for Provisioned Concurrency configuration on version \
                     {version}, already Provisioned by {function}:{provisioned_by}. Remove that \
                     configuration first."
                ),
            ),
            ApiError::ProvisionedAliasMove {
                function,
                alias,
                version,
                provisioned_by,
            } => user(
                StatusCode::CONFLICT,
                "ResourceConflictException",
                format!(
                    "Alias {function}:{alias} has a Provisioned Concurrency configuration and \
                     can't be routed to version {version}, already Provisioned by \
                     {function}:{provisioned_by}. Remove one of the two configurations first."
                ),
            ),
            ApiError::ReservedBelowProvisioned {
                reserved,
                provisioned,
            } => user(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                format!(
                    "ReservedConcurrentExecutions {reserved} should not be lower than function's \
                     total provisioned concurrency [{provisioned}]."
                ),
            ),
            ApiError::EventInvokeConfigNotFound { arn } => AwsError {
                message_key: "Message",
                ..user(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFoundException",
                    format!("The function {arn} doesn't have an EventInvokeConfig"),
                )
            },
            ApiError::Queue(queue) => service_error(queue.to_string()),
            ApiError::Internal { detail } => service_error(detail.clone()),
        }
    }
}

/// `ResourceNotFoundException`, whose shape spells its message key `Message`.
fn not_found(message: String) -> AwsError {
    AwsError {
        message_key: "Message",
        ..user(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }
}

/// A message that starts with a capital letter, as AWS's do.
pub(crate) fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Not an AWS exception: AWS implements everything it lists. 501 tells the caller plainly
/// that this server lacks the feature, and AWS SDKs do not retry it.
fn not_implemented_error(message: String) -> AwsError {
    user(
        StatusCode::NOT_IMPLEMENTED,
        "NotImplementedException",
        message,
    )
}

fn service_error(message: String) -> AwsError {
    AwsError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        exception: "ServiceException",
        message_key: "Message",
        message,
        fault: "Service",
        throttle: None,
    }
}

impl AwsError {
    pub fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("Type".to_owned(), self.fault.into());
        body.insert(self.message_key.to_owned(), self.message.into());
        if let Some(throttle) = &self.throttle {
            body.insert("Reason".to_owned(), throttle.reason.into());
        }
        let mut response = (
            self.status,
            [(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            serde_json::Value::Object(body).to_string(),
        )
            .into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.exception));
        if let Some(throttle) = &self.throttle {
            response.headers_mut().insert(
                "Retry-After",
                HeaderValue::from(throttle.retry_after_seconds),
            );
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let aws = self.aws_error();
        if aws.status.is_server_error() && aws.status != StatusCode::NOT_IMPLEMENTED {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(exception = aws.exception, message = %aws.message, "request refused");
        }
        aws.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_that_cannot_start_is_a_platform_fault_in_aws_s_exception() {
        let error = ApiError::Engine(EngineError::RuntimeUnavailable(
            lamina_runtimes::Unavailable {
                runtime: "python3.14".to_owned(),
                reason: "no Python 3.14 interpreter was found".to_owned(),
            },
        ));
        assert_eq!(
            error.aws_error(),
            AwsError {
                status: StatusCode::BAD_GATEWAY,
                exception: "InvalidRuntimeException",
                message_key: "Message",
                message: "Runtime python3.14 is not available on this Lamina server: no Python \
                          3.14 interpreter was found"
                    .to_owned(),
                fault: "Service",
                throttle: None,
            }
        );
    }
}
