//! Node.js functions end to end: `aws-sdk-lambda` creates and invokes zips that would run
//! unchanged on AWS's `nodejsNN.x` runtimes, in real execution environments (the linux
//! tier when run as root). Each test uses the newest Node.js runtime this machine has
//! (`lamina runtimes`); `every_available_node_version_runs_a_function` tries them all.

mod support;

use aws_sdk_lambda::types::{LogFormat, LoggingConfig};
use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

fn node() -> String {
    newest_runtime("nodejs")
}

fn request_id(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.strip_prefix("START RequestId: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no START line in {log}"))
}

/// The documentation's ES module handler, with a module-level counter.
const ESM_EXAMPLE: &str = r#"let invocations = 0;

export const handler = async (event, context) => {
  invocations += 1;
  const name = event.queryStringParameters?.name ?? "World";
  console.log(`Hello ${name}`);
  console.info("an object:", { nested: { value: 1 } });
  return {
    statusCode: 200,
    body: JSON.stringify({
      message: `Hello, ${name}!`,
      requestId: context.awsRequestId,
      remainingTimeInMillis: context.getRemainingTimeInMillis(),
      callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
      invocations,
    }),
  };
};
"#;

#[tokio::test]
async fn the_documentation_example_runs_and_keeps_its_state_warm() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    create_managed(
        &client,
        "hello",
        &runtime,
        "index.handler",
        zip_of(&[("index.mjs", ESM_EXAMPLE.as_bytes(), 0o644)]),
    )
    .await;
    let event = json!({"queryStringParameters": {"name": "Lamina"}});
    let first = invoke_tail(&client, "hello", event.clone()).await;
    assert_eq!(
        first.function_error, None,
        "{}\n{}",
        first.payload, first.log
    );
    assert_eq!(first.payload["statusCode"], 200);
    let body: Value = serde_json::from_str(first.payload["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["message"], "Hello, Lamina!");
    assert_eq!(body["requestId"], request_id(&first.log));
    let remaining = body["remainingTimeInMillis"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 30_000, "{remaining}");
    assert_eq!(body["callbackWaitsForEmptyEventLoop"], true);
    assert_eq!(body["invocations"], 1);

    let line = first
        .log
        .lines()
        .find(|l| l.ends_with("\tINFO\tHello Lamina"))
        .unwrap_or_else(|| panic!("no console.log line in {}", first.log));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), 4);
    assert!(fields[0].len() == 24 && fields[0].ends_with('Z'), "{line}");
    assert_eq!(fields[1], request_id(&first.log));
    // util.format, with newlines turned into carriage returns: one event per call.
    assert!(
        first
            .log
            .contains("\tINFO\tan object: { nested: { value: 1 } }"),
        "{}",
        first.log
    );

    let second = invoke_tail(&client, "hello", event).await;
    let body: Value = serde_json::from_str(second.payload["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["invocations"], 2);
    assert!(!second.log.contains("Init Duration"));
}

const CONTEXT: &str = r#"exports.handler = async (event, context) => ({
  awsRequestId: context.awsRequestId,
  functionName: context.functionName,
  functionVersion: context.functionVersion,
  invokedFunctionArn: context.invokedFunctionArn,
  memoryLimitInMB: context.memoryLimitInMB,
  logGroupName: context.logGroupName,
  logStreamName: context.logStreamName,
  remaining: context.getRemainingTimeInMillis(),
  clientContext: context.clientContext,
  identity: context.identity ?? null,
  callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
  traceId: process.env._X_AMZN_TRACE_ID,
  executionEnv: process.env.AWS_EXECUTION_ENV,
  nodePath: process.env.NODE_PATH,
  major: process.versions.node.split(".")[0],
  cwd: process.cwd(),
  execArgv: process.execArgv,
});
"#;

#[tokio::test]
async fn the_context_carries_every_field_the_node_runtime_gives() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    create_managed(
        &client,
        "ctx",
        &runtime,
        "index.handler",
        zip_of(&[("index.js", CONTEXT.as_bytes(), 0o644)]),
    )
    .await;
    let client_context = r#"{"client":{"installation_id":"install-1"},"custom":{"k":"v"},"env":{"platform":"test"}}"#;
    let got = invoke_tail_with(&client, "ctx", json!({}), |b| {
        b.client_context(base64::engine::general_purpose::STANDARD.encode(client_context))
    })
    .await;
    let context = &got.payload;
    assert_eq!(got.function_error, None, "{context}");
    assert_eq!(context["awsRequestId"], request_id(&got.log));
    assert_eq!(context["functionName"], "ctx");
    assert_eq!(context["functionVersion"], "$LATEST");
    assert_eq!(
        context["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:ctx"
    );
    assert_eq!(context["memoryLimitInMB"], "1769");
    assert_eq!(context["logGroupName"], "/aws/lambda/ctx");
    assert!(
        context["logStreamName"]
            .as_str()
            .unwrap()
            .contains("/[$LATEST]")
    );
    let remaining = context["remaining"].as_i64().unwrap();
    assert!(remaining > 25_000 && remaining <= 30_000, "{remaining}");
    assert_eq!(
        context["clientContext"],
        serde_json::from_str::<Value>(client_context).unwrap()
    );
    assert_eq!(context["identity"], Value::Null);
    assert_eq!(context["callbackWaitsForEmptyEventLoop"], true);
    assert!(context["traceId"].as_str().unwrap().starts_with("Root=1-"));
    assert_eq!(context["executionEnv"], format!("AWS_Lambda_{runtime}"));
    let major = runtime.trim_start_matches("nodejs").trim_end_matches(".x");
    assert_eq!(context["major"], major);
    assert_eq!(
        context["execArgv"],
        json!([
            "--expose-gc",
            "--max-http-header-size",
            "81920",
            "--max-semi-space-size=88",
            "--max-old-space-size=1593"
        ])
    );
    if linux_tier(&server) {
        assert_eq!(context["cwd"], "/var/task");
        assert_eq!(
            context["nodePath"],
            format!(
                "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:/var/task"
            )
        );
    }
}

/// Reports the heap limit and `gc` at init, during an invocation, in a Worker started by
/// the invocation and in a new vm context.
const HEAP: &str = r#"const v8 = require('node:v8');
const vm = require('node:vm');
const { Worker } = require('node:worker_threads');
const probe = () => ({ heap: v8.getHeapStatistics().heap_size_limit, gc: typeof gc });
const atInit = probe();
const inWorker = () =>
  new Promise((resolve, reject) => {
    const worker = new Worker(
      "require('node:worker_threads').parentPort.postMessage({ heap: require('node:v8').getHeapStatistics().heap_size_limit, gc: typeof gc })",
      { eval: true },
    );
    worker.once('message', resolve);
    worker.once('error', reject);
  });
exports.handler = async () => {
  gc();
  return { atInit, now: probe(), worker: await inWorker(), vm: vm.runInNewContext('typeof gc') };
};
"#;

/// The heap limit and `gc` are what AWS's command line makes them (`--expose-gc`,
/// `--max-semi-space-size`, `--max-old-space-size` from the memory size), although the
/// bootstrap relaxes those V8 flags while init runs (so that node's code cache is used),
/// and that relaxing prints nothing.
#[tokio::test]
async fn the_heap_limit_and_gc_are_as_the_node_runtime_sets_them() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    let node = host_runtimes()
        .iter()
        .find(|r| r["runtime"] == runtime.as_str())
        .and_then(|r| r["interpreter"]["executable"].as_str())
        .expect("the runtime's interpreter")
        .to_owned();
    for memory in [1769, 512] {
        let name = format!("heap-{memory}");
        create_managed_with(
            &client,
            &name,
            &runtime,
            "index.handler",
            zip_of(&[("index.js", HEAP.as_bytes(), 0o644)]),
            |b| b.memory_size(memory),
        )
        .await;
        let got = invoke_tail(&client, &name, json!({})).await;
        assert_eq!(got.function_error, None, "{}\n{}", got.payload, got.log);
        // The same flags given to the same node outside Lamina.
        let young = memory / 10;
        let output = std::process::Command::new(&node)
            .arg(format!("--max-semi-space-size={}", young / 2))
            .arg(format!("--max-old-space-size={}", memory - young))
            .args(["-p", "require('v8').getHeapStatistics().heap_size_limit"])
            .env_clear()
            .output()
            .expect("node runs");
        let expected: u64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        let reported = json!({"heap": expected, "gc": "function"});
        assert_eq!(got.payload["atInit"], reported, "{memory} MB");
        assert_eq!(got.payload["now"], reported, "{memory} MB");
        assert_eq!(got.payload["worker"], reported, "{memory} MB");
        assert_eq!(got.payload["vm"], "function", "{memory} MB");
        let logs = logs_of(&server, &name).await;
        assert!(!logs.contains("Warning"), "{logs}");
    }
}

#[tokio::test]
async fn commonjs_es_module_and_callback_handlers_all_answer() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    let zip = zip_of(&[
        // CommonJS with a callback; the answer waits for the event loop to empty.
        (
            "callback.js",
            b"exports.handler = (event, context, callback) => {\n  setTimeout(() => console.log('timer fired'), 100);\n  callback(null, { via: 'callback' });\n};\n",
            0o644,
        ),
        // The same, without waiting.
        (
            "nowait.js",
            b"exports.handler = (event, context, callback) => {\n  context.callbackWaitsForEmptyEventLoop = false;\n  setTimeout(() => console.log('late timer'), 300);\n  callback(null, { via: 'nowait' });\n};\n",
            0o644,
        ),
        (
            "succeed.js",
            b"exports.handler = (event, context) => { context.succeed({ via: 'succeed' }); };\n",
            0o644,
        ),
        // A sync handler that never answers: null when the loop empties.
        (
            "silent.js",
            b"exports.handler = (event, context) => {};\n",
            0o644,
        ),
        // `.js` under a package.json with "type": "module" is an ES module.
        ("esm/package.json", br#"{"type":"module"}"#, 0o644),
        (
            "esm/app.js",
            b"export async function handler(event) { return { via: 'type module', event }; }\n",
            0o644,
        ),
        // ES modules with top-level await (import()) and with a default export.
        (
            "tla.mjs",
            b"const via = await Promise.resolve('top-level await');\nexport const handler = async () => ({ via });\n",
            0o644,
        ),
        (
            "default.mjs",
            b"export default async () => 'default export';\nexport const named = async () => 'named';\n",
            0o644,
        ),
        // A nested export path.
        (
            "nested.js",
            b"module.exports = { handlers: { deep: async () => 'deep' } };\n",
            0o644,
        ),
    ]);
    let cases = [
        ("callback", "callback.handler", json!({"via": "callback"})),
        ("nowait", "nowait.handler", json!({"via": "nowait"})),
        ("succeed", "succeed.handler", json!({"via": "succeed"})),
        ("silent", "silent.handler", Value::Null),
        (
            "typemodule",
            "esm/app.handler",
            json!({"via": "type module", "event": {"x": 1}}),
        ),
        ("nested", "nested.handlers.deep", json!("deep")),
        ("tla", "tla.handler", json!({"via": "top-level await"})),
        ("default", "default.default", json!("default export")),
        ("named", "default.named", json!("named")),
    ];
    for (name, handler, _) in &cases {
        create_managed(&client, name, &runtime, handler, zip.clone()).await;
    }
    for (name, _, expected) in &cases {
        let got = invoke_tail(&client, name, json!({"x": 1})).await;
        assert_eq!(
            got.function_error, None,
            "{name}: {}\n{}",
            got.payload, got.log
        );
        assert_eq!(&got.payload, expected, "{name}");
        if *name == "callback" {
            // The callback's answer waited for the timer.
            let timer = got
                .log
                .find("timer fired")
                .expect("the timer ran before END");
            assert!(timer < got.log.find("END RequestId").unwrap());
        }
        if *name == "nowait" {
            assert!(!got.log.contains("late timer"), "{}", got.log);
        }
    }
    // Callback handlers log AWS's deprecation warning at init.
    let logs = logs_of(&server, "callback").await;
    assert!(
        logs.contains(
            "\tWARN\tAWS Lambda plans to remove support for callback-based function handlers"
        ),
        "{logs}"
    );
}

/// Every message a function's log group holds so far.
async fn logs_of(server: &LaminaServer, function: &str) -> String {
    // Log events are committed in batches (50 ms); give the writer a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let output = std::process::Command::new("aws")
        .args([
            "logs",
            "filter-log-events",
            "--log-group-name",
            &format!("/aws/lambda/{function}"),
            "--endpoint-url",
            &server.endpoint,
            "--region",
            "us-east-1",
            "--query",
            "events[].message",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .output()
        .expect("the AWS CLI runs (./scripts/test installs it into .venv)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let messages: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    messages.join("\n")
}

#[tokio::test]
async fn errors_are_shaped_as_the_node_runtime_shapes_them() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    let zip = zip_of(&[
        (
            "index.mjs",
            b"export const thrown = async () => { throw new TypeError('bad input'); };\nexport const rejected = () => Promise.reject('plain string');\nexport const callbackError = (e, c, cb) => cb(new Error('via callback'));\nexport const unserialisable = async () => { const a = {}; a.self = a; return a; };\nexport const fine = async () => 'fine';\nexport const notAFunction = 42;\n",
            0o644,
        ),
        ("syntax.js", b"exports.handler = async () => {\n", 0o644),
        ("throws.js", b"throw new RangeError('at init');\n", 0o644),
        // The same failures in ES modules (loaded by require(esm) or import()).
        ("esmsyntax.mjs", b"export const handler = async () => {\n", 0o644),
        (
            "esmimport.mjs",
            b"import x from 'not-a-package';\nexport const handler = async () => x;\n",
            0o644,
        ),
        ("esmthrows.mjs", b"throw new RangeError('esm at init');\n", 0o644),
    ]);
    let invoke_cases = [
        ("thrown", "index.thrown", "TypeError", "bad input"),
        ("rejected", "index.rejected", "string", "plain string"),
        (
            "callback-error",
            "index.callbackError",
            "Error",
            "via callback",
        ),
        (
            "unserialisable",
            "index.unserialisable",
            "Error",
            "Unable to stringify response body",
        ),
    ];
    let init_cases = [
        (
            "missing-module",
            "missing.handler",
            "Runtime.ImportModuleError",
            "Error: Cannot find module 'missing'\nRequire stack:\n- /var/runtime/index.mjs",
        ),
        (
            "missing-handler",
            "index.nope",
            "Runtime.HandlerNotFound",
            "index.nope is undefined or not exported",
        ),
        (
            "not-a-function",
            "index.notAFunction",
            "Runtime.HandlerNotFound",
            "index.notAFunction is not a function",
        ),
        (
            "malformed",
            "index",
            "Runtime.MalformedHandlerName",
            "Bad handler",
        ),
        (
            "syntax",
            "syntax.handler",
            "Runtime.UserCodeSyntaxError",
            "SyntaxError: Unexpected end of input",
        ),
        ("throws", "throws.handler", "RangeError", "at init"),
        (
            "esm-syntax",
            "esmsyntax.handler",
            "Runtime.UserCodeSyntaxError",
            "SyntaxError: Unexpected end of input",
        ),
        (
            "esm-import",
            "esmimport.handler",
            "Error",
            "Cannot find package 'not-a-package' imported from /var/task/esmimport.mjs",
        ),
        (
            "esm-throws",
            "esmthrows.handler",
            "RangeError",
            "esm at init",
        ),
    ];
    for (name, handler, _, _) in invoke_cases.iter().chain(init_cases.iter()) {
        create_managed(&client, name, &runtime, handler, zip.clone()).await;
    }
    create_managed(&client, "fine", &runtime, "index.fine", zip.clone()).await;

    for (name, _, error_type, message) in invoke_cases {
        let got = invoke_tail(&client, name, json!({})).await;
        assert_eq!(got.function_error.as_deref(), Some("Unhandled"), "{name}");
        let error = got.payload.as_object().unwrap();
        // In the order the official client writes them.
        let raw = String::from_utf8_lossy(&got.raw);
        assert!(
            raw.starts_with(&format!(
                "{{\"errorType\":\"{error_type}\",\"errorMessage\":{},\"trace\":[",
                json!(message)
            )),
            "{name}: {raw}"
        );
        assert_eq!(error.len(), 3, "{name}");
        assert_eq!(error["errorType"], error_type, "{name}");
        assert_eq!(error["errorMessage"], message, "{name}");
        if error_type != "string" {
            assert_eq!(
                error["trace"][0],
                format!("{error_type}: {message}"),
                "{name}"
            );
        } else {
            assert_eq!(error["trace"], json!([]));
        }
        assert!(
            got.log.contains("\tERROR\tInvoke Error \t{\"errorType\":"),
            "{name}: {}",
            got.log
        );
    }
    let thrown = invoke_tail(&client, "thrown", json!({})).await;
    assert!(
        thrown.payload["trace"][1]
            .as_str()
            .unwrap()
            .contains("/var/task/index.mjs:1:"),
        "{}",
        thrown.payload
    );
    // Errors leave the environment usable.
    assert!(!thrown.log.contains("Init Duration"));

    for (name, _, error_type, message) in init_cases {
        let got = invoke_tail(&client, name, json!({})).await;
        assert_eq!(got.function_error.as_deref(), Some("Unhandled"), "{name}");
        assert_eq!(
            got.payload["errorType"], error_type,
            "{name}: {}",
            got.payload
        );
        let got_message = got.payload["errorMessage"].as_str().unwrap();
        assert!(got_message.starts_with(message), "{name}: {got_message:?}");
        assert!(
            got.log
                .contains("\tundefined\tERROR\tUncaught Exception \t{\"errorType\":"),
            "{name}: {}",
            got.log
        );
        assert!(
            got.log
                .contains(&format!("Status: error\tError Type: {error_type}")),
            "{name}: {}",
            got.log
        );
    }

    let fine = invoke_tail(&client, "fine", json!({})).await;
    assert_eq!(fine.payload, json!("fine"));
}

#[tokio::test]
async fn node_modules_in_the_zip_resolve() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    let zip = zip_of(&[
        (
            "index.js",
            b"const greet = require('greeter');\nconst { shout } = require('./lib/shout');\nexports.handler = async (event) => shout(greet(event.name));\n",
            0o644,
        ),
        ("lib/shout.js", b"exports.shout = (s) => s.toUpperCase();\n", 0o644),
        (
            "node_modules/greeter/package.json",
            br#"{"name":"greeter","main":"main.js"}"#,
            0o644,
        ),
        (
            "node_modules/greeter/main.js",
            b"module.exports = (name) => `hello ${name}`;\n",
            0o644,
        ),
        // A handler that is itself a package: resolved from the task root.
        (
            "node_modules/packaged/index.js",
            b"exports.handler = async () => 'from a package';\n",
            0o644,
        ),
    ]);
    create_managed(&client, "modules", &runtime, "index.handler", zip.clone()).await;
    create_managed(&client, "packaged", &runtime, "packaged.handler", zip).await;
    let got = invoke_tail(&client, "modules", json!({"name": "lamina"})).await;
    assert_eq!(got.payload, json!("HELLO LAMINA"), "{}", got.log);
    let got = invoke_tail(&client, "packaged", json!({})).await;
    assert_eq!(got.payload, json!("from a package"), "{}", got.log);
}

#[tokio::test]
async fn json_log_format_writes_structured_logs() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    let code = b"exports.handler = async () => {\n  console.info('structured');\n  console.debug('filtered out at INFO');\n  console.error('failed:', new Error('oops'));\n  return 1;\n};\n";
    create_managed_with(
        &client,
        "json-logs",
        &runtime,
        "index.handler",
        zip_of(&[("index.js", code, 0o644)]),
        |b| b.logging_config(LoggingConfig::builder().log_format(LogFormat::Json).build()),
    )
    .await;
    let got = invoke_tail(&client, "json-logs", json!({})).await;
    let records: Vec<Value> = got
        .log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rid = request_id(&got.log);
    assert_eq!(records.len(), 2, "{}", got.log);
    assert_eq!(records[0]["level"], "INFO");
    assert_eq!(records[0]["message"], "structured");
    assert_eq!(records[0]["requestId"], rid);
    assert_eq!(records[1]["level"], "ERROR");
    assert_eq!(records[1]["errorType"], "Error");
    assert_eq!(records[1]["errorMessage"], "oops");
}

#[tokio::test]
async fn every_available_node_version_runs_a_function() {
    let server = LaminaServer::start();
    let client = server.client();
    let code = b"exports.handler = async (event) => ({ echo: event, major: process.versions.node.split('.')[0] });\n";
    let esm_code = b"export const handler = async (event) => ({ esm: event, major: process.versions.node.split('.')[0] });\n";
    let runtimes = available_runtimes("nodejs");
    assert!(!runtimes.is_empty(), "no Node.js runtime available");
    for runtime in &runtimes {
        let name = runtime.replace('.', "-");
        create_managed(
            &client,
            &name,
            runtime,
            "index.handler",
            zip_of(&[("index.js", code, 0o644)]),
        )
        .await;
        let got = invoke_tail(&client, &name, json!({"n": 1})).await;
        let major = runtime.trim_start_matches("nodejs").trim_end_matches(".x");
        assert_eq!(
            got.payload,
            json!({"echo": {"n": 1}, "major": major}),
            "{runtime}: {}",
            got.log
        );
        // An ES module handler too: how it loads differs between versions (import() on
        // 18, require(esm) where node supports it without a warning).
        let esm_name = format!("{name}-esm");
        create_managed(
            &client,
            &esm_name,
            runtime,
            "index.handler",
            zip_of(&[("index.mjs", esm_code, 0o644)]),
        )
        .await;
        let got = invoke_tail(&client, &esm_name, json!({"n": 2})).await;
        assert_eq!(
            got.payload,
            json!({"esm": {"n": 2}, "major": major}),
            "{runtime} (ES module): {}",
            got.log
        );
    }
}

/// Each console call is one log event however many lines it has, newlines kept (AWS's
/// runtime frames each call), while process.stdout's lines stay one event each.
#[tokio::test]
async fn a_multi_line_console_call_is_one_event() {
    let server = LaminaServer::start();
    let client = server.client();
    let runtime = node();
    let code = b"exports.handler = async () => {\n  process.stdout.write('printed one\\n');\n  console.log(JSON.stringify({ a: 1, b: [1, 2] }, null, 2));\n  console.error(new Error('with a stack'));\n  process.stdout.write('printed two\\nprinted three\\n');\n  return 1;\n};\n";
    create_managed(
        &client,
        "multiline",
        &runtime,
        "index.handler",
        zip_of(&[("index.js", code, 0o644)]),
    )
    .await;
    let got = invoke_tail(&client, "multiline", json!({})).await;
    assert_eq!(got.payload, json!(1), "{}", got.log);
    let events = log_messages_once(&server.endpoint, "multiline", |e| {
        e.starts_with("printed three")
    })
    .await;
    let info = events
        .iter()
        .find(|e| e.contains("\tINFO\t"))
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(
        info.ends_with("\tINFO\t{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ]\n}\n"),
        "{info:?}"
    );
    let error = events
        .iter()
        .find(|e| e.contains("\tERROR\t"))
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(
        error.contains("Error: with a stack\n    at "),
        "the stack stays in the event: {error:?}"
    );
    let position = |p: &str| events.iter().position(|e| e.starts_with(p)).unwrap();
    assert!(position("printed one") < position("printed two"));
    for printed in ["printed one", "printed two", "printed three"] {
        assert!(events.iter().any(|e| e == printed), "{printed}: {events:?}");
    }
    let info_at = events.iter().position(|e| e.contains("\tINFO\t")).unwrap();
    assert!(position("printed one") < info_at && info_at < position("printed two"));
}
