//! Runtime API traffic handed from socket to socket by the kernel, past loopback TCP/IP.
//!
//! Every invocation crosses the environment's loopback between the server and the function
//! twice (the `next` answer, then the response and its `202`), and on loopback a `send`
//! runs the whole TCP/IP transmit path and then, in a softirq on the sender's CPU, the
//! receive path of the other end: about half of the server's CPU per invoke. With both
//! ends of a Runtime API connection in a BPF sockhash and an `sk_msg` program on the map,
//! a `send` on one end is queued straight onto the other end's receive queue
//! (`bpf_msg_redirect_hash` with `BPF_F_INGRESS`): no segments, no softirq. The runtime
//! still sees an ordinary TCP socket (`recv`, `poll`, `FIONREAD`, `shutdown` and close
//! behave as before; the handshake and the FIN still travel as TCP). Loopback ping-pong
//! on this project's 2-core VM: 1.6-1.75x the round trips per second.
//!
//! - The function's end enters the map from a `sock_ops` program attached (as a BPF link)
//!   to the server's cgroup2 directory: when a socket of an environment connects to
//!   127.0.0.1:9001 (`ACTIVE_ESTABLISHED`), before `connect` returns and before any byte.
//! - The server's end enters it from the server, right after `accept`
//!   ([`SocketRedirect::register`]), before anything is read or written.
//! - Keys are (network namespace cookie, port, port): each environment has a namespace of
//!   its own, with the same 127.0.0.1:9001 and its own ephemeral ports.
//! - A message whose peer is not in the map (registration failed, or the runtime sent
//!   before the server's end was registered) passes through TCP as usual, and a reader
//!   takes TCP data before redirected data; so the only reordering possible is of a
//!   runtime's own pipelined requests in its first instants.
//! - Sockets leave the map when they close; the programs and the map live as long as the
//!   server's descriptors, so a crashed server leaves nothing attached.
//!
//! Limits: redirected data is not held back by the receiver's TCP window, only by the
//! kernel's TCP memory limits (`tcp_mem`); an environment can already make the server hold
//! data by opening connections it never reads from, each up to its receive buffer.
//!
//! The two programs are hand-assembled (twenty-odd instructions each) and loaded with
//! `bpf(2)` directly: compiling them would need a BPF toolchain (clang, or bpf-linker and
//! nightly Rust) that a plain `cargo build` does not have, and the BPF loader crates
//! (aya, libbpf-rs) load ELF objects made by such a toolchain.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// The key of the sockhash: a socket is stored under (its namespace, the port of its
/// peer, its own port), so that a message sent on a socket looks up (its namespace, its
/// own port, its peer's port) and finds the other end.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    netns_cookie: u64,
    peer_port: u32,
    own_port: u32,
}

/// Runtime API connections at once (two sockets each) the map holds; more just use TCP.
const MAX_SOCKETS: u32 = 65_536;

/// The Runtime API's runtime-side address, as the `sock_ops` program compares it.
const RUNTIME_API_PORT: u16 = 9001;
const LOOPBACK_IPV4: [u8; 4] = [127, 0, 0, 1];

/// Both ends of Runtime API connections in one sockhash, with the programs that redirect
/// between them. Dropping it detaches everything (sockets in the map go back to plain TCP).
#[derive(Debug)]
pub struct SocketRedirect {
    map: OwnedFd,
    // Held for their lifetime: the `sk_msg` program is attached to the map, the link
    // attaches the `sock_ops` program to the cgroup until it is closed.
    _message_program: OwnedFd,
    _connect_program: OwnedFd,
    _cgroup_link: OwnedFd,
}

impl SocketRedirect {
    /// Creates the map, loads both programs and attaches the `sock_ops` one to
    /// `cgroup2_dir` (every environment's cgroup is below it). Needs root (or CAP_BPF and
    /// CAP_NET_ADMIN) and Linux 5.15 or later.
    pub fn open(cgroup2_dir: &Path) -> io::Result<SocketRedirect> {
        if cfg!(target_endian = "big") {
            // The programs assume the little-endian layout of the ports in their context.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not implemented on big-endian machines",
            ));
        }
        let map = create_sockhash()?;
        let message_program = load(
            ProgramType::SkMsg,
            &message_program(map.as_raw_fd()),
            "sk_msg",
        )?;
        bpf_prog_attach(
            map.as_raw_fd(),
            message_program.as_raw_fd(),
            ATTACH_SK_MSG_VERDICT,
        )?;
        let connect_program = load(
            ProgramType::SockOps,
            &connect_program(map.as_raw_fd()),
            "sock_ops",
        )?;
        let cgroup = std::fs::File::open(cgroup2_dir)?;
        let cgroup_link = bpf_link_create(
            connect_program.as_raw_fd(),
            cgroup.as_raw_fd(),
            ATTACH_CGROUP_SOCK_OPS,
        )?;
        Ok(SocketRedirect {
            map,
            _message_program: message_program,
            _connect_program: connect_program,
            _cgroup_link: cgroup_link,
        })
    }

    /// Adds the server's end of a Runtime API connection, just accepted: from now on what
    /// the server sends on it goes straight to the runtime's socket (when the runtime's end
    /// is in the map) and what the runtime sends comes straight back.
    pub fn register(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        let key = Key {
            netns_cookie: netns_cookie(socket)?,
            peer_port: u32::from(ipv4_port(socket, libc::getpeername)?),
            own_port: u32::from(ipv4_port(socket, libc::getsockname)?),
        };
        let value = socket.as_raw_fd() as u64;
        let mut attr = [0u8; 32];
        put_u32(&mut attr, 0, self.map.as_raw_fd() as u32);
        put_u64(&mut attr, 8, &key as *const Key as u64);
        put_u64(&mut attr, 16, &value as *const u64 as u64);
        put_u64(&mut attr, 24, 0); // BPF_ANY
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

/// The port of one end of an IPv4 socket: `getsockname` or `getpeername`.
fn ipv4_port(
    socket: BorrowedFd<'_>,
    end: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> io::Result<u16> {
    // SAFETY: sockaddr_in is plain data, valid when zeroed.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a valid descriptor and an output buffer of the length passed.
    let ret = unsafe {
        end(
            socket.as_raw_fd(),
            (&mut address as *mut libc::sockaddr_in).cast(),
            &mut length,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::c_int::from(address.sin_family) != libc::AF_INET {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only IPv4 connections are carried socket to socket",
        ));
    }
    Ok(u16::from_be(address.sin_port))
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie `bpf_get_netns_cookie` returns in programs.
fn netns_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie = 0u64;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid descriptor and an 8-byte output buffer with its length.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut length,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

// bpf(2) commands, map, program and attach types, helpers (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_LINK_CREATE: libc::c_int = 28;
const MAP_TYPE_SOCKHASH: u32 = 18;
const ATTACH_CGROUP_SOCK_OPS: u32 = 3;
const ATTACH_SK_MSG_VERDICT: u32 = 7;
const HELPER_SOCK_HASH_UPDATE: i32 = 70;
const HELPER_MSG_REDIRECT_HASH: i32 = 71;
const HELPER_GET_NETNS_COOKIE: i32 = 122;
const BPF_F_INGRESS: i32 = 1;
const SK_PASS: i32 = 1;
const SOCK_OPS_ACTIVE_ESTABLISHED_CB: i32 = 4;

#[derive(Debug, Clone, Copy)]
enum ProgramType {
    SockOps = 13,
    SkMsg = 16,
}

// Context field offsets: `struct sk_msg_md` and `struct bpf_sock_ops`. The ports are u32
// fields: the local one in host order, the remote one with its network-order 16 bits in
// the upper half on little-endian machines (hence `>> 16` and a byte swap).
const SK_MSG_REMOTE_PORT: i16 = 60;
const SK_MSG_LOCAL_PORT: i16 = 64;
const SOCK_OPS_OP: i16 = 0;
const SOCK_OPS_FAMILY: i16 = 20;
const SOCK_OPS_REMOTE_IP4: i16 = 24;
const SOCK_OPS_REMOTE_PORT: i16 = 64;
const SOCK_OPS_LOCAL_PORT: i16 = 68;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    registers: u8,
    offset: i16,
    immediate: i32,
}

// The registers the programs use.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

fn insn(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Insn {
    Insn {
        code,
        registers: dst | (src << 4),
        offset,
        immediate,
    }
}

// Opcodes: class | size/operation | source.
const ALU64_MOV_X: u8 = 0x07 | 0xb0 | 0x08;
const ALU64_MOV_K: u8 = 0x07 | 0xb0;
const ALU64_ADD_K: u8 = 0x07;
const ALU32_RSH_K: u8 = 0x04 | 0x70;
const ALU32_TO_BE: u8 = 0x04 | 0xd0 | 0x08;
const LDX_W: u8 = 0x01 | 0x60;
const STX_W: u8 = 0x03 | 0x60;
const STX_DW: u8 = 0x03 | 0x60 | 0x18;
const LD_IMM64: u8 = 0x18;
const JMP_JNE_K: u8 = 0x05 | 0x50;
const JMP_CALL: u8 = 0x05 | 0x80;
const JMP_EXIT: u8 = 0x05 | 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by descriptor.
const PSEUDO_MAP_FD: u8 = 1;

fn mov(dst: u8, src: u8) -> Insn {
    insn(ALU64_MOV_X, dst, src, 0, 0)
}

fn mov_imm(dst: u8, immediate: i32) -> Insn {
    insn(ALU64_MOV_K, dst, 0, 0, immediate)
}

fn call(helper: i32) -> Insn {
    insn(JMP_CALL, 0, 0, 0, helper)
}

/// The two instructions loading a map's address into `dst`.
fn load_map(dst: u8, map: RawFd) -> [Insn; 2] {
    [
        insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
    ]
}

/// Turns the remote-port field loaded into `reg` into the port in host order.
fn remote_port_to_host(reg: u8) -> [Insn; 2] {
    [
        insn(ALU32_RSH_K, reg, 0, 0, 16),
        insn(ALU32_TO_BE, reg, 0, 0, 16),
    ]
}

/// The `sk_msg` program, run on every `send` on a socket in the map: redirects the message
/// to the ingress of the socket stored under (namespace, own port, peer port) — the other
/// end — and lets it pass through TCP when there is none.
fn message_program(map: RawFd) -> Vec<Insn> {
    let mut program = vec![
        mov(R6, R1),
        call(HELPER_GET_NETNS_COOKIE),
        insn(STX_DW, R10, R0, -16, 0),
        insn(LDX_W, R2, R6, SK_MSG_LOCAL_PORT, 0),
        insn(STX_W, R10, R2, -8, 0),
        insn(LDX_W, R2, R6, SK_MSG_REMOTE_PORT, 0),
    ];
    program.extend(remote_port_to_host(R2));
    program.extend([insn(STX_W, R10, R2, -4, 0), mov(R1, R6)]);
    program.extend(load_map(R2, map));
    program.extend([
        mov(R3, R10),
        insn(ALU64_ADD_K, R3, 0, 0, -16),
        mov_imm(R4, BPF_F_INGRESS),
        call(HELPER_MSG_REDIRECT_HASH),
        // Whatever the lookup found: with no redirect set the message goes out as TCP.
        mov_imm(R0, SK_PASS),
        insn(JMP_EXIT, 0, 0, 0, 0),
    ]);
    program
}

/// The `sock_ops` program: when a socket connects (actively) to 127.0.0.1:9001, stores it
/// under (namespace, 9001, its own port). Always returns 1 (carry on).
fn connect_program(map: RawFd) -> Vec<Insn> {
    let loopback = i32::from_ne_bytes(LOOPBACK_IPV4);
    let mut program = vec![
        mov(R6, R1),
        insn(LDX_W, R2, R6, SOCK_OPS_OP, 0),
        insn(JMP_JNE_K, R2, 0, 0, SOCK_OPS_ACTIVE_ESTABLISHED_CB), // patched: to the end
        insn(LDX_W, R2, R6, SOCK_OPS_FAMILY, 0),
        insn(JMP_JNE_K, R2, 0, 0, libc::AF_INET), // patched
        insn(LDX_W, R2, R6, SOCK_OPS_REMOTE_IP4, 0),
        insn(JMP_JNE_K, R2, 0, 0, loopback), // patched
        insn(LDX_W, R7, R6, SOCK_OPS_REMOTE_PORT, 0),
    ];
    program.extend(remote_port_to_host(R7));
    program.extend([
        insn(JMP_JNE_K, R7, 0, 0, i32::from(RUNTIME_API_PORT)), // patched
        mov(R1, R6),
        call(HELPER_GET_NETNS_COOKIE),
        insn(STX_DW, R10, R0, -16, 0),
        insn(STX_W, R10, R7, -8, 0),
        insn(LDX_W, R2, R6, SOCK_OPS_LOCAL_PORT, 0),
        insn(STX_W, R10, R2, -4, 0),
        mov(R1, R6),
    ]);
    program.extend(load_map(R2, map));
    program.extend([
        mov(R3, R10),
        insn(ALU64_ADD_K, R3, 0, 0, -16),
        mov_imm(R4, 0), // BPF_ANY: a newer connection from the same port replaces an old one
        call(HELPER_SOCK_HASH_UPDATE),
    ]);
    let exit = program.len();
    program.extend([mov_imm(R0, 1), insn(JMP_EXIT, 0, 0, 0, 0)]);
    // Every conditional jump skips to the exit.
    for (index, instruction) in program.iter_mut().enumerate() {
        if instruction.code == JMP_JNE_K {
            instruction.offset = (exit - index - 1) as i16;
        }
    }
    program
}

fn put_u32(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

/// `bpf(2)` with `attr` (a prefix of `union bpf_attr`; the kernel zero-fills the rest).
fn bpf(command: libc::c_int, attr: &mut [u8]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable buffer of the length passed; every pointer inside
    // it points at memory that outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a descriptor bpf(2) just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn create_sockhash() -> io::Result<OwnedFd> {
    let mut attr = [0u8; 20];
    put_u32(&mut attr, 0, MAP_TYPE_SOCKHASH);
    put_u32(&mut attr, 4, std::mem::size_of::<Key>() as u32);
    put_u32(&mut attr, 8, std::mem::size_of::<u64>() as u32);
    put_u32(&mut attr, 12, MAX_SOCKETS);
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// Loads a program; on rejection the verifier's log is in the error.
fn load(kind: ProgramType, program: &[Insn], what: &str) -> io::Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 40];
    put_u32(&mut attr, 0, kind as u32);
    put_u32(&mut attr, 4, program.len() as u32);
    put_u64(&mut attr, 8, program.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log level
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    bpf(BPF_PROG_LOAD, &mut attr).map(owned).map_err(|error| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]);
        io::Error::new(
            error.kind(),
            format!(
                "loading the {what} program: {error}; verifier: {}",
                log.trim()
            ),
        )
    })
}

fn bpf_prog_attach(target: RawFd, program: RawFd, attach_type: u32) -> io::Result<()> {
    let mut attr = [0u8; 16];
    put_u32(&mut attr, 0, target as u32);
    put_u32(&mut attr, 4, program as u32);
    put_u32(&mut attr, 8, attach_type);
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

fn bpf_link_create(program: RawFd, target: RawFd, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 16];
    put_u32(&mut attr, 0, program as u32);
    put_u32(&mut attr, 4, target as u32);
    put_u32(&mut attr, 8, attach_type);
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_pack_registers_and_wide_loads_take_two_slots() {
        let i = insn(LDX_W, R2, R6, SK_MSG_LOCAL_PORT, 0);
        assert_eq!(i.registers, 0x62);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<Key>(), 16);
        let [first, second] = load_map(R2, 7);
        assert_eq!(
            (first.code, first.registers, first.immediate),
            (0x18, 0x12, 7)
        );
        assert_eq!(second, insn(0, 0, 0, 0, 0));
    }

    #[test]
    fn the_connect_program_jumps_to_its_exit_on_any_mismatch() {
        let program = connect_program(3);
        let exit = program.len() - 2;
        assert_eq!(program[exit], mov_imm(R0, 1));
        for (index, instruction) in program.iter().enumerate() {
            if instruction.code == JMP_JNE_K {
                assert_eq!(index + 1 + instruction.offset as usize, exit);
            }
        }
        assert_eq!(program.iter().filter(|i| i.code == JMP_JNE_K).count(), 4);
    }
}
