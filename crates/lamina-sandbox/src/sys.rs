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
