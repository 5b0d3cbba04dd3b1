//! Harness for the observability tests: find Prometheus's tools, run a real
//! Prometheus on a loopback port against a router, query its HTTP API, and read
//! the panel queries out of the Grafana dashboard.
//!
//! The tools come from Debian's `prometheus` package (`.ci/run` installs it). A
//! test that needs one skips with a message only when it is missing and `CI` is
//! unset; under CI a missing tool fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use crate::support::{free_port, get_text};

/// The dashboard, as committed.
pub fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/whatsapp-router.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel query of the dashboard as `(panel title, expr)`, rows included.
pub fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: target without expr"));
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A panel query with Grafana's variables replaced the way Grafana would for a
/// short time range, so Prometheus can run it.
pub fn as_prometheus_query(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$__interval", "15s")
}

/// Every `whatsapp_router_*` metric name an expression refers to.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("whatsapp_router_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The path of a Prometheus tool, or `None` (with a message) when it is not
/// installed outside CI. Under CI (`CI` set) a missing tool is a failure.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "`{name}` is not installed; .ci/run installs Debian's prometheus");
        eprintln!("SKIPPED: `{name}` is not installed (apt-get install prometheus); under CI this fails");
    }
    found
}

/// A Prometheus server scraping one target every second; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` scraping `target`'s `/metrics` and waits until it is ready.
    pub async fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: whatsapp-router\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut prometheus = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && get_text(addr, "/-/ready").await.0 == StatusCode::OK
            {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s:\n{}", prometheus.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs an instant query; panics on a query Prometheus refuses.
    pub async fn query(&self, query: &str) -> Vec<Value> {
        let (status, text) = get_text(self.addr, &format!("/api/v1/query?query={}", percent_encode(query))).await;
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{query}: {e}: {text}"));
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("success")), "{query}: {text}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Prometheus's own output, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986 unreserved bytes).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `promtool check metrics` on `text`: its exit status and everything it said.
pub fn promtool_check(promtool: &Path, text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn metric_names_are_found_in_expressions() {
    let expr = r#"sum(rate(whatsapp_router_a_total{outcome!="ok"}[1m])) / whatsapp_router_b_bucket"#;
    assert_eq!(metric_names(expr), ["whatsapp_router_a_total", "whatsapp_router_b_bucket"]);
    assert_eq!(percent_encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    assert_eq!(as_prometheus_query("rate(x[$__rate_interval])"), "rate(x[1m])");
}
