//! The seccomp filter every function process runs under, compiled once per sandbox.
//!
//! A deny-list (default allow): runtimes need a broad, ever-growing set of syscalls, and the
//! real boundary is the namespaces + unprivileged uid + no capabilities; seccomp removes the
//! kernel attack surface an unprivileged process could still reach (user namespaces, bpf,
//! keyrings, userfaultfd, perf) and everything mount-related, with `EPERM` so programs get a
//! clean error. `clone3` answers `ENOSYS` (as Docker's profile does) because its flags live
//! in memory seccomp cannot inspect; libc then falls back to `clone`, whose flags are checked.
//! Installing two programs is how the second errno is expressed: for equal actions the
//! kernel picks the strictest, and any `ERRNO` beats `ALLOW`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

/// Syscalls a function never needs, denied outright with `EPERM`.
const DENIED: &[(i64, &str)] = &[
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_fanotify_init, "fanotify_init"),
];

/// Namespace flags `clone(2)` may not be given.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The compiled filters, installed in this order.
#[derive(Debug, Clone)]
pub(crate) struct CompiledFilters {
    pub programs: Vec<BpfProgram>,
}

impl CompiledFilters {
    /// Each program as the bytes of its `struct sock_filter` array (native endian), for a
    /// process that installs the filters itself ([`crate::Adoption`]).
    pub(crate) fn as_bytes(&self) -> Vec<Vec<u8>> {
        self.programs
            .iter()
            .map(|program| {
                program
                    .iter()
                    .flat_map(|insn| {
                        let mut bytes = [0u8; 8];
                        bytes[..2].copy_from_slice(&insn.code.to_ne_bytes());
                        bytes[2] = insn.jt;
                        bytes[3] = insn.jf;
                        bytes[4..].copy_from_slice(&insn.k.to_ne_bytes());
                        bytes
                    })
                    .collect()
            })
            .collect()
    }
}

fn arch() -> Result<TargetArch, SandboxError> {
    std::env::consts::ARCH.try_into().map_err(|e| {
        SandboxError::Seccomp(format!(
            "unsupported architecture {}: {e}",
            std::env::consts::ARCH
        ))
    })
}

fn err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(e.to_string())
}

pub(crate) fn compile() -> Result<CompiledFilters, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(nr, _)| (*nr, vec![])).collect();
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            // x86_64 and aarch64 both pass the flags as clone's first argument.
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )
            .map_err(err)?;
            SeccompRule::new(vec![cond]).map_err(err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(err)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(err)?;
    Ok(CompiledFilters {
        programs: vec![
            BpfProgram::try_from(deny).map_err(err)?,
            BpfProgram::try_from(no_clone3).map_err(err)?,
        ],
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filters_compile() {
        let compiled = super::compile().unwrap();
        assert_eq!(compiled.programs.len(), 2);
        assert!(compiled.programs.iter().all(|p| !p.is_empty()));
    }
}
