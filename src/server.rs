//! The HTTP server: accept loop, request dispatch, graceful shutdown.
//!
//! A [`Worker`] is what one accept loop serves with: the shared [`App`] plus its
//! own outbound client. Connections are HTTP/1.1 (what WAHA speaks), with
//! TCP_NODELAY and a header read timeout. On shutdown the listener is closed
//! first, `/readyz` turns 503, and in-flight requests get `drain_timeout` to finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::error::{json_bytes, ApiError};
use crate::forward::Forwarder;
use crate::metrics::Route;
use crate::{admin, ingest, App};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One accept loop's state: the shared app and a client pool of its own.
pub struct Worker {
    pub app: Arc<App>,
    pub forwarder: Forwarder,
}

impl Worker {
    pub fn new(app: Arc<App>) -> Worker {
        let forwarder = Forwarder::new(&app.config.forward);
        Worker { app, forwarder }
    }
}

/// Routes a request to its handler. Unknown paths are 404; known paths with the
/// wrong method are 405 with `Allow`.
pub async fn dispatch(worker: &Worker, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (path, req.method()) {
        ("/api/gateway/waha", &Method::POST) => ingest::handle(worker, req).await,
        ("/api/gateway/waha", _) => ApiError::MethodNotAllowed("POST").into_response(),
        ("/healthz", &Method::GET | &Method::HEAD) => {
            json_bytes(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
        }
        ("/readyz", &Method::GET | &Method::HEAD) => {
            if worker.app.draining.load(Ordering::Acquire) {
                json_bytes(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(br#"{"status":"draining"}"#))
            } else {
                json_bytes(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#))
            }
        }
        ("/healthz" | "/readyz", _) => ApiError::MethodNotAllowed("GET, HEAD").into_response(),
        // Every other `/api/gateway/...` path is the admin API (404 for unknown ones).
        (p, _) if p.starts_with(admin::PREFIX) => admin::handle(worker, req).await,
        _ => ApiError::NotFound.into_response(),
    }
}

/// [`dispatch`], recording the request's duration under its route template.
async fn timed(worker: &Worker, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (route, method) = (Route::of(req.uri().path()), req.method().clone());
    let resp = dispatch(worker, req).await;
    worker.app.metrics.http_request(route, &method, resp.status(), started.elapsed().as_secs_f64());
    resp
}

/// Serves `listener` until `shutdown` resolves, then drains. Every connection
/// task is tracked; none outlives the drain deadline unnoticed.
pub async fn serve(worker: Arc<Worker>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    // Past the drain deadline, connections still open are closed (dropped), so
    // that no task outlives `serve` holding the app (and the database) open.
    let force_close = tokio_util::sync::CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let worker = Arc::clone(&worker);
                let service = service_fn(move |req| {
                    let worker = Arc::clone(&worker);
                    async move { Ok::<_, Infallible>(timed(&worker, req).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                let force_close = force_close.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        result = conn => if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        },
                        () = force_close.cancelled() => {}
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    worker.app.draining.store(true, Ordering::Release);
    let deadline = worker.app.config.drain_timeout;
    tracing::info!(connections = tracker.len(), ?deadline, "draining");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(deadline) => tracing::warn!(left = tracker.len(), "drain deadline passed; closing remaining connections"),
    }
    force_close.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Serves `GET /metrics` on its own listener until `shutdown` resolves, and runs
/// the exporter's upkeep so histogram samples do not pile up between scrapes.
pub async fn serve_metrics(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let tracker = TaskTracker::new();
    let mut upkeep = tokio::time::interval(crate::metrics::Metrics::UPKEEP_EVERY);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = Arc::clone(&app);
                let service = service_fn(move |req: Request<Incoming>| {
                    let app = Arc::clone(&app);
                    async move {
                        let resp = match (req.uri().path(), req.method()) {
                            ("/metrics", &Method::GET) => {
                                app.metrics.upkeep();
                                let mut resp = Response::new(Full::new(Bytes::from(app.render_metrics())));
                                resp.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                                );
                                resp
                            }
                            ("/metrics", _) => ApiError::MethodNotAllowed("GET").into_response(),
                            _ => ApiError::NotFound.into_response(),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tracker.spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = upkeep.tick() => app.metrics.upkeep(),
            () = &mut shutdown => break,
        }
    }
    tracker.close();
    // Scrapes are quick; do not let one hold up the exit.
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}
