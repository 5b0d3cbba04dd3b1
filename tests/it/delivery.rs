//! Durable delivery through the real server: parking and retries, per-sender
//! order, crash recovery, dead letters, dedupe, signatures, tenant isolation.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use crate::support::*;

/// Fast retries so tests take seconds: every 1 s, no jitter.
pub const FAST_RETRIES: &str = "[delivery]\nretry_schedule_s = [1]\njitter_percent = 0\ninline_timeout_ms = 500\n\
                                breaker_failures = 3\nbreaker_open_ms = 300\n";

fn fast(backend: &Backend) -> Setup {
    let mut setup = Setup::new(backend);
    setup.extra_sections = FAST_RETRIES.to_owned();
    setup
}

/// Message `n` of a sender, numbered in its text so order can be checked.
pub fn numbered(sender: &str, n: usize) -> Bytes {
    let text = if n == 0 { format!("start_realty_{} seq=0", 1 + sender.len() % 3) } else { format!("seq={n}") };
    message(sender, &text)
}

pub fn seq_of(r: &Received) -> usize {
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let text = body["payload"]["body"].as_str().unwrap();
    text.rsplit("seq=").next().unwrap().parse().unwrap()
}

/// Every message arrived (unique `webhook-id`s) and each sender's first
/// arrivals are in order. Returns how many deliveries were duplicates.
pub fn check_complete_and_ordered(got: &[Received], senders: &[String], per_sender: usize) -> usize {
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<usize>> = HashMap::new();
    let mut duplicates = 0;
    for r in got {
        let id = r.header("webhook-id").expect("signed forward").to_owned();
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        order.entry(r.header("x-gateway-sender").unwrap().to_owned()).or_default().push(seq_of(r));
    }
    assert_eq!(seen.len(), senders.len() * per_sender, "every message delivered");
    for sender in senders {
        let digits = sender.trim_end_matches("@c.us");
        assert_eq!(order[digits], (0..per_sender).collect::<Vec<_>>(), "order of {digits}");
    }
    duplicates
}

#[tokio::test]
async fn tenant_down_then_back_everything_arrives_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_status(503);
    let router = Router::start(&fast(&backend), &dir.path().join("data")).await;
    let senders: Vec<String> = (0..4).map(|i| format!("97155000000{i}@c.us")).collect();
    for n in 0..5 {
        for s in &senders {
            let (status, body) = router.webhook(numbered(s, n)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["status"], "queued", "{body}");
        }
    }
    assert!(backend.received().is_empty());
    assert_eq!(router.metric("whatsapp_router_queue_parked").await, 20.0);
    // Down through several breaker periods with no new traffic: the waiting
    // senders must not stall behind a trial that failed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    backend.set_status(200);
    let got = backend.wait_for(20, 15).await;
    let duplicates = check_complete_and_ordered(&got, &senders, 5);
    assert_eq!(duplicates, 0);
    assert!(router.metric("whatsapp_router_delivery_retries_total").await >= 1.0);
    // The queue is empty once everything is delivered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while router.metric("whatsapp_router_queue_parked").await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(router.metric("whatsapp_router_queue_parked").await, 0.0);
    router.stop().await;
}

#[tokio::test]
async fn a_parked_queue_survives_sigkill_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_status(500);
    let setup = fast(&backend);
    let data = dir.path().join("data");
    let router = Process::start(&setup, &data).await;
    let senders: Vec<String> = (0..3).map(|i| format!("97156000000{i}@c.us")).collect();
    for n in 0..4 {
        for s in &senders {
            let (status, body) = router.webhook(numbered(s, n)).await;
            assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("queued")), "{body}");
        }
    }
    router.signal("KILL");
    let _ = router.wait_exit().await;
    backend.set_status(200);
    let _router = Process::start(&setup, &data).await;
    let got = backend.wait_for(12, 15).await;
    check_complete_and_ordered(&got, &senders, 4);
}

#[tokio::test]
async fn graceful_restart_resumes_the_queue_and_keeps_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = fast(&backend);
    let data = dir.path().join("data");
    let router = Router::start(&setup, &data).await;
    let delivered = numbered("971570000001@c.us", 0);
    assert_eq!(router.webhook(delivered.clone()).await.1["status"], "routed");
    backend.set_status(503);
    assert_eq!(router.webhook(numbered("971570000001@c.us", 1)).await.1["status"], "queued");
    router.stop().await;

    backend.set_status(200);
    let router = Router::start(&setup, &data).await;
    let got = backend.wait_for(2, 10).await;
    assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), vec![0, 1]);
    // Dedupe keys survived the restart.
    assert_eq!(router.webhook(delivered).await.1, json!({"status": "duplicate", "tenant_id": 3}));
    router.stop().await;
    assert_eq!(backend.received().len(), 2);
}

#[tokio::test]
async fn the_same_message_twice_reaches_the_tenant_once() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let router = Router::start(&Setup::new(&backend), &dir.path().join("data")).await;
    let body = numbered("971580000001@c.us", 0);
    assert_eq!(router.webhook(body.clone()).await.1["status"], "routed");
    assert_eq!(router.webhook(body.clone()).await.1, json!({"status": "duplicate", "tenant_id": 3}));
    // message + message.any of the same message.
    let any = String::from_utf8(body.to_vec()).unwrap().replace("\"event\":\"message\"", "\"event\":\"message.any\"");
    assert_eq!(router.webhook(Bytes::from(any)).await.1["status"], "duplicate");

    // The GOWS double: one copy from the @lid, one from the @c.us, same key id.
    let alias = r#"{"event":"message","session":"default","payload":{"id":"false_999000111@lid_K0","from":"999000111@lid","fromMe":false,"body":"start_realty_2",
        "_data":{"key":{"remoteJidAlt":"971580000002@s.whatsapp.net"}}}}"#;
    assert_eq!(router.webhook(Bytes::from(alias)).await.1["tenant_id"], 2);
    let lid_copy = r#"{"event":"message","session":"default","payload":{"id":"false_999000111@lid_DOUBLE","from":"999000111@lid","fromMe":false,"body":"hi"}}"#;
    let cus_copy = r#"{"event":"message","session":"default","payload":{"id":"false_971580000002@c.us_DOUBLE","from":"971580000002@c.us","fromMe":false,"body":"hi"}}"#;
    assert_eq!(router.webhook(Bytes::from(lid_copy)).await.1["status"], "routed");
    assert_eq!(router.webhook(Bytes::from(cus_copy)).await.1["status"], "duplicate");
    let got = backend.received();
    assert_eq!(got.len(), 3, "first message, alias lock message, one copy of the double");
    assert_eq!(router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"duplicate\"}").await, 2.0);
    router.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_status(429);
    let router = Router::start(&fast(&backend), &dir.path().join("data")).await;
    assert_eq!(router.webhook(numbered("971590000001@c.us", 0)).await.1["status"], "queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.set_status(200);
    backend.wait_for(1, 10).await;
    let attempts = backend.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2, "one refused, one delivered");
    let gap = attempts[1].2 - attempts[0].2;
    // The schedule says 1 s; the tenant asked for 2 s.
    assert!(gap >= Duration::from_millis(1900), "{gap:?}");
    assert_eq!(attempts[0].0.header("webhook-id"), attempts[1].0.header("webhook-id"), "stable across retries");
    router.stop().await;
}

const TENANT_SECRET_NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TENANT_SECRET_OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const GLOBAL_SECRET: &str = "whsec_dGhpcyBpcyB0aGUgZ2xvYmFsIHRlc3Qga2V5IQ==";

/// Signatures checked by Python's own `hmac`, not by our code.
#[tokio::test]
async fn forwards_are_signed_per_standard_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_sections = format!("{FAST_RETRIES}\n");
    setup.url_template = setup.url_template.clone();
    setup.tenant_extra = |id| {
        if id == 1 {
            format!("signing_secret = \"{TENANT_SECRET_NEW}\"\nprevious_signing_secret = \"{TENANT_SECRET_OLD}\"")
        } else {
            String::new()
        }
    };
    let toml = setup
        .toml(&dir.path().join("data"))
        .replace("[forward]\n", &format!("[forward]\nsigning_secret = \"{GLOBAL_SECRET}\"\n"));
    let router = Router::start_toml(&toml).await;
    let addr = router.addr;
    for (sender, tenant) in [("971591000001@c.us", 1), ("971591000002@c.us", 2)] {
        let body = message(sender, &format!("start_realty_{tenant}"));
        let (status, _) = send(addr, "POST", "/api/gateway/waha", body, &[("x-api-key", API_KEY)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let got = backend.received();
    assert_eq!(got.len(), 2);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut cases = Vec::new();
    for r in &got {
        let ts: u64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(ts.abs_diff(now) < 60, "timestamp is seconds, now");
        let id = r.header("webhook-id").unwrap();
        assert!(id.starts_with("msg_") && !id.contains('.'), "{id}");
        let secrets = if r.tenant() == 1 { vec![TENANT_SECRET_NEW, TENANT_SECRET_OLD] } else { vec![GLOBAL_SECRET] };
        cases.push(json!({
            "secrets": secrets,
            "id": id,
            "ts": r.header("webhook-timestamp").unwrap(),
            "body": String::from_utf8(r.body.to_vec()).unwrap(),
            "header": r.header("webhook-signature").unwrap(),
        }));
    }
    let script = r#"
import base64, hashlib, hmac, json, sys
ok = 0
for c in json.load(sys.stdin):
    expected = []
    for s in c["secrets"]:
        key = base64.b64decode(s[len("whsec_"):])
        msg = (c["id"] + "." + c["ts"] + ".").encode() + c["body"].encode()
        expected.append("v1," + base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode())
    assert c["header"].split(" ") == expected, (c["header"], expected)
    ok += 1
print(ok)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&cases).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    router.stop().await;
}

/// One webhook over a kept-alive client, as WAHA sends them.
async fn post_with(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
    addr: std::net::SocketAddr,
    body: Bytes,
) -> (StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    let req = http::Request::post(format!("http://{addr}/api/gateway/waha"))
        .header("x-api-key", API_KEY)
        .body(http_body_util::Full::new(body))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Offers tenant 2 a steady load: `clients` senders, each sending one message
/// every `every` for `per_client` messages (open loop, so the router is not
/// driven to saturation and latency measures the request path, not a queue in
/// front of the CPU). Returns (answers per second, median latency).
async fn drive_healthy(
    addr: std::net::SocketAddr,
    base: u64,
    clients: u64,
    per_client: u32,
    every: Duration,
) -> (f64, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(async move {
                let client = client();
                let sender = format!("{}@c.us", base + c);
                let mut latencies = Vec::with_capacity(per_client as usize);
                for n in 0..per_client {
                    tokio::time::sleep_until((started + every * n).into()).await;
                    let text = if n == 0 { "start_realty_2".to_owned() } else { format!("seq={n}") };
                    let t = Instant::now();
                    let (status, body) = post_with(&client, addr, message(&sender, &text)).await;
                    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("routed")), "{body}");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    (all.len() as f64 / elapsed.as_secs_f64(), all[all.len() / 2])
}

/// Companion traffic: new senders with `tenant`'s link from `clients` loops,
/// paced, until `stop`; returns every answer time.
fn companion_traffic(
    addr: std::net::SocketAddr,
    tenant: u32,
    base: u64,
    clients: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Duration>>> {
    (0..clients)
        .map(|c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let sender = format!("{}@c.us", base + c * 100_000 + n);
                    let t = Instant::now();
                    let text = format!("start_realty_{tenant}");
                    let (status, body) =
                        send(addr, "POST", "/api/gateway/waha", message(&sender, &text), &[("x-api-key", API_KEY)])
                            .await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    answered.push(t.elapsed());
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                answered
            })
        })
        .collect()
}

/// One tenant's backend hangs; another's is healthy. The healthy tenant's
/// throughput and median latency stay within 10% of runs where the same side
/// traffic goes to a healthy tenant instead, measured in this same test: three
/// rounds of each, alternating, best of each compared (noise on a shared
/// machine only ever slows a round down).
#[tokio::test]
async fn a_hanging_tenant_does_not_slow_the_others() {
    // A measurement: run alone (`.ci/run` does, with --test-threads=1), not
    // beside the rest of the suite competing for the same two cores.
    if std::env::var_os("RUN_SLOW_TESTS").is_none() {
        eprintln!("skipped: set RUN_SLOW_TESTS=1 (the isolation measurement runs alone in .ci/run)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let healthy = Backend::start().await;
    let hanging = Backend::start().await;
    hanging.delay_ms.store(30_000, std::sync::atomic::Ordering::SeqCst);
    let setup = fast(&healthy);
    // Tenant 3 lives on the hanging backend; tenants 1 and 2 on the healthy one.
    let hang_url = format!("http://{}/tenants/3/whatsapp", hanging.addr);
    let toml = setup.toml(&dir.path().join("data")).replace(
        "[[tenants]]\nid = 3\nname = \"Tenant 3\"\n",
        &format!("[[tenants]]\nid = 3\nname = \"Tenant 3\"\nurl = \"{hang_url}\"\n"),
    );
    let router = Router::start_toml(&toml).await;
    let addr = router.addr;
    // 8 senders x one message every 10 ms = 800 webhooks/s offered, for 2 s a round.
    let (clients, per_client, every) = (8, 200, Duration::from_millis(10));
    drive_healthy(addr, 971_592_000_000, clients, 50, every).await; // warm-up
    let (mut baseline, mut with_hang, mut hang_answers) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..10u64 {
        let hang_round = round % 2 == 1;
        let side_tenant = if hang_round { 3 } else { 1 };
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let side = companion_traffic(addr, side_tenant, 971_400_000_000 + round * 10_000_000, 4, flag.clone());
        // Let the side traffic settle (for the hanging tenant: time out and open its breaker).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let measured = drive_healthy(addr, 971_593_000_000 + round * 1000, clients, per_client, every).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut answers = Vec::new();
        for h in side {
            answers.push(h.await.unwrap());
        }
        if hang_round {
            with_hang.push(measured);
            hang_answers.extend(answers);
        } else {
            baseline.push(measured);
        }
    }
    let best_rps = |runs: &[(f64, Duration)]| runs.iter().map(|r| r.0).fold(0.0, f64::max);
    let best_p50 = |runs: &[(f64, Duration)]| runs.iter().map(|r| r.1).min().unwrap();
    let (base_rps, base_p50) = (best_rps(&baseline), best_p50(&baseline));
    let (hang_rps, hang_p50) = (best_rps(&with_hang), best_p50(&with_hang));
    // After their first attempts (which wait `inline_timeout_ms` and open the
    // breaker), the hanging tenant's webhooks are parked without an attempt: the
    // answer costs a flush, not a wait on the tenant.
    let mut late: Vec<Duration> = hang_answers.iter().flat_map(|a| a.iter().skip(3).copied()).collect();
    late.sort();
    let late_p99 = late[late.len() * 99 / 100];
    println!(
        "healthy tenant, best of 5: beside a healthy tenant {base_rps:.0} req/s p50 {base_p50:?}; beside a hanging \
         tenant {hang_rps:.0} req/s p50 {hang_p50:?}; throughput ratio {:.3}, p50 ratio {:.3}; hanging tenant: {} \
         webhooks answered, p99 {late_p99:?} once its breaker was open",
        hang_rps / base_rps,
        hang_p50.as_secs_f64() / base_p50.as_secs_f64(),
        hang_answers.iter().map(Vec::len).sum::<usize>(),
    );
    assert!(hang_rps >= base_rps * 0.9, "throughput {hang_rps:.0} vs {base_rps:.0}");
    assert!(hang_p50 <= base_p50.mul_f64(1.1), "p50 {hang_p50:?} vs {base_p50:?}");
    assert!(late_p99 < Duration::from_millis(250), "webhooks for the hanging tenant were held: p99 {late_p99:?}");
    assert!(hanging.attempts.lock().unwrap().len() <= 60, "the breaker limits attempts on the hanging tenant");
    router.stop().await;
}

/// A full or unwritable disk: WAHA gets 503 and retries; nothing is half
/// written, and the retries succeed once the disk is back.
#[tokio::test]
async fn a_failing_store_gets_503_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.set_status(503);
    let router = Router::start(&fast(&backend), &dir.path().join("data")).await;
    let sender = "971597000001@c.us";
    let first = numbered(sender, 0);

    router.app.store.set_fail_writes(true);
    let (status, body) = router.webhook(first.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(router.app.locks.lookup(whatsapp_router::sender::SenderKey::Phone(971597000001)).await.unwrap().is_none());
    router.app.store.set_fail_writes(false);
    // WAHA's retry: the lock is made, the forward fails, the message is parked.
    assert_eq!(router.webhook(first).await.1["status"], "queued");

    router.app.store.set_fail_writes(true);
    let second = numbered(sender, 1);
    assert_eq!(router.webhook(second.clone()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    router.app.store.set_fail_writes(false);
    assert_eq!(router.webhook(second).await.1["status"], "queued");
    assert_eq!(router.metric("whatsapp_router_queue_parked").await, 2.0);

    backend.set_status(200);
    let got = backend.wait_for(2, 10).await;
    assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"store_error\"}").await, 2.0);
    router.stop().await;
}

/// A tenant's 4xx (other than 408/429) is permanent: the message is a dead
/// letter at once, visible through the API with the answer; replay delivers it.
#[tokio::test]
async fn permanent_refusals_are_dead_letters_that_can_be_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let router = Router::start(&fast(&backend), &dir.path().join("data")).await;
    let admin = admin_token();
    backend.set_status(422);
    let first = numbered("971598000001@c.us", 0);
    let (status, body) = router.webhook(first.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "dead_lettered", "{body}");
    assert_eq!(body["tenant_status"], 422);
    let id = body["delivery_id"].as_u64().unwrap();
    // The next message of the sender is not held behind a dead letter.
    backend.set_status(200);
    assert_eq!(router.webhook(numbered("971598000001@c.us", 1)).await.1["status"], "routed");

    let (status, page) = router.admin("GET", "/api/gateway/deliveries?state=dead", None, &admin).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let dead = &page["deliveries"][0];
    assert_eq!(dead["id"], id);
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["tenant_id"], 3);
    assert_eq!(dead["last_status"], 422);
    assert_eq!(dead["response_body"], "{\"error\":\"tenant says no\"}");
    assert_eq!(dead["sender"], "971598000001");
    assert_eq!(page["next_after"], serde_json::Value::Null);
    assert_eq!(router.metric("whatsapp_router_queue_dead").await, 1.0);
    // Filters and paging.
    let (_, other) = router.admin("GET", "/api/gateway/deliveries?state=dead&tenant_id=1", None, &admin).await;
    assert_eq!(other["deliveries"], json!([]));
    let (_, parked) = router.admin("GET", "/api/gateway/deliveries?state=parked&limit=10", None, &admin).await;
    assert_eq!(parked["deliveries"], json!([]));
    for bad in ["state=gone", "limit=0", "limit=501", "tenant_id=x", "after=-1", "colour=red"] {
        let (status, _) = router.admin("GET", &format!("/api/gateway/deliveries?{bad}"), None, &admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }

    let (status, answer) = router.admin("POST", &format!("/api/gateway/deliveries/{id}/replay"), None, &admin).await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("queued")), "{answer}");
    let got = backend.wait_for(2, 10).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].body, first, "the replayed message, byte for byte");
    let (status, _) = router.admin("POST", &format!("/api/gateway/deliveries/{id}/replay"), None, &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "replayed once");

    // A tenant-wide replay.
    backend.set_status(404);
    for n in 0..3 {
        let sender = format!("97159800010{n}@c.us");
        assert_eq!(router.webhook(numbered(&sender, 0)).await.1["status"], "dead_lettered");
    }
    backend.set_status(200);
    let (_, answer) = router.admin("POST", "/api/gateway/tenants/3/replay", None, &admin).await;
    assert_eq!(answer, json!({"status": "queued", "tenant_id": 3, "replayed": 3}));
    assert_eq!(backend.wait_for(5, 10).await.len(), 5);
    // Tenant tokens cannot see the queue.
    let tenant_token = tenant_token(3);
    let (status, _) = router.admin("GET", "/api/gateway/deliveries", None, &tenant_token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    router.stop().await;
}

/// Concurrent messages of one sender to a healthy tenant wait for each other
/// (per-sender order) and all go inline: none is parked in the outbox.
#[tokio::test]
async fn a_burst_from_one_sender_goes_inline_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    backend.delay_ms.store(20, std::sync::atomic::Ordering::SeqCst);
    let router = std::sync::Arc::new(Router::start(&Setup::new(&backend), &dir.path().join("data")).await);
    assert_eq!(router.webhook(numbered("971599000001@c.us", 0)).await.1["status"], "routed");
    let burst: Vec<_> = (1..=10)
        .map(|n| {
            let router = router.clone();
            tokio::spawn(async move { router.webhook(numbered("971599000001@c.us", n)).await })
        })
        .collect();
    for answer in burst {
        let (status, body) = answer.await.unwrap();
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("routed")), "{body}");
    }
    assert_eq!(backend.received().len(), 11);
    assert_eq!(router.metric("whatsapp_router_queue_parked").await, 0.0);
    assert_eq!(router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"queued\"}").await, 0.0);
    std::sync::Arc::try_unwrap(router).ok().unwrap().stop().await;
}
