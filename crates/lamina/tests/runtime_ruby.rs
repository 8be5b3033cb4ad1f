//! Ruby functions end to end: `aws-sdk-lambda` creates and invokes zips that would run
//! unchanged on AWS's `rubyX.Y` runtimes, in real execution environments.
//!
//! The tests use the newest Ruby runtime `lamina runtimes` finds. Where none of the
//! versions AWS offers is installed (Debian 12 has Ruby 3.1 only), they run `ruby3.3`
//! functions on the `ruby` found on PATH, chosen explicitly with `--runtime
//! ruby3.3~=/path/to/ruby` as an operator would, and say so. Without any Ruby they say so
//! loudly and pass.

mod support;

use aws_sdk_lambda::types::{ApplicationLogLevel, LogFormat, LoggingConfig};
use serde_json::{Value, json};
use support::*;

/// The runtime to test and the server options that make it available.
fn ruby() -> Option<(String, Vec<String>)> {
    if let Ok(chosen) = std::env::var("LAMINA_TEST_RUBY") {
        return Some((chosen, Vec::new()));
    }
    if let Some(runtime) = available_runtimes("ruby").pop() {
        return Some((runtime, Vec::new()));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("ruby"))
        .find(|p| p.is_file());
    match on_path {
        Some(ruby) => {
            eprintln!(
                "note: no Ruby of a version AWS offers is installed; running ruby3.3 functions on {} (--runtime ruby3.3~={})",
                ruby.display(),
                ruby.display()
            );
            Some((
                "ruby3.3".to_owned(),
                vec![
                    "--runtime".to_owned(),
                    format!("ruby3.3~={}", ruby.display()),
                ],
            ))
        }
        None => {
            eprintln!(
                "\n*** SKIPPED: no Ruby on this machine; `lamina runtimes` says how to install one (./scripts/test and .ci/run install Debian's) ***\n"
            );
            None
        }
    }
}

fn start(args: &[String]) -> LaminaServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    LaminaServer::start_with(&args)
}

fn request_id(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.strip_prefix("START RequestId: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no START line in {log}"))
}

const FUNCTION: &str = r#"require 'json'

$invocations = 0

def handler(event:, context:)
  $invocations += 1
  puts "hello #{event['name']}"
  {
    greeting: "Hello, #{event['name']}!",
    invocations: $invocations,
    aws_request_id: context.aws_request_id,
    function_name: context.function_name,
    function_version: context.function_version,
    invoked_function_arn: context.invoked_function_arn,
    memory_limit_in_mb: context.memory_limit_in_mb,
    log_group_name: context.log_group_name,
    log_stream_name: context.log_stream_name,
    remaining: context.get_remaining_time_in_millis,
    client_context: context.client_context,
    trace_id: ENV['_X_AMZN_TRACE_ID'],
    execution_env: ENV['AWS_EXECUTION_ENV'],
    cwd: Dir.pwd,
  }
end

module Greeter
  def self.greet(event:, context:)
    "greetings, #{event}"
  end
end

def fails(event:, context:)
  raise ArgumentError, 'bad input'
end

def logs(event:, context:)
  puts "first line\nsecond line"
  puts 'a', 'b'
  Logger.new($stdout, progname: 'app').info('structured')
  $stdout.puts "plain one\nplain two"
  'logged'
end

def json_logs(event:, context:)
  logger = Logger.new($stdout)
  logger.info('below the function level')
  logger.warn("a warning\non two lines")
  logger.error(IOError.new('logged error'))
  Logger.new($stderr, level: :debug).debug('its own level')
  puts 'puts stays text'
  'logged'
end

def custom(event:, context:)
  raise IOError, 'custom failure'
end
"#;

#[tokio::test]
async fn a_ruby_handler_gets_its_context_logs_and_keeps_its_state_warm() {
    let Some((runtime, args)) = ruby() else {
        return;
    };
    let server = start(&args);
    let client = server.client();
    let zip = zip_of(&[("function.rb", FUNCTION.as_bytes(), 0o644)]);
    create_managed(&client, "hello", &runtime, "function.handler", zip.clone()).await;
    create_managed(&client, "greeter", &runtime, "function.Greeter.greet", zip).await;

    let first = invoke_tail(&client, "hello", json!({"name": "Lamina"})).await;
    assert_eq!(
        first.function_error, None,
        "{}\n{}",
        first.payload, first.log
    );
    let body = &first.payload;
    assert_eq!(body["greeting"], "Hello, Lamina!");
    assert_eq!(body["invocations"], 1);
    assert_eq!(body["aws_request_id"], request_id(&first.log));
    assert_eq!(body["function_name"], "hello");
    assert_eq!(body["function_version"], "$LATEST");
    assert_eq!(
        body["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:hello"
    );
    // A string, as the official client reads it from the environment.
    assert_eq!(body["memory_limit_in_mb"], "1769");
    assert_eq!(body["log_group_name"], "/aws/lambda/hello");
    assert!(
        body["log_stream_name"]
            .as_str()
            .unwrap()
            .contains("/[$LATEST]")
    );
    let remaining = body["remaining"].as_i64().unwrap();
    assert!(remaining > 25_000 && remaining <= 30_000, "{remaining}");
    assert_eq!(body["client_context"], Value::Null);
    assert!(body["trace_id"].as_str().unwrap().starts_with("Root=1-"));
    assert_eq!(body["execution_env"], format!("AWS_Lambda_{runtime}"));
    if linux_tier(&server) {
        assert_eq!(body["cwd"], "/var/task");
    }
    let printed = first
        .log
        .find("hello Lamina\n")
        .expect("puts reaches the log");
    assert!(printed < first.log.find("END RequestId").unwrap());

    let second = invoke_tail(&client, "hello", json!({"name": "again"})).await;
    assert_eq!(second.payload["invocations"], 2);
    assert!(!second.log.contains("Init Duration"));

    let got = invoke_tail(&client, "greeter", json!("you")).await;
    assert_eq!(got.payload, json!("greetings, you"), "{}", got.log);
}

#[tokio::test]
async fn errors_are_shaped_as_the_ruby_runtime_shapes_them() {
    let Some((runtime, args)) = ruby() else {
        return;
    };
    let server = start(&args);
    let client = server.client();
    let zip = zip_of(&[
        ("function.rb", FUNCTION.as_bytes(), 0o644),
        ("broken.rb", b"raise 'at init'\n", 0o644),
    ]);
    for (name, handler) in [
        ("fails", "function.fails"),
        ("custom", "function.custom"),
        ("missing-file", "missing.handler"),
        ("missing-method", "function.nope"),
        ("malformed", "function"),
        ("broken", "broken.handler"),
    ] {
        create_managed(&client, name, &runtime, handler, zip.clone()).await;
    }

    let got = invoke_tail(&client, "fails", json!({})).await;
    assert_eq!(got.function_error.as_deref(), Some("Unhandled"));
    let raw = String::from_utf8_lossy(&got.raw);
    assert!(
        raw.starts_with(
            r#"{"errorMessage":"bad input","errorType":"Function<ArgumentError>","stackTrace":["#
        ),
        "{raw}"
    );
    let trace = got.payload["stackTrace"].as_array().unwrap();
    assert_eq!(trace.len(), 1, "the runtime's frames are cut: {raw}");
    assert!(
        trace[0]
            .as_str()
            .unwrap()
            .contains("function.rb:33:in `fails'"),
        "{raw}"
    );
    assert!(
        got.log.contains("Error raised from handler method\n{\n  \"errorMessage\": \"bad input\",\n  \"errorType\": \"Function<ArgumentError>\","),
        "{}",
        got.log
    );
    // The environment stays warm after a StandardError.
    let again = invoke_tail(&client, "fails", json!({})).await;
    assert!(!again.log.contains("Init Duration"));

    let got = invoke_tail(&client, "custom", json!({})).await;
    assert_eq!(got.payload["errorType"], "Function<IOError>");
    assert_eq!(got.payload["errorMessage"], "custom failure");

    // A missing method is critical: answered, then the environment ends.
    let got = invoke_tail(&client, "missing-method", json!({})).await;
    assert_eq!(
        got.payload["errorType"], "Function<NoMethodError>",
        "{}",
        got.log
    );
    assert!(
        got.payload["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("undefined method `nope'"),
        "{}",
        got.payload
    );
    assert!(
        got.log.contains("Critical exception from handler"),
        "{}",
        got.log
    );

    for (name, error_type, message) in [
        (
            "missing-file",
            "Init<LoadError>",
            "cannot load such file -- missing",
        ),
        (
            "malformed",
            "Init<ArgumentError>",
            "Invalid handler [\"function\"], must be of form FILENAME.METHOD or FILENAME.CLASS.METHOD",
        ),
        ("broken", "Init<RuntimeError>", "at init"),
    ] {
        let got = invoke_tail(&client, name, json!({})).await;
        assert_eq!(got.function_error.as_deref(), Some("Unhandled"), "{name}");
        assert_eq!(got.payload["errorType"], error_type, "{name}: {}", got.log);
        assert!(
            got.payload["errorMessage"]
                .as_str()
                .unwrap()
                .starts_with(message),
            "{name}: {}",
            got.payload
        );
        assert!(
            got.log.contains("Init error when loading handler \n{\n"),
            "{name}: {}",
            got.log
        );
    }
}

#[tokio::test]
async fn ruby_runs_in_the_process_tier_from_host_paths() {
    let Some((runtime, mut args)) = ruby() else {
        return;
    };
    args.extend(["--sandbox".to_owned(), "process".to_owned()]);
    let server = start(&args);
    let client = server.client();
    let zip = zip_of(&[("function.rb", FUNCTION.as_bytes(), 0o644)]);
    create_managed(&client, "greeter", &runtime, "function.Greeter.greet", zip).await;
    let got = invoke_tail(&client, "greeter", json!("process")).await;
    assert_eq!(got.payload, json!("greetings, process"), "{}", got.log);
}

/// As the official client logs through its telemetry descriptor: each `puts` call is one
/// event (arguments joined by newlines), a Logger on $stdout writes Lambda's format, one
/// event per entry, and `$stdout.puts` writes plain lines.
#[tokio::test]
async fn puts_and_logger_entries_are_one_event_each() {
    let Some((runtime, args)) = ruby() else {
        return;
    };
    let server = start(&args);
    let client = server.client();
    let zip = zip_of(&[("function.rb", FUNCTION.as_bytes(), 0o644)]);
    create_managed(&client, "logs", &runtime, "function.logs", zip).await;
    let got = invoke_tail(&client, "logs", json!({})).await;
    assert_eq!(got.payload, json!("logged"), "{}", got.log);
    let rid = request_id(&got.log).to_owned();
    let events = log_messages_once(&server.endpoint, "logs", |e| e == "plain two").await;
    for expected in ["first line\nsecond line", "a\nb", "plain one", "plain two"] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected:?}: {events:?}"
        );
    }
    let entry = events
        .iter()
        .find(|e| e.starts_with("I, ["))
        .unwrap_or_else(|| panic!("no Logger entry in {events:?}"));
    // Lambda's formatter ends no entry with a newline: each is an event of its own.
    let suffix = format!("]  INFO {rid} -- app: structured");
    assert!(entry.ends_with(&suffix), "{entry:?}");
    // I, [2026-01-01T00:00:00.123456 #2]
    let head = &entry["I, [".len()..entry.len() - suffix.len()];
    let (time, pid) = head.split_once(" #").unwrap_or_else(|| panic!("{entry:?}"));
    assert!(time.len() == 26 && time.as_bytes()[10] == b'T', "{entry:?}");
    assert!(pid.parse::<u32>().is_ok(), "{entry:?}");
}

/// LoggingConfig LogFormat=JSON, as the official client's structured logging: a Logger on
/// $stdout/$stderr writes `{"timestamp","level","message","requestId"}` records and starts
/// at the application log level (one created with `level:` keeps it), one event per entry
/// however many lines; `puts` stays text.
#[tokio::test]
async fn json_log_format_makes_logger_entries_json_records() {
    let Some((runtime, args)) = ruby() else {
        return;
    };
    let server = start(&args);
    let client = server.client();
    let zip = zip_of(&[("function.rb", FUNCTION.as_bytes(), 0o644)]);
    create_managed_with(
        &client,
        "json-logs",
        &runtime,
        "function.json_logs",
        zip,
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
    assert_eq!(got.payload, json!("logged"), "{}", got.log);
    let rid = request_id(&got.log).to_owned();
    let records = json_log_records(
        &got.log,
        &["timestamp", "level", "message", "requestId"],
        "requestId",
        &rid,
    );
    assert_eq!(records.len(), 3, "{}", got.log);
    assert_eq!(records[0]["level"], "WARN");
    assert_eq!(records[0]["message"], "a warning\non two lines");
    assert_eq!(records[1]["level"], "ERROR");
    assert_eq!(records[1]["message"], "logged error (IOError)\n");
    assert_eq!(records[2]["level"], "DEBUG");
    assert_eq!(records[2]["message"], "its own level");
    assert!(!got.log.contains("below the function level"), "{}", got.log);

    let events = log_messages_once(&server.endpoint, "json-logs", |e| e == "puts stays text").await;
    let warning = events
        .iter()
        .find(|e| e.contains("a warning"))
        .unwrap_or_else(|| panic!("{events:?}"));
    let warning: Value = serde_json::from_str(warning).unwrap();
    assert_eq!(warning["message"], "a warning\non two lines");
    assert!(events.iter().any(|e| e == "puts stays text"), "{events:?}");
}
