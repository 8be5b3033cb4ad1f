//! `POST /2015-03-31/functions/{name}/invocations` — Invoke.
//!
//! Headers in: `X-Amz-Invocation-Type` (`RequestResponse`, `Event`, `DryRun`),
//! `X-Amz-Log-Type` (`None`, `Tail`), `X-Amz-Client-Context` (base64 JSON). Out:
//! `X-Amz-Executed-Version`, `X-Amz-Function-Error: Unhandled` (the status stays 200),
//! `X-Amz-Log-Result` (base64 of the invocation's last 4 KB of log).
//! This is the product's hot path: no blocking work, no database, one copy of the payload.

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use lamina_engine::{InvokeRequest, MAX_SYNC_PAYLOAD_BYTES};
use lamina_model::{NameShape, RequestError, Violations};

use crate::{ApiError, query_pairs, query_value};

/// AWS's limit on the encoded client context.
const MAX_CLIENT_CONTEXT_BYTES: usize = 3583;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub async fn invoke(
    State(state): State<crate::AppState>,
    invocations: crate::async_invoke::MaybeAsync,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let invocations = invocations.as_ref().map(|axum::Extension(i)| i.as_ref());
    invoke_function(
        &state,
        invocations,
        name,
        query.as_deref(),
        &headers,
        body,
        CallerTask::MayBeDropped,
    )
    .await
}

/// The function name of `POST /2015-03-31/functions/{name}/invocations`, decoded as the
/// router's `Path` extractor decodes it, so that the server can take Invoke past the
/// router. `None` for any other request, and for a name the router would refuse (not
/// UTF-8 once decoded), which the router then answers as always.
pub fn invoke_target(request: &Request) -> Option<String> {
    if request.method() != Method::POST {
        return None;
    }
    invoke_target_path(request.uri().path())
}

/// [`invoke_target`] for the path of a `POST` (without its query).
pub(crate) fn invoke_target_path(path: &str) -> Option<String> {
    let name = path
        .strip_prefix("/2015-03-31/functions/")?
        .strip_suffix("/invocations")?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// Whether the task awaiting [`invoke_function`] may be dropped before the invocation
/// ends (hyper drops a request's future when its caller hangs up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallerTask {
    MayBeDropped,
    RunsToTheEnd,
}

/// Invoke without the router, its middleware and its extractors: the same checks (the
/// `Authorization` header's shape included), handler and answers as the routed
/// operation, for the request [`invoke_target`] named.
pub async fn invoke_unrouted(
    state: &crate::AppState,
    invocations: Option<&crate::async_invoke::AsyncInvocations>,
    name: String,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    invoke_unrouted_parts(
        state,
        invocations,
        name,
        parts.uri.query(),
        &parts.headers,
        body,
        CallerTask::MayBeDropped,
    )
    .await
}

/// [`invoke_unrouted`] for a request already taken apart (the server's own HTTP/1.1).
pub(crate) async fn invoke_unrouted_parts(
    state: &crate::AppState,
    invocations: Option<&crate::async_invoke::AsyncInvocations>,
    name: String,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    caller_task: CallerTask,
) -> Response {
    if let Err(refused) = crate::sigv4::credential(headers) {
        return refused.into_response();
    }
    invoke_function(state, invocations, name, query, headers, body, caller_task)
        .await
        .into_response()
}

async fn invoke_function(
    state: &crate::AppState,
    invocations: Option<&crate::async_invoke::AsyncInvocations>,
    name: String,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    caller_task: CallerTask,
) -> Result<Response, ApiError> {
    let crate::AppState {
        control_plane,
        engine,
    } = state;
    let qualifier = match query {
        None | Some("") => None,
        Some(query) => query_value(&query_pairs(Some(query))?, "Qualifier"),
    };
    let invocation_type = header(headers, "x-amz-invocation-type").unwrap_or("RequestResponse");
    let log_type = header(headers, "x-amz-log-type").unwrap_or("None");
    let mut violations = Violations::new();
    violations.one_of(
        "invocationType",
        invocation_type,
        &["Event", "RequestResponse", "DryRun"],
    );
    violations.one_of("logType", log_type, &["None", "Tail"]);
    violations.into_result().map_err(RequestError::from)?;
    let function = control_plane.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;

    let limit = if invocation_type == "Event" {
        crate::async_invoke::MAX_EVENT_PAYLOAD_BYTES
    } else {
        MAX_SYNC_PAYLOAD_BYTES
    };
    let payload = read_payload(headers, body, "InvokeFunction", limit).await?;

    let client_context = match header(headers, "x-amz-client-context") {
        None => None,
        Some(encoded) => Some(decode_client_context(encoded)?),
    };

    match invocation_type {
        "DryRun" => {
            // The function must exist; nothing runs.
            let cp = control_plane.clone();
            crate::blocking(move || cp.get_function_configuration(&function).map(|_| ())).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "Event" => {
            let request_id = crate::async_invoke::accept_event(
                invocations,
                control_plane,
                function,
                payload,
                client_context,
            )
            .await?;
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert("x-amzn-RequestId", value);
            }
            Ok(response)
        }
        _ => {
            let request = InvokeRequest {
                function_name: function.name,
                qualifier: function.qualifier,
                payload,
                client_context,
                tail_log: log_type == "Tail",
            };
            // The invocation runs to its end, as on AWS, even if the caller hangs up:
            // dropping it half-way would strand a busy environment. A caller's task that
            // may be dropped therefore runs it in a task of its own.
            let result = match caller_task {
                CallerTask::RunsToTheEnd => engine.invoke(request).await?,
                CallerTask::MayBeDropped => {
                    let engine = engine.clone();
                    let invocation = tokio::spawn(async move { engine.invoke(request).await });
                    invocation.await.map_err(|e| ApiError::Internal {
                        detail: format!("invocation task failed: {e}"),
                    })??
                }
            };
            let mut response = Response::new(Body::from(result.payload));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(version) = HeaderValue::from_str(&result.executed_version) {
                headers.insert("x-amz-executed-version", version);
            }
            if let Some(error) = result.function_error {
                headers.insert("x-amz-function-error", HeaderValue::from_static(error));
            }
            if let Some(tail) = result.log_tail {
                let encoded = base64::engine::general_purpose::STANDARD.encode(tail);
                if let Ok(value) = HeaderValue::from_str(&encoded) {
                    headers.insert("x-amz-log-result", value);
                }
            }
            Ok(response)
        }
    }
}

/// Reads an invocation's payload (at most `limit` bytes, 413 above; JSON; empty = `{}`).
pub(crate) async fn read_payload(
    headers: &HeaderMap,
    body: Body,
    operation: &'static str,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    let too_large = || ApiError::BodyTooLarge {
        operation,
        size: declared.map(|s| s as u64),
        limit: limit as u64,
    };
    if declared.is_some_and(|size| size > limit) {
        crate::discard_body(body).await;
        return Err(too_large());
    }
    let payload = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&payload).map_err(|e| {
        ApiError::InvalidPayload {
            detail: e.to_string(),
        }
    })?;
    Ok(payload)
}

/// The runtime receives the client context as the JSON the caller encoded.
fn decode_client_context(encoded: &str) -> Result<String, ApiError> {
    if encoded.len() > MAX_CLIENT_CONTEXT_BYTES {
        return Err(ApiError::InvalidClientContext);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| ApiError::InvalidClientContext)?;
    let value: serde_json::Value =
        serde_json::from_slice(&decoded).map_err(|_| ApiError::InvalidClientContext)?;
    if !value.is_object() {
        return Err(ApiError::InvalidClientContext);
    }
    String::from_utf8(decoded).map_err(|_| ApiError::InvalidClientContext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, uri: &str) -> Option<String> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        invoke_target(&request)
    }

    #[test]
    fn invoke_is_recognised_with_the_name_decoded_as_the_router_would() {
        assert_eq!(
            target("POST", "/2015-03-31/functions/f/invocations").as_deref(),
            Some("f")
        );
        assert_eq!(
            target(
                "POST",
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Af/invocations?Qualifier=1"
            )
            .as_deref(),
            Some("arn:aws:lambda:us-east-1:1:function:f")
        );
        // Everything else is the router's: other methods and paths, an empty name, a
        // trailing slash, a name that does not decode to UTF-8.
        for (method, uri) in [
            ("GET", "/2015-03-31/functions/f/invocations"),
            ("POST", "/2015-03-31/functions/f/invocations/"),
            ("POST", "/2015-03-31/functions//invocations"),
            ("POST", "/2015-03-31/functions/a/b/invocations"),
            ("POST", "/2014-11-13/functions/f/invoke-async/"),
            ("POST", "/2015-03-31/functions/%FF/invocations"),
            ("POST", "/2015-03-31/functions"),
        ] {
            assert_eq!(target(method, uri), None, "{method} {uri}");
        }
    }
}
