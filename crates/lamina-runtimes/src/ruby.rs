//! Ruby: Lamina's runtime (`bootstraps/ruby/lib/lamina_runtime.rb`), the command line that
//! starts it, and the gem and library paths AWS's Ruby runtime sets.

use std::path::Path;

use crate::{Interpreter, LaunchPaths};

pub(crate) const BOOTSTRAP: &str = include_str!("../bootstraps/ruby/lib/lamina_runtime.rb");

/// Writes `lib/lamina_runtime.rb` into `dir`: under `lib/`, as the official client's files
/// are, so that stack traces are cut at the same place.
pub(crate) fn install(dir: &Path) -> std::io::Result<()> {
    let lib = dir.join("lib");
    std::fs::create_dir(&lib)?;
    crate::set_mode(&lib, 0o755)?;
    crate::write_readable(&lib.join("lamina_runtime.rb"), BOOTSTRAP.as_bytes())
}

pub(crate) fn launch(
    interpreter: &Interpreter,
    paths: &LaunchPaths,
) -> (Vec<String>, Vec<(String, String)>) {
    let argv = vec![
        paths.executable.clone(),
        format!("{}/lib/lamina_runtime.rb", paths.runtime),
    ];
    // Gems install under the interpreter's ABI version (`3.3.0`).
    let abi = format!("{}.0", interpreter.version);
    let env = vec![
        (
            "GEM_PATH".to_owned(),
            format!(
                "/var/task/vendor/bundle/ruby/{abi}:/opt/ruby/gems/{abi}:{runtime}:{runtime}/ruby/{abi}",
                runtime = paths.runtime
            ),
        ),
        (
            "RUBYLIB".to_owned(),
            format!("/var/task:{}/lib:/opt/ruby/lib", paths.runtime),
        ),
    ];
    (argv, env)
}
