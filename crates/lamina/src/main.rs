//! `lamina`: the composition root. It reads the configuration, opens the stores, picks
//! the backends and serves the API; nothing else in the workspace knows every backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lamina_api::ControlPlane;
use lamina_model::Account;
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
    Serve(ServeArgs),
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LAMINA_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
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

    let store = SqliteStore::open(&data_dir.join("lamina.db"))
        .with_context(|| format!("cannot open the metadata store in {}", data_dir.display()))?;
    let code = CodeStore::open(&data_dir.join("code"))
        .with_context(|| format!("cannot open the code store in {}", data_dir.display()))?;
    let account = Account {
        region: args.region.clone(),
        account_id: args.account_id.clone(),
    };
    let control_plane = Arc::new(ControlPlane::new(account, Arc::new(store), Arc::new(code)));
    // A crash between writing a zip and storing the version that uses it leaves an
    // orphan; collect those before serving.
    control_plane.collect_unused_code();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        tracing::info!(
            "lamina listening on http://{address} | data in {} | region {} account {} | \
             sandbox: none yet (invocation is not implemented in this build)",
            data_dir.display(),
            args.region,
            args.account_id,
        );
        let app = lamina_api::router(control_plane);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("server failed")?;
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
