//! Both runtime models through the real binary: start with two workers, route
//! first contacts and follow-ups over many connections, SIGTERM, exit 0.

use http::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn thread_per_core_routes_and_stops_on_sigterm() {
    check_model("thread-per-core").await;
}

#[tokio::test]
async fn multi_thread_routes_and_stops_on_sigterm() {
    check_model("multi-thread").await;
}

async fn check_model(model: &str) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_top = format!("runtime = \"{model}\"\nworkers = 2\n");
    let router = Process::start(&setup, &dir.path().join("data")).await;
    // Every `send` opens its own connection, so SO_REUSEPORT spreads them over
    // both workers; the lock a worker creates must be seen by the other.
    for i in 0..8 {
        let from = format!("97150000{i:04}@c.us");
        let (status, body) = router.webhook(message(&from, "start_realty_2")).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "routed", "tenant_id": 2})), "{model}");
        for _ in 0..2 {
            let (status, body) = router.webhook(message(&from, "start_realty_3 follow-up")).await;
            assert_eq!((status, body), (StatusCode::OK, json!({"status": "routed", "tenant_id": 2})), "{model}");
        }
    }
    let received = backend.received();
    assert_eq!(received.len(), 24, "{model}");
    assert!(received.iter().all(|r| r.tenant() == 2));
    router.signal("TERM");
    let exit = router.wait_exit().await;
    assert!(exit.success(), "{model}: {exit:?}");
    // The locks survived the shutdown flush: a restart routes without a link.
    let router = Process::start(&setup, &dir.path().join("data")).await;
    let (status, body) = router.webhook(message("971500000003@c.us", "hello again")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "routed", "tenant_id": 2})), "{model}");
    router.signal("TERM");
    assert!(router.wait_exit().await.success());
}

#[test]
fn reuseport_listeners_share_one_port_and_refuse_a_second_router() {
    let listeners = whatsapp_router::per_core::bind_reuseport("127.0.0.1:0".parse().unwrap(), 3).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    assert!(listeners.iter().all(|l| l.local_addr().unwrap() == addr));
    let second = whatsapp_router::per_core::bind_reuseport(addr, 2);
    assert!(matches!(second, Err(whatsapp_router::StartError::Bind { .. })), "a second router must not share the port");
}
