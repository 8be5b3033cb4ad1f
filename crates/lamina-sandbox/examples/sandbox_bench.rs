//! Time from `Sandbox::start()` to the function's first byte of output, per tier.
//!
//! `CARGO_TARGET_DIR=/work/target-sandbox cargo run --release -p lamina-sandbox --example sandbox_bench [-- N]`
//!
//! The function is a static C program that writes one line (built with `gcc -static` if
//! available, else `/usr/bin/echo`). The linux tier needs root. Starts are paced 20 ms apart
//! so the `/tmp` image pool keeps up, as it does for cold starts in practice (each image
//! costs ~15 ms of background work; see `tmp_pool.rs`).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use lamina_sandbox::{EnvironmentSpec, Sandbox, SandboxOptions, TierRequest, open_sandbox};

fn static_hello(dir: &Path) -> Option<String> {
    let src = dir.join("hello.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void){write(1,\"ready\\n\",6);return 0;}\n",
    )
    .ok()?;
    let ok = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("hello"))
        .arg(&src)
        .status()
        .ok()?
        .success();
    ok.then(|| "/var/task/hello".to_owned())
}

fn bench(sandbox: &dyn Sandbox, task: &Path, program: &str, n: usize) {
    let mut to_output = Vec::with_capacity(n);
    let mut to_return = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let spec = EnvironmentSpec {
            environment_id: format!("bench-{}-{i}", std::process::id()),
            task_dir: task.to_owned(),
            opt_dir: None,
            runtime_mounts: vec![],
            memory_mb: 1769,
            ephemeral_storage_mb: 512,
            argv: vec![program.to_owned()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/var/task".into(),
        };
        let t0 = Instant::now();
        let mut started = sandbox.start(&spec).expect("start");
        let t1 = Instant::now();
        let mut first = [0u8; 1];
        started.output.read_exact(&mut first).expect("first byte");
        let t2 = Instant::now();
        started.handle.wait().expect("wait");
        started.handle.destroy();
        if i >= 10 {
            to_return.push(t1 - t0);
            to_output.push(t2 - t0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "median {:.3} ms, p99 {:.3} ms",
            ms(v[v.len() / 2]),
            ms(v[(v.len() * 99 / 100).min(v.len() - 1)])
        )
    };
    println!("{}", sandbox.describe());
    println!("  start() returned:        {}", stats(&mut to_return));
    println!("  start() -> first output: {}", stats(&mut to_output));
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let state = tempfile::tempdir().expect("state dir");
    let task = tempfile::tempdir().expect("task dir");
    std::fs::set_permissions(
        task.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let program = static_hello(task.path()).unwrap_or_else(|| "/usr/bin/echo".to_owned());
    println!("{n} starts of {program}");
    let opts = SandboxOptions {
        state_dir: state.path().to_owned(),
        cgroup_parent: format!("lamina-bench-{}", std::process::id()),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let linux = open_sandbox(TierRequest::Linux, opts.clone()).expect("linux tier");
        bench(linux.as_ref(), task.path(), &program, n);
        drop(linux);
        for root in ["memory", "cpu", "pids", "unified", ""] {
            let _ = std::fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(root)
                    .join(&opts.cgroup_parent),
            );
        }
    } else {
        eprintln!("not root: skipping the linux tier");
    }
    let process = open_sandbox(TierRequest::Process, opts).expect("process tier");
    let host_program = task.path().join(program.trim_start_matches("/var/task/"));
    let program = if program.starts_with("/var/task/") {
        program
    } else {
        host_program.display().to_string()
    };
    bench(process.as_ref(), task.path(), &program, n);
}
