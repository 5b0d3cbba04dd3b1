//! The HTTP surface: authentication, bad input, methods, paths, health.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn setup_with(extra_waha: &str) -> (tempfile::TempDir, Backend, Router) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_waha = extra_waha.to_owned();
    let router = Router::start(&setup, &dir.path().join("data")).await;
    (dir, backend, router)
}

#[tokio::test]
async fn api_key_is_required_and_nothing_happens_without_it() {
    let (_dir, backend, router) = setup_with("").await;
    let first = message("971501110000@c.us", "start_realty_2");
    for headers in [&[][..], &[("x-api-key", "wrong-key-0123456789")][..], &[("x-api-key", "")][..]] {
        let (status, body) = router.post("/api/gateway/waha", first.clone(), headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["status"], "error");
    }
    assert!(backend.received().is_empty());
    // Not locked by the refused attempts: the sender can still pick tenant 3.
    assert_eq!(router.webhook(message("971501110000@c.us", "start_realty_3")).await.1["tenant_id"], 3);
    assert_eq!(router.metric("whatsapp_router_webhooks_total{event=\"other\",outcome=\"unauthorized\"}").await, 3.0);
    router.stop().await;
}

#[tokio::test]
async fn hmac_is_checked_on_the_raw_body() {
    let (_dir, backend, router) = setup_with(&format!("hmac_key = \"{HMAC_KEY}\"")).await;
    let body = message("971502220000@c.us", "start_realty_1");
    let good = whatsapp_router::auth::sign_hmac(HMAC_KEY, &body);
    let wrong = whatsapp_router::auth::sign_hmac("another_key_entirely", &body);
    let key = ("x-api-key", API_KEY);
    for (headers, expected) in [
        (vec![key], StatusCode::UNAUTHORIZED),
        (vec![key, ("x-webhook-hmac", wrong.as_str())], StatusCode::UNAUTHORIZED),
        (vec![key, ("x-webhook-hmac", "not hex")], StatusCode::UNAUTHORIZED),
        (vec![("x-webhook-hmac", good.as_str())], StatusCode::UNAUTHORIZED),
        (vec![key, ("x-webhook-hmac", good.as_str()), ("x-webhook-hmac-algorithm", "sha512")], StatusCode::OK),
    ] {
        let (status, _) = router.post("/api/gateway/waha", body.clone(), &headers).await;
        assert_eq!(status, expected, "{headers:?}");
    }
    assert_eq!(backend.received().len(), 1);
    router.stop().await;
}

/// The vectors in `data/fixtures/waha/SOURCES.md` (computed with openssl by
/// whoever captured the fixtures) through a router that has only an HMAC key.
#[tokio::test]
async fn hmac_only_with_the_fixture_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.tenants = 42..=42;
    let data = dir.path().join("data");
    let toml = setup.toml(&data).replace(&format!("api_key = \"{API_KEY}\""), "hmac_key = \"test_hmac_key\"");
    let router = Router::start_toml(&toml).await;
    let addr = router.addr;
    let sources = String::from_utf8(fixture("waha/SOURCES.md").to_vec()).unwrap();
    let mut checked = 0;
    for line in sources.lines().filter(|l| l.starts_with("| `") && l.matches('`').count() == 4) {
        let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
        let (file, vector) = (cells[1], cells[3]);
        if vector.len() != 128 {
            continue;
        }
        let body = fixture(&format!("waha/{file}"));
        let (status, json) = send(addr, "POST", "/api/gateway/waha", body.clone(), &[("x-webhook-hmac", vector)]).await;
        // Evolution's envelope has `data`, not `payload`: authenticated, then refused as a WAHA body.
        let expected = if file.contains("evolution") { StatusCode::BAD_REQUEST } else { StatusCode::OK };
        assert_eq!(status, expected, "{file}: {json}");
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        let (status, _) =
            send(addr, "POST", "/api/gateway/waha", Bytes::from(tampered), &[("x-webhook-hmac", vector)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{file} with one more byte");
        checked += 1;
    }
    assert_eq!(checked, 12, "every vector in SOURCES.md was checked");
    // The derived @c.us fixture links to tenant 42 and was forwarded, unchanged.
    let got = backend.received();
    assert!(got.iter().any(|r| r.body == fixture("waha/derived/deeplink_first_message.cus.json")));
    router.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let (_dir, backend, router) = setup_with("").await;
    let cases: &[(&[u8], &str)] = &[
        (b"not json", "not a valid JSON object"),
        (b"", "not a valid JSON object"),
        (b"[1,2]", "not a valid JSON object"),
        (br#"{"payload":{}}"#, "no string field `event`"),
        (br#"{"event":"message"}"#, "no object field `payload`"),
        (br#"{"event":"message","payload":{"from":"1@c.us""#, "not a valid JSON object"),
        (b"{\"event\":\"message\",\"payload\":{\"body\":\"\xff\xfe\"}}", "not a valid JSON object"),
        (b"{\"event\":\"message\0\",\"payload\":{}}", "not a valid JSON object"),
    ];
    for (body, message) in cases {
        let (status, json) = router.webhook(Bytes::copy_from_slice(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}", String::from_utf8_lossy(body));
        assert!(json["error"].as_str().unwrap().contains(message), "{json}");
    }
    // Deep nesting and huge numbers are answered, not crashed on.
    let deep = format!(
        r#"{{"event":"message","payload":{{"from":"1234@c.us","x":{}{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let (status, _) = router.webhook(Bytes::from(deep)).await;
    assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{status}");
    let huge = r#"{"event":"message","payload":{"from":"1234@c.us","n":1e999999,"m":123456789012345678901234567890}}"#;
    let (status, _) = router.webhook(Bytes::from(huge)).await;
    assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{status}");
    assert!(backend.received().is_empty());
    // The server is still up.
    assert_eq!(router.webhook(message("971503330000@c.us", "start_realty_1")).await.0, StatusCode::OK);
    router.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let (_dir, backend, router) = setup_with("").await;
    // Declared too large: refused before the body is read.
    let big = Bytes::from(vec![b' '; 1024 * 1024 + 1]);
    let (status, body) = router.webhook(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["status"], "error");

    // Chunked, no length: refused once the limit is crossed, without reading it all.
    let mut stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let head = format!(
        "POST /api/gateway/waha HTTP/1.1\r\nhost: x\r\nx-api-key: {API_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut answered = String::new();
    for _ in 0..64 {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(5), stream.read(&mut buf)).await {
            answered.push_str(&String::from_utf8_lossy(&buf[..n]));
            break;
        }
    }
    if answered.is_empty() {
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut buf)).await.unwrap().unwrap();
        answered.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answered.starts_with("HTTP/1.1 413"), "{answered}");
    assert!(backend.received().is_empty());
    assert_eq!(router.metric("whatsapp_router_webhooks_total{event=\"other\",outcome=\"too_large\"}").await, 2.0);
    router.stop().await;
}

#[tokio::test]
async fn methods_paths_and_health() {
    let (_dir, _backend, router) = setup_with("").await;
    let (status, body) = send(router.addr, "GET", "/api/gateway/waha", Bytes::new(), &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["status"], "error");
    assert_eq!(send(router.addr, "POST", "/healthz", Bytes::new(), &[]).await.0, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = send(router.addr, "GET", "/nope", Bytes::new(), &[]).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::NOT_FOUND, Some("error")));
    assert_eq!(send(router.addr, "GET", "/api/gateway/waha/../x", Bytes::new(), &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(router.addr, "GET", "/healthz", Bytes::new(), &[]).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        send(router.addr, "GET", "/readyz", Bytes::new(), &[]).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
    let (status, text) = get_text(router.metrics_addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("# TYPE whatsapp_router_webhooks_total counter"), "{text}");
    router.stop().await;
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_hurt_the_server() {
    let (_dir, _backend, router) = setup_with("").await;
    let inputs: &[&[u8]] = &[
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /api/gateway/waha HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
        b"POST /api/gateway/waha HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
        b"POST /api/gateway/waha HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
    ];
    for input in inputs {
        let mut stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
        stream.write_all(input).await.unwrap();
        let _ = stream.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    }
    assert_eq!(send(router.addr, "GET", "/healthz", Bytes::new(), &[]).await.0, StatusCode::OK);
    router.stop().await;
}
