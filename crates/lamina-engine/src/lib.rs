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
//! invoke starts afresh. Idle environments are reaped after their keep-alive (see
//! [`keep_alive`]).
//!
//! A change to a function retires the slots it affects: an update of `$LATEST` retires
//! only `$LATEST` (published versions are immutable, so their warm environments stay), a
//! deleted version its own slot, a deleted function all of them. Idle environments are
//! destroyed at once, busy ones when their invocation ends, so no invoke is routed to an
//! environment of an older configuration.
//!
//! # Aliases
//! An invoke that names an alias is routed by the alias's [`AliasRoute`], cached like the
//! slots (loaded from the store on a miss, dropped by [`Engine::alias_changed`]): the
//! primary version, or with probability `weight` the additional one, picked with a cheap
//! thread-local RNG. Alias resolution costs a map lookup, not a database read.
//!
//! # The hot path
//! A warm invoke touches no database and spawns nothing: a read-locked map lookup, a
//! mutex-protected `Vec::pop`, a channel send to the Runtime API's long-poll, and a
//! oneshot back. Log lines go to the environment's relay task and from there to the log
//! store's batching writer, off the response path.

pub mod concurrency;
mod environment;
pub mod host_memory;
pub mod keep_alive;
mod log_relay;
mod zygotes;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lamina_logs::LogSink;
use lamina_model::alias::Alias;
use lamina_model::{Account, FunctionVersion, LATEST, Qualifier};
use lamina_runtime_api::{InitState, Invocation, InvocationOutcome};
use lamina_sandbox::{EnvironmentExit, Sandbox, SandboxError};
use lamina_store::{CodeError, CodeStore, MetadataStore, StoreError};

pub use concurrency::{ConcurrencyGovernor, ThrottleReason};
pub use environment::BOOTSTRAP_PATHS;
use environment::{CodeInUse, Environment, StartContext};
use keep_alive::IdleTimes;
pub use keep_alive::KeepAlive;

/// How long a runtime may take to initialise before its first invocation.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest event a synchronous invoke may carry.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = 6_291_456;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("function not found: {arn}")]
    FunctionNotFound { arn: String },
    #[error("throttled: {}", reason.as_str())]
    Throttled { reason: ThrottleReason },
    #[error(
        "the host has {} MB of memory available, fewer than the {} MB a new environment \
         needs (its MemorySize plus the host's reserve), and no idle environment is left \
         to reclaim",
        shortfall.available_mb,
        shortfall.needed_mb
    )]
    HostMemoryFull { shortfall: host_memory::Shortfall },
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
    pub keep_alive: KeepAlive,
    /// The account's concurrency limit, shared by every function.
    pub concurrency_limit: u32,
    /// What must stay free on the host when an environment starts.
    pub host_memory: host_memory::HostMemory,
    /// The managed runtimes this server can start, and how.
    pub runtimes: Arc<lamina_runtimes::RuntimeCatalog>,
    /// Whether runtimes with a zygote (Python) fork cold starts from it ([`zygotes`]).
    pub zygotes: bool,
    /// How many environments each zygote keeps built ahead of any function, for cold
    /// starts to take ([`lamina_sandbox::PreparedEnvironment`]); 0 prepares none.
    pub prepared_environments: usize,
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
    /// Invocations of this version running now.
    busy: AtomicU32,
    /// When an environment of this version last finished an invocation.
    last_released: Mutex<Option<Instant>>,
    /// What the adaptive keep-alive learns from.
    idle_times: IdleTimes,
    /// Provisioned concurrency: environments wanted, and those initialised and alive.
    provisioned_target: AtomicU32,
    provisioned_ready: Arc<AtomicU32>,
    /// One task at a time starts this version's provisioned environments.
    provisioning: AtomicBool,
}

/// Where an alias sends invocations.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasRoute {
    pub primary: String,
    /// The additional version and the share of invocations it receives.
    pub additional: Option<(String, f64)>,
}

impl AliasRoute {
    pub fn of(alias: &Alias) -> AliasRoute {
        AliasRoute {
            primary: alias.function_version.clone(),
            additional: alias
                .additional
                .as_ref()
                .map(|a| (a.version.clone(), a.weight)),
        }
    }

    /// The version one invocation runs, given a uniform sample from `[0, 1)`.
    pub fn pick(&self, sample: f64) -> &str {
        match &self.additional {
            Some((version, weight)) if sample < *weight => version,
            _ => &self.primary,
        }
    }
}

#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    store: Arc<dyn MetadataStore>,
    code: Arc<CodeStore>,
    sandbox: Arc<dyn Sandbox>,
    logs: LogSink,
    slots: RwLock<HashMap<(String, String), Arc<VersionSlot>>>,
    /// `(function, alias)` → where the alias routes.
    aliases: RwLock<HashMap<(String, String), Arc<AliasRoute>>>,
    /// Bumped (under the `slots` or `aliases` write lock) by every change, so a record read
    /// from the store while a change lands is not cached over the change.
    generation: AtomicU64,
    code_in_use: Arc<CodeInUse>,
    zygotes: Arc<zygotes::Zygotes>,
    environments_started: AtomicU64,
    concurrency: ConcurrencyGovernor,
    /// Provisioned concurrency wanted now: function → version → environments. The
    /// background tasks that start and stop environments apply what is here when they run.
    provisioned: Mutex<HashMap<String, std::collections::BTreeMap<String, u32>>>,
    /// For the background work methods on `&self` start (replacing provisioned
    /// environments).
    myself: std::sync::Weak<Engine>,
}

/// A version-4 UUID from a fast thread-local generator. Request ids, trace ids and
/// stream names must be unique, not secret (each Runtime API is private to its
/// environment), and the OS generator costs a system call per id on the invoke path.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

/// Counts an invocation as running on its version while alive.
struct BusyGuard<'a> {
    slot: &'a VersionSlot,
}

impl<'a> BusyGuard<'a> {
    /// `no_idle_environment`: the invocation found no warm environment. If nothing of the
    /// version was running either, the version had gone fully idle (its environments were
    /// reaped), and the time since its last invocation ended is one idle-time sample.
    fn enter(slot: &'a VersionSlot, no_idle_environment: bool) -> BusyGuard<'a> {
        let running_before = slot.busy.fetch_add(1, Ordering::AcqRel);
        if no_idle_environment
            && running_before == 0
            && let Some(released) = *slot.last_released.lock().unwrap_or_else(|p| p.into_inner())
        {
            slot.idle_times.record(released.elapsed());
        }
        BusyGuard { slot }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.slot.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn new_trace_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let random = random_uuid().simple().to_string();
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
        random_uuid().simple()
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
    ) -> Result<Arc<Engine>, EngineError> {
        let concurrency = ConcurrencyGovernor::new(config.concurrency_limit);
        for (function_name, reserved) in store.reservations()? {
            concurrency.set_reservation(&function_name, Some(reserved));
        }
        let zygotes = Arc::new(zygotes::Zygotes::new(
            config.zygotes,
            config.prepared_environments,
            sandbox.clone(),
        ));
        Ok(Arc::new_cyclic(|myself| Engine {
            myself: myself.clone(),
            config,
            store,
            code,
            sandbox,
            logs,
            slots: RwLock::new(HashMap::new()),
            aliases: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            code_in_use: Arc::default(),
            zygotes,
            environments_started: AtomicU64::new(0),
            concurrency,
            provisioned: Mutex::new(HashMap::new()),
        }))
    }

    /// The account's concurrency: limits, reservations and what is in use.
    pub fn concurrency(&self) -> &ConcurrencyGovernor {
        &self.concurrency
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
        let period = match self.config.keep_alive {
            KeepAlive::Fixed(duration) => duration / 4,
            // Learned keep-alives can be as short as a few seconds.
            KeepAlive::Adaptive { fallback } => (fallback / 4).min(Duration::from_secs(1)),
        }
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

    /// Sets the provisioned concurrency of every version of a function at once: the
    /// versions in `targets` get their counts, any other version of the function that had
    /// provisioned environments gets none. The concurrency set aside changes at once;
    /// environments are started or destroyed in the background.
    ///
    /// Calls take effect in the order they are made: each records the function's desired
    /// state, and the background work applies whatever is desired when it runs, so an
    /// older call's task finishing last cannot undo a newer one.
    pub fn set_provisioned_targets(
        &self,
        function_name: &str,
        targets: &std::collections::BTreeMap<String, u32>,
    ) {
        let previous = {
            let mut desired = self.provisioned.lock().unwrap_or_else(|p| p.into_inner());
            let previous = if targets.values().all(|count| *count == 0) {
                desired.remove(function_name)
            } else {
                desired.insert(function_name.to_owned(), targets.clone())
            };
            self.concurrency.set_provisioned(function_name, targets);
            previous.unwrap_or_default()
        };
        let mut versions: std::collections::BTreeSet<String> = previous.into_keys().collect();
        versions.extend(targets.keys().cloned());
        versions.extend(
            self.slots
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|((name, _), slot)| {
                    name == function_name && slot.provisioned_target.load(Ordering::SeqCst) > 0
                })
                .map(|((_, version), _)| version.clone()),
        );
        for version in versions {
            self.apply_provisioned(function_name, &version);
        }
    }

    /// How many environments of `version` are desired now.
    fn desired_provisioned(
        desired: &HashMap<String, std::collections::BTreeMap<String, u32>>,
        function_name: &str,
        version: &str,
    ) -> u32 {
        desired
            .get(function_name)
            .and_then(|targets| targets.get(version))
            .copied()
            .unwrap_or(0)
    }

    /// Brings `version`'s provisioned environments to the desired count, in the
    /// background: destroys idle surplus ones and starts missing ones.
    fn apply_provisioned(&self, function_name: &str, version: &str) {
        let Some(engine) = self.myself.upgrade() else {
            return;
        };
        let (name, version) = (function_name.to_owned(), version.to_owned());
        tokio::spawn(async move {
            let slot = match engine.slot(&name, &version).await {
                Ok(slot) => slot,
                Err(error) => {
                    tracing::warn!(function = %name, %version, %error, "cannot provision");
                    return;
                }
            };
            {
                // Read and stored under the lock that records desired states, so the
                // last task to get here stores the latest one.
                let desired = engine.provisioned.lock().unwrap_or_else(|p| p.into_inner());
                let count = Self::desired_provisioned(&desired, &name, &version);
                slot.provisioned_target.store(count, Ordering::SeqCst);
            }
            // Idle provisioned environments beyond the target go now; busy ones when
            // they finish.
            let surplus: Vec<Arc<Environment>> = {
                let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
                let target = slot.provisioned_target.load(Ordering::SeqCst) as usize;
                let mut surplus = Vec::new();
                let mut ready = slot.provisioned_ready.load(Ordering::SeqCst) as usize;
                idle.retain(|env| {
                    if env.is_provisioned() && ready > target {
                        ready -= 1;
                        env.uncount_provisioned();
                        surplus.push(env.clone());
                        false
                    } else {
                        true
                    }
                });
                surplus
            };
            for environment in surplus {
                environment.destroy_in_background();
            }
            engine.refill_provisioned(slot);
        });
    }

    /// Provisioned environments of `version` initialised and alive now.
    pub fn provisioned_allocated(&self, function_name: &str, version: &str) -> u32 {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(function_name.to_owned(), version.to_owned()))
            .map_or(0, |slot| slot.provisioned_ready.load(Ordering::SeqCst))
    }

    /// Destroys an environment taken out of service; a provisioned one that was not
    /// surplus (it crashed, timed out, exited) is replaced.
    fn discard(&self, slot: &Arc<VersionSlot>, environment: &Arc<Environment>) {
        environment.uncount_provisioned();
        environment.destroy_in_background();
        if environment.is_provisioned()
            && let Some(engine) = self.myself.upgrade()
        {
            engine.refill_provisioned(slot.clone());
        }
    }

    /// Starts provisioned environments until the version has as many as it should.
    fn refill_provisioned(self: &Arc<Self>, slot: Arc<VersionSlot>) {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                if slot.provisioning.swap(true, Ordering::SeqCst) {
                    return; // another task is at it, and re-checks when done
                }
                while !slot.retired.load(Ordering::SeqCst)
                    && slot.provisioned_ready.load(Ordering::SeqCst)
                        < slot.provisioned_target.load(Ordering::SeqCst)
                {
                    if let Err(error) = engine.start_provisioned(&slot).await {
                        tracing::warn!(
                            function = %slot.version.function_name,
                            version = %slot.version.version,
                            %error,
                            "a provisioned environment failed to start"
                        );
                        break;
                    }
                }
                slot.provisioning.store(false, Ordering::SeqCst);
                let short = slot.provisioned_ready.load(Ordering::SeqCst)
                    < slot.provisioned_target.load(Ordering::SeqCst);
                if !short || slot.retired.load(Ordering::SeqCst) {
                    return;
                }
                // A failure: try again a little later rather than spin.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    async fn start_provisioned(&self, slot: &Arc<VersionSlot>) -> Result<(), EngineError> {
        self.make_room(slot.version.settings.memory_mb).await?;
        let environment = self.start_environment(slot, true).await?;
        environment.logs.platform(format!(
            "INIT_START Runtime Version: {}",
            slot.version
                .settings
                .runtime
                .as_deref()
                .unwrap_or("unknown")
        ));
        if self.wait_until_ready(&environment).await.is_err() {
            environment.destroy_in_background();
            return Err(EngineError::Internal {
                detail: "the runtime did not initialise".to_owned(),
            });
        }
        environment.count_as_provisioned();
        let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The target may have been lowered (or the version retired) while it initialised.
        if slot.retired.load(Ordering::SeqCst)
            || slot.provisioned_ready.load(Ordering::SeqCst)
                > slot.provisioned_target.load(Ordering::SeqCst)
        {
            drop(idle);
            environment.uncount_provisioned();
            environment.destroy_in_background();
        } else {
            environment.touch();
            // At the bottom: on-demand environments already warm are reused first.
            idle.insert(0, environment);
        }
        Ok(())
    }

    /// Makes sure the host can hold one more environment of `memory_mb`, destroying idle
    /// environments (longest idle first, any function) while it cannot.
    async fn make_room(&self, memory_mb: u32) -> Result<(), EngineError> {
        let mut shortfall = match self.config.host_memory.admit(memory_mb) {
            Ok(()) => return Ok(()),
            Err(shortfall) => shortfall,
        };
        loop {
            // Enough idle environments to cover the shortfall, if each gave back its size.
            let mut candidates: Vec<(Duration, Arc<VersionSlot>, String)> = self
                .slots
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .flat_map(|slot| {
                    slot.idle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .filter(|env| !env.is_provisioned())
                        .map(|env| (env.idle_for(), slot.clone(), env.id.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            if candidates.is_empty() {
                tracing::warn!(
                    available_mb = shortfall.available_mb,
                    needed_mb = shortfall.needed_mb,
                    "host memory is full: throttling a cold start"
                );
                return Err(EngineError::HostMemoryFull { shortfall });
            }
            candidates.sort_by_key(|candidate| std::cmp::Reverse(candidate.0));
            let mut victims = Vec::new();
            let mut freed_mb = 0u64;
            for (_, slot, id) in candidates {
                if freed_mb >= shortfall.needed_mb - shortfall.available_mb {
                    break;
                }
                let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(position) = idle.iter().position(|env| env.id == id) {
                    let environment = idle.remove(position);
                    freed_mb += environment.max_memory_used_mb().max(1);
                    victims.push(environment);
                }
            }
            tracing::info!(
                reclaimed = victims.len(),
                "host memory is short: destroying idle environments"
            );
            let _ = tokio::task::spawn_blocking(move || {
                for environment in victims {
                    environment.destroy();
                }
            })
            .await;
            match self.config.host_memory.admit(memory_mb) {
                Ok(()) => return Ok(()),
                Err(still) => shortfall = still,
            }
        }
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
            let keep_alive = self.config.keep_alive.for_history(&slot.idle_times);
            let expired: Vec<Arc<Environment>> = {
                let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (keep, expired) = idle.drain(..).partition(|env| {
                    (env.is_provisioned() || env.idle_for() < keep_alive) && !env.has_exited()
                });
                *idle = keep;
                expired
            };
            for environment in expired {
                tracing::debug!(environment = %environment.id, "reaping idle environment");
                // Only exited ones when provisioned: those are replaced.
                self.discard(&slot, &environment);
            }
        }
    }

    /// Forgets everything cached about `function_name` (it was deleted, or changed in a
    /// way that touches every version) and destroys its idle environments; busy ones are
    /// destroyed when their invocation ends.
    pub fn function_changed(&self, function_name: &str) {
        {
            let mut aliases = self.aliases.write().unwrap_or_else(|p| p.into_inner());
            self.generation.fetch_add(1, Ordering::SeqCst);
            aliases.retain(|(name, _), _| name != function_name);
        }
        {
            let mut desired = self.provisioned.lock().unwrap_or_else(|p| p.into_inner());
            desired.remove(function_name);
            self.concurrency
                .set_provisioned(function_name, &std::collections::BTreeMap::new());
        }
        self.retire(|name, _| name == function_name);
    }

    /// Forgets an alias's routing: it was created, updated or deleted.
    pub fn alias_changed(&self, function_name: &str, alias: &str) {
        let mut aliases = self.aliases.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        aliases.remove(&(function_name.to_owned(), alias.to_owned()));
    }

    /// Forgets one version of a function: `$LATEST` after an update, or a published
    /// version that was deleted. Published versions are immutable, so an update of
    /// `$LATEST` leaves their warm environments alone.
    pub fn version_changed(&self, function_name: &str, version: &str) {
        self.retire(|name, v| name == function_name && v == version);
    }

    fn retire(&self, matches: impl Fn(&str, &str) -> bool) {
        let retired: Vec<Arc<VersionSlot>> = {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            self.generation.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<_> = slots
                .keys()
                .filter(|(name, version)| matches(name, version))
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
        self.zygotes.shutdown();
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

    /// Where `alias` routes, from the cache or (on a miss) the store.
    async fn alias_route(&self, name: &str, alias: &str) -> Result<Arc<AliasRoute>, EngineError> {
        let key = (name.to_owned(), alias.to_owned());
        if let Some(route) = self
            .aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(route.clone());
        }
        loop {
            let generation = self.generation.load(Ordering::SeqCst);
            let store = self.store.clone();
            let (lookup_name, lookup_alias) = key.clone();
            let found =
                tokio::task::spawn_blocking(move || store.get_alias(&lookup_name, &lookup_alias))
                    .await
                    .map_err(|e| EngineError::Internal {
                        detail: e.to_string(),
                    })??;
            let Some(found) = found else {
                return Err(EngineError::FunctionNotFound {
                    arn: self
                        .config
                        .account
                        .qualified_function_arn(name, Some(alias)),
                });
            };
            let mut aliases = self.aliases.write().unwrap_or_else(|p| p.into_inner());
            if self.generation.load(Ordering::SeqCst) != generation {
                continue;
            }
            let route = aliases
                .entry(key.clone())
                .or_insert_with(|| Arc::new(AliasRoute::of(&found)));
            return Ok(route.clone());
        }
    }

    /// The version an invocation of `qualifier` runs.
    async fn resolve_version(
        &self,
        name: &str,
        qualifier: Option<&str>,
    ) -> Result<String, EngineError> {
        Ok(match Qualifier::of(qualifier) {
            Qualifier::Latest => LATEST.to_owned(),
            Qualifier::Version(version) => version.to_owned(),
            Qualifier::Alias(alias) => {
                let route = self.alias_route(name, alias).await?;
                route.pick(fastrand::f64()).to_owned()
            }
        })
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
                    busy: AtomicU32::new(0),
                    last_released: Mutex::new(None),
                    idle_times: IdleTimes::default(),
                    provisioned_target: AtomicU32::new(0),
                    provisioned_ready: Arc::new(AtomicU32::new(0)),
                    provisioning: AtomicBool::new(false),
                })
            });
            return Ok(slot.clone());
        }
    }

    async fn start_environment(
        &self,
        slot: &Arc<VersionSlot>,
        provisioned: bool,
    ) -> Result<Arc<Environment>, EngineError> {
        let number = self.environments_started.fetch_add(1, Ordering::Relaxed);
        let context = StartContext {
            environment_id: format!("env-{}-{number}", &random_uuid().simple().to_string()[..12]),
            log_stream: log_stream_name(&slot.version.version),
            region: self.config.account.region.clone(),
            provisioned: provisioned.then(|| slot.provisioned_ready.clone()),
        };
        let sandbox = self.sandbox.clone();
        let runtimes = self.config.runtimes.clone();
        let zygotes = self.zygotes.clone();
        let code = self.code.clone();
        let logs = self.logs.clone();
        let version = slot.version.clone();
        let runtime = tokio::runtime::Handle::current();
        let layers: Vec<String> = version
            .settings
            .layers
            .iter()
            .map(|layer| layer.sha256_hex.clone())
            .collect();
        // Leased before the trees are located (or merged), so collection cannot remove
        // them in between.
        let mut leased = vec![version.code.sha256_hex.clone()];
        if !layers.is_empty() {
            leased.push(CodeStore::opt_key(&layers));
            leased.extend(layers.iter().cloned());
        }
        let code_lease = self.code_in_use.lease(leased);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let task_dir = code.extracted_dir(&version.code.sha256_hex)?;
            let opt_dir = if layers.is_empty() {
                None
            } else {
                Some(code.opt_dir(&layers)?)
            };
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "code located"
            );
            let environment = Environment::start(
                &sandbox,
                &runtimes,
                &version,
                &task_dir,
                opt_dir.as_deref(),
                &context,
                &logs,
                &runtime,
                code_lease,
                &zygotes,
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
        self.invoke_as(request, None).await
    }

    /// An invocation under a given request id: every attempt of an asynchronous event
    /// carries the event's id, as on AWS. `None` draws a fresh one.
    pub async fn invoke_as(
        &self,
        request: InvokeRequest,
        request_id: Option<String>,
    ) -> Result<InvokeResult, EngineError> {
        let version_name = self
            .resolve_version(&request.function_name, request.qualifier.as_deref())
            .await?;
        let slot = self.slot(&request.function_name, &version_name).await?;
        // Held until the invocation has answered and its environment is back in the pool.
        let _permit = self
            .concurrency
            .acquire(&request.function_name, &version_name)
            .map_err(|reason| EngineError::Throttled { reason })?;
        let version = slot.version.clone();
        let request_id = request_id.unwrap_or_else(|| random_uuid().to_string());

        let popped = slot.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let _busy = BusyGuard::enter(&slot, popped.is_none());
        let environment = match popped {
            Some(environment) if !environment.has_exited() => {
                slot.idle_times.record(environment.idle_for());
                environment
            }
            stale => {
                if let Some(stale) = stale {
                    self.discard(&slot, &stale);
                }
                self.make_room(version.settings.memory_mb).await?;
                let init_started = Instant::now();
                let environment = match self.start_environment(&slot, false).await {
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
                environment.logs.platform(format!(
                    "INIT_START Runtime Version: {}",
                    version.settings.runtime.as_deref().unwrap_or("unknown")
                ));
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
                        environment.logs.start_after_failed_init(format!(
                            "START RequestId: {request_id} Version: {}",
                            version.version
                        ));
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

        environment.logs.start(format!(
            "START RequestId: {request_id} Version: {}",
            version.version
        ));
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
        let ended = tokio::select! {
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
        };
        environment.init_ended();
        ended
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
        // One allocation for the whole line (`Report::line` appends to it); durations in
        // integer hundredths of a millisecond rather than through float formatting.
        let mut head = String::with_capacity(192);
        let _ = write!(
            head,
            "REPORT RequestId: {request_id}\tDuration: {} ms\tBilled Duration: {billed} ms\tMemory Size: {} MB",
            Milliseconds(duration),
            version.settings.memory_mb,
        );
        let mut report_tail = String::new();
        if let Some(init) = init {
            let _ = write!(
                report_tail,
                "\tInit Duration: {} ms",
                Milliseconds(init.duration)
            );
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
        // Before the environment can take another invocation, so the next one's output
        // cannot come ahead of this END.
        let log_tail = environment.logs.end(
            format!("END RequestId: {request_id}"),
            report,
            request.tail_log,
        );
        let returned = healthy && !environment.has_exited() && {
            // Checked under the idle lock: `function_changed` marks the slot retired before
            // draining under the same lock, so nothing is pushed after the drain.
            let mut idle = slot.idle.lock().unwrap_or_else(|p| p.into_inner());
            let surplus = environment.is_provisioned()
                && slot.provisioned_ready.load(Ordering::SeqCst)
                    > slot.provisioned_target.load(Ordering::SeqCst);
            if slot.retired.load(Ordering::SeqCst) || surplus {
                false
            } else {
                environment.touch();
                *slot.last_released.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now());
                idle.push(environment.clone());
                true
            }
        };
        if !returned {
            self.discard(slot, &environment);
        }
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

/// A duration as REPORT lines write it: milliseconds with two decimals (`12.35`), rounded
/// to the nearest hundredth.
struct Milliseconds(Duration);

impl std::fmt::Display for Milliseconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hundredths = (self.0.as_nanos() + 5_000) / 10_000;
        write!(f, "{}.{:02}", hundredths / 100, hundredths % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_durations_have_two_decimals() {
        let text = |nanos| Milliseconds(Duration::from_nanos(nanos)).to_string();
        assert_eq!(text(0), "0.00");
        assert_eq!(text(4_999), "0.00");
        assert_eq!(text(5_000), "0.01");
        assert_eq!(text(1_234_567), "1.23");
        assert_eq!(text(1_235_000), "1.24");
        assert_eq!(text(12_345_678_901), "12345.68");
    }

    #[test]
    fn routes_split_by_weight() {
        let route = AliasRoute {
            primary: "1".into(),
            additional: Some(("2".into(), 0.1)),
        };
        assert_eq!(route.pick(0.05), "2");
        assert_eq!(route.pick(0.1), "1");
        assert_eq!(route.pick(0.99), "1");
        let picked_additional = (0..10_000)
            .filter(|_| route.pick(fastrand::f64()) == "2")
            .count();
        assert!(
            (800..1200).contains(&picked_additional),
            "{picked_additional}"
        );
        let whole = AliasRoute {
            primary: "1".into(),
            additional: Some(("2".into(), 1.0)),
        };
        assert_eq!(whole.pick(0.999_999), "2");
        let none = AliasRoute {
            primary: "$LATEST".into(),
            additional: None,
        };
        assert_eq!(none.pick(0.0), "$LATEST");
    }
}
