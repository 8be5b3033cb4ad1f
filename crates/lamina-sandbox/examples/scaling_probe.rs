//! Does `start()` get slower as the server grows? (It did before the spawner: see
//! `src/spawner.rs`.) Opens the linux tier, *then* allocates and touches `ballast` MB in
//! this process, as a server does after some CreateFunction uploads, and times starts.
//!
//! `CARGO_TARGET_DIR=/work/target-sandbox cargo run --release -q -p lamina-sandbox --example scaling_probe -- MODE [BALLAST_MB] [N]`
//!
//! * `x` (or anything else): 30 starts of `sleep 100`, 100 ms apart, each killed at once;
//!   prints each `start()` in ms and the median;
//! * `keep`: the same, but the environments stay alive until the end;
//! * `burst`: `N` (default 64) starts at once from `N` threads; prints the wall time until
//!   all have started and the slowest single `start()`.
//!
//! Needs root.

use std::time::{Duration, Instant};

use lamina_sandbox::*;

fn spec(task: &std::path::Path, id: String) -> EnvironmentSpec {
    EnvironmentSpec {
        environment_id: id,
        task_dir: task.to_owned(),
        opt_dir: None,
        runtime_mounts: vec![],
        memory_mb: 1769,
        ephemeral_storage_mb: 512,
        argv: vec!["/bin/sleep".into(), "100".into()],
        env: vec![],
        cwd: "/".into(),
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    std::fs::create_dir_all(&task).unwrap();
    let cgroup_parent = format!("lamina-probe-{}", std::process::id());
    let sb = open_sandbox(
        TierRequest::Linux,
        SandboxOptions {
            state_dir: dir.path().join("state"),
            cgroup_parent: cgroup_parent.clone(),
        },
    )
    .unwrap();
    let mode = std::env::args().nth(1).unwrap_or_default();
    let ballast_mb: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let n: usize = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let ballast: Vec<Vec<u8>> = (0..ballast_mb).map(|i| vec![i as u8; 1 << 20]).collect();

    if mode == "burst" {
        // Let the /tmp pool make a few images first; then it refills in the background.
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let results: Vec<(Duration, StartedEnvironment)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (sb, task) = (&sb, &task);
                    scope.spawn(move || {
                        let t = Instant::now();
                        let env = sb.start(&spec(task, format!("b{i}"))).unwrap();
                        (t.elapsed(), env)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wall = t.elapsed();
        let slowest = results.iter().map(|(d, _)| *d).max().unwrap_or_default();
        println!(
            "{n} concurrent starts: all started after {:.1} ms, slowest start() {:.1} ms (ballast {} MB)",
            wall.as_secs_f64() * 1e3,
            slowest.as_secs_f64() * 1e3,
            ballast.len()
        );
        for (_, env) in results {
            env.handle.kill();
            env.handle.destroy();
        }
    } else {
        let keep = mode == "keep";
        let mut alive = Vec::new();
        let mut times = Vec::new();
        for i in 0..30 {
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            let env = sb.start(&spec(&task, format!("p{i}"))).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            times.push(ms);
            print!("{ms:.1} ");
            if keep {
                alive.push(env);
            } else {
                env.handle.kill();
                env.handle.destroy();
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            " (ballast {} MB; median {:.1} ms)",
            ballast.len(),
            times[times.len() / 2]
        );
        for e in alive {
            e.handle.kill();
            e.handle.destroy();
        }
    }
    drop(sb);
    for root in ["memory", "cpu", "pids", "unified", ""] {
        let _ = std::fs::remove_dir(
            std::path::Path::new("/sys/fs/cgroup")
                .join(root)
                .join(&cgroup_parent),
        );
    }
}
