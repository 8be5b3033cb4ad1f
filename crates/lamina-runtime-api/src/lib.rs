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

mod http1;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use http1::{Body, Connection, Head, Method, ReadError, Reply, Status, decimal, push_header};

/// The largest response a function may return, as AWS measures it.
pub const MAX_RESPONSE_BYTES: usize = 6_291_556;
/// Error bodies are capped too; a runtime can post a long stack trace, not gigabytes.
const MAX_ERROR_BYTES: usize = MAX_RESPONSE_BYTES;
/// What a request to no endpoint, or to `next`, may carry (and is dropped).
const MAX_OTHER_BODY_BYTES: usize = 64 * 1024;
/// Every AWS runtime client keeps one connection alive; a few more are tolerated (a
/// client that reconnects before the server has seen the old connection close, a
/// `bootstrap` that runs `curl` per request). Past this many open at once, a connection is
/// closed as soon as it is accepted: each one holds a descriptor of the server's, and an
/// untrusted function must not be able to use them all up.
pub const MAX_RUNTIME_CONNECTIONS: usize = 8;

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
    /// An invocation taken from the inbox for a runtime that had hung up meanwhile: the
    /// next `next` serves it first.
    returned: Mutex<Option<Invocation>>,
    in_flight: Mutex<Option<InFlight>>,
    init: watch::Sender<InitState>,
}

impl Shared {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn returned(&self) -> std::sync::MutexGuard<'_, Option<Invocation>> {
        self.returned.lock().unwrap_or_else(|p| p.into_inner())
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
        returned: Mutex::new(None),
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
/// served by [`serve_connection`].
async fn accept_runtimes(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let open = Arc::new(());
    let mut refused_any = false;
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
        // Each connection's task holds a clone of `open` while it lives.
        if Arc::strong_count(&open) > MAX_RUNTIME_CONNECTIONS {
            if !refused_any {
                refused_any = true;
                tracing::warn!(
                    "runtime api: the function opened more than {MAX_RUNTIME_CONNECTIONS} \
                     connections at once; further ones are closed as they arrive"
                );
            }
            drop(tcp);
            continue;
        }
        // Small responses on a loopback keep-alive connection: Nagle would add 40 ms stalls.
        let _ = tcp.set_nodelay(true);
        let connection = Connection::new(tcp);
        let shared = shared.clone();
        let open = open.clone();
        tokio::spawn(async move {
            serve_connection(connection, shared).await;
            drop(open);
        });
    }
}

/// Serves one connection's requests in order until the runtime closes it or a request
/// cannot be read (answered 400 or 431 first when the connection still works).
async fn serve_connection(mut connection: Connection, shared: Arc<Shared>) {
    loop {
        let head = match connection.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) | Err(ReadError::Io) => return,
            Err(refused) => {
                let mut reply = match refused {
                    ReadError::HeadTooLarge => runtime_error(
                        Status::HeadersTooLarge,
                        "RequestHeaderFieldsTooLarge",
                        "the request head is too large",
                    ),
                    _ => runtime_error(
                        Status::BadRequest,
                        "InvalidRequest",
                        "the request is not valid HTTP/1.1",
                    ),
                };
                reply.close = true;
                let _ = connection.respond(None, &reply).await;
                return;
            }
        };
        let mut reply = match route(&shared, &mut connection, &head).await {
            Ok(reply) => reply,
            Err(ReadError::Io) => return,
            // A body that is not valid chunked framing.
            Err(_) => runtime_error(
                Status::BadRequest,
                "InvalidRequest",
                "the request body is not valid HTTP/1.1",
            ),
        };
        reply.close |= !head.keep_alive || connection.out_of_step();
        if connection.respond(Some(&head), &reply).await.is_err() || reply.close {
            return;
        }
    }
}

const RUNTIME_PATH: &str = "/2018-06-01/runtime/";

/// The Runtime API's endpoints; a known path with another method answers 405, as a
/// router would, and anything else `UnknownEndpoint`. Reads the request's body (so the
/// connection stays in step) before answering.
async fn route(
    shared: &Shared,
    connection: &mut Connection,
    head: &Head,
) -> Result<Reply, ReadError> {
    let post = head.method == Method::Post;
    let path = head
        .path
        .split_once('?')
        .map_or(head.path.as_str(), |(path, _)| path);
    let endpoint = path.strip_prefix(RUNTIME_PATH);
    match endpoint {
        Some("invocation/next") if head.method == Method::Get => {
            discard_body(connection, head).await?;
            if connection.out_of_step() {
                // Its body was not read: no invocation goes to a connection about to close.
                return Ok(runtime_error(
                    Status::PayloadTooLarge,
                    "RequestEntityTooLarge",
                    "a request for the next invocation has no body",
                ));
            }
            next_invocation(shared, connection).await
        }
        Some("invocation/next") => refuse(connection, head, method_not_allowed("GET")).await,
        Some("init/error") if post => {
            if *shared.init.borrow() != InitState::Initializing {
                let refusal = runtime_error(
                    Status::Forbidden,
                    "InvalidStateTransition",
                    "initialization already finished",
                );
                return refuse(connection, head, refusal).await;
            }
            let body = connection.read_body(head, MAX_ERROR_BYTES).await?;
            Ok(init_error(shared, head, body))
        }
        Some("init/error") => refuse(connection, head, method_not_allowed("POST")).await,
        _ => {
            let report = endpoint
                .and_then(|endpoint| endpoint.strip_prefix("invocation/"))
                .and_then(|rest| rest.split_once('/'))
                .filter(|(id, kind)| !id.is_empty() && matches!(*kind, "response" | "error"));
            let Some((id, kind)) = report else {
                return refuse(connection, head, unknown_endpoint()).await;
            };
            if !post {
                return refuse(connection, head, method_not_allowed("POST")).await;
            }
            let Ok(request_id) = percent_encoding::percent_decode_str(id).decode_utf8() else {
                let refusal = ClaimError::WrongRequestId(id.to_owned()).reply();
                return refuse(connection, head, refusal).await;
            };
            let in_flight = match claim(shared, &request_id) {
                Ok(in_flight) => in_flight,
                Err(refused) => return refuse(connection, head, refused.reply()).await,
            };
            if kind == "response" {
                let body = connection.read_body(head, MAX_RESPONSE_BYTES).await?;
                Ok(invocation_response(in_flight, body))
            } else {
                let body = connection.read_body(head, MAX_ERROR_BYTES).await?;
                Ok(invocation_error(in_flight, head, body))
            }
        }
    }
}

/// Answers `reply` after reading past the request's body.
async fn refuse(
    connection: &mut Connection,
    head: &Head,
    reply: Reply,
) -> Result<Reply, ReadError> {
    discard_body(connection, head).await?;
    Ok(reply)
}

async fn discard_body(connection: &mut Connection, head: &Head) -> Result<(), ReadError> {
    connection
        .read_body(head, MAX_OTHER_BODY_BYTES)
        .await
        .map(drop)
}

fn unknown_endpoint() -> Reply {
    runtime_error(
        Status::NotFound,
        "UnknownEndpoint",
        "the Runtime API has no such endpoint",
    )
}

fn method_not_allowed(allowed: &'static str) -> Reply {
    let mut reply = Reply::json(Status::MethodNotAllowed, Bytes::new());
    reply.content_type = None;
    push_header(&mut reply.headers, "allow", allowed);
    reply
}

fn runtime_error(status: Status, error_type: &str, message: &str) -> Reply {
    let body = serde_json::json!({ "errorMessage": message, "errorType": error_type });
    Reply::json(status, body.to_string())
}

fn accepted() -> Reply {
    Reply::json(Status::Accepted, Bytes::from_static(br#"{"status":"OK"}"#))
}

/// `GET next`: the next invocation, waited for as long as it takes unless the runtime
/// hangs up meanwhile.
async fn next_invocation(shared: &Shared, connection: &mut Connection) -> Result<Reply, ReadError> {
    // Looked at first under the read lock: only the first `next` changes anything.
    if *shared.init.borrow() == InitState::Initializing {
        shared.init.send_if_modified(|state| {
            if *state == InitState::Initializing {
                *state = InitState::Ready;
                true
            } else {
                false
            }
        });
    }
    // A runtime asking for the next event without reporting the last one abandoned it.
    if let Some(abandoned) = shared.in_flight().take() {
        let _ = abandoned.outcome.send(InvocationOutcome::Error {
            error_type: Some("Runtime.NoResponse".to_owned()),
            body: Bytes::from_static(
                br#"{"errorType":"Runtime.NoResponse","errorMessage":"the runtime asked for the next invocation without answering this one"}"#,
            ),
        });
    }
    let returned = shared.returned().take();
    let invocation = match returned {
        Some(invocation) => Some(invocation),
        None => tokio::select! {
            biased;
            invocation = async { shared.inbox.lock().await.recv().await } => invocation,
            () = connection.closed() => return Err(ReadError::Io),
        },
    };
    if invocation.is_some() && connection.hung_up() {
        // It came with a hang-up (a write to a half-closed socket succeeds, so nothing
        // else would notice): keep it for the runtime's next connection.
        *shared.returned() = invocation;
        return Err(ReadError::Io);
    }
    let Some(invocation) = invocation else {
        // The environment is being torn down; the runtime will be killed shortly.
        return Ok(runtime_error(
            Status::InternalServerError,
            "EnvironmentShuttingDown",
            "the execution environment is shutting down",
        ));
    };
    let mut reply = Reply::json(Status::Ok, invocation.payload);
    let headers = &mut reply.headers;
    headers.reserve(320);
    push_header(
        headers,
        "lambda-runtime-aws-request-id",
        &invocation.request_id,
    );
    let mut deadline = [0u8; 20];
    push_header(
        headers,
        "lambda-runtime-deadline-ms",
        decimal(invocation.deadline_ms, &mut deadline),
    );
    push_header(
        headers,
        "lambda-runtime-invoked-function-arn",
        &invocation.invoked_function_arn,
    );
    push_header(headers, "lambda-runtime-trace-id", &invocation.trace_id);
    if let Some(context) = &invocation.client_context {
        push_header(headers, "lambda-runtime-client-context", context);
    }
    if let Some(identity) = &invocation.cognito_identity {
        push_header(headers, "lambda-runtime-cognito-identity", identity);
    }
    *shared.in_flight() = Some(InFlight {
        request_id: invocation.request_id,
        outcome: invocation.outcome,
    });
    Ok(reply)
}

/// Why a runtime's report does not match the invocation in flight.
#[derive(Debug)]
enum ClaimError {
    NothingInFlight,
    WrongRequestId(String),
}

impl ClaimError {
    fn reply(self) -> Reply {
        match self {
            ClaimError::NothingInFlight => runtime_error(
                Status::Forbidden,
                "InvalidStateTransition",
                "no invocation is in flight in this environment",
            ),
            ClaimError::WrongRequestId(id) => runtime_error(
                Status::BadRequest,
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

fn invocation_response(in_flight: InFlight, body: Body) -> Reply {
    match body {
        Body::Complete(payload) => {
            let _ = in_flight.outcome.send(InvocationOutcome::Response(payload));
            accepted()
        }
        Body::TooLarge => {
            let _ = in_flight.outcome.send(InvocationOutcome::ResponseTooLarge);
            runtime_error(
                Status::PayloadTooLarge,
                "RequestEntityTooLarge",
                &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
            )
        }
    }
}

/// The body of an error report, `{}` when it was over its limit.
fn report_body(body: Body) -> Bytes {
    match body {
        Body::Complete(body) => body,
        Body::TooLarge => Bytes::from_static(b"{}"),
    }
}

fn invocation_error(in_flight: InFlight, head: &Head, body: Body) -> Reply {
    let _ = in_flight.outcome.send(InvocationOutcome::Error {
        error_type: head.error_type.clone(),
        body: report_body(body),
    });
    accepted()
}

fn init_error(shared: &Shared, head: &Head, body: Body) -> Reply {
    if *shared.init.borrow() != InitState::Initializing {
        return runtime_error(
            Status::Forbidden,
            "InvalidStateTransition",
            "initialization already finished",
        );
    }
    shared.init.send_replace(InitState::Failed {
        error_type: head.error_type.clone(),
        body: report_body(body),
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

    /// Reads one response off a kept-alive connection: (status, lower-cased head, body).
    fn read_response(stream: &mut std::io::BufReader<TcpStream>) -> (u16, String, Vec<u8>) {
        use std::io::BufRead;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(
                stream.read_line(&mut line).unwrap() > 0,
                "connection closed"
            );
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_lowercase());
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0; length];
        stream.read_exact(&mut body).unwrap();
        (head[9..12].parse().unwrap(), head, body)
    }

    fn connect(addr: &str) -> (TcpStream, std::io::BufReader<TcpStream>) {
        let stream = TcpStream::connect(addr).unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        (stream, reader)
    }

    const NEXT: &str = "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_kept_alive_connection_serves_chunked_pipelined_and_continued_requests() {
        let (api, addr) = start();
        let (first, first_outcome) = invocation("r1");
        api.dispatch(first).unwrap();
        let runtime = tokio::task::spawn_blocking(move || {
            let (mut stream, mut reader) = connect(&addr);
            stream.write_all(NEXT.as_bytes()).unwrap();
            let (status, head, body) = read_response(&mut reader);
            assert_eq!(status, 200);
            assert!(head.contains("lambda-runtime-aws-request-id: r1"), "{head}");
            assert_eq!(body, br#"{"hello":"world"}"#);
            // A chunked body with a chunk extension and a trailer, then the next `next`
            // pipelined behind it in the same write.
            stream
                .write_all(
                    b"POST /2018-06-01/runtime/invocation/r1/response HTTP/1.1\r\n\
                      Transfer-Encoding: chunked\r\n\r\n\
                      3;ext=1\r\n\"ok\r\n1\r\n\"\r\n0\r\nX-Trailer: t\r\n\r\n",
                )
                .unwrap();
            stream.write_all(NEXT.as_bytes()).unwrap();
            let (status, _, body) = read_response(&mut reader);
            assert_eq!((status, &body[..]), (202, &br#"{"status":"OK"}"#[..]));
            let (status, head, _) = read_response(&mut reader);
            assert_eq!(status, 200);
            assert!(head.contains("lambda-runtime-aws-request-id: r2"), "{head}");
            // `Expect: 100-continue`: the body goes only after the interim answer.
            stream
                .write_all(
                    b"POST /2018-06-01/runtime/invocation/r2/error HTTP/1.1\r\n\
                      Content-Length: 2\r\nExpect: 100-continue\r\n\
                      Lambda-Runtime-Function-Error-Type: Boom\r\n\r\n",
                )
                .unwrap();
            let mut interim = String::new();
            std::io::BufRead::read_line(&mut reader, &mut interim).unwrap();
            assert_eq!(interim, "HTTP/1.1 100 Continue\r\n");
            std::io::BufRead::read_line(&mut reader, &mut interim).unwrap();
            stream.write_all(b"{}").unwrap();
            let (status, _, _) = read_response(&mut reader);
            assert_eq!(status, 202);
        });
        assert_eq!(
            first_outcome.await.unwrap(),
            InvocationOutcome::Response(Bytes::from_static(b"\"ok\""))
        );
        let (second, second_outcome) = invocation("r2");
        api.dispatch(second).unwrap();
        assert_eq!(
            second_outcome.await.unwrap(),
            InvocationOutcome::Error {
                error_type: Some("Boom".into()),
                body: Bytes::from_static(b"{}"),
            }
        );
        runtime.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_requests_are_answered_and_the_connection_closed() {
        let (_api, addr) = start();
        for raw in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            b"POST /2018-06-01/runtime/init/error HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let addr = addr.clone();
            let (status, rest) = tokio::task::spawn_blocking(move || {
                let (mut stream, mut reader) = connect(&addr);
                stream.write_all(raw).unwrap();
                let (status, head, _) = read_response(&mut reader);
                assert!(head.contains("connection: close"), "{head}");
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).unwrap();
                (status, rest)
            })
            .await
            .unwrap();
            assert_eq!(status, 400);
            assert!(rest.is_empty(), "closed after the answer");
        }
        let (status, _) = tokio::task::spawn_blocking(move || {
            let (mut stream, mut reader) = connect(&addr);
            let huge = format!(
                "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nX: {}\r\n\r\n",
                "a".repeat(http1::MAX_HEAD_BYTES)
            );
            stream.write_all(huge.as_bytes()).unwrap();
            let (status, head, _) = read_response(&mut reader);
            (status, head)
        })
        .await
        .unwrap();
        assert_eq!(status, 431);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runtime_hanging_up_while_waiting_does_not_keep_the_invocation() {
        let (api, addr) = start();
        let (stream, _reader) = connect(&addr);
        (&stream).write_all(NEXT.as_bytes()).unwrap();
        assert_eq!(api.ready().await, InitState::Ready);
        drop(stream);
        drop(_reader);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (inv, _outcome) = invocation("after-hang-up");
        api.dispatch(inv).unwrap();
        let (status, head, _) = tokio::task::spawn_blocking(move || {
            let (mut stream, mut reader) = connect(&addr);
            stream.write_all(NEXT.as_bytes()).unwrap();
            read_response(&mut reader)
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert!(head.contains("lambda-runtime-aws-request-id: after-hang-up"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_cap_are_closed_and_room_returns_when_one_ends() {
        let (_api, addr) = start();
        let unknown = "GET /2018-06-01/nowhere HTTP/1.1\r\nHost: x\r\n\r\n";
        let outcome = tokio::task::spawn_blocking(move || {
            // Each connection answered once, so the server has taken it.
            let mut open: Vec<_> = (0..MAX_RUNTIME_CONNECTIONS)
                .map(|_| {
                    let (mut stream, mut reader) = connect(&addr);
                    stream.write_all(unknown.as_bytes()).unwrap();
                    assert_eq!(read_response(&mut reader).0, 404);
                    (stream, reader)
                })
                .collect();
            let (mut extra, mut extra_reader) = connect(&addr);
            extra
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = extra.write_all(unknown.as_bytes());
            let mut rest = Vec::new();
            let ended = match extra_reader.read_to_end(&mut rest) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            };
            let refused = ended && rest.is_empty();
            // The ones within the cap still work.
            let (stream, reader) = &mut open[0];
            stream.write_all(unknown.as_bytes()).unwrap();
            let still_served = read_response(reader).0;
            // Closing one makes room for another.
            open.pop();
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (mut again, mut again_reader) = connect(&addr);
            again.write_all(unknown.as_bytes()).unwrap();
            (refused, still_served, read_response(&mut again_reader).0)
        })
        .await
        .unwrap();
        assert_eq!(outcome, (true, 404, 404));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_chunked_response_is_refused() {
        let (api, addr) = start();
        let (inv, outcome) = invocation("big");
        api.dispatch(inv).unwrap();
        let status = tokio::task::spawn_blocking(move || {
            let (mut stream, mut reader) = connect(&addr);
            stream.write_all(NEXT.as_bytes()).unwrap();
            assert_eq!(read_response(&mut reader).0, 200);
            stream
                .write_all(b"POST /2018-06-01/runtime/invocation/big/response HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
            let chunk = vec![b'x'; 1024 * 1024];
            for _ in 0..7 {
                stream.write_all(b"100000\r\n").unwrap();
                stream.write_all(&chunk).unwrap();
                stream.write_all(b"\r\n").unwrap();
            }
            stream.write_all(b"0\r\n\r\n").unwrap();
            read_response(&mut reader).0
        })
        .await
        .unwrap();
        assert_eq!(status, 413);
        assert_eq!(outcome.await.unwrap(), InvocationOutcome::ResponseTooLarge);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn head_answers_carry_no_body_and_oversized_bodies_are_not_invited() {
        let (api, addr) = start();
        let (inv, outcome) = invocation("big");
        api.dispatch(inv).unwrap();
        tokio::task::spawn_blocking(move || {
            let (mut stream, mut reader) = connect(&addr);
            // A HEAD answer announces its length but sends no body: the next answer on
            // the same connection starts right after the head.
            stream
                .write_all(b"HEAD /2018-06-01/runtime/nothing HTTP/1.1\r\n\r\n")
                .unwrap();
            let mut head = String::new();
            loop {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            assert!(head.starts_with("HTTP/1.1 404"), "{head}");
            stream.write_all(NEXT.as_bytes()).unwrap();
            assert_eq!(read_response(&mut reader).0, 200);
            // Too large to be read: answered at once, without `100 Continue`, and closed.
            let oversized = format!(
                "POST /2018-06-01/runtime/invocation/big/response HTTP/1.1\r\n\
                 Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                MAX_RESPONSE_BYTES + 1
            );
            stream.write_all(oversized.as_bytes()).unwrap();
            let (status, head, _) = read_response(&mut reader);
            assert_eq!(status, 413);
            assert!(head.contains("connection: close"), "{head}");
        })
        .await
        .unwrap();
        assert_eq!(outcome.await.unwrap(), InvocationOutcome::ResponseTooLarge);
    }
}
