//! SigV4 `Authorization` headers: every AWS client signs its requests with
//! `AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request,
//! SignedHeaders=..., Signature=...`.
//!
//! Lamina parses the header and refuses malformed ones as AWS does
//! (`403 IncompleteSignatureException`), but does not verify signatures yet: unsigned
//! requests are accepted too, so `curl` works against a local server.

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The parts of a SigV4 credential scope that identify the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

/// Parses an `Authorization` header value; the error is AWS's message for it.
pub fn parse_authorization(value: &str) -> Result<Credential, String> {
    let Some(parameters) = value.strip_prefix("AWS4-HMAC-SHA256") else {
        return Err(format!(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
             header with the AWS4-HMAC-SHA256 scheme. Authorization={value}"
        ));
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in parameters.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let mut missing = Vec::new();
    for (name, present) in [
        ("Credential", credential.is_some()),
        ("Signature", signature.is_some()),
        ("SignedHeaders", signed_headers.is_some()),
    ] {
        if !present {
            missing.push(format!("Authorization header requires '{name}' parameter."));
        }
    }
    if !missing.is_empty() {
        return Err(format!("{} Authorization={value}", missing.join(" ")));
    }
    let scope: Vec<&str> = credential.unwrap_or_default().split('/').collect();
    match scope.as_slice() {
        [key, date, region, service, "aws4_request"] if !key.is_empty() => Ok(Credential {
            access_key_id: (*key).to_owned(),
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
        }),
        _ => Err(format!(
            "Credential should be scoped to a valid region, not '{}'. ",
            credential.unwrap_or_default()
        )),
    }
}

/// The caller's credential from a request's `Authorization` header: `None` without one,
/// AWS's refusal for a malformed one.
pub(crate) fn credential(headers: &HeaderMap) -> Result<Option<Credential>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .map_err(|_| "Authorization header is not valid ASCII".to_owned())
        .and_then(parse_authorization)
        .map(Some)
        .map_err(|detail| ApiError::IncompleteSignature { detail })
}

/// Middleware: refuses malformed `Authorization` headers and records the caller's
/// credential for the handlers.
pub async fn check_authorization(mut request: Request, next: Next) -> Response {
    match credential(request.headers()) {
        Ok(Some(credential)) => {
            request.extensions_mut().insert(credential);
        }
        Ok(None) => {}
        Err(refused) => return refused.into_response(),
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_header_every_sdk_sends() {
        let credential = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240501/us-east-1/lambda/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=abcdef",
        )
        .unwrap();
        assert_eq!(credential.access_key_id, "AKIDEXAMPLE");
        assert_eq!(credential.region, "us-east-1");
        assert_eq!(credential.service, "lambda");
    }

    #[test]
    fn names_every_missing_part() {
        let error = parse_authorization("AWS4-HMAC-SHA256 Credential=A/1/r/lambda/aws4_request")
            .unwrap_err();
        assert!(error.contains("requires 'Signature' parameter"));
        assert!(error.contains("requires 'SignedHeaders' parameter"));
    }
}
