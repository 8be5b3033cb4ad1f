//! Python functions end to end: `aws-sdk-lambda` creates and invokes zips that would run
//! unchanged on AWS's `pythonX.Y` runtimes, in real execution environments (the linux
//! tier when run as root). Each test uses the newest Python runtime this machine has
//! (`lamina runtimes`); `every_available_python_version_runs_a_function` tries them all.

mod support;

use aws_sdk_lambda::types::{LogFormat, LoggingConfig};
use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

fn python() -> String {
    newest_runtime("python")
}

/// The version in a runtime id: `python3.12` → `3.12`.
fn version_of(runtime: &str) -> &str {
    runtime.trim_start_matches("python")
}

/// The first log event of `function` that starts with `prefix`, through the Logs API
/// (events reach the store shortly after the invocation answers).
async fn log_event(server: &LaminaServer, function: &str, prefix: &str) -> String {
    log_messages_once(&server.endpoint, function, |m| m.starts_with(prefix))
        .await
        .into_iter()
        .find(|m| m.starts_with(prefix))
        .unwrap_or_else(|| panic!("no event of {function} starts with {prefix:?}"))
}

/// The request id from a log's START line.
fn request_id(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.strip_prefix("START RequestId: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no START line in {log}"))
}

const HELLO_WORLD: &str = r#"import json
import logging

logger = logging.getLogger()
logger.setLevel("INFO")
# The root logger already has Lambda's handler, so this changes nothing (as on AWS).
logging.basicConfig(level=logging.DEBUG, format="IGNORED %(message)s")

invocations = 0


def lambda_handler(event, context):
    global invocations
    invocations += 1
    name = event.get("queryStringParameters", {}).get("name")
    logger.info(f"Hello {name}")
    print(f"remaining {context.get_remaining_time_in_millis()} ms")
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(
            {
                "message": f"Hello, {name}!",
                "requestId": context.aws_request_id,
                "remainingTimeInMillis": context.get_remaining_time_in_millis(),
                "invocations": invocations,
            }
        ),
    }
"#;

#[tokio::test]
async fn the_documentation_example_runs_and_keeps_its_state_warm() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    create_managed(
        &client,
        "hello",
        &runtime,
        "lambda_function.lambda_handler",
        zip_of(&[("lambda_function.py", HELLO_WORLD.as_bytes(), 0o644)]),
    )
    .await;

    let event = json!({"queryStringParameters": {"name": "Lamina"}});
    let first = invoke_tail(&client, "hello", event.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.function_error, None, "{}", first.payload);
    assert_eq!(first.payload["statusCode"], 200);
    let body: Value = serde_json::from_str(first.payload["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["message"], "Hello, Lamina!");
    assert_eq!(body["requestId"], request_id(&first.log));
    let remaining = body["remainingTimeInMillis"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 30_000, "{remaining}");
    assert_eq!(body["invocations"], 1);

    // logging in Lambda's format, print() as it is, both before END.
    let log = &first.log;
    let info = log
        .lines()
        .find(|l| l.starts_with("[INFO]\t"))
        .unwrap_or_else(|| panic!("no [INFO] line in {log}"));
    let fields: Vec<&str> = info.split('\t').collect();
    assert_eq!(fields.len(), 4, "{info:?}");
    assert_eq!(fields[2], request_id(log));
    assert_eq!(fields[3], "Hello Lamina");
    let timestamp = fields[1];
    assert!(
        timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
        "{timestamp}"
    );
    assert!(
        !log.contains("IGNORED"),
        "basicConfig must not apply: {log}"
    );
    let printed = log.find("remaining ").expect("print() reaches the log");
    assert!(printed < log.find("END RequestId").unwrap());
    assert!(log.contains("Init Duration"));

    // Warm: the module (and its counter) is still loaded.
    let second = invoke_tail(&client, "hello", event).await;
    let body: Value = serde_json::from_str(second.payload["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["invocations"], 2);
    assert!(!second.log.contains("Init Duration"), "{}", second.log);
}

const CONTEXT: &str = r#"import os
import sys


def handler(event, context):
    cc = context.client_context
    return {
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining": context.get_remaining_time_in_millis(),
        "identity": [
            context.identity.cognito_identity_id,
            context.identity.cognito_identity_pool_id,
        ],
        "client_context": None
        if cc is None
        else {
            "custom": cc.custom,
            "env": cc.env,
            "installation_id": cc.client.installation_id,
            "app_title": cc.client.app_title,
        },
        "repr": repr(context).split("(")[0],
        "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
        "execution_env": os.environ.get("AWS_EXECUTION_ENV"),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "cwd": os.getcwd(),
        "argv0": sys.argv[0],
        "version": "%d.%d" % sys.version_info[:2],
        "exit_builtin": callable(exit),
        "stdout_unbuffered": sys.stdout.write_through,
    }
"#;

#[tokio::test]
async fn the_context_carries_every_field_the_python_runtime_gives() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    create_managed(
        &client,
        "ctx",
        &runtime,
        "app.handler",
        zip_of(&[("app.py", CONTEXT.as_bytes(), 0o644)]),
    )
    .await;
    let client_context = r#"{"client":{"installation_id":"install-1","app_title":"Demo","app_version_name":"1.0","app_version_code":"1","app_package_name":"dev.lamina"},"custom":{"k":"v"},"env":{"platform":"test"}}"#;
    let got = invoke_tail_with(&client, "ctx", json!({}), |b| {
        b.client_context(base64::engine::general_purpose::STANDARD.encode(client_context))
    })
    .await;
    let context = &got.payload;
    assert_eq!(got.function_error, None, "{context}");
    assert_eq!(context["aws_request_id"], request_id(&got.log));
    assert_eq!(context["function_name"], "ctx");
    assert_eq!(context["function_version"], "$LATEST");
    assert_eq!(
        context["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:ctx"
    );
    assert_eq!(context["memory_limit_in_mb"], "1769");
    assert_eq!(context["log_group_name"], "/aws/lambda/ctx");
    assert!(
        context["log_stream_name"]
            .as_str()
            .unwrap()
            .contains("/[$LATEST]")
    );
    let remaining = context["remaining"].as_i64().unwrap();
    assert!(remaining > 25_000 && remaining <= 30_000, "{remaining}");
    assert_eq!(context["identity"], json!([null, null]));
    assert_eq!(
        context["client_context"],
        json!({"custom": {"k": "v"}, "env": {"platform": "test"}, "installation_id": "install-1", "app_title": "Demo"})
    );
    assert_eq!(context["repr"], "LambdaContext");
    assert!(context["trace_id"].as_str().unwrap().starts_with("Root=1-"));
    assert_eq!(context["execution_env"], format!("AWS_Lambda_{runtime}"));
    assert_eq!(context["pythonpath"], "/var/runtime");
    assert_eq!(context["version"], version_of(&runtime));
    assert_eq!(context["exit_builtin"], true);
    assert_eq!(context["stdout_unbuffered"], true);
    if linux_tier(&server) {
        assert_eq!(context["cwd"], "/var/task");
        assert_eq!(context["argv0"], "/var/runtime/bootstrap.py");
    }

    // Without a client context, it is None.
    let plain = invoke_tail(&client, "ctx", json!({})).await;
    assert_eq!(plain.payload["client_context"], Value::Null);
}

const ERRORS: &str = r#"import decimal


def inner():
    raise ValueError("something broke")


def fails(event, context):
    inner()


def unserialisable(event, context):
    return {"a set": {1, 2}}


def exact(event, context):
    return {"price": decimal.Decimal("1.10"), "big": decimal.Decimal("12345678901234567890.5"), "text": "caf\u00e9", "n": None}


def raw_bytes(event, context):
    return b"not json"


def fine(event, context):
    return "still here"
"#;

#[tokio::test]
async fn errors_and_results_are_shaped_as_the_python_runtime_shapes_them() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    let zip = zip_of(&[("app.py", ERRORS.as_bytes(), 0o644)]);
    for handler in ["fails", "unserialisable", "exact", "raw_bytes", "fine"] {
        create_managed(
            &client,
            handler,
            &runtime,
            &format!("app.{handler}"),
            zip.clone(),
        )
        .await;
    }

    let failed = invoke_tail(&client, "fails", json!({})).await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.function_error.as_deref(), Some("Unhandled"));
    let error = failed.payload.as_object().unwrap();
    // In the order the official runtime writes them.
    let raw = String::from_utf8_lossy(&failed.raw);
    assert!(
        raw.starts_with(&format!(
            "{{\"errorMessage\": \"something broke\", \"errorType\": \"ValueError\", \"requestId\": \"{}\", \"stackTrace\": [",
            request_id(&failed.log)
        )),
        "{raw}"
    );
    assert_eq!(error.len(), 4);
    assert_eq!(error["errorMessage"], "something broke");
    assert_eq!(error["errorType"], "ValueError");
    assert_eq!(error["requestId"], request_id(&failed.log));
    let trace: Vec<&str> = error["stackTrace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    // The runtime's own frames are cut; the function's remain, innermost last.
    assert_eq!(trace.len(), 2, "{trace:?}");
    assert!(
        trace[0].starts_with("  File \"/var/task/app.py\", line 9, in fails\n"),
        "{trace:?}"
    );
    assert_eq!(
        trace[1],
        "  File \"/var/task/app.py\", line 5, in inner\n    raise ValueError(\"something broke\")\n"
    );
    // The log has the error as one event: its lines joined by newlines in one frame, as
    // AWS's framed log sink writes it, indentation as NBSP.
    let error_record = "[ERROR] ValueError: something broke\nTraceback (most recent call last):\n\u{a0}\u{a0}File \"/var/task/app.py\", line 9, in fails\n";
    assert!(failed.log.contains(error_record), "{:?}", failed.log);
    let event = log_event(&server, "fails", "[ERROR] ValueError").await;
    assert!(event.starts_with(error_record), "{event:?}");
    assert!(
        event.contains("raise ValueError"),
        "one event holds the whole trace: {event:?}"
    );

    let marshal = invoke_tail(&client, "unserialisable", json!({})).await;
    assert_eq!(marshal.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(
        marshal.payload,
        json!({
            "errorMessage": "Unable to marshal response: Object of type set is not JSON serializable",
            "errorType": "Runtime.MarshalError",
            "requestId": request_id(&marshal.log),
            "stackTrace": [],
        })
    );

    // Decimals keep their digits; python3.12 and later write non-ASCII as it is.
    let exact = invoke_tail(&client, "exact", json!({})).await;
    let text = String::from_utf8(exact.raw.clone()).unwrap();
    assert!(text.contains("\"price\": 1.10"), "{text}");
    assert!(text.contains("\"big\": 12345678901234567890.5"), "{text}");
    let minor: u32 = version_of(&runtime)[2..].parse().unwrap();
    if minor >= 12 {
        assert!(text.contains("\"text\": \"café\""), "{text}");
    } else {
        assert!(text.contains("\"text\": \"caf\\u00e9\""), "{text}");
    }
    assert_eq!(exact.payload["n"], Value::Null);

    let raw = invoke_tail(&client, "raw_bytes", json!({})).await;
    assert_eq!(raw.raw, b"not json");
    assert_eq!(raw.function_error, None);

    // Errors leave the environment warm and usable.
    let fine = invoke_tail(&client, "fine", json!({})).await;
    assert_eq!(fine.payload, json!("still here"));
    let again = invoke_tail(&client, "fails", json!({})).await;
    assert!(!again.log.contains("Init Duration"), "{}", again.log);
}

#[tokio::test]
async fn import_errors_are_reported_as_the_python_runtime_reports_them() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    let zip = zip_of(&[
        (
            "app.py",
            b"def handler(event, context):\n    return 1\n",
            0o644,
        ),
        (
            "broken.py",
            b"def handler(event, context)\n    return 1\n",
            0o644,
        ),
        ("raises.py", b"raise RuntimeError('no config')\n", 0o644),
    ]);
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "missing-module",
            "missing.handler",
            "Runtime.ImportModuleError",
            "Unable to import module 'missing': No module named 'missing'",
        ),
        (
            "missing-handler",
            "app.nope",
            "Runtime.HandlerNotFound",
            "Handler 'nope' missing on module 'app'",
        ),
        (
            "malformed",
            "app",
            "Runtime.MalformedHandlerName",
            "Bad handler 'app': not enough values to unpack (expected 2, got 1)",
        ),
        (
            "syntax",
            "broken.handler",
            "Runtime.UserCodeSyntaxError",
            "Syntax error in module 'broken': ",
        ),
        ("raises", "raises.handler", "RuntimeError", "no config"),
    ];
    for (name, handler, _, _) in cases {
        create_managed(&client, name, &runtime, handler, zip.clone()).await;
    }
    for (name, _, error_type, message) in cases {
        // Every invoke tries the init again, and fails the same way.
        for _ in 0..2 {
            let failed = invoke_tail(&client, name, json!({})).await;
            assert_eq!(
                failed.function_error.as_deref(),
                Some("Unhandled"),
                "{name}"
            );
            assert_eq!(failed.payload["errorType"], error_type, "{name}");
            let got = failed.payload["errorMessage"].as_str().unwrap();
            assert!(got.starts_with(message), "{name}: {got}");
            assert_eq!(failed.payload["requestId"], "", "{name}");
            assert!(
                failed
                    .log
                    .contains(&format!("[ERROR] {error_type}: {message}")),
                "{name}: {}",
                failed.log
            );
            assert!(
                failed.log.contains("LAMBDA_WARNING: Unhandled exception."),
                "{}",
                failed.log
            );
            assert!(
                failed
                    .log
                    .contains(&format!("Status: error\tError Type: {error_type}")),
                "{}",
                failed.log
            );
            // The invocation has its START, after the init's error and before its END.
            let log = &failed.log;
            let start = log
                .find("START RequestId: ")
                .unwrap_or_else(|| panic!("{log}"));
            assert!(log.find("[ERROR]").unwrap() < start, "{log}");
            assert!(start < log.find("END RequestId: ").unwrap(), "{log}");
        }
    }
    let syntax = invoke_tail(&client, "syntax", json!({})).await;
    assert_eq!(
        syntax.payload["stackTrace"][0]
            .as_str()
            .unwrap()
            .lines()
            .next()
            .unwrap(),
        "  File \"/var/task/broken.py\" Line 1"
    );
    let raised = invoke_tail(&client, "raises", json!({})).await;
    let trace = raised.payload["stackTrace"].as_array().unwrap();
    assert!(
        trace
            .last()
            .and_then(Value::as_str)
            .unwrap()
            .starts_with("  File \"/var/task/raises.py\", line 1, in <module>"),
        "{trace:?}"
    );
}

const PACKAGES: &str = r#"import sys

import mypkg
from mypkg.helpers import double
import vendored


def handler(event, context):
    return {"value": double(mypkg.VALUE), "vendored": vendored.X, "sys_path": sys.path}
"#;

#[tokio::test]
async fn packages_in_the_zip_import_and_sys_path_is_the_runtime_s() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    let zip = zip_of(&[
        ("app.py", PACKAGES.as_bytes(), 0o644),
        ("mypkg/__init__.py", b"VALUE = 21\n", 0o644),
        (
            "mypkg/helpers.py",
            b"def double(x):\n    return 2 * x\n",
            0o644,
        ),
        // A .pth file at the task root counts, as the runtime makes it a site directory.
        ("extra.pth", b"vendor\n", 0o644),
        ("vendor/vendored.py", b"X = 'from vendor'\n", 0o644),
    ]);
    create_managed(&client, "packages", &runtime, "app.handler", zip).await;
    let got = invoke_tail(&client, "packages", json!({})).await;
    assert_eq!(got.function_error, None, "{}", got.payload);
    assert_eq!(got.payload["value"], 42);
    assert_eq!(got.payload["vendored"], "from vendor");
    let sys_path: Vec<&str> = got.payload["sys_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    if linux_tier(&server) {
        let version = version_of(&runtime);
        let compact = version.replace('.', "");
        assert_eq!(
            sys_path,
            [
                "/var/task".to_owned(),
                format!("/opt/python/lib/python{version}/site-packages"),
                "/opt/python".to_owned(),
                "/var/runtime".to_owned(),
                format!("/var/lang/lib/python{compact}.zip"),
                format!("/var/lang/lib/python{version}"),
                format!("/var/lang/lib/python{version}/lib-dynload"),
                "/var/task/vendor".to_owned(),
                // As on AWS: site.addsitedir appends the /opt directories that do not exist.
                format!("/opt/python/lib/python{version}/site-packages"),
                "/opt/python".to_owned(),
            ],
        );
    }
}

#[tokio::test]
async fn json_log_format_writes_structured_logs() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    let code = b"import logging\n\ndef handler(event, context):\n    logging.getLogger('app').info('structured %s', 'hello', extra={'order': 7})\n    logging.getLogger().debug('filtered out at INFO')\n    raise KeyError('k')\n";
    create_managed_with(
        &client,
        "json-logs",
        &runtime,
        "app.handler",
        zip_of(&[("app.py", code, 0o644)]),
        |b| b.logging_config(LoggingConfig::builder().log_format(LogFormat::Json).build()),
    )
    .await;
    let got = invoke_tail(&client, "json-logs", json!({})).await;
    let rid = request_id(&got.log).to_owned();
    let records: Vec<Value> = got
        .log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let info = records
        .iter()
        .find(|r| r["level"] == "INFO")
        .unwrap_or_else(|| panic!("no INFO record in {}", got.log));
    assert_eq!(info["message"], "structured hello");
    assert_eq!(info["logger"], "app");
    assert_eq!(info["requestId"], rid);
    assert_eq!(info["order"], 7);
    assert!(info["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(!got.log.contains("filtered out"), "{}", got.log);
    let error = records
        .iter()
        .find(|r| r["log_level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error record in {}", got.log));
    assert_eq!(error["errorType"], "KeyError");
    assert_eq!(error["requestId"], rid);
}

/// `package` installed into the zip beside `files`, as AWS's documentation says to package
/// dependencies for a runtime (`pip install --target … --python-version X.Y
/// --only-binary=:all:`), cached per package and Python version under the target directory.
fn pip_zip(runtime: &str, package: &str, files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let version = version_of(runtime);
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{package}-{version}"));
    let marker = dir.join(".installed");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let status = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--platform",
                "manylinux2014_x86_64",
                "--implementation",
                "cp",
                "--python-version",
                version,
                "--only-binary=:all:",
                "--target",
            ])
            .arg(&dir)
            .arg(package)
            .status()
            .expect("python3 -m pip runs (./scripts/test provides a venv with pip)");
        assert!(
            status.success(),
            "pip could not install {package} from PyPI"
        );
        std::fs::write(&marker, b"").unwrap();
    }
    let mut files: Vec<(String, Vec<u8>, u32)> = files
        .iter()
        .map(|(name, bytes, mode)| (name.to_string(), bytes.to_vec(), *mode))
        .collect();
    let mut pending = vec![dir.clone()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("__pycache__") && !path.ends_with("bin") {
                    pending.push(path);
                }
            } else if path != marker {
                let name = path
                    .strip_prefix(&dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((name, std::fs::read(&path).unwrap(), 0o644));
            }
        }
    }
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(name, bytes, mode)| (name.as_str(), bytes.as_slice(), *mode))
        .collect();
    zip_of(&entries)
}

const POWERTOOLS: &str = r#"from aws_lambda_powertools import Logger

logger = Logger(service="payments")


@logger.inject_lambda_context
def handler(event, context):
    logger.info("charging", extra={"amount": event["amount"]})
    return {"charged": event["amount"]}
"#;

#[tokio::test]
async fn a_powertools_function_logs_with_its_lambda_context() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    create_managed(
        &client,
        "powertools",
        &runtime,
        "app.handler",
        pip_zip(
            &runtime,
            "aws-lambda-powertools",
            &[("app.py", POWERTOOLS.as_bytes(), 0o644)],
        ),
    )
    .await;
    for (attempt, cold) in [(1, true), (2, false)] {
        let got = invoke_tail(&client, "powertools", json!({"amount": attempt})).await;
        assert_eq!(got.function_error, None, "{}\n{}", got.payload, got.log);
        assert_eq!(got.payload, json!({"charged": attempt}));
        let record: Value = got
            .log
            .lines()
            .find(|l| l.contains("\"charging\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .unwrap_or_else(|| panic!("no powertools record in {}", got.log));
        assert_eq!(record["level"], "INFO");
        assert_eq!(record["service"], "payments");
        assert_eq!(record["amount"], attempt);
        assert_eq!(record["cold_start"], cold);
        assert_eq!(record["function_name"], "powertools");
        assert_eq!(record["function_memory_size"], "1769");
        assert_eq!(
            record["function_arn"],
            "arn:aws:lambda:us-east-1:000000000000:function:powertools"
        );
        assert_eq!(record["function_request_id"], request_id(&got.log));
    }
}

#[tokio::test]
async fn every_available_python_version_runs_a_function() {
    let server = LaminaServer::start();
    let client = server.client();
    let code = b"import sys\n\ndef handler(event, context):\n    return {'echo': event, 'version': '%d.%d' % sys.version_info[:2]}\n";
    let runtimes = available_runtimes("python");
    assert!(!runtimes.is_empty(), "no Python runtime available");
    for runtime in &runtimes {
        let name = runtime.replace('.', "-");
        create_managed(
            &client,
            &name,
            runtime,
            "app.handler",
            zip_of(&[("app.py", code, 0o644)]),
        )
        .await;
        let got = invoke_tail(&client, &name, json!({"n": 1})).await;
        assert_eq!(got.function_error, None, "{runtime}: {}", got.payload);
        assert_eq!(
            got.payload,
            json!({"echo": {"n": 1}, "version": version_of(runtime)}),
            "{runtime}"
        );
    }
}

#[tokio::test]
async fn function_variables_replace_the_defaults_and_a_wrapper_script_runs_first() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    let code = b"import os\n\ndef handler(event, context):\n    return {k: os.environ.get(k) for k in ['PATH', 'LD_LIBRARY_PATH', 'WRAPPED']}\n";
    let wrapper = b"#!/bin/sh\nexport WRAPPED=\"$1\"\nexec \"$@\"\n";
    let zip = zip_of(&[("app.py", code, 0o644), ("wrapper.sh", wrapper, 0o755)]);
    let environment = |pairs: &[(&str, &str)]| {
        let mut builder = aws_sdk_lambda::types::Environment::builder();
        for (k, v) in pairs {
            builder = builder.variables(*k, *v);
        }
        builder.build()
    };
    create_managed_with(
        &client,
        "own-paths",
        &runtime,
        "app.handler",
        zip.clone(),
        |b| {
            b.environment(environment(&[
                ("PATH", "/var/task/bin:/usr/bin"),
                ("LD_LIBRARY_PATH", "/var/task/lib"),
            ]))
        },
    )
    .await;
    create_managed_with(&client, "wrapped", &runtime, "app.handler", zip, |b| {
        b.environment(environment(&[(
            "AWS_LAMBDA_EXEC_WRAPPER",
            "/var/task/wrapper.sh",
        )]))
    })
    .await;

    let own = invoke_tail(&client, "own-paths", json!({})).await;
    assert_eq!(own.function_error, None, "{}\n{}", own.payload, own.log);
    assert_eq!(own.payload["PATH"], "/var/task/bin:/usr/bin");
    let needs_lib_dir = host_runtimes()
        .iter()
        .find(|r| r["runtime"] == runtime.as_str())
        .map(|r| r["interpreter"]["needs_lib_dir"] == true)
        .unwrap();
    if linux_tier(&server) {
        // The function's value, behind the interpreter's own library directory if it has one.
        let expected = if needs_lib_dir {
            "/var/lang/lib:/var/task/lib"
        } else {
            "/var/task/lib"
        };
        assert_eq!(own.payload["LD_LIBRARY_PATH"], expected);
    }

    let wrapped = invoke_tail(&client, "wrapped", json!({})).await;
    assert_eq!(
        wrapped.function_error, None,
        "{}\n{}",
        wrapped.payload, wrapped.log
    );
    if linux_tier(&server) {
        // The wrapper gets the interpreter and its arguments, and execs them.
        assert_eq!(
            wrapped.payload["WRAPPED"],
            format!("/var/lang/bin/{runtime}")
        );
    }
}

const ISOLATION_PROBE: &str = r#"import os
import resource
import signal
import sys
import time

invocations = 0


def handler(event, context):
    global invocations
    invocations += 1
    action = event.get("action")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "alloc":
        hoard = []
        for _ in range(event["mb"]):
            hoard.append(bytearray(1024 * 1024))
    if action == "exit":
        sys.exit(event["code"])
    with open("/tmp/probe", "w") as f:
        f.write("x" * 1000)
    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
    )
    print("probe printed", flush=True)
    return {
        "invocations": invocations,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cap_eff": status["CapEff"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "seccomp": status["Seccomp"].strip(),
        "cgroup": open("/proc/self/cgroup").read(),
        "prefix": sys.prefix,
        "executable": sys.executable,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "variable": os.environ.get("PROBE_VARIABLE"),
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "hostname": os.uname().nodename,
        "stdin": os.readlink("/proc/self/fd/0"),
        "open_fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "cmdline": open("/proc/self/cmdline").read().split("\0"),
        "main_module": sys.modules["__main__"].__name__,
        "argv": sys.argv,
        "umask": os.umask(0o022),
        "sigmask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "sigpipe": str(signal.getsignal(signal.SIGPIPE)),
        "sigchld": str(signal.getsignal(signal.SIGCHLD)),
        "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "session_leader": os.getsid(0) == os.getpid(),
        "oom_score_adj": open("/proc/self/oom_score_adj").read().strip(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "environ_keys": sorted(os.environ),
        "mounts": {
            fields[4]: fields[5]
            for fields in (line.split() for line in open("/proc/self/mountinfo"))
            if fields[4] in ("/var/task", "/opt")
        },
        "layer": open("/opt/python/probe_layer.py").read() if os.path.exists("/opt/python") else None,
        "age_ms": (
            float(open("/proc/uptime").read().split()[0])
            - int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        ) * 1000,
    }
"#;

/// How a cold start after the zygote is ready gets its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColdStart {
    /// Forked from the zygote for this cold start.
    Forked,
    /// A prepared environment, built (and its process forked) ahead of the invoke.
    Prepared,
}

/// Python cold starts fork from the runtime's zygote once it is ready (`os.getppid()`
/// is 0 there: the zygote's child that waits for the function is outside the
/// environment's PID namespace, where the init is the parent of an exec'd runtime), and
/// the forked process is isolated and limited exactly as an exec'd one.
#[tokio::test]
async fn cold_starts_fork_from_the_zygote_with_the_same_isolation_and_limits() {
    let server = LaminaServer::start_with(&["--prepared-environments", "0"]);
    isolation_and_limits_hold(&server, ColdStart::Forked).await;
}

/// Once the zygote is ready, a cold start takes an environment prepared ahead — its
/// process started before the invoke was sent — with the function's code and layers
/// mounted into it as they are into a new one, and it too is isolated and limited
/// exactly as an exec'd runtime: its memory limit is the function's, not the one it was
/// prepared with.
#[tokio::test]
async fn cold_starts_take_a_prepared_environment_with_the_same_isolation_and_limits() {
    let server = LaminaServer::start();
    isolation_and_limits_hold(&server, ColdStart::Prepared).await;
}

async fn isolation_and_limits_hold(server: &LaminaServer, expected: ColdStart) {
    if !linux_tier(server) {
        eprintln!("!!!!! SKIPPED: the zygote needs the linux tier (root) !!!!!");
        return;
    }
    let client = server.client();
    let runtime = python();
    let layer = client
        .publish_layer_version()
        .layer_name("probe-layer")
        .content(
            aws_sdk_lambda::types::LayerVersionContentInput::builder()
                .zip_file(
                    zip_of(&[("python/probe_layer.py", b"FROM = 'the layer'\n", 0o644)]).into(),
                )
                .build(),
        )
        .send()
        .await
        .expect("publish_layer_version succeeds");
    create_managed_with(
        &client,
        "forked",
        &runtime,
        "probe.handler",
        zip_of(&[("probe.py", ISOLATION_PROBE.as_bytes(), 0o644)]),
        |b| {
            b.memory_size(128)
                .timeout(30)
                .layers(layer.layer_version_arn().unwrap())
                .environment(
                    aws_sdk_lambda::types::Environment::builder()
                        .variables("PROBE_VARIABLE", "from the function")
                        .build(),
                )
        },
    )
    .await;
    let first = invoke_tail(&client, "forked", json!({})).await;
    assert_eq!(first.function_error, None, "{}", first.payload);
    assert_eq!(
        first.payload["ppid"], 1,
        "the first cold start execs the interpreter"
    );

    // Each configuration update retires the environments: the next invoke is cold.
    let mut forked = None;
    for attempt in 0..50 {
        let updated = std::time::Instant::now();
        client
            .update_function_configuration()
            .function_name("forked")
            .description(format!("attempt {attempt}"))
            .send()
            .await
            .unwrap();
        let cold = invoke_tail(&client, "forked", json!({})).await;
        assert_eq!(cold.function_error, None, "{}", cold.payload);
        // The process's start time has a resolution of one clock tick (10 ms).
        let ahead = cold.payload["age_ms"].as_f64().unwrap()
            > updated.elapsed().as_secs_f64() * 1000.0 + 20.0;
        if cold.payload["ppid"] == 0 {
            let got = if ahead {
                ColdStart::Prepared
            } else {
                ColdStart::Forked
            };
            if expected == ColdStart::Forked {
                assert_eq!(got, expected, "{}", cold.payload);
            }
            if got == expected {
                forked = Some(cold);
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let forked = forked.unwrap_or_else(|| panic!("a {expected:?} cold start within 50 attempts"));
    let probe = &forked.payload;
    // Whatever an exec'd runtime sees, the forked one sees too.
    for field in [
        "pid",
        "uid",
        "gid",
        "cap_eff",
        "cap_bnd",
        "no_new_privs",
        "seccomp",
        "cgroup",
        "prefix",
        "executable",
        "path0",
        "cwd",
        "variable",
        "function_name",
        "memory",
        "hostname",
        "stdin",
        "open_fds",
        "cmdline",
        "main_module",
        "argv",
        "umask",
        "sigmask",
        "sigpipe",
        "sigchld",
        "rlimit_nofile",
        "session_leader",
        "oom_score_adj",
        "nice",
        "mounts",
        "layer",
    ] {
        assert_eq!(
            probe[field], first.payload[field],
            "{field}: {probe} vs {}",
            first.payload
        );
    }
    assert_eq!(probe["pid"], 2, "{probe}");
    assert_eq!(probe["uid"], 993);
    assert_eq!(probe["cap_eff"], "0000000000000000");
    assert_eq!(probe["cap_bnd"], "0000000000000000");
    assert_eq!(probe["no_new_privs"], "1");
    assert_eq!(probe["seccomp"], "2");
    // The server's serving threads run at a raised priority; functions never do.
    assert_eq!(probe["nice"], 0, "{probe}");
    let cgroups = probe["cgroup"].as_str().unwrap();
    assert!(
        cgroups.lines().all(|l| l.ends_with(":/")),
        "in the environment's cgroups, seen through its cgroup namespace: {cgroups}"
    );
    assert_eq!(probe["prefix"], "/var/lang");
    assert_eq!(
        probe["executable"],
        format!("/var/lang/bin/python{}", version_of(&runtime))
    );
    assert_eq!(probe["variable"], "from the function");
    assert_eq!(probe["memory"], "128");
    assert_eq!(probe["layer"], "FROM = 'the layer'\n");
    for mount in ["/var/task", "/opt"] {
        let options = probe["mounts"][mount].as_str().unwrap_or_default();
        assert!(
            options.starts_with("ro,nosuid,nodev"),
            "{mount} read-only: {probe}"
        );
    }
    assert_eq!(probe["main_module"], "__main__");
    // The same variables, but for the per-environment ones that differ by design.
    let keys = |payload: &Value| -> Vec<String> {
        payload["environ_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(keys(probe), keys(&first.payload));
    // stdin, stdout, stderr, the Runtime API connection and listdir's own descriptor.
    assert!(
        probe["open_fds"].as_array().unwrap().len() <= 5,
        "nothing of the zygote's leaks: {probe}"
    );
    assert!(forked.log.contains("probe printed"), "{}", forked.log);
    assert!(forked.log.contains("Init Duration"), "{}", forked.log);
    let warm = invoke_tail(&client, "forked", json!({})).await;
    assert_eq!(
        warm.payload["invocations"], 2,
        "module state survives warm invokes"
    );

    // The limits hold. First in this very environment (prepared with a larger limit, if
    // prepared): exceeding MemorySize is an OOM. Then an exit is reported with its
    // status, a timeout kills it, and each time the next invoke starts afresh.
    let oom = invoke_tail(&client, "forked", json!({"action": "alloc", "mb": 400})).await;
    assert_eq!(
        oom.payload["errorType"], "Runtime.OutOfMemory",
        "{}",
        oom.payload
    );
    let after = invoke_tail(&client, "forked", json!({})).await;
    assert_eq!(after.payload["invocations"], 1, "{}", after.payload);
    let exited = invoke_tail(&client, "forked", json!({"action": "exit", "code": 3})).await;
    assert_eq!(
        exited.payload["errorType"], "Runtime.ExitError",
        "{}",
        exited.payload
    );
    assert!(
        exited.payload["errorMessage"]
            .as_str()
            .unwrap()
            .ends_with("Error: Runtime exited with error: exit status 3"),
        "{}",
        exited.payload
    );
    client
        .update_function_configuration()
        .function_name("forked")
        .timeout(2)
        .send()
        .await
        .unwrap();
    let timed_out = invoke_tail(&client, "forked", json!({"action": "sleep", "seconds": 5})).await;
    assert_eq!(
        timed_out.payload["errorType"], "Sandbox.Timedout",
        "{}",
        timed_out.payload
    );
    let after = invoke_tail(&client, "forked", json!({})).await;
    assert_eq!(after.payload["invocations"], 1, "{}", after.payload);
    assert_eq!(
        after.payload["ppid"], 0,
        "still forked from the zygote: {}",
        after.payload
    );
}

/// With `--zygote off` every cold start execs the interpreter.
#[tokio::test]
async fn zygote_off_execs_every_cold_start() {
    let server = LaminaServer::start_with(&["--zygote", "off"]);
    let client = server.client();
    let runtime = python();
    create_managed(
        &client,
        "plain",
        &runtime,
        "probe.handler",
        zip_of(&[("probe.py", ISOLATION_PROBE.as_bytes(), 0o644)]),
    )
    .await;
    for attempt in 0..3 {
        client
            .update_function_configuration()
            .function_name("plain")
            .description(format!("attempt {attempt}"))
            .send()
            .await
            .unwrap();
        let cold = invoke_tail(&client, "plain", json!({})).await;
        assert_eq!(cold.function_error, None, "{}", cold.payload);
        if linux_tier(&server) {
            assert_eq!(cold.payload["ppid"], 1, "{}", cold.payload);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// A multi-line logging record is one log event, as on Lambda (AWS's runtime frames each
/// record), while print()'s lines stay one event each.
#[tokio::test]
async fn a_multi_line_log_record_is_one_event() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    let code = b"import json\nimport logging\nlogger = logging.getLogger()\nlogger.setLevel(logging.INFO)\n\n\ndef handler(event, context):\n    print('printed one')\n    logger.info('record %s', json.dumps({'a': 1, 'b': [1, 2]}, indent=2))\n    print('printed two\\nprinted three')\n    return 'ok'\n";
    create_managed(
        &client,
        "multiline",
        &runtime,
        "app.handler",
        zip_of(&[("app.py", code, 0o644)]),
    )
    .await;
    let answer = invoke_tail(&client, "multiline", json!({})).await;
    assert_eq!(answer.payload, json!("ok"), "{}", answer.log);
    let record = log_event(&server, "multiline", "[INFO]").await;
    assert!(
        record.ends_with("\trecord {\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ]\n}\n"),
        "{record:?}"
    );
    let events = log_messages(&server.endpoint, "multiline");
    for printed in ["printed one", "printed two", "printed three"] {
        assert!(events.iter().any(|e| e == printed), "{printed}: {events:?}");
    }
    // In the order they were written.
    let position = |p: &str| events.iter().position(|e| e.starts_with(p)).unwrap();
    assert!(position("printed one") < position("[INFO]"));
    assert!(position("[INFO]") < position("printed two"));
}

/// AWS's own Python runtime client, `awslambdaric` (its HTTP is libcurl's, through
/// aws-lambda-cpp), started by a wrapper script in place of Lamina's bootstrap — as a
/// container image's entry point starts it — is served by Lamina's Runtime API: results
/// small and large (2 MB, many segments), errors with their type, and the lines the
/// handler prints.
#[tokio::test]
async fn awslambdaric_runs_a_function_against_the_runtime_api() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = python();
    let wrapper = b"#!/bin/sh\nexec \"$1\" -m awslambdaric \"$_HANDLER\"\n";
    let code = b"def handler(event, context):\n    print('ric says', context.aws_request_id)\n    if event.get('fail'):\n        raise ValueError('boom')\n    return {'echo': event, 'big': 'x' * event.get('size', 0)}\n";
    let zip = pip_zip(
        &runtime,
        "awslambdaric",
        &[("app.py", code, 0o644), ("wrapper.sh", wrapper, 0o755)],
    );
    create_managed_with(&client, "ric", &runtime, "app.handler", zip, |b| {
        b.environment(
            aws_sdk_lambda::types::Environment::builder()
                .variables("AWS_LAMBDA_EXEC_WRAPPER", "/var/task/wrapper.sh")
                .build(),
        )
    })
    .await;

    let got = invoke_tail(&client, "ric", json!({"a": 1})).await;
    assert_eq!(got.function_error, None, "{}\n{}", got.payload, got.log);
    assert_eq!(got.payload, json!({"echo": {"a": 1}, "big": ""}));
    assert!(
        got.log
            .contains(&format!("ric says {}", request_id(&got.log))),
        "{}",
        got.log
    );

    let got = invoke_tail(&client, "ric", json!({"size": 2_000_000})).await;
    assert_eq!(got.function_error, None, "{}", got.log);
    assert_eq!(got.payload["big"].as_str().map(str::len), Some(2_000_000));

    let got = invoke_tail(&client, "ric", json!({"fail": true})).await;
    assert_eq!(
        got.function_error.as_deref(),
        Some("Unhandled"),
        "{}",
        got.log
    );
    assert_eq!(got.payload["errorType"], "ValueError", "{}", got.payload);
    assert_eq!(got.payload["errorMessage"], "boom");
}
