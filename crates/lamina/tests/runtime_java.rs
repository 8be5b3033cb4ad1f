//! Java functions end to end: `aws-sdk-lambda` creates and invokes zips laid out as AWS's
//! Java runtimes take them (classes at the root, as an uploaded jar; `lib/*.jar`), in real
//! execution environments. The handlers are compiled here with `javac` against Lamina's
//! copy of the aws-lambda-java-core interfaces (the same packages and signatures, so the
//! classes would link against the real library too). Without a JDK the tests say so
//! loudly and pass: `lamina runtimes` says how to install one.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_lambda::types::{ApplicationLogLevel, LogFormat, LoggingConfig};
use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

const HELLO: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.LambdaLogger;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.List;

public class Hello implements RequestHandler<Hello.Person, Hello.Greeting> {
    private static int invocations = 0;

    public static class Person {
        public String name;
        private int age;
        private List<String> tags;

        public void setAge(int age) { this.age = age; }
        public void setTags(List<String> tags) { this.tags = tags; }
    }

    public static class Greeting {
        private final String message;
        private final int invocations;
        private final String requestId;
        public final boolean adult;
        public final List<String> tags;

        Greeting(String message, int invocations, String requestId, boolean adult, List<String> tags) {
            this.message = message;
            this.invocations = invocations;
            this.requestId = requestId;
            this.adult = adult;
            this.tags = tags;
        }

        public String getMessage() { return message; }
        public int getInvocations() { return invocations; }
        public String getRequestId() { return requestId; }
    }

    @Override
    public Greeting handleRequest(Person person, Context context) {
        invocations += 1;
        LambdaLogger logger = context.getLogger();
        logger.log("greeting " + person.name);
        logger.log("one call\nseveral lines");
        System.out.println("from System.out");
        return new Greeting("Hello, " + person.name + "!", invocations, context.getAwsRequestId(),
                person.age >= 18, person.tags);
    }
}
"#;

const CONTEXT_INFO: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.LinkedHashMap;
import java.util.Map;

public class ContextInfo implements RequestHandler<Map<String, Object>, Map<String, Object>> {
    @Override
    public Map<String, Object> handleRequest(Map<String, Object> event, Context context) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("event", event);
        out.put("awsRequestId", context.getAwsRequestId());
        out.put("functionName", context.getFunctionName());
        out.put("functionVersion", context.getFunctionVersion());
        out.put("invokedFunctionArn", context.getInvokedFunctionArn());
        out.put("memoryLimitInMB", context.getMemoryLimitInMB());
        out.put("remaining", context.getRemainingTimeInMillis());
        out.put("logGroupName", context.getLogGroupName());
        out.put("logStreamName", context.getLogStreamName());
        out.put("installationId", context.getClientContext() == null ? null
                : context.getClientContext().getClient().getInstallationId());
        out.put("custom", context.getClientContext() == null ? null : context.getClientContext().getCustom());
        out.put("identity", context.getIdentity() == null ? "none" : context.getIdentity().getIdentityId());
        out.put("javaVersion", System.getProperty("java.specification.version"));
        out.put("xray", System.getProperty("com.amazonaws.xray.traceHeader"));
        out.put("cwd", System.getProperty("user.dir"));
        return out;
    }
}
"#;

const STREAM: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestStreamHandler;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;

public class Stream implements RequestStreamHandler {
    @Override
    public void handleRequest(InputStream input, OutputStream output, Context context) throws IOException {
        String text = new String(input.readAllBytes(), StandardCharsets.UTF_8);
        output.write(text.toUpperCase().getBytes(StandardCharsets.UTF_8));
    }
}
"#;

const POJO: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import java.util.Map;

public class Pojo {
    private int calls = 0;

    public String greet(String name, Context context) {
        calls += 1;
        return "hi " + name + " from " + context.getFunctionName() + " (" + calls + ")";
    }

    public static int square(Integer n) {
        return n * n;
    }

    public Map<String, Object> echo(Map<String, Object> event) {
        return event;
    }
}
"#;

const FAILS: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.Map;

public class Fails implements RequestHandler<Map<String, Object>, String> {
    @Override
    public String handleRequest(Map<String, Object> event, Context context) {
        throw new IllegalArgumentException("bad input");
    }
}
"#;

const BROKEN_INIT: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;

public class BrokenInit implements RequestHandler<String, String> {
    static {
        if (Boolean.parseBoolean("true")) {
            throw new IllegalStateException("at init");
        }
    }

    @Override
    public String handleRequest(String event, Context context) {
        return event;
    }
}
"#;

const JSON_LOGS: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.LambdaLogger;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import com.amazonaws.services.lambda.runtime.logging.LogLevel;
import java.util.Map;

public class JsonLogs implements RequestHandler<Map<String, Object>, String> {
    @Override
    public String handleRequest(Map<String, Object> event, Context context) {
        LambdaLogger logger = context.getLogger();
        logger.log("without a level");
        logger.log("below the function's level", LogLevel.INFO);
        logger.log("a warning\non two lines", LogLevel.WARN);
        logger.log("raw bytes".getBytes(), LogLevel.ERROR);
        System.out.println("from System.out");
        if (event.containsKey("fail")) {
            throw new IllegalStateException("went wrong");
        }
        return "ok";
    }
}
"#;

/// The newest Java runtime available here, or None (and a loud message) without one.
fn java() -> Option<String> {
    if let Ok(chosen) = std::env::var("LAMINA_TEST_JAVA") {
        return Some(chosen);
    }
    let newest = available_runtimes("java").pop();
    if newest.is_none() {
        eprintln!(
            "\n*** SKIPPED: no Java runtime is available on this machine; `lamina runtimes` says how to install a JDK (./scripts/test and .ci/run install one) ***\n"
        );
    }
    newest
}

/// A `javac`: the available JDKs' own, then PATH's.
fn javac() -> Option<PathBuf> {
    host_runtimes()
        .iter()
        .filter(|r| r["language"] == "java" && r["status"] == "available")
        .filter_map(|r| r["interpreter"]["home"].as_str())
        .map(|home| Path::new(home).join("bin/javac"))
        .chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.join("javac")),
        )
        .find(|p| p.is_file())
}

/// `(path inside the zip, class file bytes)`.
type ClassFiles = Vec<(String, Vec<u8>)>;

/// The test handlers, compiled once.
fn handler_classes() -> Option<&'static [(String, Vec<u8>)]> {
    static CLASSES: std::sync::OnceLock<Option<ClassFiles>> = std::sync::OnceLock::new();
    CLASSES
        .get_or_init(|| {
            let Some(javac) = javac() else {
                eprintln!("\n*** SKIPPED: no javac on this machine to compile the Java test handlers ***\n");
                return None;
            };
            let dir = tempfile::tempdir().unwrap();
            let sources = dir.path().join("src/example");
            std::fs::create_dir_all(&sources).unwrap();
            let mut files = Vec::new();
            for (name, source) in [
                ("Hello", HELLO),
                ("ContextInfo", CONTEXT_INFO),
                ("Stream", STREAM),
                ("Pojo", POJO),
                ("Fails", FAILS),
                ("BrokenInit", BROKEN_INIT),
                ("JsonLogs", JSON_LOGS),
            ] {
                let file = sources.join(format!("{name}.java"));
                std::fs::write(&file, source).unwrap();
                files.push(file);
            }
            // aws-lambda-java-core as the handlers are compiled against: Lamina's copy.
            let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lamina-runtimes/bootstraps/java");
            let classes = dir.path().join("classes");
            let output = Command::new(&javac)
                .args(["--release", "11", "-d"])
                .arg(&classes)
                .arg("-sourcepath")
                .arg(&core)
                .args(&files)
                .output()
                .expect("javac runs");
            assert!(
                output.status.success(),
                "javac failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let mut found = Vec::new();
            let example = classes.join("example");
            for entry in std::fs::read_dir(&example).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                found.push((format!("example/{name}"), std::fs::read(entry.path()).unwrap()));
            }
            found.sort();
            Some(found)
        })
        .as_deref()
}

/// The handlers' classes at the zip's root: what uploading a jar gives.
fn classes_zip(classes: &[(String, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<(&str, &[u8], u32)> = classes
        .iter()
        .map(|(path, bytes)| (path.as_str(), bytes.as_slice(), 0o644))
        .collect();
    zip_of(&entries)
}

/// The handlers in `lib/handlers.jar` (a jar is a zip; no manifest is needed).
fn lib_jar_zip(classes: &[(String, Vec<u8>)]) -> Vec<u8> {
    let jar = classes_zip(classes);
    zip_of(&[("lib/handlers.jar", &jar, 0o644)])
}

fn request_id(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.strip_prefix("START RequestId: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no START line in {log}"))
}

#[tokio::test]
async fn a_request_handler_binds_a_pojo_logs_and_keeps_its_state_warm() {
    let (Some(runtime), Some(classes)) = (java(), handler_classes()) else {
        return;
    };
    let server = LaminaServer::start();
    let client = server.client();
    create_managed(
        &client,
        "hello",
        &runtime,
        "example.Hello",
        classes_zip(classes),
    )
    .await;
    let event = json!({"name": "Lamina", "age": 30, "tags": ["a", "b"], "unknown": true});
    let first = invoke_tail(&client, "hello", event.clone()).await;
    assert_eq!(
        first.function_error, None,
        "{}\n{}",
        first.payload, first.log
    );
    assert_eq!(
        first.payload,
        json!({
            "adult": true,
            "tags": ["a", "b"],
            "message": "Hello, Lamina!",
            "invocations": 1,
            "requestId": request_id(&first.log),
        }),
        "{}",
        first.log
    );
    assert!(first.log.contains("Init Duration"), "{}", first.log);
    // LambdaLogger.log and System.out both reach the log, before END.
    let end = first.log.find("END RequestId").unwrap();
    let logged = first
        .log
        .find("greeting Lamina\n")
        .expect("LambdaLogger line");
    let printed = first
        .log
        .find("from System.out\n")
        .expect("System.out line");
    assert!(logged < end && printed < end, "{}", first.log);

    // Each LambdaLogger.log call is one log event, as AWS's framed log sink makes it.
    let events = log_messages_once(&server.endpoint, "hello", |e| e.starts_with("one call")).await;
    assert!(
        events.iter().any(|e| e == "one call\nseveral lines"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "from System.out"), "{events:?}");

    let second = invoke_tail(&client, "hello", event).await;
    assert_eq!(second.payload["invocations"], 2, "{}", second.log);
    assert!(!second.log.contains("Init Duration"));
}

#[tokio::test]
async fn the_context_carries_every_field_of_the_java_context() {
    let (Some(runtime), Some(classes)) = (java(), handler_classes()) else {
        return;
    };
    let server = LaminaServer::start();
    let client = server.client();
    create_managed(
        &client,
        "ctx",
        &runtime,
        "example.ContextInfo",
        lib_jar_zip(classes),
    )
    .await;
    let client_context = r#"{"client":{"installation_id":"install-1"},"custom":{"k":"v"},"env":{"platform":"test"}}"#;
    let got = invoke_tail_with(&client, "ctx", json!({"n": 1, "f": 1.5, "s": "x"}), |b| {
        b.client_context(base64::engine::general_purpose::STANDARD.encode(client_context))
    })
    .await;
    let context = &got.payload;
    assert_eq!(got.function_error, None, "{context}\n{}", got.log);
    assert_eq!(context["event"], json!({"n": 1, "f": 1.5, "s": "x"}));
    assert_eq!(context["awsRequestId"], request_id(&got.log));
    assert_eq!(context["functionName"], "ctx");
    assert_eq!(context["functionVersion"], "$LATEST");
    assert_eq!(
        context["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:ctx"
    );
    assert_eq!(context["memoryLimitInMB"], 1769);
    assert_eq!(context["logGroupName"], "/aws/lambda/ctx");
    assert!(
        context["logStreamName"]
            .as_str()
            .unwrap()
            .contains("/[$LATEST]")
    );
    let remaining = context["remaining"].as_i64().unwrap();
    assert!(remaining > 25_000 && remaining <= 30_000, "{remaining}");
    assert_eq!(context["installationId"], "install-1");
    assert_eq!(context["custom"], json!({"k": "v"}));
    assert_eq!(context["identity"], "none");
    assert!(context["xray"].as_str().unwrap().starts_with("Root=1-"));
    let version = runtime.trim_start_matches("java");
    assert_eq!(context["javaVersion"], version);
    if linux_tier(&server) {
        assert_eq!(context["cwd"], "/var/task");
    }
}

#[tokio::test]
async fn stream_handlers_and_pojo_methods_answer_on_every_java_version() {
    let (Some(_), Some(classes)) = (java(), handler_classes()) else {
        return;
    };
    let server = LaminaServer::start();
    let client = server.client();
    for runtime in available_runtimes("java") {
        let suffix = runtime.replace('.', "-");
        let cases = [
            (
                "stream",
                "example.Stream",
                json!({"a": "b"}),
                json!({"A": "B"}),
            ),
            (
                "greet",
                "example.Pojo::greet",
                json!("lamina"),
                json!(format!("hi lamina from greet-{suffix} (1)")),
            ),
            ("square", "example.Pojo::square", json!(7), json!(49)),
            (
                "echo",
                "example.Pojo::echo",
                json!({"list": [1, "two", null, true], "nested": {"x": -2.5}}),
                json!({"list": [1, "two", null, true], "nested": {"x": -2.5}}),
            ),
        ];
        for (name, handler, event, expected) in cases {
            let function = format!("{name}-{suffix}");
            // Both layouts: classes at the root and lib/*.jar.
            let zip = if name == "stream" {
                lib_jar_zip(classes)
            } else {
                classes_zip(classes)
            };
            create_managed(&client, &function, &runtime, handler, zip).await;
            let got = invoke_tail(&client, &function, event).await;
            assert_eq!(
                got.function_error, None,
                "{function}: {}\n{}",
                got.payload, got.log
            );
            assert_eq!(got.payload, expected, "{function}: {}", got.log);
        }
        // The instance lives on between warm invokes.
        let got = invoke_tail(&client, &format!("greet-{suffix}"), json!("again")).await;
        assert_eq!(
            got.payload,
            json!(format!("hi again from greet-{suffix} (2)"))
        );
    }
}

#[tokio::test]
async fn errors_are_shaped_as_the_java_runtime_shapes_them() {
    let (Some(runtime), Some(classes)) = (java(), handler_classes()) else {
        return;
    };
    let server = LaminaServer::start();
    let client = server.client();
    let zip = classes_zip(classes);
    for (name, handler) in [
        ("fails", "example.Fails"),
        ("missing-class", "example.Missing"),
        ("missing-method", "example.Pojo::nope"),
        ("not-a-handler", "example.Pojo"),
        ("bad-input", "example.Pojo::square"),
        ("broken-init", "example.BrokenInit"),
    ] {
        create_managed(&client, name, &runtime, handler, zip.clone()).await;
    }

    let got = invoke_tail(&client, "fails", json!({})).await;
    assert_eq!(got.function_error.as_deref(), Some("Unhandled"));
    let raw = String::from_utf8_lossy(&got.raw);
    assert!(
        raw.starts_with(
            r#"{"errorMessage":"bad input","errorType":"java.lang.IllegalArgumentException","stackTrace":["example.Fails.handleRequest(Fails.java:"#
        ),
        "{raw}"
    );
    // The runtime's own frames are cut.
    assert_eq!(
        got.payload["stackTrace"].as_array().unwrap().len(),
        2,
        "{raw}"
    );
    assert!(
        got.log
            .contains("bad input: java.lang.IllegalArgumentException\njava.lang.IllegalArgumentException: bad input\n\tat example.Fails.handleRequest(Fails.java:"),
        "{}",
        got.log
    );
    // The environment stays usable.
    let again = invoke_tail(&client, "fails", json!({})).await;
    assert!(!again.log.contains("Init Duration"));

    // As the official client: these fail each invocation, without a stack trace.
    for (name, error_type, message) in [
        (
            "missing-class",
            Some("java.lang.ClassNotFoundException"),
            "Class not found: example.Missing",
        ),
        (
            "missing-method",
            None,
            "No public method named nope with appropriate method signature found on class example.Pojo",
        ),
        (
            "not-a-handler",
            None,
            "Class does not implement an appropriate handler interface: example.Pojo",
        ),
    ] {
        let got = invoke_tail(&client, name, json!({})).await;
        assert_eq!(got.function_error.as_deref(), Some("Unhandled"), "{name}");
        let mut expected = json!({"errorMessage": message});
        if let Some(error_type) = error_type {
            expected["errorType"] = json!(error_type);
        }
        assert_eq!(got.payload, expected, "{name}: {}", got.log);
        assert!(got.log.contains(message), "{name}: {}", got.log);
    }

    let got = invoke_tail(&client, "bad-input", json!({"not": "a number"})).await;
    assert_eq!(got.payload["errorType"], "java.lang.RuntimeException");
    assert_eq!(
        got.payload["errorMessage"],
        "An error occurred during JSON parsing"
    );

    // A static initialiser that throws fails the init.
    let got = invoke_tail(&client, "broken-init", json!("x")).await;
    assert_eq!(got.function_error.as_deref(), Some("Unhandled"));
    assert_eq!(
        got.payload,
        json!({
            "errorMessage": "Error loading class example.BrokenInit",
            "errorType": "java.lang.ExceptionInInitializerError"
        }),
        "{}",
        got.log
    );
    assert!(
        got.log
            .contains("Caused by: java.lang.IllegalStateException: at init"),
        "{}",
        got.log
    );
}

#[tokio::test]
async fn a_java_runtime_of_another_version_runs_only_when_mapped() {
    let Some(runtime) = java() else {
        return;
    };
    let home = host_runtimes()
        .iter()
        .find(|r| r["runtime"] == runtime.as_str())
        .and_then(|r| r["interpreter"]["home"].as_str())
        .unwrap()
        .to_owned();
    let other = if runtime == "java21" {
        "java11"
    } else {
        "java21"
    };
    if available_runtimes("java").iter().any(|r| r == other) {
        return;
    }
    let mapped = format!("{other}~={home}");
    let output = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["runtimes", "--json", "--runtime", &mapped])
        .output()
        .unwrap();
    assert!(output.status.success());
    let entries: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let entry = entries.iter().find(|e| e["runtime"] == other).unwrap();
    assert_eq!(entry["status"], "available");
    assert_eq!(entry["interpreter"]["version_mismatch"], true);
}

#[tokio::test]
async fn java_runs_in_the_process_tier_from_host_paths() {
    let (Some(runtime), Some(classes)) = (java(), handler_classes()) else {
        return;
    };
    let server = LaminaServer::start_with(&["--sandbox", "process"]);
    let client = server.client();
    create_managed(
        &client,
        "square",
        &runtime,
        "example.Pojo::square",
        lib_jar_zip(classes),
    )
    .await;
    let got = invoke_tail(&client, "square", json!(12)).await;
    assert_eq!(got.payload, json!(144), "{}", got.log);
}

const RECORDS: &str = r#"package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.List;
import java.util.Map;

public class Records implements RequestHandler<Records.Order, Records.Receipt> {
    public record Line(String sku, int quantity) {}

    public record Order(String id, List<Line> lines, Map<String, String> notes, boolean express, long placedAt) {}

    public record Receipt(String orderId, int items, boolean express, long placedAt, Line first, String note) {}

    @Override
    public Receipt handleRequest(Order order, Context context) {
        int items = order.lines().stream().mapToInt(Line::quantity).sum();
        String note = order.notes() == null ? null : order.notes().get("gift");
        return new Receipt(order.id(), items, order.express(), order.placedAt(), order.lines().get(0), note);
    }
}
"#;

/// Java 16's records bind as Jackson binds them in AWS's runtime: components by name
/// through the canonical constructor in, components through the accessors out.
#[tokio::test]
async fn records_bind_in_and_out_on_java_17_and_later() {
    let Some(javac) = javac() else {
        eprintln!("\n*** SKIPPED: no javac on this machine ***\n");
        return;
    };
    let runtime = available_runtimes("java").into_iter().rfind(|r| {
        r.trim_start_matches("java")
            .parse::<u32>()
            .is_ok_and(|v| v >= 17)
    });
    let Some(runtime) = runtime else {
        eprintln!("\n*** SKIPPED: no Java 17 or later runtime on this machine ***\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("Records.java");
    std::fs::write(&source, RECORDS).unwrap();
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lamina-runtimes/bootstraps/java");
    let classes = dir.path().join("classes");
    let output = Command::new(&javac)
        .args(["--release", "17", "-d"])
        .arg(&classes)
        .arg("-sourcepath")
        .arg(&core)
        .arg(&source)
        .output()
        .expect("javac runs");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("release version 17 not supported"),
            "javac failed: {stderr}"
        );
        eprintln!("\n*** SKIPPED: this javac cannot compile for Java 17 ***\n");
        return;
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(classes.join("example")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        files.push((
            format!("example/{name}"),
            std::fs::read(entry.path()).unwrap(),
        ));
    }
    let server = LaminaServer::start();
    let client = server.client();
    create_managed(
        &client,
        "records",
        &runtime,
        "example.Records",
        classes_zip(&files),
    )
    .await;
    let answer = invoke_tail(
        &client,
        "records",
        json!({
            "id": "o-1",
            "lines": [{"sku": "a", "quantity": 2}, {"sku": "b", "quantity": 3}],
            "notes": {"gift": "yes"},
            "placedAt": 1_700_000_000_000_i64,
            "unknown": "ignored"
        }),
    )
    .await;
    assert_eq!(
        answer.function_error, None,
        "{}\n{}",
        answer.payload, answer.log
    );
    assert_eq!(
        answer.payload,
        json!({
            "orderId": "o-1",
            "items": 5,
            "express": false,
            "placedAt": 1_700_000_000_000_i64,
            "first": {"sku": "a", "quantity": 2},
            "note": "yes"
        })
    );
}

/// LoggingConfig LogFormat=JSON: LambdaLogger writes the official client's records
/// (`{"timestamp","message","level","AWSRequestId"}`, level UNDEFINED without one), leveled
/// calls below the application log level are dropped, byte[] messages stay raw, System.out
/// stays text, and an uncaught exception is an ERROR record whose message holds the trace.
#[tokio::test]
async fn json_log_format_writes_the_java_clients_records() {
    let (Some(runtime), Some(classes)) = (java(), handler_classes()) else {
        return;
    };
    let server = LaminaServer::start();
    let client = server.client();
    create_managed_with(
        &client,
        "json-logs",
        &runtime,
        "example.JsonLogs",
        classes_zip(classes),
        |b| {
            b.logging_config(
                LoggingConfig::builder()
                    .log_format(LogFormat::Json)
                    .application_log_level(ApplicationLogLevel::Warn)
                    .build(),
            )
        },
    )
    .await;
    let got = invoke_tail(&client, "json-logs", json!({})).await;
    assert_eq!(got.payload, json!("ok"), "{}", got.log);
    let rid = request_id(&got.log).to_owned();
    // In the order of the client's StructuredLogMessage fields, as Gson writes them.
    let records = json_log_records(
        &got.log,
        &["timestamp", "message", "level", "AWSRequestId"],
        "AWSRequestId",
        &rid,
    );
    assert_eq!(records.len(), 2, "{}", got.log);
    assert_eq!(records[0]["message"], "without a level");
    assert_eq!(records[0]["level"], "UNDEFINED");
    assert_eq!(records[1]["message"], "a warning\non two lines");
    assert_eq!(records[1]["level"], "WARN");
    assert!(
        !got.log.contains("below the function's level"),
        "{}",
        got.log
    );
    assert!(got.log.contains("\nraw bytes"), "{}", got.log);
    assert!(got.log.contains("\nfrom System.out\n"), "{}", got.log);

    // One event per call: the two-line message is one record in the log group.
    let events =
        log_messages_once(&server.endpoint, "json-logs", |e| e.contains("a warning")).await;
    let warning = events
        .iter()
        .find(|e| e.contains("a warning"))
        .unwrap_or_else(|| panic!("{events:?}"));
    let warning: Value = serde_json::from_str(warning).unwrap();
    assert_eq!(warning["message"], "a warning\non two lines");

    let failed = invoke_tail(&client, "json-logs", json!({"fail": true})).await;
    assert_eq!(failed.function_error.as_deref(), Some("Unhandled"));
    let error: Value = failed
        .log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR record in {}", failed.log));
    assert_eq!(error["AWSRequestId"], request_id(&failed.log));
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("went wrong: java.lang.IllegalStateException\njava.lang.IllegalStateException: went wrong\n\tat example.JsonLogs.handleRequest("),
        "{message}"
    );
}
