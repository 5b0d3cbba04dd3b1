//! whatsapp-router: routes the webhooks of one shared WhatsApp number to the
//! backends of many tenants. A client's first message carries a tenant's deep
//! link (`start_realty_<id>`); the sender is then locked to that tenant for good
//! (first contact wins) and every later message of theirs is forwarded there.
//!
//! # Layout
//! - [`config`]: TOML schema, env overrides, validation (before any port is bound).
//! - [`secrets`]: generated secrets kept in the data dir; constant-time compare.
//! - [`webhook`]: the WAHA envelope, parsed with simd-json into a borrowed struct.
//! - [`sender`], [`deeplink`], [`route`]: pure routing logic (no I/O).
//! - [`store`]: the only module that touches sled (locks, tenants, group commit).
//! - [`locks`]: the DashMap cache in front of the lock tree.
//! - [`registry`]: tenants and their forward URLs.
//! - [`forward`]: the only module that opens outbound connections.
//! - [`auth`], [`ingest`], [`error`], [`server`]: the HTTP side.
//! - [`admin`]: the admin API (tokens, senders, tenants, links and QR codes, audit, backup).
//! - [`per_core`]: thread-per-core serving (one runtime, listener and pool per thread).
//! - [`metrics`]: Prometheus metrics with cached handles.
//! - [`mapping`]: import/export of the prototype's JSON mapping file.
//! - [`cli`]: the command line; `main.rs` only calls it. [`ops`]: the operations commands.
//! - [`waha_setup`]: `waha setup`, pointing a WAHA session's webhook at the router.
//! - [`watchdog`]: restarts the process when sled stops taking writes for good.
//!
//! See ARCHITECTURE.md for the invariants.

pub mod admin;
pub mod auth;
pub mod autoreply;
pub mod background;
pub mod cli;
pub mod config;
pub mod deeplink;
pub mod delivery;
pub mod error;
pub mod forward;
pub mod ingest;
pub mod locks;
pub mod mapping;
pub mod metrics;
pub mod ops;
pub mod per_core;
pub mod registry;
pub mod route;
pub mod secrets;
pub mod sender;
pub mod server;
pub mod store;
pub mod waha_setup;
pub mod watchdog;
pub mod webhook;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;

use crate::background::Background;
use crate::delivery::Delivery;
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError};
use crate::secrets::Secrets;
use crate::server::Worker;
use crate::store::{Store, StoreError};

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("starting the delivery queue: {0}")]
    Queue(String),
    #[error("loading tenants: {0}")]
    Registry(#[from] RegistryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    #[error("a worker thread failed (see the log)")]
    Worker,
}

/// Everything the request path shares, across all workers.
pub struct App {
    pub config: Config,
    pub secrets: Secrets,
    pub store: Arc<Store>,
    pub locks: Locks,
    pub registry: Arc<Registry>,
    pub delivery: Arc<Delivery>,
    pub metrics: Arc<Metrics>,
    /// The optional reply to senders without a deep link (`waha.base_url`).
    pub auto_reply: Option<autoreply::AutoReply>,
    /// Set when shutdown starts; `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// One permit per open connection (`max_connections`), shared by every
    /// accept loop, so the limit is per process however many loops there are.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
}

impl App {
    /// Opens the data dir (secrets, store, registry). Binds nothing.
    pub fn open(config: Config) -> Result<Arc<App>, StartError> {
        let data_err = |source| StartError::DataDir { path: config.data_dir.clone(), source };
        std::fs::create_dir_all(&config.data_dir).map_err(data_err)?;
        let secrets = secrets::resolve(&config).map_err(data_err)?;
        let store = Arc::new(Store::open(&config.data_dir.join("db"))?);
        let registry = Arc::new(Registry::load(&store, &config, secrets.signing_secret.expose())?);
        let metrics = Arc::new(Metrics::with_tenant_labels(config.metrics_tenant_labels));
        metrics.tenants.set(registry.len() as f64);
        let delivery = Arc::new(Delivery::open(
            Arc::clone(&store),
            &config.delivery,
            config.forward.timeout,
            Arc::clone(&metrics),
        )?);
        let auto_reply = config.waha.auto_reply.clone().map(|c| autoreply::AutoReply::new(c, &metrics));
        let connection_slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        Ok(Arc::new(App {
            auto_reply,
            locks: Locks::new(Arc::clone(&store)),
            delivery,
            config,
            secrets,
            store,
            registry,
            metrics,
            draining: AtomicBool::new(false),
            connection_slots,
        }))
    }

    /// The Prometheus text for `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        self.metrics.tenants.set(self.registry.len() as f64);
        self.delivery.export_metrics();
        match self.store.lock_count() {
            Ok(n) => self.metrics.locks.set(n as f64),
            Err(e) => tracing::warn!(error = %e, "cannot count locks for the metrics"),
        }
        self.metrics.render()
    }
}

/// The sockets the router serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    pub http: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `config.listen` and, unless turned off, `config.metrics_listen`.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
        };
        let http = bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { http, metrics })
    }
}

/// Opens the app from `config` and serves until `shutdown` resolves.
pub async fn run(config: Config, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let app = App::open(config)?;
    serve(app, listeners, shutdown).await
}

/// Serves an opened app until `shutdown` resolves, drains, and flushes the store.
pub async fn serve(app: Arc<App>, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let background = Background::start(&app, listeners.metrics);
    let worker = Arc::new(Worker::new(Arc::clone(&app)));
    server::serve(worker, listeners.http, shutdown).await;
    background.stop().await;
    app.store.flush()?;
    tracing::info!("stopped");
    Ok(())
}
