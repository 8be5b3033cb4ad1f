//! Lambda's concurrency model through `aws-sdk-lambda`: reserved concurrency as a ceiling
//! and a guarantee, the account limit shared by every function, provisioned concurrency
//! (weighted aliases, its set-aside, quick changes), and AWS's throttle shape.

mod support;

use aws_sdk_lambda::operation::invoke::InvokeError;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime, ThrottleReason};
use serde_json::json;
use support::*;

async fn deploy(client: &aws_sdk_lambda::Client, name: &str) {
    client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .timeout(30)
        .code(
            FunctionCode::builder()
                .zip_file(test_function_zip().into())
                .build(),
        )
        .send()
        .await
        .expect("create_function succeeds");
}

/// Invokes `name` with an event that sleeps `ms`; returns the throttle reason, if throttled.
async fn invoke_sleeping(
    client: &aws_sdk_lambda::Client,
    name: &str,
    ms: u64,
) -> Result<(), (ThrottleReason, Option<String>)> {
    let event = json!({"action": "sleep", "ms": ms});
    match client
        .invoke()
        .function_name(name)
        .payload(Blob::new(serde_json::to_vec(&event).unwrap()))
        .send()
        .await
    {
        Ok(output) => {
            assert_eq!(output.function_error(), None, "{:?}", output.payload());
            Ok(())
        }
        Err(error) => match error.into_service_error() {
            InvokeError::TooManyRequestsException(throttled) => {
                assert_eq!(throttled.message(), Some("Rate Exceeded."));
                Err((
                    throttled
                        .reason()
                        .cloned()
                        .expect("a throttle names its reason"),
                    throttled.retry_after_seconds().map(str::to_owned),
                ))
            }
            other => panic!("expected a throttle, got {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserved_concurrency_is_a_ceiling() {
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "single").await;
    let put = client
        .put_function_concurrency()
        .function_name("single")
        .reserved_concurrent_executions(1)
        .send()
        .await
        .unwrap();
    assert_eq!(put.reserved_concurrent_executions(), Some(1));
    let got = client
        .get_function_concurrency()
        .function_name("single")
        .send()
        .await
        .unwrap();
    assert_eq!(got.reserved_concurrent_executions(), Some(1));
    let function = client
        .get_function()
        .function_name("single")
        .send()
        .await
        .unwrap();
    assert_eq!(
        function
            .concurrency()
            .and_then(|c| c.reserved_concurrent_executions()),
        Some(1)
    );

    // Warm one environment first so the overlapping pair is about concurrency, not start-up.
    invoke_sleeping(&client, "single", 0).await.unwrap();
    let long = tokio::spawn({
        let client = client.clone();
        async move { invoke_sleeping(&client, "single", 1500).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (reason, retry_after) = invoke_sleeping(&client, "single", 0).await.unwrap_err();
    assert_eq!(
        reason,
        ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
    );
    assert!(retry_after.is_some(), "a throttle says when to retry");
    long.await.unwrap().expect("the first invocation ran");
    // Once it finished, the reservation is free again.
    invoke_sleeping(&client, "single", 0).await.unwrap();

    // Zero reserved throttles every invoke; deleting the reservation lifts it.
    client
        .put_function_concurrency()
        .function_name("single")
        .reserved_concurrent_executions(0)
        .send()
        .await
        .unwrap();
    let (reason, _) = invoke_sleeping(&client, "single", 0).await.unwrap_err();
    assert_eq!(
        reason,
        ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
    );
    client
        .delete_function_concurrency()
        .function_name("single")
        .send()
        .await
        .unwrap();
    let got = client
        .get_function_concurrency()
        .function_name("single")
        .send()
        .await
        .unwrap();
    assert_eq!(got.reserved_concurrent_executions(), None);
    invoke_sleeping(&client, "single", 0).await.unwrap();
}

#[tokio::test]
async fn reservations_are_reported_and_bounded_by_the_account_limit() {
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "a").await;
    deploy(&client, "b").await;

    let settings = client.get_account_settings().send().await.unwrap();
    let limit = settings.account_limit().unwrap();
    assert_eq!(limit.concurrent_executions(), 1000);
    assert_eq!(limit.unreserved_concurrent_executions(), Some(1000));

    client
        .put_function_concurrency()
        .function_name("a")
        .reserved_concurrent_executions(600)
        .send()
        .await
        .unwrap();
    let settings = client.get_account_settings().send().await.unwrap();
    assert_eq!(
        settings
            .account_limit()
            .unwrap()
            .unreserved_concurrent_executions(),
        Some(400)
    );

    // 600 + 301 would leave 99 unreserved: AWS keeps at least 100.
    let error = client
        .put_function_concurrency()
        .function_name("b")
        .reserved_concurrent_executions(301)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "InvalidParameterValueException".to_owned(),
            400,
            "Specified ReservedConcurrentExecutions for function decreases account's \
             UnreservedConcurrentExecution below its minimum value of [100]."
                .to_owned()
        )
    );
    // Replacing a's own reservation is measured without its old value.
    client
        .put_function_concurrency()
        .function_name("a")
        .reserved_concurrent_executions(900)
        .send()
        .await
        .unwrap();

    let error = client
        .put_function_concurrency()
        .function_name("missing")
        .reserved_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    let (code, status, message) = aws_error(error);
    assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
    assert!(message.ends_with(":function:missing"), "{message}");

    let error = client
        .put_function_concurrency()
        .function_name("b")
        .reserved_concurrent_executions(-1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "ValidationException".to_owned(),
            400,
            "1 validation error detected: Value '-1' at 'reservedConcurrentExecutions' failed \
             to satisfy constraint: Member must have value greater than or equal to 0"
                .to_owned()
        )
    );

    // Deleting the function releases its reservation.
    client
        .delete_function()
        .function_name("a")
        .send()
        .await
        .unwrap();
    let settings = client.get_account_settings().send().await.unwrap();
    assert_eq!(
        settings
            .account_limit()
            .unwrap()
            .unreserved_concurrent_executions(),
        Some(1000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_account_limit_is_shared_by_all_functions() {
    let server = LaminaServer::start_with(&["--concurrency-limit", "2"]);
    let client = server.client();
    deploy(&client, "first").await;
    deploy(&client, "second").await;
    invoke_sleeping(&client, "first", 0).await.unwrap();
    invoke_sleeping(&client, "second", 0).await.unwrap();

    let running: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|name| {
            let client = client.clone();
            tokio::spawn(async move { invoke_sleeping(&client, name, 1500).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    for name in ["first", "second"] {
        let (reason, _) = invoke_sleeping(&client, name, 0).await.unwrap_err();
        assert_eq!(reason, ThrottleReason::ConcurrentInvocationLimitExceeded);
    }
    for invocation in running {
        invocation
            .await
            .unwrap()
            .expect("both long invocations ran");
    }
    invoke_sleeping(&client, "first", 0).await.unwrap();

    // With a limit of 2 nothing can be reserved: all of it must stay unreserved.
    let error = client
        .put_function_concurrency()
        .function_name("first")
        .reserved_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    assert!(
        aws_error(error)
            .2
            .ends_with("below its minimum value of [2].")
    );
}

/// Whether an invoke started a new environment: its REPORT line carries `Init Duration`.
async fn invoke_was_cold(client: &aws_sdk_lambda::Client, name: &str) -> bool {
    use base64::Engine as _;
    let output = client
        .invoke()
        .function_name(name)
        .payload(Blob::new(br#"{"action":"noop"}"#.to_vec()))
        .log_type(aws_sdk_lambda::types::LogType::Tail)
        .send()
        .await
        .expect("invoke succeeds");
    let log = base64::engine::general_purpose::STANDARD
        .decode(output.log_result().expect("a log tail"))
        .unwrap();
    String::from_utf8(log).unwrap().contains("Init Duration")
}

#[tokio::test]
async fn a_frequently_invoked_function_learns_a_short_keep_alive() {
    // The fallback keep-alive is five minutes; the function's own rhythm says otherwise.
    let server = LaminaServer::start_with(&["--idle-timeout", "300"]);
    let client = server.client();
    deploy(&client, "busy").await;
    assert!(invoke_was_cold(&client, "busy").await);
    for _ in 0..12 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !invoke_was_cold(&client, "busy").await,
            "kept warm meanwhile"
        );
    }
    // Idle times all under a second: the learned keep-alive is the 5 s floor, so after
    // 7 s the environment is gone (with the fixed policy it would stay five minutes).
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert!(
        invoke_was_cold(&client, "busy").await,
        "reaped after its learned keep-alive"
    );
}

#[tokio::test]
async fn a_full_host_throttles_cold_starts_with_a_clear_reason() {
    // A reserve larger than any host: no new environment may start.
    let server = LaminaServer::start_with(&["--host-memory-reserve-mb", "100000000"]);
    let client = server.client();
    deploy(&client, "crowded").await;
    let error = client
        .invoke()
        .function_name("crowded")
        .payload(Blob::new(br#"{"action":"noop"}"#.to_vec()))
        .send()
        .await
        .unwrap_err();
    match error.into_service_error() {
        InvokeError::TooManyRequestsException(throttled) => {
            assert_eq!(
                throttled.reason(),
                Some(&ThrottleReason::ConcurrentInvocationLimitExceeded)
            );
            let message = throttled.message().unwrap_or_default();
            assert!(message.starts_with("Rate Exceeded."), "{message}");
            assert!(message.contains("MB of memory available"), "{message}");
        }
        other => panic!("expected a throttle, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_concurrency_initialises_environments_ahead_of_invokes() {
    use aws_sdk_lambda::operation::get_provisioned_concurrency_config::GetProvisionedConcurrencyConfigError;
    use aws_sdk_lambda::types::ProvisionedConcurrencyStatusEnum;
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "warm").await;
    let published = client
        .publish_version()
        .function_name("warm")
        .send()
        .await
        .unwrap();
    assert_eq!(published.version(), Some("1"));

    // $LATEST cannot be provisioned, as on AWS.
    let error = client
        .put_provisioned_concurrency_config()
        .function_name("warm")
        .qualifier("$LATEST")
        .provisioned_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "InvalidParameterValueException".to_owned(),
            400,
            "Provisioned Concurrency Configs cannot be applied to unpublished function versions."
                .to_owned()
        )
    );

    let put = client
        .put_provisioned_concurrency_config()
        .function_name("warm")
        .qualifier("1")
        .provisioned_concurrent_executions(2)
        .send()
        .await
        .unwrap();
    assert_eq!(put.requested_provisioned_concurrent_executions(), Some(2));
    assert_eq!(
        put.status(),
        Some(&ProvisionedConcurrencyStatusEnum::InProgress)
    );
    let mut ready = None;
    for _ in 0..100 {
        let got = client
            .get_provisioned_concurrency_config()
            .function_name("warm")
            .qualifier("1")
            .send()
            .await
            .unwrap();
        if got.status() == Some(&ProvisionedConcurrencyStatusEnum::Ready) {
            ready = Some(got);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ready = ready.expect("provisioned environments become READY");
    assert_eq!(ready.allocated_provisioned_concurrent_executions(), Some(2));
    assert_eq!(ready.available_provisioned_concurrent_executions(), Some(2));

    // The first invoke is served warm by a provisioned environment: no Init Duration, and
    // the environment knows how it was initialised.
    assert!(!invoke_was_cold(&client, "warm:1").await);
    let output = client
        .invoke()
        .function_name("warm")
        .qualifier("1")
        .payload(Blob::new(br#"{"action":"env"}"#.to_vec()))
        .send()
        .await
        .unwrap();
    let env: serde_json::Value =
        serde_json::from_slice(output.payload().unwrap().as_ref()).unwrap();
    assert_eq!(
        env["AWS_LAMBDA_INITIALIZATION_TYPE"],
        "provisioned-concurrency"
    );

    // Reserved concurrency and provisioned concurrency must agree.
    let error = client
        .put_function_concurrency()
        .function_name("warm")
        .reserved_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error).2,
        "ReservedConcurrentExecutions 1 should not be lower than function's total provisioned \
         concurrency [2]."
    );
    client
        .put_function_concurrency()
        .function_name("warm")
        .reserved_concurrent_executions(2)
        .send()
        .await
        .unwrap();
    client
        .create_alias()
        .function_name("warm")
        .name("live")
        .function_version("1")
        .send()
        .await
        .unwrap();
    let error = client
        .put_provisioned_concurrency_config()
        .function_name("warm")
        .qualifier("live")
        .provisioned_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error).2,
        "Requested Provisioned Concurrency should not be greater than the \
         reservedConcurrentExecution for function"
    );

    let listed = client
        .list_provisioned_concurrency_configs()
        .function_name("warm")
        .send()
        .await
        .unwrap();
    let configs = listed.provisioned_concurrency_configs();
    assert_eq!(configs.len(), 1);
    assert!(
        configs[0]
            .function_arn()
            .unwrap()
            .ends_with(":function:warm:1")
    );

    let missing = client
        .get_provisioned_concurrency_config()
        .function_name("warm")
        .qualifier("live")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        missing.into_service_error(),
        GetProvisionedConcurrencyConfigError::ProvisionedConcurrencyConfigNotFoundException(_)
    ));

    client
        .delete_provisioned_concurrency_config()
        .function_name("warm")
        .qualifier("1")
        .send()
        .await
        .unwrap();
    let listed = client
        .list_provisioned_concurrency_configs()
        .function_name("warm")
        .send()
        .await
        .unwrap();
    assert!(listed.provisioned_concurrency_configs().is_empty());

    // A configuration on an alias follows the alias when it moves to another version.
    client
        .put_provisioned_concurrency_config()
        .function_name("warm")
        .qualifier("live")
        .provisioned_concurrent_executions(1)
        .send()
        .await
        .unwrap();
    wait_until_ready(&client, "warm", "live").await;
    client
        .update_function_configuration()
        .function_name("warm")
        .description("v2")
        .send()
        .await
        .unwrap();
    client
        .publish_version()
        .function_name("warm")
        .send()
        .await
        .unwrap();
    client
        .update_alias()
        .function_name("warm")
        .name("live")
        .function_version("2")
        .send()
        .await
        .unwrap();
    wait_until_ready(&client, "warm", "live").await;
    assert!(
        !invoke_was_cold(&client, "warm:live").await,
        "served by the moved environment"
    );
}

async fn wait_until_ready(client: &aws_sdk_lambda::Client, name: &str, qualifier: &str) {
    use aws_sdk_lambda::types::ProvisionedConcurrencyStatusEnum;
    for _ in 0..100 {
        let got = client
            .get_provisioned_concurrency_config()
            .function_name(name)
            .qualifier(qualifier)
            .send()
            .await
            .unwrap();
        if got.status() == Some(&ProvisionedConcurrencyStatusEnum::Ready) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name}:{qualifier} never became READY");
}

/// Publishes the function's current `$LATEST` as a new version (changing its description
/// first, so every call publishes).
async fn publish(client: &aws_sdk_lambda::Client, name: &str, description: &str) -> String {
    client
        .update_function_configuration()
        .function_name(name)
        .description(description)
        .send()
        .await
        .unwrap();
    client
        .publish_version()
        .function_name(name)
        .send()
        .await
        .unwrap()
        .version()
        .unwrap()
        .to_owned()
}

async fn put_provisioned(
    client: &aws_sdk_lambda::Client,
    name: &str,
    qualifier: &str,
    count: i32,
) -> aws_sdk_lambda::operation::put_provisioned_concurrency_config::PutProvisionedConcurrencyConfigOutput
{
    client
        .put_provisioned_concurrency_config()
        .function_name(name)
        .qualifier(qualifier)
        .provisioned_concurrent_executions(count)
        .send()
        .await
        .unwrap()
}

/// Waits for READY and returns the allocated count.
async fn allocated_when_ready(client: &aws_sdk_lambda::Client, name: &str, qualifier: &str) -> i32 {
    wait_until_ready(client, name, qualifier).await;
    client
        .get_provisioned_concurrency_config()
        .function_name(name)
        .qualifier(qualifier)
        .send()
        .await
        .unwrap()
        .allocated_provisioned_concurrent_executions()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_alias_provisions_both_versions_by_weight() {
    use aws_sdk_lambda::types::{AliasRoutingConfiguration, ProvisionedConcurrencyStatusEnum};
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "canary").await;
    assert_eq!(publish(&client, "canary", "v1").await, "1");
    assert_eq!(publish(&client, "canary", "v2").await, "2");
    client
        .create_alias()
        .function_name("canary")
        .name("live")
        .function_version("1")
        .send()
        .await
        .unwrap();

    let put = put_provisioned(&client, "canary", "live", 2).await;
    assert_eq!(
        put.status(),
        Some(&ProvisionedConcurrencyStatusEnum::InProgress)
    );
    // A canary deployment then shifts half the traffic to version 2.
    client
        .update_alias()
        .function_name("canary")
        .name("live")
        .routing_config(
            AliasRoutingConfiguration::builder()
                .additional_version_weights("2", 0.5)
                .build(),
        )
        .send()
        .await
        .unwrap();
    // READY only once both versions have their share: one environment each.
    assert_eq!(allocated_when_ready(&client, "canary", "live").await, 2);
    for version in ["canary:1", "canary:2"] {
        assert!(
            !invoke_was_cold(&client, version).await,
            "{version} has a provisioned environment"
        );
    }
    // While it is weighted, the alias's configuration cannot be put again (AWS's answer).
    let error = client
        .put_provisioned_concurrency_config()
        .function_name("canary")
        .qualifier("live")
        .provisioned_concurrent_executions(3)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "InvalidParameterValueException".to_owned(),
            400,
            "Alias with weights can not be used with Provisioned Concurrency".to_owned()
        )
    );
    // Either version of the alias is taken by its configuration.
    let error = client
        .put_provisioned_concurrency_config()
        .function_name("canary")
        .qualifier("2")
        .provisioned_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "ResourceConflictException".to_owned(),
            409,
            "Version is pointed by a Provisioned Concurrency alias".to_owned()
        )
    );

    // The split follows the weights: with the routing removed, both go to version 1 and
    // version 2's environment is gone.
    client
        .update_alias()
        .function_name("canary")
        .name("live")
        .routing_config(AliasRoutingConfiguration::builder().build())
        .send()
        .await
        .unwrap();
    assert_eq!(allocated_when_ready(&client, "canary", "live").await, 2);
    let mut gone = false;
    for _ in 0..50 {
        if invoke_was_cold(&client, "canary:2").await {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "version 2 lost its provisioned environment");
    // Version 1 now has two: two overlapping invokes both run warm.
    let pair: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { sleep_was_cold(&client, "canary:1", 800).await })
        })
        .collect();
    for invocation in pair {
        assert!(
            !invocation.await.unwrap(),
            "served by a provisioned environment"
        );
    }

    // Four, then weighted again: 0.25 of 4 gives version 2 one environment, version 1
    // three.
    put_provisioned(&client, "canary", "live", 4).await;
    client
        .update_alias()
        .function_name("canary")
        .name("live")
        .routing_config(
            AliasRoutingConfiguration::builder()
                .additional_version_weights("2", 0.25)
                .build(),
        )
        .send()
        .await
        .unwrap();
    // READY needs version 1's three and version 2's one.
    assert_eq!(allocated_when_ready(&client, "canary", "live").await, 4);
}

/// A 409 ResourceConflictException, and its message.
fn conflict<E, R>(error: aws_sdk_lambda::error::SdkError<E, R>) -> String
where
    E: aws_sdk_lambda::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug + HasStatus,
{
    let (exception, status, message) = aws_error(error);
    assert_eq!(
        (exception.as_str(), status),
        ("ResourceConflictException", 409),
        "{message}"
    );
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aliases_cannot_provision_the_same_version() {
    use aws_sdk_lambda::types::AliasRoutingConfiguration;
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "shared").await;
    assert_eq!(publish(&client, "shared", "v1").await, "1");
    assert_eq!(publish(&client, "shared", "v2").await, "2");
    for alias in ["blue", "green"] {
        client
            .create_alias()
            .function_name("shared")
            .name(alias)
            .function_version("1")
            .send()
            .await
            .unwrap();
    }
    // Version 2 at 90%, version 1 at 10%: it shares version 1 with the others.
    client
        .create_alias()
        .function_name("shared")
        .name("canary")
        .function_version("2")
        .routing_config(
            AliasRoutingConfiguration::builder()
                .additional_version_weights("1", 0.1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    put_provisioned(&client, "shared", "blue", 1).await;

    let error = client
        .put_provisioned_concurrency_config()
        .function_name("shared")
        .qualifier("green")
        .provisioned_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        conflict(error),
        "Alias can't be used for Provisioned Concurrency configuration on version 1, already \
         Provisioned by shared:blue. Remove that configuration first."
    );
    // A weighted alias is refused before any overlap is looked at, as AWS refuses it.
    let error = client
        .put_provisioned_concurrency_config()
        .function_name("shared")
        .qualifier("canary")
        .provisioned_concurrent_executions(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error),
        (
            "InvalidParameterValueException".to_owned(),
            400,
            "Alias with weights can not be used with Provisioned Concurrency".to_owned()
        )
    );
    let listed = client
        .list_provisioned_concurrency_configs()
        .function_name("shared")
        .send()
        .await
        .unwrap();
    let arns: Vec<_> = listed
        .provisioned_concurrency_configs()
        .iter()
        .filter_map(|c| c.function_arn())
        .collect();
    assert_eq!(arns.len(), 1, "{arns:?}");
    assert!(arns[0].ends_with(":function:shared:blue"));

    // Once blue's configuration is gone, green may have one.
    client
        .delete_provisioned_concurrency_config()
        .function_name("shared")
        .qualifier("blue")
        .send()
        .await
        .unwrap();
    put_provisioned(&client, "shared", "green", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioned_alias_cannot_move_onto_a_provisioned_version() {
    use aws_sdk_lambda::types::AliasRoutingConfiguration;
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "mover").await;
    for (description, version) in [("v1", "1"), ("v2", "2"), ("v3", "3")] {
        assert_eq!(publish(&client, "mover", description).await, version);
    }
    for (alias, version) in [("live", "1"), ("other", "3"), ("plain", "1")] {
        client
            .create_alias()
            .function_name("mover")
            .name(alias)
            .function_version(version)
            .send()
            .await
            .unwrap();
    }
    put_provisioned(&client, "mover", "live", 1).await;
    put_provisioned(&client, "mover", "2", 1).await;
    put_provisioned(&client, "mover", "other", 1).await;
    let before = client
        .get_alias()
        .function_name("mover")
        .name("live")
        .send()
        .await
        .unwrap();

    // Onto a version with its own configuration, as its main or its additional version.
    let error = client
        .update_alias()
        .function_name("mover")
        .name("live")
        .function_version("2")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        conflict(error),
        "Alias mover:live has a Provisioned Concurrency configuration and can't be routed to \
         version 2, already Provisioned by mover:2. Remove one of the two configurations first."
    );
    let error = client
        .update_alias()
        .function_name("mover")
        .name("live")
        .routing_config(
            AliasRoutingConfiguration::builder()
                .additional_version_weights("2", 0.5)
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(conflict(error).contains("version 2, already Provisioned by mover:2"));
    // Onto a version another provisioned alias routes to.
    let error = client
        .update_alias()
        .function_name("mover")
        .name("live")
        .function_version("3")
        .send()
        .await
        .unwrap_err();
    assert!(conflict(error).contains("version 3, already Provisioned by mover:other"));

    // The alias is unchanged, and still provisioned on version 1.
    let after = client
        .get_alias()
        .function_name("mover")
        .name("live")
        .send()
        .await
        .unwrap();
    assert_eq!(after.function_version(), Some("1"));
    assert_eq!(after.routing_config(), None);
    assert_eq!(after.revision_id(), before.revision_id());
    wait_until_ready(&client, "mover", "live").await;
    assert!(!invoke_was_cold(&client, "mover:live").await);

    // An alias without a configuration moves freely, and so does a provisioned alias
    // onto a version nobody provisions.
    client
        .update_alias()
        .function_name("mover")
        .name("plain")
        .function_version("2")
        .send()
        .await
        .unwrap();
    client
        .delete_provisioned_concurrency_config()
        .function_name("mover")
        .qualifier("2")
        .send()
        .await
        .unwrap();
    let moved = client
        .update_alias()
        .function_name("mover")
        .name("live")
        .function_version("2")
        .send()
        .await
        .unwrap();
    assert_eq!(moved.function_version(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provisioned_concurrency_is_set_aside_from_other_functions() {
    // A small account whose minimum unreserved share is lowered so it can be filled here.
    let server = LaminaServer::start_with(&[
        "--concurrency-limit",
        "3",
        "--minimum-unreserved-concurrency",
        "1",
    ]);
    let client = server.client();
    deploy(&client, "steady").await;
    deploy(&client, "noisy").await;
    assert_eq!(publish(&client, "steady", "v1").await, "1");
    put_provisioned(&client, "steady", "1", 1).await;
    // Counted against the account like a reservation.
    let settings = client.get_account_settings().send().await.unwrap();
    assert_eq!(
        settings
            .account_limit()
            .unwrap()
            .unreserved_concurrent_executions(),
        Some(2)
    );
    assert_eq!(allocated_when_ready(&client, "steady", "1").await, 1);
    // What a reservation may take is what provisioned concurrency left.
    let error = client
        .put_function_concurrency()
        .function_name("noisy")
        .reserved_concurrent_executions(2)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_error(error).2,
        "Specified ReservedConcurrentExecutions for function decreases account's \
         UnreservedConcurrentExecution below its minimum value of [1]."
    );

    // The other function fills the unreserved pool...
    invoke_sleeping(&client, "noisy", 0).await.unwrap();
    let running: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { invoke_sleeping(&client, "noisy", 2000).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (reason, _) = invoke_sleeping(&client, "noisy", 0).await.unwrap_err();
    assert_eq!(reason, ThrottleReason::ConcurrentInvocationLimitExceeded);
    // ...but cannot take the provisioned version's concurrency. Its $LATEST has none set
    // aside and is throttled like any other on-demand invoke.
    assert!(!invoke_was_cold(&client, "steady:1").await);
    let (reason, _) = invoke_sleeping(&client, "steady", 0).await.unwrap_err();
    assert_eq!(reason, ThrottleReason::ConcurrentInvocationLimitExceeded);
    for invocation in running {
        invocation.await.unwrap().expect("the long invocations ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_provisioned_changes_end_at_the_last_one() {
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "quick").await;
    assert_eq!(publish(&client, "quick", "v1").await, "1");
    for counts in [[1, 3], [2, 1], [1, 2]] {
        for count in counts {
            put_provisioned(&client, "quick", "1", count).await;
        }
        let last = counts[1];
        let got = client
            .get_provisioned_concurrency_config()
            .function_name("quick")
            .qualifier("1")
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.requested_provisioned_concurrent_executions(),
            Some(last)
        );
        assert_eq!(allocated_when_ready(&client, "quick", "1").await, last);
    }
    // The surplus environments are gone, not only left uncounted: with 2 wanted, a third
    // overlapping invoke starts cold.
    let invokes: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { sleep_was_cold(&client, "quick:1", 1000).await })
        })
        .collect();
    let mut cold = 0;
    for invoke in invokes {
        cold += usize::from(invoke.await.unwrap());
    }
    assert_eq!(cold, 1, "two provisioned environments, no more");
}

/// Whether an invocation that sleeps `ms` started a new environment.
async fn sleep_was_cold(client: &aws_sdk_lambda::Client, name: &str, ms: u64) -> bool {
    use base64::Engine as _;
    let event = json!({"action": "sleep", "ms": ms});
    let output = client
        .invoke()
        .function_name(name)
        .payload(Blob::new(serde_json::to_vec(&event).unwrap()))
        .log_type(aws_sdk_lambda::types::LogType::Tail)
        .send()
        .await
        .expect("invoke succeeds");
    assert_eq!(output.function_error(), None);
    let log = base64::engine::general_purpose::STANDARD
        .decode(output.log_result().expect("a log tail"))
        .unwrap();
    String::from_utf8(log).unwrap().contains("Init Duration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lowered_reservation_does_not_overshoot_the_account_while_it_drains() {
    let server = LaminaServer::start_with(&[
        "--concurrency-limit",
        "3",
        "--minimum-unreserved-concurrency",
        "1",
    ]);
    let client = server.client();
    deploy(&client, "big").await;
    deploy(&client, "other").await;
    invoke_sleeping(&client, "other", 0).await.unwrap();
    client
        .put_function_concurrency()
        .function_name("big")
        .reserved_concurrent_executions(2)
        .send()
        .await
        .unwrap();
    let running: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { invoke_sleeping(&client, "big", 2500).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Lowered while both run: the unreserved pool grows to 2 at once, but only one slot
    // of the account is free until they finish.
    client
        .put_function_concurrency()
        .function_name("big")
        .reserved_concurrent_executions(1)
        .send()
        .await
        .unwrap();
    let one = tokio::spawn({
        let client = client.clone();
        async move { invoke_sleeping(&client, "other", 1500).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (reason, _) = invoke_sleeping(&client, "other", 0).await.unwrap_err();
    assert_eq!(reason, ThrottleReason::ConcurrentInvocationLimitExceeded);
    let (reason, _) = invoke_sleeping(&client, "big", 0).await.unwrap_err();
    assert_eq!(
        reason,
        ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded
    );
    one.await.unwrap().expect("one invocation fit");
    for invocation in running {
        invocation.await.unwrap().expect("the long invocations ran");
    }
    // Drained: the new sizes hold.
    invoke_sleeping(&client, "other", 0).await.unwrap();
    invoke_sleeping(&client, "big", 0).await.unwrap();
}
