//! Thread-per-core serving (`runtime = "thread-per-core"`, the default).
//!
//! Each of `workers` std threads runs its own `current_thread` tokio runtime
//! with its own SO_REUSEPORT listener and its own [`Worker`] (so its own
//! outbound connection pool). The kernel spreads incoming connections over the
//! listeners; a request is then read, routed, forwarded and answered on one
//! thread, with no cross-core hand-off: on a small VM a wake-up on another vCPU
//! costs ~50 µs, more than the whole request (README, "Performance").
//!
//! The calling thread keeps a small runtime of its own for the shutdown signal,
//! the delivery queue's scheduler and the metrics listener ([`Background`]). One shutdown token stops every worker; each drains
//! with `drain_timeout`, and the store is flushed once, after all have stopped.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::background::Background;
use crate::server::{self, Worker};
use crate::{App, StartError};

/// Accept backlog per listener; bursts of new connections from a proxy in front
/// would otherwise be refused while the loop is busy.
const BACKLOG: i32 = 4096;

/// Binds `count` listeners to `addr`, all with SO_REUSEPORT. With port 0 the
/// first one picks the port and the others join it.
///
/// SO_REUSEPORT would also let a second router on the same port silently share
/// the traffic; a probe bind without the option first makes that an error.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    let err = |addr, source| StartError::Bind { addr, source };
    if addr.port() != 0 {
        let probe = socket(addr).map_err(|e| err(addr, e))?;
        probe.bind(&addr.into()).map_err(|e| err(addr, e))?;
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = socket(addr).map_err(|e| err(addr, e))?;
        socket.set_reuse_port(true).map_err(|e| err(addr, e))?;
        socket.bind(&addr.into()).map_err(|e| err(addr, e))?;
        socket.listen(BACKLOG).map_err(|e| err(addr, e))?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr().map_err(|e| err(addr, e))?;
        out.push(listener);
    }
    Ok(out)
}

fn socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Binds the metrics listener as a std socket, for [`serve`].
pub fn bind_std(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let bind = || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    bind().map_err(|source| StartError::Bind { addr, source })
}

/// Serves `app` with one thread per listener until `shutdown` resolves (or a
/// worker fails), then drains every worker and flushes the store. Blocks the
/// calling thread, which must not be inside a tokio runtime.
pub fn serve(
    app: Arc<App>,
    listeners: Vec<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let stop = CancellationToken::new();
    let mut threads = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (app, token) = (Arc::clone(&app), stop.clone());
        let spawned = std::thread::Builder::new().name(format!("router-worker-{i}")).spawn(move || {
            let result = run_worker(app, listener, token.clone());
            if let Err(e) = &result {
                tracing::error!(worker = i, error = %e, "worker failed; stopping the router");
                token.cancel();
            }
            result
        });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker thread");
                stop.cancel();
                break;
            }
        }
    }
    let control = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
    let failed = control.block_on(async {
        let metrics = match metrics.map(TcpListener::from_std).transpose() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener failed");
                None
            }
        };
        // The queue scheduler and the metrics endpoint live on the control runtime.
        let background = Background::start(&app, metrics);
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
        stop.cancel();
        // Joining blocks; keep the control runtime free for metrics scrapes meanwhile.
        let joined = tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join()).collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        background.stop().await;
        joined.iter().any(|r| !matches!(r, Ok(Ok(()))))
    });
    app.store.flush()?;
    if failed {
        return Err(StartError::Worker);
    }
    tracing::info!("stopped");
    Ok(())
}

fn run_worker(app: Arc<App>, listener: std::net::TcpListener, stop: CancellationToken) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        // Built inside the runtime: the pool's timers and connection tasks live here.
        let worker = Arc::new(Worker::new(app));
        server::serve(worker, listener, stop.cancelled_owned()).await;
        Ok(())
    })
}
