//! The command line: `serve` (the default) and the `mapping` tools.
//!
//! `main.rs` calls [`main`]; everything here returns an exit code instead of
//! exiting, so the order is explicit: load and validate the config, open the data
//! dir, and only then bind ports.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, RuntimeModel, ENV_CONFIG_PATH};
use crate::registry::Registry;
use crate::store::Store;
use crate::{mapping, per_core, App, Listeners};

/// Exit code for a configuration problem (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(name = "whatsapp-router", version, about = "Routes one WhatsApp number's webhooks to many tenants.")]
struct Cli {
    /// TOML config file; without it the embedded default is used.
    #[arg(long, global = true, env = ENV_CONFIG_PATH)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router (the default).
    Serve,
    /// Import or export the sender -> tenant mapping.
    #[command(subcommand)]
    Mapping(MappingCommand),
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Import a `{"phone": tenant_id}` JSON file; existing locks win.
    Import { file: PathBuf },
    /// Export every lock as `{"phone": tenant_id}` JSON (to stdout without FILE).
    Export { file: Option<PathBuf> },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("whatsapp-router: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Mapping(MappingCommand::Import { file }) => import(config, file),
        Command::Mapping(MappingCommand::Export { file }) => export(config, file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("whatsapp-router: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).try_init();
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn serve(config: Config) -> Result<(), BoxError> {
    // The store and registry open before any port is bound, and need no runtime.
    let app = App::open(config)?;
    for path in &app.secrets.generated {
        eprintln!("whatsapp-router: generated a new secret in {}", path.display());
    }
    let config = &app.config;
    match config.runtime {
        RuntimeModel::ThreadPerCore => {
            let http = per_core::bind_reuseport(config.listen, config.workers)?;
            let metrics = config.metrics_listen.map(per_core::bind_std).transpose()?;
            log_started(&app, http[0].local_addr()?, metrics.as_ref().map(|l| l.local_addr()).transpose()?);
            // Signals are handled once, on the control runtime `per_core::serve` runs.
            per_core::serve(Arc::clone(&app), http, metrics, shutdown_signal())?;
        }
        RuntimeModel::MultiThread => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build()?;
            runtime.block_on(async {
                let listeners = Listeners::bind(&app.config).await?;
                log_started(
                    &app,
                    listeners.http.local_addr()?,
                    listeners.metrics.as_ref().map(|l| l.local_addr()).transpose()?,
                );
                crate::serve(Arc::clone(&app), listeners, shutdown_signal()).await?;
                Ok::<_, BoxError>(())
            })?;
        }
    }
    Ok(())
}

fn log_started(app: &App, listen: SocketAddr, metrics: Option<SocketAddr>) {
    tracing::info!(
        listen = %listen,
        metrics = ?metrics,
        runtime = app.config.runtime.as_str(),
        workers = app.config.workers,
        data_dir = %app.config.data_dir.display(),
        tenants = app.registry.len(),
        webhook_auth = auth_summary(app),
        "whatsapp-router started"
    );
}

fn auth_summary(app: &App) -> &'static str {
    match (app.secrets.waha_api_key.is_some(), app.secrets.waha_hmac_key.is_some()) {
        (true, true) => "api_key+hmac",
        (true, false) => "api_key",
        (false, true) => "hmac",
        (false, false) => "NONE (allow_unauthenticated)",
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
        "SIGTERM"
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&str>();
    let signal = tokio::select! { s = ctrl_c => s, s = terminate => s };
    tracing::info!(signal, "shutdown requested");
}

fn open_store(config: &Config) -> Result<(Store, Registry), BoxError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::open(&config.data_dir.join("db"))?;
    let registry = Registry::load(&store, config)?;
    Ok((store, registry))
}

fn import(config: Config, file: PathBuf) -> Result<(), BoxError> {
    let (store, registry) = open_store(&config)?;
    let reader = BufReader::with_capacity(1 << 20, File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?);
    let report = mapping::import(reader, &store, &registry)?;
    println!("{report}");
    // sled replays its whole log since the last snapshot on open and then writes
    // a new snapshot. After a bulk import that replay is seconds (3.5 s for 10M
    // locks); reopening here pays it now, offline, instead of at the router's
    // next start, which then opens in under a second (README, "Performance").
    drop((store, registry));
    drop(open_store(&config)?);
    Ok(())
}

fn export(config: Config, file: Option<PathBuf>) -> Result<(), BoxError> {
    let (store, _) = open_store(&config)?;
    let count = match file {
        Some(path) => mapping::export(&store, BufWriter::with_capacity(1 << 20, File::create(&path)?))?,
        None => mapping::export(&store, BufWriter::new(io::stdout().lock()))?,
    };
    eprintln!("exported {count} locks");
    Ok(())
}
