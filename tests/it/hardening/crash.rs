//! Crash loop: the real binary under steady load, killed with SIGKILL at random
//! moments ten times and restarted each time. Afterwards every acknowledged lock
//! is there with its tenant, every acknowledged message reached the tenant at
//! least once (duplicates counted by `webhook-id`), and each sender's messages
//! first arrived in order.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::Rng;

use crate::delivery::{numbered, seq_of, FAST_RETRIES};
use crate::support::*;

const KILLS: usize = 10;
const SENDERS: usize = 8;

/// One webhook that may fail in any way a dying server fails: `None` for a
/// refused or reset connection or no answer within 5 s.
pub(super) async fn try_webhook(addr: SocketAddr, body: Bytes) -> Option<(StatusCode, serde_json::Value)> {
    let req = Request::post(format!("http://{addr}/api/gateway/waha"))
        .header("x-api-key", API_KEY)
        .body(Full::new(body))
        .unwrap();
    let answer = async {
        let resp = client().request(req).await.ok()?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
    };
    tokio::time::timeout(Duration::from_secs(5), answer).await.ok().flatten()
}

/// What a client was told: per sender, the highest acknowledged message and
/// the tenant its lock was acknowledged with.
#[derive(Default)]
struct Acks {
    last: HashMap<String, usize>,
    tenant: HashMap<String, u64>,
}

/// A WAHA-like client for one sender: sends message n+1 only after n was
/// acknowledged, and retries the same bytes on anything else, like WAHA.
async fn client_loop(sender: String, addr: Arc<Mutex<SocketAddr>>, acks: Arc<Mutex<Acks>>, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let body = numbered(&sender, n);
        loop {
            let target = *addr.lock().unwrap();
            match try_webhook(target, body.clone()).await {
                Some((StatusCode::OK, answer)) => {
                    let status = answer["status"].as_str().unwrap_or("");
                    assert!(matches!(status, "routed" | "queued" | "duplicate"), "{sender} #{n}: {answer}");
                    let mut acks = acks.lock().unwrap();
                    let tenant = answer["tenant_id"].as_u64().expect("acknowledged with a tenant");
                    let locked = *acks.tenant.entry(sender.clone()).or_insert(tenant);
                    assert_eq!(locked, tenant, "{sender} #{n}: acknowledged with another tenant");
                    acks.last.insert(sender.clone(), n);
                    break;
                }
                // 503 (store), 409 (in flight elsewhere), or a dead server: retry.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_loses_no_acknowledged_lock_or_message() {
    if super::skip_slow("sigkill_loop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_sections = FAST_RETRIES.to_owned();
    let data = dir.path().join("data");
    let mut router = Process::start(&setup, &data).await;
    let addr = Arc::new(Mutex::new(router.addr));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<String> = (0..SENDERS).map(|i| format!("9715710000{i:02}@c.us")).collect();
    let clients: Vec<_> = senders
        .iter()
        .map(|s| tokio::spawn(client_loop(s.clone(), addr.clone(), acks.clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    for kill in 0..KILLS {
        // A failing tenant for a few rounds, so parked messages are killed too.
        backend.set_status(if (3..6).contains(&kill) { 503 } else { 200 });
        let wait = rand::thread_rng().gen_range(200..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        router.signal("KILL");
        let status = router.wait_exit().await;
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed, not exited");
        router = Process::start(&setup, &data).await;
        *addr.lock().unwrap() = router.addr;
    }
    backend.set_status(200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c).await.expect("client finishes").unwrap();
    }
    let (last, tenants) = {
        let acks = acks.lock().unwrap();
        (acks.last.clone(), acks.tenant.clone())
    };
    let acknowledged: usize = last.values().map(|n| n + 1).sum();

    // Every acknowledged lock exists with its tenant.
    let bearer = format!("Bearer {}", admin_token());
    for (sender, tenant) in &tenants {
        let path = format!("/api/gateway/user/{}/tenant", sender.trim_end_matches("@c.us"));
        let (status, body) = send(router.addr, "GET", &path, Bytes::new(), &[("authorization", &bearer)]).await;
        assert_eq!((status, body["tenant_id"].as_u64()), (StatusCode::OK, Some(*tenant)), "{sender}");
    }
    // Every acknowledged message arrives (the queue may still be retrying).
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = backend.received();
        let unique: HashSet<&str> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
        if unique.len() >= acknowledged || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut seen = HashSet::new();
    let mut first_arrivals: HashMap<String, Vec<usize>> = HashMap::new();
    let mut duplicates = Vec::new();
    for r in &got {
        let sender = r.header("x-gateway-sender").unwrap().to_owned();
        let tenant: u64 = r.header("x-gateway-tenant-id").unwrap().parse().unwrap();
        assert_eq!(Some(&tenant), tenants.get(&format!("{sender}@c.us")), "{sender} forwarded to another tenant");
        assert_eq!(u64::from(r.tenant()), tenant, "path and header agree");
        if seen.insert(r.header("webhook-id").unwrap().to_owned()) {
            first_arrivals.entry(sender).or_default().push(seq_of(r));
        } else {
            duplicates.push(format!("{sender}#{}", seq_of(r)));
        }
    }
    for sender in &senders {
        let digits = sender.trim_end_matches("@c.us");
        let expected: Vec<usize> = (0..=last[sender]).collect();
        assert_eq!(first_arrivals[digits], expected, "{digits}: complete and in order");
    }
    println!(
        "crash loop: {KILLS} SIGKILLs in {:.1?}; {acknowledged} messages acknowledged from {SENDERS} senders, \
         {} deliveries, {} duplicates (same webhook-id): {duplicates:?}",
        started.elapsed(),
        got.len(),
        duplicates.len(),
    );
}
