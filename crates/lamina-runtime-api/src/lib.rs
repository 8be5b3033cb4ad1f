//! The Lambda Runtime API, version `2018-06-01`, for one execution environment.
//!
//! A function's runtime (the official `lambda_runtime` crate, `awslambdaric`, any
//! `bootstrap`) finds this server at `http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/` and loops:
//!
//! 1. `GET /runtime/invocation/next` — long-polls until an invocation exists (it never
//!    answers 204) and returns the event with `Lambda-Runtime-Aws-Request-Id`,
//!    `-Deadline-Ms`, `-Invoked-Function-Arn`, `-Trace-Id` and, when present,
//!    `-Client-Context` and `-Cognito-Identity`.
//! 2. `POST /runtime/invocation/{id}/response` (202 `{"status":"OK"}`) or
//!    `POST /runtime/invocation/{id}/error` (202); an unknown id answers 400
//!    `InvalidRequestID`, a report with no invocation in flight 403
//!    `InvalidStateTransition`, a response over 6,291,556 bytes 413.
//!
//! Before its first `next` the runtime may report `POST /runtime/init/error`.
//!
//! One environment runs one invocation at a time, so the state is a single slot: the
//! engine hands invocations in through [`RuntimeApi::dispatch`] and gets each outcome back
//! on the invocation's own `oneshot`. The first `next` tells the engine the runtime has
//! initialised ([`RuntimeApi::ready`]).

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

/// The largest response a function may return, as AWS measures it.
pub const MAX_RESPONSE_BYTES: usize = 6_291_556;
/// Error bodies are capped too; a runtime can post a long stack trace, not gigabytes.
const MAX_ERROR_BYTES: usize = MAX_RESPONSE_BYTES;

/// One invocation handed to the runtime.
#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    pub payload: Bytes,
    /// Milliseconds since the epoch at which the function times out.
    pub deadline_ms: u64,
    pub invoked_function_arn: String,
    pub trace_id: String,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
    pub outcome: oneshot::Sender<InvocationOutcome>,
}

/// How the runtime finished an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationOutcome {
    /// `POST .../response`: the function's result, passed through untouched.
    Response(Bytes),
    /// `POST .../error`: the runtime's error document and its optional error-type header.
    Error {
        error_type: Option<String>,
        body: Bytes,
    },
    /// The runtime tried to return more than [`MAX_RESPONSE_BYTES`].
    ResponseTooLarge,
}

/// What the runtime reported before serving its first invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitState {
    Initializing,
    /// The runtime asked for its first invocation: initialisation is done.
    Ready,
    /// `POST /runtime/init/error`.
    Failed {
        error_type: Option<String>,
        body: Bytes,
    },
}

/// The environment cannot take an invocation: its Runtime API stopped or it is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvironmentUnavailable;

/// The engine's side of one environment's Runtime API.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    inbox: mpsc::Sender<Invocation>,
    init: watch::Receiver<InitState>,
}

impl RuntimeApi {
    /// Queues an invocation for the runtime's next `GET .../next`. Fails if the server
    /// has stopped or an invocation is already queued (the environment is busy).
    pub fn dispatch(&self, invocation: Invocation) -> Result<(), EnvironmentUnavailable> {
        self.inbox
            .try_send(invocation)
            .map_err(|_| EnvironmentUnavailable)
    }

    /// Waits until the runtime is ready or reported an init error.
    pub async fn ready(&self) -> InitState {
        let mut init = self.init.clone();
        let state = init
            .wait_for(|s| *s != InitState::Initializing)
            .await
            .map(|s| s.clone());
        state.unwrap_or(InitState::Initializing)
    }

    pub fn init_state(&self) -> InitState {
        self.init.borrow().clone()
    }
}

#[derive(Debug)]
struct InFlight {
    request_id: String,
    outcome: oneshot::Sender<InvocationOutcome>,
}

#[derive(Debug)]
struct Shared {
    // Only one `next` is served at a time: the runtime is single-threaded by contract.
    inbox: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    in_flight: Mutex<Option<InFlight>>,
    init: watch::Sender<InitState>,
}

impl Shared {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts serving the Runtime API on `listener` (already bound by the sandbox, inside the
/// environment's network namespace). The server runs until the returned handle and every
/// clone of it are dropped and the runtime disconnects, or until `shutdown` fires.
pub fn serve(
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<RuntimeApi> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (inbox_tx, inbox_rx) = mpsc::channel(1);
    let (init_tx, init_rx) = watch::channel(InitState::Initializing);
    let shared = Arc::new(Shared {
        inbox: tokio::sync::Mutex::new(inbox_rx),
        in_flight: Mutex::new(None),
        init: init_tx,
    });
    tokio::spawn(accept_runtimes(listener, shared, shutdown));
    Ok(RuntimeApi {
        inbox: inbox_tx,
        init: init_rx,
    })
}

/// Accepts the runtime's connections (normally one, kept alive) until `shutdown`, each
/// served by hyper directly. Two of the three HTTP requests of every invocation come
/// here, so this skips axum's router and tower layers (their matching, boxing and path
/// extraction); the four endpoints are matched by hand in [`route`].
async fn accept_runtimes(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tracing::warn!(%error, "runtime api: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small responses on a loopback keep-alive connection: Nagle would add 40 ms stalls.
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(route(shared, request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%error, "runtime api connection ended");
            }
        });
    }
}

const RUNTIME_PATH: &str = "/2018-06-01/runtime/";

/// The Runtime API's endpoints; a known path with another method answers 405, as a
/// router would, and anything else `UnknownEndpoint`.
async fn route(
    shared: Arc<Shared>,
    request: axum::http::Request<hyper::body::Incoming>,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(body);
    let post = parts.method == Method::POST;
    let Some(endpoint) = parts.uri.path().strip_prefix(RUNTIME_PATH) else {
        return unknown_endpoint();
    };
    match endpoint {
        "invocation/next" if parts.method == Method::GET => next_invocation(shared).await,
        "invocation/next" => method_not_allowed("GET"),
        "init/error" if post => init_error(shared, &parts.headers, body).await,
        "init/error" => method_not_allowed("POST"),
        _ => {
            let report = endpoint
                .strip_prefix("invocation/")
                .and_then(|rest| rest.split_once('/'))
                .filter(|(id, kind)| !id.is_empty() && matches!(*kind, "response" | "error"));
            let Some((id, kind)) = report else {
                return unknown_endpoint();
            };
            if !post {
                return method_not_allowed("POST");
            }
            let Ok(request_id) = percent_encoding::percent_decode_str(id).decode_utf8() else {
                return ClaimError::WrongRequestId(id.to_owned()).into_response();
            };
            if kind == "response" {
                invocation_response(shared, &request_id, body).await
            } else {
                invocation_error(shared, &request_id, &parts.headers, body).await
            }
        }
    }
}

fn unknown_endpoint() -> Response {
    runtime_error(
        StatusCode::NOT_FOUND,
        "UnknownEndpoint",
        "the Runtime API has no such endpoint",
    )
}

fn method_not_allowed(allowed: &'static str) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static(allowed))],
    )
        .into_response()
}

fn runtime_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errorMessage": message, "errorType": error_type });
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"OK"}"#,
    )
        .into_response()
}

async fn next_invocation(shared: Arc<Shared>) -> Response {
    shared.init.send_if_modified(|state| {
        if *state == InitState::Initializing {
            *state = InitState::Ready;
            true
        } else {
            false
        }
    });
    // A runtime asking for the next event without reporting the last one abandoned it.
    if let Some(abandoned) = shared.in_flight().take() {
        let _ = abandoned.outcome.send(InvocationOutcome::Error {
            error_type: Some("Runtime.NoResponse".to_owned()),
            body: Bytes::from_static(
                br#"{"errorType":"Runtime.NoResponse","errorMessage":"the runtime asked for the next invocation without answering this one"}"#,
            ),
        });
    }
    let invocation = {
        let mut inbox = shared.inbox.lock().await;
        inbox.recv().await
    };
    let Some(invocation) = invocation else {
        // The environment is being torn down; the runtime will be killed shortly.
        return runtime_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "EnvironmentShuttingDown",
            "the execution environment is shutting down",
        );
    };
    let mut response = Response::new(Body::from(invocation.payload));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    put("lambda-runtime-aws-request-id", &invocation.request_id);
    put(
        "lambda-runtime-deadline-ms",
        &invocation.deadline_ms.to_string(),
    );
    put(
        "lambda-runtime-invoked-function-arn",
        &invocation.invoked_function_arn,
    );
    put("lambda-runtime-trace-id", &invocation.trace_id);
    if let Some(context) = &invocation.client_context {
        put("lambda-runtime-client-context", context);
    }
    if let Some(identity) = &invocation.cognito_identity {
        put("lambda-runtime-cognito-identity", identity);
    }
    *shared.in_flight() = Some(InFlight {
        request_id: invocation.request_id,
        outcome: invocation.outcome,
    });
    response
}

/// Why a runtime's report does not match the invocation in flight.
#[derive(Debug)]
enum ClaimError {
    NothingInFlight,
    WrongRequestId(String),
}

impl IntoResponse for ClaimError {
    fn into_response(self) -> Response {
        match self {
            ClaimError::NothingInFlight => runtime_error(
                StatusCode::FORBIDDEN,
                "InvalidStateTransition",
                "no invocation is in flight in this environment",
            ),
            ClaimError::WrongRequestId(id) => runtime_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestID",
                &format!("invalid request id {id}"),
            ),
        }
    }
}

/// Takes the in-flight invocation if `request_id` names it.
fn claim(shared: &Shared, request_id: &str) -> Result<InFlight, ClaimError> {
    let mut slot = shared.in_flight();
    match slot.as_ref() {
        None => Err(ClaimError::NothingInFlight),
        Some(in_flight) if in_flight.request_id != request_id => {
            Err(ClaimError::WrongRequestId(request_id.to_owned()))
        }
        Some(_) => Ok(slot.take().expect("checked above")),
    }
}

/// Reads a body of at most `limit` bytes; `None` when it is larger.
async fn read_limited(body: Body, limit: usize) -> Option<Bytes> {
    axum::body::to_bytes(body, limit).await.ok()
}

async fn invocation_response(shared: Arc<Shared>, request_id: &str, body: Body) -> Response {
    let in_flight = match claim(&shared, request_id) {
        Ok(in_flight) => in_flight,
        Err(refused) => return refused.into_response(),
    };
    match read_limited(body, MAX_RESPONSE_BYTES).await {
        Some(payload) => {
            let _ = in_flight.outcome.send(InvocationOutcome::Response(payload));
            accepted()
        }
        None => {
            let _ = in_flight.outcome.send(InvocationOutcome::ResponseTooLarge);
            runtime_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
            )
        }
    }
}

fn error_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn invocation_error(
    shared: Arc<Shared>,
    request_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let in_flight = match claim(&shared, request_id) {
        Ok(in_flight) => in_flight,
        Err(refused) => return refused.into_response(),
    };
    let body = read_limited(body, MAX_ERROR_BYTES)
        .await
        .unwrap_or_else(|| Bytes::from_static(b"{}"));
    let _ = in_flight.outcome.send(InvocationOutcome::Error {
        error_type: error_type(headers),
        body,
    });
    accepted()
}

async fn init_error(shared: Arc<Shared>, headers: &HeaderMap, body: Body) -> Response {
    if *shared.init.borrow() != InitState::Initializing {
        return runtime_error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "initialization already finished",
        );
    }
    let body = read_limited(body, MAX_ERROR_BYTES)
        .await
        .unwrap_or_else(|| Bytes::from_static(b"{}"));
    shared.init.send_replace(InitState::Failed {
        error_type: error_type(headers),
        body,
    });
    accepted()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// A runtime speaking raw HTTP/1.1, to see exactly what goes on the wire.
    fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_lowercase(), body.to_owned())
    }

    fn start() -> (RuntimeApi, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let api = serve(listener, std::future::pending()).unwrap();
        (api, addr)
    }

    fn invocation(id: &str) -> (Invocation, oneshot::Receiver<InvocationOutcome>) {
        let (tx, rx) = oneshot::channel();
        (
            Invocation {
                request_id: id.to_owned(),
                payload: Bytes::from_static(br#"{"hello":"world"}"#),
                deadline_ms: 1_700_000_000_000,
                invoked_function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
                trace_id: "Root=1-00000000-000000000000000000000000;Sampled=0".into(),
                client_context: Some("e30=".into()),
                cognito_identity: None,
                outcome: tx,
            },
            rx,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_paths_and_wrong_methods_are_refused_and_ids_are_percent_decoded() {
        let (api, addr) = start();
        let ask = |method: &'static str, path: &'static str| {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || request(&addr, method, path, b"{}"))
        };
        for path in [
            "/2018-06-01/runtime/invocation/a/b/response",
            "/2018-06-01/runtime/invocation//response",
            "/2018-06-01/runtime/invocation/a/result",
            "/2018-06-01/runtime/next",
            "/2020-01-01/runtime/invocation/next",
        ] {
            let (status, _, body) = ask("POST", path).await.unwrap();
            assert_eq!(status, 404, "{path}");
            assert!(body.contains("UnknownEndpoint"), "{path}: {body}");
        }
        for (method, path, allowed) in [
            ("POST", "/2018-06-01/runtime/invocation/next", "get"),
            ("GET", "/2018-06-01/runtime/init/error", "post"),
            ("GET", "/2018-06-01/runtime/invocation/x/response", "post"),
        ] {
            let (status, head, _) = ask(method, path).await.unwrap();
            assert_eq!(status, 405, "{method} {path}");
            assert!(head.contains(&format!("allow: {allowed}")), "{head}");
        }
        let next = ask("GET", "/2018-06-01/runtime/invocation/next");
        let (inv, outcome) = invocation("req 1");
        api.dispatch(inv).unwrap();
        assert_eq!(next.await.unwrap().0, 200);
        let (status, _, _) = ask("POST", "/2018-06-01/runtime/invocation/req%201/response")
            .await
            .unwrap();
        assert_eq!(status, 202);
        assert_eq!(
            outcome.await.unwrap(),
            InvocationOutcome::Response(Bytes::from_static(b"{}"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn next_long_polls_then_carries_the_event_and_headers() {
        let (api, addr) = start();
        let poll_addr = addr.clone();
        let next = tokio::task::spawn_blocking(move || {
            request(
                &poll_addr,
                "GET",
                "/2018-06-01/runtime/invocation/next",
                b"",
            )
        });
        assert_eq!(api.ready().await, InitState::Ready);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!next.is_finished(), "next waits for an invocation");
        let (inv, outcome) = invocation("req-1");
        api.dispatch(inv).unwrap();
        let (status, head, body) = next.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"hello":"world"}"#);
        assert!(head.contains("lambda-runtime-aws-request-id: req-1"));
        assert!(head.contains("lambda-runtime-deadline-ms: 1700000000000"));
        assert!(head.contains(
            "lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:000000000000:function:f"
        ));
        assert!(head.contains("lambda-runtime-trace-id: root=1-"));
        assert!(head.contains("lambda-runtime-client-context: e30="));

        let addr2 = addr.clone();
        let (status, _, body) = tokio::task::spawn_blocking(move || {
            request(
                &addr2,
                "POST",
                "/2018-06-01/runtime/invocation/wrong/response",
                b"1",
            )
        })
        .await
        .unwrap();
        assert_eq!(status, 400);
        assert!(body.contains("InvalidRequestID"));

        let addr3 = addr.clone();
        let (status, _, body) = tokio::task::spawn_blocking(move || {
            request(
                &addr3,
                "POST",
                "/2018-06-01/runtime/invocation/req-1/response",
                b"\"done\"",
            )
        })
        .await
        .unwrap();
        assert_eq!((status, body.as_str()), (202, r#"{"status":"OK"}"#));
        assert_eq!(
            outcome.await.unwrap(),
            InvocationOutcome::Response(Bytes::from_static(b"\"done\""))
        );

        let (status, _, body) = tokio::task::spawn_blocking(move || {
            request(
                &addr,
                "POST",
                "/2018-06-01/runtime/invocation/req-1/error",
                b"{}",
            )
        })
        .await
        .unwrap();
        assert_eq!(status, 403);
        assert!(body.contains("InvalidStateTransition"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_and_oversized_responses() {
        let (api, addr) = start();
        for (id, path_suffix, body) in [
            ("e1", "error", b"{\"errorType\":\"Boom\"}".to_vec()),
            ("e2", "response", vec![b'x'; MAX_RESPONSE_BYTES + 1]),
        ] {
            let (inv, outcome) = invocation(id);
            api.dispatch(inv).unwrap();
            let a = addr.clone();
            let (status, _, _) = tokio::task::spawn_blocking(move || {
                request(&a, "GET", "/2018-06-01/runtime/invocation/next", b"")
            })
            .await
            .unwrap();
            assert_eq!(status, 200);
            let a = addr.clone();
            let path = format!("/2018-06-01/runtime/invocation/{id}/{path_suffix}");
            let (status, _, response_body) =
                tokio::task::spawn_blocking(move || request(&a, "POST", &path, &body))
                    .await
                    .unwrap();
            match outcome.await.unwrap() {
                InvocationOutcome::Error { error_type, body } => {
                    assert_eq!(status, 202);
                    assert_eq!(error_type, None, "the header is optional");
                    assert_eq!(&body[..], b"{\"errorType\":\"Boom\"}");
                }
                InvocationOutcome::ResponseTooLarge => {
                    assert_eq!(status, 413);
                    assert!(
                        response_body
                            .contains("Exceeded maximum allowed payload size (6291556 bytes).")
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_errors_are_reported_once() {
        let (api, addr) = start();
        let a = addr.clone();
        let (status, _, _) = tokio::task::spawn_blocking(move || {
            request(
                &a,
                "POST",
                "/2018-06-01/runtime/init/error",
                b"{\"errorType\":\"InitBoom\"}",
            )
        })
        .await
        .unwrap();
        assert_eq!(status, 202);
        assert!(matches!(api.ready().await, InitState::Failed { .. }));
        let (status, _, _) = tokio::task::spawn_blocking(move || {
            request(&addr, "POST", "/2018-06-01/runtime/init/error", b"{}")
        })
        .await
        .unwrap();
        assert_eq!(status, 403);
    }
}
