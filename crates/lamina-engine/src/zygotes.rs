//! The runtimes' zygotes: one pre-initialised template process per runtime that has one
//! (Python), which forks new environments' main processes instead of an interpreter
//! starting from scratch ([`lamina_sandbox::Template`]).
//!
//! A zygote is started in the background the first time an environment of its runtime
//! starts (that cold start, and any during the zygote's own start, exec the interpreter
//! as usual), so it costs nothing to runtimes nobody uses and never delays a cold start.
//! A zygote that fails to start or to serve is retired and retried after
//! [`RETRY_AFTER`]; the environment that saw the failure starts the usual way. `lamina
//! serve --zygote off` turns them off.
//!
//! Each ready zygote also keeps `prepared_environments` (default 1) environments built
//! ahead of any function ([`PreparedEnvironment`]): namespaces, cgroups, root and the
//! forked interpreter already set up, waiting for a function's code and variables. A cold
//! start of that runtime takes one of the current zygote's if it fits (same runtime
//! directories and `/tmp` size) and, once that environment's init is over, a background
//! thread builds the next ([`Refill`]): building one costs ~8 ms of CPU (clone3, mounts,
//! the zygote's fork and the child's set-up), which would otherwise slow the very cold
//! start it replaces. Without one waiting, a cold start forks from the zygote as before,
//! and starts a build only if no refill is pending (in a burst, a build would queue at
//! the zygote ahead of the other cold starts' forks). A failed build or claim stops
//! building for the runtime for [`RETRY_AFTER`]; retiring a zygote discards its
//! environments.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use lamina_runtimes::ZygoteLaunch;
use lamina_sandbox::{
    ClaimFailed, EnvironmentSpec, PreparedEnvironment, PreparedSpec, Sandbox, Template,
    TemplateSpec,
};

/// How long after a failure a runtime's zygote is not tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum State {
    Starting,
    Ready(Arc<Template>),
    FailedAt(Instant),
}

type Registry = Mutex<HashMap<String, State>>;

/// A prepared environment's memory limit until a function takes it: one vCPU's worth,
/// whose CPU quota any host running Lamina grants (under a v1 parent with a quota of its
/// own, a larger child quota is refused). The claim moves it to the function's.
const PREPARED_MEMORY_MB: u32 = 1_769;
/// The `/tmp` size environments are prepared with: Lambda's default, which most have.
const PREPARED_TMP_MB: u32 = 512;
/// How long a shutdown waits for environments being built or discarded: longer than a
/// zygote may take to answer (`lamina_sandbox::Template`'s 20 s).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Zygotes {
    enabled: bool,
    /// Shared with the threads that start zygotes, weakly: a zygote that finishes
    /// starting after the engine is gone is dropped (and killed).
    by_key: Arc<Registry>,
    prepared: Arc<PreparedPool>,
}

/// The environments built ahead, per zygote key.
#[derive(Debug)]
struct PreparedPool {
    target: usize,
    sandbox: Arc<dyn Sandbox>,
    state: Mutex<PoolState>,
    /// Set at shutdown: nothing more is built or kept.
    closed: AtomicBool,
    built: AtomicU64,
    /// Threads building or discarding environments, which a shutdown waits for.
    busy: AtomicUsize,
}

#[derive(Debug, Default)]
struct PoolState {
    waiting: HashMap<String, Vec<Waiting>>,
    /// Keys a thread is building environments for.
    filling: HashSet<String>,
    /// [`Refill`]s handed out and not started yet, per key: while one is pending, a cold
    /// start that finds nothing waiting builds nothing (in a burst, a build would only
    /// queue at the zygote ahead of the cold starts' own forks).
    pending_refills: HashMap<String, usize>,
    /// When building or claiming one last failed, per key: not retried for RETRY_AFTER.
    failed_at: HashMap<String, Instant>,
}

impl PoolState {
    /// How many of `template`'s environments wait for `key`'s functions.
    fn waiting_of(&self, key: &str, template: &Arc<Template>) -> usize {
        self.waiting.get(key).map_or(0, |waiting| {
            waiting.iter().filter(|w| w.of(template)).count()
        })
    }
}

/// An environment waiting, and the zygote whose child runs in it: only the current
/// zygote's are handed out (another's may be wedged, or gone).
#[derive(Debug)]
struct Waiting {
    template: Weak<Template>,
    environment: PreparedEnvironment,
}

impl Waiting {
    fn of(&self, template: &Arc<Template>) -> bool {
        std::ptr::eq(self.template.as_ptr(), Arc::as_ptr(template))
    }
}

impl Zygotes {
    pub fn new(enabled: bool, prepared: usize, sandbox: Arc<dyn Sandbox>) -> Zygotes {
        Zygotes {
            enabled,
            by_key: Arc::default(),
            prepared: Arc::new(PreparedPool {
                target: prepared,
                sandbox,
                state: Mutex::default(),
                closed: AtomicBool::new(false),
                built: AtomicU64::new(0),
                busy: AtomicUsize::new(0),
            }),
        }
    }

    /// An environment built ahead by `template` for `launch`'s runtime that fits `spec`,
    /// if one is waiting, with what builds its successor once it has been started.
    pub fn take_prepared(
        &self,
        launch: &ZygoteLaunch,
        template: &Arc<Template>,
        spec: &EnvironmentSpec,
    ) -> Option<(PreparedEnvironment, Refill)> {
        let pool = &self.prepared;
        if pool.target == 0 {
            return None;
        }
        let (taken, stale, pending) = {
            let mut state = pool.lock();
            let waiting = state.waiting.entry(launch.key.clone()).or_default();
            // An earlier zygote's, or one whose process has ended, is of no use to anyone.
            let (usable, stale): (Vec<_>, Vec<_>) = waiting
                .drain(..)
                .partition(|w| w.of(template) && w.environment.is_waiting());
            *waiting = usable;
            let taken = waiting
                .iter()
                .position(|w| w.environment.fits(spec))
                .map(|i| waiting.swap_remove(i).environment);
            let pending = state.pending_refills.entry(launch.key.clone()).or_default();
            if taken.is_some() {
                *pending += 1;
            }
            (taken, stale, *pending)
        };
        if !stale.is_empty() {
            pool.discard(stale);
        }
        match taken {
            Some(taken) => Some((
                taken,
                Refill {
                    pool: pool.clone(),
                    launch: launch.clone(),
                    template: template.clone(),
                    mounts: spec.runtime_mounts.clone(),
                },
            )),
            None => {
                if pending == 0 {
                    PreparedPool::fill(pool, launch, template, &spec.runtime_mounts);
                }
                None
            }
        }
    }

    /// A claim of a prepared environment failed: its environment is destroyed in the
    /// background, and none is built for the runtime for a while.
    pub fn claim_failed(&self, key: &str, failed: ClaimFailed) {
        tracing::warn!(runtime = %key, err = %failed.error, "a prepared environment could not take the function; forking one from the zygote");
        self.prepared
            .lock()
            .failed_at
            .insert(key.to_owned(), Instant::now());
        self.prepared.discard(failed.environment);
    }

    /// Destroys the environments built ahead and builds no more (server shutdown).
    pub fn shutdown(&self) {
        let pool = &self.prepared;
        pool.closed.store(true, Ordering::SeqCst);
        // One being built or discarded now is destroyed by its thread: wait for that, or
        // its cgroup would outlive the server's (whose removal then fails).
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while pool.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let waiting: Vec<Waiting> = pool
            .lock()
            .waiting
            .drain()
            .flat_map(|(_, waiting)| waiting)
            .collect();
        // Dropping one destroys it.
        drop(waiting);
    }

    /// The zygote for `launch`, if one is ready; otherwise starts one in the background
    /// (unless one is starting or failed lately) and answers `None`.
    pub fn get(
        &self,
        launch: &ZygoteLaunch,
        mounts: &[(PathBuf, PathBuf)],
    ) -> Option<Arc<Template>> {
        if !self.enabled {
            return None;
        }
        let mut by_key = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        match by_key.get(&launch.key) {
            Some(State::Ready(template)) if template.is_alive() => return Some(template.clone()),
            Some(State::Starting) => return None,
            Some(State::FailedAt(when)) if when.elapsed() < RETRY_AFTER => return None,
            _ => {}
        }
        by_key.insert(launch.key.clone(), State::Starting);
        drop(by_key);
        let spec = TemplateSpec {
            name: format!("{} zygote", launch.key),
            argv: launch.argv.clone(),
            env: launch.env.clone(),
            mounts: mounts.to_vec(),
        };
        let key = launch.key.clone();
        let registry = Arc::downgrade(&self.by_key);
        let prepared = Arc::downgrade(&self.prepared);
        let (thread_launch, mounts) = (launch.clone(), mounts.to_vec());
        let spawned = std::thread::Builder::new()
            .name("lamina-zygote".to_owned())
            .spawn(move || {
                let started = Instant::now();
                let state = match Template::start(&spec) {
                    Ok(template) => {
                        tracing::info!(
                            runtime = %key,
                            pid = template.pid(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "zygote ready"
                        );
                        let template = Arc::new(template);
                        if let Some(pool) = prepared.upgrade() {
                            PreparedPool::fill(&pool, &thread_launch, &template, &mounts);
                        }
                        State::Ready(template)
                    }
                    Err(err) => {
                        tracing::warn!(runtime = %key, %err, "zygote failed to start; cold starts exec the interpreter");
                        State::FailedAt(Instant::now())
                    }
                };
                if let Some(registry) = registry.upgrade() {
                    registry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, state);
                }
            });
        if spawned.is_err() {
            self.retire(&launch.key);
        }
        None
    }

    /// Stops using a runtime's zygote after it failed a request. The zygote is not killed:
    /// it stays the parent of the environments it forked until they end (see
    /// `lamina_sandbox::Template`).
    pub fn retire(&self, key: &str) {
        self.by_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), State::FailedAt(Instant::now()));
        // Its prepared environments go too: it would stay their processes' parent.
        let waiting = self.prepared.lock().waiting.remove(key);
        if let Some(waiting) = waiting.filter(|w| !w.is_empty()) {
            self.prepared.discard(waiting);
        }
    }
}

/// Builds the successor of a prepared environment a cold start took, once dropped:
/// [`Refill::start`] when that environment's init is over, or whenever it is dropped
/// unstarted (the environment failed to come up).
#[derive(Debug)]
pub struct Refill {
    pool: Arc<PreparedPool>,
    launch: ZygoteLaunch,
    template: Arc<Template>,
    mounts: Vec<(PathBuf, PathBuf)>,
}

impl Refill {
    pub fn start(self) {}
}

impl Drop for Refill {
    fn drop(&mut self) {
        if let Some(pending) = self.pool.lock().pending_refills.get_mut(&self.launch.key) {
            *pending = pending.saturating_sub(1);
        }
        PreparedPool::fill(&self.pool, &self.launch, &self.template, &self.mounts);
    }
}

impl PreparedPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many of `template`'s environments wait for `key`'s functions.
    fn waiting(&self, key: &str, template: &Arc<Template>) -> usize {
        self.lock().waiting_of(key, template)
    }

    /// Builds environments for `launch`'s runtime with `template` in the background until
    /// `target` wait, unless a thread is at it already or the last attempt failed lately.
    fn fill(
        pool: &Arc<PreparedPool>,
        launch: &ZygoteLaunch,
        template: &Arc<Template>,
        mounts: &[(PathBuf, PathBuf)],
    ) {
        if pool.target == 0 || pool.closed.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut state = pool.lock();
            let failed_lately = state
                .failed_at
                .get(&launch.key)
                .is_some_and(|when| when.elapsed() < RETRY_AFTER);
            let waiting = state.waiting_of(&launch.key, template);
            if failed_lately || waiting >= pool.target || !state.filling.insert(launch.key.clone())
            {
                return;
            }
        }
        pool.busy.fetch_add(1, Ordering::SeqCst);
        let worker = pool.clone();
        let (key, argv, template, mounts) = (
            launch.key.clone(),
            launch.argv.clone(),
            template.clone(),
            mounts.to_vec(),
        );
        let spawned = std::thread::Builder::new()
            .name("lamina-prepare".to_owned())
            .spawn(move || {
                while !worker.closed.load(Ordering::SeqCst)
                    && worker.waiting(&key, &template) < worker.target
                {
                    let number = worker.built.fetch_add(1, Ordering::Relaxed);
                    let spec = PreparedSpec {
                        environment_id: format!(
                            "env-{}-p{number}",
                            &crate::random_uuid().simple().to_string()[..12]
                        ),
                        runtime_mounts: mounts.clone(),
                        memory_mb: PREPARED_MEMORY_MB,
                        ephemeral_storage_mb: PREPARED_TMP_MB,
                        argv: argv.clone(),
                        cwd: "/var/task".to_owned(),
                    };
                    let started = Instant::now();
                    match PreparedEnvironment::prepare(worker.sandbox.as_ref(), &template, spec) {
                        Ok(environment) => {
                            tracing::debug!(
                                runtime = %key,
                                environment = environment.environment_id(),
                                elapsed_us = started.elapsed().as_micros() as u64,
                                "environment prepared"
                            );
                            if worker.closed.load(Ordering::SeqCst) {
                                break; // dropped: destroyed
                            }
                            worker
                                .lock()
                                .waiting
                                .entry(key.clone())
                                .or_default()
                                .push(Waiting {
                                    template: Arc::downgrade(&template),
                                    environment,
                                });
                        }
                        Err(err) => {
                            // Cold starts fork from the zygote meanwhile.
                            tracing::warn!(runtime = %key, %err, "could not prepare an environment ahead; retrying in {RETRY_AFTER:?}");
                            worker.lock().failed_at.insert(key.clone(), Instant::now());
                            break;
                        }
                    }
                }
                worker.lock().filling.remove(&key);
                worker.busy.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            pool.lock().filling.remove(&launch.key);
            pool.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Destroying an environment waits for its processes to be gone: not on a cold
    /// start's path.
    fn discard<T: Send + 'static>(self: &Arc<Self>, doomed: T) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lamina-discard".to_owned())
            .spawn(move || {
                drop(doomed);
                pool.busy.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure, and what it held, was dropped here already.
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
