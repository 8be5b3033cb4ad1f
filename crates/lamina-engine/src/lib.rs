//! The invoker: resolves a function version, finds it a warm execution environment or
//! starts one, hands the event to the runtime through the Runtime API, enforces the
//! timeout, and writes the invocation's `START` / `END` / `REPORT` lines.
//!
//! # The pool
//! Environments belong to one function version at one revision (a [`VersionSlot`]).
//! An invoke takes the most recently used idle environment of its slot (LIFO keeps the
//! warmest ones busy and lets the rest age out) or cold-starts a new one; concurrent
//! invokes therefore get separate environments. After a clean invocation the environment
//! goes back to the idle list; after a timeout, crash or OOM it is destroyed and the next
//! invoke starts afresh. Idle environments are reaped after `idle_timeout`.
//!
//! A change to a function (new code or configuration, deletion) retires its slots: idle
//! environments are destroyed at once, busy ones when their invocation ends, so no invoke
//! is routed to an environment of an older configuration.
//!
//! # The hot path
//! A warm invoke touches no database and spawns nothing: a read-locked map lookup, a
//! mutex-protected `Vec::pop`, a channel send to the Runtime API's long-poll, and a
//! oneshot back. Log lines go to the environment's relay task and from there to the log
//! store's batching writer, off the response path.

mod environment;
mod log_relay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lamina_logs::LogSink;
use lamina_model::{Account, FunctionVersion, LATEST};
use lamina_runtime_api::{InitState, Invocation, InvocationOutcome};
use lamina_sandbox::{EnvironmentExit, Sandbox, SandboxError};
use lamina_store::{CodeError, CodeStore, MetadataStore, StoreError};

pub use environment::BOOTSTRAP_PATHS;
use environment::{CodeInUse, Environment, StartContext};
use log_relay::LogControl;

/// How long a runtime may take to initialise before its first invocation.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest event a synchronous invoke may carry.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = 6_291_456;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("function not found: {arn}")]
    FunctionNotFound { arn: String },
    #[error("{0}")]
    RuntimeUnavailable(lamina_runtimes::Unavailable),
    #[error("the deployment package has no bootstrap")]
    MissingBootstrap,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("cannot start an execution environment: {0}")]
    Sandbox(#[source] SandboxError),
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub account: Account,
    /// How long an idle environment is kept warm.
    pub idle_timeout: Duration,
    /// The managed runtimes this server can start, and how.
    pub runtimes: Arc<lamina_runtimes::RuntimeCatalog>,
}

/// A synchronous invocation, as the API layer parsed it.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub function_name: String,
    pub qualifier: Option<String>,
    pub payload: Bytes,
    pub client_context: Option<String>,
    pub tail_log: bool,
}

#[derive(Debug, Clone)]
pub struct InvokeResult {
    pub executed_version: String,
    pub payload: Bytes,
    /// `Unhandled` when the function (or the platform on its behalf) failed.
    pub function_error: Option<&'static str>,
    /// The last 4 KB of this invocation's log, when asked for.
    pub log_tail: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct InitTiming {
    pub duration: Duration,
}

/// The environments of one function version at one revision.
#[derive(Debug)]
struct VersionSlot {
    version: Arc<FunctionVersion>,
    idle: Mutex<Vec<Arc<Environment>>>,
    retired: AtomicBool,
}

#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    store: Arc<dyn MetadataStore>,
    code: Arc<CodeStore>,
    sandbox: Arc<dyn Sandbox>,
    logs: LogSink,
    slots: RwLock<HashMap<(String, String), Arc<VersionSlot>>>,
    /// Bumped (under the `slots` write lock) by every function change, so a version read
    /// from the store while a change lands is not cached over the change.
    generation: AtomicU64,
    code_in_use: Arc<CodeInUse>,
    environments_started: AtomicU64,
}

pub fn new_trace_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("Root=1-{now:08x}-{};Sampled=0", &random[..24])
}

/// Log stream names as Lambda makes them: `2024/05/01/[$LATEST]<32 hex>`.
fn log_stream_name(version: &str) -> String {
    let today = time::OffsetDateTime::now_utc();
    format!(
        "{:04}/{:02}/{:02}/[{version}]{}",
        today.year(),
        u8::from(today.month()),
        today.day(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `errorType`/`errorMessage` documents the platform answers with on the function's behalf.
fn platform_error(error_type: &str, message: String) -> Bytes {
    Bytes::from(serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string())
}

fn exit_description(exit: &EnvironmentExit) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(9)) => "signal: killed".to_owned(),
        (None, Some(signal)) => format!("signal: {signal}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// How an invocation ended, before it is turned into a response.
enum Ending {
    Outcome(InvocationOutcome),
    Exited(EnvironmentExit),
    TimedOut,
    InitFailed {
        error_type: Option<String>,
        body: Bytes,
    },
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        store: Arc<dyn MetadataStore>,
        code: Arc<CodeStore>,
        sandbox: Arc<dyn Sandbox>,
        logs: LogSink,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            config,
            store,
            code,
            sandbox,
            logs,
            slots: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            code_in_use: Arc::default(),
            environments_started: AtomicU64::new(0),
        })
    }

    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.sandbox
    }

    /// Code trees some live environment has mounted: code collection must keep them.
    pub fn code_in_use(&self) -> std::collections::HashSet<String> {
        self.code_in_use.snapshot()
    }

    /// Starts the background reaper of idle environments.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        let period = (self.config.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                engine.reap_idle();
            }
        });
    }

    fn reap_idle(&self) {
        let slots: Vec<Arc<VersionSlot>> = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let expired: Vec<Arc<Environment>> = {
                let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (keep, expired) = idle.drain(..).partition(|env| {
                    env.idle_for() < self.config.idle_timeout && !env.has_exited()
                });
                *idle = keep;
                expired
            };
            for environment in expired {
                tracing::debug!(environment = %environment.id, "reaping idle environment");
                environment.destroy_in_background();
            }
        }
    }

    /// Forgets everything cached about `function_name` and destroys its idle
    /// environments; busy ones are destroyed when their invocation ends.
    pub fn function_changed(&self, function_name: &str) {
        let retired: Vec<Arc<VersionSlot>> = {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            self.generation.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<_> = slots
                .keys()
                .filter(|(name, _)| name == function_name)
                .cloned()
                .collect();
            keys.into_iter().filter_map(|k| slots.remove(&k)).collect()
        };
        for slot in retired {
            slot.retired.store(true, Ordering::SeqCst);
            let idle: Vec<_> = slot
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .collect();
            for environment in idle {
                environment.destroy_in_background();
            }
        }
    }

    /// Destroys every environment (server shutdown).
    pub fn shutdown(&self) {
        let slots: Vec<_> = self
            .slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            slot.retired.store(true, Ordering::SeqCst);
            for environment in slot
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                environment.destroy();
            }
        }
    }

    async fn slot(&self, name: &str, version: &str) -> Result<Arc<VersionSlot>, EngineError> {
        let key = (name.to_owned(), version.to_owned());
        if let Some(slot) = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(slot.clone());
        }
        // A change may land between reading the store and caching what was read; then
        // the read is stale and is done again.
        loop {
            let generation = self.generation.load(Ordering::SeqCst);
            let store = self.store.clone();
            let (lookup_name, lookup_version) = key.clone();
            let found = tokio::task::spawn_blocking(move || {
                store.get_version(&lookup_name, &lookup_version)
            })
            .await
            .map_err(|e| EngineError::Internal {
                detail: e.to_string(),
            })??;
            let Some(found) = found else {
                let qualifier = (version != LATEST).then_some(version);
                return Err(EngineError::FunctionNotFound {
                    arn: self.config.account.qualified_function_arn(name, qualifier),
                });
            };
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            if self.generation.load(Ordering::SeqCst) != generation {
                continue;
            }
            // Another invoke may have loaded it meanwhile; keep the first so pools are shared.
            let slot = slots.entry(key.clone()).or_insert_with(|| {
                Arc::new(VersionSlot {
                    version: Arc::new(found),
                    idle: Mutex::new(Vec::new()),
                    retired: AtomicBool::new(false),
                })
            });
            return Ok(slot.clone());
        }
    }

    async fn start_environment(
        &self,
        slot: &Arc<VersionSlot>,
    ) -> Result<Arc<Environment>, EngineError> {
        let number = self.environments_started.fetch_add(1, Ordering::Relaxed);
        let context = StartContext {
            environment_id: format!(
                "env-{}-{number}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            log_stream: log_stream_name(&slot.version.version),
            region: self.config.account.region.clone(),
        };
        let sandbox = self.sandbox.clone();
        let runtimes = self.config.runtimes.clone();
        let code = self.code.clone();
        let logs = self.logs.clone();
        let version = slot.version.clone();
        let runtime = tokio::runtime::Handle::current();
        // Leased before the tree is located, so collection cannot remove it in between.
        let code_lease = self.code_in_use.lease(&version.code.sha256_hex);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let task_dir = code.extracted_dir(&version.code.sha256_hex)?;
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "code located"
            );
            let environment = Environment::start(
                &sandbox, &runtimes, &version, &task_dir, &context, &logs, &runtime, code_lease,
            );
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "execution environment started"
            );
            environment
        })
        .await
        .map_err(|e| EngineError::Internal {
            detail: e.to_string(),
        })?
    }

    /// A synchronous (`RequestResponse`) invocation.
    pub async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResult, EngineError> {
        let version_name = request
            .qualifier
            .clone()
            .unwrap_or_else(|| LATEST.to_owned());
        let slot = self.slot(&request.function_name, &version_name).await?;
        let version = slot.version.clone();
        let request_id = uuid::Uuid::new_v4().to_string();

        let popped = slot.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let environment = match popped {
            Some(environment) if !environment.has_exited() => environment,
            stale => {
                if let Some(stale) = stale {
                    stale.destroy_in_background();
                }
                let init_started = Instant::now();
                let environment = match self.start_environment(&slot).await {
                    Ok(environment) => environment,
                    Err(EngineError::MissingBootstrap) => {
                        return Ok(self.failed_before_start(
                            &version,
                            "Runtime.InvalidEntrypoint",
                            format!(
                                "RequestId: {request_id} Error: Couldn't find valid bootstrap(s): [{}]",
                                BOOTSTRAP_PATHS.join(" ")
                            ),
                        ));
                    }
                    Err(other) => return Err(other),
                };
                let _ = environment.logs.send(LogControl::Platform(format!(
                    "INIT_START Runtime Version: {}",
                    version.settings.runtime.as_deref().unwrap_or("unknown")
                )));
                match self.wait_until_ready(&environment).await {
                    Ok(()) => {
                        tracing::debug!(
                            elapsed_us = init_started.elapsed().as_micros() as u64,
                            "runtime ready"
                        );
                        environment.set_init_timing(InitTiming {
                            duration: init_started.elapsed(),
                        })
                    }
                    Err(ending) => {
                        return Ok(self
                            .finish(
                                &slot,
                                environment,
                                &request,
                                &request_id,
                                ending,
                                Duration::ZERO,
                                Some(InitTiming {
                                    duration: init_started.elapsed(),
                                }),
                            )
                            .await);
                    }
                }
                environment
            }
        };

        let _ = environment.logs.send(LogControl::Start(format!(
            "START RequestId: {request_id} Version: {}",
            version.version
        )));
        let timeout = Duration::from_secs(u64::from(version.settings.timeout_seconds));
        let started = Instant::now();
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
            + timeout.as_millis() as u64;
        let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel();
        let invocation = Invocation {
            request_id: request_id.clone(),
            payload: request.payload.clone(),
            deadline_ms,
            invoked_function_arn: self
                .config
                .account
                .qualified_function_arn(&version.function_name, request.qualifier.as_deref()),
            trace_id: new_trace_id(),
            client_context: request.client_context.clone(),
            cognito_identity: None,
            outcome: outcome_tx,
        };
        let ending = if environment.runtime_api.dispatch(invocation).is_err() {
            // Its Runtime API has stopped (or, which should not happen, it is busy): this
            // environment cannot serve. Kill it so waiting for its exit cannot hang.
            let doomed = environment.clone();
            let _ = tokio::task::spawn_blocking(move || doomed.destroy()).await;
            Ending::Exited(environment.exited().await)
        } else {
            let mut outcome_rx = outcome_rx;
            tokio::select! {
                // An answer and an exit can arrive together (a runtime that reports an
                // error and quits): the answer is what the caller gets.
                biased;
                outcome = &mut outcome_rx => match outcome {
                    Ok(outcome) => Ending::Outcome(outcome),
                    // The Runtime API lost the invocation (its connection broke mid-report):
                    // the environment cannot be trusted with another.
                    Err(_) => {
                        let doomed = environment.clone();
                        let _ = tokio::task::spawn_blocking(move || doomed.destroy()).await;
                        Ending::Exited(environment.exited().await)
                    }
                },
                exit = environment.exited() => match outcome_rx.try_recv() {
                    Ok(outcome) => Ending::Outcome(outcome),
                    Err(_) => Ending::Exited(exit),
                },
                _ = tokio::time::sleep(timeout) => Ending::TimedOut,
            }
        };
        let init = environment.take_init_timing();
        Ok(self
            .finish(
                &slot,
                environment,
                &request,
                &request_id,
                ending,
                started.elapsed(),
                init,
            )
            .await)
    }

    async fn wait_until_ready(&self, environment: &Arc<Environment>) -> Result<(), Ending> {
        tokio::select! {
            biased;
            state = environment.runtime_api.ready() => match state {
                InitState::Ready => Ok(()),
                InitState::Failed { error_type, body } => Err(Ending::InitFailed { error_type, body }),
                // The Runtime API stopped: make sure the environment goes too.
                InitState::Initializing => {
                    let doomed = environment.clone();
                    let _ = tokio::task::spawn_blocking(move || doomed.destroy()).await;
                    Err(Ending::Exited(environment.exited().await))
                }
            },
            exit = environment.exited() => match environment.runtime_api.init_state() {
                // It reported an init error and quit: the report is the better answer.
                InitState::Failed { error_type, body } => Err(Ending::InitFailed { error_type, body }),
                _ => Err(Ending::Exited(exit)),
            },
            _ = tokio::time::sleep(INIT_TIMEOUT) => Err(Ending::TimedOut),
        }
    }

    /// Turns how an invocation ended into the caller's response, writes END and REPORT,
    /// and returns the environment to the pool or destroys it.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        slot: &Arc<VersionSlot>,
        environment: Arc<Environment>,
        request: &InvokeRequest,
        request_id: &str,
        ending: Ending,
        duration: Duration,
        init: Option<InitTiming>,
    ) -> InvokeResult {
        let version = &slot.version;
        let timeout_seconds = version.settings.timeout_seconds;
        // (response, function error, environment still usable, REPORT status suffix)
        let (payload, function_error, healthy, status) = match ending {
            Ending::Outcome(InvocationOutcome::Response(payload)) => (payload, None, true, None),
            Ending::Outcome(InvocationOutcome::Error { body, .. }) => {
                (body, Some("Unhandled"), true, None)
            }
            Ending::Outcome(InvocationOutcome::ResponseTooLarge) => (
                platform_error(
                    "Function.ResponseSizeTooLarge",
                    format!(
                        "Response payload size exceeded maximum allowed payload size ({} bytes).",
                        lamina_runtime_api::MAX_RESPONSE_BYTES
                    ),
                ),
                Some("Unhandled"),
                true,
                None,
            ),
            Ending::InitFailed { body, error_type } => {
                let suffix = format!(
                    "\tStatus: error\tError Type: {}",
                    error_type.as_deref().unwrap_or("Runtime.InitError")
                );
                (body, Some("Unhandled"), false, Some(suffix))
            }
            Ending::TimedOut => (
                platform_error(
                    "Sandbox.Timedout",
                    format!(
                        "RequestId: {request_id} Error: Task timed out after {timeout_seconds}.00 seconds"
                    ),
                ),
                Some("Unhandled"),
                false,
                Some("\tStatus: timeout".to_owned()),
            ),
            Ending::Exited(exit) => {
                let (error_type, cause) = if exit.oom_killed {
                    ("Runtime.OutOfMemory", "signal: killed".to_owned())
                } else {
                    ("Runtime.ExitError", exit_description(&exit))
                };
                (
                    platform_error(
                        error_type,
                        format!(
                            "RequestId: {request_id} Error: Runtime exited with error: {cause}"
                        ),
                    ),
                    Some("Unhandled"),
                    false,
                    Some(format!("\tStatus: error\tError Type: {error_type}")),
                )
            }
        };
        let billed = duration.as_nanos().div_ceil(1_000_000).max(1);
        let head = format!(
            "REPORT RequestId: {request_id}\tDuration: {:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {} MB",
            duration.as_secs_f64() * 1000.0,
            version.settings.memory_mb,
        );
        let mut report_tail = String::new();
        if let Some(init) = init {
            report_tail.push_str(&format!(
                "\tInit Duration: {:.2} ms",
                init.duration.as_secs_f64() * 1000.0
            ));
        }
        if let Some(status) = status {
            report_tail.push_str(&status);
        }
        let report = log_relay::Report {
            head,
            tail: report_tail,
            // An environment about to be destroyed loses its cgroup: measure it now.
            measured_mb: (!healthy).then(|| environment.max_memory_used_mb()),
            memory: environment.memory_meter(),
        };
        let (tail_tx, tail_rx) = if request.tail_log {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let _ = environment.logs.send(LogControl::End {
            end_line: format!("END RequestId: {request_id}"),
            report,
            tail: tail_tx,
        });
        let returned = healthy && !environment.has_exited() && {
            // Checked under the idle lock: `function_changed` marks the slot retired before
            // draining under the same lock, so nothing is pushed after the drain.
            let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
            if slot.retired.load(Ordering::SeqCst) {
                false
            } else {
                environment.touch();
                idle.push(environment.clone());
                true
            }
        };
        if !returned {
            environment.destroy_in_background();
        }
        let log_tail = match tail_rx {
            Some(rx) => Some(rx.await.unwrap_or_default()),
            None => None,
        };
        InvokeResult {
            executed_version: version.version.clone(),
            payload,
            function_error,
            log_tail,
        }
    }

    /// An invocation that failed before any environment existed (no bootstrap, say).
    fn failed_before_start(
        &self,
        version: &FunctionVersion,
        error_type: &str,
        message: String,
    ) -> InvokeResult {
        InvokeResult {
            executed_version: version.version.clone(),
            payload: platform_error(error_type, message),
            function_error: Some("Unhandled"),
            log_tail: None,
        }
    }
}
