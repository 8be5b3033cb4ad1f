//! Starts real environments and proves the isolation from inside them.
//! The linux-tier tests need root; without it they say so loudly and pass vacuously.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lamina_sandbox::{
    EnvironmentExit, EnvironmentSpec, Sandbox, SandboxError, SandboxOptions, SandboxTier,
    TierRequest, open_sandbox,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("!!!!! SKIPPED: the linux sandbox tier tests need root !!!!!");
            return;
        }
    };
}

/// A linux sandbox with its own state directory and cgroup parent, removed on drop.
struct Fixture {
    sandbox: Option<Arc<dyn Sandbox>>,
    state: tempfile::TempDir,
    task: tempfile::TempDir,
    cgroup_parent: String,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

const CGROUP_ROOTS: &[&str] = &[
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/pids",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

impl Fixture {
    fn new() -> Fixture {
        let state = tempfile::tempdir().unwrap();
        let task = tempfile::tempdir().unwrap();
        // The sandbox user must be able to read its code.
        std::fs::set_permissions(
            task.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(task.path().join("hello.txt"), "hello from the task dir\n").unwrap();
        let cgroup_parent = unique("lamina-test");
        let sandbox = open_sandbox(
            TierRequest::Linux,
            SandboxOptions {
                state_dir: state.path().to_owned(),
                cgroup_parent: cgroup_parent.clone(),
            },
        )
        .unwrap();
        assert_eq!(sandbox.tier(), SandboxTier::Linux);
        Fixture {
            sandbox: Some(sandbox),
            state,
            task,
            cgroup_parent,
        }
    }

    fn sandbox(&self) -> &dyn Sandbox {
        self.sandbox.as_deref().unwrap()
    }

    fn spec(&self, script: &str) -> EnvironmentSpec {
        EnvironmentSpec {
            environment_id: unique("env"),
            task_dir: self.task.path().to_owned(),
            opt_dir: None,
            runtime_mounts: vec![],
            memory_mb: 256,
            ephemeral_storage_mb: 64,
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("LANG".into(), "C".into()),
            ],
            cwd: "/var/task".into(),
        }
    }

    fn run(&self, spec: &EnvironmentSpec) -> (String, EnvironmentExit) {
        run(self.sandbox(), spec)
    }

    fn cgroup_dirs(&self, environment_id: &str) -> Vec<PathBuf> {
        CGROUP_ROOTS
            .iter()
            .map(|root| {
                Path::new(root)
                    .join(&self.cgroup_parent)
                    .join(environment_id)
            })
            .collect()
    }

    fn mounts_under_state(&self) -> usize {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        mountinfo
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|mp| Path::new(mp).starts_with(self.state.path()))
            })
            .count()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.sandbox.take()); // joins the /tmp pool thread: all images unmounted
        for root in CGROUP_ROOTS {
            let _ = std::fs::remove_dir(Path::new(root).join(&self.cgroup_parent));
        }
    }
}

fn run(sandbox: &dyn Sandbox, spec: &EnvironmentSpec) -> (String, EnvironmentExit) {
    let mut started = sandbox.start(spec).unwrap();
    let mut output = String::new();
    started.output.read_to_string(&mut output).unwrap();
    let exit = started.handle.wait().unwrap();
    started.handle.destroy();
    (output, exit)
}

#[test]
fn runtime_api_is_reachable_inside_at_the_address_in_the_environment() {
    require_root!();
    let fx = Fixture::new();
    let spec = fx.spec(
        r#"echo "api=$AWS_LAMBDA_RUNTIME_API"; echo next > /dev/tcp/127.0.0.1/9001 && echo sent"#,
    );
    let spec = EnvironmentSpec {
        argv: vec!["/bin/bash".into(), "-c".into(), spec.argv[2].clone()],
        ..spec
    };
    let mut started = fx.sandbox().start(&spec).unwrap();
    assert_eq!(started.runtime_api_address, "127.0.0.1:9001");
    let (mut conn, _) = started.runtime_api_listener.accept().unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "next\n");
    let mut output = String::new();
    started.output.read_to_string(&mut output).unwrap();
    assert_eq!(output, "api=127.0.0.1:9001\nsent\n");
    assert_eq!(started.handle.wait().unwrap().code, Some(0));
    started.handle.destroy();
}

#[test]
fn the_function_sees_only_its_own_files_and_processes_and_has_no_privileges() {
    require_root!();
    let fx = Fixture::new();
    let script = r#"
        cat /var/task/hello.txt
        touch /var/task/x 2>/dev/null && echo task-writable || echo task-readonly
        touch /x 2>/dev/null && echo root-writable || echo root-readonly
        for d in /root /work /home /sys /var/lib; do [ -e $d ] && echo "visible $d"; done
        # init, this shell, the $(...) subshell, ls and wc (wc or the subshell may be
        # gone or not yet there when ls reads /proc); a host PID leak shows dozens
        n=$(ls -d /proc/[0-9]* | wc -l); [ "$n" -ge 3 ] && [ "$n" -le 5 ] && echo "pids ok" || echo "pids $n"
        echo "uid $(id -u) gid $(id -g) groups $(id -G)"
        grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t' ' '
        unshare -r true 2>/dev/null && echo unshare-ok || echo unshare-refused
        mount -t tmpfs none /tmp 2>/dev/null && echo mount-ok || echo mount-refused
        echo "host $(cat /proc/sys/kernel/hostname)"
        cat /proc/self/cgroup | grep -c ':/$' >/dev/null && echo cgroupns-root
        echo to-stderr >&2
    "#;
    let (out, exit) = fx.run(&fx.spec(script));
    assert_eq!(exit.code, Some(0), "{out}");
    let expected = "\
hello from the task dir
task-readonly
root-readonly
pids ok
uid 993 gid 990 groups 990
CapInh: 0000000000000000
CapPrm: 0000000000000000
CapEff: 0000000000000000
CapBnd: 0000000000000000
CapAmb: 0000000000000000
NoNewPrivs: 1
Seccomp: 2
unshare-refused
mount-refused
host lamina
cgroupns-root
to-stderr
";
    assert_eq!(out, expected);
}

#[test]
fn host_loopback_services_are_unreachable() {
    require_root!();
    let fx = Fixture::new();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port();
    let script = format!(
        "(echo hi > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo reached || echo refused"
    );
    let spec = EnvironmentSpec {
        argv: vec!["/bin/bash".into(), "-c".into(), script],
        ..fx.spec("")
    };
    let (out, _) = fx.run(&spec);
    assert_eq!(out, "refused\n");
    assert!(host.accept().is_err(), "the host listener got a connection");
}

#[test]
fn tmp_is_writable_capped_and_not_charged_to_memory() {
    require_root!();
    let fx = Fixture::new();
    // Capped: 64 MB of storage takes 48 MB, refuses 100 MB with ENOSPC.
    let script = "dd if=/dev/zero of=/tmp/a bs=1M count=48 2>/dev/null && echo wrote-48; \
                  dd if=/dev/zero of=/tmp/b bs=1M count=100 2>&1 | grep -o 'No space left on device' | head -1; \
                  df -m /tmp | tail -1";
    let (out, exit) = fx.run(&fx.spec(script));
    let (head, df) = out.split_at(out.find("No space left on device\n").expect(&out) + 24);
    assert_eq!(head, "wrote-48\nNo space left on device\n");
    let size_mb: u32 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((64..72).contains(&size_mb), "df /tmp: {df}");
    assert_eq!(exit.code, Some(0));
    // Not charged: 300 MB into /tmp of a 128 MB environment survives.
    let mut spec = fx.spec(
        "dd if=/dev/zero of=/tmp/big bs=1M count=300 2>/dev/null && ls -s --block-size=1M /tmp/big",
    );
    spec.memory_mb = 128;
    spec.ephemeral_storage_mb = 512;
    let (out, exit) = fx.run(&spec);
    // Allocated size: all 300 MB landed on /tmp's disk. ext4 may allocate one more block
    // for the file's extent tree, which `ls -s` rounds up to a 301st MB.
    assert!(
        out == "300 /tmp/big\n" || out == "301 /tmp/big\n",
        "/tmp/big: {out}"
    );
    assert_eq!(
        exit,
        EnvironmentExit {
            code: Some(0),
            signal: None,
            oom_killed: false
        }
    );
}

#[test]
fn exceeding_memory_is_an_oom_kill() {
    require_root!();
    let fx = Fixture::new();
    let mut spec = fx.spec("");
    spec.argv = vec![
        "/usr/bin/python3".into(),
        "-c".into(),
        "b = b'x' * (400 << 20)".into(),
    ];
    spec.memory_mb = 128;
    let started = Instant::now();
    let (_, exit) = fx.run(&spec);
    assert_eq!(
        exit,
        EnvironmentExit {
            code: None,
            signal: Some(9),
            oom_killed: true
        }
    );
    assert_eq!(exit.to_string(), "signal: killed");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn exit_codes_and_signals_are_reported() {
    require_root!();
    let fx = Fixture::new();
    let (_, exit) = fx.run(&fx.spec("exit 127"));
    assert_eq!(exit.to_string(), "exit status 127");
    let (_, exit) = fx.run(&fx.spec("kill -SEGV $$"));
    assert_eq!(
        exit,
        EnvironmentExit {
            code: None,
            signal: Some(libc::SIGSEGV),
            oom_killed: false
        }
    );
    let (_, exit) = fx.run(&fx.spec("kill -KILL $$"));
    assert_eq!(
        exit,
        EnvironmentExit {
            code: None,
            signal: Some(9),
            oom_killed: false
        }
    );
}

#[test]
fn kill_stops_everything_and_destroy_leaves_nothing_behind() {
    require_root!();
    let fx = Fixture::new();
    let spec = fx.spec("sleep 300 & sleep 300 & echo started; wait");
    let mut started = fx.sandbox().start(&spec).unwrap();
    let mut line = [0u8; 8];
    started.output.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"started\n");
    let memory_procs = Path::new("/sys/fs/cgroup/memory")
        .join(&fx.cgroup_parent)
        .join(&spec.environment_id)
        .join("cgroup.procs");
    if memory_procs.exists() {
        assert_eq!(
            std::fs::read_to_string(&memory_procs)
                .unwrap()
                .lines()
                .count(),
            4,
            "init, sh, 2 x sleep"
        );
    }
    assert!(started.handle.max_memory_used_bytes().unwrap() > 0);
    let t = Instant::now();
    started.handle.kill();
    started.handle.kill();
    let exit = started.handle.wait().unwrap();
    assert_eq!(exit.signal, Some(9));
    assert!(t.elapsed() < Duration::from_secs(2));
    let mut rest = Vec::new();
    started.output.read_to_end(&mut rest).unwrap(); // EOF: no process holds the pipe
    started.handle.destroy();
    started.handle.destroy();
    for dir in fx.cgroup_dirs(&spec.environment_id) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    drop(started);
    let state = fx.state.path().to_owned();
    drop(fx);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(state.to_str().unwrap()),
        "mounts left under {}",
        state.display()
    );
}

#[test]
fn setup_failures_are_errors_naming_the_cause() {
    require_root!();
    let fx = Fixture::new();
    let mut spec = fx.spec("true");
    spec.argv = vec!["/var/task/missing-bootstrap".into()];
    let err = fx.sandbox().start(&spec).unwrap_err();
    assert!(matches!(err, SandboxError::Setup { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("execve \"/var/task/missing-bootstrap\""),
        "{err}"
    );
    let mut spec = fx.spec("true");
    spec.task_dir = "/nonexistent/code".into();
    let err = fx.sandbox().start(&spec).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/code"), "{err}");
    // Nothing leaks from failed starts.
    for dir in fx.cgroup_dirs(&spec.environment_id) {
        assert!(!dir.exists());
    }
    // Only the pool's ready images (two per size used) stay mounted once retiring is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fx.mounts_under_state() > 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        fx.mounts_under_state() <= 4,
        "{} mounts under the state dir",
        fx.mounts_under_state()
    );
}

/// Environments are cloned by the spawner forked when the sandbox opened, so a server that
/// has since grown (here: 200 MB of touched heap and extra threads) starts them the same
/// way, also from several threads at once. Timing is in examples/scaling_probe.rs.
#[test]
fn environments_start_after_the_server_grows_and_from_many_threads() {
    require_root!();
    let fx = Fixture::new();
    let describe = fx.sandbox().describe();
    assert!(describe.contains("spawner"), "{describe}");
    let ballast: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; 1 << 20]).collect();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let fx = &fx;
            scope.spawn(move || {
                for i in 0..3 {
                    let mut spec = fx.spec(&format!(
                        "echo next > /dev/tcp/127.0.0.1/9001 && cat /var/task/hello.txt && echo {t}-{i}; exit {i}"
                    ));
                    spec.argv[0] = "/bin/bash".into();
                    let mut started = fx.sandbox().start(&spec).unwrap();
                    let (mut conn, _) = started.runtime_api_listener.accept().unwrap();
                    let mut got = String::new();
                    conn.read_to_string(&mut got).unwrap();
                    assert_eq!(got, "next\n");
                    let mut output = String::new();
                    started.output.read_to_string(&mut output).unwrap();
                    assert_eq!(output, format!("hello from the task dir\n{t}-{i}\n"));
                    let exit = started.handle.wait().unwrap();
                    assert_eq!((exit.code, exit.oom_killed), (Some(i), false));
                    started.handle.destroy();
                    for dir in fx.cgroup_dirs(&spec.environment_id) {
                        assert!(!dir.exists(), "{} left behind", dir.display());
                    }
                }
            });
        }
    });
    assert_eq!(
        ballast.iter().map(|b| b[0] as usize).sum::<usize>(),
        (0..200).sum()
    );
}

/// An environment started for adoption has its root, cgroups and init ready and runs
/// nothing until a template forks into it (the Python runtime tests drive a real one);
/// if its adopter goes away without adopting, waiting on it ends it instead of hanging.
#[test]
fn an_environment_for_adoption_ends_when_its_adopter_goes_away() {
    require_root!();
    let fx = Fixture::new();
    let spec = fx.spec("echo never run");
    let (pending, adoption) = fx.sandbox().start_for_adoption(&spec).unwrap();
    assert_eq!(adoption.cwd, "/var/task");
    assert!(!adoption.seccomp_programs.is_empty());
    assert!(
        adoption
            .seccomp_programs
            .iter()
            .all(|p| !p.is_empty() && p.len() % 8 == 0),
        "struct sock_filter arrays"
    );
    // Nobody adopts here, so the root being ready shows as a hang-up of the pipe.
    let mut poll = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&adoption.root_ready),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut poll, 1, 5000) }, 1);
    assert_eq!(poll.revents & (libc::POLLIN | libc::POLLHUP), libc::POLLHUP);
    let started = pending.wait_ready().unwrap();
    assert!(
        adoption
            .env
            .iter()
            .any(|(k, v)| k == "AWS_LAMBDA_RUNTIME_API" && v == &started.runtime_api_address)
    );
    assert!(!adoption.cgroup_procs.is_empty());
    for procs in &adoption.cgroup_procs {
        assert!(
            procs.ends_with("cgroup.procs") && procs.exists(),
            "{}",
            procs.display()
        );
    }
    // Only the init is in the environment's cgroups until a process is adopted.
    let memory_procs = Path::new("/sys/fs/cgroup/memory")
        .join(&fx.cgroup_parent)
        .join(&spec.environment_id)
        .join("cgroup.procs");
    if memory_procs.exists() {
        assert_eq!(
            std::fs::read_to_string(&memory_procs)
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
    drop(adoption);
    let t = Instant::now();
    let exit = started.handle.wait().unwrap();
    assert_eq!(exit.signal, Some(9));
    assert!(t.elapsed() < Duration::from_secs(2));
    started.handle.destroy();
    for dir in fx.cgroup_dirs(&spec.environment_id) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn the_process_tier_says_it_cannot_adopt() {
    let task = tempfile::tempdir().unwrap();
    let sandbox = open_sandbox(
        TierRequest::Process,
        SandboxOptions {
            state_dir: task.path().to_owned(),
            cgroup_parent: "unused".into(),
        },
    )
    .unwrap();
    let spec = EnvironmentSpec {
        environment_id: "proc-adopt".into(),
        task_dir: task.path().to_owned(),
        opt_dir: None,
        runtime_mounts: vec![],
        memory_mb: 128,
        ephemeral_storage_mb: 512,
        argv: vec!["/bin/true".into()],
        env: vec![],
        cwd: "/var/task".into(),
    };
    assert!(matches!(
        sandbox.start_for_adoption(&spec),
        Err(SandboxError::AdoptionUnsupported { .. })
    ));
}

#[test]
fn process_tier_runs_with_the_same_contract() {
    let task = tempfile::tempdir().unwrap();
    std::fs::write(task.path().join("hello.txt"), "hi\n").unwrap();
    let sandbox = open_sandbox(
        TierRequest::Process,
        SandboxOptions {
            state_dir: task.path().to_owned(),
            cgroup_parent: "unused".into(),
        },
    )
    .unwrap();
    assert_eq!(sandbox.tier(), SandboxTier::Process);
    assert!(
        sandbox.describe().starts_with("process (NO ISOLATION"),
        "{}",
        sandbox.describe()
    );
    let spec = EnvironmentSpec {
        environment_id: "proc-1".into(),
        task_dir: task.path().to_owned(),
        opt_dir: None,
        runtime_mounts: vec![],
        memory_mb: 128,
        ephemeral_storage_mb: 512,
        argv: vec![
            "/bin/bash".into(),
            "-c".into(),
            "cat hello.txt; echo next > /dev/tcp/${AWS_LAMBDA_RUNTIME_API/://}; echo err >&2; exit 3".into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/var/task".into(),
    };
    let mut started = sandbox.start(&spec).unwrap();
    assert!(started.runtime_api_address.starts_with("127.0.0.1:"));
    let (mut conn, _) = started.runtime_api_listener.accept().unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "next\n");
    let mut output = String::new();
    started.output.read_to_string(&mut output).unwrap();
    assert_eq!(output, "hi\nerr\n");
    assert_eq!(started.handle.wait().unwrap().to_string(), "exit status 3");
    started.handle.destroy();

    // kill() takes the whole process group.
    let spec = EnvironmentSpec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "sleep 300 & echo up; wait".into(),
        ],
        ..spec
    };
    let mut started = sandbox.start(&spec).unwrap();
    let mut up = [0u8; 3];
    started.output.read_exact(&mut up).unwrap();
    started.handle.kill();
    assert_eq!(started.handle.wait().unwrap().signal, Some(9));
    let mut rest = Vec::new();
    started.output.read_to_end(&mut rest).unwrap();
    let _ = std::io::stderr().flush();
}
