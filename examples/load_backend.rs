//! A tenant backend for load tests: answers every POST at once with 200, counts
//! requests per tenant (from `/tenants/{id}/whatsapp`), and checks per-sender
//! order and loss for bodies that carry `seq=<n>` (n = 1, 2, ... per sender,
//! sender from `X-Gateway-Sender`).
//!
//! `GET /tally` answers the tally as JSON; SIGINT/SIGTERM print it to stdout and
//! exit. Thread-per-core like the router (one `current_thread` runtime and
//! SO_REUSEPORT listener per thread), so it is never the bottleneck it measures.
//!
//! Usage: `load_backend [ADDR (127.0.0.1:9000)] [THREADS (CPUs)]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Tenant ids above this are counted as `other`.
const MAX_TENANT: usize = 100_000;

#[derive(Default)]
struct SenderState {
    /// The next `seq` expected in order.
    next: u64,
    received: u64,
    highest: u64,
    out_of_order: u64,
}

struct Tally {
    total: AtomicU64,
    per_tenant: Vec<AtomicU64>,
    other: AtomicU64,
    senders: DashMap<Box<str>, SenderState>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            total: AtomicU64::new(0),
            per_tenant: (0..=MAX_TENANT).map(|_| AtomicU64::new(0)).collect(),
            other: AtomicU64::new(0),
            senders: DashMap::new(),
        }
    }

    fn record(&self, path: &str, sender: Option<&str>, body: &[u8]) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let tenant = path.strip_prefix("/tenants/").and_then(|r| r.split('/').next()).and_then(|t| t.parse().ok());
        match tenant.filter(|t: &usize| *t <= MAX_TENANT) {
            Some(t) => self.per_tenant[t].fetch_add(1, Ordering::Relaxed),
            None => self.other.fetch_add(1, Ordering::Relaxed),
        };
        let (Some(sender), Some(seq)) = (sender, seq_of(body)) else { return };
        // The guard is dropped before anything else happens (no await here).
        let mut state =
            self.senders.entry(sender.into()).or_insert_with(|| SenderState { next: 1, ..Default::default() });
        state.received += 1;
        state.highest = state.highest.max(seq);
        if seq != state.next {
            state.out_of_order += 1;
        }
        state.next = state.next.max(seq + 1);
    }

    fn json(&self) -> String {
        let tenants: Vec<(usize, u64)> = self
            .per_tenant
            .iter()
            .enumerate()
            .map(|(t, c)| (t, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        let (mut in_order, mut out_of_order, mut missing) = (0u64, 0u64, 0u64);
        for s in self.senders.iter() {
            out_of_order += s.out_of_order;
            in_order += s.received - s.out_of_order;
            missing += s.highest.saturating_sub(s.received);
        }
        let per_tenant: serde_json::Map<String, serde_json::Value> =
            tenants.iter().map(|(t, c)| (t.to_string(), (*c).into())).collect();
        serde_json::json!({
            "total": self.total.load(Ordering::Relaxed),
            "tenants": tenants.len(),
            "other": self.other.load(Ordering::Relaxed),
            "senders_with_seq": self.senders.len(),
            "in_order": in_order,
            "out_of_order": out_of_order,
            "missing": missing,
            "per_tenant": per_tenant,
        })
        .to_string()
    }
}

/// The number after the first `seq=` in the body.
fn seq_of(body: &[u8]) -> Option<u64> {
    let at = body.windows(4).position(|w| w == b"seq=")? + 4;
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok()
}

async fn handle(tally: Arc<Tally>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/tally" {
        return Ok(Response::new(Full::new(Bytes::from(tally.json()))));
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(resp);
    };
    let sender = parts.headers.get("x-gateway-sender").and_then(|v| v.to_str().ok());
    tally.record(parts.uri.path(), sender, &body);
    Ok(Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
}

fn serve(listener: std::net::TcpListener, tally: Arc<Tally>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let tally = Arc::clone(&tally);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(Arc::clone(&tally), req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into()).parse().expect("ADDR");
    let threads = args
        .next()
        .map(|t| t.parse().expect("THREADS"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listeners = whatsapp_router::per_core::bind_reuseport(addr, threads).expect("bind");
    eprintln!("load_backend listening on {} ({threads} threads)", listeners[0].local_addr().unwrap());
    let tally = Arc::new(Tally::new());
    for listener in listeners {
        let tally = Arc::clone(&tally);
        std::thread::spawn(move || serve(listener, tally));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(whatsapp_router::cli::shutdown_signal());
    println!("{}", tally.json());
}
