//! Resource-based policies end to end, driven by `aws-sdk-lambda`: AddPermission,
//! RemovePermission and GetPolicy on functions, versions and aliases, and the layer
//! version permissions, with the statement JSON and the errors AWS returns.

mod support;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::LayerVersionContentInput;
use serde_json::{Value, json};
use support::*;

const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function";
const LAYER_ARN: &str = "arn:aws:lambda:us-east-1:000000000000:layer";

fn parse(json: Option<&str>) -> Value {
    serde_json::from_str(json.expect("a JSON string")).expect("valid JSON")
}

#[tokio::test]
async fn function_policies_round_trip_on_functions_versions_and_aliases() {
    let server = LaminaServer::start();
    let client = server.client();
    create_function(&client, "guarded").await;
    client
        .publish_version()
        .function_name("guarded")
        .send()
        .await
        .unwrap();
    let alias = client
        .create_alias()
        .function_name("guarded")
        .name("live")
        .function_version("1")
        .send()
        .await
        .unwrap();

    let (code, status, message) = aws_error(
        client
            .get_policy()
            .function_name("guarded")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            "The resource you requested does not exist."
        )
    );

    let added = client
        .add_permission()
        .function_name("guarded")
        .statement_id("s3")
        .action("lambda:InvokeFunction")
        .principal("s3.amazonaws.com")
        .source_arn("arn:aws:s3:::uploads")
        .send()
        .await
        .unwrap();
    let s3_statement = json!({
        "Sid": "s3",
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "lambda:InvokeFunction",
        "Resource": format!("{ARN}:guarded"),
        "Condition": {"ArnLike": {"AWS:SourceArn": "arn:aws:s3:::uploads"}}
    });
    assert_eq!(parse(added.statement()), s3_statement);
    client
        .add_permission()
        .function_name(format!("{ARN}:guarded"))
        .statement_id("url")
        .action("lambda:InvokeFunctionUrl")
        .principal("*")
        .function_url_auth_type(aws_sdk_lambda::types::FunctionUrlAuthType::None)
        .source_account("000000000000")
        .send()
        .await
        .unwrap();
    let policy = client
        .get_policy()
        .function_name("guarded")
        .send()
        .await
        .unwrap();
    assert_eq!(
        parse(policy.policy()),
        json!({
            "Version": "2012-10-17",
            "Id": "default",
            "Statement": [
                s3_statement,
                {
                    "Sid": "url",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "lambda:InvokeFunctionUrl",
                    "Resource": format!("{ARN}:guarded"),
                    "Condition": {"StringEquals": {
                        "AWS:SourceAccount": "000000000000",
                        "lambda:FunctionUrlAuthType": "NONE"
                    }}
                }
            ]
        })
    );
    let revision = policy.revision_id().unwrap().to_owned();

    // Duplicate statement ids, stale revisions, unknown statements.
    let (code, status, message) = aws_error(
        client
            .add_permission()
            .function_name("guarded")
            .statement_id("s3")
            .action("lambda:InvokeFunction")
            .principal("sqs.amazonaws.com")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceConflictException",
            409,
            "The statement id (s3) provided already exists. Please provide a new statement id, \
             or remove the existing statement."
        )
    );
    let stale = "The Revision Id provided does not match the latest Revision Id. Call the \
                 GetPolicy API to retrieve the latest Revision Id";
    let (code, status, message) = aws_error(
        client
            .add_permission()
            .function_name("guarded")
            .statement_id("other")
            .action("lambda:InvokeFunction")
            .principal("sqs.amazonaws.com")
            .revision_id("stale")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        ("PreconditionFailedException", 412, stale)
    );
    let (code, status, message) = aws_error(
        client
            .remove_permission()
            .function_name("guarded")
            .statement_id("s3")
            .revision_id("stale")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        ("PreconditionFailedException", 412, stale)
    );
    let (code, status, message) = aws_error(
        client
            .remove_permission()
            .function_name("guarded")
            .statement_id("nope")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            "Statement nope is not found in resource policy."
        )
    );

    // A version and an alias have policies of their own.
    client
        .add_permission()
        .function_name("guarded:1")
        .qualifier("1")
        .statement_id("s3")
        .action("lambda:InvokeFunction")
        .principal("s3.amazonaws.com")
        .send()
        .await
        .unwrap();
    let on_version = client
        .get_policy()
        .function_name("guarded")
        .qualifier("1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        parse(on_version.policy())["Statement"][0]["Resource"],
        format!("{ARN}:guarded:1")
    );
    let (code, status, _) = aws_error(
        client
            .add_permission()
            .function_name("guarded")
            .qualifier("live")
            .statement_id("events")
            .action("lambda:InvokeFunction")
            .principal("events.amazonaws.com")
            .revision_id("wrong")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status),
        ("PreconditionFailedException", 412)
    );
    // Before the alias has a policy, its own revision is the one to pin.
    client
        .add_permission()
        .function_name("guarded")
        .qualifier("live")
        .statement_id("events")
        .action("lambda:InvokeFunction")
        .principal("events.amazonaws.com")
        .revision_id(alias.revision_id().unwrap())
        .send()
        .await
        .unwrap();
    let on_alias = client
        .get_policy()
        .function_name("guarded:live")
        .send()
        .await
        .unwrap();
    assert_eq!(
        parse(on_alias.policy())["Statement"][0]["Resource"],
        format!("{ARN}:guarded:live")
    );
    let unqualified = client
        .get_policy()
        .function_name("guarded")
        .send()
        .await
        .unwrap();
    assert_eq!(unqualified.revision_id(), Some(revision.as_str()));
    assert_eq!(
        parse(unqualified.policy())["Statement"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Refusals for what does not exist or cannot hold a policy.
    let add = |function: &str, qualifier: Option<&str>, principal: &str| {
        client
            .add_permission()
            .function_name(function)
            .set_qualifier(qualifier.map(str::to_owned))
            .statement_id("x")
            .action("lambda:InvokeFunction")
            .principal(principal)
            .send()
    };
    let refusals = [
        (
            add("guarded", Some("$LATEST"), "s3.amazonaws.com").await,
            "InvalidParameterValueException",
            400,
            "We currently do not support adding policies for $LATEST.".to_owned(),
        ),
        (
            add("missing", None, "s3.amazonaws.com").await,
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:missing"),
        ),
        (
            add("guarded", Some("42"), "s3.amazonaws.com").await,
            "ResourceNotFoundException",
            404,
            format!("Function not found: {ARN}:guarded:42"),
        ),
        (
            add("guarded", Some("nope"), "s3.amazonaws.com").await,
            "ResourceNotFoundException",
            404,
            format!("Cannot find alias arn: {ARN}:guarded:nope"),
        ),
        (
            add("guarded", None, "invalid.nonaws.com").await,
            "InvalidParameterValueException",
            400,
            "The provided principal was invalid. Please check the principal and try again."
                .to_owned(),
        ),
    ];
    for (result, exception, expected_status, expected_message) in refusals {
        let (code, status, message) = aws_error(result.unwrap_err());
        assert_eq!(
            (code.as_str(), status, message.as_str()),
            (exception, expected_status, expected_message.as_str())
        );
    }
    let (code, status, message) = aws_error(
        client
            .add_permission()
            .function_name("guarded")
            .statement_id("example.com")
            .action("lambda:InvokeFunction")
            .principal("*")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ValidationException", 400));
    assert_eq!(
        message,
        "1 validation error detected: Value 'example.com' at 'statementId' failed to satisfy \
         constraint: Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)"
    );
    let (code, status, message) = aws_error(
        client
            .remove_permission()
            .function_name("missing")
            .statement_id("s3")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("No policy found for: {ARN}:missing").as_str()
        )
    );

    // Removing every statement removes the policy.
    for sid in ["s3", "url"] {
        client
            .remove_permission()
            .function_name("guarded")
            .statement_id(sid)
            .send()
            .await
            .unwrap();
    }
    let (code, _, _) = aws_error(
        client
            .get_policy()
            .function_name("guarded")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "ResourceNotFoundException");
    let (code, status, message) = aws_error(
        client
            .remove_permission()
            .function_name("guarded")
            .statement_id("s3")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            "No policy is associated with the given resource."
        )
    );

    // An alias's policy goes with the alias.
    client
        .delete_alias()
        .function_name("guarded")
        .name("live")
        .send()
        .await
        .unwrap();
    client
        .create_alias()
        .function_name("guarded")
        .name("live")
        .function_version("1")
        .send()
        .await
        .unwrap();
    let (code, _, _) = aws_error(
        client
            .get_policy()
            .function_name("guarded")
            .qualifier("live")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "ResourceNotFoundException");
}

#[tokio::test]
async fn layer_version_permissions_round_trip() {
    let server = LaminaServer::start();
    let client = server.client();
    client
        .publish_layer_version()
        .layer_name("shared")
        .content(
            LayerVersionContentInput::builder()
                .zip_file(Blob::new(zip_of(&[("lib/x", b"x", 0o644)])))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let no_policy = "No policy is associated with the given resource.";
    let (code, status, message) = aws_error(
        client
            .get_layer_version_policy()
            .layer_name("shared")
            .version_number(1)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        ("ResourceNotFoundException", 404, no_policy)
    );

    let first = client
        .add_layer_version_permission()
        .layer_name("shared")
        .version_number(1)
        .statement_id("s1")
        .action("lambda:GetLayerVersion")
        .principal("*")
        .send()
        .await
        .unwrap();
    assert_eq!(
        parse(first.statement()),
        json!({
            "Sid": "s1",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "lambda:GetLayerVersion",
            "Resource": format!("{LAYER_ARN}:shared:1")
        })
    );
    let second = client
        .add_layer_version_permission()
        .layer_name("shared")
        .version_number(1)
        .statement_id("org")
        .action("lambda:GetLayerVersion")
        .principal("123456789012")
        .organization_id("o-abcdefghij")
        .revision_id(first.revision_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        parse(second.statement())["Principal"],
        json!({"AWS": "arn:aws:iam::123456789012:root"})
    );
    assert_eq!(
        parse(second.statement())["Condition"],
        json!({"StringEquals": {"aws:PrincipalOrgID": "o-abcdefghij"}})
    );
    let policy = client
        .get_layer_version_policy()
        .layer_name("shared")
        .version_number(1)
        .send()
        .await
        .unwrap();
    assert_eq!(policy.revision_id(), second.revision_id());
    assert_eq!(
        parse(policy.policy())["Statement"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let stale = "The Revision Id provided does not match the latest Revision Id. Call the \
                 GetLayerPolicy API to retrieve the latest Revision Id";
    let (code, status, message) = aws_error(
        client
            .add_layer_version_permission()
            .layer_name("shared")
            .version_number(1)
            .statement_id("s2")
            .action("lambda:GetLayerVersion")
            .principal("*")
            .revision_id(first.revision_id().unwrap())
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        ("PreconditionFailedException", 412, stale)
    );
    let (code, status, message) = aws_error(
        client
            .add_layer_version_permission()
            .layer_name("shared")
            .version_number(1)
            .statement_id("s1")
            .action("lambda:GetLayerVersion")
            .principal("*")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceConflictException",
            409,
            "The statement id (s1) provided already exists. Please provide a new statement id, \
             or remove the existing statement."
        )
    );
    let (code, status, message) = aws_error(
        client
            .add_layer_version_permission()
            .layer_name("shared")
            .version_number(1)
            .statement_id("s3")
            .action("*")
            .principal("*")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ValidationException", 400));
    assert_eq!(
        message,
        "1 validation error detected: Value '*' at 'action' failed to satisfy constraint: \
         Member must satisfy regular expression pattern: lambda:GetLayerVersion"
    );
    let (code, status, message) = aws_error(
        client
            .add_layer_version_permission()
            .layer_name("shared")
            .version_number(2)
            .statement_id("s1")
            .action("lambda:GetLayerVersion")
            .principal("*")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            format!("Layer version {LAYER_ARN}:shared:2 does not exist.").as_str()
        )
    );

    let (code, status, message) = aws_error(
        client
            .remove_layer_version_permission()
            .layer_name("shared")
            .version_number(1)
            .statement_id("doesnotexist")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "ResourceNotFoundException",
            404,
            "Statement doesnotexist is not found in resource policy."
        )
    );
    for sid in ["s1", "org"] {
        client
            .remove_layer_version_permission()
            .layer_name("shared")
            .version_number(1)
            .statement_id(sid)
            .send()
            .await
            .unwrap();
    }
    let (_, _, message) = aws_error(
        client
            .get_layer_version_policy()
            .layer_name("shared")
            .version_number(1)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(message, no_policy);
}
