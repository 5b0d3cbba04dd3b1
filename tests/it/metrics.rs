//! Observability end to end: a scrape passes `promtool check metrics`, the
//! dashboard and README name only metrics the router exports, and every panel
//! query of the dashboard returns data from a real Prometheus scraping a real
//! router that served real fixture traffic.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use crate::prometheus::{
    as_prometheus_query, dashboard, metric_names, panel_queries, promtool_check, tool, Prometheus,
};
use crate::support::*;

/// A router whose tenants include 42, the tenant of the derived deep-link fixtures.
async fn start() -> (tempfile::TempDir, Backend, Router) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.tenants = 1..=42;
    let router = Router::start(&setup, &dir.path().join("data")).await;
    (dir, backend, router)
}

/// A short burst of traffic that moves every metric family: first contacts and
/// follow-ups, real WAHA bodies that are ignored or unrouted, refused requests,
/// a failing tenant backend, and the health endpoints. Every answer is checked,
/// so the burst is what it claims to be.
async fn burst(router: &Router, backend: &Backend) {
    let post = |body: Bytes| router.webhook(body);
    for i in 0..6 {
        let from = format!("97150{:07}@c.us", 7_000_000 + i);
        let (status, body) = post(message(&from, &format!("hi start_realty_{}", i % 3 + 1))).await;
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("routed")), "{body}");
        assert_eq!(post(message(&from, "a follow-up")).await.0, StatusCode::OK);
    }
    let (_, body) = post(message("971507000000@c.us", "start_realty_3")).await;
    assert_eq!(body["tenant_id"], 1, "relock refused: the first tenant keeps the sender");
    let (_, body) = post(fixture("waha/derived/deeplink_first_message.cus.json")).await;
    assert_eq!(body["tenant_id"], 42, "{body}");
    let (_, body) = post(message("971507000099@c.us", "start_realty_99")).await;
    assert_eq!(body["reason"], "unknown_tenant");
    for (file, reason) in [
        ("waha/message.text.json", "from_me"),
        ("waha/message.any.fromme.json", "from_me"),
        ("waha/message.group.json", "group"),
        ("waha/message.newsletter.json", "channel"),
        ("waha/session.status.json", "event_ignored"),
        ("waha/message.ack.json", "not_locked"),
    ] {
        let (status, body) = post(fixture(file)).await;
        assert_eq!((status, body["reason"].as_str()), (StatusCode::OK, Some(reason)), "{file}: {body}");
    }
    let body = message("971507000001@c.us", "no key");
    assert_eq!(router.post("/api/gateway/waha", body, &[]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post(Bytes::from_static(b"[1, 2]")).await.0, StatusCode::BAD_REQUEST);
    backend.status.store(500, std::sync::atomic::Ordering::SeqCst);
    // A failing tenant: the message is parked for the queue, WAHA gets 200.
    let (status, body) = post(message("971507000002@c.us", "tenant down?")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("queued")), "{body}");
    backend.status.store(200, std::sync::atomic::Ordering::SeqCst);
    for (path, status) in [("/healthz", StatusCode::OK), ("/readyz", StatusCode::OK), ("/nope", StatusCode::NOT_FOUND)]
    {
        assert_eq!(get_text(router.addr, path).await.0, status, "{path}");
    }
}

/// Sample names (`name` or `name_bucket`, ...) and family names (`# TYPE`) of a scrape.
fn scrape_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap_or_default().to_owned());
        } else if !line.is_empty() && !line.starts_with('#') {
            samples.insert(line.split(['{', ' ']).next().unwrap_or_default().to_owned());
        }
    }
    (samples, families)
}

#[tokio::test]
async fn scrape_passes_promtool() {
    let Some(promtool) = tool("promtool") else { return };
    let (_dir, backend, router) = start().await;
    burst(&router, &backend).await;
    let (status, text) = get_text(router.metrics_addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("whatsapp_router_http_request_duration_seconds_bucket{"), "{text}");
    assert_eq!(promtool_check(&promtool, &text), (true, String::new()), "scrape:\n{text}");
    router.stop().await;
}

#[tokio::test]
async fn dashboard_and_readme_name_only_exported_metrics() {
    let (_dir, backend, router) = start().await;
    burst(&router, &backend).await;
    let (_, text) = get_text(router.metrics_addr, "/metrics").await;
    router.stop().await;
    let (samples, families) = scrape_names(&text);
    let declared: BTreeSet<String> = whatsapp_router::metrics::families().map(str::to_owned).collect();
    assert_eq!(families, declared, "the scrape exports exactly metrics::families()");

    let queries = panel_queries(&dashboard());
    assert!(queries.len() >= 20, "{queries:?}");
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {title}: no router metric in {expr}");
        for name in names {
            assert!(samples.contains(&name), "panel {title}: `{name}` is not in the scrape");
        }
    }

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for family in &families {
        assert!(readme.contains(&format!("| `{family}` |")), "README's metric table lacks `{family}`");
    }
}

#[tokio::test]
async fn every_dashboard_panel_returns_data_from_prometheus() {
    let Some(binary) = tool("prometheus") else { return };
    let (_dir, backend, router) = start().await;
    let prometheus = Prometheus::start(&binary, router.metrics_addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query("up{job=\"whatsapp-router\"} == 1").await.is_empty() {
        assert!(Instant::now() < deadline, "no successful scrape within 30 s:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    burst(&router, &backend).await;

    // rate() needs two samples of a series inside its window; poll until every
    // panel has data instead of guessing how many scrapes that takes.
    let queries = panel_queries(&dashboard());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            if prometheus.query(&as_prometheus_query(expr)).await.is_empty() {
                empty.push(format!("{title}: {expr}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "panels without data after 60 s:\n{}\nprometheus:\n{}",
            empty.join("\n"),
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The data is the burst's, not just zeros: spot-check two panels' numbers.
    let failures = prometheus
        .query("sum by (tenant_id) (whatsapp_router_tenant_forwards_total{outcome=\"status_5xx\"}) > 0")
        .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["metric"]["tenant_id"], "3", "971507000002 is locked to tenant 3: {failures:?}");
    let locks = prometheus.query("whatsapp_router_locks").await;
    assert_eq!(locks[0]["value"][1], "7", "six first contacts and the fixture's: {locks:?}");
    router.stop().await;
}
