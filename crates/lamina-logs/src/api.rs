//! The CloudWatch Logs API subset, in the AWS JSON 1.1 protocol.
//!
//! Every request is `POST /` with `X-Amz-Target: Logs_20140328.<Operation>` and a JSON body
//! (`Content-Type: application/x-amz-json-1.1`); every answer is JSON of the same content
//! type. Errors answer 400 (500 for our own faults) with the exception name both in the
//! `x-amzn-ErrorType` header and in the body: `{"__type": "ResourceNotFoundException",
//! "message": "The specified log group does not exist."}`. Shapes follow botocore's model
//! `botocore/data/logs/2014-03-28/service-2.json`; unknown request members are ignored, as
//! JSON-protocol services do, so newer clients keep working.
//!
//! Pagination tokens are opaque to clients. GetLogEvents answers `f/<56 digits>` and
//! `b/<56 digits>` like AWS: the digits hold an [`EventPosition`] (28 for the timestamp, 28
//! for the event id). At the end of the stream the forward token repeats the one given,
//! which is how clients know to stop. FilterLogEvents' `nextToken` is the same 56 digits
//! and is only present while more events match. Describe tokens are base64 of the last
//! item's sort key.
//!
//! Requests are not authenticated here: the composition root decides what guards the port.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::LogError;
use crate::filter::{FilterPattern, FilterPatternError};
use crate::store::{
    EventPosition, GroupFilter, GroupQuery, LogStore, ReadDirection, StreamCursor, StreamOrder,
    StreamQuery, StreamRead,
};

/// `X-Amz-Target` values of CloudWatch Logs operations start with this.
pub const TARGET_PREFIX: &str = "Logs_20140328.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Generous for these operations: the largest legal request (100 stream names) is ~60 KB.
const MAX_REQUEST_BYTES: usize = 1_048_576;
const DESCRIBE_LIMIT: i64 = 50;
const EVENTS_LIMIT: i64 = 10_000;

/// Whether a request is addressed to the CloudWatch Logs API (so the composition root can
/// send it to [`router`] on a port shared with the Lambda API).
pub fn is_logs_request(headers: &HeaderMap) -> bool {
    headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|target| target.starts_with(TARGET_PREFIX))
}

/// The CloudWatch Logs API over one [`LogStore`].
pub fn router(store: Arc<LogStore>) -> Router {
    Router::new()
        .route("/", post(dispatch))
        .fallback(unknown_path)
        .with_state(store)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("operation {target:?} is not one lamina's CloudWatch Logs API implements")]
    UnknownOperation { target: String },
    #[error("request body is not valid JSON for this operation: {detail}")]
    Serialization { detail: String },
    #[error("{message}")]
    InvalidParameter { message: String },
    #[error(transparent)]
    FilterPattern(#[from] FilterPatternError),
    #[error(transparent)]
    Store(#[from] LogError),
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidParameter {
        message: message.into(),
    }
}

impl ApiError {
    /// Status, exception name and message. No catch-all arm: a new variant must choose.
    pub fn aws_error(&self) -> (StatusCode, &'static str, String) {
        let client = |exception, message: String| (StatusCode::BAD_REQUEST, exception, message);
        match self {
            ApiError::UnknownOperation { .. } => {
                client("UnknownOperationException", self.to_string())
            }
            ApiError::Serialization { .. } => client("SerializationException", self.to_string()),
            ApiError::InvalidParameter { message } => {
                client("InvalidParameterException", message.clone())
            }
            ApiError::FilterPattern(error) => {
                client("InvalidParameterException", error.to_string())
            }
            ApiError::Store(LogError::GroupNotFound { .. }) => client(
                "ResourceNotFoundException",
                "The specified log group does not exist.".to_owned(),
            ),
            ApiError::Store(LogError::StreamNotFound { .. }) => client(
                "ResourceNotFoundException",
                "The specified log stream does not exist.".to_owned(),
            ),
            ApiError::Store(
                error @ (LogError::Database { .. }
                | LogError::WriteFailed { .. }
                | LogError::WriterStopped),
            ) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceUnavailableException",
                error.to_string(),
            ),
            ApiError::Internal { detail } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceUnavailableException",
                detail.clone(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, exception, message) = self.aws_error();
        if status.is_server_error() {
            tracing::error!(error = %self, "logs request failed");
        } else {
            tracing::debug!(exception, %message, "logs request refused");
        }
        let body = serde_json::json!({ "__type": exception, "message": message });
        let mut response = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            body.to_string(),
        )
            .into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(exception));
        response
    }
}

async fn unknown_path(headers: HeaderMap) -> ApiError {
    ApiError::UnknownOperation {
        target: target(&headers).unwrap_or_default().to_owned(),
    }
}

fn target(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-amz-target").and_then(|v| v.to_str().ok())
}

async fn dispatch(State(store): State<Arc<LogStore>>, headers: HeaderMap, body: Body) -> Response {
    let target = target(&headers).unwrap_or_default().to_owned();
    let Some(operation) = target.strip_prefix(TARGET_PREFIX) else {
        return ApiError::UnknownOperation { target }.into_response();
    };
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::Serialization {
                detail: format!("cannot read the body: {e}"),
            }
            .into_response();
        }
    };
    match operation {
        "DescribeLogGroups" => call(store, body, describe_log_groups).await,
        "DescribeLogStreams" => call(store, body, describe_log_streams).await,
        "GetLogEvents" => call(store, body, get_log_events).await,
        "FilterLogEvents" => call(store, body, filter_log_events).await,
        _ => ApiError::UnknownOperation {
            target: target.clone(),
        }
        .into_response(),
    }
}

/// Parses the body, runs the operation on the blocking pool (it reads SQLite) and answers.
async fn call<Req, Resp>(
    store: Arc<LogStore>,
    body: Bytes,
    operation: fn(&LogStore, Req) -> Result<Resp, ApiError>,
) -> Response
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let request: Req = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => {
            return ApiError::Serialization {
                detail: e.to_string(),
            }
            .into_response();
        }
    };
    let result = tokio::task::spawn_blocking(move || operation(&store, request))
        .await
        .unwrap_or_else(|e| {
            Err(ApiError::Internal {
                detail: format!("request task failed: {e}"),
            })
        });
    match result {
        Ok(response) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            serde_json::to_vec(&response).expect("responses always serialize"),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

fn limit(value: Option<i64>, max: i64) -> Result<usize, ApiError> {
    match value {
        None => Ok(max as usize),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(n) => Err(invalid(format!(
            "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: \
             Member must have value between 1 and {max}"
        ))),
    }
}

/// A log group name from `logGroupName` or `logGroupIdentifier` (a name or an ARN).
fn group_name(name: Option<String>, identifier: Option<String>) -> Result<String, ApiError> {
    match (name, identifier) {
        (Some(_), Some(_)) => Err(invalid(
            "LogGroup name and LogGroup ARN are mutually exclusive parameters.",
        )),
        (Some(name), None) => Ok(name),
        (None, Some(identifier)) => Ok(group_from_identifier(&identifier)),
        (None, None) => Err(invalid(
            "Should provide either logGroupName or logGroupIdentifier.",
        )),
    }
}

fn group_from_identifier(identifier: &str) -> String {
    match identifier.split_once(":log-group:") {
        Some((_, rest)) if identifier.starts_with("arn:") => {
            rest.strip_suffix(":*").unwrap_or(rest).to_owned()
        }
        _ => identifier.to_owned(),
    }
}

fn invalid_token() -> ApiError {
    invalid("The specified nextToken is invalid.")
}

/// Describe tokens: base64url of `LAST_EVENT_TIME/NAME` of the last item returned.
fn encode_describe_token(cursor: &StreamCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}/{}", cursor.last_event_time, cursor.name))
}

fn decode_describe_token(token: &str) -> Result<StreamCursor, ApiError> {
    let decoded = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid_token)?;
    let (time, name) = decoded.split_once('/').ok_or_else(invalid_token)?;
    Ok(StreamCursor {
        last_event_time: time.parse().map_err(|_| invalid_token())?,
        name: name.to_owned(),
    })
}

fn encode_position(position: EventPosition) -> String {
    format!(
        "{:028}{:028}",
        position.timestamp.max(0),
        position.id.max(0)
    )
}

fn decode_position(digits: &str) -> Result<EventPosition, ApiError> {
    if digits.len() != 56 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_token());
    }
    let (timestamp, id) = digits.split_at(28);
    Ok(EventPosition {
        timestamp: timestamp.parse().map_err(|_| invalid_token())?,
        id: id.parse().map_err(|_| invalid_token())?,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeLogGroupsRequest {
    log_group_name_prefix: Option<String>,
    log_group_name_pattern: Option<String>,
    log_group_identifiers: Option<Vec<String>>,
    next_token: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DescribeLogGroupsResponse {
    log_groups: Vec<LogGroupShape>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LogGroupShape {
    log_group_name: String,
    creation_time: i64,
    metric_filter_count: i64,
    /// AWS's historical form, with a trailing `:*`.
    arn: String,
    stored_bytes: i64,
    log_group_class: &'static str,
    log_group_arn: String,
}

fn describe_log_groups(
    store: &LogStore,
    request: DescribeLogGroupsRequest,
) -> Result<DescribeLogGroupsResponse, ApiError> {
    if request.log_group_name_prefix.is_some() && request.log_group_name_pattern.is_some() {
        return Err(invalid(
            "LogGroup name prefix and LogGroup name pattern are mutually exclusive parameters.",
        ));
    }
    let names = request
        .log_group_identifiers
        .map(|ids| ids.iter().map(|id| group_from_identifier(id)).collect());
    let after_name = match request.next_token {
        Some(token) => Some(decode_describe_token(&token)?.name),
        None => None,
    };
    let page = store.log_groups(&GroupQuery {
        name_prefix: request.log_group_name_prefix,
        name_contains: request.log_group_name_pattern.filter(|p| !p.is_empty()),
        names,
        after_name,
        limit: limit(request.limit, DESCRIBE_LIMIT)?,
    })?;
    let next_token = match page.items.last() {
        Some(last) if page.more => Some(encode_describe_token(&StreamCursor {
            last_event_time: 0,
            name: last.name.clone(),
        })),
        _ => None,
    };
    let log_groups = page
        .items
        .into_iter()
        .map(|group| {
            let arn = store.group_arn(&group.name);
            LogGroupShape {
                log_group_name: group.name,
                creation_time: group.creation_time,
                metric_filter_count: 0,
                arn: format!("{arn}:*"),
                stored_bytes: group.stored_bytes,
                log_group_class: "STANDARD",
                log_group_arn: arn,
            }
        })
        .collect();
    Ok(DescribeLogGroupsResponse {
        log_groups,
        next_token,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeLogStreamsRequest {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name_prefix: Option<String>,
    order_by: Option<String>,
    descending: Option<bool>,
    next_token: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DescribeLogStreamsResponse {
    log_streams: Vec<LogStreamShape>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LogStreamShape {
    log_stream_name: String,
    creation_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_event_timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_event_timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_ingestion_time: Option<i64>,
    upload_sequence_token: String,
    arn: String,
    /// Deprecated by AWS in 2019 and always reported as zero for streams.
    stored_bytes: i64,
}

fn describe_log_streams(
    store: &LogStore,
    request: DescribeLogStreamsRequest,
) -> Result<DescribeLogStreamsResponse, ApiError> {
    let group = group_name(request.log_group_name, request.log_group_identifier)?;
    let order = match request.order_by.as_deref() {
        None | Some("LogStreamName") => StreamOrder::LogStreamName,
        Some("LastEventTime") => StreamOrder::LastEventTime,
        Some(other) => {
            return Err(invalid(format!(
                "1 validation error detected: Value '{other}' at 'orderBy' failed to satisfy \
                 constraint: Member must satisfy enum value set: [LogStreamName, LastEventTime]"
            )));
        }
    };
    if order == StreamOrder::LastEventTime && request.log_stream_name_prefix.is_some() {
        return Err(invalid(
            "Cannot order by LastEventTime with a logStreamNamePrefix.",
        ));
    }
    let after = match request.next_token {
        Some(token) => Some(decode_describe_token(&token)?),
        None => None,
    };
    let page = store.log_streams(
        &group,
        &StreamQuery {
            name_prefix: request.log_stream_name_prefix,
            order,
            descending: request.descending.unwrap_or(false),
            after,
            limit: limit(request.limit, DESCRIBE_LIMIT)?,
        },
    )?;
    let next_token = match page.items.last() {
        Some(last) if page.more => Some(encode_describe_token(&last.cursor())),
        _ => None,
    };
    let group_arn = store.group_arn(&group);
    let log_streams = page
        .items
        .into_iter()
        .map(|stream| LogStreamShape {
            arn: format!("{group_arn}:log-stream:{}", stream.name),
            log_stream_name: stream.name,
            creation_time: stream.creation_time,
            first_event_timestamp: stream.first_event_timestamp,
            last_event_timestamp: stream.last_event_timestamp,
            last_ingestion_time: stream.last_ingestion_time,
            upload_sequence_token: "1".to_owned(),
            stored_bytes: 0,
        })
        .collect();
    Ok(DescribeLogStreamsResponse {
        log_streams,
        next_token,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetLogEventsRequest {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name: Option<String>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    next_token: Option<String>,
    limit: Option<i64>,
    start_from_head: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GetLogEventsResponse {
    events: Vec<OutputLogEvent>,
    next_forward_token: String,
    next_backward_token: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputLogEvent {
    timestamp: i64,
    message: String,
    ingestion_time: i64,
}

fn get_log_events(
    store: &LogStore,
    request: GetLogEventsRequest,
) -> Result<GetLogEventsResponse, ApiError> {
    let group = group_name(request.log_group_name, request.log_group_identifier)?;
    let stream = request
        .log_stream_name
        .ok_or_else(|| invalid("logStreamName is required."))?;
    let (boundary, direction) = match request.next_token.as_deref() {
        Some(token) => match token.split_at_checked(2) {
            Some(("f/", digits)) => (decode_position(digits)?, ReadDirection::Forward),
            Some(("b/", digits)) => (decode_position(digits)?, ReadDirection::Backward),
            _ => return Err(invalid_token()),
        },
        None if request.start_from_head.unwrap_or(false) => (
            EventPosition::before_time(request.start_time.unwrap_or(0)),
            ReadDirection::Forward,
        ),
        None => (
            request
                .end_time
                .map(EventPosition::before_time_exclusive_end)
                .unwrap_or(EventPosition {
                    timestamp: i64::MAX,
                    id: i64::MAX,
                }),
            ReadDirection::Backward,
        ),
    };
    let page = store.stream_events(
        &group,
        &stream,
        &StreamRead {
            start_time: request.start_time,
            end_time: request.end_time,
            boundary,
            direction,
            limit: limit(request.limit, EVENTS_LIMIT)?,
        },
    )?;
    // Reading from the tail of an empty range, the forward token must still find events
    // that arrive later, so it points at the start of the range.
    let forward = if page.events.is_empty() && request.next_token.is_none() {
        EventPosition::before_time(request.start_time.unwrap_or(0))
    } else {
        page.forward
    };
    Ok(GetLogEventsResponse {
        events: page
            .events
            .into_iter()
            .map(|event| OutputLogEvent {
                timestamp: event.timestamp,
                message: event.message,
                ingestion_time: event.ingestion_time,
            })
            .collect(),
        next_forward_token: format!("f/{}", encode_position(forward)),
        next_backward_token: format!("b/{}", encode_position(page.backward)),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterLogEventsRequest {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_names: Option<Vec<String>>,
    log_stream_name_prefix: Option<String>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    filter_pattern: Option<String>,
    next_token: Option<String>,
    limit: Option<i64>,
    /// Deprecated: AWS always interleaves, and so do we.
    #[allow(dead_code)]
    interleaved: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FilterLogEventsResponse {
    events: Vec<FilteredLogEvent>,
    /// Deprecated by AWS; always empty.
    searched_log_streams: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FilteredLogEvent {
    log_stream_name: String,
    timestamp: i64,
    message: String,
    ingestion_time: i64,
    event_id: String,
}

fn filter_log_events(
    store: &LogStore,
    request: FilterLogEventsRequest,
) -> Result<FilterLogEventsResponse, ApiError> {
    let group = group_name(request.log_group_name, request.log_group_identifier)?;
    if request.log_stream_names.is_some() && request.log_stream_name_prefix.is_some() {
        return Err(invalid(
            "logStreamNames and logStreamNamePrefix are mutually exclusive parameters.",
        ));
    }
    if let Some(names) = &request.log_stream_names
        && !(1..=100).contains(&names.len())
    {
        return Err(invalid(format!(
            "logStreamNames must list between 1 and 100 streams, not {}.",
            names.len()
        )));
    }
    let pattern = match request.filter_pattern.as_deref() {
        Some(pattern) => FilterPattern::parse(pattern)?,
        None => FilterPattern::all(),
    };
    let after = match request.next_token.as_deref() {
        Some(token) => Some(decode_position(token)?),
        None => None,
    };
    let page = store.filter_events(
        &group,
        &GroupFilter {
            stream_names: request.log_stream_names,
            stream_prefix: request.log_stream_name_prefix,
            start_time: request.start_time,
            end_time: request.end_time,
            pattern,
            after,
            limit: limit(request.limit, EVENTS_LIMIT)?,
        },
    )?;
    Ok(FilterLogEventsResponse {
        events: page
            .events
            .into_iter()
            .map(|event| FilteredLogEvent {
                event_id: format!("{:056}", event.id),
                log_stream_name: event.stream_name,
                timestamp: event.timestamp,
                message: event.message,
                ingestion_time: event.ingestion_time,
            })
            .collect(),
        searched_log_streams: Vec::new(),
        next_token: page.resume_after.map(encode_position),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LogEvent;
    use axum::http::Request;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    const GROUP: &str = "/aws/lambda/hello";
    const STREAM: &str = "2024/05/01/[$LATEST]0123456789abcdef0123456789abcdef";

    fn store() -> (tempfile::TempDir, Arc<LogStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(&dir.path().join("logs.db")).unwrap();
        let events = (0..5)
            .map(|i| LogEvent {
                timestamp_ms: 1_000 + i,
                message: format!("line {i}{}", if i == 3 { " ERROR boom" } else { "" }),
            })
            .collect();
        store.sink().append(GROUP, STREAM, events);
        store.sink().flush().unwrap();
        (dir, Arc::new(store))
    }

    async fn call(
        store: &Arc<LogStore>,
        operation: &str,
        body: Value,
    ) -> (StatusCode, HeaderMap, Value) {
        let request = Request::post("/")
            .header("x-amz-target", format!("{TARGET_PREFIX}{operation}"))
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router(store.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    fn messages(body: &Value) -> Vec<&str> {
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn logs_requests_are_recognised_by_target() {
        let mut headers = HeaderMap::new();
        assert!(!is_logs_request(&headers));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("Logs_20140328.GetLogEvents"),
        );
        assert!(is_logs_request(&headers));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.GetItem"),
        );
        assert!(!is_logs_request(&headers));
    }

    #[tokio::test]
    async fn describe_log_groups_reports_aws_shapes() {
        let (_dir, store) = store();
        let (status, headers, body) = call(&store, "DescribeLogGroups", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], CONTENT_TYPE);
        let group = &body["logGroups"][0];
        assert_eq!(group["logGroupName"], GROUP);
        assert_eq!(
            group["arn"],
            format!("arn:aws:logs:us-east-1:000000000000:log-group:{GROUP}:*")
        );
        assert_eq!(
            group["logGroupArn"],
            format!("arn:aws:logs:us-east-1:000000000000:log-group:{GROUP}")
        );
        assert!(group["storedBytes"].as_i64().unwrap() > 0);
        assert!(group["creationTime"].as_i64().unwrap() > 0);
        assert!(body.get("nextToken").is_none());

        let (_, _, body) = call(
            &store,
            "DescribeLogGroups",
            json!({"logGroupNamePrefix": "/aws/other"}),
        )
        .await;
        assert_eq!(body["logGroups"], json!([]));
        let (_, _, body) = call(
            &store,
            "DescribeLogGroups",
            json!({"logGroupNamePattern": "hell"}),
        )
        .await;
        assert_eq!(body["logGroups"].as_array().unwrap().len(), 1);
        let (status, headers, body) = call(
            &store,
            "DescribeLogGroups",
            json!({"logGroupNamePattern": "hell", "logGroupNamePrefix": "/"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["x-amzn-ErrorType"], "InvalidParameterException");
        assert_eq!(body["__type"], "InvalidParameterException");
    }

    #[tokio::test]
    async fn describe_log_groups_pages_with_tokens() {
        let (_dir, store) = store();
        for name in ["/aws/lambda/a", "/aws/lambda/b"] {
            store.sink().append(
                name,
                "s",
                vec![LogEvent {
                    timestamp_ms: 1,
                    message: "x".into(),
                }],
            );
        }
        store.sink().flush_async().await.unwrap();
        let mut names = Vec::new();
        let mut request = json!({"limit": 2});
        loop {
            let (_, _, body) = call(&store, "DescribeLogGroups", request.clone()).await;
            for group in body["logGroups"].as_array().unwrap() {
                names.push(group["logGroupName"].as_str().unwrap().to_owned());
            }
            match body.get("nextToken") {
                Some(token) => request["nextToken"] = token.clone(),
                None => break,
            }
        }
        assert_eq!(names, ["/aws/lambda/a", "/aws/lambda/b", GROUP]);
    }

    #[tokio::test]
    async fn describe_log_streams() {
        let (_dir, store) = store();
        let (status, _, body) = call(
            &store,
            "DescribeLogStreams",
            json!({"logGroupName": GROUP, "orderBy": "LastEventTime", "descending": true, "limit": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let stream = &body["logStreams"][0];
        assert_eq!(stream["logStreamName"], STREAM);
        assert_eq!(stream["firstEventTimestamp"], 1_000);
        assert_eq!(stream["lastEventTimestamp"], 1_004);
        assert_eq!(stream["storedBytes"], 0);
        assert_eq!(
            stream["arn"],
            format!("arn:aws:logs:us-east-1:000000000000:log-group:{GROUP}:log-stream:{STREAM}")
        );
        assert!(body.get("nextToken").is_none());

        let arn = format!("arn:aws:logs:us-east-1:000000000000:log-group:{GROUP}:*");
        let (_, _, body) = call(
            &store,
            "DescribeLogStreams",
            json!({"logGroupIdentifier": arn}),
        )
        .await;
        assert_eq!(body["logStreams"].as_array().unwrap().len(), 1);

        let (status, headers, body) = call(
            &store,
            "DescribeLogStreams",
            json!({"logGroupName": "/aws/lambda/missing"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["x-amzn-ErrorType"], "ResourceNotFoundException");
        assert_eq!(
            body,
            json!({"__type": "ResourceNotFoundException", "message": "The specified log group does not exist."})
        );
        let (status, _, body) = call(
            &store,
            "DescribeLogStreams",
            json!({"logGroupName": GROUP, "orderBy": "LastEventTime", "logStreamNamePrefix": "2024"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["__type"], "InvalidParameterException");
    }

    #[tokio::test]
    async fn get_log_events_tokens_behave_like_aws() {
        let (_dir, store) = store();
        // Default: the newest events, oldest first.
        let (status, _, body) = call(
            &store,
            "GetLogEvents",
            json!({"logGroupName": GROUP, "logStreamName": STREAM, "limit": 2}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(messages(&body), ["line 3 ERROR boom", "line 4"]);
        let forward = body["nextForwardToken"].as_str().unwrap().to_owned();
        let backward = body["nextBackwardToken"].as_str().unwrap().to_owned();
        assert!(
            forward.starts_with("f/") && forward.len() == 58,
            "{forward}"
        );
        assert!(
            backward.starts_with("b/") && backward.len() == 58,
            "{backward}"
        );
        let (_, _, older) = call(
            &store,
            "GetLogEvents",
            json!({"logGroupName": GROUP, "logStreamName": STREAM, "limit": 2, "nextToken": backward}),
        )
        .await;
        assert_eq!(messages(&older), ["line 1", "line 2"]);
        // At the end, the forward token comes back unchanged.
        let (_, _, end) = call(
            &store,
            "GetLogEvents",
            json!({"logGroupName": GROUP, "logStreamName": STREAM, "nextToken": forward, "startFromHead": true}),
        )
        .await;
        assert_eq!(messages(&end), Vec::<&str>::new());
        assert_eq!(end["nextForwardToken"], forward);
        // From the head, within a time range.
        let (_, _, head) = call(
            &store,
            "GetLogEvents",
            json!({"logGroupName": GROUP, "logStreamName": STREAM, "startFromHead": true,
                   "startTime": 1_001, "endTime": 1_003}),
        )
        .await;
        assert_eq!(messages(&head), ["line 1", "line 2"]);
        assert!(head["events"][0]["ingestionTime"].as_i64().unwrap() > 0);

        let (status, _, body) = call(
            &store,
            "GetLogEvents",
            json!({"logGroupName": GROUP, "logStreamName": "nope"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["message"], "The specified log stream does not exist.");
        let (_, _, body) = call(
            &store,
            "GetLogEvents",
            json!({"logGroupName": GROUP, "logStreamName": STREAM, "nextToken": "x/123"}),
        )
        .await;
        assert_eq!(body["__type"], "InvalidParameterException");
    }

    #[tokio::test]
    async fn filter_log_events_patterns_and_pages() {
        let (_dir, store) = store();
        let (status, _, body) = call(
            &store,
            "FilterLogEvents",
            json!({"logGroupName": GROUP, "filterPattern": "ERROR", "interleaved": true}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(messages(&body), ["line 3 ERROR boom"]);
        let event = &body["events"][0];
        assert_eq!(event["logStreamName"], STREAM);
        assert_eq!(event["timestamp"], 1_003);
        assert_eq!(event["eventId"].as_str().unwrap().len(), 56);
        assert!(body.get("nextToken").is_none());

        let mut seen = Vec::new();
        let mut request = json!({"logGroupName": GROUP, "limit": 2, "startTime": 1_001});
        loop {
            let (_, _, body) = call(&store, "FilterLogEvents", request.clone()).await;
            seen.extend(messages(&body).into_iter().map(str::to_owned));
            match body.get("nextToken") {
                Some(token) => request["nextToken"] = token.clone(),
                None => break,
            }
        }
        assert_eq!(seen, ["line 1", "line 2", "line 3 ERROR boom", "line 4"]);

        let (status, _, body) = call(
            &store,
            "FilterLogEvents",
            json!({"logGroupName": GROUP, "filterPattern": "{ $.level = \"error\" }"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["__type"], "InvalidParameterException");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("JSON filter patterns are not supported")
        );
    }

    #[tokio::test]
    async fn protocol_errors() {
        let (_dir, store) = store();
        let (status, headers, body) = call(&store, "PutLogEvents", json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["x-amzn-ErrorType"], "UnknownOperationException");
        assert_eq!(body["__type"], "UnknownOperationException");

        let request = Request::post("/")
            .header("x-amz-target", "Logs_20140328.DescribeLogGroups")
            .body(Body::from("{not json"))
            .unwrap();
        let response = router(store.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()["x-amzn-ErrorType"],
            "SerializationException"
        );

        let (status, _, body) = call(&store, "DescribeLogGroups", json!({"limit": 51})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["__type"], "InvalidParameterException");

        // An empty body is an empty request.
        let request = Request::post("/")
            .header("x-amz-target", "Logs_20140328.DescribeLogGroups")
            .body(Body::empty())
            .unwrap();
        let response = router(store.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
