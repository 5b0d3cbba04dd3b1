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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::delivery::Delivery;
use crate::forward::Forwarder;
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
        let metrics = Arc::new(Metrics::new());
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
    let stop_metrics = CancellationToken::new();
    let metrics_task = listeners
        .metrics
        .map(|l| tokio::spawn(server::serve_metrics(Arc::clone(&app), l, stop_metrics.clone().cancelled_owned())));
    // The queue: resumes what a previous run left parked.
    let stop_queue = CancellationToken::new();
    let queue_attempts = TaskTracker::new();
    let queue = tokio::spawn(delivery::run(
        Arc::clone(&app.delivery),
        Arc::clone(&app.registry) as Arc<dyn delivery::Targets>,
        Forwarder::new(&app.config.forward),
        stop_queue.clone(),
        queue_attempts.clone(),
    ));
    let worker = Arc::new(Worker::new(Arc::clone(&app)));
    server::serve(worker, listeners.http, shutdown).await;
    // Stop scheduling; attempts in flight get the drain deadline, and whatever
    // is not delivered stays in the outbox for the next start.
    stop_queue.cancel();
    let _ = queue.await;
    queue_attempts.close();
    if tokio::time::timeout(app.config.drain_timeout, queue_attempts.wait()).await.is_err() {
        tracing::warn!("queue attempts still running at the drain deadline; they resume on the next start");
    }
    stop_metrics.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(auto_reply) = &app.auto_reply {
        auto_reply.close(std::time::Duration::from_secs(5)).await;
    }
    app.store.flush()?;
    tracing::info!("stopped");
    Ok(())
}
