//! The process tier: a plain child process, NO isolation.
//!
//! For machines without root or namespaces (a laptop, a CI container). Same contract as
//! the linux tier — one output pipe, a Runtime API listener (here `127.0.0.1:<ephemeral>`
//! on the host), `AWS_LAMBDA_RUNTIME_API` set — but the function sees the host: its files,
//! its network, its users. Sandbox paths in `argv[0]` and `cwd` (`/var/task/...`, `/opt/...`,
//! runtime mount targets) are mapped to their host directories; nothing else is.
//! No memory limit is enforced and `/tmp` is the host's.

use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{
    EnvironmentExit, EnvironmentHandle, EnvironmentSpec, Sandbox, SandboxError, SandboxTier,
    StartedEnvironment,
};

#[derive(Debug)]
pub(crate) struct ProcessSandbox {
    reason: String,
}

impl ProcessSandbox {
    pub(crate) fn new(reason: String) -> ProcessSandbox {
        ProcessSandbox { reason }
    }
}

/// Maps a sandbox path to the host directory that backs it in this tier.
pub(crate) fn host_path(spec: &EnvironmentSpec, sandbox_path: &str) -> PathBuf {
    let sandbox = Path::new(sandbox_path);
    let mut mounts: Vec<(&Path, &Path)> = vec![(Path::new("/var/task"), spec.task_dir.as_path())];
    if let Some(opt) = &spec.opt_dir {
        mounts.push((Path::new("/opt"), opt));
    }
    mounts.extend(
        spec.runtime_mounts
            .iter()
            .map(|(host, inside)| (inside.as_path(), host.as_path())),
    );
    for (inside, host) in mounts {
        if let Ok(rest) = sandbox.strip_prefix(inside) {
            return if rest.as_os_str().is_empty() {
                host.to_owned()
            } else {
                host.join(rest)
            };
        }
    }
    sandbox.to_owned()
}

impl Sandbox for ProcessSandbox {
    fn tier(&self) -> SandboxTier {
        SandboxTier::Process
    }

    fn describe(&self) -> String {
        format!("process (NO ISOLATION: {})", self.reason)
    }

    fn start(&self, spec: &EnvironmentSpec) -> Result<StartedEnvironment, SandboxError> {
        crate::validate_spec(spec)?;
        let id = spec.environment_id.as_str();
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| SandboxError::syscall("bind 127.0.0.1:0", id, e))?;
        let address = listener
            .local_addr()
            .map_err(|e| SandboxError::syscall("getsockname", id, e))?
            .to_string();
        let (out_r, out_w) =
            crate::sys::pipe().map_err(|e| SandboxError::syscall("pipe2 (output)", id, e))?;
        let out_w2 = out_w
            .try_clone()
            .map_err(|e| SandboxError::syscall("dup (output)", id, e))?;
        let program = host_path(spec, &spec.argv[0]);
        let mut child = Command::new(&program);
        child
            .arg0(&spec.argv[0])
            .args(&spec.argv[1..])
            .env_clear()
            .envs(
                spec.env
                    .iter()
                    .filter(|(k, _)| k != "AWS_LAMBDA_RUNTIME_API")
                    .map(|(k, v)| (k, v)),
            )
            .env("AWS_LAMBDA_RUNTIME_API", &address)
            .current_dir(host_path(spec, &spec.cwd))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(out_w2))
            // Its own process group, so kill() reaches the whole tree it spawns.
            .process_group(0);
        // Only from a thread at a raised priority: a `pre_exec` makes std fork the whole
        // server instead of using posix_spawn.
        if crate::sys::priority_raised() {
            // SAFETY: the closure makes two async-signal-safe system calls.
            unsafe {
                child.pre_exec(|| {
                    crate::sys::reset_priority();
                    Ok(())
                });
            }
        }
        let child = child.spawn().map_err(|e| SandboxError::Setup {
            environment_id: id.to_owned(),
            step: format!("spawning {}", program.display()),
            source: e,
        })?;
        Ok(StartedEnvironment {
            runtime_api_listener: listener,
            runtime_api_address: address,
            output: out_r.into(),
            handle: Box::new(ProcessEnvironment {
                pid: child.id(),
                child: Mutex::new(Some(child)),
                exit: Mutex::new(None),
                reaped: AtomicBool::new(false),
            }),
        })
    }
}

#[derive(Debug)]
struct ProcessEnvironment {
    pid: u32,
    child: Mutex<Option<Child>>,
    exit: Mutex<Option<EnvironmentExit>>,
    reaped: AtomicBool,
}

impl EnvironmentHandle for ProcessEnvironment {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&self) -> Result<EnvironmentExit, SandboxError> {
        let mut exit = self.exit.lock().expect("exit lock");
        if let Some(done) = *exit {
            return Ok(done);
        }
        let mut child = self
            .child
            .lock()
            .expect("child lock")
            .take()
            .ok_or_else(|| {
                SandboxError::syscall(
                    "waitpid",
                    &self.pid.to_string(),
                    std::io::Error::from_raw_os_error(libc::ECHILD),
                )
            })?;
        let status = child
            .wait()
            .map_err(|e| SandboxError::syscall("waitpid", &self.pid.to_string(), e))?;
        // Take the rest of the process group along, as the linux tier's init does.
        self.kill();
        self.reaped.store(true, Ordering::SeqCst);
        let result = EnvironmentExit {
            code: status.code(),
            signal: status.signal(),
            oom_killed: false,
        };
        *exit = Some(result);
        Ok(result)
    }

    fn kill(&self) {
        // The group outlives its leader, so signalling it after the leader exited is fine
        // as long as the group id is not reused: it cannot be while the leader is unreaped,
        // and wait() signals once more right after reaping, before anyone else could.
        if !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: kill has no memory arguments; the negative pid names our child's group.
            unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
        }
    }

    fn max_memory_used_bytes(&self) -> Option<u64> {
        None
    }

    fn destroy(&self) {
        self.kill();
        let _ = self.wait();
    }
}

impl Drop for ProcessEnvironment {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_map_to_host_directories() {
        let spec = EnvironmentSpec {
            environment_id: "e".into(),
            task_dir: "/srv/code".into(),
            opt_dir: Some("/srv/layers".into()),
            runtime_mounts: vec![("/srv/py".into(), "/var/lang".into())],
            memory_mb: 128,
            ephemeral_storage_mb: 512,
            argv: vec!["/var/task/bootstrap".into()],
            env: vec![],
            cwd: "/var/task".into(),
        };
        assert_eq!(
            host_path(&spec, "/var/task/bootstrap"),
            Path::new("/srv/code/bootstrap")
        );
        assert_eq!(host_path(&spec, "/var/task"), Path::new("/srv/code"));
        assert_eq!(
            host_path(&spec, "/opt/bootstrap"),
            Path::new("/srv/layers/bootstrap")
        );
        assert_eq!(
            host_path(&spec, "/var/lang/bin/python3"),
            Path::new("/srv/py/bin/python3")
        );
        assert_eq!(host_path(&spec, "/bin/sh"), Path::new("/bin/sh"));
        assert_eq!(
            host_path(&spec, "/var/taskforce"),
            Path::new("/var/taskforce")
        );
    }
}
