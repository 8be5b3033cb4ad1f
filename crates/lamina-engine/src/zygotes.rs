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
//! start of that runtime takes one if it fits (same runtime directories and `/tmp` size)
//! and, once that environment's init is over, a background thread builds the next
//! ([`Refill`]): building one costs ~8 ms of CPU (clone3, mounts, the zygote's fork and
//! the child's set-up), which would otherwise slow the very cold start it replaces.
//! Without one waiting, a cold start forks from the zygote as before.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lamina_runtimes::ZygoteLaunch;
use lamina_sandbox::{
    EnvironmentSpec, PreparedEnvironment, PreparedSpec, Sandbox, Template, TemplateSpec,
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

/// A prepared environment's memory limit until a function takes it (Lambda's largest).
const PREPARED_MEMORY_MB: u32 = 10_240;
/// The `/tmp` size environments are prepared with: Lambda's default, which most have.
const PREPARED_TMP_MB: u32 = 512;

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
    ready: Mutex<HashMap<String, Vec<PreparedEnvironment>>>,
    /// Keys a thread is building environments for.
    filling: Mutex<HashSet<String>>,
    /// Set at shutdown: nothing more is built or kept.
    closed: AtomicBool,
    built: AtomicU64,
}

impl Zygotes {
    pub fn new(enabled: bool, prepared: usize, sandbox: Arc<dyn Sandbox>) -> Zygotes {
        Zygotes {
            enabled,
            by_key: Arc::default(),
            prepared: Arc::new(PreparedPool {
                target: prepared,
                sandbox,
                ready: Mutex::default(),
                filling: Mutex::default(),
                closed: AtomicBool::new(false),
                built: AtomicU64::new(0),
            }),
        }
    }

    /// An environment built ahead for `launch`'s runtime that fits `spec`, if one is
    /// waiting, with what builds its successor once it has been started. Without one,
    /// building starts now (unless it is under way).
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
        let (taken, unfit) = {
            let mut ready = pool.ready.lock().unwrap_or_else(|p| p.into_inner());
            let waiting = ready.entry(launch.key.clone()).or_default();
            let position = waiting.iter().position(|env| env.fits(spec));
            let taken = position.map(|i| waiting.swap_remove(i));
            // One whose process has ended (its zygote died, say) is of no use to anyone.
            let (usable, unfit): (Vec<_>, Vec<_>) =
                waiting.drain(..).partition(PreparedEnvironment::is_waiting);
            *waiting = usable;
            (taken, unfit)
        };
        destroy_in_background(unfit);
        let refill = Refill {
            pool: pool.clone(),
            launch: launch.clone(),
            template: template.clone(),
            mounts: spec.runtime_mounts.clone(),
        };
        match taken {
            Some(taken) => Some((taken, refill)),
            None => {
                refill.start();
                None
            }
        }
    }

    /// Destroys the environments built ahead and builds no more (server shutdown).
    pub fn shutdown(&self) {
        self.prepared.closed.store(true, Ordering::SeqCst);
        // One being built now is destroyed by its thread: wait for that, or its cgroup
        // would outlive the server's (whose removal then fails).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && !self
                .prepared
                .filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready: Vec<_> = self
            .prepared
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .flat_map(|(_, envs)| envs)
            .collect();
        // Dropping one destroys it.
        drop(ready);
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
    }
}

/// Builds the successor of a prepared environment a cold start took: started when that
/// environment's init is over (or dropped unstarted: the next cold start of the runtime
/// finds none and starts building).
#[derive(Debug)]
pub struct Refill {
    pool: Arc<PreparedPool>,
    launch: ZygoteLaunch,
    template: Arc<Template>,
    mounts: Vec<(PathBuf, PathBuf)>,
}

impl Refill {
    pub fn start(self) {
        PreparedPool::fill(&self.pool, &self.launch, &self.template, &self.mounts);
    }
}

impl PreparedPool {
    /// Builds environments for `launch`'s runtime in the background until `target` wait,
    /// unless a thread is at it already.
    fn fill(
        pool: &Arc<PreparedPool>,
        launch: &ZygoteLaunch,
        template: &Arc<Template>,
        mounts: &[(PathBuf, PathBuf)],
    ) {
        if pool.target == 0
            || pool.closed.load(Ordering::SeqCst)
            || pool.waiting(&launch.key) >= pool.target
        {
            return;
        }
        if !pool
            .filling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(launch.key.clone())
        {
            return;
        }
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
                while !worker.closed.load(Ordering::SeqCst) && worker.waiting(&key) < worker.target {
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
                        Ok(env) => {
                            tracing::debug!(
                                runtime = %key,
                                environment = env.environment_id(),
                                elapsed_us = started.elapsed().as_micros() as u64,
                                "environment prepared"
                            );
                            if worker.closed.load(Ordering::SeqCst) {
                                break; // dropped: destroyed
                            }
                            worker
                                .ready
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(key.clone())
                                .or_default()
                                .push(env);
                        }
                        Err(err) => {
                            // Cold starts fork from the zygote instead; the next one retries.
                            tracing::warn!(runtime = %key, %err, "could not prepare an environment ahead");
                            break;
                        }
                    }
                }
                worker
                    .filling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            });
        if spawned.is_err() {
            pool.filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&launch.key);
        }
    }

    fn waiting(&self, key: &str) -> usize {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map_or(0, Vec::len)
    }
}

/// Destroying an environment waits for its processes to be gone: not on a cold start's path.
fn destroy_in_background(environments: Vec<PreparedEnvironment>) {
    if environments.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("lamina-discard".to_owned())
        .spawn(move || drop(environments));
}
