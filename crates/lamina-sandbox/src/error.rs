//! The sandbox's one error type. Every variant names the thing that failed.

use std::path::PathBuf;

/// Why the sandbox could not be opened, or an environment could not be started or managed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The linux tier was requested explicitly but cannot run on this machine.
    #[error("the linux sandbox tier is unavailable: {reason}")]
    LinuxTierUnavailable { reason: String },

    /// The caller passed a value the sandbox refuses.
    #[error("invalid environment spec for {environment_id:?}: {reason}")]
    InvalidSpec {
        environment_id: String,
        reason: String,
    },

    /// A file or directory operation on the host failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A system call made by the sandbox itself (not the function) failed.
    #[error("{syscall} failed for environment {environment_id:?}: {source}")]
    Syscall {
        syscall: &'static str,
        environment_id: String,
        #[source]
        source: std::io::Error,
    },

    /// The environment's child failed while building its root, dropping privileges or exec'ing.
    #[error("environment {environment_id:?} failed to start at {step}: {source}")]
    Setup {
        environment_id: String,
        step: String,
        #[source]
        source: std::io::Error,
    },

    /// A cgroup file could not be created, written or read.
    #[error("cgroup {path}: {action}: {source}")]
    Cgroup {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The `/tmp` storage for an environment could not be prepared.
    #[error("ephemeral storage {path}: {reason}")]
    TmpStorage { path: PathBuf, reason: String },

    /// The tier or the kernel cannot start environments for adoption
    /// ([`crate::Sandbox::start_for_adoption`]).
    #[error("environments cannot be adopted here: {reason}")]
    AdoptionUnsupported { reason: String },

    /// A template process (a runtime's zygote) could not be started or failed a request.
    #[error("template {name}: {reason}")]
    Template { name: String, reason: String },

    /// The seccomp filter could not be compiled.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
}

impl SandboxError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SandboxError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn syscall(
        syscall: &'static str,
        environment_id: &str,
        source: std::io::Error,
    ) -> Self {
        SandboxError::Syscall {
            syscall,
            environment_id: environment_id.to_owned(),
            source,
        }
    }
}
