//! The HTTP server: accept loop, request dispatch, graceful shutdown.
//!
//! A [`Worker`] is what one accept loop serves with: the shared [`App`] plus its
//! own outbound client. Connections are HTTP/1.1 (what WAHA speaks), with
//! TCP_NODELAY and a header read timeout that also closes idle keep-alive
//! connections (hyper runs it whenever a connection waits for a request head).
//! At most `max_connections` are served at once: one more is answered a canned
//! 503 and closed, so a flood of idle sockets costs a file descriptor each for a
//! moment, never a connection task. On shutdown the listener is closed first,
//! `/readyz` turns 503, and in-flight requests get `drain_timeout` to finish.

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

/// How long a metrics scraper may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a connection over `max_connections`, written without hyper.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 49\r\n\r\n\
{\"status\":\"error\",\"error\":\"too many connections\"}";

/// Refused connections being answered at once; past this, more are just closed.
const MAX_REFUSING: usize = 1024;

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
    builder.timer(TokioTimer::new()).header_read_timeout(worker.app.config.header_read_timeout).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    // Past the drain deadline, connections still open are closed (dropped), so
    // that no task outlives `serve` holding the app (and the database) open.
    let force_close = tokio_util::sync::CancellationToken::new();
    let slots = Arc::clone(&worker.app.connection_slots);
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    let mut full = false;
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
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    if !std::mem::replace(&mut full, true) {
                        tracing::warn!(max = worker.app.config.max_connections, "connection limit reached; refusing with 503");
                    }
                    match Arc::clone(&refusing).try_acquire_owned() {
                        Ok(permit) => {
                            tracker.spawn(refuse(stream, permit));
                        }
                        // Refusing is saturated too: answer what fits in the
                        // socket buffer (all of it, on a fresh socket) and close.
                        Err(_) => {
                            let _ = stream.try_write(BUSY);
                        }
                    }
                    continue;
                };
                full = false;
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
                    drop(slot);
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

/// Answers a connection over the limit with [`BUSY`] and closes it. The request
/// is read and dropped for a moment first (200 ms at most, so refusing keeps up
/// with a flood): closing a socket with unread data sends a reset, which can
/// destroy the 503 before the client reads it.
async fn refuse(mut stream: tokio::net::TcpStream, _permit: tokio::sync::OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let linger = async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), linger).await;
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

#[cfg(test)]
mod tests {
    /// The canned 503 must be a well-formed answer: its length header right.
    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(super::BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head.split("content-length: ").nth(1).unwrap().parse().unwrap();
        assert_eq!(len, body.len());
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
