//! `POST /2015-03-31/functions/{name}/invocations` — Invoke.
//!
//! Headers in: `X-Amz-Invocation-Type` (`RequestResponse`, `Event`, `DryRun`),
//! `X-Amz-Log-Type` (`None`, `Tail`), `X-Amz-Client-Context` (base64 JSON). Out:
//! `X-Amz-Executed-Version`, `X-Amz-Function-Error: Unhandled` (the status stays 200),
//! `X-Amz-Log-Result` (base64 of the invocation's last 4 KB of log).
//! This is the product's hot path: no blocking work, no database, one copy of the payload.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use lamina_engine::{Engine, InvokeRequest, MAX_SYNC_PAYLOAD_BYTES};
use lamina_model::{NameShape, RequestError, Violations};

use crate::{ApiError, ControlPlane, query_pairs, query_value};

/// AWS's limit on the encoded client context.
const MAX_CLIENT_CONTEXT_BYTES: usize = 3583;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub async fn invoke(
    State(control_plane): State<Arc<ControlPlane>>,
    State(engine): State<Arc<Engine>>,
    invocations: crate::async_invoke::MaybeAsync,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let qualifier = match query.as_deref() {
        None | Some("") => None,
        Some(_) => query_value(&query_pairs(query)?, "Qualifier"),
    };
    let invocation_type = header(&headers, "x-amz-invocation-type").unwrap_or("RequestResponse");
    let log_type = header(&headers, "x-amz-log-type").unwrap_or("None");
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
    let payload = read_payload(&headers, body, "InvokeFunction", limit).await?;

    let client_context = match header(&headers, "x-amz-client-context") {
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
                invocations.as_ref().map(|axum::Extension(i)| i.as_ref()),
                &control_plane,
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
            // The invocation runs to its end in its own task, as on AWS, even if the caller
            // hangs up: dropping it half-way would strand a busy environment.
            let invocation = tokio::spawn(async move { engine.invoke(request).await });
            let result = invocation.await.map_err(|e| ApiError::Internal {
                detail: format!("invocation task failed: {e}"),
            })??;
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
