//! Published versions and aliases end to end, driven by `aws-sdk-lambda`: publishing
//! snapshots, invoking by qualifier, alias routing (blue/green and a weighted canary), and
//! AWS's errors for each.

mod support;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Environment, FunctionCode, Runtime};
use serde_json::{Value, json};
use support::*;

const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function";

/// Creates a function on the test function with `STAGE` set, optionally publishing it.
async fn deploy(client: &aws_sdk_lambda::Client, name: &str, stage: &str, publish: bool) {
    client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .environment(Environment::builder().variables("STAGE", stage).build())
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(test_function_zip()))
                .build(),
        )
        .publish(publish)
        .send()
        .await
        .expect("create_function succeeds");
}

async fn set_stage(client: &aws_sdk_lambda::Client, name: &str, stage: &str) {
    client
        .update_function_configuration()
        .function_name(name)
        .environment(Environment::builder().variables("STAGE", stage).build())
        .send()
        .await
        .expect("update_function_configuration succeeds");
}

async fn publish(client: &aws_sdk_lambda::Client, name: &str) -> String {
    client
        .publish_version()
        .function_name(name)
        .send()
        .await
        .expect("publish_version succeeds")
        .version()
        .unwrap()
        .to_owned()
}

/// Invokes `target` (a name, possibly `name:qualifier`) with `qualifier`; returns the
/// executed version and the payload.
async fn invoke(
    client: &aws_sdk_lambda::Client,
    target: &str,
    qualifier: Option<&str>,
    event: Value,
) -> (String, Value) {
    let output = client
        .invoke()
        .function_name(target)
        .set_qualifier(qualifier.map(str::to_owned))
        .payload(Blob::new(serde_json::to_vec(&event).unwrap()))
        .send()
        .await
        .expect("invoke succeeds");
    assert_eq!(output.function_error(), None);
    let payload = output.payload().map(|p| p.as_ref().to_vec()).unwrap();
    (
        output.executed_version().unwrap_or_default().to_owned(),
        serde_json::from_slice(&payload).unwrap(),
    )
}

/// The `STAGE` the environment that answered was configured with, and the version.
async fn stage_of(
    client: &aws_sdk_lambda::Client,
    target: &str,
    qualifier: Option<&str>,
) -> (String, String) {
    let (version, env) = invoke(client, target, qualifier, json!({"action": "env"})).await;
    assert_eq!(
        env["AWS_LAMBDA_FUNCTION_VERSION"], version,
        "the environment knows its version"
    );
    (
        version,
        env["STAGE"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn published_versions_are_immutable_snapshots() {
    let server = LaminaServer::start();
    let client = server.client();

    // Publish on create: version 1, answered under the unqualified ARN as AWS does.
    let created = client
        .create_function()
        .function_name("snap")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .environment(Environment::builder().variables("STAGE", "one").build())
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(test_function_zip()))
                .build(),
        )
        .publish(true)
        .send()
        .await
        .unwrap();
    assert_eq!(created.version(), Some("1"));
    assert_eq!(created.function_arn(), Some(format!("{ARN}:snap").as_str()));
    let latest = client
        .get_function_configuration()
        .function_name("snap")
        .send()
        .await
        .unwrap();
    assert_eq!(latest.version(), Some("$LATEST"));

    // An unchanged $LATEST republished is the same version, whatever the description.
    let again = client
        .publish_version()
        .function_name("snap")
        .description("ignored")
        .send()
        .await
        .unwrap();
    assert_eq!(again.version(), Some("1"));
    assert_eq!(again.description(), Some(""));

    // Preconditions.
    let (code, status, message) = aws_error(
        client
            .publish_version()
            .function_name("snap")
            .code_sha256("not-the-sha")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("InvalidParameterValueException", 400)
    );
    assert_eq!(
        message,
        format!(
            "CodeSHA256 (not-the-sha) is different from current CodeSHA256 in $LATEST ({}). \
             Please try again with the CodeSHA256 in $LATEST.",
            latest.code_sha256().unwrap()
        )
    );
    let (code, status, message) = aws_error(
        client
            .publish_version()
            .function_name("snap")
            .revision_id("stale")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("PreconditionFailedException", 412)
    );
    assert!(message.starts_with("The Revision Id provided does not match"));

    // A change, then a publish with the right preconditions and a description.
    set_stage(&client, "snap", "two").await;
    let latest = client
        .get_function_configuration()
        .function_name("snap")
        .send()
        .await
        .unwrap();
    let second = client
        .publish_version()
        .function_name("snap")
        .code_sha256(latest.code_sha256().unwrap())
        .revision_id(latest.revision_id().unwrap())
        .description("second")
        .send()
        .await
        .unwrap();
    assert_eq!(second.version(), Some("2"));
    assert_eq!(second.description(), Some("second"));
    assert_eq!(
        second.function_arn(),
        Some(format!("{ARN}:snap:2").as_str())
    );
    assert_ne!(second.revision_id(), latest.revision_id());
    // Publishing moved $LATEST's revision: the old one no longer updates it.
    let (code, status, _) = aws_error(
        client
            .update_function_configuration()
            .function_name("snap")
            .revision_id(latest.revision_id().unwrap())
            .memory_size(256)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("PreconditionFailedException", 412)
    );

    let listed = client
        .list_versions_by_function()
        .function_name("snap")
        .send()
        .await
        .unwrap();
    let versions: Vec<(&str, &str)> = listed
        .versions()
        .iter()
        .map(|v| (v.version().unwrap(), v.function_arn().unwrap()))
        .collect();
    assert_eq!(
        versions,
        [
            ("$LATEST", format!("{ARN}:snap:$LATEST").as_str()),
            ("1", format!("{ARN}:snap:1").as_str()),
            ("2", format!("{ARN}:snap:2").as_str()),
        ]
    );
    let page = client
        .list_versions_by_function()
        .function_name("snap")
        .max_items(2)
        .send()
        .await
        .unwrap();
    assert_eq!(page.versions().len(), 2);
    let rest = client
        .list_versions_by_function()
        .function_name("snap")
        .marker(page.next_marker().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.versions()[0].version(), Some("2"));
    assert_eq!(rest.next_marker(), None);

    // Each qualifier runs its own snapshot, and says which ran.
    assert_eq!(
        stage_of(&client, "snap:1", None).await,
        ("1".into(), "one".into())
    );
    assert_eq!(
        stage_of(&client, "snap", Some("2")).await,
        ("2".into(), "two".into())
    );
    assert_eq!(
        stage_of(&client, &format!("{ARN}:snap:$LATEST"), None).await,
        ("$LATEST".into(), "two".into())
    );
    let (_, before) = invoke(&client, "snap:1", None, json!({"action": "count"})).await;

    // Changing $LATEST leaves published versions (and their warm environments) alone.
    set_stage(&client, "snap", "three").await;
    assert_eq!(
        stage_of(&client, "snap", None).await,
        ("$LATEST".into(), "three".into())
    );
    let (_, after) = invoke(&client, "snap:1", None, json!({"action": "count"})).await;
    assert_eq!(
        after["count"].as_u64(),
        before["count"].as_u64().map(|c| c + 1),
        "version 1 kept its warm environment across the $LATEST update"
    );
    assert_eq!(
        stage_of(&client, "snap:1", None).await,
        ("1".into(), "one".into())
    );

    // Published configuration is immutable.
    for target in ["snap:1", &format!("{ARN}:snap:2")] {
        let (code, status, message) = aws_error(
            client
                .update_function_configuration()
                .function_name(target)
                .memory_size(256)
                .send()
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code.as_str(), status, message.as_str()),
            (
                "InvalidParameterValueException",
                400,
                "Current operation does not support versions other than $LATEST. Please set \
                 the version to $LATEST or do not set a version in your request."
            )
        );
    }

    // Publish with new code: version 3 carries it, version 1 still has the old zip.
    let updated = client
        .update_function_code()
        .function_name("snap")
        .zip_file(Blob::new(bootstrap_zip()))
        .publish(true)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.version(), Some("3"));
    assert_eq!(
        updated.code_sha256(),
        Some(sha256_base64(&bootstrap_zip()).as_str())
    );
    let first = client
        .get_function()
        .function_name("snap")
        .qualifier("1")
        .send()
        .await
        .unwrap();
    let configuration = first.configuration().unwrap();
    assert_eq!(configuration.version(), Some("1"));
    assert_eq!(
        configuration.function_arn(),
        Some(format!("{ARN}:snap:1").as_str())
    );
    assert_eq!(
        configuration.code_sha256(),
        Some(sha256_base64(&test_function_zip()).as_str())
    );

    // Deleting one version; $LATEST only with the function; a missing version is no error.
    let (code, status, message) = aws_error(
        client
            .delete_function()
            .function_name("snap")
            .qualifier("$LATEST")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "InvalidParameterValueException",
            400,
            "$LATEST version cannot be deleted without deleting the function."
        )
    );
    for _ in 0..2 {
        client
            .delete_function()
            .function_name("snap:2")
            .send()
            .await
            .unwrap();
    }
    let (code, status, message) = aws_error(
        client
            .invoke()
            .function_name("snap:2")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:snap:2").as_str()
        )
    );
    let remaining: Vec<String> = client
        .list_versions_by_function()
        .function_name("snap")
        .send()
        .await
        .unwrap()
        .versions()
        .iter()
        .map(|v| v.version().unwrap().to_owned())
        .collect();
    assert_eq!(remaining, ["$LATEST", "1", "3"]);
    // Numbers are not reused.
    set_stage(&client, "snap", "four").await;
    assert_eq!(publish(&client, "snap").await, "4");

    // Deleting the function takes its versions along.
    client
        .delete_function()
        .function_name("snap")
        .send()
        .await
        .unwrap();
    let (code, status, message) = aws_error(
        client
            .delete_function()
            .function_name("snap")
            .qualifier("1")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:snap").as_str()
        )
    );
    let (code, _, _) = aws_error(
        client
            .list_versions_by_function()
            .function_name("snap")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "ResourceNotFoundException");
}

#[tokio::test]
async fn versions_and_aliases_survive_kill_9() {
    let mut server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "durable", "one", true).await;
    set_stage(&client, "durable", "two").await;
    assert_eq!(publish(&client, "durable").await, "2");
    client
        .create_alias()
        .function_name("durable")
        .name("live")
        .function_version("1")
        .routing_config(
            aws_sdk_lambda::types::AliasRoutingConfiguration::builder()
                .additional_version_weights("2", 1.0)
                .build(),
        )
        .send()
        .await
        .unwrap();
    server.kill_hard();
    let dir = server.take_data_dir();
    let server = LaminaServer::start_in(dir.path());
    let client = server.client();
    assert_eq!(
        stage_of(&client, "durable:1", None).await,
        ("1".into(), "one".into())
    );
    // Weight 1.0: every invocation of the alias goes to the additional version.
    assert_eq!(
        stage_of(&client, "durable:live", None).await,
        ("2".into(), "two".into())
    );
    set_stage(&client, "durable", "three").await;
    assert_eq!(publish(&client, "durable").await, "3");
}

#[tokio::test]
async fn aliases_switch_blue_to_green_and_split_a_canary_by_weight() {
    let server = LaminaServer::start();
    let client = server.client();
    deploy(&client, "app", "blue", true).await;
    set_stage(&client, "app", "green").await;
    assert_eq!(publish(&client, "app").await, "2");

    let created = client
        .create_alias()
        .function_name("app")
        .name("live")
        .function_version("1")
        .description("production")
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.alias_arn(),
        Some(format!("{ARN}:app:live").as_str())
    );
    assert_eq!(created.function_version(), Some("1"));
    assert_eq!(created.routing_config(), None);

    // The alias resolves wherever a function name is accepted.
    for (target, qualifier) in [
        ("app:live", None),
        ("app", Some("live")),
        (format!("{ARN}:app:live").as_str(), None),
        ("000000000000:function:app:live", None),
    ] {
        assert_eq!(
            stage_of(&client, target, qualifier).await,
            ("1".into(), "blue".into()),
            "{target}"
        );
    }
    let (_, context) = invoke(&client, "app:live", None, json!({"action": "context"})).await;
    assert_eq!(
        context["invoked_function_arn"],
        format!("{ARN}:app:live"),
        "the runtime sees the alias ARN it was invoked by"
    );
    let got = client
        .get_function()
        .function_name("app:live")
        .send()
        .await
        .unwrap();
    let configuration = got.configuration().unwrap();
    assert_eq!(configuration.version(), Some("1"));
    assert_eq!(
        configuration.function_arn(),
        Some(format!("{ARN}:app:live").as_str())
    );
    let dry_run = client
        .invoke()
        .function_name("app:live")
        .invocation_type(aws_sdk_lambda::types::InvocationType::DryRun)
        .send()
        .await
        .unwrap();
    assert_eq!(dry_run.status_code(), 204);

    // Blue/green: one update moves every following invocation.
    let (code, status, _) = aws_error(
        client
            .update_alias()
            .function_name("app")
            .name("live")
            .function_version("2")
            .revision_id("stale")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("PreconditionFailedException", 412)
    );
    let switched = client
        .update_alias()
        .function_name("app")
        .name("live")
        .function_version("2")
        .revision_id(created.revision_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(switched.function_version(), Some("2"));
    assert_eq!(switched.description(), Some("production"));
    assert_ne!(switched.revision_id(), created.revision_id());
    for _ in 0..5 {
        assert_eq!(
            stage_of(&client, "app:live", None).await,
            ("2".into(), "green".into())
        );
    }

    // A 90/10 canary: version 1 primary, 10 % to version 2.
    let canary = client
        .update_alias()
        .function_name("app")
        .name("live")
        .function_version("1")
        .routing_config(
            aws_sdk_lambda::types::AliasRoutingConfiguration::builder()
                .additional_version_weights("2", 0.1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        canary
            .routing_config()
            .and_then(|r| r.additional_version_weights())
            .and_then(|w| w.get("2"))
            .copied(),
        Some(0.1)
    );
    const INVOKES: usize = 2000;
    let mut to_second = 0usize;
    for _ in 0..INVOKES {
        let output = client
            .invoke()
            .function_name("app:live")
            .payload(Blob::new(br#"{"action":"noop"}"#.to_vec()))
            .send()
            .await
            .unwrap();
        match output.executed_version() {
            Some("2") => to_second += 1,
            Some("1") => {}
            other => panic!("executed {other:?}"),
        }
    }
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; this is ±4 deviations.
    assert!(
        (146..=254).contains(&to_second),
        "{to_second} of {INVOKES} invocations went to version 2"
    );

    // AWS's refusals.
    let weights = |pairs: &[(&str, f64)]| {
        let mut builder = aws_sdk_lambda::types::AliasRoutingConfiguration::builder();
        for (version, weight) in pairs {
            builder = builder.additional_version_weights(*version, *weight);
        }
        builder.build()
    };
    let attempts = [
        (
            "1",
            Some(weights(&[("2", 0.1), ("3", 0.1)])),
            "InvalidParameterValueException",
            400,
            "Number of items in AdditionalVersionWeights cannot be greater than 1".to_owned(),
        ),
        (
            "$LATEST",
            Some(weights(&[("1", 0.5)])),
            "InvalidParameterValueException",
            400,
            "$LATEST is not supported for an alias pointing to more than 1 version".to_owned(),
        ),
        (
            "1",
            Some(weights(&[("1", 0.5)])),
            "InvalidParameterValueException",
            400,
            "Invalid function version 1. Function version 1 is already included in routing \
             configuration."
                .to_owned(),
        ),
        (
            "9",
            None,
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:app:9"),
        ),
        (
            "1",
            Some(weights(&[("9", 0.5)])),
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:app:9"),
        ),
        (
            "1",
            Some(weights(&[("2", 1.5)])),
            "ValidationException",
            400,
            "1 validation error detected: Value '{2=1.5}' at \
             'routingConfig.additionalVersionWeights' failed to satisfy constraint: Map value \
             must satisfy constraint: [Member must have value less than or equal to 1.0, Member \
             must have value greater than or equal to 0.0, Member must not be null]"
                .to_owned(),
        ),
        (
            "1",
            None,
            "ResourceConflictException",
            409,
            format!("Alias already exists: {ARN}:app:live"),
        ),
    ];
    for (version, routing, exception, expected_status, expected_message) in attempts {
        let (code, status, message) = aws_error(
            client
                .create_alias()
                .function_name("app")
                .name("live")
                .function_version(version)
                .set_routing_config(routing)
                .send()
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code.as_str(), status, message.as_str()),
            (exception, expected_status, expected_message.as_str())
        );
    }
    let (code, status, message) = aws_error(
        client
            .create_alias()
            .function_name("app")
            .name("2024")
            .function_version("1")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ValidationException", 400));
    assert!(
        message.ends_with("(?!^[0-9]+$)([a-zA-Z0-9-_]+)"),
        "{message}"
    );
    let (code, status, message) = aws_error(
        client
            .get_alias()
            .function_name("app")
            .name("missing")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("Cannot find alias arn: {ARN}:app:missing").as_str()
        )
    );
    let (code, status, message) = aws_error(
        client
            .update_alias()
            .function_name("app")
            .name("missing")
            .function_version("1")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("Alias not found: {ARN}:app:missing").as_str()
        )
    );

    // A version an alias routes to cannot be deleted.
    let (code, status, message) = aws_error(
        client
            .delete_function()
            .function_name("app")
            .qualifier("2")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceConflictException",
            409,
            "Unable to delete version because the following aliases reference it: [live]"
        )
    );

    // An alias on $LATEST follows it.
    client
        .create_alias()
        .function_name("app")
        .name("edge")
        .function_version("$LATEST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        stage_of(&client, "app:edge", None).await,
        ("$LATEST".into(), "green".into())
    );
    set_stage(&client, "app", "purple").await;
    assert_eq!(
        stage_of(&client, "app:edge", None).await,
        ("$LATEST".into(), "purple".into())
    );

    let listed = client
        .list_aliases()
        .function_name("app")
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = listed.aliases().iter().map(|a| a.name().unwrap()).collect();
    assert_eq!(names, ["edge", "live"]);
    let on_one = client
        .list_aliases()
        .function_name("app")
        .function_version("1")
        .send()
        .await
        .unwrap();
    assert_eq!(on_one.aliases().len(), 1);
    let page = client
        .list_aliases()
        .function_name("app")
        .max_items(1)
        .send()
        .await
        .unwrap();
    assert_eq!(page.aliases()[0].name(), Some("edge"));
    let rest = client
        .list_aliases()
        .function_name("app")
        .marker(page.next_marker().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.aliases()[0].name(), Some("live"));

    // Deleting: twice is fine; then the alias no longer resolves.
    for _ in 0..2 {
        client
            .delete_alias()
            .function_name("app")
            .name("live")
            .send()
            .await
            .unwrap();
    }
    let (code, status, message) = aws_error(
        client
            .invoke()
            .function_name("app:live")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:app:live").as_str()
        )
    );
    client
        .delete_function()
        .function_name("app")
        .qualifier("2")
        .send()
        .await
        .unwrap();

    // Deleting the function deletes its aliases.
    client
        .delete_function()
        .function_name("app")
        .send()
        .await
        .unwrap();
    deploy(&client, "app", "again", true).await;
    let (code, _, _) = aws_error(
        client
            .get_alias()
            .function_name("app")
            .name("edge")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "ResourceNotFoundException");
    let (code, status, message) = aws_error(
        client
            .create_alias()
            .function_name("missing")
            .name("live")
            .function_version("1")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:missing:1").as_str()
        )
    );
}
