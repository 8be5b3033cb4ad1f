//! `lamina`: the composition root. It reads the configuration, opens the stores, picks
//! the backends and serves the API; nothing else in the workspace knows every backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::time::Duration;

use lamina_api::async_invoke::{AsyncInvocations, EngineInvoker, ForgetDeletedConfigs};
use lamina_api::{AppState, ControlPlane};
use lamina_engine::host_memory::HostMemory;
use lamina_engine::{Engine, EngineConfig, KeepAlive};
use lamina_model::Account;
use lamina_queue::{ConfigStore, DispatchSettings, Dispatcher, EventQueue, SqliteQueue};
use lamina_runtimes::{RuntimeCatalog, RuntimeOverride, RuntimeStatus, SearchPaths};
use lamina_sandbox::{SandboxOptions, SandboxTier, TierRequest};
use lamina_store::{CodeStore, SqliteStore};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "lamina",
    version,
    about = "A self-hosted platform that speaks AWS Lambda"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: the Lambda API and everything behind it.
    Serve(Box<ServeArgs>),
    /// List the runtimes functions can use here, the ones missing and how to install them.
    Runtimes(RuntimesArgs),
}

/// Which interpreters the managed runtimes use.
#[derive(Debug, clap::Args)]
struct RuntimeArgs {
    /// Use this interpreter for a runtime (`python3.12=/opt/py/bin/python3.12`, or its
    /// install directory); `RUNTIME~=PATH` accepts another language version on purpose
    /// (`python3.14~=/usr/bin/python3.11`); `RUNTIME=none` turns a runtime off. Repeat the
    /// option, or separate entries with commas in LAMINA_RUNTIMES. Runtimes not named are
    /// found on the host (PATH, /usr/bin, pyenv, uv, nvm, ~/.local/share/lamina/runtimes).
    #[arg(
        long = "runtime",
        env = "LAMINA_RUNTIMES",
        value_name = "RUNTIME=PATH",
        value_delimiter = ','
    )]
    runtimes: Vec<String>,
}

impl RuntimeArgs {
    fn discover(&self) -> anyhow::Result<RuntimeCatalog> {
        let overrides = self
            .runtimes
            .iter()
            .filter(|value| !value.trim().is_empty())
            .map(|value| value.parse::<RuntimeOverride>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RuntimeCatalog::discover(
            &overrides,
            &SearchPaths::from_environment(),
        )?)
    }
}

#[derive(Debug, clap::Args)]
struct RuntimesArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address the Lambda API listens on (port 0 picks a free port).
    #[arg(long, env = "LAMINA_LISTEN", default_value = "127.0.0.1:8900")]
    listen: SocketAddr,
    /// Directory holding all state: the metadata database and the code store.
    #[arg(long, env = "LAMINA_DATA_DIR", default_value = "lamina-data")]
    data_dir: PathBuf,
    /// The AWS region Lamina answers as; it appears in every ARN.
    #[arg(long, env = "LAMINA_REGION", default_value = "us-east-1")]
    region: String,
    /// The twelve-digit account id Lamina answers as.
    #[arg(long, env = "LAMINA_ACCOUNT_ID", default_value = "000000000000")]
    account_id: String,
    /// How execution environments are isolated: `linux` (namespaces, cgroups, seccomp;
    /// needs root), `process` (plain child processes, NO isolation), or `auto`.
    #[arg(long, env = "LAMINA_SANDBOX", default_value = "auto", value_parser = ["auto", "linux", "process"])]
    sandbox: String,
    /// Seconds an idle execution environment is kept warm before it is reaped: always
    /// with `--keep-alive fixed`, and until a function has enough history with `adaptive`.
    #[arg(long, env = "LAMINA_IDLE_TIMEOUT", default_value_t = 300)]
    idle_timeout: u64,
    /// `adaptive` learns each function version's keep-alive from the idle times it has
    /// seen (99th percentile + 10%, the hybrid histogram policy); `fixed` always uses
    /// `--idle-timeout`.
    #[arg(long, env = "LAMINA_KEEP_ALIVE", default_value = "adaptive", value_parser = ["adaptive", "fixed"])]
    keep_alive: String,
    /// `on` forks Python cold starts from a pre-initialised interpreter per runtime (its
    /// zygote, linux sandbox tier only); `off` starts a fresh interpreter every time.
    #[arg(long, env = "LAMINA_ZYGOTE", default_value = "on", value_parser = ["on", "off"])]
    zygote: String,
    /// With the zygote on: how many environments each Python runtime keeps built ahead
    /// (namespaces, cgroups, root and the forked interpreter, waiting for a function's
    /// code), so a cold start only attaches the code. 0 turns this off.
    #[arg(long, env = "LAMINA_PREPARED_ENVIRONMENTS", default_value_t = 1)]
    prepared_environments: usize,
    /// Threads serving requests (the API, every environment's Runtime API). Default: half
    /// the machine's cores, at least one — the functions run on the same machine, and on
    /// 2 cores one thread spent ~20% less CPU per invoke than two (no wake-ups across
    /// threads), which the functions got instead. With one, the main thread serves
    /// everything on tokio's current-thread scheduler.
    #[arg(long, env = "LAMINA_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// The nice value of the threads that serve requests (the functions always run at 0).
    /// Every invocation passes through them three times, so on a busy machine a serving
    /// thread waiting behind functions for a CPU holds up all of them: at concurrency 32
    /// on 2 cores, -10 against 0 won 10 of 15 interleaved pairs, +8% invokes/s on
    /// average. Raising priority needs root (CAP_SYS_NICE); without it the server says so
    /// and serves at its own priority. 0 leaves the priority alone.
    #[arg(long, env = "LAMINA_SERVER_NICE", default_value_t = -10, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    server_nice: i32,
    /// The account's concurrency limit: invocations running at once across all functions
    /// (AWS's default is 1,000; at least 100, or all of a smaller limit, stay unreserved).
    #[arg(long, env = "LAMINA_CONCURRENCY_LIMIT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrency_limit: u32,
    /// How much of the concurrency limit must stay unreserved: reservations and the
    /// provisioned concurrency of functions without one share the rest. Default: AWS's
    /// 100, or all of a smaller limit (so a limit of 100 or less allows neither); lower it
    /// to use them on a small server.
    #[arg(long, env = "LAMINA_MINIMUM_UNRESERVED_CONCURRENCY")]
    minimum_unreserved_concurrency: Option<u32>,
    /// Memory (MB) kept free on the host: a cold start that would leave less is preceded
    /// by reclaiming idle environments, and throttled if that is not enough. Default: 5%
    /// of the host's memory, at least 256 MB.
    #[arg(long, env = "LAMINA_HOST_MEMORY_RESERVE_MB")]
    host_memory_reserve_mb: Option<u64>,
    /// Delays (ms) before the first and second retry of an asynchronous invocation that
    /// failed (AWS: about one minute, then two).
    #[arg(
        long,
        env = "LAMINA_ASYNC_RETRY_DELAYS_MS",
        value_delimiter = ',',
        default_value = "60000,120000"
    )]
    async_retry_delays_ms: Vec<u64>,
    /// First delay (ms) before a throttled asynchronous event is tried again; it grows
    /// with the event's age up to `--async-throttle-delay-max-ms`.
    #[arg(long, env = "LAMINA_ASYNC_THROTTLE_DELAY_MS", default_value_t = 1000)]
    async_throttle_delay_ms: u64,
    #[arg(
        long,
        env = "LAMINA_ASYNC_THROTTLE_DELAY_MAX_MS",
        default_value_t = 300_000
    )]
    async_throttle_delay_max_ms: u64,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// mimalloc instead of glibc's malloc: every invocation allocates and frees a few dozen
/// small buffers on the serving thread (hyper's requests and headers, the log lines), and
/// with glibc that was ~8% of the thread. Six interleaved pairs of the invoke bench at
/// concurrency 32: +6% invokes/s (5 won), server ÷ (functions + clients) CPU 1.28 against
/// 1.35. Built with `no_thp`: by default mimalloc asks for transparent huge pages for its
/// arenas, and with 200 idle environments (and as many blocking-pool threads, each with its
/// own pages) the server held 440 MB resident, against 71 MB without (42 MB with glibc);
/// its other way out, `PR_SET_THP_DISABLE`, would be inherited by every function. Forks stay safe: the spawner and the environments
/// it clones never allocate after `fork`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LAMINA_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Runtimes(args) => list_runtimes(args),
    }
}

fn list_runtimes(args: RuntimesArgs) -> anyhow::Result<()> {
    let catalog = args.runtime.discover()?;
    if args.json {
        let entries: Vec<serde_json::Value> = catalog
            .entries()
            .map(|(spec, status)| {
                let mut entry = serde_json::json!({
                    "runtime": spec.id,
                    "language": spec.language,
                    "version": spec.version,
                });
                if let serde_json::Value::Object(fields) =
                    serde_json::to_value(status).expect("statuses serialise")
                {
                    entry.as_object_mut().expect("an object").extend(fields);
                }
                entry
            })
            .collect();
        return print_output(&(serde_json::to_string_pretty(&entries)? + "\n"));
    }
    let mut table = format!("{:<17}{:<13}DETAILS\n", "RUNTIME", "STATUS");
    for (spec, status) in catalog.entries() {
        let (word, details) = match status {
            RuntimeStatus::OwnBootstrap => {
                ("available", "runs the function's own bootstrap".to_owned())
            }
            RuntimeStatus::Available { interpreter, .. } => {
                let mut details = format!(
                    "{} {}  {}",
                    spec.language.display_name(),
                    interpreter.full_version,
                    interpreter.executable.display()
                );
                if interpreter.version_mismatch {
                    details.push_str(&format!(
                        "  (not {} {}: chosen with --runtime {}~=)",
                        spec.language.display_name(),
                        spec.version,
                        spec.id
                    ));
                } else if interpreter.configured {
                    details.push_str("  (--runtime)");
                }
                ("available", details)
            }
            RuntimeStatus::Missing { hint } => ("missing", hint.clone()),
            RuntimeStatus::Disabled => (
                "disabled",
                format!("turned off with --runtime {}=none", spec.id),
            ),
            RuntimeStatus::Unsupported { reason } => ("unsupported", reason.clone()),
        };
        table.push_str(&format!("{:<17}{word:<13}{details}\n", spec.id));
    }
    print_output(&table)
}

/// Writes to stdout; a reader that stops early (`| head`) is not an error.
fn print_output(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    validate_account(&args)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&data_dir)?;
    raise_open_files_limit(args.concurrency_limit);

    // Wrong --runtime options stop the server before anything else happens.
    let mut runtimes = args.runtime.discover()?;
    let available: Vec<&str> = runtimes
        .entries()
        .filter(|(_, status)| matches!(status, RuntimeStatus::Available { .. }))
        .map(|(spec, _)| spec.id)
        .collect();
    let missing: Vec<&str> = runtimes
        .entries()
        .filter(|(_, status)| matches!(status, RuntimeStatus::Missing { .. }))
        .map(|(spec, _)| spec.id)
        .collect();
    tracing::info!(
        "managed runtimes: {} available{}",
        if available.is_empty() {
            "none".to_owned()
        } else {
            available.join(" ")
        },
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; missing {} (`lamina runtimes` says how to install them)",
                missing.join(" ")
            )
        }
    );

    let store = SqliteStore::open(&data_dir.join("lamina.db"))
        .with_context(|| format!("cannot open the metadata store in {}", data_dir.display()))?;
    let code = CodeStore::open(&data_dir.join("code"))
        .with_context(|| format!("cannot open the code store in {}", data_dir.display()))?;
    let account = Account {
        region: args.region.clone(),
        account_id: args.account_id.clone(),
    };
    let tier = match args.sandbox.as_str() {
        "linux" => TierRequest::Linux,
        "process" => TierRequest::Process,
        _ => TierRequest::Auto,
    };
    let sandbox = lamina_sandbox::open_sandbox(
        tier,
        SandboxOptions {
            state_dir: data_dir.join("sandbox"),
            // One parent cgroup per data directory: at start the sandbox kills environments
            // left under its parent by a crashed predecessor, and must not touch those of
            // another server running beside it.
            cgroup_parent: format!("lamina/{}", short_hash(&data_dir)),
        },
    )
    .context("cannot set up execution environments")?;
    // After the sandbox has removed what a crashed predecessor left running.
    runtimes
        .install(&data_dir.join("runtimes"))
        .context("cannot prepare the managed runtimes")?;
    let runtimes = Arc::new(runtimes);
    let logs = lamina_logs::LogStore::open(&data_dir.join("logs.db"))
        .with_context(|| format!("cannot open the log store in {}", data_dir.display()))?
        .with_arn_scope(&args.region, &args.account_id);
    let logs = Arc::new(logs);
    let store: Arc<dyn lamina_store::MetadataStore> = Arc::new(store);
    let code = Arc::new(code);
    let worker_threads = args.worker_threads.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, |cores| cores.get() / 2)
                .max(1)
        },
        usize::from,
    );
    let server_nice = args.server_nice;
    // One thread: tokio's current-thread scheduler, on the main thread. It has none of the
    // multi-thread scheduler's hand-offs (the accept loop on the main thread, the tasks on
    // a worker, the shared run queue's atomics): on 2 cores the server spent ~10% less CPU
    // per invoke than with one multi-thread worker, and gave 14-40% more invokes/s at
    // concurrency 32 in interleaved runs. The blocking pool is the same in both.
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(worker_threads)
            .on_thread_start(move || {
                if server_nice != 0 {
                    let _ = set_thread_nice(server_nice);
                }
            });
        builder
    };
    // The main thread serves (the current-thread scheduler) or accepts; threads started
    // from it later inherit its priority: the blocking pool (the control plane's SQLite
    // and file work, environment starts), the queue's writer, the exit watchers. The log
    // writer and the /tmp pool, started above, keep the default.
    if server_nice != 0
        && let Err(error) = set_thread_nice(server_nice)
    {
        tracing::warn!(
            %error,
            "cannot raise the serving threads' priority (nice {server_nice}): they compete \
             with the functions for the CPU on equal terms"
        );
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let engine = Engine::new(
            EngineConfig {
                account: account.clone(),
                keep_alive: match args.keep_alive.as_str() {
                    "fixed" => KeepAlive::Fixed(Duration::from_secs(args.idle_timeout)),
                    _ => KeepAlive::Adaptive {
                        fallback: Duration::from_secs(args.idle_timeout),
                    },
                },
                concurrency_limit: args.concurrency_limit,
                host_memory: HostMemory {
                    reserve_mb: args
                        .host_memory_reserve_mb
                        .unwrap_or_else(HostMemory::default_reserve_mb),
                },
                runtimes: runtimes.clone(),
                zygotes: args.zygote == "on",
                prepared_environments: args.prepared_environments,
            },
            store.clone(),
            code.clone(),
            sandbox.clone(),
            logs.sink(),
        )
        .context("cannot start the invoker")?;
        engine.spawn_reaper();
        let code_for_shutdown = code.clone();
        // Asynchronous invocation: the durable queue, and its dispatcher running due
        // events on the engine (events stored before a crash are due again at once).
        let queue_path = data_dir.join("queue.db");
        let queue: Arc<dyn EventQueue> =
            Arc::new(SqliteQueue::open(&queue_path).with_context(|| {
                format!("cannot open the event queue {}", queue_path.display())
            })?);
        let event_configs =
            Arc::new(ConfigStore::open(&queue_path).with_context(|| {
                format!("cannot open the event queue {}", queue_path.display())
            })?);
        let mut control_plane = ControlPlane::new(account, store.clone(), code)
            .with_concurrency_limit(args.concurrency_limit);
        if let Some(minimum) = args.minimum_unreserved_concurrency {
            control_plane = control_plane.with_minimum_unreserved(minimum);
        }
        let control_plane = Arc::new(
            control_plane
                .with_runtimes(runtimes.clone())
                .with_change_listener(Arc::new(ForgetDeletedConfigs {
                    inner: engine.clone(),
                    store,
                    configs: event_configs.clone(),
                })),
        );
        let dispatcher = Dispatcher::new(
            queue.clone(),
            event_configs.clone(),
            Arc::new(EngineInvoker::new(engine.clone(), control_plane.clone())),
            DispatchSettings {
                retry_delays: args
                    .async_retry_delays_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect(),
                throttle_delay: Duration::from_millis(args.async_throttle_delay_ms),
                throttle_delay_max: Duration::from_millis(args.async_throttle_delay_max_ms),
                max_in_flight: args.concurrency_limit as usize,
            },
        );
        dispatcher.spawn();
        let async_invocations = Arc::new(AsyncInvocations::new(queue, event_configs));
        // A crash between writing a zip and storing the version that uses it leaves an
        // orphan; collect those before serving.
        control_plane.collect_unused_code();
        // Provisioned environments are started again in the background.
        control_plane
            .restore_provisioned_concurrency()
            .context("cannot restore provisioned concurrency")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        let isolation = sandbox.describe();
        if sandbox.tier() == SandboxTier::Process {
            tracing::warn!(
                "EXECUTION ENVIRONMENTS ARE NOT ISOLATED: {isolation}. Functions run as plain \
                 processes of this user, with no memory, /tmp or network limits."
            );
        }
        tracing::info!(
            "lamina listening on http://{address} | data in {} | region {} account {} | \
             sandbox: {isolation}",
            data_dir.display(),
            args.region,
            args.account_id,
        );
        let logs_api = lamina_logs::router(logs.clone());
        let lambda_api = Arc::new(lamina_api::LambdaApi::new(
            AppState {
                control_plane,
                engine: engine.clone(),
            },
            async_invocations,
        ));
        // CloudWatch Logs (JSON 1.1, `POST /` with `X-Amz-Target`) and Lambda (REST-JSON)
        // share the port, as `aws logs tail` and `aws lambda` share one endpoint here.
        // Invoke is served past all of this (see `lamina_api::server`).
        let every_other_request = {
            let lambda_api = lambda_api.clone();
            tower::service_fn(move |request: axum::extract::Request| {
                let logs_api = logs_api.clone();
                let lambda_api = lambda_api.clone();
                async move {
                    use tower::ServiceExt as _;
                    if lamina_logs::is_logs_request(request.headers()) {
                        logs_api.oneshot(request).await
                    } else {
                        Ok(lambda_api.serve(request).await)
                    }
                }
            })
        };
        lamina_api::server::serve(listener, lambda_api, every_other_request, shutdown_signal())
            .await;
        dispatcher.stop().await;
        let engine_for_shutdown = engine.clone();
        tokio::task::spawn_blocking(move || engine_for_shutdown.shutdown()).await?;
        if let Err(error) = logs.sink().flush_async().await {
            tracing::warn!(%error, "could not flush the last log events");
        }
        let code_store = code_for_shutdown.clone();
        match tokio::task::spawn_blocking(move || code_store.mark_clean_shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not record a clean stop of the code store")
            }
            Err(error) => tracing::warn!(%error, "could not record a clean stop of the code store"),
        }
        tracing::info!("lamina stopped");
        anyhow::Ok(())
    })
}

fn validate_account(args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.account_id.len() == 12 && args.account_id.bytes().all(|b| b.is_ascii_digit()),
        "--account-id must be twelve digits, not '{}'",
        args.account_id
    );
    let region_ok = lamina_model::validation::full_match(
        lamina_model::validation::patterns::MASTER_REGION,
        &args.region,
    ) && args.region != "ALL";
    anyhow::ensure!(
        region_ok,
        "--region must look like an AWS region (us-east-1), not '{}'",
        args.region
    );
    Ok(())
}

/// A short stable name for a path, for names that must differ per data directory.
fn short_hash(path: &Path) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

/// Two servers on one data directory would collect each other's code; the lock makes
/// the second one refuse to start.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("lamina.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another lamina server is using {}; stop it or choose another --data-dir",
            data_dir.display()
        )
    })?;
    Ok(file)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received, shutting down"),
    }
}

/// Descriptors of the server's that one execution environment holds, with room to spare:
/// its Runtime API listener and connection (the Runtime API takes at most eight at once),
/// its output pipe, its pidfd and its memory-peak file: about six for a usual runtime.
const DESCRIPTORS_PER_ENVIRONMENT: u64 = 8;

/// Raises the soft limit on open files to the hard one, as Go's runtime does for every Go
/// program. The soft limit a shell or a service usually starts with (1,024) would stop the
/// server at about 150 environments, far below the account's concurrency limit (1,000 by
/// default), with `EMFILE` on accept and on environment starts. Functions do not inherit
/// the raise in the linux tier, which gives each its own limit (1,024, as on Lambda); the
/// process tier, which isolates nothing, passes it on.
fn raise_open_files_limit(concurrency_limit: u32) {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // An unlimited hard limit still stops at the kernel's `nr_open`.
    let ceiling = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    let limit = if soft < ceiling {
        match setrlimit(Resource::RLIMIT_NOFILE, ceiling, hard) {
            Ok(()) => ceiling,
            Err(error) => {
                tracing::warn!(%error, "cannot raise the open files limit from {soft}");
                soft
            }
        }
    } else {
        soft
    };
    let needed = u64::from(concurrency_limit) * DESCRIPTORS_PER_ENVIRONMENT + 1024;
    if limit < needed {
        tracing::warn!(
            "the open files limit ({limit}) holds about {} execution environments, fewer \
             than the account concurrency limit ({concurrency_limit}) asks for: raise the \
             hard limit (`ulimit -Hn`, systemd's LimitNOFILE=) to {needed} or more",
            limit.saturating_sub(1024) / DESCRIPTORS_PER_ENVIRONMENT
        );
    }
}

/// Sets the calling thread's nice value (Linux keeps one per thread; threads it starts
/// inherit it). The sandbox puts functions that inherit a raised one back at 0.
fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain system call; `0` is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
