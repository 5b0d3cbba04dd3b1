//! Property tests: random sequences of first contacts, follow-ups, relocks,
//! admin deletes and reassigns, and restarts, checked against a model (a map
//! sender -> tenant) after every step. Two variants: the library directly
//! (`Store` + `Locks` + `route::decide`, as `ingest` uses them) for many cases,
//! and the whole HTTP path with a recording backend for a few.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use whatsapp_router::locks::Locks;
use whatsapp_router::route::{decide, Decision, Sender, TenantId};
use whatsapp_router::sender::SenderKey;
use whatsapp_router::store::Store;

use super::assert_counts_match;
use crate::support::*;

/// Tenants that exist; links may also name 9, which does not.
const TENANTS: [TenantId; 3] = [1, 2, 3];

/// Every key a case can touch: four phones and three LIDs.
fn universe() -> Vec<SenderKey> {
    (1..=4).map(SenderKey::Phone).chain((1..=3).map(SenderKey::Lid)).collect()
}

#[derive(Clone, Debug)]
enum Event {
    /// A message; `link` is the tenant in its deep link, if any.
    Message {
        sender: Sender,
        link: Option<u64>,
    },
    Delete(SenderKey),
    Reassign(SenderKey, TenantId),
    Restart,
}

fn key() -> impl Strategy<Value = SenderKey> {
    prop_oneof![(1..=4u64).prop_map(SenderKey::Phone), (1..=3u64).prop_map(SenderKey::Lid)]
}

/// A sender, sometimes named in both key spaces (a LID with its phone).
fn sender() -> impl Strategy<Value = Sender> {
    prop_oneof![
        3 => key().prop_map(|key| Sender { key, alias: None }),
        1 => (1..=3u64, 1..=4u64).prop_map(|(l, p)| Sender { key: SenderKey::Lid(l), alias: Some(SenderKey::Phone(p)) }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let link = prop_oneof![2 => Just(None), 4 => (1..=3u64).prop_map(Some), 1 => Just(Some(9))];
    prop_oneof![
        8 => (sender(), link).prop_map(|(sender, link)| Event::Message { sender, link }),
        2 => key().prop_map(Event::Delete),
        2 => (key(), 1..=3u32).prop_map(|(k, t)| Event::Reassign(k, t)),
        1 => Just(Event::Restart),
    ]
}

/// The model of a message: the tenant it must be forwarded to, and the map after it.
fn model_message(model: &mut HashMap<SenderKey, TenantId>, sender: Sender, link: Option<u64>) -> Option<TenantId> {
    let keys: Vec<SenderKey> = sender.keys().collect();
    let holder = match keys.iter().find_map(|k| model.get(k).copied()) {
        Some(t) => t,
        None => link.and_then(|l| TenantId::try_from(l).ok()).filter(|t| TENANTS.contains(t))?,
    };
    for k in keys {
        model.entry(k).or_insert(holder);
    }
    Some(holder)
}

/// What `ingest` does with a message, minus HTTP and delivery: returns the
/// tenant it would forward to.
async fn route_message(locks: &Locks, sender: Sender, link: Option<u64>) -> Option<TenantId> {
    let current = locks.lookup_sender(&sender).await.unwrap();
    match decide(link, true, current, |t| TENANTS.contains(&t)) {
        Decision::Skip(_) => None,
        Decision::Forward { tenant, .. } => {
            locks.join_alias(sender, tenant).await.unwrap();
            Some(tenant)
        }
        Decision::Lock { tenant } => Some(locks.lock(sender, tenant).await.unwrap().tenant),
    }
}

/// Opens the store, waiting for a previous instance's flusher thread (which
/// holds sled's file lock for a moment after the drop) to let go.
fn open(dir: &std::path::Path) -> (Arc<Store>, Locks) {
    let mut tries = 0;
    let store = loop {
        match Store::open(dir) {
            Ok(store) => break Arc::new(store),
            Err(e) if tries < 500 => {
                tries += 1;
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    };
    let locks = Locks::new(Arc::clone(&store));
    (store, locks)
}

async fn run_library_case(events: Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (mut store, mut locks) = open(&db);
    let mut model: HashMap<SenderKey, TenantId> = HashMap::new();
    for (step, event) in events.into_iter().enumerate() {
        match event {
            Event::Message { sender, link } => {
                let expected = model_message(&mut model, sender, link);
                let forwarded = route_message(&locks, sender, link).await;
                assert_eq!(forwarded, expected, "step {step}: forwarded to the wrong tenant");
            }
            Event::Delete(key) => {
                assert_eq!(locks.delete(key, "prop").await.unwrap(), model.remove(&key), "step {step}: delete");
            }
            Event::Reassign(key, tenant) => {
                assert_eq!(
                    locks.reassign(key, tenant, "prop").await.unwrap(),
                    model.insert(key, tenant),
                    "step {step}"
                );
            }
            Event::Restart => {
                store.flush().unwrap();
                drop(locks);
                drop(store);
                (store, locks) = open(&db);
            }
        }
        for key in universe() {
            let want = model.get(&key).copied();
            assert_eq!(store.get_lock(key).unwrap(), want, "step {step}: store, {key}");
            assert_eq!(locks.lookup(key).await.unwrap(), want, "step {step}: cache, {key}");
        }
        assert_counts_match(&store);
    }
}

/// Store, cache and model agree after every step; no message goes anywhere
/// but the model's lock; the counters always equal a recount.
#[test]
fn store_cache_and_model_agree_sans_http() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut runner = TestRunner::new(PropConfig { cases: 96, failure_persistence: None, ..PropConfig::default() });
    runner
        .run(&proptest::collection::vec(event(), 1..40), |events| {
            rt.block_on(run_library_case(events));
            Ok(())
        })
        .unwrap();
}

/// The same through the real server: webhooks, the admin API, graceful
/// restarts; the backend checks every forward's tenant (path and header).
#[test]
fn store_cache_and_model_agree_over_http() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let phone = (1..=4u64).prop_map(|p| Sender { key: SenderKey::Phone(971_550_000_000 + p), alias: None });
    let link = prop_oneof![Just(None), (1..=3u64).prop_map(Some), Just(Some(9))];
    let http_event = prop_oneof![
        8 => (phone.clone(), link).prop_map(|(sender, link)| Event::Message { sender, link }),
        2 => phone.clone().prop_map(|s| Event::Delete(s.key)),
        2 => (phone, 1..=3u32).prop_map(|(s, t)| Event::Reassign(s.key, t)),
        1 => Just(Event::Restart),
    ];
    let mut runner = TestRunner::new(PropConfig { cases: 6, failure_persistence: None, ..PropConfig::default() });
    runner
        .run(&proptest::collection::vec(http_event, 1..24), |events| {
            rt.block_on(run_http_case(events));
            Ok(())
        })
        .unwrap();
}

async fn run_http_case(events: Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let mut router = Router::start(&setup, &data).await;
    let admin = admin_token();
    let mut model: HashMap<SenderKey, TenantId> = HashMap::new();
    // The tenant each forwarded message must reach, by its text.
    let mut expected_forwards: HashMap<String, TenantId> = HashMap::new();
    for (step, event) in events.into_iter().enumerate() {
        match event {
            Event::Message { sender, link } => {
                let marker = format!("step{step}");
                let text = link.map_or_else(|| marker.clone(), |l| format!("start_realty_{l} {marker}"));
                let expected = model_message(&mut model, sender, link);
                let (status, body) = router.webhook(message(&format!("{}@c.us", sender.key), &text)).await;
                assert_eq!(status, http::StatusCode::OK, "step {step}: {body}");
                match expected {
                    Some(t) => {
                        assert_eq!(
                            (body["status"].as_str(), body["tenant_id"].as_u64()),
                            (Some("routed"), Some(t.into()))
                        );
                        expected_forwards.insert(marker, t);
                    }
                    None => assert_eq!(body["status"], "unrouted", "step {step}: {body}"),
                }
            }
            Event::Delete(key) => {
                let (status, body) =
                    router.admin("DELETE", &format!("/api/gateway/user/{key}/mapping"), None, &admin).await;
                let previous = model.remove(&key);
                assert_eq!(
                    body["previous_tenant_id"].as_u64(),
                    previous.map(u64::from),
                    "step {step}: {status} {body}"
                );
            }
            Event::Reassign(key, tenant) => {
                let body = serde_json::json!({"tenant_id": tenant});
                let path = format!("/api/gateway/user/{key}/mapping");
                let (status, answer) = router.admin("PUT", &path, Some(body), &admin).await;
                assert_eq!(status, http::StatusCode::OK, "step {step}: {answer}");
                assert_eq!(answer["previous_tenant_id"].as_u64(), model.insert(key, tenant).map(u64::from));
            }
            Event::Restart => {
                router.stop().await;
                router = Router::start(&setup, &data).await;
            }
        }
        for (key, tenant) in &model {
            assert_eq!(router.app.store.get_lock(*key).unwrap(), Some(*tenant), "step {step}: store");
            assert_eq!(router.app.locks.lookup(*key).await.unwrap(), Some(*tenant), "step {step}: cache");
        }
        assert_counts_match(&router.app.store);
    }
    // Every forward reached the model's tenant, by path and by header, once.
    let got = backend.received();
    assert_eq!(got.len(), expected_forwards.len(), "one forward per routed message");
    for r in &got {
        let text: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let marker = text["payload"]["body"].as_str().unwrap().rsplit(' ').next().unwrap().to_owned();
        let want = expected_forwards[&marker];
        assert_eq!(r.tenant(), want, "{marker}: path");
        assert_eq!(r.header("x-gateway-tenant-id"), Some(want.to_string().as_str()), "{marker}: header");
    }
    router.stop().await;
}
