//! A real `lamina serve` on an ephemeral port, with a real AWS SDK client pointed at it.
//! Every test gets its own server and data directory, removed when it ends.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};

pub struct LaminaServer {
    child: Option<Child>,
    pub endpoint: String,
    /// What the server said about its sandbox tier at start-up.
    pub sandbox: String,
    pub data_dir: PathBuf,
    // Keeps the directory alive for restarts; removed on drop.
    _temp: Option<tempfile::TempDir>,
}

impl LaminaServer {
    /// Starts a server with a fresh data directory.
    pub fn start() -> LaminaServer {
        LaminaServer::start_with(&[])
    }

    /// Starts a server with extra `lamina serve` arguments and a fresh data directory.
    pub fn start_with(args: &[&str]) -> LaminaServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut server = LaminaServer::launch(temp.path(), args);
        server._temp = Some(temp);
        server
    }

    /// Starts a server on an existing data directory (for restart tests).
    pub fn start_in(data_dir: &Path) -> LaminaServer {
        LaminaServer::launch(data_dir, &[])
    }

    /// Starts a server on an existing data directory with extra `lamina serve` arguments.
    pub fn start_in_with(data_dir: &Path, args: &[&str]) -> LaminaServer {
        LaminaServer::launch(data_dir, args)
    }

    fn launch(data_dir: &Path, args: &[&str]) -> LaminaServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("LAMINA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lamina binary starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let sandbox = rest
                        .split("sandbox: ")
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send((url, sandbox));
                    sent = true;
                }
                if std::env::var_os("LAMINA_TEST_SHOW_LOGS").is_some() {
                    eprintln!("[lamina] {line}");
                }
            }
        });
        let (endpoint, sandbox) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("lamina printed its listening address within 30 s");
        LaminaServer {
            child: Some(child),
            endpoint,
            sandbox,
            data_dir: data_dir.to_owned(),
            _temp: None,
        }
    }

    pub fn client(&self) -> aws_sdk_lambda::Client {
        client_for(&self.endpoint)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would; the data directory stays.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        for _ in 0..100 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("lamina did not exit within 5 s of SIGTERM");
    }

    /// Moves the data directory out so a restarted server can reuse it.
    pub fn take_data_dir(&mut self) -> tempfile::TempDir {
        self._temp.take().expect("owns its data dir")
    }
}

impl Drop for LaminaServer {
    /// SIGTERM, so the server tears down its environments, mounts and cgroups; SIGKILL
    /// only if it does not stop in time.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn client_for(endpoint: &str) -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "AKIDLAMINA",
            "secret",
            None,
            None,
            "tests",
        ))
        .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

pub const ROLE: &str = "arn:aws:iam::000000000000:role/lambda-role";

/// A zip archive with the given (name, contents, unix mode) entries.
pub fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    use std::io::Write as _;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, contents, mode) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        writer.start_file(*name, options).expect("zip entry");
        writer.write_all(contents).expect("zip write");
    }
    writer.finish().expect("zip finish").into_inner()
}

/// A small `provided` function whose bootstrap is a shell script.
pub fn bootstrap_zip() -> Vec<u8> {
    zip_of(&[("bootstrap", b"#!/bin/sh\necho hello\n", 0o755)])
}

pub fn sha256_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

pub async fn create_function(
    client: &aws_sdk_lambda::Client,
    name: &str,
) -> aws_sdk_lambda::operation::create_function::CreateFunctionOutput {
    client
        .create_function()
        .function_name(name)
        .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(bootstrap_zip().into())
                .build(),
        )
        .send()
        .await
        .expect("create_function succeeds")
}

/// The AWS exception name, HTTP status and message of a failed SDK call.
pub fn aws_error<E, R>(error: aws_sdk_lambda::error::SdkError<E, R>) -> (String, u16, String)
where
    E: aws_sdk_lambda::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug + HasStatus,
{
    match error {
        aws_sdk_lambda::error::SdkError::ServiceError(service) => {
            let status = service.raw().status_code();
            let err = service.err();
            (
                err.code().unwrap_or_default().to_owned(),
                status,
                err.message().unwrap_or_default().to_owned(),
            )
        }
        other => panic!("expected a service error, got {other:?}"),
    }
}

pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_lambda::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Whether the server isolates functions (the linux tier): true when tests run as root.
pub fn linux_tier(server: &LaminaServer) -> bool {
    server.sandbox.starts_with("linux")
}

/// The test function (`crates/lamina-testfn`, on the official `lambda_runtime` crate),
/// built in release mode once per test binary and zipped as `bootstrap`.
pub fn test_function_zip() -> Vec<u8> {
    static ZIP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ZIP.get_or_init(|| {
        let binary = build_test_function();
        let bytes = std::fs::read(&binary).expect("read the test function");
        zip_of(&[("bootstrap", &bytes, 0o755)])
    })
    .clone()
}

pub fn build_test_function() -> PathBuf {
    build_test_binary("lamina-testfn")
}

/// The zip of `lamina-noop-minimal`, the smallest Runtime API client (benchmarks only).
pub fn minimal_function_zip() -> Vec<u8> {
    let bytes = std::fs::read(build_test_binary("lamina-noop-minimal")).expect("read the function");
    zip_of(&[("bootstrap", &bytes, 0o755)])
}

/// Builds a binary of the `lamina-testfn` package (release) and answers its path.
fn build_test_binary(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "lamina-testfn",
            "--bin",
            name,
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "building lamina-testfn failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == name)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the test function's executable")
}

/// Minimal HTTP GET over a raw socket: the download is plain HTTP on loopback.
pub fn http_get(url: &str) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    response[split + 4..].to_vec()
}

/// `lamina runtimes --json` on this machine: what the managed-runtime tests can use.
pub fn host_runtimes() -> &'static [serde_json::Value] {
    static RUNTIMES: std::sync::OnceLock<Vec<serde_json::Value>> = std::sync::OnceLock::new();
    RUNTIMES.get_or_init(|| {
        let output = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .args(["runtimes", "--json"])
            .output()
            .expect("lamina runtimes runs");
        assert!(
            output.status.success(),
            "lamina runtimes failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("lamina runtimes --json prints JSON")
    })
}

/// Every available managed runtime of `language` (`python`, `nodejs`), oldest first.
pub fn available_runtimes(language: &str) -> Vec<String> {
    host_runtimes()
        .iter()
        .filter(|r| r["language"] == language && r["status"] == "available")
        .map(|r| r["runtime"].as_str().unwrap().to_owned())
        .collect()
}

/// The newest available runtime of `language`; the tests of that language need one.
/// `LAMINA_TEST_PYTHON=python3.9` (or `LAMINA_TEST_NODEJS=nodejs18.x`) picks another.
pub fn newest_runtime(language: &str) -> String {
    if let Ok(chosen) = std::env::var(format!("LAMINA_TEST_{}", language.to_uppercase())) {
        return chosen;
    }
    available_runtimes(language).pop().unwrap_or_else(|| {
        panic!(
            "no {language} runtime is available on this machine; `lamina runtimes` says how to \
             install one (./scripts/test and .ci/run install what CI needs)"
        )
    })
}

/// A function of a managed runtime, from a zip.
pub async fn create_managed(
    client: &aws_sdk_lambda::Client,
    name: &str,
    runtime: &str,
    handler: &str,
    zip: Vec<u8>,
) {
    create_managed_with(client, name, runtime, handler, zip, |b| b).await;
}

/// Like [`create_managed`], with the request adjusted by `adjust` first.
pub async fn create_managed_with(
    client: &aws_sdk_lambda::Client,
    name: &str,
    runtime: &str,
    handler: &str,
    zip: Vec<u8>,
    adjust: impl FnOnce(
        aws_sdk_lambda::operation::create_function::builders::CreateFunctionFluentBuilder,
    )
        -> aws_sdk_lambda::operation::create_function::builders::CreateFunctionFluentBuilder,
) {
    let request = client
        .create_function()
        .function_name(name)
        .runtime(aws_sdk_lambda::types::Runtime::from(runtime))
        .role(ROLE)
        .handler(handler)
        // A whole vCPU: cold starts at 128 MB get a fourteenth of one.
        .memory_size(1769)
        .timeout(30)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(zip.into())
                .build(),
        );
    adjust(request)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create_function {name} ({runtime}) failed: {e:?}"));
}

/// One invocation's answer, with its log tail.
#[derive(Debug)]
pub struct Invocation {
    pub status: i32,
    /// The payload as sent, and parsed (`Null` when it is not JSON).
    pub raw: Vec<u8>,
    pub payload: serde_json::Value,
    pub function_error: Option<String>,
    pub log: String,
}

/// Invokes with `LogType: Tail`.
pub async fn invoke_tail(
    client: &aws_sdk_lambda::Client,
    name: &str,
    event: serde_json::Value,
) -> Invocation {
    invoke_tail_with(client, name, event, |b| b).await
}

pub async fn invoke_tail_with(
    client: &aws_sdk_lambda::Client,
    name: &str,
    event: serde_json::Value,
    adjust: impl FnOnce(
        aws_sdk_lambda::operation::invoke::builders::InvokeFluentBuilder,
    ) -> aws_sdk_lambda::operation::invoke::builders::InvokeFluentBuilder,
) -> Invocation {
    use base64::Engine as _;
    let request = client
        .invoke()
        .function_name(name)
        .payload(aws_sdk_lambda::primitives::Blob::new(
            serde_json::to_vec(&event).unwrap(),
        ))
        .log_type(aws_sdk_lambda::types::LogType::Tail);
    let output = adjust(request)
        .send()
        .await
        .unwrap_or_else(|e| panic!("invoke {name} failed at the API level: {e:?}"));
    let raw = output
        .payload()
        .map(|p| p.as_ref().to_vec())
        .unwrap_or_default();
    Invocation {
        status: output.status_code(),
        payload: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
        raw,
        function_error: output.function_error().map(str::to_owned),
        log: output
            .log_result()
            .map(|encoded| {
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .unwrap(),
                )
                .unwrap()
            })
            .unwrap_or_default(),
    }
}

/// Every log message of a function, oldest first, through the Logs API on the same port
/// (FilterLogEvents, JSON 1.1; a plain HTTP/1.1 request keeps the test free of another SDK).
pub fn log_messages(endpoint: &str, function: &str) -> Vec<String> {
    use serde_json::{Value, json};
    use std::io::{Read as _, Write as _};
    let address = endpoint.trim_start_matches("http://");
    let mut messages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = json!({"logGroupName": format!("/aws/lambda/{function}")});
        if let Some(token) = &token {
            request["nextToken"] = json!(token);
        }
        let body = request.to_string();
        let mut stream = std::net::TcpStream::connect(address).expect("connect to lamina");
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: {address}\r\nX-Amz-Target: Logs_20140328.FilterLogEvents\r\n\
             Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let Some((head, json_body)) = response.split_once("\r\n\r\n") else {
            return messages;
        };
        if !head.starts_with("HTTP/1.1 200") {
            return messages; // no log group yet
        }
        let page: Value = serde_json::from_str(json_body).expect("FilterLogEvents answers JSON");
        for event in page["events"].as_array().into_iter().flatten() {
            messages.push(event["message"].as_str().unwrap_or_default().to_owned());
        }
        match page["nextToken"].as_str() {
            Some(next) if Some(next) != token.as_deref() => token = Some(next.to_owned()),
            _ => return messages,
        }
    }
}

/// A function's log messages once one of them satisfies `wanted` (events reach the store
/// shortly after the invocation answers), or whatever there is after 5 s.
pub async fn log_messages_once(
    endpoint: &str,
    function: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut events = Vec::new();
    for _ in 0..100 {
        events = log_messages(endpoint, function);
        if events.iter().any(|e| wanted(e)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    events
}

/// The JSON log records (lines starting with `{`) of an invocation's log tail, each checked
/// as AWS's runtimes write them: exactly the `fields` and in that order, the request id
/// under `request_id_field`, and a `yyyy-MM-ddTHH:mm:ss.SSSZ` timestamp.
pub fn json_log_records(
    log: &str,
    fields: &[&str],
    request_id_field: &str,
    request_id: &str,
) -> Vec<serde_json::Value> {
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    for (line, record) in lines.iter().zip(&records) {
        let at = |key: &str| line.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
        assert!(
            fields.windows(2).all(|pair| at(pair[0]) < at(pair[1]))
                && fields.last().is_none_or(|last| at(last) < line.len()),
            "{line}"
        );
        assert_eq!(record.as_object().unwrap().len(), fields.len(), "{line}");
        assert_eq!(record[request_id_field], request_id);
        let timestamp = record["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
            "{timestamp}"
        );
    }
    records
}
