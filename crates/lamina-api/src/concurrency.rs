//! Reserved concurrency: `PutFunctionConcurrency`, `GetFunctionConcurrency`,
//! `DeleteFunctionConcurrency`. (Provisioned concurrency lives with versions and aliases.)

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lamina_model::NameShape;
use serde::Deserialize;

use crate::{ApiError, DEFAULT_REQUEST_LIMIT, Shared, blocking, json_body, json_response};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutFunctionConcurrencyBody {
    reserved_concurrent_executions: Option<i64>,
}

pub(crate) async fn put_function_concurrency(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: PutFunctionConcurrencyBody = json_body(
        &headers,
        body,
        "PutFunctionConcurrency",
        DEFAULT_REQUEST_LIMIT,
    )
    .await?;
    let concurrency = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.put_function_concurrency(&function, body.reserved_concurrent_executions)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &concurrency))
}

pub(crate) async fn get_function_concurrency(
    State(cp): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let concurrency = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.get_function_concurrency(&function)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &concurrency))
}

pub(crate) async fn delete_function_concurrency(
    State(cp): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.delete_function_concurrency(&function)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
