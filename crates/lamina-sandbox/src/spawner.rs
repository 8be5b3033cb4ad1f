//! The spawner: a small process, forked when the sandbox opens, that clones every
//! environment so the server never has to.
//!
//! **Why.** `clone3` without `CLONE_VM` copies the caller's page tables, and until the
//! child is done both sides take copy-on-write faults on every page they touch. From the
//! real `lamina serve` (multi-threaded, ~100 MB RSS after a few CreateFunction uploads)
//! that made `start()` cost ~13 ms with 100 MB of touched heap and ~38 ms with 400 MB,
//! against ~4.5 ms from a small process (`examples/scaling_probe.rs`, 2 vCPU). With the
//! spawner it is ~3.5 ms at 0, 100 and 400 MB alike; `sandbox_bench` went from a median of
//! 5.9 ms (p99 12.5 ms) to 3.0 ms (p99 5.3 ms), and 64 concurrent starts (62 of them making
//! their `/tmp` image on the spot) finish in 0.25–0.33 s. The spawner is
//! forked from the server in [`crate::linux::LinuxSandbox::open`], which `lamina serve`
//! calls before its tokio runtime exists (RSS ~10 MB, one thread), and its memory never
//! grows afterwards: clones from it cost the same whatever the server's size.
//!
//! **Why a fork and not `exec("/proc/self/exe", hidden argument)`.** This is a library:
//! `lamina serve`, the test harnesses and the examples each own their `main`, and all of
//! them would have to recognise the hidden argument first thing. A fork costs ~1 ms once
//! (at open, from a ~10 MB process), shares its pages copy-on-write with the server, and
//! the rules below make it safe even when the server already had threads.
//!
//! **Protocol.** One `SOCK_SEQPACKET` socket pair; the server holds one end behind a mutex
//! and sends one request at a time, each answered by exactly one reply:
//! * request: the precomputed mount plan, argv, envp, cwd and the v1 `cgroup.procs` files
//!   to join, encoded by [`encode_request`] (length-prefixed, NUL-terminated strings so the
//!   spawner can borrow `&CStr`s straight from its receive buffer), plus the cgroup2
//!   directory for `CLONE_INTO_CGROUP` as an `SCM_RIGHTS` descriptor;
//! * the spawner creates the go/ready/status/output pipes, `clone3`s the environment's
//!   init ([`crate::linux::init_main`], unchanged), joins it to the v1 cgroups, binds the
//!   Runtime API listener inside its network namespace (`setns` there and back: the
//!   spawner is single-threaded and does nothing else), writes *go*, and
//! * replies with a fixed [`Reply`] record (pid, or which step failed with which errno) and,
//!   via `SCM_RIGHTS`, the listener, the output and status pipes' read ends, the ready
//!   pipe's read end and the pidfd.
//!
//! The server then waits on the ready pipe itself, so the spawner is busy for only the
//! clone and the two joins (a fraction of a millisecond) and several `start()`s overlap
//! their slow part (the child building its root). The spawner's `SIGCHLD` is `SIG_IGN`, so
//! the kernel reaps the inits; the server learns how an environment ended from the init's
//! status pipe (the function's wait status, or EOF when the init itself was SIGKILLed) and
//! when it is gone from the pidfd, and kills it with `pidfd_send_signal` and `cgroup.kill`
//! — none of which needs to be the parent. When the server drops the sandbox (or dies) the
//! socket closes and the spawner exits; if the spawner dies, `start()` fails saying so and
//! a new one is forked for the next call.
//!
//! **What the spawner may do after `fork`.** It is a copy of a process that may have had
//! other threads (`open_sandbox` may be called from a threaded program, and a replacement
//! spawner is always forked from the running server), so any lock — the allocator's,
//! stdio's, `tracing`'s, the environment's, any `Mutex` of the server — may be held
//! forever in it. So after `fork` it only makes system calls on memory prepared before the
//! fork: the receive buffer and the argv/envp pointer arrays are allocated by the server
//! beforehand ([`Buffers`]), requests are decoded in place, errors travel as errno values,
//! and it ends with `_exit` (no destructors of the server's objects, no unwinding past
//! [`spawner_main`]). It never logs, allocates, spawns threads or touches the sandbox's
//! other state. The environment's init it clones follows the same rules (it already did
//! when it was cloned from the server).

use std::ffi::CStr;
use std::fs::File;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use libc::c_char;

use crate::linux::{ChildContext, NAMESPACES, init_main};
use crate::mount_plan::{MountStep, MountStepRef};
use crate::net::{self, NetError, NetworkMode};
use crate::seccomp::CompiledFilters;
use crate::sys;

/// The largest request: a unix `SOCK_SEQPACKET` message must fit the socket's send buffer
/// (`net.core.wmem_default`, 208 KiB by default). Lambda caps environment variables at 4 KB,
/// and a mount plan is a few KB, so this is far more than needed.
pub(crate) const REQUEST_MAX: usize = 192 * 1024;

const MAGIC: u32 = 0x4c4d_5331; // "LMS1"

/// What the server sends for one environment (borrowed from its `start()`).
#[derive(Debug)]
pub(crate) struct StartRequest<'a> {
    pub steps: &'a [MountStep],
    pub argv: &'a [&'a CStr],
    pub envp: &'a [&'a CStr],
    pub cwd: &'a CStr,
    /// `cgroup.procs` files (v1) to write the init's pid into after the clone.
    pub join: &'a [&'a CStr],
    /// The cgroup2 `cgroup.procs` to join instead when `CLONE_INTO_CGROUP` is unavailable.
    pub join_if_not_cloned_into: Option<&'a CStr>,
    /// The init forks no function process: one is adopted ([`crate::Adoption`]), and the
    /// reply carries the output and status pipes' write ends for the adopter.
    pub adopt: bool,
}

// ---- encoding: the server side, allocating freely ----

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_ne_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn cstr(&mut self, s: &CStr) {
        self.bytes(s.to_bytes_with_nul());
    }
    fn opt_cstr(&mut self, s: Option<&CStr>) {
        match s {
            Some(s) => {
                self.u32(1);
                self.cstr(s);
            }
            None => self.u32(0),
        }
    }
}

const STEP_MOUNT: u32 = 1;
const STEP_MKDIR: u32 = 2;
const STEP_FILE: u32 = 3;
const STEP_SYMLINK: u32 = 4;
const STEP_PIVOT: u32 = 5;

/// Serialises a request. The layout is private to this module: magic, then counted lists
/// of steps, argv, envp, the cwd, the join list and the optional fallback join.
pub(crate) fn encode_request(req: &StartRequest<'_>) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(8 * 1024));
    w.u32(MAGIC);
    w.u32(req.steps.len() as u32);
    for step in req.steps {
        match step.as_ref() {
            MountStepRef::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                w.u32(STEP_MOUNT);
                w.opt_cstr(source);
                w.cstr(target);
                w.opt_cstr(fstype);
                #[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
                w.u64(u64::from(flags));
                w.opt_cstr(data);
            }
            MountStepRef::Mkdir { path, mode } => {
                w.u32(STEP_MKDIR);
                w.cstr(path);
                w.u32(mode);
            }
            MountStepRef::CreateFile {
                path,
                contents,
                mode,
            } => {
                w.u32(STEP_FILE);
                w.cstr(path);
                w.bytes(contents);
                w.u32(mode);
            }
            MountStepRef::Symlink { target, link } => {
                w.u32(STEP_SYMLINK);
                w.cstr(target);
                w.cstr(link);
            }
            MountStepRef::PivotRoot { new_root } => {
                w.u32(STEP_PIVOT);
                w.cstr(new_root);
            }
        }
    }
    for list in [req.argv, req.envp] {
        w.u32(list.len() as u32);
        for s in list {
            w.cstr(s);
        }
    }
    w.cstr(req.cwd);
    w.u32(req.join.len() as u32);
    for s in req.join {
        w.cstr(s);
    }
    w.opt_cstr(req.join_if_not_cloned_into);
    w.u32(u32::from(req.adopt));
    w.0
}

// ---- decoding: the spawner side, allocation-free ----

#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn cstr(&mut self) -> Option<&'a CStr> {
        CStr::from_bytes_with_nul(self.bytes()?).ok()
    }
    fn opt_cstr(&mut self) -> Option<Option<&'a CStr>> {
        match self.u32()? {
            0 => Some(None),
            1 => Some(Some(self.cstr()?)),
            _ => None,
        }
    }
    fn step(&mut self) -> Option<MountStepRef<'a>> {
        Some(match self.u32()? {
            STEP_MOUNT => MountStepRef::Mount {
                source: self.opt_cstr()?,
                target: self.cstr()?,
                fstype: self.opt_cstr()?,
                flags: self.u64()? as libc::c_ulong,
                data: self.opt_cstr()?,
            },
            STEP_MKDIR => MountStepRef::Mkdir {
                path: self.cstr()?,
                mode: self.u32()?,
            },
            STEP_FILE => MountStepRef::CreateFile {
                path: self.cstr()?,
                contents: self.bytes()?,
                mode: self.u32()?,
            },
            STEP_SYMLINK => MountStepRef::Symlink {
                target: self.cstr()?,
                link: self.cstr()?,
            },
            STEP_PIVOT => MountStepRef::PivotRoot {
                new_root: self.cstr()?,
            },
            _ => return None,
        })
    }
}

/// The encoded mount steps of a validated request, decoded lazily (allocation-free) as the
/// child walks them.
#[derive(Clone, Copy)]
pub(crate) struct WireSteps<'a> {
    reader: Reader<'a>,
    remaining: u32,
}

impl<'a> Iterator for WireSteps<'a> {
    type Item = MountStepRef<'a>;
    fn next(&mut self) -> Option<MountStepRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.reader.step()
    }
}

/// A counted list of C strings, iterated in place.
#[derive(Clone, Copy)]
struct WireStrings<'a> {
    reader: Reader<'a>,
    remaining: u32,
}

impl<'a> Iterator for WireStrings<'a> {
    type Item = &'a CStr;
    fn next(&mut self) -> Option<&'a CStr> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.reader.cstr()
    }
}

/// A request decoded in place.
struct Decoded<'a> {
    steps: WireSteps<'a>,
    argv0: &'a CStr,
    cwd: &'a CStr,
    join: WireStrings<'a>,
    join_if_not_cloned_into: Option<&'a CStr>,
    adopt: bool,
}

/// Validates the whole request and fills the NUL-terminated `argv`/`envp` pointer arrays
/// without growing them. `None` for a malformed request.
fn decode<'a>(
    buf: &'a [u8],
    argv: &mut Vec<*const c_char>,
    envp: &mut Vec<*const c_char>,
) -> Option<Decoded<'a>> {
    let mut r = Reader { buf, pos: 0 };
    if r.u32()? != MAGIC {
        return None;
    }
    let n_steps = r.u32()?;
    let steps = WireSteps {
        reader: r,
        remaining: n_steps,
    };
    for _ in 0..n_steps {
        r.step()?;
    }
    for list in [&mut *argv, &mut *envp] {
        list.clear();
        let n = r.u32()? as usize;
        if n >= list.capacity() {
            return None;
        }
        for _ in 0..n {
            list.push(r.cstr()?.as_ptr());
        }
        list.push(std::ptr::null());
    }
    if argv.len() < 2 {
        return None;
    }
    // SAFETY: argv[0] was just taken from a `&CStr` borrowed from `buf`.
    let argv0 = unsafe { CStr::from_ptr(argv[0]) };
    let cwd = r.cstr()?;
    let n_join = r.u32()?;
    let join = WireStrings {
        reader: r,
        remaining: n_join,
    };
    for _ in 0..n_join {
        r.cstr()?;
    }
    let join_if_not_cloned_into = r.opt_cstr()?;
    let adopt = match r.u32()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    (r.pos == buf.len()).then_some(Decoded {
        steps,
        argv0,
        cwd,
        join,
        join_if_not_cloned_into,
        adopt,
    })
}

// ---- the reply ----

/// How a request ended, as the spawner reports it.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Started = 0,
    BadRequest,
    Pipe,
    Clone,
    /// `detail` is the index into the join list; `join.len()` is the fallback join.
    CgroupJoin,
    Network,
}

/// The fixed reply record. With [`Outcome::Started`] it carries, via `SCM_RIGHTS` and in
/// this order: listener, output read end, status read end, ready read end, then for an
/// adopted environment the output and status write ends, then the pidfd (if any).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    pub outcome: Outcome,
    pub detail: u32,
    pub errno: i32,
    pub pid: i32,
    pub has_pidfd: bool,
}

impl Reply {
    const LEN: usize = 20;
    fn encode(&self) -> [u8; Reply::LEN] {
        let mut out = [0u8; Reply::LEN];
        out[..4].copy_from_slice(&(self.outcome as u32).to_ne_bytes());
        out[4..8].copy_from_slice(&self.detail.to_ne_bytes());
        out[8..12].copy_from_slice(&self.errno.to_ne_bytes());
        out[12..16].copy_from_slice(&self.pid.to_ne_bytes());
        out[16..].copy_from_slice(&u32::from(self.has_pidfd).to_ne_bytes());
        out
    }
    fn decode(bytes: &[u8]) -> Option<Reply> {
        let word = |i: usize| -> Option<[u8; 4]> { bytes.get(i..i + 4)?.try_into().ok() };
        if bytes.len() != Reply::LEN {
            return None;
        }
        let outcome = match u32::from_ne_bytes(word(0)?) {
            0 => Outcome::Started,
            1 => Outcome::BadRequest,
            2 => Outcome::Pipe,
            3 => Outcome::Clone,
            4 => Outcome::CgroupJoin,
            5 => Outcome::Network,
            _ => return None,
        };
        Some(Reply {
            outcome,
            detail: u32::from_ne_bytes(word(4)?),
            errno: i32::from_ne_bytes(word(8)?),
            pid: i32::from_ne_bytes(word(12)?),
            has_pidfd: u32::from_ne_bytes(word(16)?) != 0,
        })
    }
    fn failed(outcome: Outcome, detail: u32, errno: i32, pid: i32) -> Reply {
        Reply {
            outcome,
            detail,
            errno,
            pid,
            has_pidfd: false,
        }
    }
}

// ---- the spawner process ----

/// What the spawner needs besides the request, fixed for its lifetime.
#[derive(Debug)]
pub(crate) struct ChildConfig {
    pub filters: CompiledFilters,
    pub cap_last_cap: u32,
    pub network: NetworkMode,
}

/// Memory the spawner uses, allocated by the server before the fork.
struct Buffers {
    request: Vec<u8>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

impl Buffers {
    fn new() -> Buffers {
        // Every string takes at least 5 bytes on the wire, which bounds the arrays.
        let pointers = REQUEST_MAX / 5 + 2;
        Buffers {
            request: vec![0; REQUEST_MAX],
            argv: Vec::with_capacity(pointers),
            envp: Vec::with_capacity(pointers),
        }
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn kill_child(pid: i32, pidfd: Option<&OwnedFd>) {
    match pidfd {
        Some(fd) => {
            let _ = sys::pidfd_send_signal(fd.as_raw_fd(), libc::SIGKILL);
        }
        // SAFETY: kill(2) has no memory arguments; the child is too young to be reaped.
        None => unsafe {
            libc::kill(pid, libc::SIGKILL);
        },
    }
}

/// Writes `pid` to a `cgroup.procs` file. Allocation-free.
fn write_pid(path: &CStr, pid: i32) -> Result<(), i32> {
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptor was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut digits = [0u8; 10];
    let digits = sys::format_u32(pid as u32, &mut digits);
    // SAFETY: pointer and length describe `digits`; one write(2), as cgroup files want.
    let n = unsafe { libc::write(fd.as_raw_fd(), digits.as_ptr().cast(), digits.len()) };
    if n < 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Descriptors to send with a reply.
type ReplyFds = [Option<OwnedFd>; 7];

/// Serves one request. Allocation-free. Never returns in the cloned child.
fn serve(
    config: &ChildConfig,
    home_netns: BorrowedFd<'_>,
    buffers: &mut Buffers,
    len: usize,
    cgroup_fd: Option<&OwnedFd>,
    fds: &mut ReplyFds,
) -> Reply {
    let Buffers {
        request,
        argv,
        envp,
    } = buffers;
    let Some(req) = decode(&request[..len], argv, envp) else {
        return Reply::failed(Outcome::BadRequest, 0, libc::EINVAL, 0);
    };
    let pipes =
        (|| Ok::<_, std::io::Error>((sys::pipe()?, sys::pipe()?, sys::pipe()?, sys::pipe()?)))();
    let ((go_r, go_w), (ready_r, ready_w), (status_r, status_w), (out_r, out_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return Reply::failed(Outcome::Pipe, 0, errno_of(&e), 0),
    };
    let mut keep_fds = [
        go_r.as_raw_fd(),
        ready_w.as_raw_fd(),
        status_w.as_raw_fd(),
        out_w.as_raw_fd(),
    ];
    keep_fds.sort_unstable();
    let ctx = ChildContext {
        steps: req.steps,
        go_r: go_r.as_raw_fd(),
        ready_w: ready_w.as_raw_fd(),
        status_w: status_w.as_raw_fd(),
        out_w: out_w.as_raw_fd(),
        keep_fds,
        path: req.argv0,
        argv: argv.as_slice(),
        envp: envp.as_slice(),
        cwd: req.cwd,
        filters: &config.filters,
        cap_last_cap: config.cap_last_cap,
        adopt: req.adopt,
    };
    let into = cgroup_fd.map(|f| f.as_raw_fd());
    // SAFETY: the child runs only `init_main`, which is allocation-free and uses
    // async-signal-safe calls on data prepared above, then exits or execs.
    let cloned = match unsafe { sys::clone3(NAMESPACES, into) } {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EPERM | libc::E2BIG)
            ) =>
        {
            // SAFETY: as above.
            unsafe { sys::clone_legacy(NAMESPACES) }
        }
        other => other,
    };
    let child = match cloned {
        Ok(Some(child)) => child,
        Ok(None) => init_main(&ctx),
        Err(e) => return Reply::failed(Outcome::Clone, 0, errno_of(&e), 0),
    };
    let cloned_into = into.is_some() && child.pidfd.is_some();
    drop((go_r, ready_w));
    // The adopter writes the function's output and status; the init closes its copies.
    let adopter_ends = req.adopt.then_some((out_w, status_w));
    let pid = child.pid;
    let fail = |outcome, detail, errno| {
        kill_child(pid, child.pidfd.as_ref());
        Reply::failed(outcome, detail, errno, pid)
    };

    // The child builds its root meanwhile.
    let mut index = 0;
    for path in req.join {
        if let Err(errno) = write_pid(path, pid) {
            return fail(Outcome::CgroupJoin, index, errno);
        }
        index += 1;
    }
    if !cloned_into
        && let Some(path) = req.join_if_not_cloned_into
        && let Err(errno) = write_pid(path, pid)
    {
        return fail(Outcome::CgroupJoin, index, errno);
    }

    let proc_ns;
    let ns = match &child.pidfd {
        Some(pidfd) => pidfd.as_fd(),
        None => {
            // "/proc/<pid>/ns/net" without allocating.
            let mut path = [0u8; 32];
            let mut digits = [0u8; 10];
            let digits = sys::format_u32(pid as u32, &mut digits);
            let mut at = 0;
            for part in [b"/proc/".as_slice(), digits, b"/ns/net\0"] {
                path[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            // SAFETY: `path` is NUL-terminated.
            let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return fail(
                    Outcome::Network,
                    0,
                    errno_of(&std::io::Error::last_os_error()),
                );
            }
            // SAFETY: just opened, ours.
            proc_ns = unsafe { OwnedFd::from_raw_fd(fd) };
            proc_ns.as_fd()
        }
    };
    let listener = match net::configure(ns, home_netns, config.network) {
        Ok(listener) => listener,
        Err(NetError::Setup(e)) => return fail(Outcome::Network, 0, errno_of(&e)),
        Err(NetError::Stranded) => {
            // Every later environment would share this namespace: stop; the server
            // sees the closed socket and forks a fresh spawner.
            kill_child(pid, child.pidfd.as_ref());
            // SAFETY: async-signal-safe exit without running the server's destructors.
            unsafe { libc::_exit(3) }
        }
    };

    sys::write_raw(go_w.as_raw_fd(), b"g");
    drop(go_w);
    let has_pidfd = child.pidfd.is_some();
    let (out_w, status_w) = adopter_ends.unzip();
    *fds = [
        Some(OwnedFd::from(listener)),
        Some(out_r),
        Some(status_r),
        Some(ready_r),
        out_w,
        status_w,
        child.pidfd,
    ];
    Reply {
        outcome: Outcome::Started,
        detail: 0,
        errno: 0,
        pid,
        has_pidfd,
    }
}

/// The spawner's main loop. Only system calls on memory prepared before the fork.
fn spawner_main(
    sock: OwnedFd,
    home_netns: OwnedFd,
    config: &ChildConfig,
    mut buffers: Buffers,
) -> ! {
    /// Exits if anything ever unwinds here, rather than returning into the server's code.
    struct ExitOnUnwind;
    impl Drop for ExitOnUnwind {
        fn drop(&mut self) {
            // SAFETY: async-signal-safe exit.
            unsafe { libc::_exit(70) }
        }
    }
    let _guard = ExitOnUnwind;
    loop {
        let mut received: [Option<OwnedFd>; 1] = [None];
        let got = sys::recv_with_fds(sock.as_raw_fd(), &mut buffers.request, &mut received);
        let reply_fds: &mut ReplyFds = &mut [None, None, None, None, None, None, None];
        let reply = match got {
            // The server closed its end (sandbox dropped or server gone).
            Ok(r) if r.len == 0 => {
                // SAFETY: async-signal-safe exit.
                unsafe { libc::_exit(0) }
            }
            Ok(r) if r.truncated => Reply::failed(Outcome::BadRequest, 0, libc::E2BIG, 0),
            Ok(r) => serve(
                config,
                home_netns.as_fd(),
                &mut buffers,
                r.len,
                received[0].as_ref(),
                reply_fds,
            ),
            // SAFETY: async-signal-safe exit.
            Err(_) => unsafe { libc::_exit(1) },
        };
        drop(received);
        let mut raw = [-1; 7];
        let mut n = 0;
        for fd in reply_fds.iter().flatten() {
            raw[n] = fd.as_raw_fd();
            n += 1;
        }
        if sys::send_with_fds(sock.as_raw_fd(), &reply.encode(), &raw[..n]).is_err() {
            // SAFETY: async-signal-safe exit.
            unsafe { libc::_exit(1) }
        }
        // Dropping `reply_fds` closes our copies.
    }
}

// ---- the server side ----

/// What a successful request hands the server.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
    pub listener: TcpListener,
    pub output: File,
    pub status_r: File,
    pub ready_r: OwnedFd,
    /// For an adopted environment: the output and status pipes' write ends.
    pub adopter_ends: Option<(OwnedFd, OwnedFd)>,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The spawner process is gone (or answered nonsense); a new one was started if possible.
    Spawner(String),
    /// The spawner refused or failed at a step (`Reply::outcome`); the child, if any, was
    /// killed.
    Failed(Reply),
}

#[derive(Debug)]
struct Connection {
    sock: OwnedFd,
    pid: libc::pid_t,
}

impl Connection {
    /// Closes the socket (the spawner exits on EOF) and reaps the spawner.
    fn close(self) {
        drop(self.sock);
        let _ = sys::wait_pid(self.pid);
    }
}

/// The server's handle on its spawner.
#[derive(Debug)]
pub(crate) struct Spawner {
    config: ChildConfig,
    connection: Mutex<Option<Connection>>,
}

impl Spawner {
    /// Forks the spawner process.
    pub(crate) fn new(config: ChildConfig) -> std::io::Result<Spawner> {
        let connection = fork_spawner(&config)?;
        Ok(Spawner {
            config,
            connection: Mutex::new(Some(connection)),
        })
    }

    /// What every environment's process is given (filters, capabilities, network).
    pub(crate) fn config(&self) -> &ChildConfig {
        &self.config
    }

    /// The spawner's pid (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn pid(&self) -> Option<libc::pid_t> {
        self.connection
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.pid))
    }

    /// Sends one request and waits for its reply. Requests are serialised; the spawner is
    /// busy only for the clone and the joins, not for the child's set-up.
    pub(crate) fn spawn(
        &self,
        request: &[u8],
        cgroup_fd: Option<BorrowedFd<'_>>,
        adopt: bool,
    ) -> Result<Spawned, SpawnError> {
        let mut guard = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.is_none() {
            match fork_spawner(&self.config) {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    return Err(SpawnError::Spawner(format!(
                        "the sandbox's spawner process is gone and a new one could not be forked: {e}"
                    )));
                }
            }
        }
        let Some(connection) = guard.as_ref() else {
            return Err(SpawnError::Spawner("no spawner process".into()));
        };
        let sock = connection.sock.as_raw_fd();
        let fds: Vec<RawFd> = cgroup_fd.iter().map(|f| f.as_raw_fd()).collect();
        let mut reply = [0u8; Reply::LEN + 1];
        let mut received: ReplyFds = [None, None, None, None, None, None, None];
        let exchange = match sys::send_with_fds(sock, request, &fds) {
            // Too big for the socket buffer: this request's problem, not the spawner's.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                return Err(SpawnError::Failed(Reply::failed(
                    Outcome::BadRequest,
                    0,
                    libc::EMSGSIZE,
                    0,
                )));
            }
            Err(e) => Err(e),
            Ok(()) => sys::recv_with_fds(sock, &mut reply, &mut received),
        };
        let parsed = match &exchange {
            Ok(r) if r.len > 0 && !r.truncated => Reply::decode(&reply[..r.len]),
            _ => None,
        };
        let Some(parsed) = parsed else {
            let cause = match exchange {
                Err(e) => format!("talking to it failed: {e}"),
                Ok(r) if r.len == 0 => "it exited".to_owned(),
                Ok(_) => "it sent a malformed reply".to_owned(),
            };
            if let Some(old) = guard.take() {
                old.close();
            }
            let restarted = match fork_spawner(&self.config) {
                Ok(c) => {
                    *guard = Some(c);
                    "a new one was started".to_owned()
                }
                Err(e) => format!("a new one could not be forked: {e}"),
            };
            tracing::warn!(%cause, %restarted, "the sandbox's spawner process failed");
            return Err(SpawnError::Spawner(format!(
                "the sandbox's spawner process failed ({cause}); {restarted}"
            )));
        };
        drop(guard);
        if parsed.outcome != Outcome::Started {
            return Err(SpawnError::Failed(parsed));
        }
        let [listener, output, status_r, ready_r, fifth, sixth, seventh] = received;
        // SCM_RIGHTS packs descriptors without gaps: the pidfd follows the adopter's ends.
        let (adopter_ends, pidfd) = if adopt {
            (fifth.zip(sixth), seventh)
        } else {
            (None, fifth)
        };
        let (Some(listener), Some(output), Some(status_r), Some(ready_r)) =
            (listener, output, status_r, ready_r)
        else {
            return Err(SpawnError::Spawner(
                "the sandbox's spawner process replied without the environment's descriptors"
                    .into(),
            ));
        };
        if adopt && adopter_ends.is_none() {
            return Err(SpawnError::Spawner(
                "the sandbox's spawner process replied without the adopter's descriptors".into(),
            ));
        }
        Ok(Spawned {
            pid: parsed.pid,
            pidfd: if parsed.has_pidfd { pidfd } else { None },
            listener: TcpListener::from(listener),
            output: File::from(output),
            status_r: File::from(status_r),
            adopter_ends,
            ready_r,
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        if let Some(c) = self
            .connection
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            c.close();
        }
    }
}

/// Forks a spawner from the current process.
fn fork_spawner(config: &ChildConfig) -> std::io::Result<Connection> {
    let (ours, theirs) = sys::seqpacket_pair()?;
    // Room for a REQUEST_MAX message even where net.core.wmem_default is small (root may
    // exceed wmem_max with SO_SNDBUFFORCE); best effort.
    let sndbuf: libc::c_int = (2 * REQUEST_MAX) as libc::c_int;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&sndbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let home_netns = File::open("/proc/self/ns/net")?;
    // Everything the spawner will use, allocated now.
    let buffers = Buffers::new();
    // SAFETY: the child runs only `spawner_main`, which follows the after-fork rules in
    // the module docs (system calls on memory prepared here, `_exit` at the end). glibc's
    // fork(3) (not a raw clone) keeps libc's own state (cached tid) consistent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let (sock, home) = (theirs.as_raw_fd(), home_netns.as_raw_fd());
        let mut keep = [sock, home];
        keep.sort_unstable();
        // Descriptors of the server (database, listeners, our end of the pair) must not
        // stay open in a long-lived process.
        sys::close_all_except(&keep);
        std::mem::forget(ours);
        // The kernel reaps the inits; terminal signals for the server's process group
        // are the server's business (the spawner ends when the server closes the socket).
        sys::set_disposition(libc::SIGCHLD, libc::SIG_IGN);
        sys::set_disposition(libc::SIGINT, libc::SIG_IGN);
        sys::set_disposition(libc::SIGQUIT, libc::SIG_IGN);
        // SAFETY: sigset_t is plain data; an empty set unblocks everything.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        }
        spawner_main(theirs, OwnedFd::from(home_netns), config, buffers);
    }
    drop((theirs, home_netns, buffers));
    Ok(Connection { sock: ours, pid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn requests_round_trip_without_allocating_in_the_decoder() {
        let steps = vec![
            MountStep::Mount {
                source: None,
                target: c("/"),
                fstype: None,
                flags: libc::MS_REC | libc::MS_PRIVATE,
                data: None,
            },
            MountStep::Mount {
                source: Some(c("tmpfs")),
                target: c("/root"),
                fstype: Some(c("tmpfs")),
                flags: libc::MS_NOSUID,
                data: Some(c("size=1m")),
            },
            MountStep::Mkdir {
                path: c("/root/usr"),
                mode: 0o755,
            },
            MountStep::CreateFile {
                path: c("/root/etc/passwd"),
                contents: b"root:x:0:0\n".to_vec(),
                mode: 0o644,
            },
            MountStep::Symlink {
                target: c("usr/bin"),
                link: c("/root/bin"),
            },
            MountStep::PivotRoot {
                new_root: c("/root"),
            },
        ];
        let (a0, a1, e0, cwd, j0) = (
            c("/bin/sh"),
            c("-c"),
            c("A=1"),
            c("/var/task"),
            c("/cg/procs"),
        );
        let fallback = c("/unified/procs");
        let encoded = encode_request(&StartRequest {
            steps: &steps,
            argv: &[&a0, &a1],
            envp: &[&e0],
            cwd: &cwd,
            join: &[&j0],
            join_if_not_cloned_into: Some(&fallback),
            adopt: true,
        });
        let mut argv = Vec::with_capacity(8);
        let mut envp = Vec::with_capacity(8);
        let decoded = decode(&encoded, &mut argv, &mut envp).unwrap();
        let back: Vec<MountStepRef<'_>> = decoded.steps.collect();
        let expected: Vec<MountStepRef<'_>> = steps.iter().map(MountStep::as_ref).collect();
        assert_eq!(back, expected);
        assert_eq!(decoded.argv0, a0.as_c_str());
        assert_eq!(decoded.cwd, cwd.as_c_str());
        assert_eq!(decoded.join.collect::<Vec<_>>(), [j0.as_c_str()]);
        assert_eq!(decoded.join_if_not_cloned_into, Some(fallback.as_c_str()));
        assert!(decoded.adopt);
        assert_eq!((argv.len(), envp.len()), (3, 2));
        assert!(argv[2].is_null() && envp[1].is_null());
        // SAFETY: the pointers point into `encoded`, which is alive.
        assert_eq!(unsafe { CStr::from_ptr(argv[1]) }, a1.as_c_str());
        assert_eq!(argv.capacity(), 8, "the decoder must not grow the arrays");

        // Truncated, padded, or too many arguments for the preallocated arrays: refused.
        assert!(decode(&encoded[..encoded.len() - 1], &mut argv, &mut envp).is_none());
        let mut padded = encoded.clone();
        padded.push(0);
        assert!(decode(&padded, &mut argv, &mut envp).is_none());
        let mut small = Vec::with_capacity(2);
        assert!(decode(&encoded, &mut small, &mut envp).is_none());
        assert_eq!(small.capacity(), 2);
    }

    #[test]
    fn replies_round_trip() {
        let reply = Reply {
            outcome: Outcome::CgroupJoin,
            detail: 2,
            errno: libc::EBUSY,
            pid: 4242,
            has_pidfd: true,
        };
        let back = Reply::decode(&reply.encode()).unwrap();
        assert_eq!(back.outcome, Outcome::CgroupJoin);
        assert_eq!(
            (back.detail, back.errno, back.pid, back.has_pidfd),
            (2, libc::EBUSY, 4242, true)
        );
        assert!(Reply::decode(&[0; 3]).is_none());
    }
}
