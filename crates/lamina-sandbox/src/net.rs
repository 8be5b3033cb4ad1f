//! The environment's network namespace and its Runtime API socket.
//!
//! Each linux-tier environment has its own network namespace in which only `lo` exists.
//! The spawner process ([`crate::spawner`]) `setns(2)`s into it, brings `lo` up, binds the
//! Runtime API listener on `127.0.0.1:9001` there and returns to its own namespace; a
//! socket stays in the namespace it was created in, so the server serves it (received over
//! `SCM_RIGHTS`) from its own namespace, and no function can reach another environment's
//! Runtime API or the host's loopback services.
//!
//! Outbound network (a later step) plugs in at [`NetworkMode`]: the host end of a veth
//! pair stays in the host namespace (bridged or NATed there), and [`configure`] moves the
//! peer into the namespace, addresses it and adds the default route — all from the same
//! place, so nothing else in the start sequence changes.

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

/// Why [`configure`] failed.
#[derive(Debug)]
pub(crate) enum NetError {
    /// Entering, configuring or binding in the environment's namespace failed; the calling
    /// thread is back in its own namespace.
    Setup(io::Error),
    /// The calling thread could not return to `home`: it is stranded in the environment's
    /// namespace and must not be used for anything else.
    Stranded,
}

/// Enters the namespace `ns` (a pidfd or an `/proc/<pid>/ns/net` fd) on the *calling*
/// thread, configures it, binds the Runtime API listener inside it and returns to `home`
/// (the caller's own `/proc/self/ns/net`). Runs in the single-threaded spawner
/// ([`crate::spawner`]); allocation-free.
pub(crate) fn configure(
    ns: BorrowedFd<'_>,
    home: BorrowedFd<'_>,
    mode: NetworkMode,
) -> Result<TcpListener, NetError> {
    // SAFETY: setns(2) with a namespace or pidfd descriptor; affects only this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(NetError::Setup(io::Error::last_os_error()));
    }
    let result = match mode {
        NetworkMode::LoopbackOnly => bring_up("lo"),
    }
    .and_then(|()| TcpListener::bind(RUNTIME_API_ADDR));
    // SAFETY: as above, back into our own namespace.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(NetError::Stranded);
    }
    result.map_err(NetError::Setup)
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
