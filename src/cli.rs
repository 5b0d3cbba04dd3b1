//! The command line: `serve` (the default), the `mapping`, `tenant`, `token`,
//! `backup`/`restore` and `waha setup` tools (implemented in [`crate::ops`]).
//!
//! `main.rs` calls [`main`]; everything here returns an exit code instead of
//! exiting, so the order is explicit: load and validate the config, open the data
//! dir, and only then bind ports.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::admin::token::Role;
use crate::config::{Config, ENV_CONFIG_PATH};
use crate::registry::Registry;
use crate::store::Store;
use crate::{mapping, ops, App, Listeners};

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

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; logs collected by systemd or a
    // test harness stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).with_ansi(ansi).try_init();
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn serve(config: Config) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let app = App::open(config)?;
        for path in &app.secrets.generated {
            eprintln!("whatsapp-router: generated a new secret in {}", path.display());
        }
        let listeners = Listeners::bind(&app.config).await?;
        tracing::info!(
            listen = %listeners.http.local_addr()?,
            metrics = ?listeners.metrics.as_ref().map(|l| l.local_addr()).transpose()?,
            data_dir = %app.config.data_dir.display(),
            tenants = app.registry.len(),
            webhook_auth = auth_summary(&app),
            "whatsapp-router started"
        );
        // sled may never return from calls blocked on a failed disk, and
        // dropping it would flush: exit without either. Every acknowledged
        // write was flushed before its acknowledgement.
        crate::watchdog::spawn(std::sync::Arc::clone(&app.store), |error| {
            tracing::error!(%error, "stopping: the store needs reopening (the supervisor restarts the router)");
            eprintln!("whatsapp-router: the store stopped taking writes: {error}");
            std::process::exit(1);
        })?;
        crate::serve(app, listeners, shutdown_signal()).await?;
        Ok(())
    })
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
