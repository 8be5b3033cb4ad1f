//! Layers end to end, driven by `aws-sdk-lambda`: publishing and reading layer versions,
//! functions whose `/opt` is their layers merged in order (a layer can even provide the
//! `bootstrap`), AWS's limits and errors, and deleted layer versions that stay usable by
//! the functions already referencing them.

mod support;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, FunctionCode, LayerVersionContentInput, Runtime};
use serde_json::{Value, json};
use sha2::Digest as _;
use support::*;

const LAYER_ARN: &str = "arn:aws:lambda:us-east-1:000000000000:layer";

async fn publish_layer(
    client: &aws_sdk_lambda::Client,
    name: &str,
    zip: Vec<u8>,
) -> aws_sdk_lambda::operation::publish_layer_version::PublishLayerVersionOutput {
    client
        .publish_layer_version()
        .layer_name(name)
        .description(format!("the {name} layer"))
        .compatible_runtimes(Runtime::Providedal2023)
        .compatible_architectures(Architecture::X8664)
        .license_info("Apache-2.0")
        .content(
            LayerVersionContentInput::builder()
                .zip_file(Blob::new(zip))
                .build(),
        )
        .send()
        .await
        .expect("publish_layer_version succeeds")
}

/// A function without a bootstrap of its own, on the given layers.
async fn create_on_layers(
    client: &aws_sdk_lambda::Client,
    name: &str,
    layers: &[&str],
) -> Result<
    aws_sdk_lambda::operation::create_function::CreateFunctionOutput,
    aws_sdk_lambda::error::SdkError<
        aws_sdk_lambda::operation::create_function::CreateFunctionError,
        aws_sdk_lambda::config::http::HttpResponse,
    >,
> {
    client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("handler")
        .timeout(10)
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(zip_of(&[(
                    "README",
                    b"the code is in the layers",
                    0o644,
                )])))
                .build(),
        )
        .set_layers(Some(layers.iter().map(|l| l.to_string()).collect()))
        .send()
        .await
}

/// Reads a file inside the function's environment. The process tier has no `/opt` or
/// `/var/task` of its own (nothing is mounted), so there it only checks that the function
/// runs, which proves its bootstrap was found.
async fn read(server: &LaminaServer, function: &str, path: &str) -> Value {
    let client = server.client();
    let isolated = linux_tier(server);
    let output = client
        .invoke()
        .function_name(function)
        .payload(Blob::new(
            serde_json::to_vec(&json!({"action": "read", "path": path})).unwrap(),
        ))
        .send()
        .await
        .expect("invoke succeeds");
    let payload: Value = serde_json::from_slice(output.payload().unwrap().as_ref()).unwrap();
    assert_eq!(output.function_error(), None, "{payload}");
    if !isolated {
        eprintln!("process tier: not checking the contents of {path}");
        return Value::Null;
    }
    payload
}

/// Asserts a file's text inside the environment (in the linux tier; see [`read`]).
async fn assert_text(server: &LaminaServer, function: &str, path: &str, text: &str) {
    let payload = read(server, function, path).await;
    if linux_tier(server) {
        assert_eq!(payload, json!({ "text": text }), "{path}");
    }
}

#[tokio::test]
async fn layers_provide_the_bootstrap_and_libraries_under_opt() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime_zip = {
        let bootstrap = build_test_function();
        let bytes = std::fs::read(bootstrap).unwrap();
        zip_of(&[
            ("bootstrap", &bytes, 0o755),
            ("lib/message.txt", b"from the runtime layer", 0o644),
            ("lib/only-runtime.txt", b"R", 0o644),
        ])
    };
    let overrides_zip = zip_of(&[("lib/message.txt", b"from the overrides layer", 0o644)]);

    let runtime = publish_layer(&client, "runtime", runtime_zip.clone()).await;
    assert_eq!(runtime.version(), 1);
    assert_eq!(
        runtime.layer_arn(),
        Some(format!("{LAYER_ARN}:runtime").as_str())
    );
    assert_eq!(
        runtime.layer_version_arn(),
        Some(format!("{LAYER_ARN}:runtime:1").as_str())
    );
    assert_eq!(runtime.description(), Some("the runtime layer"));
    assert_eq!(runtime.license_info(), Some("Apache-2.0"));
    assert_eq!(runtime.compatible_runtimes(), [Runtime::Providedal2023]);
    let content = runtime.content().unwrap();
    assert_eq!(
        content.code_sha256(),
        Some(sha256_base64(&runtime_zip).as_str())
    );
    assert_eq!(content.code_size(), runtime_zip.len() as i64);
    assert_eq!(http_get(content.location().unwrap()), runtime_zip);
    let overrides = publish_layer(&client, "overrides", overrides_zip).await;

    // Layers are extracted into /opt in order: the later one wins.
    let runtime_arn = runtime.layer_version_arn().unwrap();
    let overrides_arn = overrides.layer_version_arn().unwrap();
    let created = create_on_layers(&client, "layered", &[runtime_arn, overrides_arn])
        .await
        .unwrap();
    let layers: Vec<(&str, i64)> = created
        .layers()
        .iter()
        .map(|l| (l.arn().unwrap(), l.code_size()))
        .collect();
    assert_eq!(
        layers,
        [
            (runtime_arn, runtime_zip.len() as i64),
            (overrides_arn, overrides.content().unwrap().code_size())
        ]
    );
    assert_text(
        &server,
        "layered",
        "/opt/lib/message.txt",
        "from the overrides layer",
    )
    .await;
    assert_text(&server, "layered", "/opt/lib/only-runtime.txt", "R").await;
    assert_text(
        &server,
        "layered",
        "/var/task/README",
        "the code is in the layers",
    )
    .await;

    // Reordering the layers changes which file wins.
    client
        .update_function_configuration()
        .function_name("layered")
        .layers(overrides_arn)
        .layers(runtime_arn)
        .send()
        .await
        .unwrap();
    assert_text(
        &server,
        "layered",
        "/opt/lib/message.txt",
        "from the runtime layer",
    )
    .await;

    // Reading layer versions back.
    let got = client
        .get_layer_version()
        .layer_name("runtime")
        .version_number(1)
        .send()
        .await
        .unwrap();
    assert_eq!(got.layer_version_arn(), Some(runtime_arn));
    assert_eq!(
        http_get(got.content().unwrap().location().unwrap()),
        runtime_zip
    );
    let by_arn = client
        .get_layer_version_by_arn()
        .arn(runtime_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(by_arn.version(), 1);
    let by_layer_arn = client
        .get_layer_version()
        .layer_name(format!("{LAYER_ARN}:overrides"))
        .version_number(1)
        .send()
        .await
        .unwrap();
    assert_eq!(by_layer_arn.layer_version_arn(), Some(overrides_arn));
    let second = publish_layer(&client, "runtime", zip_of(&[("x", b"x", 0o644)])).await;
    assert_eq!(second.version(), 2);
    let versions: Vec<i64> = client
        .list_layer_versions()
        .layer_name("runtime")
        .send()
        .await
        .unwrap()
        .layer_versions()
        .iter()
        .map(|v| v.version())
        .collect();
    assert_eq!(versions, [2, 1]);
    let listed = client.list_layers().send().await.unwrap();
    let latest: Vec<(&str, i64)> = listed
        .layers()
        .iter()
        .map(|l| {
            (
                l.layer_name().unwrap(),
                l.latest_matching_version().unwrap().version(),
            )
        })
        .collect();
    assert_eq!(latest, [("overrides", 1), ("runtime", 2)]);
    let filtered = client
        .list_layers()
        .compatible_runtime(Runtime::Python312)
        .send()
        .await
        .unwrap();
    assert!(filtered.layers().is_empty());

    // A deleted layer version is gone for new references but stays usable by the
    // functions that already reference it, cold starts and code collection included.
    for _ in 0..2 {
        client
            .delete_layer_version()
            .layer_name("runtime")
            .version_number(1)
            .send()
            .await
            .unwrap();
    }
    let (code, status, message) = aws_error(
        client
            .get_layer_version()
            .layer_name("runtime")
            .version_number(1)
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
    let (code, status, message) = aws_error(
        create_on_layers(&client, "late", &[runtime_arn])
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "InvalidParameterValueException",
            400,
            format!("Layer version {runtime_arn} does not exist.").as_str()
        )
    );
    // A configuration change retires the warm environment and collects unused code.
    client
        .update_function_configuration()
        .function_name("layered")
        .memory_size(256)
        .send()
        .await
        .unwrap();
    client
        .update_function_code()
        .function_name("layered")
        .zip_file(Blob::new(zip_of(&[("README", b"new code", 0o644)])))
        .send()
        .await
        .unwrap();
    assert_text(
        &server,
        "layered",
        "/opt/lib/message.txt",
        "from the runtime layer",
    )
    .await;
    assert_text(&server, "layered", "/var/task/README", "new code").await;
    let configuration = client
        .get_function_configuration()
        .function_name("layered")
        .send()
        .await
        .unwrap();
    assert_eq!(configuration.layers().len(), 2);
    let runtime_blob = server.data_dir.join("code/blobs").join(format!(
        "{}.zip",
        sha2::Sha256::digest(&runtime_zip)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    assert!(
        runtime_blob.is_file(),
        "code collection kept the deleted layer version a function uses"
    );

    // Removing the layers leaves a function without a bootstrap.
    client
        .update_function_configuration()
        .function_name("layered")
        .set_layers(Some(Vec::new()))
        .send()
        .await
        .unwrap();
    let output = client
        .invoke()
        .function_name("layered")
        .send()
        .await
        .unwrap();
    assert_eq!(output.function_error(), Some("Unhandled"));
    let payload: Value = serde_json::from_slice(output.payload().unwrap().as_ref()).unwrap();
    assert_eq!(payload["errorType"], "Runtime.InvalidEntrypoint");
}

#[tokio::test]
async fn functions_reference_at_most_five_layers_as_aws_checks_them() {
    let server = LaminaServer::start();
    let client = server.client();
    let mut arns = Vec::new();
    for i in 0..6 {
        let zip = zip_of(&[(&format!("layer-{i}.txt"), b"x", 0o644)]);
        let published = publish_layer(&client, &format!("layer-{i}"), zip).await;
        arns.push(published.layer_version_arn().unwrap().to_owned());
    }
    let all: Vec<&str> = arns.iter().map(String::as_str).collect();
    let (code, status, message) =
        aws_error(create_on_layers(&client, "six", &all).await.unwrap_err());
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "InvalidParameterValueException",
            400,
            "Cannot reference more than 5 layers."
        )
    );
    let five = create_on_layers(&client, "five", &all[..5]).await.unwrap();
    assert_eq!(five.layers().len(), 5);
    let (code, _, message) = aws_error(
        client
            .update_function_configuration()
            .function_name("five")
            .set_layers(Some(arns.clone()))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "InvalidParameterValueException");
    assert_eq!(message, "Cannot reference more than 5 layers.");

    let again = publish_layer(&client, "layer-0", zip_of(&[("v2", b"x", 0o644)])).await;
    let again_arn = again.layer_version_arn().unwrap();
    let missing = format!("{LAYER_ARN}:missing:1");
    let missing_version = format!("{LAYER_ARN}:layer-1:9");
    let refusals = [
        (
            vec![all[0], again_arn],
            format!(
                "Two different versions of the same layer are not allowed to be referenced in \
                 the same function. {} and {again_arn} are versions of the same layer.",
                all[0]
            ),
        ),
        (
            vec![missing.as_str()],
            format!("Layer version {missing} does not exist."),
        ),
        (
            vec![missing_version.as_str()],
            format!("Layer version {missing_version} does not exist."),
        ),
        (
            vec!["arn:aws:lambda:eu-west-1:000000000000:layer:layer-1:1"],
            "Layers are not in the same region as the function. Layers are expected to be in \
             region us-east-1."
                .to_owned(),
        ),
    ];
    for (layers, expected) in refusals {
        let (code, status, message) = aws_error(
            create_on_layers(&client, "refused", &layers)
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code.as_str(), status, message.as_str()),
            ("InvalidParameterValueException", 400, expected.as_str())
        );
    }

    // Layer version numbers below 1, and unknown layers.
    let (code, status, message) = aws_error(
        client
            .get_layer_version()
            .layer_name("layer-0")
            .version_number(0)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "InvalidParameterValueException",
            400,
            "Layer Version Cannot be less than 1"
        )
    );
    let none = client
        .list_layer_versions()
        .layer_name("never-published")
        .send()
        .await
        .unwrap();
    assert!(none.layer_versions().is_empty());
    let (code, status, _) = aws_error(
        client
            .get_layer_version_by_arn()
            .arn(format!("{LAYER_ARN}:never-published:1"))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ResourceNotFoundException", 404));
    let (code, status, _) = aws_error(
        client
            .get_layer_version_by_arn()
            .arn(format!("{LAYER_ARN}:no-version"))
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!((code.as_str(), status), ("ValidationException", 400));
}

#[tokio::test]
async fn function_code_and_layers_share_the_250_mb_unzipped_quota() {
    let server = LaminaServer::start();
    let client = server.client();
    // 126 MiB of zeros compresses to well under the 50 MB zipped limit; two layers of it
    // are within the quota each, not together.
    let big = vec![0u8; 126 * 1024 * 1024];
    let zip = zip_of(&[("data/zeros.bin", &big, 0o644)]);
    drop(big);
    let first = publish_layer(&client, "big-a", zip.clone()).await;
    let second = publish_layer(&client, "big-b", zip).await;
    let (code, status, message) = aws_error(
        create_on_layers(
            &client,
            "too-big",
            &[
                first.layer_version_arn().unwrap(),
                second.layer_version_arn().unwrap(),
            ],
        )
        .await
        .unwrap_err(),
    );
    let expected_total = 2 * 126 * 1024 * 1024 + "the code is in the layers".len();
    assert_eq!(
        (code.as_str(), status, message.as_str()),
        (
            "InvalidParameterValueException",
            400,
            format!(
                "Function code combined with layers exceeds the maximum allowed size of \
                 262144000 bytes. The actual size is {expected_total} bytes."
            )
            .as_str()
        )
    );
    create_on_layers(&client, "fits", &[first.layer_version_arn().unwrap()])
        .await
        .expect("one layer fits");
}

#[tokio::test]
async fn layered_functions_run_again_after_kill_9() {
    let mut server = LaminaServer::start();
    let client = server.client();
    let bootstrap = std::fs::read(build_test_function()).unwrap();
    let layer = publish_layer(
        &client,
        "runtime",
        zip_of(&[
            ("bootstrap", &bootstrap, 0o755),
            ("lib/message.txt", b"survived", 0o644),
        ]),
    )
    .await;
    create_on_layers(&client, "layered", &[layer.layer_version_arn().unwrap()])
        .await
        .unwrap();
    assert_text(&server, "layered", "/opt/lib/message.txt", "survived").await;

    // An unclean stop discards the merged /opt trees (they were never flushed); the next
    // cold start builds them again from the durable zips.
    server.kill_hard();
    let dir = server.take_data_dir();
    let server = LaminaServer::start_in(dir.path());
    assert_eq!(
        std::fs::read_dir(dir.path().join("code/opt"))
            .unwrap()
            .count(),
        0
    );
    assert_text(&server, "layered", "/opt/lib/message.txt", "survived").await;
    let client = server.client();
    let again = publish_layer(&client, "runtime", zip_of(&[("x", b"x", 0o644)])).await;
    assert_eq!(again.version(), 2, "the layer's version counter is durable");
}
