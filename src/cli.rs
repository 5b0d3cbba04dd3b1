//! The command line: `serve` (the default), the `mapping`, `tenant`, `token`,
//! `backup`/`restore` and `waha setup` tools (implemented in [`crate::ops`]).
//!
//! `main.rs` calls [`main`]; everything here returns an exit code instead of
//! exiting, so the order is explicit: load and validate the config, open the data
//! dir, and only then bind ports.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::admin::token::Role;
use crate::config::{Config, LogFormat, RuntimeModel, ENV_CONFIG_PATH};
use crate::registry::Registry;
use crate::store::Store;
use crate::{mapping, ops, per_core, App, Listeners};

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
    /// Import, export, look up, delete or set the sender -> tenant mapping.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// Add, list or remove tenants (stop the router first).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Print an admin API token signed with `admin.jwt_secret`.
    Token {
        #[arg(long, value_enum)]
        role: Role,
        /// Required for `--role tenant`.
        #[arg(long)]
        tenant_id: Option<u32>,
        /// Lifetime: 3600s, 90m, 24h, 30d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Who holds the token (written to the audit log).
        #[arg(long, default_value = "cli")]
        sub: String,
    },
    /// Write a consistent backup of the data dir: through the running router if it
    /// answers on `listen`, else directly from the (unused) data dir.
    Backup { file: PathBuf },
    /// Load a backup into an empty data dir (the router must be stopped).
    Restore { file: PathBuf },
    /// Configure WAHA.
    #[command(subcommand)]
    Waha(WahaCommand),
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add or update a tenant.
    Add {
        #[arg(long)]
        id: u32,
        #[arg(long)]
        name: String,
        /// Its own forward URL (default: `forward.url_template`).
        #[arg(long)]
        url: Option<String>,
    },
    /// List tenants as JSON lines.
    List,
    /// Remove a tenant; its senders stay locked to it and are not forwarded.
    Remove { id: u32 },
}

#[derive(Subcommand)]
enum WahaCommand {
    /// Point a WAHA session's webhook at this router (idempotent).
    Setup {
        #[arg(long)]
        waha_url: String,
        #[arg(long, env = "WAHA_API_KEY", hide_env_values = true)]
        waha_api_key: String,
        #[arg(long, default_value = "default")]
        session: String,
        /// Where WAHA reaches the router (default: http://<listen>).
        #[arg(long)]
        public_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Import a `{"phone": tenant_id}` JSON file; existing locks win.
    Import { file: PathBuf },
    /// Export every lock as `{"phone": tenant_id}` JSON (to stdout without FILE).
    Export { file: Option<PathBuf> },
    /// Print the tenant a sender is locked to.
    Get { phone: String },
    /// Remove a sender's lock (its next deep link locks afresh).
    Delete { phone: String },
    /// Lock a sender to a tenant, replacing any lock.
    Set { phone: String, tenant_id: u32 },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tracing needs the config (`log_format`); a config error is printed plainly.
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("whatsapp-router: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Mapping(MappingCommand::Import { file }) => import(config, file),
        Command::Mapping(MappingCommand::Export { file }) => export(config, file),
        Command::Mapping(MappingCommand::Get { phone }) => ops::mapping_get(&config, &phone),
        Command::Mapping(MappingCommand::Delete { phone }) => ops::mapping_delete(&config, &phone),
        Command::Mapping(MappingCommand::Set { phone, tenant_id }) => ops::mapping_set(&config, &phone, tenant_id),
        Command::Tenant(TenantCommand::Add { id, name, url }) => ops::tenant_add(&config, id, name, url),
        Command::Tenant(TenantCommand::List) => ops::tenant_list(&config),
        Command::Tenant(TenantCommand::Remove { id }) => ops::tenant_remove(&config, id),
        Command::Token { role, tenant_id, ttl, sub } => ops::token(&config, role, tenant_id, &ttl, &sub),
        Command::Backup { file } => ops::backup(&config, &file),
        Command::Restore { file } => ops::restore(&config, &file),
        Command::Waha(WahaCommand::Setup { waha_url, waha_api_key, session, public_url }) => {
            ops::waha_setup(&config, waha_url, waha_api_key, session, public_url)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("whatsapp-router: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): readable lines, or
/// one JSON object per line with the event's fields at the top level.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A closed stderr (a log collector gone) must not take the router down:
    // tracing's own report of a failed write would go to stderr and panic.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).log_internal_errors(false);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn serve(config: Config) -> Result<(), BoxError> {
    // The store and registry open before any port is bound, and need no runtime.
    let app = App::open(config)?;
    // Through tracing, so a JSON log stays all JSON; the path, never the secret.
    for path in &app.secrets.generated {
        tracing::info!("generated a new secret in {}", path.display());
    }
    // sled may never return from calls blocked on a failed disk, and dropping it
    // would flush: the watchdog exits without either, and the supervisor
    // restarts the router. Every acknowledged write was flushed before its
    // acknowledgement.
    crate::watchdog::spawn(Arc::clone(&app.store), |error| {
        tracing::error!(%error, "stopping: the store needs reopening (the supervisor restarts the router)");
        eprintln!("whatsapp-router: the store stopped taking writes: {error}");
        std::process::exit(1);
    })?;
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

/// The config summary at start: no secrets, no URLs (they may carry
/// credentials), no phone numbers.
fn log_started(app: &App, listen: SocketAddr, metrics: Option<SocketAddr>) {
    let c = &app.config;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listen,
        metrics = %metrics.map_or("off".into(), |a| a.to_string()),
        runtime = c.runtime.as_str(),
        workers = c.workers,
        data_dir = %c.data_dir.display(),
        tenants = app.registry.len(),
        locks = app.store.lock_count().unwrap_or(0),
        webhook_auth = auth_summary(app),
        deep_link_prefix = %c.deep_link_prefix,
        forward_timeout_ms = c.forward.timeout.as_millis() as u64,
        drain_timeout_ms = c.drain_timeout.as_millis() as u64,
        metrics_tenant_labels = c.metrics_tenant_labels,
        log_format = c.log_format.as_str(),
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

pub(crate) fn open_store(config: &Config) -> Result<(Store, Registry), BoxError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let secrets = crate::secrets::resolve(config)?;
    let store = Store::open(&config.data_dir.join("db"))?;
    let registry = Registry::load(&store, config, secrets.signing_secret.expose())?;
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
