//! Asynchronous invocation over HTTP, and the bridge from the queue to the invoker.
//!
//! - `Invoke` with `X-Amz-Invocation-Type: Event` (1 MB payload) and the deprecated
//!   `InvokeAsync` (`POST /2014-11-13/functions/{name}/invoke-async/`, 256 KB) store the
//!   event in the durable queue and answer `202` once it is on disk.
//! - `Put/Update/Get/Delete/ListFunctionEventInvokeConfig(s)`
//!   (`/2019-09-25/functions/{name}/event-invoke-config[/list]`).
//! - [`EngineInvoker`]: how the queue's dispatcher runs an event on the [`Engine`].
//!
//! The queue reaches the handlers as an axum `Extension<Arc<AsyncInvocations>>` added by
//! the composition root; without it these operations answer 501.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use lamina_engine::{Engine, EngineError, InvokeRequest};
use lamina_model::validation::full_match;
use lamina_model::{FunctionRef, LATEST, NameShape, RequestError, Violations};
use lamina_queue::{
    Attempt, BoxFuture, ConfigStore, EventInvokeConfig, EventInvoker, EventQueue, QueuedEvent,
    parse_function_arn,
};
use lamina_store::MetadataStore;
use serde::{Deserialize, Serialize};

use crate::service::FunctionChangeListener;
use crate::{ApiError, ControlPlane, blocking, json_body, json_response, query_pairs, query_value};

/// AWS's limit on an asynchronous invocation's payload.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 1_048_576;
/// The deprecated InvokeAsync's limit.
pub const MAX_INVOKE_ASYNC_BYTES: usize = 262_144;
const LIST_PAGE_LIMIT: usize = 50;
/// The service model's `DestinationArn` pattern.
const DESTINATION_ARN: &str = r"$|kafka://([^.]([a-zA-Z0-9\-_.]{0,248}))|arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:([a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1})?:(\d{12})?:(.*)";

/// How long a function seen to exist is trusted to exist by the Event path without
/// reading the store again. An event accepted for a function deleted within this window
/// is dropped by the dispatcher with a warning (the function is gone when it runs).
const EXISTENCE_TTL: Duration = Duration::from_secs(1);

/// The queue and the event invoke configurations, shared by the handlers.
#[derive(Debug)]
pub struct AsyncInvocations {
    pub queue: Arc<dyn EventQueue>,
    pub configs: Arc<ConfigStore>,
    /// (name, qualifier) → when the store last confirmed the function exists.
    seen: Mutex<HashMap<(String, Option<String>), Instant>>,
}

impl AsyncInvocations {
    pub fn new(queue: Arc<dyn EventQueue>, configs: Arc<ConfigStore>) -> AsyncInvocations {
        AsyncInvocations {
            queue,
            configs,
            seen: Mutex::default(),
        }
    }

    fn recently_seen(&self, function: &FunctionRef) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&(function.name.clone(), function.qualifier.clone()))
            .is_some_and(|at| at.elapsed() < EXISTENCE_TTL)
    }

    fn saw(&self, function: &FunctionRef) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, at| at.elapsed() < EXISTENCE_TTL);
        }
        seen.insert(
            (function.name.clone(), function.qualifier.clone()),
            Instant::now(),
        );
    }
}

pub(crate) type MaybeAsync = Option<Extension<Arc<AsyncInvocations>>>;

fn not_configured() -> ApiError {
    RequestError::NotImplemented {
        feature: "asynchronous invocation (this server runs without an event queue)".to_owned(),
    }
    .into()
}

/// Stores an event for `function` (which must exist) and answers once it is durable.
pub(crate) async fn accept_event(
    invocations: Option<&AsyncInvocations>,
    control_plane: &Arc<ControlPlane>,
    function: FunctionRef,
    payload: Bytes,
    client_context: Option<String>,
) -> Result<String, ApiError> {
    let invocations = invocations.ok_or_else(not_configured)?;
    if !invocations.recently_seen(&function) {
        let cp = control_plane.clone();
        let checked = function.clone();
        blocking(move || cp.get_function_configuration(&checked).map(|_| ())).await?;
        invocations.saw(&function);
    }
    let request_id = lamina_engine::random_uuid().to_string();
    let event = QueuedEvent::new(
        request_id.clone(),
        function.name,
        function.qualifier,
        payload,
        client_context,
    );
    invocations
        .queue
        .enqueue(event)
        .await
        .map_err(ApiError::Queue)?;
    Ok(request_id)
}

/// `POST /2014-11-13/functions/{name}/invoke-async/` — InvokeAsync (deprecated).
pub(crate) async fn invoke_async(
    State(control_plane): State<Arc<ControlPlane>>,
    invocations: MaybeAsync,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let function = control_plane.resolve(&name, None, NameShape::Namespaced)?;
    let payload =
        crate::invoke::read_payload(&headers, body, "InvokeAsync", MAX_INVOKE_ASYNC_BYTES).await?;
    let request_id = accept_event(
        invocations.as_ref().map(|Extension(i)| i.as_ref()),
        &control_plane,
        function,
        payload,
        None,
    )
    .await?;
    let mut response = json_response(StatusCode::ACCEPTED, &serde_json::json!({"Status": 202}));
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    Ok(response)
}

/// Runs queued events on the engine: the dispatcher's view of the invoker.
#[derive(Debug)]
pub struct EngineInvoker {
    engine: Arc<Engine>,
    control_plane: Arc<ControlPlane>,
}

impl EngineInvoker {
    pub fn new(engine: Arc<Engine>, control_plane: Arc<ControlPlane>) -> EngineInvoker {
        EngineInvoker {
            engine,
            control_plane,
        }
    }
}

impl EventInvoker for EngineInvoker {
    fn invoke(&self, event: &QueuedEvent) -> BoxFuture<'_, Attempt> {
        let request = InvokeRequest {
            function_name: event.function_name.clone(),
            qualifier: event.qualifier.clone(),
            payload: event.payload.clone(),
            client_context: event.client_context.clone(),
            tail_log: false,
        };
        let request_id = event.id.clone();
        Box::pin(async move {
            match self.engine.invoke_as(request, Some(request_id)).await {
                Ok(result) => Attempt::Finished {
                    executed_version: result.executed_version,
                    payload: result.payload,
                    function_error: result.function_error.map(str::to_owned),
                },
                Err(EngineError::Throttled { .. } | EngineError::HostMemoryFull { .. }) => {
                    Attempt::Throttled
                }
                Err(EngineError::FunctionNotFound { .. }) => Attempt::FunctionGone,
                Err(other) => Attempt::SystemError(other.to_string()),
            }
        })
    }

    fn dead_letter_target(&self, event: &QueuedEvent) -> BoxFuture<'_, Option<String>> {
        let cp = self.control_plane.clone();
        let name = event.function_name.clone();
        let qualifier = event.qualifier.clone();
        Box::pin(async move {
            blocking(move || {
                let function = cp.resolve(&name, qualifier.as_deref(), NameShape::Namespaced)?;
                cp.get_function_configuration(&function)
            })
            .await
            .ok()
            .and_then(|configuration| configuration.dead_letter_config)
            .map(|dlq| dlq.target_arn)
            .filter(|arn| !arn.is_empty())
        })
    }

    fn function_arn(&self, event: &QueuedEvent) -> String {
        self.control_plane.account().qualified_function_arn(
            &event.function_name,
            Some(event.qualifier.as_deref().unwrap_or(LATEST)),
        )
    }

    fn new_request_id(&self) -> String {
        lamina_engine::random_uuid().to_string()
    }
}

/// Forwards function changes to the invoker and forgets the event invoke configurations
/// of a deleted function, so a function created again under its name starts without them.
#[derive(Debug)]
pub struct ForgetDeletedConfigs {
    pub inner: Arc<dyn FunctionChangeListener>,
    pub store: Arc<dyn MetadataStore>,
    pub configs: Arc<ConfigStore>,
}

impl FunctionChangeListener for ForgetDeletedConfigs {
    fn function_changed(&self, function_name: &str) {
        self.inner.function_changed(function_name);
        if matches!(self.store.get_version(function_name, LATEST), Ok(None)) {
            for (qualifier, _) in self.configs.list(function_name) {
                if let Err(error) = self.configs.delete(function_name, &qualifier) {
                    tracing::warn!(%error, function = function_name,
                        "could not remove the event invoke configuration of a deleted function");
                }
            }
        }
    }

    fn reservation_changed(&self, function_name: &str, reserved: Option<u32>) {
        self.inner.reservation_changed(function_name, reserved);
    }

    fn provisioned_targets(
        &self,
        function_name: &str,
        targets: &std::collections::BTreeMap<String, u32>,
    ) {
        self.inner.provisioned_targets(function_name, targets);
    }

    fn provisioned_allocated(&self, function_name: &str, version: &str) -> u32 {
        self.inner.provisioned_allocated(function_name, version)
    }

    fn version_changed(&self, function_name: &str, version: &str) {
        self.inner.version_changed(function_name, version);
    }

    fn alias_changed(&self, function_name: &str, alias: &str) {
        self.inner.alias_changed(function_name, alias);
    }

    fn code_in_use(&self) -> std::collections::HashSet<String> {
        self.inner.code_in_use()
    }
}

// ---- Event invoke configuration ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EventInvokeConfigBody {
    maximum_retry_attempts: Option<i64>,
    maximum_event_age_in_seconds: Option<i64>,
    destination_config: Option<DestinationConfigBody>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationConfigBody {
    on_success: Option<DestinationBody>,
    on_failure: Option<DestinationBody>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
}

/// The `FunctionEventInvokeConfig` shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventInvokeConfigResponse {
    last_modified: f64,
    function_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    maximum_retry_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maximum_event_age_in_seconds: Option<u32>,
    destination_config: DestinationConfigBody,
}

fn to_response(
    control_plane: &ControlPlane,
    name: &str,
    qualifier: &str,
    config: EventInvokeConfig,
) -> EventInvokeConfigResponse {
    EventInvokeConfigResponse {
        last_modified: config.last_modified,
        function_arn: control_plane
            .account()
            .qualified_function_arn(name, Some(qualifier)),
        maximum_retry_attempts: config.maximum_retry_attempts,
        maximum_event_age_in_seconds: config.maximum_event_age_in_seconds,
        destination_config: DestinationConfigBody {
            on_success: Some(DestinationBody {
                destination: config.on_success,
            }),
            on_failure: Some(DestinationBody {
                destination: config.on_failure,
            }),
        },
    }
}

/// Resolves the function and its qualifier (`$LATEST` when none) and checks it exists.
fn existing_function(
    control_plane: &ControlPlane,
    name: &str,
    qualifier: Option<String>,
) -> Result<(FunctionRef, String), ApiError> {
    let function = control_plane.resolve(name, qualifier.as_deref(), NameShape::Namespaced)?;
    control_plane.get_function_configuration(&function)?;
    let qualifier = function
        .qualifier
        .clone()
        .unwrap_or_else(|| LATEST.to_owned());
    Ok((function, qualifier))
}

/// Checks a request and applies it to `config` (empty for Put, the stored one for Update).
fn apply_body(
    control_plane: &ControlPlane,
    function: &FunctionRef,
    body: EventInvokeConfigBody,
    mut config: EventInvokeConfig,
) -> Result<EventInvokeConfig, ApiError> {
    let mut violations = Violations::new();
    if let Some(retries) = body.maximum_retry_attempts {
        violations.range("maximumRetryAttempts", retries, 0, 2);
    }
    if let Some(age) = body.maximum_event_age_in_seconds {
        violations.range("maximumEventAgeInSeconds", age, 60, 21_600);
    }
    let destinations = body.destination_config.unwrap_or_default();
    for (member, destination) in [
        (
            "destinationConfig.onSuccess.destination",
            &destinations.on_success,
        ),
        (
            "destinationConfig.onFailure.destination",
            &destinations.on_failure,
        ),
    ] {
        if let Some(arn) = destination.as_ref().and_then(|d| d.destination.as_deref()) {
            violations.length(member, arn, 0, 350);
            if !full_match(DESTINATION_ARN, arn) {
                violations.push(
                    member,
                    Some(arn),
                    &format!("Member must satisfy regular expression pattern: {DESTINATION_ARN}"),
                );
            }
        }
    }
    violations.into_result().map_err(RequestError::from)?;

    let on_success = destinations.on_success.map(|d| d.destination);
    let on_failure = destinations.on_failure.map(|d| d.destination);
    let any_destination = [&on_success, &on_failure].iter().any(|d| {
        d.as_ref()
            .is_some_and(|d| d.as_deref().is_some_and(|a| !a.is_empty()))
    });
    if body.maximum_retry_attempts.is_none()
        && body.maximum_event_age_in_seconds.is_none()
        && !any_destination
    {
        return Err(RequestError::InvalidParameter(
            "You must specify at least one of error handling or destination setting.".to_owned(),
        )
        .into());
    }
    for arn in [&on_success, &on_failure]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|arn| !arn.is_empty())
    {
        check_destination(control_plane, function, arn)?;
    }
    if let Some(retries) = body.maximum_retry_attempts {
        config.maximum_retry_attempts = Some(retries as u32);
    }
    if let Some(age) = body.maximum_event_age_in_seconds {
        config.maximum_event_age_in_seconds = Some(age as u32);
    }
    if let Some(destination) = on_success {
        config.on_success = destination.filter(|arn| !arn.is_empty());
    }
    if let Some(destination) = on_failure {
        config.on_failure = destination.filter(|arn| !arn.is_empty());
    }
    config.last_modified = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
    Ok(config)
}

/// Only Lamina functions other than the function itself can receive records so far.
fn check_destination(
    control_plane: &ControlPlane,
    function: &FunctionRef,
    arn: &str,
) -> Result<(), ApiError> {
    match parse_function_arn(arn) {
        Some((name, _)) => {
            if name == function.name {
                return Err(RequestError::InvalidParameter(
                    "You can't specify the function as a destination for itself.".to_owned(),
                )
                .into());
            }
            let target = control_plane.resolve(arn, None, NameShape::Namespaced)?;
            if !target.is_local_to(control_plane.account()) {
                return Err(RequestError::InvalidParameter(format!(
                    "The destination {arn} is not a function of this account and region."
                ))
                .into());
            }
            Ok(())
        }
        None => Err(RequestError::NotImplemented {
            feature: format!(
                "destination {arn}: only Lamina functions (arn:aws:lambda:...:function:NAME) \
                 are supported as destinations so far; SQS, SNS, EventBridge, S3 and Kafka \
                 destinations are not supported yet"
            ),
        }
        .into()),
    }
}

fn config_not_found(control_plane: &ControlPlane, name: &str, qualifier: &str) -> ApiError {
    ApiError::EventInvokeConfigNotFound {
        arn: control_plane
            .account()
            .qualified_function_arn(name, Some(qualifier)),
    }
}

/// Put replaces the configuration; Update changes the given settings of an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigWrite {
    Put,
    Update,
}

impl ConfigWrite {
    fn operation(self) -> &'static str {
        match self {
            ConfigWrite::Put => "PutFunctionEventInvokeConfig",
            ConfigWrite::Update => "UpdateFunctionEventInvokeConfig",
        }
    }
}

async fn write_config(
    control_plane: Arc<ControlPlane>,
    invocations: MaybeAsync,
    name: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
    write: ConfigWrite,
) -> Result<Response, ApiError> {
    let Some(Extension(invocations)) = invocations else {
        return Err(not_configured());
    };
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let body: EventInvokeConfigBody = json_body(
        &headers,
        body,
        write.operation(),
        crate::DEFAULT_REQUEST_LIMIT,
    )
    .await?;
    let cp = control_plane.clone();
    let response = blocking(move || {
        let (function, qualifier) = existing_function(&cp, &name, qualifier)?;
        let current = invocations.configs.get(&function.name, &qualifier);
        let base = if write == ConfigWrite::Update {
            current.ok_or_else(|| config_not_found(&cp, &function.name, &qualifier))?
        } else {
            EventInvokeConfig::default()
        };
        let config = apply_body(&cp, &function, body, base)?;
        invocations
            .configs
            .put(&function.name, &qualifier, &config)
            .map_err(ApiError::Queue)?;
        Ok(to_response(&cp, &function.name, &qualifier, config))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &response))
}

/// `PUT /2019-09-25/functions/{name}/event-invoke-config` — replaces the configuration.
pub(crate) async fn put_event_invoke_config(
    State(control_plane): State<Arc<ControlPlane>>,
    invocations: MaybeAsync,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    write_config(
        control_plane,
        invocations,
        name,
        query,
        headers,
        body,
        ConfigWrite::Put,
    )
    .await
}

/// `POST /2019-09-25/functions/{name}/event-invoke-config` — changes the given settings.
pub(crate) async fn update_event_invoke_config(
    State(control_plane): State<Arc<ControlPlane>>,
    invocations: MaybeAsync,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    write_config(
        control_plane,
        invocations,
        name,
        query,
        headers,
        body,
        ConfigWrite::Update,
    )
    .await
}

pub(crate) async fn get_event_invoke_config(
    State(control_plane): State<Arc<ControlPlane>>,
    invocations: MaybeAsync,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Some(Extension(invocations)) = invocations else {
        return Err(not_configured());
    };
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let cp = control_plane.clone();
    let response = blocking(move || {
        let (function, qualifier) = existing_function(&cp, &name, qualifier)?;
        let config = invocations
            .configs
            .get(&function.name, &qualifier)
            .ok_or_else(|| config_not_found(&cp, &function.name, &qualifier))?;
        Ok(to_response(&cp, &function.name, &qualifier, config))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &response))
}

pub(crate) async fn delete_event_invoke_config(
    State(control_plane): State<Arc<ControlPlane>>,
    invocations: MaybeAsync,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Some(Extension(invocations)) = invocations else {
        return Err(not_configured());
    };
    let qualifier = query_value(&query_pairs(query)?, "Qualifier");
    let cp = control_plane.clone();
    blocking(move || {
        let (function, qualifier) = existing_function(&cp, &name, qualifier)?;
        if invocations
            .configs
            .delete(&function.name, &qualifier)
            .map_err(ApiError::Queue)?
        {
            Ok(())
        } else {
            Err(config_not_found(&cp, &function.name, &qualifier))
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListResponse {
    function_event_invoke_configs: Vec<EventInvokeConfigResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
}

pub(crate) async fn list_event_invoke_configs(
    State(control_plane): State<Arc<ControlPlane>>,
    invocations: MaybeAsync,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Some(Extension(invocations)) = invocations else {
        return Err(not_configured());
    };
    let pairs = query_pairs(query)?;
    let marker = query_value(&pairs, "Marker");
    let max_items = query_value(&pairs, "MaxItems");
    let cp = control_plane.clone();
    let response = blocking(move || {
        let mut violations = Violations::new();
        let max_items = match max_items {
            None => LIST_PAGE_LIMIT,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) => {
                    violations.range("maxItems", n, 1, 50);
                    n.clamp(1, 50) as usize
                }
                Err(_) => {
                    return Err(ApiError::MalformedBody {
                        detail: format!("MaxItems '{raw}' is not an integer"),
                    });
                }
            },
        };
        violations.into_result().map_err(RequestError::from)?;
        let function = cp.resolve(&name, None, NameShape::Namespaced)?;
        cp.get_function_configuration(&function)?;
        let start = match marker {
            None => 0,
            Some(marker) => marker.parse::<usize>().map_err(|_| {
                ApiError::Request(RequestError::InvalidParameter(format!(
                    "Invalid marker: {marker}"
                )))
            })?,
        };
        let all = invocations.configs.list(&function.name);
        let page: Vec<_> = all
            .iter()
            .skip(start)
            .take(max_items)
            .map(|(qualifier, config)| to_response(&cp, &function.name, qualifier, config.clone()))
            .collect();
        let next = start + page.len();
        Ok(ListResponse {
            function_event_invoke_configs: page,
            next_marker: (next < all.len()).then(|| next.to_string()),
        })
    })
    .await?;
    Ok(json_response(StatusCode::OK, &response))
}
