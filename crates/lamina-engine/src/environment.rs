//! One execution environment as the invoker sees it: the sandboxed process tree, its
//! Runtime API, its exit watcher and its log relay.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lamina_model::FunctionVersion;
use lamina_runtime_api::RuntimeApi;
use lamina_runtimes::{Launch, LaunchRequest, Placement, RuntimeCatalog, RuntimeLaunch};
use lamina_sandbox::{
    EnvironmentExit, EnvironmentHandle, EnvironmentSpec, Sandbox, SandboxTier, StartedEnvironment,
    Template,
};
use tokio::sync::{oneshot, watch};

use crate::log_relay::LogRelay;
use crate::zygotes::{Refill, Zygotes};
use crate::{EngineError, InitTiming};

/// Counts the environments using each code tree, so that code garbage collection leaves
/// alone trees still mounted at some environment's `/var/task` or `/opt` (and the layer
/// trees an `/opt` is merged from).
#[derive(Debug, Default)]
pub struct CodeInUse {
    counts: Mutex<std::collections::HashMap<String, usize>>,
}

impl CodeInUse {
    /// Claims every tree in `keys` (code digests, merged `/opt` keys) until the lease drops.
    pub fn lease(self: &Arc<Self>, keys: Vec<String>) -> CodeLease {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for key in &keys {
            *counts.entry(key.clone()).or_default() += 1;
        }
        CodeLease {
            registry: self.clone(),
            keys,
        }
    }

    pub fn snapshot(&self) -> std::collections::HashSet<String> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// One environment's claim on its code trees; released when the environment is dropped.
#[derive(Debug)]
pub struct CodeLease {
    registry: Arc<CodeInUse>,
    keys: Vec<String>,
}

impl Drop for CodeLease {
    fn drop(&mut self) {
        let mut counts = self
            .registry
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(count) = counts.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(key);
                }
            }
        }
    }
}

/// Where a `provided` runtime's bootstrap may live, in the order Lambda looks.
pub const BOOTSTRAP_PATHS: [&str; 2] = ["/var/task/bootstrap", "/opt/bootstrap"];

#[derive(Debug)]
pub struct Environment {
    /// Keeps the code tree this environment has mounted safe from code collection.
    _code: CodeLease,
    pub id: String,
    pub runtime_api: RuntimeApi,
    handle: Arc<dyn EnvironmentHandle>,
    exit: watch::Receiver<Option<EnvironmentExit>>,
    pub logs: LogRelay,
    /// Stops the Runtime API server when the environment is torn down.
    stop_runtime_api: Mutex<Option<oneshot::Sender<()>>>,
    /// Set on the first invoke after a cold start; reported once as `Init Duration`.
    init: Mutex<Option<InitTiming>>,
    /// For an environment prepared ahead: builds its successor once this one's init is
    /// over ([`Environment::init_ended`]).
    after_init: Mutex<Option<Refill>>,
    pub last_used: Mutex<Instant>,
    destroyed: AtomicBool,
    /// The provisioned-concurrency counter this environment is counted in, if any, from
    /// when it is ready until it is destroyed.
    provisioned: Option<Arc<std::sync::atomic::AtomicU32>>,
    counted: AtomicBool,
}

/// Everything a cold start needs besides the function version.
#[derive(Debug, Clone)]
pub struct StartContext {
    pub environment_id: String,
    pub log_stream: String,
    pub region: String,
    /// Set for environments started ahead of time by provisioned concurrency: they count
    /// themselves in this counter of their version while alive.
    pub provisioned: Option<Arc<std::sync::atomic::AtomicU32>>,
}

impl Environment {
    /// Starts the sandboxed process tree (blocking: call on the blocking pool from a
    /// runtime context) and wires its Runtime API, exit watcher and log relay.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        sandbox: &Arc<dyn Sandbox>,
        runtimes: &RuntimeCatalog,
        version: &FunctionVersion,
        task_dir: &Path,
        opt_dir: Option<&Path>,
        context: &StartContext,
        logs: &lamina_logs::LogSink,
        runtime: &tokio::runtime::Handle,
        code_lease: CodeLease,
        zygotes: &Zygotes,
    ) -> Result<Arc<Environment>, EngineError> {
        let runtime_name = version.settings.runtime.clone().unwrap_or_default();
        // The process tier mounts nothing: a managed runtime runs from the host's paths.
        let placement = match sandbox.tier() {
            SandboxTier::Linux => Placement::Sandbox,
            SandboxTier::Process => Placement::Host,
        };
        let launch = runtimes
            .launch(
                &runtime_name,
                &LaunchRequest {
                    memory_mb: version.settings.memory_mb,
                    variables: version.settings.environment.as_ref(),
                    placement,
                },
            )
            .map_err(EngineError::RuntimeUnavailable)?;
        let (argv, runtime_mounts, managed) = match launch {
            Launch::OwnBootstrap => {
                // The sandbox mounts the task directory at /var/task and the merged layers
                // at /opt; the function's own bootstrap wins over one a layer provides.
                let bootstrap = if std::fs::symlink_metadata(task_dir.join("bootstrap")).is_ok() {
                    BOOTSTRAP_PATHS[0]
                } else if opt_dir
                    .is_some_and(|opt| std::fs::symlink_metadata(opt.join("bootstrap")).is_ok())
                {
                    BOOTSTRAP_PATHS[1]
                } else {
                    return Err(EngineError::MissingBootstrap);
                };
                (vec![bootstrap.to_owned()], Vec::new(), None)
            }
            Launch::Managed(launch) => (launch.argv.clone(), launch.mounts.clone(), Some(launch)),
        };
        let spec = EnvironmentSpec {
            environment_id: context.environment_id.clone(),
            task_dir: task_dir.to_owned(),
            opt_dir: opt_dir.map(Path::to_owned),
            runtime_mounts,
            memory_mb: version.settings.memory_mb,
            ephemeral_storage_mb: version.settings.ephemeral_storage_mb,
            argv,
            env: environment_variables(version, context, &runtime_name, managed.as_ref()),
            cwd: "/var/task".to_owned(),
        };
        let _guard = runtime.enter();
        let sandbox_started = std::time::Instant::now();
        let zygote = managed
            .as_ref()
            .filter(|_| sandbox.tier() == SandboxTier::Linux)
            .and_then(|launch| {
                let zygote = launch.zygote.as_ref()?;
                Some((zygote, zygotes.get(zygote, &launch.mounts)?))
            });
        // An environment built ahead, if one waits; else one forked from the zygote now.
        let claimed = zygote.as_ref().and_then(|(launch, template)| {
            let (prepared, refill) = zygotes.take_prepared(launch, template, &spec)?;
            let id = prepared.environment_id().to_owned();
            match prepared.claim(&spec) {
                Ok(started) => {
                    tracing::debug!(
                        elapsed_us = sandbox_started.elapsed().as_micros() as u64,
                        environment = %id,
                        "prepared environment claimed"
                    );
                    Some((id, started, refill))
                }
                Err(failed) => {
                    zygotes.claim_failed(&launch.key, failed);
                    None
                }
            }
        });
        let (environment_id, claimed, refill) = match claimed {
            Some((id, started, refill)) => (id, Some(started), Some(refill)),
            None => (context.environment_id.clone(), None, None),
        };
        let started = match (claimed, zygote) {
            (Some(started), _) => started,
            (None, Some((launch, template))) => {
                match start_from_zygote(sandbox.as_ref(), &spec, &template) {
                    Ok(started) => started,
                    Err(err) => {
                        // Only the zygote's own failures retire it; an environment that could
                        // not be built is that environment's problem (and is retried the usual
                        // way, which reports it).
                        if matches!(
                            err,
                            lamina_sandbox::SandboxError::Template { .. }
                                | lamina_sandbox::SandboxError::AdoptionUnsupported { .. }
                        ) {
                            tracing::warn!(runtime = %launch.key, %err, "the zygote failed; retiring it and starting this environment the usual way");
                            zygotes.retire(&launch.key);
                        } else {
                            tracing::warn!(runtime = %launch.key, %err, "an environment could not start from the zygote; starting it the usual way");
                        }
                        sandbox.start(&spec).map_err(EngineError::Sandbox)?
                    }
                }
            }
            (None, None) => sandbox.start(&spec).map_err(EngineError::Sandbox)?,
        };
        tracing::debug!(
            elapsed_us = sandbox_started.elapsed().as_micros() as u64,
            environment = %environment_id,
            "sandbox started"
        );
        let handle: Arc<dyn EnvironmentHandle> = Arc::from(started.handle);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let runtime_api = match lamina_runtime_api::serve(started.runtime_api_listener, async {
            let _ = stop_rx.await;
        }) {
            Ok(api) => api,
            Err(source) => {
                handle.kill();
                handle.destroy();
                return Err(EngineError::Io {
                    what: "serve the runtime api",
                    source,
                });
            }
        };
        let log_relay = match LogRelay::spawn(
            started.output,
            logs.clone(),
            version.settings.logging.log_group.clone(),
            context.log_stream.clone(),
        ) {
            Ok(control) => control,
            Err(source) => {
                handle.kill();
                handle.destroy();
                return Err(EngineError::Io {
                    what: "read the environment's output",
                    source,
                });
            }
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let waiter = handle.clone();
        // A thread of its own, not the blocking pool: it waits for the environment's whole
        // life, and a thousand warm environments would otherwise starve every other
        // blocking task (cold starts, the control plane) of the pool's 512 threads.
        let watcher = std::thread::Builder::new()
            .name("lamina-exit".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || {
                let exit = waiter.wait().unwrap_or(EnvironmentExit {
                    code: None,
                    signal: None,
                    oom_killed: false,
                });
                let _ = exit_tx.send(Some(exit));
            });
        if let Err(source) = watcher {
            handle.kill();
            handle.destroy();
            return Err(EngineError::Io {
                what: "start the exit watcher",
                source,
            });
        }
        Ok(Arc::new(Environment {
            _code: code_lease,
            id: environment_id,
            runtime_api,
            handle,
            exit: exit_rx,
            logs: log_relay,
            stop_runtime_api: Mutex::new(Some(stop_tx)),
            init: Mutex::new(None),
            after_init: Mutex::new(refill),
            last_used: Mutex::new(Instant::now()),
            destroyed: AtomicBool::new(false),
            provisioned: context.provisioned.clone(),
            counted: AtomicBool::new(false),
        }))
    }

    /// Called once the runtime's init is over, however it ended.
    pub fn init_ended(&self) {
        let refill = self
            .after_init
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(refill) = refill {
            refill.start();
        }
    }

    /// Resolves when the environment's main process has exited.
    pub async fn exited(&self) -> EnvironmentExit {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(exit) => (*exit).expect("waited for Some"),
            Err(_) => EnvironmentExit {
                code: None,
                signal: None,
                oom_killed: false,
            },
        }
    }

    /// Whether provisioned concurrency started this environment (it is never reaped).
    pub fn is_provisioned(&self) -> bool {
        self.provisioned.is_some()
    }

    /// Stops counting a provisioned environment as allocated (idempotent): done at once
    /// when it is condemned, before its teardown runs in the background, so a refill that
    /// follows sees the gap.
    pub fn uncount_provisioned(&self) {
        if let Some(counter) = &self.provisioned
            && self.counted.swap(false, Ordering::SeqCst)
        {
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Counts a provisioned environment as allocated, once it has initialised.
    pub fn count_as_provisioned(&self) {
        if let Some(counter) = &self.provisioned
            && !self.destroyed.load(Ordering::SeqCst)
            && !self.counted.swap(true, Ordering::SeqCst)
        {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// What reads the environment's peak memory for its `REPORT` lines.
    pub fn memory_meter(&self) -> Arc<dyn EnvironmentHandle> {
        self.handle.clone()
    }

    /// Peak memory now, in MB, for environments about to be destroyed (their cgroup goes).
    pub fn max_memory_used_mb(&self) -> u64 {
        self.handle
            .max_memory_used_bytes()
            .map(|bytes| bytes.div_ceil(1024 * 1024))
            .unwrap_or(0)
    }

    pub fn set_init_timing(&self, timing: InitTiming) {
        *self.init.lock().unwrap_or_else(|p| p.into_inner()) = Some(timing);
    }

    /// The init timing, once: only the first invoke of an environment reports it.
    pub fn take_init_timing(&self) -> Option<InitTiming> {
        self.init.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Kills the process tree and releases its resources; idempotent. Blocking (cgroup and
    /// mount teardown), so async callers use [`Environment::destroy_in_background`].
    pub fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.uncount_provisioned();
        if let Some(stop) = self
            .stop_runtime_api
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        self.handle.kill();
        self.handle.destroy();
    }

    pub fn destroy_in_background(self: &Arc<Self>) {
        let environment = self.clone();
        tokio::task::spawn_blocking(move || environment.destroy());
    }
}

/// Starts an environment whose main process the runtime's zygote forks.
fn start_from_zygote(
    sandbox: &dyn Sandbox,
    spec: &EnvironmentSpec,
    template: &Template,
) -> Result<StartedEnvironment, lamina_sandbox::SandboxError> {
    let began = Instant::now();
    let (pending, adoption) = sandbox.start_for_adoption(spec)?;
    // The zygote forks while the init builds the root; its child waits for the root.
    let adopted = template.adopt(adoption);
    let started = pending.wait_ready()?;
    match adopted {
        Ok(pid) => {
            tracing::debug!(
                elapsed_us = began.elapsed().as_micros() as u64,
                pid,
                "environment adopted from the zygote"
            );
            Ok(started)
        }
        Err(err) => {
            started.handle.destroy();
            Err(err)
        }
    }
}

/// The variables Lambda sets in every environment, then the function's own.
fn environment_variables(
    version: &FunctionVersion,
    context: &StartContext,
    runtime: &str,
    managed: Option<&RuntimeLaunch>,
) -> Vec<(String, String)> {
    let settings = &version.settings;
    let mut env: Vec<(String, String)> = [
        ("AWS_LAMBDA_FUNCTION_NAME", version.function_name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", version.version.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            settings.memory_mb.to_string(),
        ),
        ("_HANDLER", settings.handler.clone().unwrap_or_default()),
        ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_owned()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            settings.logging.log_group.clone(),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", context.log_stream.clone()),
        (
            "AWS_LAMBDA_INITIALIZATION_TYPE",
            if context.provisioned.is_some() {
                "provisioned-concurrency"
            } else {
                "on-demand"
            }
            .to_owned(),
        ),
        ("AWS_REGION", context.region.clone()),
        ("AWS_DEFAULT_REGION", context.region.clone()),
        ("AWS_EXECUTION_ENV", format!("AWS_Lambda_{runtime}")),
        ("TZ", ":UTC".to_owned()),
        ("LANG", "en_US.UTF-8".to_owned()),
        ("_X_AMZN_TRACE_ID", crate::new_trace_id()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    match managed {
        // A managed runtime's PATH, LD_LIBRARY_PATH (and NODE_PATH) lead with /var/lang.
        Some(launch) => env.extend(launch.default_env.iter().cloned()),
        None => env.extend([
            (
                "PATH".to_owned(),
                "/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_owned(),
            ),
            (
                "LD_LIBRARY_PATH".to_owned(),
                "/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
                    .to_owned(),
            ),
        ]),
    }
    if settings.logging.log_format == "JSON" {
        env.push(("AWS_LAMBDA_LOG_FORMAT".to_owned(), "JSON".to_owned()));
        // The application log level applies to JSON logs only; INFO unless configured.
        env.push((
            "AWS_LAMBDA_LOG_LEVEL".to_owned(),
            settings
                .logging
                .application_log_level
                .clone()
                .unwrap_or_else(|| "INFO".to_owned()),
        ));
    }
    // The function's variables replace Lambda's unreserved defaults of the same name
    // (a second PATH= entry would be read as the first by some programs, the last by others).
    if let Some(variables) = &settings.environment {
        for (key, value) in variables {
            match env.iter_mut().find(|(k, _)| k == key) {
                Some(existing) => existing.1 = value.clone(),
                None => env.push((key.clone(), value.clone())),
            }
        }
    }
    // The interpreter cannot start without its own shared library.
    if let Some(required) = managed.and_then(|l| l.required_library_dir.as_deref())
        && let Some((_, path)) = env.iter_mut().find(|(k, _)| k == "LD_LIBRARY_PATH")
        && !path.split(':').any(|dir| dir == required)
    {
        *path = if path.is_empty() {
            required.to_owned()
        } else {
            format!("{required}:{path}")
        };
    }
    env
}
