//! Environments built ahead of their function, so a cold start only attaches the code.
//!
//! A runtime's zygote makes a cold start skip the interpreter's start-up, but the
//! environment around the forked process still costs milliseconds: cgroups, `clone3`
//! into five namespaces, the root's mounts, and the child's own set-up (joining the
//! namespaces, dropping privileges, seccomp). A [`PreparedEnvironment`] has all of that
//! done before any function asks: [`crate::Sandbox::prepare_for_adoption`] builds the
//! environment with `/var/task` and `/opt` empty and a memory limit of its own, and
//! [`Template::adopt_prepared`] forks a child that sets itself up and then waits for its
//! variables. [`PreparedEnvironment::claim`] gives it one function: the function's memory
//! limit, its code and layers mounted into the environment's namespace, and its variables
//! — after which the child changes to `/var/task` and runs the runtime as any adopted
//! process does. Nothing of the function exists in the environment before the claim, so a
//! prepared environment can serve any function of its runtime whose `/tmp` has its size.

use crate::{
    EnvironmentSpec, PreparedSpec, Sandbox, SandboxError, StartedEnvironment, Template,
    VariablesSender,
};

/// An environment with its adopted main process set up and waiting for a function.
#[derive(Debug)]
pub struct PreparedEnvironment {
    spec: PreparedSpec,
    started: StartedEnvironment,
    variables: VariablesSender,
}

impl PreparedEnvironment {
    /// Builds one (blocking, a few milliseconds): the environment, then the template's
    /// child in it. Dropping the result destroys the environment.
    pub fn prepare(
        sandbox: &dyn Sandbox,
        template: &Template,
        spec: PreparedSpec,
    ) -> Result<PreparedEnvironment, SandboxError> {
        let (pending, adoption) = sandbox.prepare_for_adoption(&spec)?;
        // The template forks while the init builds the root; its child waits for the root.
        let adopted = template.adopt_prepared(adoption);
        let started = pending.wait_ready()?;
        let (_pid, variables) = adopted?;
        Ok(PreparedEnvironment {
            spec,
            started,
            variables,
        })
    }

    /// Whether a function of `spec` can take this environment: same runtime directories
    /// and `/tmp` size, and its main process still waiting.
    pub fn fits(&self, spec: &EnvironmentSpec) -> bool {
        self.spec.runtime_mounts == spec.runtime_mounts
            && self.spec.ephemeral_storage_mb == spec.ephemeral_storage_mb
            && self.spec.cwd == spec.cwd
            && self.is_waiting()
    }

    /// Whether its main process is still there, waiting for a function.
    pub fn is_waiting(&self) -> bool {
        !self.started.handle.has_ended()
    }

    /// Gives the environment to the function of `spec` (whose `argv` is the runtime's, as
    /// for [`crate::Sandbox::start_for_adoption`]): its memory limit, its code at
    /// `/var/task` and layers at `/opt`, then its variables, upon which the main process
    /// goes on. On an error the environment comes back with it, to be destroyed (which
    /// waits for its processes: best not on a cold start's path).
    pub fn claim(self, spec: &EnvironmentSpec) -> Result<StartedEnvironment, ClaimFailed> {
        let PreparedEnvironment {
            started, variables, ..
        } = self;
        match give(&started, variables, spec) {
            Ok(()) => Ok(started),
            Err(error) => Err(ClaimFailed {
                error,
                environment: started,
            }),
        }
    }

    /// The environment's own id (its cgroup's name), which a claim keeps.
    pub fn environment_id(&self) -> &str {
        &self.spec.environment_id
    }
}

/// A claim that failed, and the environment it failed on.
#[derive(Debug)]
pub struct ClaimFailed {
    pub error: SandboxError,
    pub environment: StartedEnvironment,
}

fn give(
    started: &StartedEnvironment,
    variables: VariablesSender,
    spec: &EnvironmentSpec,
) -> Result<(), SandboxError> {
    crate::validate_spec(spec)?;
    started.handle.set_memory(spec.memory_mb)?;
    started
        .handle
        .attach_code(&spec.task_dir, spec.opt_dir.as_deref())?;
    let env: Vec<(String, String)> = spec
        .env
        .iter()
        .filter(|(name, _)| name != "AWS_LAMBDA_RUNTIME_API")
        .cloned()
        .chain([(
            "AWS_LAMBDA_RUNTIME_API".to_owned(),
            started.runtime_api_address.clone(),
        )])
        .collect();
    variables.send(&env).map_err(|source| {
        SandboxError::syscall("write (the variables pipe)", &spec.environment_id, source)
    })
}
