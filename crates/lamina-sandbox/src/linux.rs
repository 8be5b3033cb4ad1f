//! The linux tier: namespaces + cgroups + an unprivileged, capability-less, seccomp'd
//! process, assembled by Lamina itself.
//!
//! Opening ([`LinuxSandbox::open`]) probes root, cgroups and namespaces, sets the cgroup
//! mount option `favordynmods` if missing ([`crate::cgroup::favordynmods`]: moving a task
//! into a v1 cgroup otherwise waits for an RCU grace period, 5–18 ms), and forks the
//! spawner process ([`crate::spawner`]) before anything starts a thread.
//!
//! Start sequence ([`LinuxSandbox::start`]):
//! 1. server: create the environment's cgroups with their limits, take a `/tmp` image from
//!    the pool, build the mount plan and every C string the child needs, and send them to
//!    the spawner in one request (with the cgroup2 directory as a descriptor);
//! 2. spawner: `clone3(CLONE_NEWNS|NEWPID|NEWIPC|NEWUTS|NEWNET|CLONE_PIDFD[|CLONE_INTO_CGROUP])`
//!    from its own small address space;
//! 3. in parallel — child: build the root ([`crate::mount_plan`]) and wait on the *go*
//!    pipe; spawner: join the child to the v1 hierarchies (v2 needs nothing: it was cloned
//!    into its cgroup) and, `setns`'d into the child's network namespace and back, bring
//!    `lo` up and bind `127.0.0.1:9001` ([`crate::net`]); write *go* and reply with the pid
//!    and, over `SCM_RIGHTS`, the listener, the output/status/ready pipes and the pidfd;
//! 4. the child unshares its cgroup namespace (after joining, so it sees `/` rather than
//!    `../..`), becomes the environment's init and forks the function process, which drops
//!    privileges, installs seccomp and execs;
//! 5. the server reads the *ready* pipe (close-on-exec) until EOF: exec succeeded; or a
//!    record naming the failed step, which `start()` returns as an error.
//!
//! The init is the spawner's child; the spawner ignores `SIGCHLD`, so the kernel reaps it.
//! The server needs no parenthood: [`EnvironmentHandle::wait`] reads the function's status
//! from the status pipe and waits for the init on its pidfd; `kill` uses `cgroup.kill` and
//! `pidfd_send_signal`.
//!
//! The init (PID 1 of the namespace) reaps orphans, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/
//! SIGUSR1/SIGUSR2 to the function, writes the function's wait status to the *status* pipe
//! when it exits and then exits itself, which makes the kernel kill whatever is left in the
//! namespace. It costs one extra fork (~0.1 ms) and spares runtimes the PID-1 signal rules.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::cgroup::{self, CgroupFs, CgroupLayout, EnvCgroup, FavorDynmods, RealCgroupFs};
use crate::mount_plan::{
    self, HostFacts, MountPlan, RootSpec, SANDBOX_GID, SANDBOX_UID, SyscallMountOps, TmpSource,
};
use crate::net::{NetworkMode, RUNTIME_API_ADDR};
use crate::seccomp::{self, CompiledFilters};
use crate::spawner::{self, ChildConfig, Outcome, SpawnError, Spawner, StartRequest, WireSteps};
use crate::sys;
use crate::tmp_pool::{Ext4Pool, TmpLease, TmpStorage, TmpfsStorage};
use crate::{
    Adoption, EnvironmentExit, EnvironmentHandle, EnvironmentSpec, PendingEnvironment,
    PreparedSpec, Sandbox, SandboxError, SandboxOptions, SandboxTier, StartedEnvironment,
};

pub(crate) const NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET) as u64;

const RLIMIT_NOFILE: u64 = 1024;

/// The linux tier.
#[derive(Debug)]
pub(crate) struct LinuxSandbox {
    root_dir: PathBuf,
    cgroup_parent: String,
    layout: CgroupLayout,
    cgroups: Arc<dyn CgroupFs>,
    facts: HostFacts,
    tmp: Arc<dyn TmpStorage>,
    /// Clones the environments (see [`crate::spawner`] for why).
    spawner: Spawner,
    /// Whether cgroup migrations skip the RCU grace period (see [`cgroup::favordynmods`]).
    favordynmods: Result<String, String>,
}

impl Drop for LinuxSandbox {
    fn drop(&mut self) {
        self.layout
            .remove_parent(self.cgroups.as_ref(), &self.cgroup_parent);
    }
}

fn unavailable(reason: impl Into<String>) -> SandboxError {
    SandboxError::LinuxTierUnavailable {
        reason: reason.into(),
    }
}

impl LinuxSandbox {
    /// Probes for real and opens the tier, or says why it cannot run here.
    pub(crate) fn open(opts: &SandboxOptions) -> Result<LinuxSandbox, SandboxError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(unavailable(format!("not running as root (euid {euid})")));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| unavailable(format!("cannot read /proc/self/mountinfo: {e}")))?;
        let layout = CgroupLayout::detect(&mountinfo, |root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).ok()
        })
        .map_err(unavailable)?;
        let favordynmods = enable_favordynmods(&mountinfo);
        let cgroups: Arc<dyn CgroupFs> = Arc::new(RealCgroupFs);
        layout
            .prepare_parent(cgroups.as_ref(), &opts.cgroup_parent)
            .map_err(|e| unavailable(e.to_string()))?;
        for stale in layout.stale_environments(&opts.cgroup_parent) {
            let cg = EnvCgroup::plan(&layout, &opts.cgroup_parent, &stale);
            cg.kill_all(cgroups.as_ref());
            if let Err(err) = cg.remove(cgroups.as_ref()) {
                tracing::warn!(%err, "could not remove a stale environment cgroup");
            }
        }
        let root_dir = opts.state_dir.join("root");
        std::fs::create_dir_all(&root_dir)
            .map_err(|e| SandboxError::io("creating", &root_dir, e))?;
        let filters = seccomp::compile()?;
        let cap_last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        // Before anything below starts a thread (the /tmp pool does), so that the spawner
        // is normally a copy of a single-threaded process; it does not rely on it.
        probe_namespaces()?;
        let spawner = Spawner::new(ChildConfig {
            filters,
            cap_last_cap,
            network: NetworkMode::LoopbackOnly,
        })
        .map_err(|e| unavailable(format!("cannot fork the spawner process: {e}")))?;
        let tmp: Arc<dyn TmpStorage> = match Ext4Pool::open(&opts.state_dir.join("tmp")) {
            Ok(pool) => Arc::new(pool),
            Err(err) => {
                tracing::warn!(%err, "/tmp falls back to tmpfs, which is charged to the function's memory");
                Arc::new(TmpfsStorage {
                    reason: err.to_string(),
                })
            }
        };
        Ok(LinuxSandbox {
            root_dir,
            cgroup_parent: opts.cgroup_parent.trim_matches('/').to_owned(),
            layout,
            cgroups,
            facts: HostFacts::probe(),
            tmp,
            spawner,
            favordynmods,
        })
    }
}

/// Makes cgroup migrations cheap ([`cgroup::favordynmods`]): remounts the cgroup2 mount
/// (or a v1 hierarchy) with `favordynmods` unless it has it. Best effort.
fn enable_favordynmods(mountinfo: &str) -> Result<String, String> {
    match cgroup::favordynmods(mountinfo) {
        Ok(FavorDynmods::AlreadyOn { mount_point }) => {
            tracing::debug!(mount_point = %mount_point.display(), "cgroup favordynmods already on");
            Ok(format!("favordynmods on {}", mount_point.display()))
        }
        Ok(FavorDynmods::Remount(plan)) => {
            let target = mount_plan::cstring(&plan.mount_point)?;
            let data = CString::new(plan.data.as_str()).map_err(|e| e.to_string())?;
            // SAFETY: valid NUL-terminated strings; a remount takes no source or type.
            let ret = unsafe {
                libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    plan.flags,
                    data.as_ptr().cast(),
                )
            };
            if ret < 0 {
                let err = std::io::Error::last_os_error();
                tracing::warn!(
                    mount_point = %plan.mount_point.display(), data = %plan.data, %err,
                    "could not remount the cgroup hierarchy with favordynmods; moving a process into a cgroup will wait for an RCU grace period (5-18 ms per start)"
                );
                return Err(format!("remount failed: {err}"));
            }
            tracing::info!(
                mount_point = %plan.mount_point.display(), data = %plan.data,
                "remounted the cgroup hierarchy with favordynmods (system-wide: cgroup migrations no longer wait for an RCU grace period)"
            );
            Ok(format!(
                "favordynmods set on {}",
                plan.mount_point.display()
            ))
        }
        Err(reason) => {
            tracing::warn!(%reason, "cannot enable cgroup favordynmods; cgroup migrations stay slow");
            Err(reason)
        }
    }
}

/// Clones a child into every namespace the tier uses and lets it exit at once.
fn probe_namespaces() -> Result<(), SandboxError> {
    // SAFETY: the child only calls _exit.
    match unsafe { sys::clone3(NAMESPACES, None) }.or_else(|_| {
        // SAFETY: as above.
        unsafe { sys::clone_legacy(NAMESPACES) }
    }) {
        Ok(None) => {
            // SAFETY: async-signal-safe exit of the child.
            unsafe { libc::_exit(0) }
        }
        Ok(Some(child)) => match sys::wait_pid(child.pid) {
            Ok(status) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => Ok(()),
            Ok(status) => Err(unavailable(format!(
                "namespace probe child ended with wait status {status}"
            ))),
            Err(e) => Err(unavailable(format!("waiting for the namespace probe: {e}"))),
        },
        Err(e) => Err(unavailable(format!(
            "cannot create mount/pid/ipc/uts/net namespaces: {e}"
        ))),
    }
}

/// Everything the child needs, prepared by the spawner (from the server's request, decoded
/// in place) so the child never allocates.
pub(crate) struct ChildContext<'a> {
    pub steps: WireSteps<'a>,
    pub go_r: RawFd,
    pub ready_w: RawFd,
    pub status_w: RawFd,
    pub out_w: RawFd,
    pub keep_fds: [RawFd; 4],
    pub path: &'a CStr,
    pub argv: &'a [*const libc::c_char],
    pub envp: &'a [*const libc::c_char],
    pub cwd: &'a CStr,
    pub filters: &'a CompiledFilters,
    pub cap_last_cap: u32,
    /// Fork no function process: one is adopted ([`crate::Adoption`]).
    pub adopt: bool,
}

/// The PID an adopted main process has in the environment's namespace: the adopter forks
/// it as the first process created there after the init, which itself forks nothing.
const ADOPTED_MAIN_PID: libc::pid_t = 2;

/// Stages the child reports on the ready pipe.
#[repr(u32)]
#[derive(Clone, Copy)]
enum Stage {
    Mount = 1,
    Hostname,
    CgroupNamespace,
    Fork,
    Stdio,
    Chdir,
    Limits,
    Capabilities,
    Ids,
    NoNewPrivs,
    Seccomp,
    Exec,
}

impl Stage {
    fn from_u32(value: u32) -> Option<Stage> {
        use Stage::*;
        [
            Mount,
            Hostname,
            CgroupNamespace,
            Fork,
            Stdio,
            Chdir,
            Limits,
            Capabilities,
            Ids,
            NoNewPrivs,
            Seccomp,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == value)
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes a failure record (stage, step, errno) and exits. Async-signal-safe.
fn report_and_exit(fd: RawFd, stage: Stage, step: u32, errno: i32) -> ! {
    let mut record = [0u8; 12];
    record[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    record[4..8].copy_from_slice(&step.to_ne_bytes());
    record[8..].copy_from_slice(&errno.to_ne_bytes());
    sys::write_raw(fd, &record);
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(126) }
}

/// Signals the init forwards to the function.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The environment's init. Runs in the cloned child; allocation-free.
pub(crate) fn init_main(ctx: &ChildContext<'_>) -> ! {
    sys::close_all_except(&ctx.keep_fds);
    // The spawner ignores SIGCHLD (so the kernel reaps the inits); the init must not, or
    // its own children would be reaped before it can collect the function's status.
    sys::set_disposition(libc::SIGCHLD, libc::SIG_DFL);
    if let Err((step, errno)) = mount_plan::execute(ctx.steps, &mut SyscallMountOps) {
        report_and_exit(ctx.ready_w, Stage::Mount, step as u32, errno);
    }
    let hostname = b"lamina";
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } < 0 {
        report_and_exit(ctx.ready_w, Stage::Hostname, 0, last_errno());
    }
    // The OOM killer must pick the function, never the init.
    write_proc_file(c"/proc/self/oom_score_adj", b"-1000");
    let mut go = [0u8; 1];
    if !matches!(sys::read_full(ctx.go_r, &mut go), Ok(1)) {
        // The parent gave up on this environment.
        // SAFETY: async-signal-safe exit.
        unsafe { libc::_exit(125) };
    }
    // SAFETY: close of our own descriptor.
    unsafe { libc::close(ctx.go_r) };
    // SAFETY: unshare has no memory arguments. The parent has joined us to our cgroups.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } < 0 {
        report_and_exit(ctx.ready_w, Stage::CgroupNamespace, 0, last_errno());
    }
    // SAFETY: sigset_t is plain data; the libc calls initialise and fill it.
    let mut waited: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `waited` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut waited);
        libc::sigaddset(&mut waited, libc::SIGCHLD);
        for sig in FORWARDED {
            libc::sigaddset(&mut waited, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut());
    }
    let main = if ctx.adopt {
        // The root is ready: closing the ready pipe tells the server so. The adopter holds
        // the output and status pipes and reports the main process's status itself (it is
        // the adopted process's parent; this init is not), then kills this init.
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(ctx.status_w);
        }
        ADOPTED_MAIN_PID
    } else {
        let main = sys::raw_fork();
        if main == 0 {
            function_main(ctx);
        }
        if main < 0 {
            report_and_exit(ctx.ready_w, Stage::Fork, 0, last_errno());
        }
        main
    };
    // SAFETY: closing our copies: the function holds the output and ready pipes now.
    unsafe {
        libc::close(ctx.ready_w);
        libc::close(ctx.out_w);
    }
    loop {
        // SAFETY: `waited` is a valid, initialised signal set.
        let sig = unsafe { libc::sigwaitinfo(&waited, std::ptr::null_mut()) };
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: `status` is a valid out pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == main && !ctx.adopt {
                    sys::write_raw(ctx.status_w, &status.to_ne_bytes());
                    // SAFETY: async-signal-safe exit; the kernel kills what is left.
                    unsafe { libc::_exit(0) };
                }
            }
        } else if sig > 0 {
            // SAFETY: kill has no memory arguments.
            unsafe { libc::kill(main, sig) };
        }
    }
}

fn write_proc_file(path: &CStr, value: &[u8]) {
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        sys::write_raw(fd, value);
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    }
}

/// The function's process: drop everything, then exec. Allocation-free.
fn function_main(ctx: &ChildContext<'_>) -> ! {
    let ready = ctx.ready_w;
    // SAFETY: resetting signal state inherited from the server; no memory arguments
    // beyond the local empty set.
    unsafe {
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::setsid();
    }
    write_proc_file(c"/proc/self/oom_score_adj", b"0");
    // SAFETY: descriptor juggling on descriptors we own; the path is a valid C string.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0
            || libc::dup2(null, 0) < 0
            || libc::dup2(ctx.out_w, 1) < 0
            || libc::dup2(ctx.out_w, 2) < 0
        {
            report_and_exit(ready, Stage::Stdio, 0, last_errno());
        }
        // Keep only 0-2 and the ready pipe, which moves to 3 (close-on-exec).
        if ready != 3 && libc::dup3(ready, 3, libc::O_CLOEXEC) < 0 {
            report_and_exit(ready, Stage::Stdio, 1, last_errno());
        }
    }
    let ready = 3;
    sys::close_all_except(&[3]);
    sys::reset_priority();
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::chdir(ctx.cwd.as_ptr()) } < 0 {
        report_and_exit(ready, Stage::Chdir, 0, last_errno());
    }
    let core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let nofile = libc::rlimit {
        rlim_cur: RLIMIT_NOFILE,
        rlim_max: RLIMIT_NOFILE,
    };
    // SAFETY: valid rlimit structs.
    if unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &core) < 0
            || libc::setrlimit(libc::RLIMIT_NOFILE, &nofile) < 0
    } {
        report_and_exit(ready, Stage::Limits, 0, last_errno());
    }
    // Bounding set first: dropping it needs CAP_SETPCAP, which setresuid takes away.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) < 0
        {
            report_and_exit(ready, Stage::Capabilities, 0, last_errno());
        }
        for cap in 0..=ctx.cap_last_cap {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0 {
                report_and_exit(ready, Stage::Capabilities, cap + 1, last_errno());
            }
        }
    }
    // Raw syscalls, not the libc wrappers: glibc's set*id broadcast to "all threads"
    // walks the parent's thread list copied into this process and can wait forever on a
    // thread that was starting or exiting at clone time (seen in the benchmark).
    // SAFETY: setgroups with an empty list; id calls without memory arguments.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
            || libc::syscall(libc::SYS_setresgid, SANDBOX_GID, SANDBOX_GID, SANDBOX_GID) < 0
            || libc::syscall(libc::SYS_setresuid, SANDBOX_UID, SANDBOX_UID, SANDBOX_UID) < 0
        {
            report_and_exit(ready, Stage::Ids, 0, last_errno());
        }
    }
    // setresuid cleared the permitted and effective sets; clear the inheritable one too.
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: header and two data elements as capset(2) expects for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        report_and_exit(ready, Stage::Capabilities, 100, last_errno());
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        report_and_exit(ready, Stage::NoNewPrivs, 0, last_errno());
    }
    for (index, program) in ctx.filters.programs.iter().enumerate() {
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `fprog` points at a compiled BPF program that outlives the call.
        if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog) } < 0 {
            report_and_exit(ready, Stage::Seccomp, index as u32, last_errno());
        }
    }
    // SAFETY: `path` is a C string; argv and envp are NUL-terminated arrays of C strings
    // kept alive by the parent's stack frame, copied into this process.
    unsafe { libc::execve(ctx.path.as_ptr(), ctx.argv.as_ptr(), ctx.envp.as_ptr()) };
    let errno = last_errno();
    let mut buf = [0u8; 10];
    sys::write_raw(2, b"lamina sandbox: cannot execute ");
    sys::write_raw(2, ctx.path.to_bytes());
    sys::write_raw(2, b": errno ");
    sys::write_raw(2, sys::format_u32(errno as u32, &mut buf));
    sys::write_raw(2, b"\n");
    report_and_exit(ready, Stage::Exec, 0, errno);
}

fn cstr(value: &str) -> CString {
    // validate_spec rejected NUL bytes.
    CString::new(value).unwrap_or_default()
}

impl Sandbox for LinuxSandbox {
    fn tier(&self) -> SandboxTier {
        SandboxTier::Linux
    }

    fn describe(&self) -> String {
        let favor = match &self.favordynmods {
            Ok(_) => "favordynmods".to_owned(),
            Err(reason) => format!("no favordynmods ({reason}): slow cgroup moves"),
        };
        format!(
            "linux (namespaces mnt+pid+ipc+uts+net, {} {favor}, uid {SANDBOX_UID}, no capabilities, seccomp, {}, spawner process)",
            self.layout.describe(),
            self.tmp.describe()
        )
    }

    fn start(&self, spec: &EnvironmentSpec) -> Result<StartedEnvironment, SandboxError> {
        self.start_environment(spec, false, CodeMount::Now)
            .map(|(started, _, _)| started)
    }

    fn start_for_adoption(
        &self,
        spec: &EnvironmentSpec,
    ) -> Result<(PendingEnvironment, Adoption), SandboxError> {
        self.adoptable(spec, CodeMount::Now)
    }

    fn prepare_for_adoption(
        &self,
        spec: &PreparedSpec,
    ) -> Result<(PendingEnvironment, Adoption), SandboxError> {
        self.adoptable(&spec.environment_spec(), CodeMount::Later)
    }
}

/// Whether the function's code is part of the root as it is built, or attached later
/// ([`EnvironmentHandle::attach_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeMount {
    Now,
    Later,
}

impl LinuxSandbox {
    fn adoptable(
        &self,
        spec: &EnvironmentSpec,
        code: CodeMount,
    ) -> Result<(PendingEnvironment, Adoption), SandboxError> {
        let (started, adoption, root) = self.start_environment(spec, true, code)?;
        let adoption = adoption.ok_or_else(|| SandboxError::AdoptionUnsupported {
            reason: "the kernel gave the environment's init no pidfd (Linux 5.3 or later is needed, 5.8 for setns through it)".to_owned(),
        })?;
        let pending = PendingEnvironment::new(started, move || match root {
            Some(root) => root.wait(),
            None => Ok(()),
        });
        Ok((pending, adoption))
    }

    /// Starts an environment. Without `adopt`, returns once the function process has
    /// exec'd. With it, returns at once with what the adopter needs (`None` without a pidfd
    /// of the init to `setns` through) and the root still being built.
    fn start_environment(
        &self,
        spec: &EnvironmentSpec,
        adopt: bool,
        code: CodeMount,
    ) -> Result<(StartedEnvironment, Option<Adoption>, Option<RootSetup>), SandboxError> {
        crate::validate_spec(spec)?;
        let id = spec.environment_id.as_str();
        let invalid = |reason: String| SandboxError::InvalidSpec {
            environment_id: id.to_owned(),
            reason,
        };
        let (task_dir, opt_dir) = match code {
            CodeMount::Now => (Some(spec.task_dir.as_path()), spec.opt_dir.as_deref()),
            CodeMount::Later => (None, None),
        };
        let mut dirs: Vec<&Path> = task_dir.into_iter().collect();
        dirs.extend(opt_dir);
        dirs.extend(spec.runtime_mounts.iter().map(|(host, _)| host.as_path()));
        for dir in dirs {
            if !dir.is_dir() {
                return Err(invalid(format!(
                    "host directory {} does not exist",
                    dir.display()
                )));
            }
        }

        let began = std::time::Instant::now();
        let cgroup = EnvCgroup::plan(&self.layout, &self.cgroup_parent, id);
        cgroup.create(self.cgroups.as_ref(), spec.memory_mb)?;
        let cgroups_made = began.elapsed();
        let mut env = LinuxEnvironment {
            id: id.to_owned(),
            pid: 0,
            pidfd: None,
            status_r: Mutex::new(None),
            cgroup,
            cgroups: Arc::clone(&self.cgroups),
            peak_memory_file: std::sync::OnceLock::new(),
            tmp: Arc::clone(&self.tmp),
            lease: Mutex::new(None),
            exit: Mutex::new(None),
            destroyed: AtomicBool::new(false),
            adopted: adopt,
            memory_mb: AtomicU32::new(spec.memory_mb),
        };
        // From here on, dropping `env` releases what has been acquired.
        let lease = self.tmp.acquire(spec.ephemeral_storage_mb)?;
        let tmp = match &lease {
            TmpLease::Image(image) => TmpSource::Dir(&image.mount_point),
            TmpLease::Tmpfs { size_mb } => TmpSource::Tmpfs(*size_mb),
        };
        let plan = MountPlan::build(
            &self.root_dir,
            &self.facts,
            &RootSpec {
                task_dir,
                opt_dir,
                runtime_mounts: &spec.runtime_mounts,
                tmp,
            },
        )
        .map_err(invalid)?;
        *env.lease.lock().expect("lease lock") = Some(lease);
        let tmp_leased = began.elapsed();

        let runtime_api = RUNTIME_API_ADDR.to_string();
        let argv_c: Vec<CString> = spec.argv.iter().map(|a| cstr(a)).collect();
        let env_c: Vec<CString> = spec
            .env
            .iter()
            .filter(|(k, _)| k != "AWS_LAMBDA_RUNTIME_API")
            .map(|(k, v)| cstr(&format!("{k}={v}")))
            .chain([cstr(&format!("AWS_LAMBDA_RUNTIME_API={runtime_api}"))])
            .collect();
        let cwd = cstr(&spec.cwd);
        let (join, join_fallback) = env.cgroup.procs_to_join();
        let join: Vec<CString> = join
            .iter()
            .map(mount_plan::cstring)
            .collect::<Result<_, _>>()
            .map_err(invalid)?;
        let join_fallback = join_fallback
            .map(mount_plan::cstring)
            .transpose()
            .map_err(invalid)?;
        let argv_refs: Vec<&CStr> = argv_c.iter().map(CString::as_c_str).collect();
        let env_refs: Vec<&CStr> = env_c.iter().map(CString::as_c_str).collect();
        let join_refs: Vec<&CStr> = join.iter().map(CString::as_c_str).collect();
        let request = spawner::encode_request(&StartRequest {
            steps: &plan.steps,
            argv: &argv_refs,
            envp: &env_refs,
            cwd: &cwd,
            join: &join_refs,
            join_if_not_cloned_into: join_fallback.as_deref(),
            adopt,
        });
        if request.len() > spawner::REQUEST_MAX {
            return Err(invalid(format!(
                "argv, environment and mounts take {} bytes; at most {} are supported",
                request.len(),
                spawner::REQUEST_MAX
            )));
        }

        let into = match &env.cgroup.clone_into {
            Some(dir) => Some(File::open(dir).map_err(|e| SandboxError::Cgroup {
                action: "opening for CLONE_INTO_CGROUP".into(),
                path: dir.clone(),
                source: e,
            })?),
            None => None,
        };
        let spawned = match self
            .spawner
            .spawn(&request, into.as_ref().map(|f| f.as_fd()), adopt)
        {
            Ok(spawned) => spawned,
            Err(SpawnError::Spawner(reason)) => {
                return Err(SandboxError::syscall(
                    "start request to the sandbox's spawner process",
                    id,
                    std::io::Error::other(reason),
                ));
            }
            Err(SpawnError::Failed(reply)) => {
                let source = std::io::Error::from_raw_os_error(reply.errno);
                return Err(match reply.outcome {
                    Outcome::CgroupJoin => {
                        let path = join
                            .get(reply.detail as usize)
                            .or(join_fallback.as_ref())
                            .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
                            .unwrap_or_default();
                        SandboxError::Cgroup {
                            action: format!("joining pid {}", reply.pid),
                            path,
                            source,
                        }
                    }
                    Outcome::Network => SandboxError::syscall(
                        "setns + bind 127.0.0.1:9001 in the environment's network namespace",
                        id,
                        source,
                    ),
                    Outcome::Clone => SandboxError::syscall("clone3", id, source),
                    Outcome::Pipe => SandboxError::syscall("pipe2", id, source),
                    Outcome::BadRequest | Outcome::Started => SandboxError::syscall(
                        "start request to the sandbox's spawner process",
                        id,
                        source,
                    ),
                });
            }
        };
        drop(into);
        tracing::debug!(
            environment = id,
            cgroups_us = cgroups_made.as_micros() as u64,
            tmp_us = (tmp_leased - cgroups_made).as_micros() as u64,
            spawn_us = (began.elapsed() - tmp_leased).as_micros() as u64,
            "environment's init started"
        );
        env.pid = spawned.pid;
        env.pidfd = spawned.pidfd;
        *env.status_r.lock().expect("status lock") = Some(spawned.status_r);
        let (listener, ready_r) = (spawned.listener, spawned.ready_r);
        let root_ready = if adopt {
            Some(
                ready_r
                    .try_clone()
                    .map_err(|e| SandboxError::syscall("dup (ready pipe)", id, e))?,
            )
        } else {
            None
        };

        let root = RootSetup {
            environment_id: id.to_owned(),
            ready_r,
            plan,
            cwd: spec.cwd.clone(),
            program: spec.argv.first().cloned().unwrap_or_default(),
        };
        let root = if adopt {
            Some(root)
        } else {
            root.wait()?;
            None
        };
        let adoption = match (spawned.adopter_ends, &env.pidfd, root_ready) {
            (Some((output, status)), Some(pidfd), Some(root_ready)) => Some(Adoption {
                root_ready,
                init_pidfd: pidfd
                    .try_clone()
                    .map_err(|e| SandboxError::syscall("dup (pidfd)", id, e))?,
                namespaces: (NAMESPACES | libc::CLONE_NEWCGROUP as u64) as i32,
                output,
                status,
                cgroup_procs: join
                    .iter()
                    .chain(join_fallback.as_ref())
                    .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
                    .collect(),
                cwd: spec.cwd.clone(),
                uid: SANDBOX_UID,
                gid: SANDBOX_GID,
                nofile: RLIMIT_NOFILE,
                cap_last_cap: self.spawner.config().cap_last_cap,
                seccomp_programs: self.spawner.config().filters.as_bytes(),
                env: env_c
                    .iter()
                    .filter_map(|kv| {
                        let kv = kv.to_str().ok()?;
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_owned(), v.to_owned()))
                    })
                    .collect(),
            }),
            _ => None,
        };
        Ok((
            StartedEnvironment {
                runtime_api_listener: listener,
                runtime_api_address: runtime_api,
                output: spawned.output,
                handle: Box::new(env),
            },
            adoption,
            root,
        ))
    }
}

/// The environment's root as its init builds it: `wait` reads the ready pipe until EOF
/// (the root is ready, or the function process has exec'd) or a failure record.
struct RootSetup {
    environment_id: String,
    ready_r: OwnedFd,
    plan: MountPlan,
    cwd: String,
    program: String,
}

impl RootSetup {
    fn wait(self) -> Result<(), SandboxError> {
        let id = self.environment_id.as_str();
        let mut record = [0u8; 12];
        let got = sys::read_full(self.ready_r.as_raw_fd(), &mut record)
            .map_err(|e| SandboxError::syscall("read (ready pipe)", id, e))?;
        if got == 0 {
            return Ok(());
        }
        let stage = u32::from_ne_bytes(record[..4].try_into().unwrap_or_default());
        let step = u32::from_ne_bytes(record[4..8].try_into().unwrap_or_default());
        let errno = i32::from_ne_bytes(record[8..].try_into().unwrap_or_default());
        let step = match Stage::from_u32(stage) {
            Some(Stage::Mount) => self
                .plan
                .steps
                .get(step as usize)
                .map_or_else(|| format!("mount step {step}"), |s| s.describe()),
            Some(Stage::Hostname) => "sethostname".into(),
            Some(Stage::CgroupNamespace) => "unshare(CLONE_NEWCGROUP)".into(),
            Some(Stage::Fork) => "fork of the function process".into(),
            Some(Stage::Stdio) => "setting up stdin/stdout/stderr".into(),
            Some(Stage::Chdir) => format!("chdir {:?}", self.cwd),
            Some(Stage::Limits) => "setrlimit".into(),
            Some(Stage::Capabilities) => "dropping capabilities".into(),
            Some(Stage::Ids) => format!("switching to uid {SANDBOX_UID} gid {SANDBOX_GID}"),
            Some(Stage::NoNewPrivs) => "PR_SET_NO_NEW_PRIVS".into(),
            Some(Stage::Seccomp) => "installing the seccomp filter".into(),
            Some(Stage::Exec) => format!("execve {:?}", self.program),
            None => format!("unknown stage {stage}"),
        };
        Err(SandboxError::Setup {
            environment_id: id.to_owned(),
            step,
            source: std::io::Error::from_raw_os_error(errno),
        })
    }
}

/// One running linux-tier environment.
#[derive(Debug)]
struct LinuxEnvironment {
    id: String,
    /// The init, in the host's PID namespace (a child of the spawner, not of the server).
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    status_r: Mutex<Option<File>>,
    cgroup: EnvCgroup,
    cgroups: Arc<dyn CgroupFs>,
    /// The cgroup's peak-memory file, opened on first use.
    peak_memory_file: std::sync::OnceLock<Option<File>>,
    tmp: Arc<dyn TmpStorage>,
    lease: Mutex<Option<TmpLease>>,
    /// Set once the init has been reaped; the lock also serialises waiting.
    exit: Mutex<Option<EnvironmentExit>>,
    destroyed: AtomicBool,
    /// The main process is adopted: its parent, not the init, reports its status.
    adopted: bool,
    /// The memory size the cgroup's limits are for.
    memory_mb: AtomicU32,
}

impl EnvironmentHandle for LinuxEnvironment {
    fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn wait(&self) -> Result<EnvironmentExit, SandboxError> {
        let mut exit = self.exit.lock().expect("exit lock");
        if let Some(done) = *exit {
            return Ok(done);
        }
        if self.pid <= 0 {
            return Err(SandboxError::syscall(
                "waitpid",
                &self.id,
                std::io::Error::from_raw_os_error(libc::ECHILD),
            ));
        }
        // The init is the spawner's child, not ours (the kernel reaps it). It writes the
        // function's wait status before it exits; EOF without a status means the init
        // itself died first, and only SIGKILL can do that (it blocks or handles every
        // other signal, and has oom_score_adj -1000).
        let mut buf = [0u8; 4];
        let main_status = self
            .status_r
            .lock()
            .expect("status lock")
            .take()
            .and_then(|f| sys::read_full(f.as_raw_fd(), &mut buf).ok())
            .filter(|n| *n == 4)
            .map(|_| i32::from_ne_bytes(buf));
        // An adopted main process's parent reports its status and then kills the init;
        // EOF without a status means that parent is gone (or the environment was never
        // adopted), and nothing else would end the init.
        if self.adopted && main_status.is_none() {
            self.kill();
        }
        // Then until the init is gone, as when we reaped it ourselves.
        if let Some(pidfd) = &self.pidfd {
            sys::wait_pidfd_exit(pidfd.as_raw_fd());
        }
        let init_status = libc::SIGKILL;
        let mut result = EnvironmentExit::from_wait_status(main_status.unwrap_or(init_status));
        if result.signal == Some(libc::SIGKILL) && self.cgroup.oom_kills(self.cgroups.as_ref()) > 0
        {
            result.oom_killed = true;
            // v1 kills only the largest process; the init's exit took the namespace, and
            // this catches anything else in the cgroup.
            self.cgroup.kill_all(self.cgroups.as_ref());
        }
        *exit = Some(result);
        Ok(result)
    }

    fn kill(&self) {
        self.cgroup.kill_all(self.cgroups.as_ref());
        match &self.pidfd {
            // Killing the init kills the whole PID namespace.
            Some(pidfd) => {
                let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
            }
            None => {
                // Without a pidfd (kernels before 5.3), only signal until wait() has seen
                // the init exit. The spawner reaps it, so a PID reused in the short gap
                // between the init's exit and wait() is possible; pidfds close that gap.
                if let Ok(exit) = self.exit.try_lock()
                    && exit.is_none()
                    && self.pid > 0
                {
                    // SAFETY: kill has no memory arguments.
                    unsafe { libc::kill(self.pid, libc::SIGKILL) };
                }
            }
        }
    }

    fn max_memory_used_bytes(&self) -> Option<u64> {
        // Read after every invocation for its REPORT line: the file stays open and is read
        // with one pread (cgroup files regenerate at offset 0), instead of open, statx,
        // read, read, close each time.
        let file = self.peak_memory_file.get_or_init(|| {
            self.cgroup
                .peak_memory_files()
                .iter()
                .find_map(|path| File::open(path).ok())
        });
        let Some(file) = file else {
            return self.cgroup.peak_memory(self.cgroups.as_ref());
        };
        let mut buffer = [0u8; 32];
        let read = std::os::unix::fs::FileExt::read_at(file, &mut buffer, 0).ok()?;
        std::str::from_utf8(&buffer[..read])
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn attach_code(&self, task_dir: &Path, opt_dir: Option<&Path>) -> Result<(), SandboxError> {
        let Some(pidfd) = &self.pidfd else {
            return Err(SandboxError::AdoptionUnsupported {
                reason: "no pidfd of the environment's init to reach its mount namespace"
                    .to_owned(),
            });
        };
        let invalid = |reason: String| SandboxError::InvalidSpec {
            environment_id: self.id.clone(),
            reason,
        };
        let mut trees = vec![(
            mount_plan::cstring(task_dir).map_err(invalid)?,
            c"/var/task".to_owned(),
        )];
        if let Some(opt) = opt_dir {
            trees.push((
                mount_plan::cstring(opt).map_err(invalid)?,
                c"/opt".to_owned(),
            ));
        }
        let trees: Vec<(&CStr, &CStr)> = trees
            .iter()
            .map(|(host, inside)| (host.as_c_str(), inside.as_c_str()))
            .collect();
        sys::attach_trees(pidfd.as_raw_fd(), &trees, mount_plan::RO_BIND_REMOUNT)
            .map_err(|e| SandboxError::syscall("open_tree + move_mount of the code", &self.id, e))
    }

    fn set_memory(&self, memory_mb: u32) -> Result<(), SandboxError> {
        let from = self.memory_mb.load(Ordering::SeqCst);
        self.cgroup
            .change_limits(self.cgroups.as_ref(), from, memory_mb)?;
        self.memory_mb.store(memory_mb, Ordering::SeqCst);
        Ok(())
    }

    fn has_ended(&self) -> bool {
        if self.exit.lock().expect("exit lock").is_some() {
            return true;
        }
        // The status pipe is readable (a status, or EOF) once the main process is gone.
        let status = self.status_r.lock().expect("status lock");
        let Some(file) = status.as_ref() else {
            return true;
        };
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
    }

    fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.pid > 0 {
            self.kill();
            if let Err(err) = self.wait() {
                tracing::warn!(environment_id = %self.id, %err, "could not reap the environment");
            }
        }
        if let Err(err) = self.cgroup.remove(self.cgroups.as_ref()) {
            tracing::warn!(environment_id = %self.id, %err, "could not remove the environment's cgroup");
        }
        if let Some(lease) = self.lease.lock().expect("lease lock").take() {
            self.tmp.release(lease);
        }
    }
}

impl Drop for LinuxEnvironment {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_dead_spawner_fails_one_start_and_is_replaced() {
        if !is_root() {
            eprintln!("!!!!! SKIPPED: needs root !!!!!");
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let task = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            task.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let parent = format!("lamina-unit-{}", std::process::id());
        let sandbox = LinuxSandbox::open(&SandboxOptions {
            state_dir: state.path().to_owned(),
            cgroup_parent: parent.clone(),
        })
        .unwrap();
        let spec = |n: u32| EnvironmentSpec {
            environment_id: format!("respawn-{n}"),
            task_dir: task.path().to_owned(),
            opt_dir: None,
            runtime_mounts: vec![],
            memory_mb: 128,
            ephemeral_storage_mb: 16,
            argv: vec!["/bin/sh".into(), "-c".into(), "echo ok".into()],
            env: vec![],
            cwd: "/".into(),
        };
        let run = |n: u32| -> Result<(String, EnvironmentExit), SandboxError> {
            let mut started = sandbox.start(&spec(n))?;
            let mut out = String::new();
            started.output.read_to_string(&mut out).unwrap();
            let exit = started.handle.wait()?;
            started.handle.destroy();
            Ok((out, exit))
        };
        assert_eq!(run(1).unwrap().0, "ok\n");

        let old = sandbox.spawner.pid().unwrap();
        // SAFETY: kill(2) has no memory arguments; `old` is our child.
        unsafe { libc::kill(old, libc::SIGKILL) };
        std::thread::sleep(std::time::Duration::from_millis(50));
        let err = run(2).unwrap_err().to_string();
        assert!(err.contains("spawner"), "{err}");
        let new = sandbox.spawner.pid().unwrap();
        assert_ne!(old, new);
        let (out, exit) = run(3).unwrap();
        assert_eq!((out.as_str(), exit.code), ("ok\n", Some(0)));

        // The spawner's children (the inits) are reaped, not left as zombies.
        let zombies =
            std::fs::read_to_string(format!("/proc/{new}/task/{new}/children")).unwrap_or_default();
        assert_eq!(zombies.trim(), "", "the spawner still has children");
        drop(sandbox);
        // Dropping the sandbox ends (and reaps) the spawner.
        assert!(!Path::new(&format!("/proc/{new}")).exists());
        for root in ["memory", "cpu", "pids", "unified"] {
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(root).join(&parent));
        }
    }
}
