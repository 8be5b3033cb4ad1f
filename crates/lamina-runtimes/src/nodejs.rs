//! Node.js: Lamina's bootstrap (`bootstraps/nodejs/index.js`) and the command line AWS's
//! runtime starts node with: heap limits from the function's memory (unless NODE_OPTIONS
//! sets them), `--expose-gc`, `--max-http-header-size 81920`, and NODE_PATH.
//!
//! The command line is AWS's to the letter (`process.execArgv` shows it), although those
//! V8 flags make V8 reject node's built-in code cache: the bootstrap sets them back to
//! V8's defaults while init runs and restores them afterwards (see the top of index.js),
//! which keeps the heap they sized and the `gc` they installed.

use std::path::Path;

use crate::catalog::RuntimeSpec;
use crate::{LaunchPaths, LaunchRequest};

pub(crate) const BOOTSTRAP: &str = include_str!("../bootstraps/nodejs/index.js");

pub(crate) fn install(dir: &Path) -> std::io::Result<()> {
    crate::write_readable(&dir.join("index.js"), BOOTSTRAP.as_bytes())
}

pub(crate) fn launch(
    spec: &RuntimeSpec,
    paths: &LaunchPaths,
    request: &LaunchRequest<'_>,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut argv = vec![
        paths.executable.clone(),
        "--expose-gc".to_owned(),
        "--max-http-header-size".to_owned(),
        "81920".to_owned(),
    ];
    let node_options = request.variable("NODE_OPTIONS").unwrap_or("");
    let sets_heap = [
        "--max-semi-space-size",
        "--max_semi_space_size",
        "--max-old-space-size",
        "--max_old_space_size",
    ]
    .iter()
    .any(|flag| node_options.contains(flag));
    if !sets_heap {
        // As AWS's bootstrap: a tenth of the memory for the young generation (half of it
        // per semi-space), the rest for the old one. Node does not do this by itself:
        // Node.js 20 in the linux tier sees no constrained memory (`process.
        // constrainedMemory()` is 0) and sizes the heap from the host's RAM (4144 MB here,
        // whatever the function's memory), and where it does see a cgroup limit it takes
        // about half of it (909 MB at 1769 MB). With these flags heap_size_limit is 557 MB
        // at 512 MB, 1977 MB at 1769 MB, 3476 MB at 3008 MB, as on Lambda.
        let new_space = request.memory_mb / 10;
        argv.push(format!("--max-semi-space-size={}", new_space / 2));
        argv.push(format!(
            "--max-old-space-size={}",
            request.memory_mb - new_space
        ));
    }
    argv.push(format!("{}/index.js", paths.runtime));
    let node_path = format!(
        "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:{runtime}/node_modules:{runtime}:/var/task",
        major = spec.version,
        runtime = paths.runtime,
    );
    (argv, vec![("NODE_PATH".to_owned(), node_path)])
}
