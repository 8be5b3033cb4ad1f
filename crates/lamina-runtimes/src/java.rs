//! Java: Lamina's runtime (`bootstraps/java/`), compiled with `javac` when the server
//! prepares its runtimes, and the command line that starts it.
//!
//! The sources are Lamina's runtime loop (`lamina.runtime.Bootstrap`, with a small JSON
//! mapper standing in for Jackson) and Lamina's own copies of the aws-lambda-java-core
//! interfaces (`com.amazonaws.services.lambda.runtime.Context`, `RequestHandler`, ...) with
//! the same packages, names and signatures: a function compiled against aws-lambda-java-core
//! links against them, as on AWS where the runtime provides that library. They are
//! compiled once, `--release 11`, by the first `javac` found (the JDKs' own, then `$PATH`),
//! into a cache keyed by the sources' hash (`$LAMINA_CACHE_DIR`, else
//! `~/.cache/lamina/`), and copied into each Java runtime's directory at every start: a
//! JRE without a javac can run Java functions once any JDK has compiled them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Interpreter, LaunchPaths, LaunchRequest};

/// The runtime's sources, by their path under `bootstraps/java/`.
const SOURCES: &[(&str, &str)] = &[
    (
        "lamina/runtime/Bootstrap.java",
        include_str!("../bootstraps/java/lamina/runtime/Bootstrap.java"),
    ),
    (
        "lamina/runtime/Json.java",
        include_str!("../bootstraps/java/lamina/runtime/Json.java"),
    ),
    (
        "com/amazonaws/services/lambda/runtime/Client.java",
        include_str!("../bootstraps/java/com/amazonaws/services/lambda/runtime/Client.java"),
    ),
    (
        "com/amazonaws/services/lambda/runtime/ClientContext.java",
        include_str!("../bootstraps/java/com/amazonaws/services/lambda/runtime/ClientContext.java"),
    ),
    (
        "com/amazonaws/services/lambda/runtime/CognitoIdentity.java",
        include_str!(
            "../bootstraps/java/com/amazonaws/services/lambda/runtime/CognitoIdentity.java"
        ),
    ),
    (
        "com/amazonaws/services/lambda/runtime/Context.java",
        include_str!("../bootstraps/java/com/amazonaws/services/lambda/runtime/Context.java"),
    ),
    (
        "com/amazonaws/services/lambda/runtime/LambdaLogger.java",
        include_str!("../bootstraps/java/com/amazonaws/services/lambda/runtime/LambdaLogger.java"),
    ),
    (
        "com/amazonaws/services/lambda/runtime/LambdaRuntime.java",
        include_str!("../bootstraps/java/com/amazonaws/services/lambda/runtime/LambdaRuntime.java"),
    ),
    (
        "com/amazonaws/services/lambda/runtime/RequestHandler.java",
        include_str!(
            "../bootstraps/java/com/amazonaws/services/lambda/runtime/RequestHandler.java"
        ),
    ),
    (
        "com/amazonaws/services/lambda/runtime/RequestStreamHandler.java",
        include_str!(
            "../bootstraps/java/com/amazonaws/services/lambda/runtime/RequestStreamHandler.java"
        ),
    ),
    (
        "com/amazonaws/services/lambda/runtime/logging/LogFormat.java",
        include_str!(
            "../bootstraps/java/com/amazonaws/services/lambda/runtime/logging/LogFormat.java"
        ),
    ),
    (
        "com/amazonaws/services/lambda/runtime/logging/LogLevel.java",
        include_str!(
            "../bootstraps/java/com/amazonaws/services/lambda/runtime/logging/LogLevel.java"
        ),
    ),
];

/// The oldest Java the compiled classes run on.
const RELEASE: &str = "11";

/// FNV-1a over the sources and the target release: the cache key.
fn sources_hash() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in SOURCES
        .iter()
        .flat_map(|(path, source)| path.bytes().chain(source.bytes()).chain([0]))
        .chain(RELEASE.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Where compiled runtimes are cached between servers.
fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LAMINA_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|dir| dir.join("lamina"))
}

/// The `javac`s that may compile the runtime, most preferred first: those of the JDKs the
/// Java runtimes use, then any on `$PATH`.
pub(crate) fn javac_candidates<'a>(
    interpreters: impl Iterator<Item = &'a Interpreter>,
) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = interpreters
        .map(|i| i.home.join("bin/javac"))
        .filter(|p| p.is_file())
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        found.extend(
            std::env::split_paths(&path)
                .map(|d| d.join("javac"))
                .filter(|p| p.is_file()),
        );
    }
    found.dedup();
    found
}

/// Why the Java runtime could not be prepared here, if it could not: neither a cached
/// compiled copy nor any `javac` (what [`compiled_classes`] would meet, without compiling).
pub(crate) fn unpreparable(javacs: &[PathBuf]) -> Option<String> {
    let cached = cache_root().is_some_and(|root| {
        root.join(format!("java-runtime-{:016x}", sources_hash()))
            .join("classes/lamina/runtime/Bootstrap.class")
            .is_file()
    });
    (!cached && javacs.is_empty()).then(no_javac)
}

fn no_javac() -> String {
    "Lamina's Java runtime is compiled once with javac, and no JDK with javac was found (a JRE alone cannot compile it). Install one — `apt-get install default-jdk-headless` or any JDK 11 or later — and restart lamina serve".to_owned()
}

/// The compiled runtime (a `classes` directory): from the cache, else compiled now with
/// the first of `javacs` into the cache (or into `scratch` when there is no usable cache).
pub(crate) fn compiled_classes(javacs: &[PathBuf], scratch: &Path) -> Result<PathBuf, String> {
    let key = format!("java-runtime-{:016x}", sources_hash());
    let cache = cache_root().map(|root| root.join(&key));
    if let Some(cache) = &cache
        && cache
            .join("classes/lamina/runtime/Bootstrap.class")
            .is_file()
    {
        return Ok(cache.join("classes"));
    }
    let Some(javac) = javacs.first() else {
        return Err(no_javac());
    };
    // Compile into a fresh directory, then move it into place: servers starting at once
    // never see half a tree.
    let target_parent = match &cache {
        Some(cache) if std::fs::create_dir_all(cache.parent().unwrap_or(cache)).is_ok() => {
            cache.parent().unwrap_or(cache).to_owned()
        }
        _ => scratch.to_owned(),
    };
    let work = target_parent.join(format!("{key}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let sources = work.join("src");
    let mut files = Vec::new();
    for (path, source) in SOURCES {
        let file = sources.join(path);
        std::fs::create_dir_all(file.parent().expect("sources sit in packages"))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        std::fs::write(&file, source)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        files.push(file);
    }
    let classes = work.join("classes");
    crate::discovery::run(
        Command::new(javac)
            .args(["--release", RELEASE, "-nowarn", "-encoding", "UTF-8", "-d"])
            .arg(&classes)
            .args(&files),
    )
    .map_err(|e| {
        format!(
            "cannot compile Lamina's Java runtime with {}: {e}",
            javac.display()
        )
    })?;
    let _ = std::fs::remove_dir_all(&sources);
    let done = target_parent.join(&key);
    match std::fs::rename(&work, &done) {
        Ok(()) => Ok(done.join("classes")),
        // Another server got there first: its copy is the same.
        Err(_)
            if done
                .join("classes/lamina/runtime/Bootstrap.class")
                .is_file() =>
        {
            let _ = std::fs::remove_dir_all(&work);
            Ok(done.join("classes"))
        }
        Err(e) => Err(format!(
            "cannot move the compiled Java runtime into {}: {e}",
            done.display()
        )),
    }
}

/// Copies the compiled runtime into `dir/classes`, readable by the sandbox user.
pub(crate) fn install(classes: &Path, dir: &Path) -> std::io::Result<()> {
    copy_tree(classes, &dir.join("classes"))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    crate::set_mode(to, 0o755)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            crate::set_mode(&target, 0o644)?;
        }
    }
    Ok(())
}

/// As AWS's Java bootstrap: most of the memory for the heap, the serial collector, the
/// client compiler only (quicker starts), class data sharing.
pub(crate) fn launch(
    paths: &LaunchPaths,
    request: &LaunchRequest<'_>,
) -> (Vec<String>, Vec<(String, String)>) {
    let heap_mb = u64::from(request.memory_mb) * 85 / 100;
    let argv = vec![
        paths.executable.clone(),
        format!("-XX:MaxHeapSize={heap_mb}m"),
        "-XX:+UseSerialGC".to_owned(),
        "-XX:TieredStopAtLevel=1".to_owned(),
        "-Xshare:auto".to_owned(),
        "-Djava.net.preferIPv4Stack=true".to_owned(),
        "-cp".to_owned(),
        format!("{}/classes", paths.runtime),
        "lamina.runtime.Bootstrap".to_owned(),
    ];
    (argv, Vec::new())
}
