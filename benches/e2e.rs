//! End to end, in process: a client POSTs a follow-up of a locked sender to the
//! real server (`whatsapp_router::run` on port 0), which forwards it to a real
//! hyper backend on loopback. Everything shares one `current_thread` runtime, so
//! the figure is the CPU cost of a whole exchange, not cross-core wake-ups.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use whatsapp_router::{Config, Listeners};

const API_KEY: &str = "bench-api-key-0123456789";
const SENDER: &str = "971509876543@c.us";

async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

fn message(text: &str) -> Bytes {
    let pad = "x".repeat(900);
    Bytes::from(
        serde_json::json!({
            "id": "evt_bench", "event": "message", "session": "default",
            "payload": {"id": format!("false_{SENDER}_AAAA"), "from": SENDER, "fromMe": false,
                        "body": text, "_data": {"notifyName": pad}}
        })
        .to_string(),
    )
}

fn e2e(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (addr, client) = rt.block_on(async {
        let backend = backend().await;
        let toml = format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\ndata_dir = \"{}\"\ngateway_phone = \"971557357753\"\n\
             [waha]\napi_key = \"{API_KEY}\"\n[forward]\nurl_template = \"http://{backend}/tenants/{{tenant_id}}/whatsapp\"\n\
             [[tenants]]\nid = 1\nname = \"One\"\n",
            dir.path().join("data").display()
        );
        let config = Config::from_toml(&toml).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.http.local_addr().unwrap();
        tokio::spawn(whatsapp_router::run(config, listeners, std::future::pending()));
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(http);
        (addr, client)
    });
    let post = |body: Bytes| {
        let client = client.clone();
        async move {
            let req = Request::post(format!("http://{addr}/api/gateway/waha"))
                .header("x-api-key", API_KEY)
                .body(Full::new(body))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    rt.block_on(post(message("start_realty_1")));
    let body = message("seq=1 how much is the flat?");
    assert!(body.len() > 1000);

    let mut group = c.benchmark_group("e2e_followup");
    for concurrency in [1u64, 16] {
        group.throughput(Throughput::Elements(concurrency));
        group.bench_with_input(BenchmarkId::new("concurrent", concurrency), &concurrency, |b, &conc| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let mut set = tokio::task::JoinSet::new();
                        for _ in 0..conc {
                            set.spawn(post(body.clone()));
                        }
                        while let Some(r) = set.join_next().await {
                            r.unwrap();
                        }
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = e2e
}
criterion_main!(benches);
