//! Asynchronous invocation, driven by `aws-sdk-lambda`: 202 semantics, retries seen in the
//! logs, maximum event age, destinations and dead-letter targets receiving AWS's record,
//! the event invoke config API, and acknowledged events surviving `kill -9`.
//!
//! What a function received is read back from its log: the test function prints every
//! event as `EVENT <json>` when `LAMINA_TESTFN_LOG_EVENTS` is set.

mod support;

use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    DeadLetterConfig, DestinationConfig, Environment, FunctionCode, InvocationType, OnFailure,
    OnSuccess, Runtime,
};
use serde_json::{Value, json};
use support::*;

const FAST_RETRIES: &[&str] = &[
    "--async-retry-delays-ms",
    "300,600",
    "--async-throttle-delay-ms",
    "100",
    "--async-throttle-delay-max-ms",
    "500",
];

fn arn(name: &str) -> String {
    format!("arn:aws:lambda:us-east-1:000000000000:function:{name}")
}

async fn deploy(client: &aws_sdk_lambda::Client, name: &str) {
    client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .timeout(10)
        .environment(
            Environment::builder()
                .variables("LAMINA_TESTFN_LOG_EVENTS", "1")
                .build(),
        )
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(test_function_zip()))
                .build(),
        )
        .send()
        .await
        .expect("create_function succeeds");
}

async fn invoke_event(client: &aws_sdk_lambda::Client, name: &str, payload: Value) -> i32 {
    client
        .invoke()
        .function_name(name)
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(payload.to_string()))
        .send()
        .await
        .expect("the event is accepted")
        .status_code()
}

/// The events a function received, as JSON.
fn received(endpoint: &str, function: &str) -> Vec<Value> {
    log_messages(endpoint, function)
        .iter()
        .filter_map(|m| m.trim_end().strip_prefix("EVENT "))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect()
}

/// Polls until `done` holds for what `function` received, or panics after `limit`.
async fn wait_received(
    endpoint: &str,
    function: &str,
    limit: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let events = received(endpoint, function);
        if done(&events) {
            return events;
        }
        assert!(
            started.elapsed() < limit,
            "{function} did not receive the expected events within {limit:?}; it got {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn starts(endpoint: &str, function: &str) -> usize {
    log_messages(endpoint, function)
        .iter()
        .filter(|m| m.starts_with("START RequestId:"))
        .count()
}

#[tokio::test]
async fn event_invokes_answer_202_and_run_with_their_logs() {
    let server = LaminaServer::start_with(FAST_RETRIES);
    let client = server.client();
    deploy(&client, "worker").await;

    assert_eq!(
        invoke_event(&client, "worker", json!({"action": "echo", "n": 1})).await,
        202
    );
    #[allow(deprecated)]
    let legacy = client
        .invoke_async()
        .function_name("worker")
        .invoke_args(aws_sdk_lambda::primitives::ByteStream::from_static(
            br#"{"action": "echo", "n": 2}"#,
        ))
        .send()
        .await
        .expect("InvokeAsync is accepted");
    assert_eq!(legacy.status(), 202);

    let events = wait_received(&server.endpoint, "worker", Duration::from_secs(20), |e| {
        e.len() == 2
    })
    .await;
    let mut numbers: Vec<_> = events.iter().map(|e| e["n"].as_i64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2]);
    let log = log_messages(&server.endpoint, "worker");
    for line in ["START RequestId:", "END RequestId:", "REPORT RequestId:"] {
        assert_eq!(
            log.iter().filter(|m| m.starts_with(line)).count(),
            2,
            "{line} once per event: {log:?}"
        );
    }

    // Limits: 1 MB for Event, 256 KB for InvokeAsync; a missing function is 404.
    let big = json!({"pad": "x".repeat(1_048_576)}).to_string();
    let error = client
        .invoke()
        .function_name("worker")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(big))
        .send()
        .await
        .unwrap_err();
    let (exception, status, _) = aws_error(error);
    assert_eq!(
        (exception.as_str(), status),
        ("RequestEntityTooLargeException", 413)
    );
    #[allow(deprecated)]
    let error = client
        .invoke_async()
        .function_name("worker")
        .invoke_args(aws_sdk_lambda::primitives::ByteStream::from(
            json!({"pad": "x".repeat(262_144)}).to_string().into_bytes(),
        ))
        .send()
        .await
        .unwrap_err();
    let (exception, status, _) = aws_error(error);
    assert_eq!(
        (exception.as_str(), status),
        ("RequestEntityTooLargeException", 413)
    );
    let error = client
        .invoke()
        .function_name("missing")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new("{}"))
        .send()
        .await
        .unwrap_err();
    let (exception, status, _) = aws_error(error);
    assert_eq!(
        (exception.as_str(), status),
        ("ResourceNotFoundException", 404)
    );
}

#[tokio::test]
async fn failures_are_retried_then_reach_on_failure_and_the_dead_letter_target() {
    let server = LaminaServer::start_with(FAST_RETRIES);
    let client = server.client();
    for name in ["flaky", "failures", "dlq"] {
        deploy(&client, name).await;
    }
    client
        .update_function_configuration()
        .function_name("flaky")
        .dead_letter_config(DeadLetterConfig::builder().target_arn(arn("dlq")).build())
        .send()
        .await
        .unwrap();
    client
        .put_function_event_invoke_config()
        .function_name("flaky")
        .maximum_retry_attempts(1)
        .destination_config(
            DestinationConfig::builder()
                .on_failure(OnFailure::builder().destination(arn("failures")).build())
                .build(),
        )
        .send()
        .await
        .unwrap();

    let started = Instant::now();
    let payload = json!({"action": "error", "message": "boom"});
    assert_eq!(invoke_event(&client, "flaky", payload.clone()).await, 202);
    let records = wait_received(&server.endpoint, "failures", Duration::from_secs(30), |e| {
        !e.is_empty()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the retry waited for its delay"
    );
    let record = &records[0];
    assert_eq!(record["version"], "1.0");
    let timestamp = record["timestamp"].as_str().unwrap();
    assert!(
        timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
        "{timestamp}"
    );
    let context = &record["requestContext"];
    assert_eq!(context["functionArn"], format!("{}:$LATEST", arn("flaky")));
    assert_eq!(context["condition"], "RetriesExhausted");
    assert_eq!(context["approximateInvokeCount"], 2);
    assert_eq!(context["requestId"].as_str().unwrap().len(), 36);
    assert_eq!(record["requestPayload"], payload);
    assert_eq!(
        record["responseContext"],
        json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"})
    );
    assert_eq!(record["responsePayload"]["errorMessage"], "boom");
    let expected_keys = [
        "requestContext",
        "requestPayload",
        "responseContext",
        "responsePayload",
        "timestamp",
        "version",
    ];
    let mut keys: Vec<_> = record.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, expected_keys);

    // The dead-letter target gets the event itself, as AWS's DLQs do.
    let dead = wait_received(&server.endpoint, "dlq", Duration::from_secs(20), |e| {
        !e.is_empty()
    })
    .await;
    assert_eq!(dead, [payload]);
    // One attempt and one retry, each with its START line, under the event's request id.
    assert_eq!(starts(&server.endpoint, "flaky"), 2);
    let request_id = context["requestId"].as_str().unwrap();
    let same_id = log_messages(&server.endpoint, "flaky")
        .iter()
        .filter(|m| m.starts_with(&format!("START RequestId: {request_id}")))
        .count();
    assert_eq!(same_id, 2, "both attempts log the event's request id");
}

#[tokio::test]
async fn successes_reach_on_success_with_the_invocation_record() {
    let server = LaminaServer::start_with(FAST_RETRIES);
    let client = server.client();
    deploy(&client, "producer").await;
    deploy(&client, "successes").await;
    client
        .put_function_event_invoke_config()
        .function_name("producer")
        .destination_config(
            DestinationConfig::builder()
                .on_success(OnSuccess::builder().destination(arn("successes")).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let payload = json!({"action": "echo", "order": 7});
    assert_eq!(
        invoke_event(&client, "producer", payload.clone()).await,
        202
    );
    let records = wait_received(
        &server.endpoint,
        "successes",
        Duration::from_secs(20),
        |e| !e.is_empty(),
    )
    .await;
    let record = &records[0];
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(record["requestPayload"], payload);
    assert_eq!(record["responsePayload"], payload);
    assert_eq!(
        record["responseContext"],
        json!({"statusCode": 200, "executedVersion": "$LATEST"})
    );
}

#[tokio::test]
async fn throttled_events_wait_until_their_maximum_age_then_fail() {
    let server = LaminaServer::start_with(FAST_RETRIES);
    let client = server.client();
    deploy(&client, "blocked").await;
    deploy(&client, "expired").await;
    client
        .put_function_concurrency()
        .function_name("blocked")
        .reserved_concurrent_executions(0)
        .send()
        .await
        .unwrap();
    client
        .put_function_event_invoke_config()
        .function_name("blocked")
        .maximum_event_age_in_seconds(60)
        .destination_config(
            DestinationConfig::builder()
                .on_failure(OnFailure::builder().destination(arn("expired")).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        invoke_event(&client, "blocked", json!({"action": "noop"})).await,
        202
    );
    let records = wait_received(&server.endpoint, "expired", Duration::from_secs(90), |e| {
        !e.is_empty()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(60));
    let record = &records[0];
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    // Throttled attempts are not invocations.
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
    assert!(record.get("responseContext").is_none());
    assert_eq!(starts(&server.endpoint, "blocked"), 0);
}

#[tokio::test]
async fn the_event_invoke_config_api_validates_like_aws() {
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "configured").await;
    deploy(&client, "target").await;

    let error = client
        .put_function_event_invoke_config()
        .function_name("configured")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "InvalidParameterValueException".to_owned(),
            400,
            "You must specify at least one of error handling or destination setting.".to_owned()
        )
    );
    let error = client
        .put_function_event_invoke_config()
        .function_name("configured")
        .maximum_retry_attempts(3)
        .maximum_event_age_in_seconds(59)
        .send()
        .await
        .unwrap_err();
    let (exception, status, message) = aws_error(error);
    assert_eq!((exception.as_str(), status), ("ValidationException", 400));
    assert_eq!(
        message,
        "2 validation errors detected: Value '3' at 'maximumRetryAttempts' failed to satisfy \
         constraint: Member must have value less than or equal to 2; Value '59' at \
         'maximumEventAgeInSeconds' failed to satisfy constraint: Member must have value \
         greater than or equal to 60"
    );
    let error = client
        .put_function_event_invoke_config()
        .function_name("configured")
        .destination_config(
            DestinationConfig::builder()
                .on_failure(OnFailure::builder().destination(arn("configured")).build())
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error).2,
        "You can't specify the function as a destination for itself."
    );
    let error = client
        .put_function_event_invoke_config()
        .function_name("configured")
        .destination_config(
            DestinationConfig::builder()
                .on_failure(
                    OnFailure::builder()
                        .destination("arn:aws:sqs:us-east-1:000000000000:queue")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    let (exception, status, message) = aws_error(error);
    assert_eq!(
        (exception.as_str(), status),
        ("NotImplementedException", 501)
    );
    assert!(message.contains("not supported yet"), "{message}");

    let error = client
        .get_function_event_invoke_config()
        .function_name("configured")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "ResourceNotFoundException".to_owned(),
            404,
            format!(
                "The function {}:$LATEST doesn't have an EventInvokeConfig",
                arn("configured")
            )
        )
    );
    // Update needs an existing configuration.
    let error = client
        .update_function_event_invoke_config()
        .function_name("configured")
        .maximum_retry_attempts(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(aws_error(error).1, 404);

    let put = client
        .put_function_event_invoke_config()
        .function_name("configured")
        .maximum_retry_attempts(0)
        .destination_config(
            DestinationConfig::builder()
                .on_success(OnSuccess::builder().destination(arn("target")).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.function_arn(),
        Some(format!("{}:$LATEST", arn("configured")).as_str())
    );
    assert_eq!(put.maximum_retry_attempts(), Some(0));
    assert!(put.last_modified().is_some());
    let updated = client
        .update_function_event_invoke_config()
        .function_name("configured")
        .maximum_event_age_in_seconds(3600)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.maximum_retry_attempts(), Some(0), "update merges");
    assert_eq!(updated.maximum_event_age_in_seconds(), Some(3600));
    let destination = updated
        .destination_config()
        .and_then(|d| d.on_success())
        .and_then(|s| s.destination());
    assert_eq!(destination, Some(arn("target").as_str()));
    let got = client
        .get_function_event_invoke_config()
        .function_name("configured")
        .send()
        .await
        .unwrap();
    assert_eq!(got.maximum_event_age_in_seconds(), Some(3600));
    let list = client
        .list_function_event_invoke_configs()
        .function_name("configured")
        .send()
        .await
        .unwrap();
    assert_eq!(list.function_event_invoke_configs().len(), 1);
    client
        .delete_function_event_invoke_config()
        .function_name("configured")
        .send()
        .await
        .unwrap();
    let error = client
        .delete_function_event_invoke_config()
        .function_name("configured")
        .send()
        .await
        .unwrap_err();
    assert_eq!(aws_error(error).1, 404);

    // A function deleted and created again starts without the old configuration.
    client
        .put_function_event_invoke_config()
        .function_name("configured")
        .maximum_retry_attempts(1)
        .send()
        .await
        .unwrap();
    client
        .delete_function()
        .function_name("configured")
        .send()
        .await
        .unwrap();
    deploy(&client, "configured").await;
    let error = client
        .get_function_event_invoke_config()
        .function_name("configured")
        .send()
        .await
        .unwrap_err();
    assert_eq!(aws_error(error).1, 404);
    // A missing function is 404 for every operation.
    let error = client
        .get_function_event_invoke_config()
        .function_name("missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(aws_error(error).0, "ResourceNotFoundException");
    // Function ARNs are accepted as dead-letter targets; other kinds are not yet.
    let error = client
        .update_function_configuration()
        .function_name("configured")
        .dead_letter_config(
            DeadLetterConfig::builder()
                .target_arn("arn:aws:sqs:us-east-1:000000000000:dlq")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    let (exception, status, message) = aws_error(error);
    assert_eq!(
        (exception.as_str(), status),
        ("NotImplementedException", 501)
    );
    assert!(message.contains("dead-letter target"), "{message}");
}

/// Events acknowledged with 202 survive SIGKILL and run after the restart. The function is
/// throttled (reserved concurrency 0) while the events arrive and the server dies, so the
/// witness of each run, its log line, is written by the restarted server.
#[tokio::test]
async fn acknowledged_events_survive_kill_9_and_run_after_restart() {
    let mut server = LaminaServer::start_with(FAST_RETRIES);
    let data = server.take_data_dir();
    let client = server.client();
    deploy(&client, "durable").await;
    client
        .put_function_concurrency()
        .function_name("durable")
        .reserved_concurrent_executions(0)
        .send()
        .await
        .unwrap();

    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for i in 0..10_000 {
                    let id = sender * 100_000 + i;
                    let sent = client
                        .invoke()
                        .function_name("durable")
                        .invocation_type(InvocationType::Event)
                        .payload(Blob::new(json!({"action": "echo", "id": id}).to_string()))
                        .send()
                        .await;
                    match sent {
                        Ok(output) if output.status_code() == 202 => {
                            acknowledged.lock().unwrap().push(id)
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill_hard();
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "only {} events were sent",
        acknowledged.len()
    );

    let server = LaminaServer::start_in_with(data.path(), FAST_RETRIES);
    let client = server.client();
    // Let the backlog through, a few at a time (the rest is throttled and retried).
    client
        .put_function_concurrency()
        .function_name("durable")
        .reserved_concurrent_executions(4)
        .send()
        .await
        .unwrap();
    let events = wait_received(&server.endpoint, "durable", Duration::from_secs(120), |e| {
        let ran: std::collections::HashSet<i64> =
            e.iter().filter_map(|e| e["id"].as_i64()).collect();
        acknowledged.iter().all(|id| ran.contains(id))
    })
    .await;
    eprintln!(
        "{} events acknowledged before SIGKILL; {} runs after the restart",
        acknowledged.len(),
        events.len()
    );
}

/// Polls until `function` has logged `count` START lines, then checks no more follow.
async fn wait_starts(endpoint: &str, function: &str, count: usize) {
    let started = Instant::now();
    while starts(endpoint, function) < count {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{function}: {} attempts, expected {count}",
            starts(endpoint, function)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        starts(endpoint, function),
        count,
        "{function}: no further attempts"
    );
}

#[tokio::test]
async fn crashes_and_timeouts_are_retried_up_to_the_maximum() {
    let server = LaminaServer::start_with(FAST_RETRIES);
    let client = server.client();
    deploy(&client, "crashy").await;
    deploy(&client, "slow").await;
    client
        .update_function_configuration()
        .function_name("slow")
        .timeout(1)
        .send()
        .await
        .unwrap();
    client
        .put_function_event_invoke_config()
        .function_name("slow")
        .maximum_retry_attempts(1)
        .send()
        .await
        .unwrap();
    // The default: two retries.
    assert_eq!(
        invoke_event(&client, "crashy", json!({"action": "exit", "code": 3})).await,
        202
    );
    assert_eq!(
        invoke_event(&client, "slow", json!({"action": "sleep", "ms": 3000})).await,
        202
    );
    wait_starts(&server.endpoint, "crashy", 3).await;
    wait_starts(&server.endpoint, "slow", 2).await;
}

/// An attempt cut short by SIGTERM is not a function error: no failure record, and the
/// event runs again after the restart.
#[tokio::test]
async fn a_clean_stop_does_not_count_as_a_failed_attempt() {
    let mut server = LaminaServer::start_with(FAST_RETRIES);
    let data = server.take_data_dir();
    let client = server.client();
    deploy(&client, "long").await;
    deploy(&client, "long-failures").await;
    client
        .put_function_event_invoke_config()
        .function_name("long")
        .maximum_retry_attempts(0)
        .destination_config(
            DestinationConfig::builder()
                .on_failure(
                    OnFailure::builder()
                        .destination(arn("long-failures"))
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        invoke_event(&client, "long", json!({"action": "sleep", "ms": 2000})).await,
        202
    );
    wait_received(&server.endpoint, "long", Duration::from_secs(20), |e| {
        !e.is_empty()
    })
    .await;
    assert!(server.terminate().success());

    let server = LaminaServer::start_in_with(data.path(), FAST_RETRIES);
    wait_received(&server.endpoint, "long", Duration::from_secs(20), |e| {
        e.len() == 2
    })
    .await;
    // Long enough for the second run to end and any failure record to be delivered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(received(&server.endpoint, "long-failures").is_empty());
    assert!(
        log_messages(&server.endpoint, "long")
            .iter()
            .any(|m| m.starts_with("END RequestId:")),
        "the second run finished"
    );
}
