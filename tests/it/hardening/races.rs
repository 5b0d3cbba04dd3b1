//! Concurrency: many first contacts racing for the same senders (and for the
//! two key spaces of one person), with admin deletes racing each other and
//! follow-ups in between. Exactly one winner each time; every answer names the
//! winner; the counters equal a recount afterwards.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use whatsapp_router::locks::Locks;
use whatsapp_router::route::{Sender, TenantId};
use whatsapp_router::sender::SenderKey;
use whatsapp_router::store::Store;

use super::{assert_counts_match, recount};
use crate::support::*;

const TENANTS: u32 = 6;
const ROUNDS: usize = 5;

/// A person: a phone, and for some also the LID that names them (NOWEB/GOWS).
#[derive(Clone, Copy)]
struct Group {
    phone: u64,
    lid: Option<u64>,
}

impl Group {
    fn keys(self) -> Vec<SenderKey> {
        std::iter::once(SenderKey::Phone(self.phone)).chain(self.lid.map(SenderKey::Lid)).collect()
    }
}

/// A first message with `tenant`'s link; `via_lid` sends it from the LID with
/// the phone as `remoteJidAlt`, as NOWEB does.
fn first_message(g: Group, tenant: u32, via_lid: bool, n: usize) -> Bytes {
    match (g.lid, via_lid) {
        (Some(lid), true) => Bytes::from(format!(
            r#"{{"event":"message","session":"default","payload":{{"id":"false_{lid}@lid_RACE{n}","from":"{lid}@lid","fromMe":false,"body":"start_realty_{tenant}","_data":{{"key":{{"remoteJidAlt":"{}@s.whatsapp.net"}}}}}}}}"#,
            g.phone
        )),
        _ => message(&format!("{}@c.us", g.phone), &format!("start_realty_{tenant}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_contacts_have_one_winner_and_counts_hold() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.tenants = 1..=TENANTS;
    setup.extra_sections = crate::delivery::FAST_RETRIES.to_owned();
    let router = Arc::new(Router::start(&setup, &dir.path().join("data")).await);
    let admin = admin_token();
    let groups: Vec<Group> = (0..16u64)
        .map(|i| Group { phone: 971_560_000_000 + i, lid: (i % 2 == 0).then_some(880_000_000 + i) })
        .collect();
    // The tenant each group is locked to, as far as the test knows.
    let mut held: HashMap<u64, TenantId> = HashMap::new();
    let mut n = 0;
    for round in 0..ROUNDS {
        let sent_before = backend.received().len();
        let mut tasks = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for tenant in 1..=TENANTS {
                n += 1;
                let body = first_message(*g, tenant, tenant % 2 == 0, n);
                let router = Arc::clone(&router);
                tasks.push(tokio::spawn(async move { (gi, router.webhook(body).await) }));
            }
        }
        let mut answers: HashMap<usize, Vec<u64>> = HashMap::new();
        let sent = tasks.len();
        for t in tasks {
            let (gi, (status, body)) = t.await.unwrap();
            // A sender's concurrent messages queue behind the first one (per-sender order).
            let accepted = matches!(body["status"].as_str(), Some("routed" | "queued"));
            assert!(status == StatusCode::OK && accepted, "round {round}: {status} {body}");
            answers.entry(gi).or_default().push(body["tenant_id"].as_u64().unwrap());
        }
        let got = backend.wait_for(sent_before + sent, 20).await;
        assert_eq!(got.len(), sent_before + sent, "round {round}: every accepted message delivered once");
        let new_sessions = got[sent_before..]
            .iter()
            .filter(|r| r.header("x-gateway-new-session") == Some("true"))
            .map(|r| r.header("x-gateway-sender").unwrap().to_owned())
            .collect::<Vec<_>>();
        for (gi, g) in groups.iter().enumerate() {
            let tenants = &answers[&gi];
            let winner = tenants[0] as TenantId;
            assert!(tenants.iter().all(|t| *t == u64::from(winner)), "round {round}, group {gi}: {tenants:?}");
            for key in g.keys() {
                assert_eq!(router.app.store.get_lock(key).unwrap(), Some(winner), "round {round}: {key}");
                assert_eq!(router.app.locks.lookup(key).await.unwrap(), Some(winner), "round {round}: {key}");
            }
            let created = new_sessions.iter().filter(|s| g.keys().iter().any(|k| k.to_string() == **s)).count();
            match held.insert(g.phone, winner) {
                Some(before) => {
                    assert_eq!(before, winner, "round {round}, group {gi}: a held lock moved");
                    assert_eq!(created, 0, "round {round}, group {gi}: a held lock was created again");
                }
                None => assert_eq!(created, 1, "round {round}, group {gi}: exactly one new session"),
            }
        }
        assert_counts_match(&router.app.store);

        // Deletes of every other group, two admins racing for each key, while
        // the senders keep writing without links.
        let mut deletes = Vec::new();
        let mut followups = Vec::new();
        for g in groups.iter().skip(round % 2).step_by(2) {
            for key in g.keys() {
                for _ in 0..2 {
                    let (router, admin) = (Arc::clone(&router), admin.clone());
                    deletes.push(tokio::spawn(async move {
                        router.admin("DELETE", &format!("/api/gateway/user/{key}/mapping"), None, &admin).await.0
                    }));
                }
            }
            let router = Arc::clone(&router);
            let body = message(&format!("{}@c.us", g.phone), "still there?");
            followups.push(tokio::spawn(async move { router.webhook(body).await }));
            held.remove(&g.phone);
        }
        let mut deleted = 0;
        for d in deletes {
            match d.await.unwrap() {
                StatusCode::OK => deleted += 1,
                StatusCode::NOT_FOUND => {}
                other => panic!("round {round}: delete answered {other}"),
            }
        }
        let deleted_keys: usize = groups.iter().skip(round % 2).step_by(2).map(|g| g.keys().len()).sum();
        assert_eq!(deleted, deleted_keys, "round {round}: exactly one of two racing deletes wins");
        for f in followups {
            let (status, body) = f.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(matches!(body["status"].as_str(), Some("routed" | "unrouted")), "{body}");
        }
        for g in groups.iter().skip(round % 2).step_by(2) {
            for key in g.keys() {
                assert_eq!(
                    router.app.locks.lookup(key).await.unwrap(),
                    None,
                    "round {round}: {key} stale after delete"
                );
            }
        }
        assert_counts_match(&router.app.store);
    }
    let (status, stats) = router.admin("GET", "/api/gateway/stats", None, &admin).await;
    assert_eq!(status, StatusCode::OK);
    let per_tenant: BTreeMap<String, u64> =
        recount(&router.app.store).into_iter().map(|(t, n)| (t.to_string(), n)).collect();
    assert_eq!(stats["gateway_stats"]["users_per_tenant"], serde_json::to_value(&per_tenant).unwrap());
    assert_eq!(stats["gateway_stats"]["total_users"], per_tenant.values().sum::<u64>());
    Arc::into_inner(router).expect("no task holds the router").stop().await;
}

/// The same race without HTTP, at volume: 200 senders, 8 tasks each, every
/// task locking with its own tenant; deletes between rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_races_in_the_library_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let locks = Arc::new(Locks::new(Arc::clone(&store)));
    for round in 0..4u64 {
        let mut tasks = Vec::new();
        for s in 0..200u64 {
            for tenant in 1..=8u32 {
                let locks = Arc::clone(&locks);
                // Odd senders also name their LID: the two key spaces race too.
                let sender = Sender { key: SenderKey::Phone(s), alias: (s % 2 == 1).then_some(SenderKey::Lid(s)) };
                tasks.push(tokio::spawn(async move { (s, locks.lock(sender, tenant).await.unwrap()) }));
            }
        }
        let mut by_sender: HashMap<u64, Vec<_>> = HashMap::new();
        for t in tasks {
            let (s, outcome) = t.await.unwrap();
            by_sender.entry(s).or_default().push(outcome);
        }
        for (s, outcomes) in by_sender {
            let winners: Vec<_> = outcomes.iter().filter(|o| o.created).collect();
            let expect_created = usize::from(round == 0 || s % 4 == round % 4);
            assert_eq!(winners.len(), expect_created, "round {round}, sender {s}: {outcomes:?}");
            let tenant = outcomes[0].tenant;
            assert!(outcomes.iter().all(|o| o.tenant == tenant), "round {round}, sender {s}: {outcomes:?}");
            assert_eq!(store.get_lock(SenderKey::Phone(s)).unwrap(), Some(tenant));
        }
        assert_counts_match(&store);
        // Delete a quarter of the senders (both keys) for the next round.
        let next = (round + 1) % 4;
        for s in (0..200u64).filter(|s| s % 4 == next) {
            locks.delete(SenderKey::Phone(s), "race").await.unwrap();
            if s % 2 == 1 {
                locks.delete(SenderKey::Lid(s), "race").await.unwrap();
            }
        }
        assert_counts_match(&store);
    }
}
