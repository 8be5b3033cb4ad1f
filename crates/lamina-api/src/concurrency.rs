//! Reserved concurrency (`PutFunctionConcurrency`, `GetFunctionConcurrency`,
//! `DeleteFunctionConcurrency`) and provisioned concurrency (`Put`/`Get`/`Delete`/
//! `ListProvisionedConcurrencyConfig(s)`, on a published version or an alias).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lamina_model::NameShape;
use serde::Deserialize;

use crate::{
    ApiError, DEFAULT_REQUEST_LIMIT, Shared, blocking, json_body, json_response, query_pairs,
    query_value,
};

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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutProvisionedConcurrencyBody {
    provisioned_concurrent_executions: Option<i64>,
}

pub(crate) async fn put_provisioned_concurrency(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let body: PutProvisionedConcurrencyBody = json_body(
        &headers,
        body,
        "PutProvisionedConcurrencyConfig",
        DEFAULT_REQUEST_LIMIT,
    )
    .await?;
    let config = blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::FunctionName)?;
        cp.put_provisioned_concurrency(&function, body.provisioned_concurrent_executions)
    })
    .await?;
    Ok(json_response(StatusCode::ACCEPTED, &config))
}

/// `GET .../provisioned-concurrency`: one configuration, or all of them with `List=ALL`.
pub(crate) async fn get_provisioned_concurrency(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    let qualifier = query_value(&pairs, "Qualifier");
    if query_value(&pairs, "List").as_deref() == Some("ALL") {
        let list = blocking(move || {
            let function = cp.resolve(&name, None, NameShape::FunctionName)?;
            cp.list_provisioned_concurrency(&function)
        })
        .await?;
        return Ok(json_response(StatusCode::OK, &list));
    }
    let config = blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::FunctionName)?;
        cp.get_provisioned_concurrency(&function)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &config))
}

pub(crate) async fn delete_provisioned_concurrency(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::FunctionName)?;
        cp.delete_provisioned_concurrency(&function)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
