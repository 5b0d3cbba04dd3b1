//! Test harness: a tenant backend that records what it receives, a router
//! started in-process on port 0 (or as the real binary), and an HTTP client.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use whatsapp_router::{Config, Listeners};

pub const API_KEY: &str = "test-api-key-0123456789";
pub const HMAC_KEY: &str = "test_hmac_key_long_enough";
pub const ADMIN_SECRET: &str = "test-admin-jwt-secret-0123456789";

/// An admin API token signed with the test config's secret.
pub fn token(role: whatsapp_router::admin::token::Role, tenant: Option<u32>) -> String {
    use whatsapp_router::admin::token::{issue, Claims};
    let claims = Claims::new("tester", role, tenant, Duration::from_secs(600));
    issue(&whatsapp_router::secrets::Secret::new(ADMIN_SECRET), &claims).unwrap()
}

pub fn admin_token() -> String {
    token(whatsapp_router::admin::token::Role::Admin, None)
}

pub fn tenant_token(tenant: u32) -> String {
    token(whatsapp_router::admin::token::Role::Tenant, Some(tenant))
}

/// A fixture body, byte for byte.
pub fn fixture(path: &str) -> Bytes {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fixtures").join(path);
    Bytes::from(std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display())))
}

/// A WAHA `message` body from `from` with `body` as text.
pub fn message(from: &str, text: &str) -> Bytes {
    let body = serde_json::json!({
        "id": "evt_01test", "event": "message", "session": "default",
        "payload": {"id": format!("false_{from}_KEY{}", next_id()), "from": from, "fromMe": false, "body": text}
    });
    Bytes::from(body.to_string())
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One request as a tenant backend saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The tenant id from `/tenants/{id}/whatsapp`.
    pub fn tenant(&self) -> u32 {
        self.path.split('/').nth(2).and_then(|s| s.parse().ok()).expect("tenant path")
    }
}

/// A tenant backend: answers every POST with `status` after `delay_ms`.
pub struct Backend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Every request with the status it was answered, in arrival order.
    pub attempts: Arc<Mutex<Vec<(Received, u16, std::time::Instant)>>>,
    pub status: Arc<AtomicU16>,
    pub delay_ms: Arc<AtomicU64>,
    _task: JoinHandle<()>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (r, a, s, d) = (received.clone(), attempts.clone(), status.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (r, a, s, d) = (r.clone(), a.clone(), s.clone(), d.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (r, a, s, d) = (r.clone(), a.clone(), s.clone(), d.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let delay = d.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let code = s.load(Ordering::SeqCst);
                            let got = Received { path: parts.uri.path().to_owned(), headers: parts.headers, body };
                            a.lock().unwrap().push((got.clone(), code, std::time::Instant::now()));
                            if (200..300).contains(&code) {
                                r.lock().unwrap().push(got);
                            }
                            let answer: &'static [u8] =
                                if code < 300 { b"{\"ok\":true}" } else { b"{\"error\":\"tenant says no\"}" };
                            let mut resp = Response::new(Full::new(Bytes::from_static(answer)));
                            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                            if code == 429 {
                                resp.headers_mut().insert("retry-after", http::HeaderValue::from_static("2"));
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Backend { addr, received, attempts, status, delay_ms, _task: task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Waits until at least `n` requests were accepted (2xx), at most `secs`.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.received();
            if got.len() >= n || std::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url_template(&self) -> String {
        format!("http://{}/tenants/{{tenant_id}}/whatsapp", self.addr)
    }
}

/// Router settings a test can change.
pub struct Setup {
    pub tenants: std::ops::RangeInclusive<u32>,
    pub url_template: String,
    pub extra_waha: String,
    pub extra_top: String,
    /// Whole sections (e.g. `[delivery]`), placed before the tenants.
    pub extra_sections: String,
    /// Extra lines for each `[[tenants]]` entry, by tenant id.
    pub tenant_extra: fn(u32) -> String,
}

impl Setup {
    pub fn new(backend: &Backend) -> Setup {
        Setup {
            tenants: 1..=3,
            url_template: backend.url_template(),
            extra_waha: String::new(),
            extra_top: String::new(),
            extra_sections: String::new(),
            tenant_extra: |_| String::new(),
        }
    }

    pub fn toml(&self, data_dir: &Path) -> String {
        let mut text = format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ngateway_phone = \"971557357753\"\ndrain_timeout_ms = 2000\n{}\n\
             [waha]\napi_key = \"{API_KEY}\"\n{}\n[forward]\nurl_template = \"{}\"\ntimeout_ms = 2000\n\
             [admin]\njwt_secret = \"{ADMIN_SECRET}\"\n",
            data_dir.display(),
            self.extra_top,
            self.extra_waha,
            self.url_template
        );
        text.push_str(&self.extra_sections);
        text.push('\n');
        for id in self.tenants.clone() {
            text.push_str(&format!("[[tenants]]\nid = {id}\nname = \"Tenant {id}\"\n{}\n", (self.tenant_extra)(id)));
        }
        text
    }
}

/// A router running in this process on port 0.
pub struct Router {
    pub app: Arc<whatsapp_router::App>,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), whatsapp_router::StartError>>>,
}

impl Router {
    pub async fn start(setup: &Setup, data_dir: &Path) -> Router {
        Router::start_toml(&setup.toml(data_dir)).await
    }

    /// Starts a router from a whole TOML document (for tests that edit what
    /// `Setup::toml` writes).
    pub async fn start_toml(toml: &str) -> Router {
        let config = Config::from_toml(toml).expect("test config is valid");
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.http.local_addr().unwrap();
        let metrics_addr = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = whatsapp_router::App::open(config).expect("router opens");
        let task = tokio::spawn(whatsapp_router::serve(app.clone(), listeners, async {
            let _ = stopped.await;
        }));
        Router { app, addr, metrics_addr, stop: Some(stop), task: Some(task) }
    }

    /// Graceful stop; returns once the store is closed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    pub async fn webhook(&self, body: Bytes) -> (StatusCode, serde_json::Value) {
        self.post("/api/gateway/waha", body, &[("x-api-key", API_KEY)]).await
    }

    pub async fn post(&self, path: &str, body: Bytes, headers: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
        send(self.addr, "POST", path, body, headers).await
    }

    /// An admin API call with a bearer token and an optional JSON body.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        token: &str,
    ) -> (StatusCode, serde_json::Value) {
        let bearer = format!("Bearer {token}");
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        send(self.addr, method, path, body, &[("authorization", &bearer)]).await
    }

    /// A GET with a bearer token, returning the raw answer (images, backups).
    pub async fn admin_raw(&self, path: &str, token: &str) -> (StatusCode, HeaderMap, Bytes) {
        send_raw(self.addr, "GET", path, Bytes::new(), &[("authorization", &format!("Bearer {token}"))]).await
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, text) = get_text(self.metrics_addr, "/metrics").await;
        metric_value(&text, name_and_labels)
    }
}

/// The value of one sample line in Prometheus text, 0 if absent.
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(body)).unwrap()).await.expect("router answers");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

pub async fn send_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(body)).unwrap()).await.expect("router answers");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

pub async fn get_text(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let req = Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new())).unwrap();
    let resp = client().request(req).await.expect("server answers");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The real binary, for what only a process can show: exit codes, signals, SIGKILL.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_whatsapp-router"));
    cmd.env_remove("WHATSAPP_ROUTER_CONFIG").env("RUST_LOG", "info");
    cmd
}

impl Process {
    /// Starts `whatsapp-router serve --config <file>` with the setup's config
    /// on port 0, learns the port from its start-up log line, waits for `/readyz`.
    pub async fn start(setup: &Setup, data_dir: &Path) -> Process {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, setup.toml(data_dir)).unwrap();
        let mut cmd = binary();
        cmd.args(["serve", "--config"]).arg(&config).env("WHATSAPP_ROUTER_METRICS_LISTEN", "off");
        Process::spawn(cmd).await
    }

    /// Spawns `cmd` (which must listen on port 0 or a known port), reading its
    /// stderr for the `listen=` address.
    pub async fn spawn(mut cmd: Command) -> Process {
        cmd.env("WHATSAPP_ROUTER_LISTEN", "127.0.0.1:0").stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let log_writer = log.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                // `listen=ADDR` in human logs, `"listen":"ADDR"` in JSON logs.
                let rest = line.split("listen=").nth(1).or_else(|| line.split("\"listen\":").nth(1));
                if let Some(rest) = rest {
                    let addr = rest.trim_start_matches('"').split(['"', ' ', ',']).next().unwrap_or("").to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                log_writer.lock().unwrap().push_str(&line);
                log_writer.lock().unwrap().push('\n');
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await.unwrap();
        let Ok(addr) = addr else {
            // Never leave the process behind a failed test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("router did not log its address; stderr:\n{}", log.lock().unwrap());
        };
        let addr: SocketAddr = addr.parse().unwrap();
        wait_ready(addr).await;
        Process { child, addr, log, reader: Some(reader) }
    }

    /// Waits for the process to exit and for its stderr to be read to the end.
    pub async fn finish(mut self) -> (std::process::ExitStatus, String) {
        let reader = self.reader.take();
        let log = self.log.clone();
        let status = self.wait_exit().await;
        if let Some(reader) = reader {
            tokio::task::spawn_blocking(move || reader.join()).await.unwrap().unwrap();
        }
        let text = log.lock().unwrap().clone();
        (status, text)
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn webhook(&self, body: Bytes) -> (StatusCode, serde_json::Value) {
        send(self.addr, "POST", "/api/gateway/waha", body, &[("x-api-key", API_KEY)]).await
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub async fn wait_exit(mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        panic!("router did not exit within 10 s");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (bound and released; for servers that
/// cannot report the port they got, like a Prometheus started by a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn wait_ready(addr: SocketAddr) {
    for _ in 0..600 {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            let (status, _) = get_text(addr, "/readyz").await;
            if status == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("router at {addr} not ready within 30 s");
}
