//! The function lifecycle of the control plane, driven by the real AWS SDK for Rust
//! against a real `lamina serve`.

mod support;

use std::collections::HashMap;

use aws_sdk_lambda::client::Waiters as _;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    Architecture, Environment, EphemeralStorage, FunctionCode, Runtime, TracingConfig, TracingMode,
};
use support::*;

fn zip_code(zip: Vec<u8>) -> FunctionCode {
    FunctionCode::builder().zip_file(Blob::new(zip)).build()
}

#[tokio::test]
async fn create_returns_the_complete_configuration_aws_returns() {
    let server = LaminaServer::start();
    let client = server.client();
    let zip = bootstrap_zip();
    let created = client
        .create_function()
        .function_name("complete")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(zip_code(zip.clone()))
        .send()
        .await
        .unwrap();

    assert_eq!(created.function_name(), Some("complete"));
    assert_eq!(
        created.function_arn(),
        Some("arn:aws:lambda:us-east-1:000000000000:function:complete")
    );
    assert_eq!(created.code_sha256(), Some(sha256_base64(&zip).as_str()));
    assert_eq!(created.code_size(), zip.len() as i64);
    assert_eq!(created.version(), Some("$LATEST"));
    assert_eq!(created.memory_size(), Some(128));
    assert_eq!(created.timeout(), Some(3));
    assert_eq!(created.ephemeral_storage().unwrap().size(), 512);
    assert_eq!(created.architectures(), &[Architecture::X8664]);
    assert_eq!(
        created.package_type(),
        Some(&aws_sdk_lambda::types::PackageType::Zip)
    );
    let logging = created.logging_config().unwrap();
    assert_eq!(
        logging.log_format(),
        Some(&aws_sdk_lambda::types::LogFormat::Text)
    );
    assert_eq!(logging.log_group(), Some("/aws/lambda/complete"));
    assert_eq!(
        created.tracing_config().unwrap().mode(),
        Some(&TracingMode::PassThrough)
    );
    assert_eq!(created.state(), Some(&aws_sdk_lambda::types::State::Active));
    assert_eq!(
        created.last_update_status(),
        Some(&aws_sdk_lambda::types::LastUpdateStatus::Successful)
    );
    assert!(created.revision_id().is_some_and(|r| r.len() == 36));
    let last_modified = created.last_modified().unwrap();
    assert_eq!(last_modified.len(), "2024-05-01T12:34:56.789+0000".len());
    assert!(last_modified.ends_with("+0000"), "{last_modified}");

    // The SDK's own waiters poll GetFunction / GetFunctionConfiguration.
    client
        .wait_until_function_active_v2()
        .function_name("complete")
        .wait(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    client
        .wait_until_function_updated_v2()
        .function_name("complete")
        .wait(std::time::Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn get_function_serves_the_stored_zip_and_accepts_every_name_form() {
    let server = LaminaServer::start();
    let client = server.client();
    let zip = bootstrap_zip();
    create_function(&client, "named").await;

    let arn = "arn:aws:lambda:us-east-1:000000000000:function:named";
    // AWS echoes the qualifier the caller named the function with.
    let latest_arn = format!("{arn}:$LATEST");
    for (name, expected) in [
        ("named", arn),
        ("named:$LATEST", latest_arn.as_str()),
        ("000000000000:function:named", arn),
        (arn, arn),
        (latest_arn.as_str(), latest_arn.as_str()),
    ] {
        let got = client
            .get_function()
            .function_name(name)
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.configuration().unwrap().function_arn(),
            Some(expected),
            "{name}"
        );
    }

    let got = client
        .get_function()
        .function_name("named")
        .send()
        .await
        .unwrap();
    let location = got.code().unwrap().location().unwrap();
    assert_eq!(got.code().unwrap().repository_type(), Some("S3"));
    let downloaded = http_get(location);
    assert_eq!(downloaded, zip, "Code.Location serves the uploaded zip");

    let config = client
        .get_function_configuration()
        .function_name("named")
        .qualifier("$LATEST")
        .send()
        .await
        .unwrap();
    assert_eq!(config.function_name(), Some("named"));

    // A qualifier that does not exist, and one that contradicts the name.
    let (code, status, message) = aws_error(
        client
            .get_function()
            .function_name("named")
            .qualifier("7")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
    assert_eq!(message, format!("Function not found: {arn}:7"));
    let (code, status, _) = aws_error(
        client
            .get_function()
            .function_name("named:1")
            .qualifier("2")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("InvalidParameterValueException", 400)
    );
}

#[tokio::test]
async fn updates_change_the_revision_and_respect_preconditions() {
    let server = LaminaServer::start();
    let client = server.client();
    let created = create_function(&client, "updated").await;
    let first_revision = created.revision_id().unwrap().to_owned();

    let updated = client
        .update_function_configuration()
        .function_name("updated")
        .memory_size(1024)
        .timeout(30)
        .description("now bigger")
        .environment(
            Environment::builder()
                .variables("GREETING", "hello")
                .build(),
        )
        .ephemeral_storage(EphemeralStorage::builder().size(2048).build().unwrap())
        .tracing_config(TracingConfig::builder().mode(TracingMode::Active).build())
        .revision_id(&first_revision)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.memory_size(), Some(1024));
    assert_eq!(updated.timeout(), Some(30));
    assert_eq!(updated.description(), Some("now bigger"));
    assert_eq!(
        updated.handler(),
        Some("bootstrap"),
        "untouched members stay"
    );
    assert_eq!(
        updated
            .environment()
            .unwrap()
            .variables()
            .unwrap()
            .get("GREETING"),
        Some(&"hello".to_owned())
    );
    assert_eq!(updated.ephemeral_storage().unwrap().size(), 2048);
    let second_revision = updated.revision_id().unwrap().to_owned();
    assert_ne!(second_revision, first_revision);

    // The stale revision is refused as AWS refuses it.
    let (code, status, message) = aws_error(
        client
            .update_function_configuration()
            .function_name("updated")
            .memory_size(256)
            .revision_id(&first_revision)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("PreconditionFailedException", 412)
    );
    assert_eq!(
        message,
        "The Revision Id provided does not match the latest Revision Id. Call the \
         GetFunction/GetAlias API to retrieve the latest Revision Id"
    );

    let new_zip = zip_of(&[("bootstrap", b"#!/bin/sh\necho v2\n", 0o755)]);
    let code_updated = client
        .update_function_code()
        .function_name("updated")
        .zip_file(Blob::new(new_zip.clone()))
        .revision_id(&second_revision)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_updated.code_sha256(),
        Some(sha256_base64(&new_zip).as_str())
    );
    assert_eq!(
        code_updated.memory_size(),
        Some(1024),
        "code update keeps config"
    );
    assert_ne!(code_updated.revision_id(), Some(second_revision.as_str()));

    let (code, status, _) = aws_error(
        client
            .update_function_code()
            .function_name("updated")
            .zip_file(Blob::new(new_zip))
            .revision_id(&second_revision)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("PreconditionFailedException", 412)
    );
}

#[tokio::test]
async fn duplicate_missing_and_deleted_functions_answer_as_aws() {
    let server = LaminaServer::start();
    let client = server.client();
    create_function(&client, "dup").await;

    let (code, status, message) = aws_error(
        client
            .create_function()
            .function_name("dup")
            .runtime(Runtime::Providedal2023)
            .role(ROLE)
            .handler("bootstrap")
            .code(zip_code(bootstrap_zip()))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ResourceConflictException", 409));
    assert_eq!(message, "Function already exist: dup");

    client
        .delete_function()
        .function_name("dup")
        .send()
        .await
        .unwrap();
    for result in [
        client
            .delete_function()
            .function_name("dup")
            .send()
            .await
            .map(|_| ())
            .map_err(aws_error),
        client
            .get_function()
            .function_name("dup")
            .send()
            .await
            .map(|_| ())
            .map_err(aws_error),
    ] {
        let (code, status, message) = result.unwrap_err();
        assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
        assert_eq!(
            message,
            "Function not found: arn:aws:lambda:us-east-1:000000000000:function:dup"
        );
    }
    let (code, status, _) = aws_error(
        client
            .update_function_configuration()
            .function_name("dup")
            .memory_size(256)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
}

#[tokio::test]
async fn out_of_range_values_answer_validation_exception_word_for_word() {
    let server = LaminaServer::start();
    let client = server.client();
    let base = || {
        client
            .create_function()
            .function_name("valid-name")
            .runtime(Runtime::Providedal2023)
            .role(ROLE)
            .handler("bootstrap")
            .code(zip_code(bootstrap_zip()))
    };
    let cases: Vec<(
        aws_sdk_lambda::operation::create_function::builders::CreateFunctionFluentBuilder,
        &str,
    )> = vec![
        (
            base().memory_size(20000),
            "1 validation error detected: Value '20000' at 'memorySize' failed to satisfy \
             constraint: Member must have value less than or equal to 10240",
        ),
        (
            base().memory_size(64),
            "1 validation error detected: Value '64' at 'memorySize' failed to satisfy \
             constraint: Member must have value greater than or equal to 128",
        ),
        (
            base().timeout(901),
            "1 validation error detected: Value '901' at 'timeout' failed to satisfy \
             constraint: Member must have value less than or equal to 900",
        ),
        (
            base().ephemeral_storage(EphemeralStorage::builder().size(10241).build().unwrap()),
            "1 validation error detected: Value '10241' at 'ephemeralStorage.size' failed to \
             satisfy constraint: Member must have value less than or equal to 10240",
        ),
        (
            base().function_name("has space"),
            "1 validation error detected: Value 'has space' at 'functionName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: \
             (arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\\d{1}:)?\
             (\\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?",
        ),
        (
            base().handler("has space"),
            "1 validation error detected: Value 'has space' at 'handler' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: [^\\s]+",
        ),
        (
            base().role("not-a-role"),
            "1 validation error detected: Value 'not-a-role' at 'role' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: \
             arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+",
        ),
        (
            base().memory_size(20000).timeout(1000),
            // Members are checked in the service model's member order.
            "2 validation errors detected: Value '1000' at 'timeout' failed to satisfy \
             constraint: Member must have value less than or equal to 900; Value '20000' at \
             'memorySize' failed to satisfy constraint: Member must have value less than or \
             equal to 10240",
        ),
    ];
    for (request, expected) in cases {
        let (code, status, message) = aws_error(request.send().await.unwrap_err());
        assert_eq!(
            (code.as_str(), status),
            ("ValidationException", 400),
            "{expected}"
        );
        assert_eq!(message, expected);
    }

    let long_name = "n".repeat(65);
    let (code, _, message) = aws_error(base().function_name(&long_name).send().await.unwrap_err());
    assert_eq!(code, "ValidationException");
    assert!(
        message.ends_with("Member must have length less than or equal to 64"),
        "{message}"
    );

    // Nothing was created by any of the refused requests.
    let listed = client.list_functions().send().await.unwrap();
    assert!(listed.functions().is_empty());
}

#[tokio::test]
async fn semantic_errors_answer_invalid_parameter_value() {
    let server = LaminaServer::start();
    let client = server.client();
    let base = || {
        client
            .create_function()
            .function_name("semantic")
            .role(ROLE)
            .handler("bootstrap")
            .code(zip_code(bootstrap_zip()))
    };

    let (code, status, message) = aws_error(
        base()
            .runtime(Runtime::from("cobol85"))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("InvalidParameterValueException", 400)
    );
    assert!(message.starts_with("Value cobol85 at 'runtime' failed to satisfy constraint: Member must satisfy enum value set: [nodejs, "), "{message}");
    assert!(message.contains("python3.12") && message.ends_with("] or be a valid ARN"));

    let (code, _, message) = aws_error(base().runtime(Runtime::Python27).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterValueException");
    assert!(message.starts_with("The runtime parameter of python2.7 is no longer supported"));

    let big = "x".repeat(4100);
    let (code, _, message) = aws_error(
        base()
            .runtime(Runtime::Providedal2023)
            .environment(Environment::builder().variables("BIG", big).build())
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "InvalidParameterValueException");
    assert!(message.starts_with("Lambda was unable to configure your environment variables because the environment variables you have provided exceeded the 4KB limit. String measured: {\"BIG\":\"xxx"));

    let (code, _, message) = aws_error(
        base()
            .runtime(Runtime::Providedal2023)
            .environment(
                Environment::builder()
                    .variables("AWS_REGION", "eu-west-1")
                    .build(),
            )
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "InvalidParameterValueException");
    assert!(message.ends_with("Reserved keys used in this request: AWS_REGION"));

    let (code, status, message) = aws_error(
        client
            .create_function()
            .function_name("semantic")
            .role(ROLE)
            .handler("app.handler")
            .code(zip_code(bootstrap_zip()))
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
        "Runtime and Handler are mandatory parameters for functions created with deployment packages."
    );
}

#[tokio::test]
async fn list_functions_pages_with_markers() {
    let server = LaminaServer::start();
    let client = server.client();
    for i in 0..5 {
        create_function(&client, &format!("page-{i}")).await;
    }
    let first = client.list_functions().max_items(2).send().await.unwrap();
    assert_eq!(first.functions().len(), 2);
    let marker = first.next_marker().expect("more pages").to_owned();
    let second = client
        .list_functions()
        .max_items(2)
        .marker(marker)
        .send()
        .await
        .unwrap();
    assert_eq!(second.functions()[0].function_name(), Some("page-2"));

    // The SDK's paginator walks every page.
    let names: Vec<String> = client
        .list_functions()
        .max_items(2)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.function_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["page-0", "page-1", "page-2", "page-3", "page-4"]);

    let all = client
        .list_functions()
        .function_version(aws_sdk_lambda::types::FunctionVersion::All)
        .send()
        .await
        .unwrap();
    assert_eq!(all.functions().len(), 5);

    let (code, status, _) = aws_error(
        client
            .list_functions()
            .marker("garbage")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("InvalidParameterValueException", 400)
    );
}

#[tokio::test]
async fn tags_round_trip() {
    let server = LaminaServer::start();
    let client = server.client();
    client
        .create_function()
        .function_name("tagged")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(zip_code(bootstrap_zip()))
        .tags("team", "core")
        .send()
        .await
        .unwrap();
    let arn = "arn:aws:lambda:us-east-1:000000000000:function:tagged";
    client
        .tag_resource()
        .resource(arn)
        .tags("env", "prod")
        .tags("cost", "low")
        .send()
        .await
        .unwrap();
    client
        .untag_resource()
        .resource(arn)
        .tag_keys("cost")
        .tag_keys("team")
        .send()
        .await
        .unwrap();
    let tags = client.list_tags().resource(arn).send().await.unwrap();
    assert_eq!(
        tags.tags().unwrap(),
        &HashMap::from([("env".to_owned(), "prod".to_owned())])
    );
    let got = client
        .get_function()
        .function_name("tagged")
        .send()
        .await
        .unwrap();
    assert_eq!(got.tags().unwrap().get("env"), Some(&"prod".to_owned()));

    let (code, status, message) = aws_error(
        client
            .list_tags()
            .resource("arn:aws:lambda:us-east-1:000000000000:function:ghost")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
    assert_eq!(
        message,
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:ghost"
    );
    let (code, status, _) = aws_error(
        client
            .list_tags()
            .resource("not-an-arn")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ValidationException", 400));
}

#[tokio::test]
async fn account_settings_count_functions_and_code() {
    let server = LaminaServer::start();
    let client = server.client();
    let created = create_function(&client, "counted").await;
    let settings = client.get_account_settings().send().await.unwrap();
    let limit = settings.account_limit().unwrap();
    assert_eq!(limit.code_size_zipped(), 52_428_800);
    assert_eq!(limit.code_size_unzipped(), 262_144_000);
    assert_eq!(limit.concurrent_executions(), 1000);
    assert_eq!(limit.unreserved_concurrent_executions(), Some(1000));
    let usage = settings.account_usage().unwrap();
    assert_eq!(usage.function_count(), 1);
    assert_eq!(usage.total_code_size(), created.code_size());
}

#[tokio::test]
async fn unimplemented_features_say_so_plainly() {
    let server = LaminaServer::start();
    let client = server.client();
    let (code, status, message) = aws_error(
        client
            .create_function()
            .function_name("s3-code")
            .runtime(Runtime::Providedal2023)
            .role(ROLE)
            .handler("bootstrap")
            .code(FunctionCode::builder().s3_bucket("b").s3_key("k").build())
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("NotImplementedException", 501));
    assert!(message.contains("not supported by Lamina yet"), "{message}");

    // An operation this build does not serve yet.
    let (code, status, _) = aws_error(client.list_code_signing_configs().send().await.unwrap_err());
    assert_eq!((code.as_str(), status), ("NotImplementedException", 501));
}
