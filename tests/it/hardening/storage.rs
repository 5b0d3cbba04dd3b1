//! Storage faults: a disk that fails writes (injected through the store) or
//! fills up for real (a small tmpfs, where the test may mount one). Webhooks
//! get 503 while it lasts, nothing half-written survives, and the router
//! recovers once the disk does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use rand::Rng;
use whatsapp_router::store::{DeliveryState, Store};

use super::assert_counts_match;
use crate::delivery::{check_complete_and_ordered, numbered, FAST_RETRIES};
use crate::support::*;

/// Sends one sender's messages 0..n, each retried (same bytes, like WAHA)
/// until it gets a 200. Returns the tenant the first one was acknowledged with.
async fn waha(router: Arc<Router>, sender: String, n: usize) -> (String, u64) {
    let mut tenant = None;
    for i in 0..n {
        loop {
            let (status, body) = router.webhook(numbered(&sender, i)).await;
            if status == StatusCode::OK {
                assert!(matches!(body["status"].as_str(), Some("routed" | "queued" | "duplicate")), "{body}");
                let t = body["tenant_id"].as_u64().unwrap();
                assert_eq!(*tenant.get_or_insert(t), t, "{sender} #{i}: acknowledged with another tenant");
                break;
            }
            assert!(matches!(status.as_u16(), 503 | 409), "{sender} #{i}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (sender, tenant.unwrap())
}

/// Writes fail at random moments (and the tenant fails now and then) while six
/// senders write: every acknowledged message is delivered, in order; counters
/// equal a recount; the outbox is empty at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_store_failures_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_sections = FAST_RETRIES.to_owned();
    let router = Arc::new(Router::start(&setup, &dir.path().join("data")).await);
    let senders: Vec<String> = (0..6).map(|i| format!("97157300000{i}@c.us")).collect();
    let per_sender = 40;
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (router, stop, status) = (Arc::clone(&router), stop.clone(), backend.status.clone());
        tokio::spawn(async move {
            let mut flips = 0;
            while !stop.load(Ordering::SeqCst) {
                // The first contacts always meet a failing disk; then at random.
                let (fail, tenant_down, pause) = {
                    let mut rng = rand::thread_rng();
                    let first = flips == 0;
                    (first || rng.gen_bool(0.4), first || rng.gen_bool(0.4), rng.gen_range(2..20))
                };
                router.app.store.set_fail_writes(fail);
                status.store(if tenant_down { 503 } else { 200 }, Ordering::SeqCst);
                flips += 1;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            router.app.store.set_fail_writes(false);
            flips
        })
    };
    let clients: Vec<_> =
        senders.iter().map(|s| tokio::spawn(waha(Arc::clone(&router), s.clone(), per_sender))).collect();
    let mut locked = HashMap::new();
    for c in clients {
        let (sender, tenant) = tokio::time::timeout(Duration::from_secs(60), c).await.expect("clients finish").unwrap();
        locked.insert(sender, tenant);
    }
    stop.store(true, Ordering::SeqCst);
    let flips = flapper.await.unwrap();
    backend.set_status(200);

    let store_errors = router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"store_error\"}").await;
    assert!(store_errors > 0.0, "no write ever failed: the test tested nothing ({flips} flips)");
    for (sender, tenant) in &locked {
        let key = whatsapp_router::sender::parse_user_input(sender).unwrap();
        assert_eq!(router.app.store.get_lock(key).unwrap(), Some(*tenant as u32), "{sender}");
    }
    let got = backend.wait_for(senders.len() * per_sender, 30).await;
    let duplicates = check_complete_and_ordered(&got, &senders, per_sender);
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.app.delivery.parked() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(router.app.delivery.parked(), 0, "lanes left behind");
    // A record written but not flushed (503) must not stay behind: a restart
    // would deliver it again, after the sender's later messages.
    assert_eq!(router.app.store.deliveries(DeliveryState::Parked, 0).count(), 0, "outbox records left behind");
    assert_eq!(
        router.app.store.deliveries(DeliveryState::Dead, 0).count(),
        0,
        "dead letters for unacknowledged messages"
    );
    assert_counts_match(&router.app.store);
    println!(
        "flapping store: {flips} flips, {store_errors} webhooks refused with 503, {} delivered, {duplicates} duplicates",
        got.len()
    );
    Arc::into_inner(router).expect("clients are done").stop().await;
}

/// Unmounts the test's tmpfs however the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` where mounting is not allowed.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "cannot mount a tmpfs ({}); the injected variant covers this",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

/// A real full disk: the data dir on a 16 MiB tmpfs, filled up while the
/// tenant is down (so every message is parked). Webhooks get 503, then the
/// watchdog stops the router; restarted once space returns, it accepts WAHA's
/// retry, and after a crash every acknowledged lock is there, the counters
/// equal a recount, and every parked message is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_503_and_recovers() {
    if super::skip_slow("a_full_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), "16m") else { return };
    let data = mnt.0.join("data");
    let backend = Backend::start().await;
    backend.set_status(503);
    let mut setup = Setup::new(&backend);
    setup.extra_sections = FAST_RETRIES.to_owned();
    let router = Process::start(&setup, &data).await;
    // Leave about 1 MiB free.
    let filler = mnt.0.join("filler");
    let fill = free_bytes(&mnt.0).saturating_sub(1 << 20);
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();

    let padding = "x".repeat(32 * 1024);
    let (mut acked, mut refused, mut first_refused) = (HashMap::new(), 0, None);
    for i in 0..400 {
        let sender = format!("9715740{i:05}@c.us");
        let body = message(&sender, &format!("start_realty_{} {padding}", 1 + i % 3));
        match super::crash::try_webhook(router.addr, body.clone()).await {
            Some((StatusCode::OK, answer)) => {
                assert_eq!(answer["status"], "queued", "{answer}");
                acked.insert(sender, answer["tenant_id"].as_u64().unwrap());
            }
            Some((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                refused += 1;
                first_refused.get_or_insert(body);
                if refused >= 5 {
                    break;
                }
            }
            // No answer: sled blocked the request, or the watchdog stopped the router.
            None => {
                first_refused.get_or_insert(body);
                break;
            }
            Some((other, answer)) => panic!("{other}: {answer}"),
        }
    }
    let retry = first_refused.expect("the disk never filled up");
    println!("full disk: {} messages parked before the disk filled, then {refused} refused with 503", acked.len());

    // sled keeps its first I/O error until reopened: the watchdog stops the
    // router (exit 1, which systemd restarts) instead of answering 503 forever.
    let mut router = router;
    // Three probes, each up to 2 s apart plus a 5 s deadline.
    let deadline = Instant::now() + Duration::from_secs(45);
    let exited = loop {
        if let Some(status) = router.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the router kept running on a store that takes no writes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exited.code(), Some(1), "{}", router.log());
    assert!(router.log().contains("the store stopped taking writes"), "{}", router.log());

    // Space returns, the supervisor restarts it: WAHA's retry is accepted.
    std::fs::remove_file(&filler).unwrap();
    let router = Process::start(&setup, &data).await;
    let (status, answer) = router.webhook(retry).await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("queued")), "{answer}");

    // After a crash, everything acknowledged is there and consistent.
    router.signal("KILL");
    let _ = router.wait_exit().await;
    {
        let store = Store::open(&data.join("db")).unwrap();
        for (sender, tenant) in &acked {
            let key = whatsapp_router::sender::parse_user_input(sender).unwrap();
            assert_eq!(store.get_lock(key).unwrap(), Some(*tenant as u32), "{sender}");
        }
        assert_counts_match(&store);
        let parked = store.deliveries(DeliveryState::Parked, 0).count();
        assert!(parked > acked.len(), "{parked} parked for {} acknowledged", acked.len());
    }
    backend.set_status(200);
    let _router = Process::start(&setup, &data).await;
    let got = backend.wait_for(acked.len() + 1, 30).await;
    assert!(got.len() > acked.len(), "{} of {} delivered", got.len(), acked.len() + 1);
}
