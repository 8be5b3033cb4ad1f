//! Which runtimes a server offers: `lamina runtimes`, `--runtime` / `LAMINA_RUNTIMES`,
//! and the errors for functions whose runtime cannot run here — at create (the caller's
//! mistake, 400) and at invoke (the platform's, 502) — never a silent substitute.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::*;

fn lamina_runtimes(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lamina"))
        .arg("runtimes")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("lamina runs")
}

#[test]
fn lamina_runtimes_lists_what_is_available_what_is_missing_and_how_to_install_it() {
    let output = lamina_runtimes(&["--runtime", "nodejs22.x=none"], &[]);
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["RUNTIME", "STATUS", "DETAILS"]);
    let row = |id: &str| {
        rows.iter()
            .find(|r| r[0] == id)
            .unwrap_or_else(|| panic!("{id} missing from:\n{table}"))
    };
    assert_eq!(row("provided.al2023")[1], "available");
    assert_eq!(row("nodejs22.x")[1], "disabled");
    assert_eq!(row("dotnet8")[1], "unsupported");
    assert_eq!(row("java8.al2")[1], "unsupported");
    assert!(
        ["available", "missing"].contains(&row("java21")[1]),
        "{table}"
    );
    assert!(
        ["available", "missing"].contains(&row("ruby3.3")[1]),
        "{table}"
    );
    for python in available_runtimes("python") {
        assert_eq!(row(&python)[1], "available");
        assert_eq!(row(&python)[2], "Python");
    }

    let output = lamina_runtimes(
        &["--json"],
        &[("LAMINA_RUNTIMES", "nodejs22.x=none,java21=none")],
    );
    let entries: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let entry = |id: &str| entries.iter().find(|e| e["runtime"] == id).unwrap().clone();
    assert_eq!(entry("nodejs22.x")["status"], "disabled");
    assert_eq!(entry("provided.al2")["status"], "own_bootstrap");
    for available in entries.iter().filter(|e| e["status"] == "available") {
        let interpreter = &available["interpreter"];
        assert!(interpreter["executable"].as_str().unwrap().starts_with('/'));
        assert_eq!(interpreter["version"], available["version"], "{available}");
    }
    for missing in entries.iter().filter(|e| e["status"] == "missing") {
        let hint = missing["hint"].as_str().unwrap();
        assert!(
            hint.contains("Install one") && hint.contains("--runtime"),
            "{hint}"
        );
    }
}

#[test]
fn wrong_runtime_options_stop_the_command_with_the_reason() {
    for (value, expected) in [
        (
            "python3.12=/no/such/python3.12",
            "--runtime python3.12=/no/such/python3.12: there is no interpreter there",
        ),
        ("python3.12", "expected RUNTIME=PATH"),
        ("cobol=/bin/sh", "not a runtime identifier AWS accepts"),
    ] {
        let output = lamina_runtimes(&["--runtime", value], &[]);
        assert!(!output.status.success(), "{value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{value}: {stderr}");
    }
    // Another language version only when asked for with `~=`.
    let python = &host_runtimes()
        .iter()
        .find(|r| {
            r["language"] == "python" && r["status"] == "available" && r["runtime"] != "python3.14"
        })
        .expect("a Python runtime")["interpreter"]["executable"];
    let python = python.as_str().unwrap();
    let output = lamina_runtimes(&["--runtime", &format!("python3.14={python}")], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "Write --runtime python3.14~={python} to use it anyway"
        )),
        "{stderr}"
    );
    let output = lamina_runtimes(
        &["--json", "--runtime", &format!("python3.14~={python}")],
        &[],
    );
    assert!(output.status.success());
    let entries: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let entry = entries
        .iter()
        .find(|e| e["runtime"] == "python3.14")
        .unwrap();
    assert_eq!(entry["interpreter"]["version_mismatch"], true);
}

#[tokio::test]
async fn an_interpreter_of_another_version_runs_only_when_chosen_and_says_so() {
    let entry = host_runtimes()
        .iter()
        .find(|r| {
            r["language"] == "python" && r["status"] == "available" && r["runtime"] != "python3.14"
        })
        .expect("a Python runtime");
    let python = entry["interpreter"]["executable"].as_str().unwrap();
    let mapping = format!("python3.14~={python}");
    let server = LaminaServer::start_with(&["--runtime", &mapping]);
    let client = server.client();
    let code = b"import os, sys\n\ndef handler(event, context):\n    return [os.environ['AWS_EXECUTION_ENV'], '%d.%d' % sys.version_info[:2]]\n";
    create_managed(
        &client,
        "mapped",
        "python3.14",
        "app.handler",
        zip_of(&[("app.py", code, 0o644)]),
    )
    .await;
    let got = invoke_tail(&client, "mapped", json!({})).await;
    assert_eq!(
        got.payload,
        json!(["AWS_Lambda_python3.14", entry["version"]]),
        "{}",
        got.log
    );
}

#[tokio::test]
async fn an_unavailable_runtime_is_refused_at_create_and_at_invoke() {
    let python = newest_runtime("python");
    let mut server = LaminaServer::start();
    let client = server.client();
    let zip = zip_of(&[(
        "app.py",
        b"def handler(event, context):\n    return 'ok'\n",
        0o644,
    )]);
    create_managed(
        &client,
        "later-disabled",
        &python,
        "app.handler",
        zip.clone(),
    )
    .await;
    assert_eq!(
        invoke_tail(&client, "later-disabled", json!({}))
            .await
            .payload,
        json!("ok")
    );

    // A runtime Lamina has no bootstrap for: refused at create, naming it and the fix.
    let refused = client
        .create_function()
        .function_name("dotnet")
        .runtime(aws_sdk_lambda::types::Runtime::Dotnet8)
        .role(ROLE)
        .handler("Assembly::Namespace.Handler::Handle")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(zip.clone().into())
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    let (code, status, message) = aws_error(refused);
    assert_eq!(
        (code.as_str(), status),
        ("InvalidParameterValueException", 400)
    );
    assert_eq!(
        message,
        "The runtime parameter of dotnet8 is not available on this Lamina server: Lamina has no .NET runtime yet; choose another runtime"
    );
    // So is changing a function to one.
    let refused = client
        .update_function_configuration()
        .function_name("later-disabled")
        .runtime(aws_sdk_lambda::types::Runtime::Java8al2)
        .send()
        .await
        .unwrap_err();
    let (code, _, message) = aws_error(refused);
    assert_eq!(code, "InvalidParameterValueException");
    assert!(
        message.contains("java8.al2 is not available on this Lamina server: Lamina's Java runtime needs Java 11 or later"),
        "{message}"
    );

    // The same data, served without that Python: the function exists but cannot start.
    let data = server.take_data_dir();
    server.terminate();
    let disable = format!("{python}=none");
    let server = LaminaServer::start_in_with(data.path(), &["--runtime", &disable]);
    let client = server.client();
    let failed = client
        .invoke()
        .function_name("later-disabled")
        .send()
        .await
        .unwrap_err();
    let (code, status, message) = aws_error(failed);
    assert_eq!((code.as_str(), status), ("InvalidRuntimeException", 502));
    assert_eq!(
        message,
        format!(
            "Runtime {python} is not available on this Lamina server: the server was started with --runtime {python}=none; restart it without that option to offer {python}"
        )
    );
    let refused = client
        .create_function()
        .function_name("new")
        .runtime(aws_sdk_lambda::types::Runtime::from(python.as_str()))
        .role(ROLE)
        .handler("app.handler")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(zip.into())
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    let (code, _, message) = aws_error(refused);
    assert_eq!(code, "InvalidParameterValueException");
    assert!(message.contains("--runtime"), "{message}");
}

#[tokio::test]
async fn managed_runtimes_run_in_the_process_tier_from_host_paths() {
    let server = LaminaServer::start_with(&["--sandbox", "process"]);
    assert!(server.sandbox.starts_with("process"), "{}", server.sandbox);
    let client = server.client();
    let python = newest_runtime("python");
    let node = newest_runtime("nodejs");
    create_managed(
        &client,
        "py",
        &python,
        "app.handler",
        zip_of(&[(
            "app.py",
            b"import helper\n\ndef handler(event, context):\n    print('printed')\n    return helper.VALUE\n",
            0o644,
        ), ("helper.py", b"VALUE = 'python ok'\n", 0o644)]),
    )
    .await;
    create_managed(
        &client,
        "node",
        &node,
        "index.handler",
        zip_of(&[(
            "index.mjs",
            b"export const handler = async () => 'node ok';\n",
            0o644,
        )]),
    )
    .await;
    let got = invoke_tail(&client, "py", json!({})).await;
    assert_eq!(got.payload, json!("python ok"), "{}", got.log);
    assert!(got.log.contains("printed"));
    let got = invoke_tail(&client, "node", json!({})).await;
    assert_eq!(got.payload, json!("node ok"), "{}", got.log);
}

#[tokio::test]
async fn layer_packages_under_opt_import_when_layers_exist() {
    let server = LaminaServer::start();
    let client = server.client();
    let layer = zip_of(&[
        ("python/layered.py", b"SOURCE = 'python/'\n", 0o644),
        (
            "nodejs/node_modules/layered/index.js",
            b"module.exports = 'nodejs/node_modules/';\n",
            0o644,
        ),
    ]);
    let published = client
        .publish_layer_version()
        .layer_name("deps")
        .content(
            aws_sdk_lambda::types::LayerVersionContentInput::builder()
                .zip_file(layer.into())
                .build(),
        )
        .send()
        .await;
    let arn = match published {
        Ok(published) => published.layer_version_arn().unwrap().to_owned(),
        Err(error) => {
            let (code, status, _) = aws_error(error);
            eprintln!("skipped: this Lamina has no layers yet ({code}, {status})");
            return;
        }
    };
    let python = newest_runtime("python");
    let node = newest_runtime("nodejs");
    create_managed_with(
        &client,
        "py-layer",
        &python,
        "app.handler",
        zip_of(&[(
            "app.py",
            b"import layered\n\ndef handler(event, context):\n    return layered.SOURCE\n",
            0o644,
        )]),
        |b| b.layers(&arn),
    )
    .await;
    create_managed_with(
        &client,
        "node-layer",
        &node,
        "index.handler",
        zip_of(&[(
            "index.js",
            b"exports.handler = async () => require('layered');\n",
            0o644,
        )]),
        |b| b.layers(&arn),
    )
    .await;
    assert_eq!(
        invoke_tail(&client, "py-layer", json!({})).await.payload,
        json!("python/")
    );
    assert_eq!(
        invoke_tail(&client, "node-layer", json!({})).await.payload,
        json!("nodejs/node_modules/")
    );
}
