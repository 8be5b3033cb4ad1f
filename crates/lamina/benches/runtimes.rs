//! Cold and warm starts of the managed runtimes, beside the interpreters' own start-up.
//!
//! `cargo bench -p lamina --bench runtimes` starts a real `lamina serve` (release build;
//! the linux tier when run as root) and, for the newest Python and Node.js runtimes this
//! machine has (`LAMINA_BENCH_RUNTIMES=python3.11,nodejs20.x` picks others), prints:
//! - the bare interpreter: `python3 -c pass` / `node -e 0` (and `python3 -S -c pass`),
//!   spawned with an empty environment and waited for, as p50/p99;
//! - cold start, CreateFunction sent → first invoke answered, over new functions, with the
//!   bare start measured again between them and the ratio of the two p50s;
//! - cold start, the first invoke after the function's environments were reset (a
//!   configuration update retires them): the environment start alone, code already
//!   unpacked; and of that, the REPORT's Init Duration (sandbox start → the runtime's
//!   first request for an invocation); back to back, and one every 100 ms (which a
//!   Python runtime's environment prepared ahead serves);
//! - warm invoke p50/p99, sequential, on one connection.
//!
//! The functions are no-op handlers at `LAMINA_BENCH_MEMORY` MB (default 1769, one vCPU);
//! `LAMINA_BENCH_SANDBOX=process` compares the process tier. Java (`java17`: a
//! `RequestHandler` compiled here with the JDK's javac; bare figure `java -version`) and
//! Ruby (`ruby -e 0`) are measured when named, e.g.
//! `LAMINA_BENCH_RUNTIMES=java17,ruby3.3 LAMINA_BENCH_ARGS="--runtime ruby3.3~=/usr/bin/ruby"`
//! (`LAMINA_BENCH_ARGS`: more `lamina serve` options, split on spaces).

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "http/mod.rs"]
mod http;
use http::{Connection, ms, percentile};

const COLD_STARTS: usize = 20;
const WARM_INVOKES: usize = 5_000;

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "p50 {} p99 {}",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.99))
    )
}

/// Spawns `program args` `n` times, timing each from spawn to exit. The environment is
/// emptied as a function's is: a host variable such as NODE_EXTRA_CA_CERTS (read at
/// node's start, ~60 ms) would otherwise weigh on the bare figure only.
fn bare_start(program: &str, args: &[&str], n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new(program)
                .args(args)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                // `java -version` writes to stderr.
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("spawns");
            assert!(status.success(), "{program} {args:?}");
            started.elapsed()
        })
        .collect()
}

struct Function {
    runtime: String,
    handler: &'static str,
    zip: Vec<u8>,
    label: String,
}

fn functions() -> Vec<(Function, String)> {
    let chosen: Vec<String> = match std::env::var("LAMINA_BENCH_RUNTIMES") {
        Ok(list) => list.split(',').map(str::to_owned).collect(),
        Err(_) => ["python", "nodejs"]
            .iter()
            .filter_map(|language| support::available_runtimes(language).pop())
            .collect(),
    };
    let mut functions = Vec::new();
    let extra = bench_args();
    for runtime in chosen {
        // Named in LAMINA_BENCH_ARGS (`--runtime ID~=PATH`), else found on the host.
        let mapped = extra.iter().find_map(|arg| {
            arg.strip_prefix(&format!("{runtime}~="))
                .or_else(|| arg.strip_prefix(&format!("{runtime}=")))
                .map(str::to_owned)
        });
        let executable = mapped.unwrap_or_else(|| {
            support::host_runtimes()
                .iter()
                .find(|r| r["runtime"] == runtime.as_str())
                .and_then(|r| r["interpreter"]["executable"].as_str())
                .unwrap_or_else(|| panic!("{runtime} is not available here"))
                .to_owned()
        });
        if runtime.starts_with("java") {
            functions.push((
                Function {
                    label: format!("{runtime} no-op RequestHandler"),
                    runtime,
                    handler: "example.Noop",
                    zip: java_noop_zip(&executable),
                },
                executable,
            ));
        } else if runtime.starts_with("ruby") {
            functions.push((
                Function {
                    label: format!("{runtime} no-op"),
                    runtime,
                    handler: "function.handler",
                    zip: support::zip_of(&[(
                        "function.rb",
                        b"def handler(event:, context:)\n  nil\nend\n",
                        0o644,
                    )]),
                },
                executable,
            ));
        } else if runtime.starts_with("python") {
            functions.push((
                Function {
                    label: format!("{runtime} no-op"),
                    runtime,
                    handler: "app.handler",
                    zip: support::zip_of(&[(
                        "app.py",
                        b"def handler(event, context):\n    return None\n",
                        0o644,
                    )]),
                },
                executable,
            ));
        } else {
            for (label, file, code) in [
                (
                    "ES module",
                    "index.mjs",
                    &b"export const handler = async () => null;\n"[..],
                ),
                (
                    "CommonJS",
                    "index.js",
                    &b"exports.handler = async () => null;\n"[..],
                ),
            ] {
                functions.push((
                    Function {
                        label: format!("{runtime} no-op, {label}"),
                        runtime: runtime.clone(),
                        handler: "index.handler",
                        zip: support::zip_of(&[(file, code, 0o644)]),
                    },
                    executable.clone(),
                ));
            }
        }
    }
    functions
}

fn bench_args() -> Vec<String> {
    std::env::var("LAMINA_BENCH_ARGS")
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A no-op `RequestHandler<Object, Object>`, compiled with the javac beside `java`
/// against Lamina's copy of aws-lambda-java-core.
fn java_noop_zip(java: &str) -> Vec<u8> {
    let javac = std::path::Path::new(java).with_file_name("javac");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("Noop.java");
    std::fs::write(
        &source,
        "package example;\n\
         import com.amazonaws.services.lambda.runtime.*;\n\
         public class Noop implements RequestHandler<Object, Object> {\n\
         public Object handleRequest(Object input, Context context) { return null; }\n}\n",
    )
    .unwrap();
    let core =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lamina-runtimes/bootstraps/java");
    let status = Command::new(&javac)
        .args(["--release", "11", "-d"])
        .arg(dir.path())
        .arg("-sourcepath")
        .arg(core)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", javac.display()));
    assert!(status.success(), "javac failed");
    let class = std::fs::read(dir.path().join("example/Noop.class")).unwrap();
    support::zip_of(&[("example/Noop.class", &class, 0o644)])
}

/// The REPORT line's `Init Duration` (environment start → runtime ready), from the log tail.
fn init_duration(headers: &[(String, String)]) -> Duration {
    let tail = headers
        .iter()
        .find(|(k, _)| k == "x-amz-log-result")
        .map(|(_, v)| base64::engine::general_purpose::STANDARD.decode(v).unwrap())
        .expect("a log tail");
    let tail = String::from_utf8_lossy(&tail);
    let ms: f64 = tail
        .split("Init Duration: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Init Duration in {tail}"));
    Duration::from_secs_f64(ms / 1000.0)
}

fn main() {
    let memory: u32 = std::env::var("LAMINA_BENCH_MEMORY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1769);
    let functions = functions();
    let data = tempfile::tempdir().unwrap();
    let tier = std::env::var("LAMINA_BENCH_SANDBOX").unwrap_or_else(|_| "auto".to_owned());
    let extra = bench_args();
    let mut args = vec!["--sandbox", tier.as_str()];
    args.extend(extra.iter().map(String::as_str));
    let (server, host, sandbox) = http::start_server(data.path(), &args);
    println!("lamina at {host}; sandbox: {sandbox}; functions at {memory} MB");
    let mut connection = Connection::open(&host);
    let mut bare_done = std::collections::HashSet::new();

    for (index, (function, executable)) in functions.iter().enumerate() {
        println!("\n== {} ({executable})", function.label);
        if bare_done.insert(executable.clone()) {
            if function.runtime.starts_with("java") {
                let mut bare = bare_start(
                    executable,
                    &["-Xshare:auto", "-XX:TieredStopAtLevel=1", "-version"],
                    30,
                );
                println!("bare `java -version`:          {}", summary(&mut bare));
            } else if function.runtime.starts_with("ruby") {
                let mut bare = bare_start(executable, &["-e", "0"], 30);
                println!("bare `ruby -e 0`:              {}", summary(&mut bare));
            } else if function.runtime.starts_with("python") {
                let mut bare = bare_start(executable, &["-c", "pass"], 30);
                println!("bare `python -c pass`:         {}", summary(&mut bare));
                let mut bare = bare_start(executable, &["-S", "-c", "pass"], 30);
                println!("bare `python -S -c pass`:      {}", summary(&mut bare));
            } else {
                let mut bare = bare_start(executable, &["-e", "0"], 30);
                println!("bare `node -e 0`:              {}", summary(&mut bare));
            }
        }
        // The bare start again, one before each cold start: on a shared machine the load
        // drifts between the figures above and those below, and the ratio of cold start to
        // bare start is what the targets are stated in.
        let bare_args: &[&str] = if function.runtime.starts_with("java") {
            &["-Xshare:auto", "-XX:TieredStopAtLevel=1", "-version"]
        } else if function.runtime.starts_with("python") {
            &["-c", "pass"]
        } else {
            &["-e", "0"]
        };
        let mut bare_interleaved = Vec::new();
        let zip = base64::engine::general_purpose::STANDARD.encode(&function.zip);
        let create = |name: &str| {
            serde_json::to_vec(&serde_json::json!({
                "FunctionName": name,
                "Runtime": function.runtime,
                "Role": "arn:aws:iam::000000000000:role/bench",
                "Handler": function.handler,
                "MemorySize": memory,
                "Timeout": 30,
                "Code": { "ZipFile": zip },
            }))
            .unwrap()
        };

        let mut create_to_answer = Vec::new();
        for i in 0..COLD_STARTS {
            bare_interleaved.extend(bare_start(executable, bare_args, 1));
            let name = format!("cold-{index}-{i}");
            let started = Instant::now();
            let (status, body) =
                connection.request("POST", "/2015-03-31/functions", &create(&name));
            assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
            let (status, body) = connection.request(
                "POST",
                &format!("/2015-03-31/functions/{name}/invocations"),
                b"{}",
            );
            assert_eq!(
                (status, body.as_slice()),
                (200, &b"null"[..]),
                "{}",
                String::from_utf8_lossy(&body)
            );
            create_to_answer.push(started.elapsed());
        }
        println!(
            "cold, create -> first answer:  {}",
            summary(&mut create_to_answer)
        );
        println!(
            "  bare start, interleaved:     {} (cold/bare p50 {:.2}x)",
            summary(&mut bare_interleaved),
            percentile(&create_to_answer, 0.5).as_secs_f64()
                / percentile(&bare_interleaved, 0.5).as_secs_f64()
        );

        let name = format!("warm-{index}");
        let (status, _) = connection.request("POST", "/2015-03-31/functions", &create(&name));
        assert_eq!(status, 201);
        let invoke = format!("/2015-03-31/functions/{name}/invocations");
        // Back to back, then one every 100 ms: a Python runtime keeps one environment
        // prepared ahead (`--prepared-environments`), rebuilt after each cold start's init,
        // so only cold starts that come slower than that take one.
        for (label, pause) in [
            ("back to back", Duration::ZERO),
            ("every 100 ms", Duration::from_millis(100)),
        ] {
            let mut after_reset = Vec::new();
            let mut init = Vec::new();
            for i in 0..COLD_STARTS {
                std::thread::sleep(pause);
                let (status, _) = connection.request(
                    "PUT",
                    &format!("/2015-03-31/functions/{name}/configuration"),
                    format!(r#"{{"Environment":{{"Variables":{{"RESET":"{label}{i}"}}}}}}"#)
                        .as_bytes(),
                );
                assert_eq!(status, 200);
                let started = Instant::now();
                let (status, headers, _) = connection.request_with_headers(
                    "POST",
                    &invoke,
                    &[("X-Amz-Log-Type", "Tail")],
                    b"{}",
                );
                after_reset.push(started.elapsed());
                assert_eq!(status, 200);
                init.push(init_duration(&headers));
            }
            println!("cold after reset, {label}: {}", summary(&mut after_reset));
            println!("  of which Init Duration:       {}", summary(&mut init));
        }

        for _ in 0..500 {
            connection.request("POST", &invoke, b"{}");
        }
        let mut warm = Vec::with_capacity(WARM_INVOKES);
        for _ in 0..WARM_INVOKES {
            let started = Instant::now();
            let (status, _) = connection.request("POST", &invoke, b"{}");
            warm.push(started.elapsed());
            assert_eq!(status, 200);
        }
        println!(
            "warm invoke ({WARM_INVOKES}):           {}",
            summary(&mut warm)
        );
    }
    http::stop_server(server);
}
