//! Lamina's Lambda control-plane HTTP API.
//!
//! The router is REST-JSON exactly as the service model (`botocore/data/lambda/2015-03-31`)
//! lays it out: several date prefixes share one server (`/2015-03-31/functions`,
//! `/2016-08-19/account-settings`, `/2017-03-31/tags`). Each handler parses its request
//! into a typed value, hands it to the [`service::ControlPlane`] on the blocking pool and
//! turns the result into JSON; failures become AWS error responses in [`error`].
//! The router is built without a socket ([`router`]), so tests drive it directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lamina_engine::Engine;
use lamina_model::NameShape;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod async_invoke;
mod concurrency;
pub mod error;
mod invoke;
pub mod server;
pub mod service;
pub mod sigv4;

pub use error::ApiError;
pub use service::ControlPlane;

/// AWS's request limit for operations that carry a zip (50 MB zipped, base64-encoded).
pub const CODE_REQUEST_LIMIT: u64 = 70_167_211;
/// The limit for every other control-plane body.
pub const DEFAULT_REQUEST_LIMIT: u64 = 6_291_456;

type Shared = Arc<ControlPlane>;

/// What every handler may reach: the control plane and the invoker.
#[derive(Debug, Clone)]
pub struct AppState {
    pub control_plane: Arc<ControlPlane>,
    pub engine: Arc<Engine>,
}

impl axum::extract::FromRef<AppState> for Arc<ControlPlane> {
    fn from_ref(state: &AppState) -> Self {
        state.control_plane.clone()
    }
}

impl axum::extract::FromRef<AppState> for Arc<Engine> {
    fn from_ref(state: &AppState) -> Self {
        state.engine.clone()
    }
}

/// The whole Lambda API: the control plane and invocation. Asynchronous invocation needs
/// an `Extension<Arc<async_invoke::AsyncInvocations>>` layered on top (501 without).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/2015-03-31/functions",
            post(create_function).get(list_functions),
        )
        .route(
            "/2015-03-31/functions/",
            post(create_function).get(list_functions),
        )
        .route(
            "/2015-03-31/functions/{name}",
            get(get_function).delete(delete_function),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(get_function_configuration).put(update_function_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            axum::routing::put(update_function_code),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
        .route(
            "/2014-11-13/functions/{name}/invoke-async",
            post(async_invoke::invoke_async),
        )
        .route(
            "/2014-11-13/functions/{name}/invoke-async/",
            post(async_invoke::invoke_async),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            axum::routing::put(async_invoke::put_event_invoke_config)
                .post(async_invoke::update_event_invoke_config)
                .get(async_invoke::get_event_invoke_config)
                .delete(async_invoke::delete_event_invoke_config),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config/list",
            get(async_invoke::list_event_invoke_configs),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            axum::routing::put(concurrency::put_function_concurrency)
                .delete(concurrency::delete_function_concurrency),
        )
        .route(
            "/2019-09-30/functions/{name}/provisioned-concurrency",
            get(concurrency::get_provisioned_concurrency)
                .put(concurrency::put_provisioned_concurrency)
                .delete(concurrency::delete_provisioned_concurrency),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(concurrency::get_function_concurrency),
        )
        .route(
            "/2015-03-31/functions/{name}/versions",
            post(publish_version).get(list_versions_by_function),
        )
        .route(
            "/2015-03-31/functions/{name}/policy",
            post(add_permission).get(get_policy),
        )
        .route(
            "/2015-03-31/functions/{name}/policy/{sid}",
            axum::routing::delete(remove_permission),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases",
            post(create_alias).get(list_aliases),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases/{alias}",
            get(get_alias).put(update_alias).delete(delete_alias),
        )
        .route("/2018-10-31/layers", get(list_layers_or_find))
        .route("/2018-10-31/layers/", get(list_layers_or_find))
        .route(
            "/2018-10-31/layers/{layer}/versions",
            post(publish_layer_version).get(list_layer_versions),
        )
        .route(
            "/2018-10-31/layers/{layer}/versions/{version}",
            get(get_layer_version).delete(delete_layer_version),
        )
        .route(
            "/2018-10-31/layers/{layer}/versions/{version}/policy",
            post(add_layer_version_permission).get(get_layer_version_policy),
        )
        .route(
            "/2018-10-31/layers/{layer}/versions/{version}/policy/{sid}",
            axum::routing::delete(remove_layer_version_permission),
        )
        .route("/2016-08-19/account-settings", get(get_account_settings))
        .route("/2016-08-19/account-settings/", get(get_account_settings))
        .route(
            "/2017-03-31/tags/{resource}",
            get(list_tags).post(tag_resource).delete(untag_resource),
        )
        .route("/lamina/code/{file}", get(download_code))
        .fallback(unknown_operation)
        .layer(middleware::from_fn(sigv4::check_authorization))
        .with_state(state)
}

/// The Lambda API as the server serves it: Invoke goes straight to its handler, past the
/// router's path matching, middleware and extractors (the product's hot path: a warm
/// invocation's other two HTTP requests are the Runtime API's); every other operation
/// goes through [`router`], with asynchronous invocation available to both.
#[derive(Debug)]
pub struct LambdaApi {
    state: AppState,
    invocations: Arc<async_invoke::AsyncInvocations>,
    router: Router,
}

impl LambdaApi {
    pub fn new(state: AppState, invocations: Arc<async_invoke::AsyncInvocations>) -> LambdaApi {
        let router = router(state.clone()).layer(axum::Extension(invocations.clone()));
        LambdaApi {
            state,
            invocations,
            router,
        }
    }

    /// Invoke, for a request the server's own HTTP/1.1 read (see [`server`]), whose
    /// connection task is never dropped before the answer is written.
    pub(crate) async fn invoke(
        &self,
        name: String,
        query: Option<&str>,
        headers: &HeaderMap,
        payload: bytes::Bytes,
    ) -> Response {
        invoke::invoke_unrouted_parts(
            &self.state,
            Some(&self.invocations),
            name,
            query,
            headers,
            Body::from(payload),
            invoke::CallerTask::RunsToTheEnd,
        )
        .await
    }

    pub async fn serve(&self, request: Request) -> Response {
        match invoke::invoke_target(&request) {
            Some(name) => {
                invoke::invoke_unrouted(&self.state, Some(&self.invocations), name, request).await
            }
            None => {
                use tower::ServiceExt as _;
                match self.router.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        }
    }
}

/// Runs a service call on the blocking pool: the service does SQLite and file I/O.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal {
            detail: format!("request task failed: {e}"),
        })?
}

/// The query string as name/value pairs; repeated names (`tagKeys=a&tagKeys=b`) are kept.
pub(crate) fn query_pairs(raw: Option<impl AsRef<str>>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.as_ref().map_or("", |raw| raw.as_ref());
    serde_urlencoded::from_str(raw).map_err(|e| ApiError::MalformedBody {
        detail: format!("query string: {e}"),
    })
}

pub(crate) fn query_value(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Reads and parses a JSON body no larger than `limit`; an empty body reads as `{}`.
async fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    operation: &'static str,
    limit: u64,
) -> Result<T, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|size| size > limit) {
        discard_body(body).await;
        return Err(ApiError::BodyTooLarge {
            operation,
            size: declared,
            limit,
        });
    }
    let bytes = axum::body::to_bytes(body, limit as usize)
        .await
        .map_err(|_| ApiError::BodyTooLarge {
            operation,
            size: None,
            limit,
        })?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedBody {
        detail: e.to_string(),
    })
}

/// Reads and drops a body the server refuses, so the client, still sending it, reads
/// the error instead of a broken pipe. Gives up (closing the connection) past 256 MB.
pub(crate) async fn discard_body(mut body: Body) {
    use http_body_util::BodyExt as _;
    const MAX_DISCARD: usize = 256 * 1024 * 1024;
    let mut discarded = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        discarded += frame.data_ref().map_or(0, |d| d.len());
        if discarded > MAX_DISCARD {
            break;
        }
    }
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_string(value).expect("responses serialize"),
    )
        .into_response()
}

async fn create_function(
    State(cp): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, body, "CreateFunction", CODE_REQUEST_LIMIT).await?;
    let configuration = blocking(move || cp.create_function(request)).await?;
    Ok(json_response(StatusCode::CREATED, &configuration))
}

async fn list_functions(
    State(cp): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    let query = service::ListFunctionsQuery {
        marker: query_value(&pairs, "Marker"),
        max_items: query_value(&pairs, "MaxItems"),
        function_version: query_value(&pairs, "FunctionVersion"),
        master_region: query_value(&pairs, "MasterRegion"),
    };
    let page = blocking(move || cp.list_functions(&query)).await?;
    Ok(json_response(StatusCode::OK, &page))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GetFunctionResponse {
    configuration: lamina_model::FunctionConfiguration,
    code: CodeLocation,
    tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<service::Concurrency>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CodeLocation {
    repository_type: &'static str,
    location: String,
}

async fn get_function(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let details = blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;
        cp.get_function(&function)
    })
    .await?;
    let response = GetFunctionResponse {
        configuration: details.configuration,
        code: CodeLocation {
            repository_type: "S3",
            location: code_location(&headers, &details.code_sha256_hex),
        },
        tags: details.tags,
        concurrency: details
            .reserved_concurrency
            .map(|reserved| service::Concurrency {
                reserved_concurrent_executions: Some(reserved),
            }),
    };
    Ok(json_response(StatusCode::OK, &response))
}

/// Where a stored zip can be downloaded. AWS hands out a presigned S3 URL; Lamina serves
/// the zip itself, at the address the caller already reached it by.
fn code_location(headers: &HeaderMap, sha256_hex: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/lamina/code/{sha256_hex}.zip")
}

async fn get_function_configuration(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let configuration = blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;
        cp.get_function_configuration(&function)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &configuration))
}

async fn update_function_configuration(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body(
        &headers,
        body,
        "UpdateFunctionConfiguration",
        DEFAULT_REQUEST_LIMIT,
    )
    .await?;
    let configuration = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.update_function_configuration(&function, request)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &configuration))
}

async fn update_function_code(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, body, "UpdateFunctionCode", CODE_REQUEST_LIMIT).await?;
    let configuration = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.update_function_code(&function, request)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &configuration))
}

async fn delete_function(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;
        cp.delete_function(&function)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn publish_version(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, body, "PublishVersion", DEFAULT_REQUEST_LIMIT).await?;
    let configuration = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.publish_version(&function, request)
    })
    .await?;
    Ok(json_response(StatusCode::CREATED, &configuration))
}

async fn list_versions_by_function(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    let marker = query_value(&pairs, "Marker");
    let max_items = query_value(&pairs, "MaxItems");
    let page = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::Namespaced)?;
        cp.list_versions_by_function(&function, marker.as_deref(), max_items.as_deref())
    })
    .await?;
    Ok(json_response(StatusCode::OK, &page))
}

async fn create_alias(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, body, "CreateAlias", DEFAULT_REQUEST_LIMIT).await?;
    let alias = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.create_alias(&function, request)
    })
    .await?;
    Ok(json_response(StatusCode::CREATED, &alias))
}

async fn list_aliases(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    let query = service::ListAliasesQuery {
        function_version: query_value(&pairs, "FunctionVersion"),
        marker: query_value(&pairs, "Marker"),
        max_items: query_value(&pairs, "MaxItems"),
    };
    let page = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.list_aliases(&function, &query)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &page))
}

async fn get_alias(
    State(cp): State<Shared>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let alias = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.get_alias(&function, &alias)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &alias))
}

async fn update_alias(
    State(cp): State<Shared>,
    Path((name, alias)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, body, "UpdateAlias", DEFAULT_REQUEST_LIMIT).await?;
    let alias = blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.update_alias(&function, &alias, request)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &alias))
}

async fn delete_alias(
    State(cp): State<Shared>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let function = cp.resolve(&name, None, NameShape::FunctionName)?;
        cp.delete_alias(&function, &alias)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn layer_response(
    cp: &ControlPlane,
    headers: &HeaderMap,
    layer: &lamina_model::layer::LayerVersion,
) -> lamina_model::layer::LayerVersionResponse {
    layer.response(cp.account(), code_location(headers, &layer.code.sha256_hex))
}

async fn publish_layer_version(
    State(cp): State<Shared>,
    Path(layer): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, body, "PublishLayerVersion", CODE_REQUEST_LIMIT).await?;
    let control_plane = cp.clone();
    let published = blocking(move || control_plane.publish_layer_version(&layer, request)).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &layer_response(&cp, &headers, &published),
    ))
}

fn layers_query(pairs: &[(String, String)]) -> service::ListLayersQuery {
    service::ListLayersQuery {
        compatible_runtime: query_value(pairs, "CompatibleRuntime"),
        compatible_architecture: query_value(pairs, "CompatibleArchitecture"),
        marker: query_value(pairs, "Marker"),
        max_items: query_value(pairs, "MaxItems"),
    }
}

/// `GET /2018-10-31/layers` is ListLayers, and with `find=LayerVersion` GetLayerVersionByArn.
async fn list_layers_or_find(
    State(cp): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    if query_value(&pairs, "find").as_deref() == Some("LayerVersion") {
        let arn = query_value(&pairs, "Arn");
        let control_plane = cp.clone();
        let layer =
            blocking(move || control_plane.get_layer_version_by_arn(arn.as_deref())).await?;
        return Ok(json_response(
            StatusCode::OK,
            &layer_response(&cp, &headers, &layer),
        ));
    }
    let query = layers_query(&pairs);
    let page = blocking(move || cp.list_layers(&query)).await?;
    Ok(json_response(StatusCode::OK, &page))
}

async fn list_layer_versions(
    State(cp): State<Shared>,
    Path(layer): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = layers_query(&query_pairs(query)?);
    let page = blocking(move || cp.list_layer_versions(&layer, &query)).await?;
    Ok(json_response(StatusCode::OK, &page))
}

async fn get_layer_version(
    State(cp): State<Shared>,
    Path((layer, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let control_plane = cp.clone();
    let found = blocking(move || control_plane.get_layer_version(&layer, &version)).await?;
    Ok(json_response(
        StatusCode::OK,
        &layer_response(&cp, &headers, &found),
    ))
}

async fn delete_layer_version(
    State(cp): State<Shared>,
    Path((layer, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    blocking(move || cp.delete_layer_version(&layer, &version)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_permission(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let request = json_body(&headers, body, "AddPermission", DEFAULT_REQUEST_LIMIT).await?;
    let statement = blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;
        cp.add_permission(&function, request)
    })
    .await?;
    Ok(json_response(StatusCode::CREATED, &statement))
}

async fn get_policy(
    State(cp): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let policy = blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;
        cp.get_policy(&function)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &policy))
}

async fn remove_permission(
    State(cp): State<Shared>,
    Path((name, sid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    let qualifier = query_value(&pairs, "Qualifier");
    let revision_id = query_value(&pairs, "RevisionId");
    blocking(move || {
        let function = cp.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;
        cp.remove_permission(&function, &sid, revision_id.as_deref())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_layer_version_permission(
    State(cp): State<Shared>,
    Path((layer, version)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let revision_id = query_value(&query_pairs(query)?, "RevisionId");
    let request = json_body(
        &headers,
        body,
        "AddLayerVersionPermission",
        DEFAULT_REQUEST_LIMIT,
    )
    .await?;
    let statement = blocking(move || {
        cp.add_layer_version_permission(&layer, &version, request, revision_id.as_deref())
    })
    .await?;
    Ok(json_response(StatusCode::CREATED, &statement))
}

async fn get_layer_version_policy(
    State(cp): State<Shared>,
    Path((layer, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let policy = blocking(move || cp.get_layer_version_policy(&layer, &version)).await?;
    Ok(json_response(StatusCode::OK, &policy))
}

async fn remove_layer_version_permission(
    State(cp): State<Shared>,
    Path((layer, version, sid)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let revision_id = query_value(&query_pairs(query)?, "RevisionId");
    blocking(move || {
        cp.remove_layer_version_permission(&layer, &version, &sid, revision_id.as_deref())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_account_settings(State(cp): State<Shared>) -> Result<Response, ApiError> {
    let settings = blocking(move || cp.account_settings()).await?;
    Ok(json_response(StatusCode::OK, &settings))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagResourceBody {
    tags: Option<BTreeMap<String, String>>,
}

async fn tag_resource(
    State(cp): State<Shared>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: TagResourceBody =
        json_body(&headers, body, "TagResource", DEFAULT_REQUEST_LIMIT).await?;
    blocking(move || cp.tag_resource(&resource, body.tags)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn untag_resource(
    State(cp): State<Shared>,
    Path(resource): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let keys: Vec<String> = query_pairs(query)?
        .into_iter()
        .filter(|(k, _)| k == "tagKeys")
        .map(|(_, v)| v)
        .collect();
    blocking(move || cp.untag_resource(&resource, &keys)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsResponse {
    tags: BTreeMap<String, String>,
}

async fn list_tags(
    State(cp): State<Shared>,
    Path(resource): Path<String>,
) -> Result<Response, ApiError> {
    let tags = blocking(move || cp.list_tags(&resource)).await?;
    Ok(json_response(StatusCode::OK, &ListTagsResponse { tags }))
}

/// Serves a stored deployment package: the `Code.Location` GetFunction hands out.
async fn download_code(
    State(cp): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::UnknownOperation {
        method: "GET".to_owned(),
        path: format!("/lamina/code/{file}"),
    };
    let Some(sha256_hex) = file
        .strip_suffix(".zip")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
    else {
        return Err(not_found());
    };
    let zip = blocking(move || Ok(cp.code_store().read_zip(&sha256_hex)?))
        .await
        .map_err(|_| not_found())?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/zip"),
        )],
        zip,
    )
        .into_response())
}

async fn unknown_operation(request: Request) -> ApiError {
    ApiError::UnknownOperation {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}
