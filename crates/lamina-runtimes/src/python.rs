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

const COMPILE: &str = "import py_compile, sys\n\
py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True, \
invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n";

/// Writes `bootstrap.py` and its `.pyc` for `interpreter` into `dir`.
pub(crate) fn install(interpreter: &Interpreter, dir: &Path) -> Result<(), String> {
    let source = dir.join("bootstrap.py");
    let compiled = dir.join("bootstrap.pyc");
    crate::write_readable(&source, BOOTSTRAP.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", source.display()))?;
    crate::discovery::run(
        Command::new(&interpreter.executable)
            .args(["-I", "-S", "-c", COMPILE])
            .arg(&source)
            .arg(&compiled)
            // Tracebacks name the file where it is mounted, whatever the tier.
            .arg(format!("{}/bootstrap.py", crate::RUNTIME_DIR)),
    )
    .map_err(|e| format!("cannot compile Lamina's Python bootstrap: {e}"))?;
    crate::set_mode(&compiled, 0o644)
        .map_err(|e| format!("cannot make {} readable: {e}", compiled.display()))
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
