//! The environment's network namespace and its Runtime API socket.
//!
//! Each linux-tier environment has its own network namespace in which only `lo` exists.
//! A short-lived thread of the server `setns(2)`s into it, brings `lo` up and binds the
//! Runtime API listener on `127.0.0.1:9001` there; a socket stays in the namespace it was
//! created in, so the main process serves it from its own namespace, and no function can
//! reach another environment's Runtime API or the host's loopback services.
//!
//! Outbound network (a later step) plugs in at [`NetworkMode`]: the host end of a veth
//! pair stays in the host namespace (bridged or NATed there), and [`configure`] moves the
//! peer into the namespace, addresses it and adds the default route — all from the same
//! thread, so nothing else in the start sequence changes.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The Runtime API address inside every linux-tier environment, as on Lambda.
pub(crate) const RUNTIME_API_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9001);

/// How an environment's namespace is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetworkMode {
    /// Only `lo`: the Runtime API and nothing else.
    LoopbackOnly,
    // Later: `Veth { .. }` — outbound access through a veth pair and NAT on the host.
}

/// Enters the namespace `ns` (a pidfd or an `/proc/<pid>/ns/net` fd) on a fresh thread,
/// configures it and returns the Runtime API listener created inside it.
pub(crate) fn configure(ns: BorrowedFd<'_>, mode: NetworkMode) -> io::Result<TcpListener> {
    let raw = ns.as_raw_fd();
    // A new thread so that the caller's thread never changes namespace, even on error.
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns(2) with a namespace or pidfd descriptor; affects only this thread.
                if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                match mode {
                    NetworkMode::LoopbackOnly => bring_up("lo")?,
                }
                TcpListener::bind(RUNTIME_API_ADDR)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("network set-up thread panicked")))
    })
}

/// `struct ifreq` with the flags member of the union.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Sets `IFF_UP` on an interface of the current thread's network namespace.
fn bring_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a valid ifreq-sized buffer for SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
