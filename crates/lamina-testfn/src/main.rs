//! A `provided.al2023` function on the official `lambda_runtime` crate: Lamina's tests
//! deploy it as `bootstrap` to prove real runtime clients work unchanged, and drive its
//! behaviour through the event's `action`.
//!
//! Actions: `echo` (returns the event), `noop` (returns null), `context`, `env`, `count`
//! (module state survives warm invokes), `error`, `sleep {ms}`, `exit {code}`,
//! `alloc {mb}`, `print {lines}`, `write_tmp {mb}`, `big_response {bytes}`, `probe`
//! (what the sandbox lets it see and do), `connect {addr}`, `read {path}` (a file's text,
//! e.g. one a layer put under `/opt`). With `LAMINA_TESTFN_LOG_EVENTS` set it prints
//! every event as `EVENT <json>`.

use std::sync::atomic::{AtomicU64, Ordering};

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    // Asynchronous tests read what a function received from its log.
    if std::env::var_os("LAMINA_TESTFN_LOG_EVENTS").is_some() {
        println!("EVENT {payload}");
    }
    let count = INVOCATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    let action = payload
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("echo")
        .to_owned();
    let number = |key: &str| payload.get(key).and_then(Value::as_u64).unwrap_or(0);
    match action.as_str() {
        "noop" => Ok(Value::Null),
        "echo" => Ok(payload),
        "count" => Ok(json!({ "count": count })),
        "context" => Ok(json!({
            "request_id": context.request_id,
            "deadline_ms": context.deadline,
            "invoked_function_arn": context.invoked_function_arn,
            "client_context": context.client_context.map(|c| c.custom),
            "function_name": context.env_config.function_name,
            "memory": context.env_config.memory,
            "version": context.env_config.version,
            "log_stream": context.env_config.log_stream,
            "log_group": context.env_config.log_group,
        })),
        "env" => Ok(json!(
            std::env::vars().collect::<std::collections::BTreeMap<_, _>>()
        )),
        "error" => Err(payload
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the function failed")
            .into()),
        "sleep" => {
            tokio::time::sleep(std::time::Duration::from_millis(number("ms"))).await;
            Ok(json!({ "slept_ms": number("ms") }))
        }
        "exit" => std::process::exit(number("code") as i32),
        "alloc" => {
            let megabytes = number("mb") as usize;
            let mut blocks = Vec::with_capacity(megabytes);
            for _ in 0..megabytes {
                // Touch every page so the memory is really used.
                blocks.push(vec![1u8; 1024 * 1024]);
            }
            Ok(json!({ "allocated_mb": blocks.len() }))
        }
        "print" => {
            for line in payload
                .get("lines")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("{}", line.as_str().unwrap_or_default());
            }
            eprintln!("to stderr");
            Ok(json!("printed"))
        }
        "write_tmp" => Ok(json!({ "result": write_tmp(number("mb")) })),
        "big_response" => Ok(json!("x".repeat(number("bytes") as usize))),
        "probe" => Ok(probe()),
        "read" => {
            let path = payload
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match std::fs::read_to_string(path) {
                Ok(text) => Ok(json!({ "text": text })),
                Err(e) => Ok(json!({ "error": format!("{path}: {e}") })),
            }
        }
        "connect" => {
            let addr = payload
                .get("addr")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let result = std::net::TcpStream::connect_timeout(
                &addr.parse().map_err(|e| format!("bad addr {addr}: {e}"))?,
                std::time::Duration::from_millis(500),
            );
            Ok(json!({ "connected": result.is_ok(), "error": result.err().map(|e| e.to_string()) }))
        }
        other => Err(format!("unknown action {other}").into()),
    }
}

fn write_tmp(megabytes: u64) -> String {
    use std::io::Write as _;
    let mut file = match std::fs::File::create("/tmp/fill") {
        Ok(file) => file,
        Err(e) => return format!("create failed: {e}"),
    };
    let block = vec![7u8; 1024 * 1024];
    for written in 0..megabytes {
        if let Err(e) = file.write_all(&block) {
            return format!("failed after {written} MB: {e}");
        }
    }
    match file.sync_all() {
        Ok(()) => format!("wrote {megabytes} MB"),
        Err(e) => format!("sync failed: {e}"),
    }
}

fn probe() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
    };
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "uid": field("Uid:"),
        "cap_eff": field("CapEff:"),
        "no_new_privs": field("NoNewPrivs:"),
        "seccomp": field("Seccomp:"),
        "pids": pids,
        "task_writable": std::fs::write("/var/task/probe-write", b"x").is_ok(),
        "tmp_writable": std::fs::write("/tmp/probe-write", b"x").is_ok(),
        "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        "root_visible": std::path::Path::new("/root").exists(),
        "work_visible": std::path::Path::new("/work").exists(),
        "home_entries": std::fs::read_dir("/home").map(|d| d.count()).unwrap_or(0),
    })
}
