//! The admin API through the real server: stats, sender lookup, delete and
//! reassign (with the cache), tenants, links and QR codes, the audit log.

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

async fn setup() -> (tempfile::TempDir, Backend, Router) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let router = Router::start(&Setup::new(&backend), &dir.path().join("data")).await;
    (dir, backend, router)
}

fn stats(total: u64, per: Value) -> Value {
    let tenants = per.as_object().unwrap().len();
    json!({"status": "success", "gateway_stats": {"total_users": total, "total_tenants": tenants, "users_per_tenant": per}})
}

#[tokio::test]
async fn stats_lookup_delete_and_reassign() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let data = dir.path().join("data");
    let router = Router::start(&setup, &data).await;
    let admin = admin_token();
    for (from, link) in
        [("971509876543@c.us", 2), ("971501000001@c.us", 1), ("971501000002@c.us", 1), ("4639135154355@lid", 1)]
    {
        router.webhook(message(from, &format!("start_realty_{link}"))).await;
    }
    let expected = stats(4, json!({"1": 3, "2": 1}));
    assert_eq!(router.admin("GET", "/api/gateway/stats", None, &admin).await, (StatusCode::OK, expected.clone()));

    let found = json!({"status": "found", "phone_number": "971509876543", "tenant_id": 2});
    for form in ["971509876543", "+971509876543", "971509876543@c.us"] {
        let path = format!("/api/gateway/user/{form}/tenant");
        assert_eq!(router.admin("GET", &path, None, &admin).await, (StatusCode::OK, found.clone()), "{form}");
    }
    for form in ["lid:4639135154355", "4639135154355@lid"] {
        let (status, body) = router.admin("GET", &format!("/api/gateway/user/{form}/tenant"), None, &admin).await;
        assert_eq!(
            (status, body["phone_number"].clone(), body["tenant_id"].clone()),
            (StatusCode::OK, json!("4639135154355@lid"), json!(1))
        );
    }
    assert_eq!(
        router.admin("GET", "/api/gateway/user/971500000000/tenant", None, &admin).await,
        (StatusCode::NOT_FOUND, json!({"status": "not_found", "phone_number": "971500000000"}))
    );

    // Delete: the cached lock goes too, and the next deep link locks afresh.
    assert_eq!(
        router.admin("DELETE", "/api/gateway/user/971509876543/mapping", None, &admin).await,
        (StatusCode::OK, json!({"status": "deleted", "previous_tenant_id": 2}))
    );
    assert_eq!(
        router.admin("DELETE", "/api/gateway/user/971509876543/mapping", None, &admin).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        router.admin("GET", "/api/gateway/user/971509876543/tenant", None, &admin).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        router.webhook(message("971509876543@c.us", "hello")).await.1,
        json!({"status": "unrouted", "reason": "no_deep_link"})
    );
    assert_eq!(
        router.webhook(message("971509876543@c.us", "start_realty_3")).await.1,
        json!({"status": "routed", "tenant_id": 3})
    );
    assert_eq!(backend.received().last().unwrap().header("x-gateway-new-session"), Some("true"));

    // Reassign a cached sender: the next message goes to the new tenant.
    assert_eq!(router.webhook(message("971501000001@c.us", "hi")).await.1["tenant_id"], 1);
    assert_eq!(
        router.admin("PUT", "/api/gateway/user/971501000001/mapping", Some(json!({"tenant_id": 2})), &admin).await,
        (
            StatusCode::OK,
            json!({"status": "reassigned", "phone_number": "971501000001", "previous_tenant_id": 1, "tenant_id": 2})
        )
    );
    assert_eq!(
        router.webhook(message("971501000001@c.us", "hi again")).await.1,
        json!({"status": "routed", "tenant_id": 2})
    );
    // Setting an unlocked sender locks it.
    let (status, body) =
        router.admin("PUT", "/api/gateway/user/971507777777/mapping", Some(json!({"tenant_id": 3})), &admin).await;
    assert_eq!((status, body["previous_tenant_id"].clone()), (StatusCode::OK, Value::Null));
    // Bad bodies and unknown tenants.
    for (body, code) in [
        (json!({"tenant_id": 99}), StatusCode::NOT_FOUND),
        (json!({"tenant_id": 0}), StatusCode::BAD_REQUEST),
        (json!({"tenant_id": "2"}), StatusCode::BAD_REQUEST),
        (json!({"tenant": 2}), StatusCode::BAD_REQUEST),
        (json!([2]), StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) =
            router.admin("PUT", "/api/gateway/user/971501000002/mapping", Some(body.clone()), &admin).await;
        assert_eq!(status, code, "{body} -> {answer}");
        assert_eq!(answer["status"], "error");
    }
    let (status, answer) =
        router.admin("PUT", "/api/gateway/user/971501000002/mapping", Some(json!({"tenant_id": 99})), &admin).await;
    assert_eq!((status, answer), (StatusCode::NOT_FOUND, json!({"status": "error", "error": "tenant 99 not found"})));

    let expected = stats(5, json!({"1": 2, "2": 1, "3": 2}));
    assert_eq!(router.admin("GET", "/api/gateway/stats", None, &admin).await.1, expected);
    router.stop().await;

    // The counters survive a restart, and an import adds to them.
    let config = dir.path().join("router.toml");
    std::fs::write(&config, setup.toml(&data)).unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(&seed, r#"{"971502000001": 2, "971502000002": 2, "971509876543": 1}"#).unwrap();
    let out = binary().args(["mapping", "import"]).arg(&seed).arg("--config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let router = Router::start(&setup, &data).await;
    let expected = stats(7, json!({"1": 2, "2": 3, "3": 2}));
    assert_eq!(router.admin("GET", "/api/gateway/stats", None, &admin).await.1, expected);
    // A tenant token sees its own entry only.
    assert_eq!(router.admin("GET", "/api/gateway/stats", None, &tenant_token(2)).await.1, stats(3, json!({"2": 3})));
    router.stop().await;
}

#[tokio::test]
async fn tenants_crud_and_deleted_tenants_stop_forwarding() {
    let (_dir, backend, router) = setup().await;
    let admin = admin_token();
    router.webhook(message("971503000001@c.us", "start_realty_2")).await;
    let template = backend.url_template();
    let (status, body) = router.admin("GET", "/api/gateway/tenants", None, &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["tenants"][1],
        json!({"tenant_id": 2, "name": "Tenant 2", "url": null, "forward_url": template.replace("{tenant_id}", "2"),
               "signing_secret_set": false, "previous_signing_secret_set": false, "users": 1})
    );
    assert_eq!(body["tenants"].as_array().unwrap().len(), 3);

    // Delete tenant 2: its sender stays locked, answered unknown_tenant, not forwarded.
    assert_eq!(
        router.admin("DELETE", "/api/gateway/tenants/2", None, &admin).await,
        (StatusCode::OK, json!({"status": "deleted", "tenant_id": 2, "locked_users": 1}))
    );
    assert_eq!(
        router.admin("DELETE", "/api/gateway/tenants/2", None, &admin).await,
        (StatusCode::NOT_FOUND, json!({"status": "error", "error": "tenant 2 not found"}))
    );
    let before = backend.received().len();
    assert_eq!(
        router.webhook(message("971503000001@c.us", "still there?")).await.1,
        json!({"status": "unrouted", "reason": "unknown_tenant"})
    );
    assert_eq!(router.webhook(message("971503000009@c.us", "start_realty_2")).await.1["reason"], "unknown_tenant");
    assert_eq!(backend.received().len(), before);
    assert_eq!(router.admin("GET", "/api/gateway/tenants/2/link", None, &admin).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        router.admin("PUT", "/api/gateway/user/971503000001/mapping", Some(json!({"tenant_id": 2})), &admin).await.0,
        StatusCode::NOT_FOUND
    );

    // Add it back with its own URL and a signing secret: forwarding resumes there.
    let own = format!("http://{}/tenants/2/whatsapp", backend.addr);
    const SECRET: &str = "whsec_dGVuYW50LTIgc2lnbmluZyBzZWNyZXQgMTIzNA==";
    const ROTATED: &str = "whsec_dGVuYW50LTIgcm90YXRlZCBzZWNyZXQgNTY3OA==";
    let body = json!({"name": "Saman Realty", "url": own, "signing_secret": SECRET});
    let (status, answer) = router.admin("PUT", "/api/gateway/tenants/2", Some(body), &admin).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "created");
    assert_eq!(answer["tenant"]["signing_secret_set"], true);
    assert!(!answer.to_string().contains(SECRET), "the secret is never shown");
    let (_, answer) = router.admin("PUT", "/api/gateway/tenants/2", Some(json!({"name": "Saman"})), &admin).await;
    assert_eq!(
        (answer["status"].clone(), answer["tenant"]["signing_secret_set"].clone()),
        (json!("updated"), json!(true))
    );
    assert_eq!(router.admin("GET", "/api/gateway/tenants/2", None, &admin).await.1["tenant"]["name"], "Saman");
    assert_eq!(
        router.webhook(message("971503000001@c.us", "back")).await.1,
        json!({"status": "routed", "tenant_id": 2})
    );
    // Forwards to a tenant with its own secret are signed with it (Standard Webhooks).
    let sign = |secret: &str, r: &Received| {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.decode(&secret["whsec_".len()..]).unwrap();
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&key).unwrap();
        let signed = format!("{}.{}.", r.header("webhook-id").unwrap(), r.header("webhook-timestamp").unwrap());
        hmac::Mac::update(&mut mac, signed.as_bytes());
        hmac::Mac::update(&mut mac, &r.body);
        let sig = hmac::Mac::finalize(mac).into_bytes();
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(sig))
    };
    let last = backend.received().pop().unwrap();
    assert_eq!(last.header("webhook-signature"), Some(sign(SECRET, &last).as_str()));
    // Rotating: both signatures until the previous secret is dropped.
    let body = json!({"name": "Saman", "signing_secret": ROTATED});
    let (_, answer) = router.admin("PUT", "/api/gateway/tenants/2", Some(body), &admin).await;
    assert_eq!(answer["tenant"]["previous_signing_secret_set"], true, "{answer}");
    router.webhook(message("971503000001@c.us", "rotated")).await;
    let last = backend.received().pop().unwrap();
    let both = format!("{} {}", sign(ROTATED, &last), sign(SECRET, &last));
    assert_eq!(last.header("webhook-signature"), Some(both.as_str()));
    let body = json!({"name": "Saman", "previous_signing_secret": null});
    router.admin("PUT", "/api/gateway/tenants/2", Some(body), &admin).await;
    router.webhook(message("971503000001@c.us", "settled")).await;
    let last = backend.received().pop().unwrap();
    assert_eq!(last.header("webhook-signature"), Some(sign(ROTATED, &last).as_str()));
    router.webhook(message("971503000002@c.us", "start_realty_1")).await;
    let other = backend.received().pop().unwrap();
    assert_ne!(
        other.header("webhook-signature"),
        Some(sign(ROTATED, &other).as_str()),
        "tenant 1 uses the global secret"
    );

    for bad in [
        json!({"name": ""}),
        json!({"name": "x", "url": "ftp://nowhere"}),
        json!({"name": "x", "signing_secret": "short"}),
        json!({"name": "x", "signing_secret": "whsec_c2hvcnQ="}),
        json!({"name": "x", "signing_secret": 5}),
        json!({"name": "x", "colour": "red"}),
        json!({"url": "http://a/"}),
    ] {
        let (status, answer) = router.admin("PUT", "/api/gateway/tenants/7", Some(bad.clone()), &admin).await;
        assert_eq!((status, answer["status"].clone()), (StatusCode::BAD_REQUEST, json!("error")), "{bad}");
    }
    assert_eq!(router.admin("GET", "/api/gateway/tenants/7", None, &admin).await.0, StatusCode::NOT_FOUND);
    router.stop().await;
}

#[tokio::test]
async fn links_and_qr_codes_decode_back_to_the_link() {
    let (_dir, _backend, router) = setup().await;
    let link = "https://wa.me/971557357753?text=start_realty_2";
    for token in [admin_token(), tenant_token(2)] {
        assert_eq!(
            router.admin("GET", "/api/gateway/tenants/2/link", None, &token).await,
            (StatusCode::OK, json!({"tenant_id": 2, "link": link}))
        );
        let (status, headers, svg) = router.admin_raw("/api/gateway/tenants/2/qr.svg", &token).await;
        assert_eq!((status, headers["content-type"].to_str().unwrap()), (StatusCode::OK, "image/svg+xml"));
        assert!(String::from_utf8(svg.to_vec()).unwrap().contains("<svg"));
        let (status, headers, png) = router.admin_raw("/api/gateway/tenants/2/qr.png", &token).await;
        assert_eq!((status, headers["content-type"].to_str().unwrap()), (StatusCode::OK, "image/png"));
        assert_eq!(decode_qr(&png), link);
    }
    assert_eq!(
        router.admin("GET", "/api/gateway/tenants/9/qr.png", None, &admin_token()).await.0,
        StatusCode::NOT_FOUND
    );
    router.stop().await;
}

/// Decodes a grayscale PNG QR code with `rqrr`.
fn decode_qr(png_bytes: &[u8]) -> String {
    let decoder = png::Decoder::new(png_bytes);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1);
    grids[0].decode().unwrap().1
}

#[tokio::test]
async fn audit_log_records_every_change_with_its_actor() {
    let (_dir, _backend, router) = setup().await;
    let admin = admin_token();
    router.webhook(message("971504000001@c.us", "start_realty_1")).await;
    router.webhook(message("971504000001@c.us", "start_realty_2")).await;
    router.webhook(message("971504000002@c.us", "start_realty_3")).await;
    router.admin("PUT", "/api/gateway/user/971504000001/mapping", Some(json!({"tenant_id": 3})), &admin).await;
    router.admin("DELETE", "/api/gateway/user/971504000001/mapping", None, &admin).await;

    let (status, page) = router.admin("GET", "/api/gateway/audit?phone=971504000001", None, &admin).await;
    assert_eq!(status, StatusCode::OK);
    let summary: Vec<Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!([e["action"], e["actor"], e["previous_tenant_id"], e["new_tenant_id"]]))
        .collect();
    assert_eq!(
        summary,
        [
            json!(["delete", "tester", 3, null]),
            json!(["reassign", "tester", 1, 3]),
            json!(["relock_refused", "webhook", 1, 2]),
            json!(["lock", "webhook", null, 1]),
        ]
    );
    assert!(page["entries"][0]["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(page["next_before"], Value::Null);

    let (_, by_tenant) = router.admin("GET", "/api/gateway/audit?tenant_id=3", None, &admin).await;
    assert_eq!(by_tenant["entries"].as_array().unwrap().len(), 3, "{by_tenant}");
    let (_, first) = router.admin("GET", "/api/gateway/audit?limit=2", None, &admin).await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    let next = first["next_before"].as_u64().unwrap();
    let (_, rest) = router.admin("GET", &format!("/api/gateway/audit?limit=10&before={next}"), None, &admin).await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next_before"], Value::Null);
    for bad in ["limit=0", "limit=x", "phone=abc", "tenant_id=-1", "colour=red", "phone=%zz"] {
        let (status, _) = router.admin("GET", &format!("/api/gateway/audit?{bad}"), None, &admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    router.stop().await;
}

/// Reassigns racing with lookups of the same sender: once a reassign has been
/// answered, every later message goes to the new tenant (no stale cache entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reassign_racing_lookups_never_leaves_a_stale_cache() {
    let (_dir, _backend, router) = setup().await;
    let router = std::sync::Arc::new(router);
    let admin = admin_token();
    router.webhook(message("971508000001@c.us", "start_realty_1")).await;
    for round in 0..15u32 {
        let tenant = round % 3 + 1;
        let readers: Vec<_> = (0..6)
            .map(|_| {
                let router = router.clone();
                tokio::spawn(async move {
                    for _ in 0..4 {
                        let (status, _) = router.webhook(message("971508000001@c.us", "ping")).await;
                        assert_eq!(status, StatusCode::OK);
                    }
                })
            })
            .collect();
        let body = Some(json!({"tenant_id": tenant}));
        let (status, _) = router.admin("PUT", "/api/gateway/user/971508000001/mapping", body, &admin).await;
        assert_eq!(status, StatusCode::OK);
        for r in readers {
            r.await.unwrap();
        }
        // Routed now, or queued behind the readers' messages (per-sender order): to the new tenant either way.
        let (_, answer) = router.webhook(message("971508000001@c.us", "after")).await;
        assert!(["routed", "queued"].contains(&answer["status"].as_str().unwrap()), "round {round}: {answer}");
        assert_eq!(answer["tenant_id"], tenant, "round {round}");
    }
    std::sync::Arc::try_unwrap(router).ok().unwrap().stop().await;
}
