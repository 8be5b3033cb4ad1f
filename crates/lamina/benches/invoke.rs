//! The invoke hot path, measured end to end: a real `lamina serve` (release build, the
//! sandbox tier it picks — linux when run as root), the official `lambda_runtime` crate
//! as the function, and a compiled keep-alive HTTP/1.1 client.
//!
//! `cargo bench -p lamina --bench invoke` prints:
//! - cold start: CreateFunction sent → first invoke answered, and the first invoke alone;
//! - warm invoke latency p50/p99 over sequential invokes on one connection;
//! - invokes/s (and p50/p99) at concurrency 1, 4 and 16, each client on its own connection.
//!
//! Set `LAMINA_BENCH_SECONDS` (default 5) for the length of each throughput run and
//! `LAMINA_BENCH_MEMORY` (default 1769, one full vCPU) for the function's memory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

// The same test function and build the integration tests use.
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "http/mod.rs"]
mod http;
use http::{Connection, ms, percentile};

fn create_function_body(name: &str, zip_base64: &str, memory: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "FunctionName": name,
        "Runtime": "provided.al2023",
        "Role": "arn:aws:iam::000000000000:role/bench",
        "Handler": "bootstrap",
        "MemorySize": memory,
        "Timeout": 30,
        "Code": { "ZipFile": zip_base64 },
    }))
    .unwrap()
}

const NOOP: &[u8] = br#"{"action":"noop"}"#;

fn invoke_path(name: &str) -> String {
    format!("/2015-03-31/functions/{name}/invocations")
}

/// `clients` threads, each invoking on its own connection for `seconds`.
fn throughput(host: &str, name: &str, clients: usize, seconds: f64) -> (f64, Vec<Duration>) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let path = invoke_path(name);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let host = host.to_owned();
            let path = path.clone();
            std::thread::spawn(move || {
                let mut connection = Connection::open(&host);
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let (status, _) = connection.request("POST", &path, NOOP);
                    latencies.push(started.elapsed());
                    assert_eq!(status, 200);
                }
                latencies
            })
        })
        .collect();
    let started = Instant::now();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / elapsed, all)
}

fn main() {
    let seconds: f64 = std::env::var("LAMINA_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let memory: u32 = std::env::var("LAMINA_BENCH_MEMORY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1769);
    let zip = support::test_function_zip();
    let zip_base64 = base64::engine::general_purpose::STANDARD.encode(&zip);

    let data = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("LAMINA_LOG", "warn,lamina=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("lamina starts");
    let stderr = BufReader::new(server.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let (host, sandbox) = loop {
        let line = lines.next().expect("lamina printed its address").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let host = rest.split_whitespace().next().unwrap().to_owned();
            let sandbox = rest.split("sandbox: ").nth(1).unwrap_or("?").to_owned();
            break (host, sandbox);
        }
    };
    std::thread::spawn(move || for _ in lines {});
    println!("lamina at {host}; sandbox: {sandbox}");
    println!(
        "function: lambda_runtime no-op, {memory} MB, zip {} bytes",
        zip.len()
    );

    // Cold starts: a new function each time, so every first invoke starts an environment.
    let mut connection = Connection::open(&host);
    let mut create_to_answer = Vec::new();
    let mut first_invoke = Vec::new();
    for i in 0..20 {
        let name = format!("cold-{i}");
        let started = Instant::now();
        let (status, body) = connection.request(
            "POST",
            "/2015-03-31/functions",
            &create_function_body(&name, &zip_base64, memory),
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let invoked = Instant::now();
        let (status, body) = connection.request("POST", &invoke_path(&name), NOOP);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, b"null");
        first_invoke.push(invoked.elapsed());
        create_to_answer.push(started.elapsed());
    }
    create_to_answer.sort();
    first_invoke.sort();
    println!(
        "cold start, create -> first invoke answered (20 functions): p50 {} p99 {}",
        ms(percentile(&create_to_answer, 0.5)),
        ms(percentile(&create_to_answer, 0.99))
    );
    println!(
        "cold start, first invoke alone:                            p50 {} p99 {}",
        ms(percentile(&first_invoke, 0.5)),
        ms(percentile(&first_invoke, 0.99))
    );

    // Warm: one connection, sequential.
    let name = "warm";
    let (status, _) = connection.request(
        "POST",
        "/2015-03-31/functions",
        &create_function_body(name, &zip_base64, memory),
    );
    assert_eq!(status, 201);
    for _ in 0..500 {
        connection.request("POST", &invoke_path(name), NOOP);
    }
    let mut warm = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let started = Instant::now();
        let (status, _) = connection.request("POST", &invoke_path(name), NOOP);
        warm.push(started.elapsed());
        assert_eq!(status, 200);
    }
    warm.sort();
    println!(
        "warm invoke, sequential (10000): p50 {} p99 {} max {}",
        ms(percentile(&warm, 0.5)),
        ms(percentile(&warm, 0.99)),
        ms(*warm.last().unwrap())
    );

    for clients in [1usize, 4, 16] {
        // Warm enough environments first: overlapping invokes each start one.
        throughput(&host, name, clients, 1.0);
        let (rate, latencies) = throughput(&host, name, clients, seconds);
        println!(
            "concurrency {clients:>2}: {rate:>8.0} invokes/s  p50 {} p99 {}",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99))
        );
    }

    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}
