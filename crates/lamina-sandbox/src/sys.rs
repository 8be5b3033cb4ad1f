//! Thin wrappers over the few syscalls `libc`/`nix` do not cover conveniently.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `struct clone_args` of `clone3(2)`.
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

pub(crate) const CLONE_PIDFD: u64 = 0x1000;
pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Whether the calling thread runs at a raised priority (a negative nice value), as
/// `lamina serve`'s serving threads do, and a child of theirs would by inheritance.
pub(crate) fn priority_raised() -> bool {
    // SAFETY: plain system call on the calling thread. (-1 is also the error return;
    // treating it as raised only costs a needless reset.)
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) < 0 }
}

/// Puts the calling process (a function's, before it runs anything) back at the default
/// priority if it inherited a raised one: `lamina serve` raises its serving threads'
/// priority, and a child inherits the nice value of the thread that forked it. A server
/// started at a lower priority (`nice lamina serve`) leaves its functions there.
/// Lowering one's priority needs no privilege. Async-signal-safe.
pub(crate) fn reset_priority() {
    if priority_raised() {
        // SAFETY: plain system call on the calling thread (which, in a child that has
        // not started threads, is its whole process).
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        }
    }
}

/// The result of a fork-like clone, seen from the parent.
#[derive(Debug)]
pub(crate) struct Cloned {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
}

/// Fork-like `clone3` (the child continues on a copy of the caller's stack) with
/// `CLONE_PIDFD` and, if `cgroup_fd` is given, `CLONE_INTO_CGROUP`.
/// Returns `Ok(None)` in the child.
///
/// # Safety
/// Same as `fork(2)` in a multi-threaded process: the child may only call
/// async-signal-safe functions (no allocation, no locks) until it execs or exits.
pub(crate) unsafe fn clone3(ns_flags: u64, cgroup_fd: Option<RawFd>) -> io::Result<Option<Cloned>> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: ns_flags | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size passed; the caller upholds the
    // fork-in-a-threaded-process rules for the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(Cloned {
            pid: pid as i32,
            // SAFETY: the kernel stored a fresh pidfd we now own.
            pidfd: (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        })),
    }
}

/// Fork-like legacy `clone(2)`: for kernels or seccomp profiles without `clone3`.
///
/// # Safety
/// As for [`clone3`].
pub(crate) unsafe fn clone_legacy(ns_flags: u64) -> io::Result<Option<Cloned>> {
    // With a null stack the argument order difference between architectures is moot.
    // SAFETY: fork semantics; upheld by the caller.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            ns_flags | libc::SIGCHLD as u64,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(Cloned {
            pid: pid as i32,
            pidfd: None,
        })),
    }
}

/// A fork of the current (single-threaded) process with a raw syscall, so that no libc
/// atfork handler runs: locks copied from the server's other threads may be held forever.
/// Async-signal-safe.
pub(crate) fn raw_fork() -> libc::pid_t {
    // SAFETY: fork semantics; only called in the single-threaded sandbox init.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as u64,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t
    }
}

pub(crate) fn pidfd_send_signal(pidfd: RawFd, signal: i32) -> io::Result<()> {
    // SAFETY: no pointers other than the null siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A pipe with both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Closes every descriptor from 3 up except those in `keep` (sorted ascending).
/// Async-signal-safe.
pub(crate) fn close_all_except(keep: &[RawFd]) {
    let mut first: u32 = 3;
    for &fd in keep {
        let fd = fd as u32;
        if fd < first {
            continue;
        }
        if fd > first {
            // SAFETY: close_range has no memory arguments.
            unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0) };
        }
        first = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// Writes all of `bytes`, ignoring errors. Async-signal-safe.
pub(crate) fn write_raw(fd: RawFd, bytes: &[u8]) {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: the pointer and length describe the unwritten tail of `bytes`.
        let n = unsafe { libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        done += n as usize;
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
pub(crate) fn read_full(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// Blocks until `pid` (our child) exits; returns its raw wait status.
pub(crate) fn wait_pid(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if ret == pid {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// A `SOCK_SEQPACKET` unix socket pair, both ends close-on-exec.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 8;

/// Control-message buffer for [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Sends one message with `fds` attached (`SCM_RIGHTS`). Allocation-free; never raises
/// SIGPIPE.
pub(crate) fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut cmsg = CmsgBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe { (libc::CMSG_SPACE(payload), libc::CMSG_LEN(payload)) };
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space as usize;
        // SAFETY: the control buffer is large enough (64 bytes >= CMSG_SPACE(8 * 4)) and
        // aligned; CMSG_FIRSTHDR points into it and the copy stays within CMSG_LEN.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = len as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(hdr),
                payload as usize,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// What [`recv_with_fds`] got.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of the message; 0 means the peer closed the connection.
    pub len: usize,
    /// The message or its descriptors did not fit.
    pub truncated: bool,
}

/// Receives one message into `buf` and its descriptors (close-on-exec) into `fds`, in order.
/// Descriptors beyond `fds.len()` are closed. Allocation-free.
pub(crate) fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut [Option<OwnedFd>],
) -> io::Result<Received> {
    let mut cmsg = CmsgBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len();
    let n = loop {
        // SAFETY: `msg` points at live, writable buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    };
    let mut next = 0;
    // SAFETY: walking the control messages the kernel wrote into `cmsg`, with the
    // CMSG_* macros that bound every access by `msg_controllen`.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr);
                let bytes = (*hdr).cmsg_len - (data as usize - hdr as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    let owned = OwnedFd::from_raw_fd(fd);
                    if let Some(slot) = fds.get_mut(next) {
                        *slot = Some(owned);
                    }
                    next += 1;
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    Ok(Received {
        len: n,
        truncated: msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || next > fds.len(),
    })
}

/// Blocks until the process behind `pidfd` has exited (it need not be our child).
pub(crate) fn wait_pidfd_exit(pidfd: RawFd) {
    let mut pfd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 || (n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}

/// Bind-mounts each `(host directory, path inside)` pair into the mount namespace of the
/// process behind `pidfd`, which must already have its root, with the flags the root's
/// own binds get (`remount_flags`: read-only, `nosuid`, `nodev`, and nothing else of the
/// host mount's) and private propagation. The trees are cloned here with `open_tree`
/// (Linux 5.2) and attached there with `move_mount` by a short-lived thread that leaves
/// the server's file-system context (`unshare(CLONE_FS)`: `setns` refuses a mount
/// namespace to a thread sharing it) and joins that namespace through the pidfd (5.8).
/// The classic `mount(2)` cannot do it alone: its bind source must be in the caller's own
/// namespace.
pub(crate) fn attach_trees(
    pidfd: RawFd,
    trees: &[(&std::ffi::CStr, &std::ffi::CStr)],
    remount_flags: libc::c_ulong,
) -> io::Result<()> {
    let mut detached = Vec::with_capacity(trees.len());
    for (host, _) in trees {
        // SAFETY: valid NUL-terminated path; the result is a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                host.as_ptr(),
                libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor open_tree just returned to us.
        detached.push(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("lamina-attach".to_owned())
            .stack_size(64 * 1024)
            .spawn_scoped(scope, || -> io::Result<()> {
                let check = |result: libc::c_long| {
                    if result < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                // SAFETY: unshare takes no memory; this thread's file-system context is its
                // own afterwards and dies with it.
                let unshared = unsafe { libc::unshare(libc::CLONE_FS) };
                check(unshared.into())?;
                // SAFETY: setns takes no memory; pidfd is the caller's open pidfd.
                let joined = unsafe { libc::setns(pidfd, libc::CLONE_NEWNS) };
                check(joined.into())?;
                for (fd, (_, target)) in detached.iter().zip(trees) {
                    // SAFETY: a valid descriptor, an empty path with MOVE_MOUNT_F_EMPTY_PATH
                    // and a valid NUL-terminated target.
                    let moved = unsafe {
                        libc::syscall(
                            libc::SYS_move_mount,
                            std::os::fd::AsRawFd::as_raw_fd(fd),
                            c"".as_ptr(),
                            libc::AT_FDCWD,
                            target.as_ptr(),
                            libc::MOVE_MOUNT_F_EMPTY_PATH,
                        )
                    };
                    check(moved)?;
                    // A clone of a shared host mount would stay its peer otherwise; then
                    // the flags, replaced as a whole as the root's own binds have them.
                    for flags in [libc::MS_PRIVATE, remount_flags] {
                        // SAFETY: valid NUL-terminated target; no source, type or data.
                        let changed = unsafe {
                            libc::mount(
                                std::ptr::null(),
                                target.as_ptr(),
                                std::ptr::null(),
                                flags,
                                std::ptr::null(),
                            )
                        };
                        check(changed.into())?;
                    }
                }
                Ok(())
            })?
            .join()
            .map_err(|_| io::Error::other("the attaching thread panicked"))?
    })
}

/// Sets a signal's disposition to `SIG_DFL` or `SIG_IGN`. Async-signal-safe.
pub(crate) fn set_disposition(signal: i32, handler: libc::sighandler_t) {
    // SAFETY: sigaction is plain data; all-zero is an empty mask and no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    // SAFETY: `action` is a valid sigaction; only SIG_DFL/SIG_IGN are passed.
    unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
}

/// Formats a non-negative number into `buf`, returning the digits. Async-signal-safe.
pub(crate) fn format_u32(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_numbers_without_allocating() {
        let mut buf = [0; 10];
        assert_eq!(super::format_u32(0, &mut buf), b"0");
        assert_eq!(super::format_u32(4_294_967_295, &mut buf), b"4294967295");
    }
}
