//! Synchronous invocation end to end: `aws-sdk-lambda` invokes a function built on the
//! official `lambda_runtime` crate (in release mode), running in a real execution
//! environment behind the Runtime API.

mod support;

use std::collections::BTreeMap;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    Environment, EphemeralStorage, FunctionCode, InvocationType, LogType, Runtime,
};
use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

struct Invoked {
    status: i32,
    payload: Value,
    function_error: Option<String>,
    executed_version: Option<String>,
    log: Option<String>,
}

async fn invoke(client: &aws_sdk_lambda::Client, name: &str, event: Value) -> Invoked {
    let output = client
        .invoke()
        .function_name(name)
        .payload(Blob::new(serde_json::to_vec(&event).unwrap()))
        .log_type(LogType::Tail)
        .send()
        .await
        .expect("invoke succeeds at the API level");
    let bytes = output
        .payload()
        .map(|p| p.as_ref().to_vec())
        .unwrap_or_default();
    Invoked {
        status: output.status_code(),
        payload: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        function_error: output.function_error().map(str::to_owned),
        executed_version: output.executed_version().map(str::to_owned),
        log: output.log_result().map(|encoded| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap(),
            )
            .unwrap()
        }),
    }
}

struct Deploy<'a> {
    name: &'a str,
    memory: i32,
    timeout: i32,
    storage: i32,
    variables: BTreeMap<&'a str, &'a str>,
}

impl<'a> Deploy<'a> {
    fn new(name: &'a str) -> Self {
        Deploy {
            name,
            memory: 256,
            timeout: 10,
            storage: 512,
            variables: BTreeMap::new(),
        }
    }

    async fn create(self, client: &aws_sdk_lambda::Client) {
        let mut environment = Environment::builder();
        for (k, v) in &self.variables {
            environment = environment.variables(*k, *v);
        }
        client
            .create_function()
            .function_name(self.name)
            .runtime(Runtime::Providedal2023)
            .role(ROLE)
            .handler("bootstrap")
            .memory_size(self.memory)
            .timeout(self.timeout)
            .ephemeral_storage(
                EphemeralStorage::builder()
                    .size(self.storage)
                    .build()
                    .unwrap(),
            )
            .environment(environment.build())
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(test_function_zip()))
                    .build(),
            )
            .send()
            .await
            .expect("create_function succeeds");
    }
}

#[tokio::test]
async fn a_lambda_runtime_function_answers_with_its_result_and_logs() {
    let server = LaminaServer::start();
    let client = server.client();
    let mut deploy = Deploy::new("echo");
    deploy.variables.insert("GREETING", "hello");
    deploy.create(&client).await;

    let first = invoke(&client, "echo", json!({"action": "echo", "n": 1})).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.payload, json!({"action": "echo", "n": 1}));
    assert_eq!(first.function_error, None);
    assert_eq!(first.executed_version.as_deref(), Some("$LATEST"));
    let log = first.log.expect("Tail returns the log");
    assert!(log.contains("START RequestId: "), "{log}");
    assert!(log.contains("END RequestId: "), "{log}");
    let report = log
        .lines()
        .find(|l| l.starts_with("REPORT RequestId: "))
        .unwrap();
    assert!(report.contains("\tDuration: ") && report.contains(" ms\tBilled Duration: "));
    assert!(
        report.contains("\tMemory Size: 256 MB\tMax Memory Used: "),
        "{report}"
    );
    assert!(
        report.contains("\tInit Duration: "),
        "cold start reports init: {report}"
    );

    // Warm: the same environment, module state kept, no Init Duration.
    let second = invoke(&client, "echo", json!({"action": "count"})).await;
    assert_eq!(second.payload, json!({"count": 2}));
    assert!(!second.log.unwrap().contains("Init Duration"));

    // Output reaches the log, in order, before END.
    let printed = invoke(
        &client,
        "echo",
        json!({"action": "print", "lines": ["first line", "second line"]}),
    )
    .await;
    let log = printed.log.unwrap();
    let first_at = log.find("first line").expect("stdout in the log");
    let end_at = log.find("END RequestId").unwrap();
    assert!(
        first_at < log.find("second line").unwrap() && log.find("second line").unwrap() < end_at
    );
    assert!(log.contains("to stderr"));

    // The environment Lambda promises, plus the function's own variables.
    let env = invoke(&client, "echo", json!({"action": "env"}))
        .await
        .payload;
    for (key, expected) in [
        ("AWS_LAMBDA_FUNCTION_NAME", "echo"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/echo"),
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023"),
        ("TZ", ":UTC"),
        ("_HANDLER", "bootstrap"),
        ("GREETING", "hello"),
    ] {
        assert_eq!(env[key], expected, "{key}");
    }
    for key in [
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "_X_AMZN_TRACE_ID",
    ] {
        assert!(env[key].as_str().is_some_and(|v| !v.is_empty()), "{key}");
    }
    let stream = env["AWS_LAMBDA_LOG_STREAM_NAME"].as_str().unwrap();
    assert!(stream.contains("/[$LATEST]"), "{stream}");

    // The context the runtime client builds from the Runtime API's headers.
    let context = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(br#"{"action":"context"}"#.to_vec()))
        .client_context(
            base64::engine::general_purpose::STANDARD
                .encode(r#"{"client":{"installationId":"i","appTitle":"t","appVersionName":"1","appVersionCode":"1","appPackageName":"p"},"custom":{"k":"v"},"environment":{}}"#),
        )
        .send()
        .await
        .unwrap();
    let context: Value = serde_json::from_slice(context.payload().unwrap().as_ref()).unwrap();
    assert_eq!(
        context["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:echo"
    );
    assert_eq!(context["client_context"]["k"], "v");
    assert!(context["deadline_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(context["request_id"].as_str().unwrap().len(), 36);
}

#[tokio::test]
async fn function_errors_answer_200_with_the_error_document() {
    let server = LaminaServer::start();
    let client = server.client();
    Deploy::new("failing").create(&client).await;
    let failed = invoke(
        &client,
        "failing",
        json!({"action": "error", "message": "boom"}),
    )
    .await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(failed.payload["errorMessage"], "boom");
    assert!(failed.payload["errorType"].is_string());
    // The environment survives a handled error.
    assert_eq!(
        invoke(&client, "failing", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 2})
    );
}

#[tokio::test]
async fn timeouts_crashes_and_oom_are_reported_and_the_next_invoke_starts_fresh() {
    let server = LaminaServer::start();
    let client = server.client();
    let mut deploy = Deploy::new("fragile");
    deploy.timeout = 1;
    deploy.memory = 128;
    deploy.create(&client).await;

    let timed_out = invoke(&client, "fragile", json!({"action": "sleep", "ms": 3000})).await;
    assert_eq!(timed_out.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(timed_out.payload["errorType"], "Sandbox.Timedout");
    let message = timed_out.payload["errorMessage"].as_str().unwrap();
    assert!(
        message.starts_with("RequestId: ")
            && message.ends_with(" Error: Task timed out after 1.00 seconds"),
        "{message}"
    );
    assert_eq!(
        invoke(&client, "fragile", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 1}),
        "a fresh environment after the timeout"
    );

    let crashed = invoke(&client, "fragile", json!({"action": "exit", "code": 3})).await;
    assert_eq!(crashed.payload["errorType"], "Runtime.ExitError");
    assert!(
        crashed.payload["errorMessage"]
            .as_str()
            .unwrap()
            .ends_with("Error: Runtime exited with error: exit status 3"),
        "{}",
        crashed.payload
    );
    assert_eq!(
        invoke(&client, "fragile", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 1})
    );

    if linux_tier(&server) {
        // 128 MB buys 7 % of a vCPU, as on Lambda: give the allocation time to hit the limit.
        let mut deploy = Deploy::new("greedy");
        deploy.memory = 128;
        deploy.timeout = 30;
        deploy.create(&client).await;
        let oom = invoke(&client, "greedy", json!({"action": "alloc", "mb": 400})).await;
        assert_eq!(oom.function_error.as_deref(), Some("Unhandled"));
        assert_eq!(
            oom.payload["errorType"], "Runtime.OutOfMemory",
            "{}",
            oom.payload
        );
        assert!(
            oom.payload["errorMessage"]
                .as_str()
                .unwrap()
                .ends_with("Error: Runtime exited with error: signal: killed")
        );
        assert_eq!(
            invoke(&client, "greedy", json!({"action": "count"}))
                .await
                .payload,
            json!({"count": 1})
        );
    }
}

#[tokio::test]
async fn concurrent_invokes_get_separate_environments() {
    concurrent_invokes_get_separate_environments_on(LaminaServer::start()).await;
}

/// One server thread runs tokio's current-thread scheduler, more run the multi-thread one
/// (which is the default depends on the machine's cores): both must serve.
#[tokio::test]
async fn concurrent_invokes_get_separate_environments_with_two_server_threads() {
    concurrent_invokes_get_separate_environments_on(LaminaServer::start_with(&[
        "--worker-threads",
        "2",
    ]))
    .await;
}

async fn concurrent_invokes_get_separate_environments_on(server: LaminaServer) {
    let client = server.client();
    Deploy::new("parallel").create(&client).await;
    let (a, b) = tokio::join!(
        invoke(&client, "parallel", json!({"action": "sleep", "ms": 400})),
        invoke(&client, "parallel", json!({"action": "sleep", "ms": 400})),
    );
    assert_eq!(a.payload, json!({"slept_ms": 400}));
    assert_eq!(b.payload, json!({"slept_ms": 400}));
    // Two warm environments now: two more overlapping invokes both see count 2.
    let (c, d) = tokio::join!(
        invoke(&client, "parallel", json!({"action": "count"})),
        invoke(&client, "parallel", json!({"action": "count"})),
    );
    let mut counts = vec![c.payload["count"].as_u64(), d.payload["count"].as_u64()];
    counts.sort();
    assert!(
        counts.iter().all(|c| c.is_some_and(|c| c >= 2)),
        "{counts:?}"
    );
}

#[tokio::test]
async fn updating_a_function_drains_its_warm_environments() {
    let server = LaminaServer::start();
    let client = server.client();
    Deploy::new("drained").create(&client).await;
    invoke(&client, "drained", json!({"action": "count"})).await;
    assert_eq!(
        invoke(&client, "drained", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 2})
    );
    client
        .update_function_configuration()
        .function_name("drained")
        .environment(Environment::builder().variables("MARK", "2").build())
        .send()
        .await
        .unwrap();
    let fresh = invoke(&client, "drained", json!({"action": "env"}))
        .await
        .payload;
    assert_eq!(fresh["MARK"], "2", "the new configuration runs");
    assert_eq!(
        invoke(&client, "drained", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 2}),
        "a new environment served the env call, then this one"
    );
}

#[tokio::test]
async fn payload_limits_and_invalid_requests() {
    let server = LaminaServer::start();
    let client = server.client();
    Deploy::new("limits").create(&client).await;

    let big = format!("\"{}\"", "x".repeat(6 * 1024 * 1024));
    let (code, status, message) = aws_error(
        client
            .invoke()
            .function_name("limits")
            .payload(Blob::new(big))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("RequestEntityTooLargeException", 413)
    );
    assert_eq!(
        message,
        "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
    );

    let (code, status, message) = aws_error(
        client
            .invoke()
            .function_name("limits")
            .payload(Blob::new(b"{not json".to_vec()))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("InvalidRequestContentException", 400)
    );
    assert!(
        message.starts_with("Could not parse request body into json"),
        "{message}"
    );

    let too_big = invoke(
        &client,
        "limits",
        json!({"action": "big_response", "bytes": 7_000_000}),
    )
    .await;
    assert_eq!(too_big.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(
        too_big.payload,
        json!({
            "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
            "errorType": "Function.ResponseSizeTooLarge"
        })
    );

    let dry = client
        .invoke()
        .function_name("limits")
        .invocation_type(InvocationType::DryRun)
        .send()
        .await
        .unwrap();
    assert_eq!(dry.status_code(), 204);

    let (code, status, message) = aws_error(
        client
            .invoke()
            .function_name("missing")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
    assert_eq!(
        message,
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:missing"
    );

    // A zip without a bootstrap fails as Lambda fails it.
    client
        .create_function()
        .function_name("no-bootstrap")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(zip_of(&[("readme.txt", b"hi", 0o644)])))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let missing = invoke(&client, "no-bootstrap", json!({})).await;
    assert_eq!(missing.payload["errorType"], "Runtime.InvalidEntrypoint");
}

#[tokio::test]
async fn the_sandbox_isolates_the_function() {
    let server = LaminaServer::start();
    if !linux_tier(&server) {
        eprintln!("SKIPPED: not root, so lamina runs the process tier and isolates nothing");
        return;
    }
    let client = server.client();
    let mut deploy = Deploy::new("isolated");
    deploy.memory = 128;
    deploy.storage = 512;
    deploy.create(&client).await;

    let probe = invoke(&client, "isolated", json!({"action": "probe"}))
        .await
        .payload;
    assert_eq!(probe["task_writable"], false, "/var/task is read-only");
    assert_eq!(probe["tmp_writable"], true);
    assert_eq!(probe["root_visible"], false, "host files are not visible");
    assert_eq!(probe["work_visible"], false);
    assert_eq!(probe["cwd"], "/var/task");
    assert!(
        !probe["uid"].as_str().unwrap().starts_with("0\t"),
        "{}",
        probe["uid"]
    );
    assert_eq!(probe["cap_eff"], "0000000000000000");
    assert_eq!(probe["no_new_privs"], "1");
    assert_eq!(probe["seccomp"], "2");
    let pids = probe["pids"].as_array().unwrap();
    assert!(
        pids.len() <= 3,
        "only the sandbox's own processes: {pids:?}"
    );

    // /tmp is capped at EphemeralStorage and not charged to the 128 MB of memory.
    let within = invoke(
        &client,
        "isolated",
        json!({"action": "write_tmp", "mb": 300}),
    )
    .await;
    assert_eq!(
        within.payload["result"], "wrote 300 MB",
        "{}",
        within.payload
    );
    let beyond = invoke(
        &client,
        "isolated",
        json!({"action": "write_tmp", "mb": 600}),
    )
    .await;
    assert!(
        beyond.payload["result"]
            .as_str()
            .unwrap()
            .starts_with("failed after"),
        "{}",
        beyond.payload
    );

    // The host's loopback services are out of reach.
    let host_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = host_listener.local_addr().unwrap().to_string();
    let connect = invoke(
        &client,
        "isolated",
        json!({"action": "connect", "addr": addr}),
    )
    .await;
    assert_eq!(connect.payload["connected"], false, "{}", connect.payload);
}

#[test]
fn logs_are_readable_with_the_aws_cli() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = LaminaServer::start();
    let client = server.client();
    runtime.block_on(async {
        Deploy::new("logged").create(&client).await;
        invoke(
            &client,
            "logged",
            json!({"action": "print", "lines": ["needle-in-the-log"]}),
        )
        .await;
    });
    let aws = |args: &[&str]| -> (bool, String) {
        let program = std::env::var("LAMINA_AWS_CLI").unwrap_or_else(|_| "aws".to_owned());
        let output = std::process::Command::new(program)
            .args(["--endpoint-url", &server.endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "AKIDLAMINA")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_PAGER", "")
            .output()
            .expect("the AWS CLI runs (./scripts/test installs it)");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    // The log store writes in batches: allow it a moment.
    let mut found = String::new();
    for _ in 0..50 {
        let (ok, out) = aws(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            "/aws/lambda/logged",
            "--filter-pattern",
            "needle",
        ]);
        if ok && out.contains("needle-in-the-log") {
            found = out;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        found.contains("needle-in-the-log"),
        "filter-log-events found the line"
    );
    // `aws logs tail` (CLI v2; PyPI carries v1) polls FilterLogEvents with interleaving,
    // which is what this asks for.
    let (ok, all) = aws(&[
        "logs",
        "filter-log-events",
        "--log-group-name",
        "/aws/lambda/logged",
        "--interleaved",
    ]);
    assert!(ok, "{all}");
    assert!(
        all.contains("START RequestId:") && all.contains("REPORT RequestId:"),
        "{all}"
    );
    let (ok, streams) = aws(&[
        "logs",
        "describe-log-streams",
        "--log-group-name",
        "/aws/lambda/logged",
    ]);
    assert!(ok && streams.contains("[$LATEST]"), "{streams}");
}

#[tokio::test]
async fn idle_environments_are_reaped_after_the_idle_timeout() {
    let server = LaminaServer::start_with(&["--idle-timeout", "1"]);
    let client = server.client();
    Deploy::new("reaped").create(&client).await;
    assert_eq!(
        invoke(&client, "reaped", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 1})
    );
    assert_eq!(
        invoke(&client, "reaped", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 2}),
        "warm within the idle timeout"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let after = invoke(&client, "reaped", json!({"action": "count"})).await;
    assert_eq!(
        after.payload,
        json!({"count": 1}),
        "a fresh environment after reaping"
    );
    assert!(after.log.unwrap().contains("Init Duration"));
}

#[tokio::test]
async fn a_runtime_that_fails_to_start_is_reported_and_the_server_keeps_serving() {
    let server = LaminaServer::start();
    let client = server.client();
    // A bootstrap that dies during initialisation, before asking for an invocation.
    let reports_init_error = b"#!/bin/sh\necho 'init went wrong' >&2\nexit 2\n";
    client
        .create_function()
        .function_name("broken")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(zip_of(&[(
                    "bootstrap",
                    reports_init_error,
                    0o755,
                )])))
                .build(),
        )
        .send()
        .await
        .unwrap();
    for _ in 0..2 {
        let failed = invoke(&client, "broken", json!({})).await;
        assert_eq!(failed.function_error.as_deref(), Some("Unhandled"));
        assert_eq!(
            failed.payload["errorType"], "Runtime.ExitError",
            "{}",
            failed.payload
        );
        assert!(
            failed.payload["errorMessage"]
                .as_str()
                .unwrap()
                .ends_with("Error: Runtime exited with error: exit status 2"),
            "{}",
            failed.payload
        );
        assert!(failed.log.unwrap_or_default().contains("init went wrong"));
    }
    // Other functions are unaffected.
    Deploy::new("healthy").create(&client).await;
    assert_eq!(
        invoke(&client, "healthy", json!({"action": "count"}))
            .await
            .payload,
        json!({"count": 1})
    );
}

#[tokio::test]
async fn an_invocation_whose_caller_hangs_up_still_finishes_and_frees_its_environment() {
    use std::io::Write as _;
    let server = LaminaServer::start();
    let client = server.client();
    Deploy::new("abandoned").create(&client).await;
    // Start a slow invocation with a raw connection, then hang up half-way.
    let host = server.endpoint.trim_start_matches("http://").to_owned();
    let body = br#"{"action":"sleep","ms":1000}"#;
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    write!(
        stream,
        "POST /2015-03-31/functions/abandoned/invocations HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(stream);
    // The invocation runs to its end and its environment goes back to the pool: the next
    // invoke is warm and sees the abandoned one in its state.
    // Generous: a loaded CI machine may be slow to cold-start it.
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    let next = invoke(&client, "abandoned", json!({"action": "count"})).await;
    assert_eq!(
        next.payload,
        json!({"count": 2}),
        "the environment was reused, not leaked"
    );
}

/// One HTTP/1.1 request on a fresh connection that the server closes after answering:
/// the status line, the headers (lower-cased names) and the body.
fn raw_request(host: &str, head: &str, body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "{head}\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, answer[split + 4..].to_vec())
}

/// The exception name an AWS error response carries in `x-amzn-ErrorType`.
fn error_type(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(name, _)| name == "x-amzn-errortype")
        .map(|(_, value)| value.split(':').next().unwrap_or(value))
}

/// Invoke is served past the router (the hot path); it must refuse and answer exactly as
/// the routed operations do.
#[tokio::test]
async fn invoke_checks_signatures_and_decodes_names_as_every_operation_does() {
    let server = LaminaServer::start();
    let client = server.client();
    Deploy::new("signed").create(&client).await;
    let host = server.endpoint.trim_start_matches("http://").to_owned();
    let malformed =
        "Authorization: AWS4-HMAC-SHA256 Credential=AKID/20240501/us-east-1/lambda/aws4_request";
    for head in [
        format!("POST /2015-03-31/functions/signed/invocations HTTP/1.1\r\n{malformed}"),
        format!("GET /2015-03-31/functions/signed HTTP/1.1\r\n{malformed}"),
    ] {
        let (status, headers, body) = raw_request(&host, &head, b"{}");
        assert_eq!(status, 403, "{head}");
        assert_eq!(
            error_type(&headers),
            Some("IncompleteSignatureException"),
            "{headers:?}"
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("requires 'Signature' parameter")),
            "{body}"
        );
    }
    // A percent-encoded ARN names the function, as the SDKs send it.
    let arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Asigned";
    let (status, headers, body) = raw_request(
        &host,
        &format!("POST /2015-03-31/functions/{arn}/invocations?Qualifier=%24LATEST HTTP/1.1"),
        br#"{"action":"echo"}"#,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "x-amz-executed-version" && v == "$LATEST"),
        "{headers:?}"
    );
    // An unknown function and a payload that is not JSON: AWS's errors, as before.
    let (status, headers, _) = raw_request(
        &host,
        "POST /2015-03-31/functions/nowhere/invocations HTTP/1.1",
        b"{}",
    );
    assert_eq!(status, 404);
    assert_eq!(
        error_type(&headers),
        Some("ResourceNotFoundException"),
        "{headers:?}"
    );
    let (status, headers, _) = raw_request(
        &host,
        "POST /2015-03-31/functions/signed/invocations HTTP/1.1",
        b"not json",
    );
    assert_eq!(status, 400);
    assert_eq!(
        error_type(&headers),
        Some("InvalidRequestContentException"),
        "{headers:?}"
    );
}

/// A connection that only invokes is served by the server's own HTTP/1.1 (the hot path);
/// one that carries anything else is handed to hyper, with what was read, at that request.
/// Both must answer the same: a fresh `aws-sdk-lambda` client that only invokes (its
/// first connection never sees another operation) against raw pipelined requests.
#[tokio::test]
async fn invoke_only_connections_answer_as_every_other_connection_does() {
    use std::io::{Read as _, Write as _};
    let server = LaminaServer::start();
    Deploy::new("front").create(&server.client()).await;
    let invoker = client_for(&server.endpoint);

    let echoed = invoke(&invoker, "front", json!({"action": "echo", "n": 1})).await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.payload, json!({"action": "echo", "n": 1}));
    assert_eq!(echoed.executed_version.as_deref(), Some("$LATEST"));
    assert!(echoed.log.unwrap().contains("REPORT RequestId"));
    let failed = invoke(
        &invoker,
        "front",
        json!({"action": "error", "message": "no"}),
    )
    .await;
    assert_eq!(failed.function_error.as_deref(), Some("Unhandled"));
    let dry = invoker
        .invoke()
        .function_name("front")
        .invocation_type(InvocationType::DryRun)
        .send()
        .await
        .unwrap();
    assert_eq!(dry.status_code(), 204);
    let event = invoker
        .invoke()
        .function_name("front")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(b"{}".to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(event.status_code(), 202);
    let (code, status, _) = aws_error(
        invoker
            .invoke()
            .function_name("front")
            .qualifier("7")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
    let (code, status, _) = aws_error(
        invoker
            .invoke()
            .function_name("front")
            .payload(Blob::new(b"[1,".to_vec()))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("InvalidRequestContentException", 400)
    );
    // Over the payload limit: hyper's to answer (it discards the body); later invokes on
    // the same client still work.
    let (code, status, _) = aws_error(
        invoker
            .invoke()
            .function_name("front")
            .payload(Blob::new(format!("\"{}\"", "x".repeat(6_300_000))))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("RequestEntityTooLargeException", 413)
    );
    let near_limit = "y".repeat(6_000_000);
    let big = invoke(
        &invoker,
        "front",
        json!({"action": "echo", "data": near_limit}),
    )
    .await;
    assert_eq!(big.payload["data"].as_str().map(str::len), Some(6_000_000));

    // Raw: two invokes pipelined in one write, then a GetFunction on the same connection
    // (the hand-over), each answered in order.
    let host = server.endpoint.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    let echo = |n: u32| {
        let body = format!(r#"{{"action":"echo","n":{n}}}"#);
        format!(
            "POST /2015-03-31/functions/front/invocations HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    write!(
        stream,
        "{}{}GET /2015-03-31/functions/front HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        echo(1),
        echo(2)
    )
    .unwrap();
    let mut answers = String::new();
    stream.read_to_string(&mut answers).unwrap();
    let statuses: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answers[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200"], "{answers}");
    let first = answers.find(r#"{"action":"echo","n":1}"#).expect(&answers);
    let second = answers.find(r#"{"action":"echo","n":2}"#).expect(&answers);
    assert!(first < second, "{answers}");
    assert!(answers.contains(r#""FunctionName":"front""#), "{answers}");
    assert_eq!(answers.matches("\r\ndate: ").count(), 3, "{answers}");
}
