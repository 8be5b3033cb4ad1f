//! Templates: pre-initialised processes (a runtime's "zygote") that fork the main process
//! of environments started with [`crate::Sandbox::start_for_adoption`], so that a cold
//! start skips the interpreter's own start-up (SOCK, USENIX ATC 2018).
//!
//! A template runs as root in the host's PID, network and cgroup namespaces — it must, to
//! `setns` into an environment through its init's pidfd and join its cgroups — but in a
//! private mount namespace in which the runtime's directories are bind-mounted read-only
//! where environments see them (`/var/lang`, `/var/runtime`): the paths an interpreter
//! computes at start-up are then the ones valid inside every environment. To make room
//! for those mount points without touching the host, each target's top-level directory
//! (`/var`) is covered with a small tmpfs in that namespace; the sources are opened before
//! and bound from their descriptors, so a source under `/var` stays reachable.
//!
//! Protocol, over a `SOCK_SEQPACKET` pair whose other end is the template's descriptor 3:
//! the template first sends `ready`; then each request (one at a time) is NUL-separated
//! text — `namespaces, uid, gid, nofile, cap_last_cap, cwd, deferred (0|1), n, cgroup.procs
//! paths…, n, seccomp programs in hex…` — with the init's pidfd, the output and status pipes' write
//! ends, the root-ready pipe's read end and the read end of a pipe holding the
//! environment's variables (NUL-separated `NAME=value`) attached. The variables travel
//! apart so that only the forked child reads them: what the template itself reads stays
//! in its memory, which every later environment inherits, and one function's secrets must
//! not reach another. The reply is `ok <pid>` once the main process is set up and about to
//! run the runtime, or `error <reason>`. With `deferred` 1 (a prepared environment, whose
//! function is not known yet) the child answers before reading its variables and changing
//! to `cwd`, and then waits for the variables pipe to be written and closed. What the template must do with a request is
//! [`crate::Adoption`]'s contract; Lamina's Python zygote
//! (`lamina-runtimes/bootstraps/python/zygote.py`) implements it.
//!
//! A template that fails to answer (gone, timed out, out of step) is marked broken and
//! never asked again. Dropping a [`Template`] only closes its socket: it stays the parent
//! of the environments it forked, reporting their statuses, until the last one ends.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{Adoption, SandboxError, sys};

/// How long a template may take to start (import its runtime) or to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// What to start.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    /// Names the template in errors and logs (the runtime id).
    pub name: String,
    /// `argv[0]` is a path inside `mounts`' targets.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `(host directory, path in the template's view)` pairs, bound read-only.
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

/// A running template process.
#[derive(Debug)]
pub struct Template {
    name: String,
    /// The connection; one request at a time.
    sock: Mutex<OwnedFd>,
    child: Mutex<Option<Child>>,
    /// Set when an exchange failed: a late answer could otherwise be read as the next
    /// request's.
    broken: AtomicBool,
}

fn template_error(name: &str, reason: impl Into<String>) -> SandboxError {
    SandboxError::Template {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// The C strings the child's `pre_exec` needs, built before the fork (it may not allocate).
struct MountSetup {
    sources: Vec<CString>,
    tmpfs_targets: Vec<CString>,
    /// Directories to create under the tmpfs targets, parents first.
    mkdirs: Vec<CString>,
    targets: Vec<CString>,
}

impl MountSetup {
    fn plan(name: &str, mounts: &[(PathBuf, PathBuf)]) -> Result<MountSetup, SandboxError> {
        let cstring = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| template_error(name, format!("path {} has a NUL byte", p.display())))
        };
        let mut tops: Vec<PathBuf> = Vec::new();
        let mut mkdirs: Vec<PathBuf> = Vec::new();
        for (_, target) in mounts {
            let mut components = target.components();
            let (Some(std::path::Component::RootDir), Some(top)) =
                (components.next(), components.next())
            else {
                return Err(template_error(
                    name,
                    format!("mount target {} must be absolute", target.display()),
                ));
            };
            let top = Path::new("/").join(top);
            if !top.is_dir() {
                return Err(template_error(
                    name,
                    format!("{} does not exist on the host to cover", top.display()),
                ));
            }
            if !tops.contains(&top) {
                tops.push(top.clone());
            }
            let mut dir = top;
            for component in components {
                dir = dir.join(component);
                if !mkdirs.contains(&dir) {
                    mkdirs.push(dir.clone());
                }
            }
        }
        Ok(MountSetup {
            sources: mounts
                .iter()
                .map(|(source, _)| cstring(source))
                .collect::<Result<_, _>>()?,
            tmpfs_targets: tops.iter().map(|p| cstring(p)).collect::<Result<_, _>>()?,
            mkdirs: mkdirs
                .iter()
                .map(|p| cstring(p))
                .collect::<Result<_, _>>()?,
            targets: mounts
                .iter()
                .map(|(_, target)| cstring(target))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Runs in the forked child before exec: async-signal-safe system calls only.
    fn execute(&self) -> std::io::Result<()> {
        let check = |result: libc::c_int| {
            if result < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: system calls on NUL-terminated strings built before the fork and on
        // stack buffers; no allocation.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            let mut source_fds = [-1 as RawFd; 16];
            if self.sources.len() > source_fds.len() {
                return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
            }
            for (slot, source) in source_fds.iter_mut().zip(&self.sources) {
                let fd = libc::open(
                    source.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                check(fd)?;
                *slot = fd;
            }
            for top in &self.tmpfs_targets {
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    top.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"size=64k,mode=755".as_ptr().cast(),
                ))?;
            }
            for dir in &self.mkdirs {
                check(libc::mkdir(dir.as_ptr(), 0o755))?;
            }
            for (fd, target) in source_fds.iter().zip(&self.targets) {
                // "/proc/self/fd/<fd>" without allocating.
                let mut path = [0u8; 32];
                let mut digits = [0u8; 10];
                let digits = sys::format_u32(*fd as u32, &mut digits);
                let mut at = 0;
                for part in [b"/proc/self/fd/".as_slice(), digits, b"\0"] {
                    path[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
                check(libc::mount(
                    path.as_ptr().cast(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                    std::ptr::null(),
                ))?;
                libc::close(*fd);
            }
        }
        Ok(())
    }
}

impl Template {
    /// Starts the template and waits until it says it is ready. Blocking.
    pub fn start(spec: &TemplateSpec) -> Result<Template, SandboxError> {
        let name = spec.name.as_str();
        let Some(program) = spec.argv.first() else {
            return Err(template_error(name, "argv is empty"));
        };
        let setup = MountSetup::plan(name, &spec.mounts)?;
        let (ours, theirs) =
            sys::seqpacket_pair().map_err(|e| template_error(name, format!("socketpair: {e}")))?;
        set_receive_timeout(&ours, ANSWER_TIMEOUT)
            .map_err(|e| template_error(name, format!("SO_RCVTIMEO: {e}")))?;
        let theirs_raw = theirs.as_raw_fd();
        let mut command = Command::new(program);
        command
            .args(&spec.argv[1..])
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(std::io::stderr());
        // SAFETY: the closure makes only async-signal-safe system calls on memory prepared
        // before the fork (`setup`, the raw descriptor).
        unsafe {
            command.pre_exec(move || {
                // The template, and every environment forked from it, at the default
                // priority whatever the thread that started it.
                crate::sys::reset_priority();
                setup.execute()?;
                // The template's end of the socket becomes descriptor 3, open across exec.
                if theirs_raw == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| template_error(name, format!("starting {program}: {e}")))?;
        drop(theirs);
        let template = Template {
            name: name.to_owned(),
            sock: Mutex::new(ours),
            child: Mutex::new(Some(child)),
            broken: AtomicBool::new(false),
        };
        let mut buf = [0u8; 64];
        let greeting = template.receive(&mut buf)?;
        if greeting != b"ready" {
            return Err(template_error(
                name,
                format!(
                    "said {:?} instead of ready",
                    String::from_utf8_lossy(greeting)
                ),
            ));
        }
        Ok(template)
    }

    fn receive<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], SandboxError> {
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        self.receive_locked(&sock, buf)
    }

    fn receive_locked<'b>(
        &self,
        sock: &OwnedFd,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], SandboxError> {
        let received = self.receive_unchecked(sock, buf);
        if received.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        received
    }

    fn receive_unchecked<'b>(
        &self,
        sock: &OwnedFd,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], SandboxError> {
        let mut no_fds: [Option<OwnedFd>; 1] = [None];
        match sys::recv_with_fds(sock.as_raw_fd(), buf, &mut no_fds) {
            Ok(r) if r.len == 0 => Err(template_error(&self.name, "exited")),
            Ok(r) if r.truncated => Err(template_error(&self.name, "answered too much")),
            Ok(r) => Ok(&buf[..r.len]),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Err(template_error(
                &self.name,
                format!("did not answer within {ANSWER_TIMEOUT:?}"),
            )),
            Err(e) => Err(template_error(&self.name, format!("recvmsg: {e}"))),
        }
    }

    /// Forks the main process of an environment into it; returns that process's pid as
    /// the host sees it. Blocking; requests are served one at a time.
    ///
    /// [`SandboxError::Template`] means the template itself failed (stop using it); a
    /// [`SandboxError::Setup`] is this environment's failure, reported by the child.
    pub fn adopt(&self, adoption: Adoption) -> Result<u32, SandboxError> {
        let (variables, sender) = sys::pipe()
            .map_err(|e| template_error(&self.name, format!("pipe for the variables: {e}")))?;
        // Lambda caps a function's variables at 4 KB: with the runtime's own they fit a
        // pipe's buffer (64 KB), so this write does not wait for the child to read.
        VariablesSender(std::fs::File::from(sender))
            .send(&adoption.env)
            .map_err(|e| template_error(&self.name, format!("writing the variables: {e}")))?;
        self.exchange(adoption, Deferral::None, variables)
    }

    /// As [`Template::adopt`], for an environment made by
    /// [`crate::Sandbox::prepare_for_adoption`]: the child sets itself up except for its
    /// variables and working directory, the template answers, and the child then waits
    /// until the returned sender delivers the variables (after the code is attached).
    pub fn adopt_prepared(
        &self,
        adoption: Adoption,
    ) -> Result<(u32, VariablesSender), SandboxError> {
        let (variables, sender) = sys::pipe()
            .map_err(|e| template_error(&self.name, format!("pipe for the variables: {e}")))?;
        let pid = self.exchange(adoption, Deferral::UntilVariables, variables)?;
        Ok((pid, VariablesSender(std::fs::File::from(sender))))
    }

    fn exchange(
        &self,
        adoption: Adoption,
        deferral: Deferral,
        variables: OwnedFd,
    ) -> Result<u32, SandboxError> {
        let request = encode(&adoption, deferral);
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        if self.broken.load(Ordering::SeqCst) {
            return Err(template_error(&self.name, "an earlier exchange failed"));
        }
        if let Err(e) = sys::send_with_fds(
            sock.as_raw_fd(),
            &request,
            &[
                adoption.init_pidfd.as_raw_fd(),
                adoption.output.as_raw_fd(),
                adoption.status.as_raw_fd(),
                adoption.root_ready.as_raw_fd(),
                variables.as_raw_fd(),
            ],
        ) {
            self.broken.store(true, Ordering::SeqCst);
            return Err(template_error(&self.name, format!("sendmsg: {e}")));
        }
        drop(variables);
        // Our copies of the pipes' write ends must close now: the output pipe's EOF and
        // the status pipe's tell the server the function is gone.
        drop(adoption);
        let mut buf = [0u8; 4096];
        let reply = self.receive_locked(&sock, &mut buf)?;
        let reply = String::from_utf8_lossy(reply);
        if let Some(pid) = reply.strip_prefix("ok ")
            && let Ok(pid) = pid.trim().parse()
        {
            return Ok(pid);
        }
        if let Some(reason) = reply.strip_prefix("error ") {
            return Err(SandboxError::Setup {
                environment_id: String::new(),
                step: format!("the {}'s child", self.name),
                source: std::io::Error::other(reason.to_owned()),
            });
        }
        self.broken.store(true, Ordering::SeqCst);
        Err(template_error(&self.name, format!("answered {reply:?}")))
    }

    /// Whether the template process is still running and answering.
    pub fn is_alive(&self) -> bool {
        if self.broken.load(Ordering::SeqCst) {
            return false;
        }
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The template's pid (for diagnostics and tests).
    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, Child::id)
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // Closing the socket (with `self`) tells the template to take no more requests. It
        // is the parent of the environments it forked and reports their statuses, so it is
        // not killed: it exits once the last of them has ended, and is reaped then.
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut child) = child {
            let _ = std::thread::Builder::new()
                .name("lamina-template-reaper".to_owned())
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = child.wait();
                });
        }
    }
}

/// Whether the adopted child waits for its variables after the template has answered.
#[derive(Debug, Clone, Copy)]
enum Deferral {
    None,
    UntilVariables,
}

/// The write end of the pipe an adopted child reads its variables from (NUL-separated
/// `NAME=value`, until EOF).
#[derive(Debug)]
pub struct VariablesSender(std::fs::File);

impl VariablesSender {
    /// Writes the complete environment and closes the pipe: the child goes on.
    pub fn send(mut self, env: &[(String, String)]) -> std::io::Result<()> {
        let mut text = Vec::new();
        for (name, value) in env {
            text.extend_from_slice(name.as_bytes());
            text.push(b'=');
            text.extend_from_slice(value.as_bytes());
            text.push(0);
        }
        std::io::Write::write_all(&mut self.0, &text)
    }
}

fn set_receive_timeout(sock: &OwnedFd, timeout: Duration) -> std::io::Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid timeval of the size given.
    let result = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The request text (see the module documentation).
fn encode(adoption: &Adoption, deferral: Deferral) -> Vec<u8> {
    let mut fields: Vec<String> = vec![
        adoption.namespaces.to_string(),
        adoption.uid.to_string(),
        adoption.gid.to_string(),
        adoption.nofile.to_string(),
        adoption.cap_last_cap.to_string(),
        adoption.cwd.clone(),
        match deferral {
            Deferral::None => "0",
            Deferral::UntilVariables => "1",
        }
        .to_owned(),
        adoption.cgroup_procs.len().to_string(),
    ];
    fields.extend(
        adoption
            .cgroup_procs
            .iter()
            .map(|p| p.display().to_string()),
    );
    fields.push(adoption.seccomp_programs.len().to_string());
    fields.extend(adoption.seccomp_programs.iter().map(|program| {
        program
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    }));
    fields.join("\0").into_bytes()
}
