//! Routing through the real server: first contact, follow-ups, relocks, ignored
//! events, aliases, concurrency, restarts.

use std::collections::HashSet;

use http::StatusCode;
use serde_json::json;

use crate::support::*;

async fn setup() -> (tempfile::TempDir, Backend, Router) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let router = Router::start(&Setup::new(&backend), &dir.path().join("data")).await;
    (dir, backend, router)
}

#[tokio::test]
async fn first_contact_locks_and_later_messages_follow() {
    let (_dir, backend, router) = setup().await;
    let first = message("971509876543@c.us", "Hi start_realty_2 I want a flat");
    let (status, body) = router
        .post("/api/gateway/waha", first.clone(), &[("x-api-key", API_KEY), ("x-webhook-request-id", "req-1")])
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "routed", "tenant_id": 2})));

    let follow_up = message("971509876543:12@s.whatsapp.net", "when can I visit?");
    assert_eq!(router.webhook(follow_up.clone()).await, (StatusCode::OK, json!({"status": "routed", "tenant_id": 2})));

    let got = backend.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/tenants/2/whatsapp");
    assert_eq!(got[0].body, first, "body forwarded byte for byte");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(got[0].header("x-gateway-tenant-id"), Some("2"));
    assert_eq!(got[0].header("x-gateway-sender"), Some("971509876543"));
    assert_eq!(got[0].header("x-gateway-new-session"), Some("true"));
    assert_eq!(got[0].header("x-webhook-request-id"), Some("req-1"));
    assert_eq!(got[1].body, follow_up);
    assert_eq!(got[1].header("x-gateway-new-session"), None);
    assert_eq!(got[1].header("x-webhook-request-id"), None);
    assert_eq!(router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"locked_new\"}").await, 1.0);
    assert_eq!(router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"routed\"}").await, 1.0);
    router.stop().await;
}

#[tokio::test]
async fn first_contact_wins_over_a_later_link() {
    let (_dir, backend, router) = setup().await;
    router.webhook(message("971500000001@c.us", "start_realty_2")).await;
    let (status, body) = router.webhook(message("971500000001@c.us", "START_REALTY_3")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "routed", "tenant_id": 2})));
    assert!(backend.received().iter().all(|r| r.tenant() == 2));
    assert_eq!(
        router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"relock_refused\"}").await,
        1.0
    );
    router.stop().await;
}

#[tokio::test]
async fn senders_without_a_valid_link_are_not_forwarded() {
    let (_dir, backend, router) = setup().await;
    let cases = [
        ("hello", "no_deep_link"),
        ("start_realty_2x", "no_deep_link"),
        ("start_realty_99", "unknown_tenant"),
        ("start_realty_99999999999", "unknown_tenant"),
    ];
    for (text, reason) in cases {
        let (status, body) = router.webhook(message("971500000002@c.us", text)).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "unrouted", "reason": reason})), "{text}");
    }
    assert!(backend.received().is_empty());
    assert_eq!(
        router.metric("whatsapp_router_webhooks_total{event=\"message\",outcome=\"unknown_tenant\"}").await,
        2.0
    );
    // Nothing was locked: a valid link still works.
    let (_, body) = router.webhook(message("971500000002@c.us", "start_realty_3")).await;
    assert_eq!(body, json!({"status": "routed", "tenant_id": 3}));
    router.stop().await;
}

#[tokio::test]
async fn fixtures_that_are_never_routed() {
    let (_dir, backend, router) = setup().await;
    let cases = [
        ("waha/message.text.json", "from_me"),
        ("waha/message.any.fromme.json", "from_me"),
        ("waha/message.group.json", "group"),
        ("waha/message.newsletter.json", "channel"),
        ("waha/session.status.json", "event_ignored"),
    ];
    for (path, reason) in cases {
        let (status, body) = router.webhook(fixture(path)).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ignored", "reason": reason})), "{path}");
    }
    let broadcast = message("status@broadcast", "start_realty_2");
    assert_eq!(router.webhook(broadcast).await.1, json!({"status": "ignored", "reason": "broadcast"}));
    let no_sender = bytes::Bytes::from(r#"{"event":"message","payload":{"body":"start_realty_2"}}"#);
    assert_eq!(router.webhook(no_sender).await.1, json!({"status": "ignored", "reason": "no_sender"}));
    assert!(backend.received().is_empty());
    assert_eq!(
        router.metric("whatsapp_router_webhooks_total{event=\"session.status\",outcome=\"event_ignored\"}").await,
        1.0
    );
    router.stop().await;
}

#[tokio::test]
async fn lid_senders_and_chat_updates() {
    let (_dir, backend, router) = setup().await;
    let mut setup = Setup::new(&backend);
    setup.tenants = 40..=42;
    router.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(&setup, &dir.path().join("data")).await;

    // The lid fixture without a link is not routed; with one it locks.
    assert_eq!(router.webhook(fixture("waha/message.lid.json")).await.1["reason"], "no_deep_link");
    let (_, body) = router.webhook(fixture("waha/derived/deeplink_first_message.lid.json")).await;
    assert_eq!(body, json!({"status": "routed", "tenant_id": 42}));
    // Same session and WhatsApp key id as the derived fixture: the same message.
    assert_eq!(
        router.webhook(fixture("waha/message.lid.json")).await.1,
        json!({"status": "duplicate", "tenant_id": 42})
    );
    assert_eq!(router.webhook(message("4639135154355@lid", "and another")).await.1["tenant_id"], 42);
    let got = backend.received();
    assert_eq!(got[0].header("x-gateway-sender"), Some("4639135154355@lid"));

    // The phone with the same digits is someone else.
    assert_eq!(router.webhook(message("4639135154355@c.us", "hi")).await.1["reason"], "no_deep_link");

    // Chat updates follow a locked sender and never create a lock.
    let ack = bytes::Bytes::from(
        r#"{"event":"message.ack","payload":{"id":"true_4639135154355@lid_ABC","from":"971557357753@c.us","fromMe":true,"ack":3}}"#,
    );
    assert_eq!(router.webhook(ack).await.1, json!({"status": "routed", "tenant_id": 42}));
    // The reaction fixture's sender is not locked.
    assert_eq!(router.webhook(fixture("waha/message.reaction.json")).await.1["reason"], "not_locked");
    let cus = fixture("waha/derived/deeplink_first_message.cus.json");
    assert_eq!(router.webhook(cus).await.1, json!({"status": "routed", "tenant_id": 42}));
    let reaction = bytes::Bytes::from(
        r#"{"event":"message.reaction","payload":{"id":"false_5511988887777@c.us_K","from":"5511988887777@c.us","fromMe":false,"reaction":{"text":"x"},"body":"start_realty_40"}}"#,
    );
    assert_eq!(router.webhook(reaction).await.1, json!({"status": "routed", "tenant_id": 42}));
    assert_eq!(backend.received().len(), 5);
    router.stop().await;
}

#[tokio::test]
async fn both_forms_of_a_person_lock_together() {
    let (_dir, backend, router) = setup().await;
    let with_alias = bytes::Bytes::from(
        r#"{"event":"message","payload":{"id":"false_777000111@lid_K1","from":"777000111@lid","fromMe":false,"body":"start_realty_1",
            "_data":{"key":{"remoteJid":"777000111@lid","remoteJidAlt":"971509990000@s.whatsapp.net"}}}}"#,
    );
    assert_eq!(router.webhook(with_alias).await.1, json!({"status": "routed", "tenant_id": 1}));
    // The phone form now belongs to tenant 1 too, whatever link it sends.
    assert_eq!(router.webhook(message("971509990000@c.us", "start_realty_2")).await.1["tenant_id"], 1);

    // Phone locked first; a later LID message naming that phone joins the lock.
    router.webhook(message("971508880000@c.us", "start_realty_3")).await;
    let lid_later = bytes::Bytes::from(
        r#"{"event":"message","payload":{"from":"888000222@lid","fromMe":false,"body":"start_realty_2",
            "_data":{"key":{"remoteJidAlt":"971508880000@s.whatsapp.net"}}}}"#,
    );
    assert_eq!(router.webhook(lid_later).await.1["tenant_id"], 3);
    assert_eq!(router.webhook(message("888000222@lid", "start_realty_1")).await.1["tenant_id"], 3);
    assert_eq!(backend.received().len(), 5);
    router.stop().await;
}

#[tokio::test]
async fn concurrent_first_messages_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.tenants = 1..=64;
    let router = std::sync::Arc::new(Router::start(&setup, &dir.path().join("data")).await);
    let tasks: Vec<_> = (1..=64)
        .map(|tenant| {
            let router = router.clone();
            tokio::spawn(async move {
                router.webhook(message("971501234567@c.us", &format!("start_realty_{tenant}"))).await
            })
        })
        .collect();
    let mut winners = HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(["routed", "queued"].contains(&body["status"].as_str().unwrap()), "{body}");
        winners.insert(body["tenant_id"].as_u64().unwrap());
    }
    assert_eq!(winners.len(), 1, "every answer names the same tenant: {winners:?}");
    let winner = *winners.iter().next().unwrap() as u32;
    // One sender's messages go one at a time (per-sender order): the queue
    // delivers those that arrived while another was in flight.
    let got = backend.wait_for(64, 10).await;
    assert_eq!(got.len(), 64);
    assert!(got.iter().all(|r| r.tenant() == winner));
    assert_eq!(got.iter().filter(|r| r.header("x-gateway-new-session").is_some()).count(), 1);
    assert_eq!(router.metric("whatsapp_router_locks_created_total").await, 1.0);
    std::sync::Arc::try_unwrap(router).ok().unwrap().stop().await;
}

#[tokio::test]
async fn locks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let data = dir.path().join("data");
    let router = Router::start(&setup, &data).await;
    router.webhook(message("971507770000@c.us", "start_realty_3")).await;
    router.webhook(fixture("waha/derived/deeplink_first_message.lid.json")).await; // tenant 42 unknown here
    router.stop().await;

    let router = Router::start(&setup, &data).await;
    assert_eq!(
        router.webhook(message("971507770000@c.us", "start_realty_1")).await.1,
        json!({"status": "routed", "tenant_id": 3})
    );
    router.stop().await;
}
