//! The real AWS CLI against the logs router on an ephemeral port: the CLI (botocore) is the
//! judge of wire compatibility, not our own client.
//!
//! Uses `$LAMINA_AWS_CLI`, else `aws` on `PATH` (`./scripts/test` installs it into `.venv`).
//! `aws logs tail` exists only in AWS CLI v2; with v1 (what `pip install awscli` gives) the
//! test runs the exact FilterLogEvents calls `tail` and `tail --follow` make instead.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lamina_logs::{LogEvent, LogStore, router};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const GROUP: &str = "/aws/lambda/hello";
const STREAM_A: &str = "2024/05/01/[$LATEST]0123456789abcdef0123456789abcdef";
const STREAM_B: &str = "2024/05/01/[$LATEST]fedcba9876543210fedcba9876543210";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Cli {
    program: String,
    endpoint: String,
    home: tempfile::TempDir,
}

impl Cli {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(["--endpoint-url", &self.endpoint, "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "AKIDLAMINATEST")
            .env("AWS_SECRET_ACCESS_KEY", "lamina-test-secret")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", self.home.path().join("config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.home.path().join("credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn run(&self, args: &[&str]) -> String {
        let output = self.command(args).output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "aws {args:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let stdout = self.run(args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("aws {args:?}: {e}: {stdout}"))
    }
}

fn messages(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

fn event(timestamp_ms: i64, message: &str) -> LogEvent {
    LogEvent {
        timestamp_ms,
        message: message.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_reads_function_logs() {
    let program = std::env::var("LAMINA_AWS_CLI").unwrap_or_else(|_| "aws".to_owned());
    let version = std::process::Command::new(&program)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the AWS CLI ({program}) is needed: {e}; run ./scripts/test or set LAMINA_AWS_CLI"
            )
        });
    let version = format!(
        "{}{}",
        String::from_utf8_lossy(&version.stdout),
        String::from_utf8_lossy(&version.stderr)
    );
    let cli_v2 = version.starts_with("aws-cli/2");

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(&dir.path().join("logs.db")).unwrap());
    let sink = store.sink();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(store)).await.unwrap();
    });
    let cli = Cli {
        program,
        endpoint: format!("http://{address}"),
        home: tempfile::tempdir().unwrap(),
    };

    let base = now_ms() - 60_000;
    sink.append(
        GROUP,
        STREAM_A,
        vec![
            event(base, "START RequestId: r1 Version: $LATEST"),
            event(base + 1, "hello from r1"),
            event(base + 2, "END RequestId: r1"),
            event(
                base + 3,
                "REPORT RequestId: r1\tDuration: 3.01 ms\tBilled Duration: 4 ms\tMemory Size: 128 MB\tMax Memory Used: 36 MB",
            ),
        ],
    );
    sink.append(
        GROUP,
        STREAM_B,
        vec![
            event(base + 10, "START RequestId: r2 Version: $LATEST"),
            event(base + 11, "[ERROR] boom in r2"),
            event(base + 12, "END RequestId: r2"),
        ],
    );
    sink.append(
        "/aws/lambda/other",
        STREAM_A,
        vec![event(base, "elsewhere")],
    );
    sink.flush_async().await.unwrap();

    // describe-log-groups, paginated by the CLI one group per request.
    let groups = cli
        .json(&[
            "logs",
            "describe-log-groups",
            "--log-group-name-prefix",
            "/aws/lambda/",
            "--page-size",
            "1",
        ])
        .await;
    let names: Vec<_> = groups["logGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["logGroupName"].as_str().unwrap())
        .collect();
    assert_eq!(names, [GROUP, "/aws/lambda/other"]);

    // describe-log-streams, newest first.
    let streams = cli
        .json(&[
            "logs",
            "describe-log-streams",
            "--log-group-name",
            GROUP,
            "--order-by",
            "LastEventTime",
            "--descending",
        ])
        .await;
    let names: Vec<_> = streams["logStreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["logStreamName"].as_str().unwrap())
        .collect();
    assert_eq!(names, [STREAM_B, STREAM_A]);
    assert_eq!(streams["logStreams"][0]["lastEventTimestamp"], base + 12);

    // get-log-events from the head of one stream.
    let events = cli
        .json(&[
            "logs",
            "get-log-events",
            "--log-group-name",
            GROUP,
            "--log-stream-name",
            STREAM_A,
            "--start-from-head",
        ])
        .await;
    assert_eq!(messages(&events)[1], "hello from r1");
    assert_eq!(messages(&events).len(), 4);
    assert!(
        events["nextForwardToken"]
            .as_str()
            .unwrap()
            .starts_with("f/")
    );

    // filter-log-events with a pattern, across streams, paginated two events per request.
    let filtered = cli
        .json(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            GROUP,
            "--filter-pattern",
            "?START ?ERROR",
            "--page-size",
            "2",
        ])
        .await;
    assert_eq!(
        messages(&filtered),
        [
            "START RequestId: r1 Version: $LATEST",
            "START RequestId: r2 Version: $LATEST",
            "[ERROR] boom in r2",
        ]
    );
    assert_eq!(filtered["events"][2]["logStreamName"], STREAM_B);
    let quoted = cli
        .json(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            GROUP,
            "--filter-pattern",
            "\"Billed Duration\" -r2",
        ])
        .await;
    assert_eq!(messages(&quoted).len(), 1);

    // Errors reach the CLI as the exceptions botocore knows.
    let missing = cli
        .command(&[
            "logs",
            "describe-log-streams",
            "--log-group-name",
            "/aws/lambda/missing",
        ])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("ResourceNotFoundException")
            && stderr.contains("The specified log group does not exist."),
        "{stderr}"
    );
    let json_pattern = cli
        .command(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            GROUP,
            "--filter-pattern",
            "{ $.level = \"error\" }",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&json_pattern.stderr);
    assert!(stderr.contains("InvalidParameterException"), "{stderr}");

    if cli_v2 {
        tail_with_cli_v2(&cli, &sink, base).await;
    } else {
        eprintln!(
            "{} has no `aws logs tail` (AWS CLI v2 only); checking the FilterLogEvents calls \
             tail makes instead",
            version.trim()
        );
        tail_calls_with_cli_v1(&cli, &sink, base).await;
    }
    server.abort();
}

/// `aws logs tail` and `aws logs tail --follow` themselves.
async fn tail_with_cli_v2(cli: &Cli, sink: &lamina_logs::LogSink, base: i64) {
    let output = cli
        .run(&["logs", "tail", GROUP, "--since", "1h", "--format", "short"])
        .await;
    assert!(output.contains("hello from r1"), "{output}");
    assert!(output.contains("[ERROR] boom in r2"), "{output}");

    // --follow polls FilterLogEvents every 5 s: run it, append while it runs, and see the
    // new event printed before killing it.
    let mut follow = cli
        .command(&[
            "logs", "tail", GROUP, "--since", "1h", "--follow", "--format", "short",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        let mut appended = false;
        while let Ok(Some(line)) = lines.next_line().await {
            printed.push(line.clone());
            if !appended && line.contains("END RequestId: r2") {
                sink.append(
                    GROUP,
                    STREAM_A,
                    vec![event(now_ms().max(base + 20), "appended while following")],
                );
                sink.flush_async().await.unwrap();
                appended = true;
            }
            if line.contains("appended while following") {
                return true;
            }
        }
        false
    })
    .await;
    follow.kill().await.unwrap();
    assert_eq!(found, Ok(true), "tail --follow printed: {printed:#?}");
}

/// What `aws logs tail` (v2) sends, through botocore v1: FilterLogEvents with
/// `interleaved` and `startTime`, then, following, the same call again with `startTime`
/// moved to the newest timestamp seen (inclusive, hence the event-id de-duplication).
async fn tail_calls_with_cli_v1(cli: &Cli, sink: &lamina_logs::LogSink, base: i64) {
    let since = (base - 1_000).to_string();
    let first = cli
        .json(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            GROUP,
            "--interleaved",
            "--start-time",
            &since,
        ])
        .await;
    assert_eq!(messages(&first).len(), 7);
    let newest = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_i64().unwrap())
        .max()
        .unwrap();

    sink.append(
        GROUP,
        STREAM_A,
        vec![event(now_ms().max(newest + 1), "appended while following")],
    );
    sink.flush_async().await.unwrap();
    let newest = newest.to_string();
    let poll = cli
        .json(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            GROUP,
            "--interleaved",
            "--start-time",
            &newest,
        ])
        .await;
    assert_eq!(
        messages(&poll),
        ["END RequestId: r2", "appended while following"]
    );
}
