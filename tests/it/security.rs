//! Admin API security: every endpoint refuses missing, expired, forged and
//! `alg: none` tokens (401), tenant tokens stay on their own tenant (403), and
//! odd paths are 400, never a panic.

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use whatsapp_router::admin::token::{issue, now_secs, Claims, Role};
use whatsapp_router::secrets::Secret;

use crate::support::*;

/// Every admin endpoint, with a method it answers.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/api/gateway/stats"),
    ("GET", "/api/gateway/user/971509876543/tenant"),
    ("DELETE", "/api/gateway/user/971509876543/mapping"),
    ("PUT", "/api/gateway/user/971509876543/mapping"),
    ("GET", "/api/gateway/tenants"),
    ("GET", "/api/gateway/tenants/1"),
    ("PUT", "/api/gateway/tenants/1"),
    ("DELETE", "/api/gateway/tenants/1"),
    ("GET", "/api/gateway/tenants/1/link"),
    ("GET", "/api/gateway/tenants/1/qr.svg"),
    ("GET", "/api/gateway/tenants/1/qr.png"),
    ("GET", "/api/gateway/audit"),
    ("GET", "/api/gateway/backup"),
    ("GET", "/api/gateway/deliveries"),
    ("POST", "/api/gateway/deliveries/1/replay"),
    ("POST", "/api/gateway/tenants/1/replay"),
];

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn bad_tokens() -> Vec<(&'static str, String)> {
    let claims = Claims::new("mallory", Role::Admin, None, std::time::Duration::from_secs(600));
    let expired = Claims { exp: now_secs() - 5, ..claims.clone() };
    let payload = b64(&serde_json::to_string(&claims).unwrap());
    vec![
        ("expired", issue(&Secret::new(ADMIN_SECRET), &expired).unwrap()),
        ("forged", issue(&Secret::new("not-the-admin-secret-000"), &claims).unwrap()),
        ("alg none", format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#))),
        ("garbage", "not.a.token".to_owned()),
    ]
}

#[tokio::test]
async fn every_endpoint_needs_a_valid_token() {
    let (dir, backend) = (tempfile::tempdir().unwrap(), Backend::start().await);
    let router = Router::start(&Setup::new(&backend), &dir.path().join("data")).await;
    router.webhook(message("971509876543@c.us", "start_realty_1")).await;
    let tokens = bad_tokens();
    for (method, path) in ENDPOINTS {
        let body = Bytes::from_static(br#"{"tenant_id": 2, "name": "x"}"#);
        let (status, answer) = send(router.addr, method, path, body.clone(), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a token");
        assert_eq!(answer, json!({"status": "error", "error": "missing or wrong credentials"}));
        for (what, token) in &tokens {
            for header in [format!("Bearer {token}"), format!("Basic {token}")] {
                let (status, _) = send(router.addr, method, path, body.clone(), &[("authorization", &header)]).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with a {what} token ({header:.6})");
            }
        }
    }
    // Nothing was changed by the refused calls.
    assert_eq!(router.webhook(message("971509876543@c.us", "hi")).await.1["tenant_id"], 1);
    router.stop().await;
}

#[tokio::test]
async fn tenant_tokens_see_only_their_own_tenant() {
    let (dir, backend) = (tempfile::tempdir().unwrap(), Backend::start().await);
    let router = Router::start(&Setup::new(&backend), &dir.path().join("data")).await;
    router.webhook(message("971505000001@c.us", "start_realty_1")).await;
    router.webhook(message("971505000002@c.us", "start_realty_2")).await;
    let t1 = tenant_token(1);
    let forbidden = json!({"status": "error", "error": "this token may not access that resource"});
    for (method, path) in [
        ("GET", "/api/gateway/tenants/2/link"),
        ("GET", "/api/gateway/tenants/2/qr.svg"),
        ("GET", "/api/gateway/tenants/2/qr.png"),
        ("GET", "/api/gateway/user/971505000002/tenant"),
        ("GET", "/api/gateway/user/971505000003/tenant"),
        ("DELETE", "/api/gateway/user/971505000001/mapping"),
        ("PUT", "/api/gateway/user/971505000001/mapping"),
        ("GET", "/api/gateway/tenants"),
        ("GET", "/api/gateway/tenants/1"),
        ("PUT", "/api/gateway/tenants/1"),
        ("DELETE", "/api/gateway/tenants/2"),
        ("GET", "/api/gateway/audit"),
        ("GET", "/api/gateway/backup"),
    ] {
        let body = (method == "PUT").then(|| json!({"tenant_id": 1, "name": "x"}));
        assert_eq!(
            router.admin(method, path, body, &t1).await,
            (StatusCode::FORBIDDEN, forbidden.clone()),
            "{method} {path}"
        );
    }
    assert_eq!(
        router.admin("GET", "/api/gateway/user/971505000001/tenant", None, &t1).await,
        (StatusCode::OK, json!({"status": "found", "phone_number": "971505000001", "tenant_id": 1}))
    );
    assert_eq!(router.admin("GET", "/api/gateway/tenants/1/link", None, &t1).await.0, StatusCode::OK);
    // Still locked as before.
    assert_eq!(router.webhook(message("971505000001@c.us", "hi")).await.1["tenant_id"], 1);
    router.stop().await;
}

#[tokio::test]
async fn odd_paths_are_bad_requests_never_panics() {
    let (dir, backend) = (tempfile::tempdir().unwrap(), Backend::start().await);
    let router = Router::start(&Setup::new(&backend), &dir.path().join("data")).await;
    let admin = admin_token();
    let long = "9".repeat(5000);
    for path in [
        "/api/gateway/user/../tenant".to_owned(),
        "/api/gateway/user/../../etc/passwd".to_owned(),
        "/api/gateway/user/971%2F509876543/tenant".to_owned(),
        "/api/gateway/user/..%2F..%2Fstats/tenant".to_owned(),
        "/api/gateway/user/97150abc/tenant".to_owned(),
        "/api/gateway/user/lid:/mapping".to_owned(),
        "/api/gateway/user/971509876543@g.us/tenant".to_owned(),
        format!("/api/gateway/user/{long}/tenant"),
        "/api/gateway/tenants/abc/link".to_owned(),
        "/api/gateway/tenants/0/qr.png".to_owned(),
        "/api/gateway/tenants/99999999999999999999".to_owned(),
        "/api/gateway/tenants/1%2F2/link".to_owned(),
        "/api/gateway/tenants//link".to_owned(),
    ] {
        let (status, body) = router.admin("GET", &path, None, &admin).await;
        assert_eq!((status, body["status"].clone()), (StatusCode::BAD_REQUEST, json!("error")), "{path:.80}");
    }
    // Raw bytes the client library would not send.
    for raw in ["GET /api/gateway/user/\u{7f}1/tenant HTTP/1.1\r\n", "GET /api/gateway/tenants/%00 HTTP/1.1\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
        let request = format!("{raw}host: x\r\nauthorization: Bearer {admin}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw:?}: {answer}");
    }
    // Unknown admin paths are 404 and wrong methods 405, with a token or without.
    assert_eq!(router.admin("GET", "/api/gateway/nothing", None, &admin).await.0, StatusCode::NOT_FOUND);
    let (status, _) = router.admin("POST", "/api/gateway/stats", None, &admin).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // The router still serves.
    assert_eq!(router.admin("GET", "/api/gateway/stats", None, &admin).await.0, StatusCode::OK);
    router.stop().await;
}
