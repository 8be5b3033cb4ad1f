//! The invoke hot path, measured end to end: a real `lamina serve` (release build, the
//! sandbox tier it picks — linux when run as root), the official `lambda_runtime` crate
//! as the function, and a compiled keep-alive HTTP/1.1 client.
//!
//! `cargo bench -p lamina --bench invoke` prints:
//! - cold start: CreateFunction sent → first invoke answered, and the first invoke alone;
//! - warm invoke latency p50/p99 over sequential invokes on one connection;
//! - invokes/s (and p50/p99) at concurrency 1, 4, 8, 16, 32 and 128, each client on its
//!   own connection, with the CPU each invoke cost the server, the functions and the clients;
//! - the time to scale a function from 0 to 64 concurrent environments;
//! - host memory per idle warm environment beyond the function's own, and whether
//!   `LAMINA_BENCH_IDLE` (default 1000) idle warm environments can be held at once.
//!
//! Before the throughput runs it prints the machine's speed at loopback TCP round trips
//! (what an invoke is made of): a rough guide to the hour's speed, which swings ~2x on a
//! shared VM (it does not follow every swing of the invoke figures).
//!
//! Set `LAMINA_BENCH_SECONDS` (default 5) for the length of each throughput run and
//! `LAMINA_BENCH_MEMORY` (default 1769, one full vCPU) for the function's memory;
//! `LAMINA_BENCH_SANDBOX` picks the sandbox tier (`linux`, `process`; default: auto).
//! `LAMINA_BENCH_CONCURRENCY` (e.g. `32` or `8,32`) limits the throughput runs to those
//! concurrencies, and `LAMINA_BENCH_ONLY=throughput` skips the cold-start, scale-out and
//! idle-environment parts (for profiling one run); `LAMINA_BENCH_ONLY=environments` runs
//! only the scale-out and idle-environment parts. `LAMINA_BENCH_FUNCTION=minimal` runs
//! `lamina-noop-minimal` (the smallest Runtime API client, blocking std I/O) instead of the
//! `lambda_runtime` function, to tell the platform's cost from the client library's (the
//! scale-out and idle parts need the test function's `sleep` and are skipped then).

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
        "Timeout": 120,
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

/// The machine's speed at the kind of work an invoke is made of, for reading the figures
/// beside it: `pairs` pairs of threads bounce a 100-byte message over loopback TCP for
/// `seconds`. Returns round trips per second and this process's CPU per round trip (both
/// ends). This VM's speed at it varies ~2x from hour to hour; an invoke is three such
/// round trips between three processes.
fn loopback_ping_pong(pairs: usize, seconds: f64) -> (f64, Duration) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu_before = own_cpu();
    let started = Instant::now();
    let ends: Vec<_> = (0..pairs)
        .map(|_| {
            let mut client = std::net::TcpStream::connect(address).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            let echo = std::thread::spawn(move || {
                let mut message = [0u8; 100];
                while server.read_exact(&mut message).is_ok() {
                    server.write_all(&message).unwrap();
                }
            });
            let bounce = std::thread::spawn(move || {
                let mut message = [7u8; 100];
                let mut round_trips = 0u64;
                while Instant::now() < deadline {
                    client.write_all(&message).unwrap();
                    client.read_exact(&mut message).unwrap();
                    round_trips += 1;
                }
                round_trips
            });
            (echo, bounce)
        })
        .collect();
    let mut round_trips = 0;
    for (echo, bounce) in ends {
        round_trips += bounce.join().unwrap();
        echo.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = own_cpu().saturating_sub(cpu_before);
    (
        round_trips as f64 / elapsed,
        cpu / u32::try_from(round_trips.max(1)).unwrap_or(u32::MAX),
    )
}

/// CPU time (user + system) of a process and all its threads, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// CPU time of every process of the functions (their executable is `bootstrap`).
fn functions_cpu() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "bootstrap")
        })
        .map(process_cpu)
        .sum()
}

/// CPU time this benchmark process (the clients) has used.
fn own_cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

/// `count` clients invoke `name` at once with an event that sleeps `sleep_ms`; returns
/// each invoke's latency.
fn burst(host: &str, name: &str, count: usize, sleep_ms: u64) -> Vec<Duration> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(count));
    let event = format!(r#"{{"action":"sleep","ms":{sleep_ms}}}"#);
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (host, path, event) = (host.to_owned(), invoke_path(name), event.clone());
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut connection = Connection::open(&host);
                    barrier.wait();
                    let started = Instant::now();
                    let (status, body) = connection.request("POST", &path, event.as_bytes());
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    started.elapsed()
                })
                .unwrap()
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// From no environment to 64 running at once: 64 simultaneous invokes of a new function
/// that each sleep 1 s; the slowest answer minus that second is when the 64th
/// environment had started and taken its invocation.
fn scale_out(host: &str, connection: &mut Connection, zip_base64: &str, memory: u32) {
    let (status, _) = connection.request(
        "POST",
        "/2015-03-31/functions",
        &create_function_body("scale", zip_base64, memory),
    );
    assert_eq!(status, 201);
    let latencies = burst(host, "scale", 64, 1000);
    let slowest = latencies.iter().max().unwrap();
    println!(
        "scale 0 -> 64 concurrent environments: {}",
        ms(slowest.saturating_sub(Duration::from_secs(1)))
    );
}

fn meminfo_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| {
            l[field.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

/// Memory charged to every environment of the server (its parent memory cgroup, found
/// from one of its environments' init processes), in kB.
fn environments_charged_kb(server_pid: u32) -> u64 {
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    // server -> spawner -> environment inits
    let init = children(server_pid).into_iter().flat_map(children).next();
    let Some(init) = init else {
        return 0;
    };
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap_or_default();
    let Some(path) = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
    else {
        return 0;
    };
    let parent = std::path::Path::new(&path).parent().unwrap().to_owned();
    std::fs::read_to_string(
        std::path::Path::new("/sys/fs/cgroup/memory")
            .join(parent.strip_prefix("/").unwrap())
            .join("memory.usage_in_bytes"),
    )
    .ok()
    .and_then(|v| v.trim().parse::<u64>().ok())
    .map_or(0, |bytes| bytes / 1024)
}

fn count_functions() -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "bootstrap")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Creates `count` environments of a 128 MB function (simultaneous invokes that sleep long
/// enough that none is reused), lets them go idle, and reports the host memory they hold
/// beyond the functions' own resident memory.
fn idle_environments(
    host: &str,
    server_pid: u32,
    connection: &mut Connection,
    zip_base64: &str,
    count: usize,
) {
    let name = format!("idle-{count}");
    let (status, _) = connection.request(
        "POST",
        "/2015-03-31/functions",
        &create_function_body(&name, zip_base64, 128),
    );
    assert_eq!(status, 201);
    let environments_before = count_functions();
    let used_before = meminfo_kb("MemTotal:") - meminfo_kb("MemAvailable:");
    let charged_before = environments_charged_kb(server_pid);
    let started = Instant::now();
    // Each sleeps until every environment has been asked for: ~10 ms per cold start.
    let sleep_ms = 3000 + 12 * count as u64;
    burst(host, &name, count, sleep_ms);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let environments = count_functions() - environments_before;
    let used = meminfo_kb("MemTotal:") - meminfo_kb("MemAvailable:") - used_before;
    let charged = environments_charged_kb(server_pid).saturating_sub(charged_before);
    println!(
        "{count} simultaneous invokes of a new 128 MB function: {environments} idle warm \
         environments held after {:.1} s; host memory {:.2} MB per environment, of which \
         charged to the environment's own cgroup {:.2} MB, overhead {:.2} MB",
        elapsed.as_secs_f64(),
        used as f64 / 1024.0 / environments.max(1) as f64,
        charged as f64 / 1024.0 / environments.max(1) as f64,
        used.saturating_sub(charged) as f64 / 1024.0 / environments.max(1) as f64,
    );
}

/// Stops the server however the bench ends, so a failed assertion does not leave a
/// `lamina serve` (and its environments) running.
struct ServerGuard(std::process::Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn main() {
    let only = std::env::var("LAMINA_BENCH_ONLY").ok();
    let only_throughput = only.as_deref() == Some("throughput");
    let only_environments = only.as_deref() == Some("environments");
    let concurrencies: Vec<usize> = std::env::var("LAMINA_BENCH_CONCURRENCY")
        .ok()
        .map(|list| {
            list.split(',')
                .map(|c| c.trim().parse().expect("LAMINA_BENCH_CONCURRENCY: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![1, 4, 8, 16, 32, 128]);
    let seconds: f64 = std::env::var("LAMINA_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let memory: u32 = std::env::var("LAMINA_BENCH_MEMORY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1769);
    let minimal = std::env::var("LAMINA_BENCH_FUNCTION").as_deref() == Ok("minimal");
    let zip = if minimal {
        support::minimal_function_zip()
    } else {
        support::test_function_zip()
    };
    let zip_base64 = base64::engine::general_purpose::STANDARD.encode(&zip);

    let data = tempfile::tempdir().unwrap();
    let server = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        // Nothing is reaped during the run, so environments can be counted.
        .args(["--keep-alive", "fixed", "--idle-timeout", "3600"])
        .args(
            std::env::var("LAMINA_BENCH_SANDBOX")
                .map(|tier| vec!["--sandbox".to_owned(), tier])
                .unwrap_or_default(),
        )
        .env("LAMINA_LOG", "warn,lamina=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("lamina starts");
    let mut server = ServerGuard(server);
    let stderr = BufReader::new(server.0.stderr.take().unwrap());
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
        "function: {} no-op, {memory} MB, zip {} bytes",
        if minimal {
            "minimal blocking Runtime API client"
        } else {
            "lambda_runtime"
        },
        zip.len()
    );

    // Cold starts: a new function each time, so every first invoke starts an environment.
    let mut connection = Connection::open(&host);
    if !only_throughput && !only_environments {
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
    }

    if !only_environments {
        warm_throughput(
            &host,
            server.0.id(),
            &mut connection,
            &zip_base64,
            memory,
            concurrencies,
            seconds,
        );
    }
    if only_throughput {
        return;
    }
    if minimal {
        // Those parts hold environments busy with the test function's `sleep` action,
        // which the minimal client does not have.
        println!("scale-out and idle environments: run without LAMINA_BENCH_FUNCTION=minimal");
        return;
    }
    scale_out(&host, &mut connection, &zip_base64, memory);
    let idle: usize = std::env::var("LAMINA_BENCH_IDLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    idle_environments(&host, server.0.id(), &mut connection, &zip_base64, 200);
    if idle > 0 {
        idle_environments(&host, server.0.id(), &mut connection, &zip_base64, idle);
    }
}

/// Warm invokes of one function: sequential latency, then throughput at each concurrency.
fn warm_throughput(
    host: &str,
    server_pid: u32,
    connection: &mut Connection,
    zip_base64: &str,
    memory: u32,
    concurrencies: Vec<usize>,
    seconds: f64,
) {
    // Warm: one connection, sequential.
    let name = "warm";
    let (status, _) = connection.request(
        "POST",
        "/2015-03-31/functions",
        &create_function_body(name, zip_base64, memory),
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

    for pairs in [1, 16] {
        let (rate, cpu) = loopback_ping_pong(pairs, 2.0);
        println!(
            "machine: loopback TCP ping-pong, {pairs:>2} pair(s) of threads: {rate:>8.0} round trips/s, {:.1} us CPU each",
            cpu.as_secs_f64() * 1e6
        );
    }
    for clients in concurrencies {
        // Warm enough environments first: overlapping invokes each start one.
        throughput(host, name, clients, 1.0);
        let cpu_before = (process_cpu(server_pid), functions_cpu(), own_cpu());
        let (rate, latencies) = throughput(host, name, clients, seconds);
        let cpu_after = (process_cpu(server_pid), functions_cpu(), own_cpu());
        let per_invoke = |before: Duration, after: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e6 / latencies.len() as f64
        };
        println!(
            "concurrency {clients:>2}: {rate:>8.0} invokes/s  p50 {} p99 {}  CPU/invoke: server {:.0} us, functions {:.0} us, clients {:.0} us",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            per_invoke(cpu_before.0, cpu_after.0),
            per_invoke(cpu_before.1, cpu_after.1),
            per_invoke(cpu_before.2, cpu_after.2),
        );
    }
}
