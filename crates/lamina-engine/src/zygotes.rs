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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lamina_runtimes::ZygoteLaunch;
use lamina_sandbox::{Template, TemplateSpec};

/// How long after a failure a runtime's zygote is not tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum State {
    Starting,
    Ready(Arc<Template>),
    FailedAt(Instant),
}

type Registry = Mutex<HashMap<String, State>>;

#[derive(Debug, Default)]
pub struct Zygotes {
    enabled: bool,
    /// Shared with the threads that start zygotes, weakly: a zygote that finishes
    /// starting after the engine is gone is dropped (and killed).
    by_key: Arc<Registry>,
}

impl Zygotes {
    pub fn new(enabled: bool) -> Zygotes {
        Zygotes {
            enabled,
            by_key: Arc::default(),
        }
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
                        State::Ready(Arc::new(template))
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
