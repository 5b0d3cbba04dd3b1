//! The optional auto-reply to senders without a deep link, with the backend
//! standing in for WAHA's `POST /api/sendText`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

const TEXT: &str = "Hi! Please open your agent's link to start.";

async fn replies(backend: &Backend, expected: usize) -> Vec<Received> {
    for _ in 0..100 {
        let got: Vec<_> = backend.received().into_iter().filter(|r| r.path == "/api/sendText").collect();
        if got.len() >= expected {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {expected} auto-replies");
}

#[tokio::test]
async fn unlinked_senders_get_one_reply_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_waha = format!(
        "base_url = \"http://{}/\"\nunlinked_reply_text = \"{TEXT}\"\nbase_api_key = \"waha-own-key-123\"\n",
        backend.addr
    );
    let router = Router::start(&setup, &dir.path().join("data")).await;
    let (_, answer) = router.webhook(message("971509000001@c.us", "hello?")).await;
    assert_eq!(answer, json!({"status": "unrouted", "reason": "no_deep_link"}));
    let got = replies(&backend, 1).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body, json!({"session": "default", "chatId": "971509000001@c.us", "text": TEXT}));
    assert_eq!(got[0].header("x-api-key"), Some("waha-own-key-123"));

    // Once a day: the second unlinked message gets nothing; linked and locked senders never do.
    router.webhook(message("971509000001@c.us", "hello??")).await;
    router.webhook(message("971509000002@c.us", "start_realty_1")).await;
    router.webhook(message("971509000002@c.us", "thanks")).await;
    router.webhook(message("4639135154300@lid", "hi")).await;
    let got = replies(&backend, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got_later: Vec<_> = backend.received().into_iter().filter(|r| r.path == "/api/sendText").collect();
    assert_eq!(got_later.len(), 2, "{got:?}");
    let second: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(second["chatId"], "4639135154300@lid");
    assert_eq!(router.metric("whatsapp_router_auto_replies_total{outcome=\"sent\"}").await, 2.0);

    // A failing WAHA: counted, not retried.
    backend.status.store(500, Ordering::SeqCst);
    router.webhook(message("971509000003@c.us", "anyone?")).await;
    for _ in 0..100 {
        if router.metric("whatsapp_router_auto_replies_total{outcome=\"failed\"}").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(router.metric("whatsapp_router_auto_replies_total{outcome=\"failed\"}").await, 1.0);
    router.stop().await;
}

#[tokio::test]
async fn half_a_configuration_is_an_error_naming_the_key() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&backend);
    setup.extra_waha = "base_url = \"http://127.0.0.1:3000\"\n".into();
    let e = whatsapp_router::Config::from_toml(&setup.toml(dir.path())).unwrap_err();
    assert_eq!(e.key, "waha.unlinked_reply_text");
    setup.extra_waha = format!("base_url = \"ftp://x\"\nunlinked_reply_text = \"{TEXT}\"\n");
    assert_eq!(whatsapp_router::Config::from_toml(&setup.toml(dir.path())).unwrap_err().key, "waha.base_url");
}
