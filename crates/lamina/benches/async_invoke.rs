//! Asynchronous invocation end to end: a real `lamina serve` (release build), the
//! official `lambda_runtime` test function, keep-alive HTTP/1.1 clients.
//!
//! `cargo bench -p lamina --bench async_invoke` prints:
//! - accepted: durable `202`s per second from `LAMINA_BENCH_CLIENTS` (default 32)
//!   clients sending `InvocationType: Event` for `LAMINA_BENCH_SECONDS` (default 5);
//! - completed: events per second the dispatcher ran to their end (from the first send
//!   to the last event's log line), with the server's concurrency limit at
//!   `LAMINA_BENCH_CONCURRENCY` (default 8), so execution stays bounded however deep the
//!   backlog;
//! - enqueue-to-start p50/p99 at a steady 100 events/s, when a warm environment is free:
//!   from the client sending the event to the function printing it (the log line's
//!   timestamp, millisecond resolution).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

#[path = "../tests/support/mod.rs"]
mod support;

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Connection {
    fn open(host: &str) -> Connection {
        let stream = TcpStream::connect(host).expect("connect to lamina");
        stream.set_nodelay(true).unwrap();
        Connection {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            host: host.to_owned(),
        }
    }

    fn request(&mut self, path: &str, extra_headers: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n{extra_headers}\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.writer.write_all(&request).expect("send");
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).expect("status");
        let status: u16 = status_line[9..12].parse().expect("status code");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).expect("body");
        (status, body)
    }

    fn send_event(&mut self, function: &str, payload: &Value) -> u16 {
        self.request(
            &format!("/2015-03-31/functions/{function}/invocations"),
            "X-Amz-Invocation-Type: Event\r\nContent-Type: application/json\r\n",
            payload.to_string().as_bytes(),
        )
        .0
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `(timestamp ms, event)` of every `EVENT` line the function printed.
fn received(host: &str, function: &str) -> Vec<(u64, Value)> {
    let mut connection = Connection::open(host);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = json!({
            "logGroupName": format!("/aws/lambda/{function}"),
            "filterPattern": "EVENT",
        });
        if let Some(token) = &token {
            request["nextToken"] = json!(token);
        }
        let (status, body) = connection.request(
            "/",
            "X-Amz-Target: Logs_20140328.FilterLogEvents\r\nContent-Type: application/x-amz-json-1.1\r\n",
            request.to_string().as_bytes(),
        );
        if status != 200 {
            return out;
        }
        let page: Value = serde_json::from_slice(&body).unwrap();
        for event in page["events"].as_array().into_iter().flatten() {
            let message = event["message"].as_str().unwrap_or_default();
            if let Some(json) = message.trim_end().strip_prefix("EVENT ")
                && let Ok(value) = serde_json::from_str(json)
            {
                out.push((event["timestamp"].as_u64().unwrap_or(0), value));
            }
        }
        match page["nextToken"].as_str() {
            Some(next) if Some(next) != token.as_deref() => token = Some(next.to_owned()),
            _ => return out,
        }
    }
}

fn wait_for(host: &str, function: &str, count: usize, limit: Duration) -> Vec<(u64, Value)> {
    let started = Instant::now();
    loop {
        let events = received(host, function);
        if events.len() >= count || started.elapsed() > limit {
            return events;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let seconds: f64 = env_or("LAMINA_BENCH_SECONDS", 5.0);
    let clients: usize = env_or("LAMINA_BENCH_CLIENTS", 32);
    let concurrency: u32 = env_or("LAMINA_BENCH_CONCURRENCY", 8);
    let server =
        support::LaminaServer::start_with(&["--concurrency-limit", &concurrency.to_string()]);
    let host = server.endpoint.trim_start_matches("http://").to_owned();
    println!("lamina async bench: sandbox {}", server.sandbox);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = server.client();
    for name in ["bulk", "steady"] {
        runtime.block_on(async {
            client
                .create_function()
                .function_name(name)
                .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
                .role(support::ROLE)
                .handler("bootstrap")
                .memory_size(256)
                .environment(
                    aws_sdk_lambda::types::Environment::builder()
                        .variables("LAMINA_TESTFN_LOG_EVENTS", "1")
                        .build(),
                )
                .code(
                    aws_sdk_lambda::types::FunctionCode::builder()
                        .zip_file(support::test_function_zip().into())
                        .build(),
                )
                .send()
                .await
                .expect("create the bench function")
        });
    }

    // Accepted and completed.
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let senders: Vec<_> = (0..clients)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || {
                let mut connection = Connection::open(&host);
                let mut accepted = 0usize;
                while Instant::now() < deadline {
                    let status =
                        connection.send_event("bulk", &json!({"action": "noop", "t": now_us()}));
                    assert_eq!(status, 202);
                    accepted += 1;
                }
                accepted
            })
        })
        .collect();
    let accepted: usize = senders.into_iter().map(|s| s.join().unwrap()).sum();
    let sending = started.elapsed();
    let start_ms = now_us() / 1000 - sending.as_millis() as u64;
    println!(
        "accepted: {accepted} durable 202s in {:.2} s = {:.0} events/s ({clients} clients)",
        sending.as_secs_f64(),
        accepted as f64 / sending.as_secs_f64()
    );
    let ran = wait_for(&host, "bulk", accepted, Duration::from_secs(600));
    let last_ms = ran.iter().map(|(ts, _)| *ts).max().unwrap_or(start_ms);
    let span = Duration::from_millis(last_ms.saturating_sub(start_ms)).max(sending);
    println!(
        "completed: {} of {accepted} events in {:.2} s = {:.0} events/s (concurrency limit {concurrency})",
        ran.len(),
        span.as_secs_f64(),
        ran.len() as f64 / span.as_secs_f64()
    );

    // Enqueue-to-start at a steady rate, warm environment free.
    let mut connection = Connection::open(&host);
    connection.send_event(
        "steady",
        &json!({"action": "noop", "t": now_us(), "warm": true}),
    );
    std::thread::sleep(Duration::from_millis(500));
    const STEADY: usize = 500;
    for _ in 0..STEADY {
        assert_eq!(
            connection.send_event("steady", &json!({"action": "noop", "t": now_us()})),
            202
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ran = wait_for(&host, "steady", STEADY + 1, Duration::from_secs(60));
    let mut latencies: Vec<i64> = ran
        .iter()
        .filter(|(_, e)| e.get("warm").is_none())
        .map(|(ts, e)| *ts as i64 - (e["t"].as_u64().unwrap() / 1000) as i64)
        .collect();
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "enqueue-to-start at 100 events/s: p50 {} ms, p99 {} ms over {} events (send → function \
         prints the event; log timestamps have millisecond resolution)",
        at(0.5),
        at(0.99),
        latencies.len()
    );
}
