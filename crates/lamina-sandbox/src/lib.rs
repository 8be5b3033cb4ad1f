//! Lamina's execution environments: one environment is one process tree, isolated by
//! Lamina itself (no OCI runtime), behind one trait with two tiers.
//!
//! * **`linux`** ([`linux`]): `clone3` into new mount, PID, IPC, UTS and network namespaces,
//!   straight into the environment's cgroup where the kernel allows it — done by a small
//!   *spawner* process forked when the sandbox opens ([`spawner`]), because cloning from
//!   the grown, multi-threaded server cost 13–38 ms instead of ~3.5 ms. The child builds a
//!   root on a small tmpfs from read-only bind mounts ([`mount_plan`]), `pivot_root`s into
//!   it and remounts `/` read-only while the spawner, in parallel, joins it to its cgroups
//!   ([`cgroup`]; made cheap by the `favordynmods` cgroup mount option, set at open) and
//!   binds the Runtime API listener on `127.0.0.1:9001` *inside* the child's network
//!   namespace ([`net`]), then hands the server the listener and pipes over `SCM_RIGHTS`. The child then becomes a tiny init (PID 1: reaps
//!   zombies, forwards SIGTERM, reports the main process's wait status) and forks the
//!   function's process, which drops to an unprivileged uid with no capabilities,
//!   `no_new_privs`, rlimits and a seccomp filter compiled once ([`seccomp`]) before
//!   `execve`. `/tmp` comes from a pool of loop-mounted ext4 images ([`tmp_pool`]) so it is
//!   capped at EphemeralStorage and not charged to the function's memory, as on Lambda.
//! * **`process`** ([`process`]): a plain child process without isolation, for machines
//!   without root or namespaces. It says so in [`Sandbox::describe`].
//!
//! Every kernel side effect whose *decision* matters (which mounts, which cgroup files and
//! values, how big an image) is computed by pure code and executed through a narrow trait,
//! so the decisions are unit-tested without root; the integration tests in `tests/` prove
//! the isolation for real.

mod cgroup;
mod error;
mod linux;
mod mount_plan;
mod net;
mod prepared;
mod process;
mod seccomp;
mod spawner;
mod sys;
mod template;
mod tmp_pool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::SandboxError;
pub use prepared::{ClaimFailed, PreparedEnvironment};
pub use template::{Template, TemplateSpec, VariablesSender};

/// Which tier the caller asks for (`lamina serve --sandbox auto|linux|process`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierRequest {
    /// Linux when it really works here (probed), else process, with the reason.
    Auto,
    /// Linux or an error saying why not.
    Linux,
    /// Plain processes, no isolation.
    Process,
}

/// The tier a sandbox implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxTier {
    Linux,
    Process,
}

/// Where the sandbox may keep its own state.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Scratch space owned by the sandbox: `/tmp` images, the root mount point.
    pub state_dir: PathBuf,
    /// The cgroup (relative to each hierarchy's root) under which environments get theirs,
    /// e.g. `"lamina"`. On a pure cgroup v2 host it must be delegated to this process.
    pub cgroup_parent: String,
}

/// Picks and opens a tier. `Auto` => linux when root + namespaces + cgroups really work
/// (a throw-away environment is cloned to prove it), else process with the reason.
/// `Linux` when unavailable => [`SandboxError::LinuxTierUnavailable`] saying why.
pub fn open_sandbox(
    req: TierRequest,
    opts: SandboxOptions,
) -> Result<Arc<dyn Sandbox>, SandboxError> {
    match req {
        TierRequest::Process => Ok(Arc::new(process::ProcessSandbox::new(
            "process tier requested explicitly".to_owned(),
        ))),
        TierRequest::Linux => Ok(Arc::new(linux::LinuxSandbox::open(&opts)?)),
        TierRequest::Auto => match linux::LinuxSandbox::open(&opts) {
            Ok(sandbox) => Ok(Arc::new(sandbox)),
            Err(err) => {
                let reason = match err {
                    SandboxError::LinuxTierUnavailable { reason } => reason,
                    other => other.to_string(),
                };
                tracing::warn!(%reason, "linux sandbox unavailable; functions will run WITHOUT isolation");
                Ok(Arc::new(process::ProcessSandbox::new(reason)))
            }
        },
    }
}

/// A sandbox tier: starts execution environments.
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    fn tier(&self) -> SandboxTier;
    /// One human line for the server's start-up log, e.g.
    /// `"linux (namespaces, cgroup v1 memory+cpu+pids, seccomp, /tmp on ext4 images)"` or
    /// `"process (NO ISOLATION: not running as root)"`.
    fn describe(&self) -> String;
    /// Starts one environment. Blocking; returns once the function's process has exec'd
    /// (so setup failures come back here as errors), typically in about a millisecond.
    fn start(&self, spec: &EnvironmentSpec) -> Result<StartedEnvironment, SandboxError>;

    /// Starts an environment whose main process is *adopted* rather than exec'd: the
    /// root, cgroups, namespaces and init are built exactly as by [`Sandbox::start`]
    /// (`spec.argv` is not run), and the returned [`Adoption`] lets a pre-initialised
    /// template process (a runtime's zygote) fork a child into the environment and become
    /// its main process. Returns as soon as the init exists, so the adopter's fork
    /// overlaps the building of the root; [`PendingEnvironment::wait_ready`] says whether
    /// that succeeded. Tiers that cannot do it say why.
    fn start_for_adoption(
        &self,
        spec: &EnvironmentSpec,
    ) -> Result<(PendingEnvironment, Adoption), SandboxError> {
        let _ = spec;
        Err(SandboxError::AdoptionUnsupported {
            reason: format!("the {:?} tier runs no init to adopt into", self.tier()),
        })
    }

    /// Builds an environment for adoption before any function is known, as
    /// [`Sandbox::start_for_adoption`] does, but with `/var/task` and `/opt` left empty:
    /// [`EnvironmentHandle::attach_code`] mounts a function's code into it later, and
    /// [`EnvironmentHandle::set_memory`] gives it the function's limits. The adoption's
    /// `env` holds only `AWS_LAMBDA_RUNTIME_API` and goes unused: the adopter's child
    /// waits for the function's variables (see [`Template::adopt_prepared`]). A cold
    /// start that takes such an environment skips the namespaces, cgroups, root and the
    /// adopter's set-up, which were done ahead.
    fn prepare_for_adoption(
        &self,
        spec: &PreparedSpec,
    ) -> Result<(PendingEnvironment, Adoption), SandboxError> {
        let _ = spec;
        Err(SandboxError::AdoptionUnsupported {
            reason: format!("the {:?} tier cannot prepare environments", self.tier()),
        })
    }
}

/// An environment built ahead of its function ([`Sandbox::prepare_for_adoption`]).
#[derive(Debug, Clone)]
pub struct PreparedSpec {
    /// As [`EnvironmentSpec::environment_id`].
    pub environment_id: String,
    /// The runtime's directories, as [`EnvironmentSpec::runtime_mounts`].
    pub runtime_mounts: Vec<(PathBuf, PathBuf)>,
    /// The memory limit until [`EnvironmentHandle::set_memory`] sets the function's.
    pub memory_mb: u32,
    pub ephemeral_storage_mb: u32,
    /// The program the adopter stands for (it is not run; it names failures).
    pub argv: Vec<String>,
    pub cwd: String,
}

impl PreparedSpec {
    /// The spec of the environment as built: no code, no variables.
    pub(crate) fn environment_spec(&self) -> EnvironmentSpec {
        EnvironmentSpec {
            environment_id: self.environment_id.clone(),
            task_dir: PathBuf::new(),
            opt_dir: None,
            runtime_mounts: self.runtime_mounts.clone(),
            memory_mb: self.memory_mb,
            ephemeral_storage_mb: self.ephemeral_storage_mb,
            argv: self.argv.clone(),
            env: Vec::new(),
            cwd: self.cwd.clone(),
        }
    }
}

/// An environment started for adoption whose root may still be being built.
pub struct PendingEnvironment {
    started: StartedEnvironment,
    root: Box<dyn FnOnce() -> Result<(), SandboxError> + Send>,
}

impl std::fmt::Debug for PendingEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingEnvironment")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl PendingEnvironment {
    pub(crate) fn new(
        started: StartedEnvironment,
        root: impl FnOnce() -> Result<(), SandboxError> + Send + 'static,
    ) -> PendingEnvironment {
        PendingEnvironment {
            started,
            root: Box::new(root),
        }
    }

    /// Blocks until the root is built; an error names the step that failed, and the
    /// environment is destroyed. Call it after the adopter has answered: the adopter's
    /// child waits for the same moment (see [`Adoption::root_ready`]).
    pub fn wait_ready(self) -> Result<StartedEnvironment, SandboxError> {
        (self.root)()?;
        Ok(self.started)
    }
}

/// What a process needs to make a child of its own the main process of an environment
/// started by [`Sandbox::start_for_adoption`], run as the sandbox would have run an exec'd
/// one. The adopter (Lamina's Python zygote) must:
/// 1. open every `cgroup_procs` file, `setns(init_pidfd, CLONE_NEWPID)` so that its next
///    child is born in the environment's PID namespace (PID 2, as an exec'd main process
///    is), fork it, and `setns` its own PID namespace back;
/// 2. in the child: write `0` to each opened `cgroup.procs`, wait until `root_ready`
///    polls as hung up *without* data (data means the root failed: give up),
///    `setns(init_pidfd, namespaces & !CLONE_NEWPID)`, `setsid`, stdin from `/dev/null` and stdout/stderr to
///    `output`, close every other descriptor, `chdir(cwd)`, set `RLIMIT_CORE` 0 and
///    `RLIMIT_NOFILE` `nofile`, drop the ambient capabilities and end with an empty
///    bounding set (`0..=cap_last_cap`; the adopter may have emptied its own once, as
///    the zygote does, since no user namespace is joined), `setgroups([])`, `setresgid`/`setresuid` to `gid`/`uid`, clear
///    the inheritable set, `PR_SET_NO_NEW_PRIVS`, install each of `seccomp_programs` in
///    order, and replace its environment with `env`;
/// 3. stay the child's parent: when it exits, write its raw wait status (4 bytes, native
///    endian) to `status`, then kill the init through `init_pidfd` (which ends the
///    namespace), as the init does for an exec'd main process. If the adopter dies
///    first, the status pipe reaches EOF without a status and the environment's handle
///    kills the init itself.
///
/// Step 2 repeats what the linux tier's own function process does before `execve`
/// (`linux::function_main`): only the adopter can run code after its fork.
#[derive(Debug)]
pub struct Adoption {
    /// A pidfd of the environment's init (PID 1 of its namespaces).
    pub init_pidfd: std::os::fd::OwnedFd,
    /// The flags to pass to `setns` with `init_pidfd`.
    pub namespaces: i32,
    /// A read end of the pipe the init closes once the root is built (or writes a failure
    /// record to). Poll it; never read it: the server reads it after the adopter answers.
    pub root_ready: std::os::fd::OwnedFd,
    /// Write end of the pipe that carries the function's stdout and stderr.
    pub output: std::os::fd::OwnedFd,
    /// Write end of the pipe on which the main process's wait status is reported.
    pub status: std::os::fd::OwnedFd,
    /// The `cgroup.procs` files of every hierarchy the environment's processes belong to.
    pub cgroup_procs: Vec<PathBuf>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub nofile: u64,
    pub cap_last_cap: u32,
    /// Classic BPF programs (`struct sock_filter` arrays as raw bytes, native endian).
    pub seccomp_programs: Vec<Vec<u8>>,
    /// The complete environment, `AWS_LAMBDA_RUNTIME_API` included.
    pub env: Vec<(String, String)>,
}

/// What to run and with which limits.
#[derive(Debug, Clone)]
pub struct EnvironmentSpec {
    /// Unique, `[a-zA-Z0-9-]`, at most 64 characters; names the cgroup etc.
    pub environment_id: String,
    /// Host directory mounted read-only at `/var/task`. The sandbox user (uid 993) must be
    /// able to read it.
    pub task_dir: PathBuf,
    /// Host directory mounted read-only at `/opt`.
    pub opt_dir: Option<PathBuf>,
    /// `(host dir, sandbox path)` pairs mounted read-only, for managed runtimes.
    pub runtime_mounts: Vec<(PathBuf, PathBuf)>,
    pub memory_mb: u32,
    pub ephemeral_storage_mb: u32,
    /// `argv[0]` is a path inside the sandbox, e.g. `/var/task/bootstrap`.
    pub argv: Vec<String>,
    /// The complete environment except `AWS_LAMBDA_RUNTIME_API`, which the sandbox sets.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox, normally `/var/task`.
    pub cwd: String,
}

/// A running environment.
#[derive(Debug)]
pub struct StartedEnvironment {
    /// Serve the Runtime API on this (blocking mode; set it non-blocking for tokio).
    pub runtime_api_listener: std::net::TcpListener,
    /// What `AWS_LAMBDA_RUNTIME_API` was set to, e.g. `127.0.0.1:9001`.
    pub runtime_api_address: String,
    /// Read end of the one pipe carrying the function's stdout and stderr.
    pub output: std::fs::File,
    pub handle: Box<dyn EnvironmentHandle>,
}

/// Control over one running environment.
pub trait EnvironmentHandle: Send + Sync + std::fmt::Debug {
    /// The environment's top process as seen from the host (the init in the linux tier).
    fn pid(&self) -> u32;
    /// Blocks until the environment's main process exits (call from a blocking thread).
    /// Later calls return the same result.
    fn wait(&self) -> Result<EnvironmentExit, SandboxError>;
    /// Kills every process of the environment. Idempotent.
    fn kill(&self);
    /// Peak memory of the environment in bytes, from the cgroup; `None` when unknown.
    fn max_memory_used_bytes(&self) -> Option<u64>;
    /// Kills what is left, reaps, and releases cgroups and `/tmp` storage. Idempotent;
    /// dropping the handle does it too.
    fn destroy(&self);

    /// Mounts a function's code read-only at `/var/task` (and its layers at `/opt`) in an
    /// environment made by [`Sandbox::prepare_for_adoption`].
    fn attach_code(&self, task_dir: &Path, opt_dir: Option<&Path>) -> Result<(), SandboxError> {
        let _ = (task_dir, opt_dir);
        Err(SandboxError::AdoptionUnsupported {
            reason: "this environment was not prepared ahead".to_owned(),
        })
    }

    /// Changes the memory limit, and the CPU share that follows it, of a prepared
    /// environment to a function's.
    fn set_memory(&self, memory_mb: u32) -> Result<(), SandboxError> {
        let _ = memory_mb;
        Err(SandboxError::AdoptionUnsupported {
            reason: "this environment was not prepared ahead".to_owned(),
        })
    }

    /// Whether the main process is known to have ended. Meant for environments nobody
    /// waits on (it shares a lock with [`EnvironmentHandle::wait`], which blocks).
    fn has_ended(&self) -> bool {
        false
    }
}

/// How an environment's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvironmentExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Killed by the kernel's OOM killer for exceeding MemorySize.
    pub oom_killed: bool,
}

impl EnvironmentExit {
    pub(crate) fn from_wait_status(status: i32) -> Self {
        if libc::WIFEXITED(status) {
            EnvironmentExit {
                code: Some(libc::WEXITSTATUS(status)),
                signal: None,
                oom_killed: false,
            }
        } else if libc::WIFSIGNALED(status) {
            EnvironmentExit {
                code: None,
                signal: Some(libc::WTERMSIG(status)),
                oom_killed: false,
            }
        } else {
            EnvironmentExit {
                code: None,
                signal: None,
                oom_killed: false,
            }
        }
    }
}

/// Formats like Go's `os.ProcessState`, which is what Lambda prints after
/// "Runtime exited with error: ": `exit status 127`, `signal: killed`.
impl std::fmt::Display for EnvironmentExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(signal)) => write!(f, "signal: {}", signal_name(signal)),
            (None, None) => f.write_str("exit status unknown"),
        }
    }
}

/// Go's names for signals (`syscall.Signal.String()`), as Lambda reports them.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGUSR2 => "user defined signal 2",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        libc::SIGSYS => "bad system call",
        libc::SIGXCPU => "CPU time limit exceeded",
        libc::SIGXFSZ => "file size limit exceeded",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

/// Checks the parts of a spec every tier relies on.
pub(crate) fn validate_spec(spec: &EnvironmentSpec) -> Result<(), SandboxError> {
    let invalid = |reason: String| SandboxError::InvalidSpec {
        environment_id: spec.environment_id.clone(),
        reason,
    };
    let id = &spec.environment_id;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(invalid(format!(
            "environment id {id:?} must be 1-64 characters of [a-zA-Z0-9-]"
        )));
    }
    if spec.argv.is_empty() {
        return Err(invalid(
            "argv is empty; argv[0] must be the program to run".to_owned(),
        ));
    }
    if !spec.argv[0].starts_with('/') {
        return Err(invalid(format!(
            "argv[0] {:?} must be an absolute path",
            spec.argv[0]
        )));
    }
    if spec.memory_mb < 1 {
        return Err(invalid("memory_mb must be at least 1".to_owned()));
    }
    if spec.ephemeral_storage_mb < 1 {
        return Err(invalid(
            "ephemeral_storage_mb must be at least 1".to_owned(),
        ));
    }
    for (name, _) in &spec.env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(format!(
                "environment variable name {name:?} is invalid"
            )));
        }
    }
    let has_nul = spec.argv.iter().any(|a| a.contains('\0'))
        || spec.env.iter().any(|(_, v)| v.contains('\0'))
        || spec.cwd.contains('\0');
    if has_nul {
        return Err(invalid(
            "argv, env values and cwd must not contain NUL bytes".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec {
            environment_id: "fn-1".into(),
            task_dir: "/srv/task".into(),
            opt_dir: None,
            runtime_mounts: vec![],
            memory_mb: 128,
            ephemeral_storage_mb: 512,
            argv: vec!["/var/task/bootstrap".into()],
            env: vec![],
            cwd: "/var/task".into(),
        }
    }

    #[test]
    fn exit_formats_like_lambda() {
        let exited = EnvironmentExit::from_wait_status(127 << 8);
        assert_eq!(exited.to_string(), "exit status 127");
        let killed = EnvironmentExit::from_wait_status(libc::SIGKILL);
        assert_eq!(killed.signal, Some(9));
        assert_eq!(killed.to_string(), "signal: killed");
        assert_eq!(
            EnvironmentExit::from_wait_status(libc::SIGSEGV).to_string(),
            "signal: segmentation fault"
        );
    }

    #[test]
    fn spec_validation_names_the_offending_value() {
        assert!(validate_spec(&spec()).is_ok());
        let mut bad = spec();
        bad.environment_id = "../etc".into();
        let err = validate_spec(&bad).unwrap_err().to_string();
        assert!(err.contains("\"../etc\""), "{err}");
        let mut bad = spec();
        bad.argv = vec!["bootstrap".into()];
        assert!(
            validate_spec(&bad)
                .unwrap_err()
                .to_string()
                .contains("\"bootstrap\"")
        );
        let mut bad = spec();
        bad.env = vec![("A=B".into(), "x".into())];
        assert!(validate_spec(&bad).is_err());
    }
}
