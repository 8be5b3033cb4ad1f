//! Python: Lamina's bootstrap (`bootstraps/python/bootstrap.py`), precompiled for each
//! interpreter, and the command line that starts it.
//!
//! `-S` keeps the site module (and with it the host interpreter's own site-packages) out:
//! it costs ~5 ms and the bootstrap sets sys.path as AWS's runtime does. `-u` makes
//! stdout and stderr unbuffered, as AWS's runtime does by wrapping them, so that what a
//! function prints reaches its log before the invocation's END line. The bootstrap runs
//! from a `.pyc` compiled for the interpreter at install time (a script given by its
//! source is compiled at every start; that is ~3 ms of a cold start).

use std::path::Path;
use std::process::Command;

use crate::{Interpreter, LaunchPaths};

pub(crate) const BOOTSTRAP: &str = include_str!("../bootstraps/python/bootstrap.py");
pub(crate) const ZYGOTE: &str = include_str!("../bootstraps/python/zygote.py");

/// Where, in the runtime's directory, the zygote's warm-up module is (`_warm_up_imports`).
const WARMUP_DIR: &str = "zygote-warm-up";

/// What the zygote imports to warm up the import system (`_warm_up_imports`).
const WARMUP_MODULE: &str = "def handler(event, context):\n    return event\n";

const COMPILE: &str = "import py_compile, sys\n\
py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True, \
invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n";

/// Writes `bootstrap.py`, `zygote.py` and their `.pyc`s for `interpreter` into `dir`.
pub(crate) fn install(interpreter: &Interpreter, dir: &Path) -> Result<(), String> {
    for (name, source_text) in [("bootstrap", BOOTSTRAP), ("zygote", ZYGOTE)] {
        let source = dir.join(format!("{name}.py"));
        let compiled = dir.join(format!("{name}.pyc"));
        crate::write_readable(&source, source_text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", source.display()))?;
        crate::discovery::run(
            Command::new(&interpreter.executable)
                .args(["-I", "-S", "-c", COMPILE])
                .arg(&source)
                .arg(&compiled)
                // Tracebacks name the file where it is mounted, whatever the tier.
                .arg(format!("{}/{name}.py", crate::RUNTIME_DIR)),
        )
        .map_err(|e| format!("cannot compile Lamina's Python {name}: {e}"))?;
        crate::set_mode(&compiled, 0o644)
            .map_err(|e| format!("cannot make {} readable: {e}", compiled.display()))?;
    }
    // A handler-like module the zygote imports once from source (and forgets), so that
    // its children import the function's handler with warm import machinery. Its
    // directory is in /var/runtime, which is on functions' sys.path: a name that is not
    // an identifier keeps it from being importable there as a namespace package.
    let warmup = dir.join(WARMUP_DIR);
    std::fs::create_dir_all(&warmup)
        .map_err(|e| format!("cannot create {}: {e}", warmup.display()))?;
    crate::set_mode(&warmup, 0o755)
        .map_err(|e| format!("cannot make {} readable: {e}", warmup.display()))?;
    let module = warmup.join("_lamina_warmup.py");
    crate::write_readable(&module, WARMUP_MODULE.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", module.display()))?;
    Ok(())
}

pub(crate) fn launch(paths: &LaunchPaths) -> (Vec<String>, Vec<(String, String)>) {
    let argv = vec![
        paths.executable.clone(),
        "-S".to_owned(),
        "-u".to_owned(),
        format!("{}/bootstrap.pyc", paths.runtime),
    ];
    (argv, Vec::new())
}

/// The command line of the runtime's zygote: the bootstrap's own, so that the processes it
/// forks look as an exec'd one does; `_LAMINA_ZYGOTE=1` ([`ZYGOTE_VARIABLE`]) makes the
/// bootstrap serve as the zygote (`bootstraps/python/zygote.py`).
pub(crate) fn zygote_argv(paths: &LaunchPaths) -> Vec<String> {
    launch(paths).0
}

/// The variable that makes the bootstrap a zygote.
pub(crate) const ZYGOTE_VARIABLE: (&str, &str) = ("_LAMINA_ZYGOTE", "1");

/// Whether a function's own variables leave a zygote's interpreter as a fresh start would
/// make it: variables the interpreter or the dynamic loader read at start-up
/// (`PYTHON*`, `LD_*`, locale) and a wrapper script would be ignored by a fork.
pub(crate) fn zygote_compatible(
    variables: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    variables.is_none_or(|variables| {
        variables.keys().all(|name| {
            !(name.starts_with("PYTHON")
                || name.starts_with("LD_")
                || name.starts_with("LC_")
                || name.starts_with("MALLOC_")
                || name.starts_with("GLIBC_")
                || name == "LANG"
                || name == "LANGUAGE"
                || name == "AWS_LAMBDA_EXEC_WRAPPER")
        })
    })
}
