//! The real binary: default start, config errors, signals, SIGKILL durability,
//! and the mapping import/export tools.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn starts_with_no_config_and_generates_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = binary()
        .current_dir(dir.path())
        .env("WHATSAPP_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        .env("WHATSAPP_ROUTER_METRICS_LISTEN", "off")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    // Read to the end: a reader that stops early closes the pipe under the router.
    let lines = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_ready(addr).await;
    let key_path = dir.path().join("data/secrets/waha_api_key");
    let key = std::fs::read_to_string(&key_path).unwrap().trim().to_owned();
    assert!(dir.path().join("data/secrets/admin_jwt_secret").exists());
    let body = message("971500000009@c.us", "hi");
    let (status, _) = send(addr, "POST", "/api/gateway/waha", body.clone(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, json) = send(addr, "POST", "/api/gateway/waha", body, &[("x-api-key", &key)]).await;
    assert_eq!((status, json), (StatusCode::OK, json!({"status": "unrouted", "reason": "no_deep_link"})));
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap().join("\n");
    assert!(lines.contains("generated a new secret in data/secrets/waha_api_key"), "{lines}");
}

#[tokio::test]
async fn bad_config_exits_non_zero_naming_the_key() {
    let cases = [
        ("WHATSAPP_ROUTER_FORWARD__TIMEOUT_MS", "soon", "forward.timeout_ms"),
        ("WHATSAPP_ROUTER_LISTEN", "localhost", "listen"),
        ("WHATSAPP_ROUTER_WAHA__API_KEY", "", "waha.api_key"),
    ];
    for (var, value, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = binary().current_dir(dir.path()).env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("`{key}`")), "{stderr}");
        assert!(!dir.path().join("data").exists(), "nothing is created before the config is valid");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let router = Process::start(&Setup::new(&backend), &dir.path().join("data")).await;
    backend.delay_ms.store(700, std::sync::atomic::Ordering::SeqCst);
    let addr = router.addr;
    let in_flight = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/api/gateway/waha",
            message("971500000010@c.us", "start_realty_1"),
            &[("x-api-key", API_KEY)],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    router.signal("TERM");
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "routed", "tenant_id": 1})));
    let exit = router.wait_exit().await;
    assert!(exit.success(), "{exit:?}");
    // New connections are refused once draining started.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn acknowledged_locks_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let data = dir.path().join("data");
    let router = Process::start(&setup, &data).await;
    let senders: Vec<String> = (0..30).map(|i| format!("97150{:07}@c.us", 4_000_000 + i)).collect();
    let tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (addr, body) = (router.addr, message(s, &format!("start_realty_{}", i % 3 + 1)));
            tokio::spawn(async move { send(addr, "POST", "/api/gateway/waha", body, &[("x-api-key", API_KEY)]).await })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        acknowledged.push((senders[i].clone(), body["tenant_id"].as_u64().unwrap()));
    }
    // No graceful anything: the process dies right after the last 200.
    router.signal("KILL");
    let _ = router.wait_exit().await;

    let router = Process::start(&setup, &data).await;
    for (sender, tenant) in acknowledged {
        let (_, body) = router.webhook(message(&sender, "start_realty_3 still me")).await;
        assert_eq!(body["tenant_id"].as_u64(), Some(tenant), "{sender}");
    }
}

#[tokio::test]
async fn mapping_import_and_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let data = dir.path().join("data");
    let config = dir.path().join("router.toml");
    std::fs::write(&config, setup.toml(&data)).unwrap();

    // One lock exists before the import.
    let router = Router::start(&setup, &data).await;
    router.webhook(message("971509876543@c.us", "start_realty_3")).await;
    router.stop().await;

    let seed = dir.path().join("user_tenant_mapping.json");
    std::fs::write(
        &seed,
        r#"{"971509876543": 2, "971501111111": 2, "+971502222222": 1, "4639135154355@lid": 3,
            "971503333333": 99, "not-a-phone": 1, "971504444444": "x", "971501111111": 2}"#,
    )
    .unwrap();
    let out = binary().args(["mapping", "import"]).arg(&seed).arg("--config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        report.trim(),
        "added 3, kept 1, refused 4 (1 already locked to another tenant, 1 invalid sender, 2 unknown tenant)"
    );

    let exported = dir.path().join("export.json");
    let out = binary().args(["mapping", "export"]).arg(&exported).arg("--config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let map: serde_json::Value = serde_json::from_slice(&std::fs::read(&exported).unwrap()).unwrap();
    assert_eq!(
        map,
        json!({"971501111111": 2, "971502222222": 1, "971509876543": 3, "4639135154355@lid": 3}),
        "the existing lock won"
    );

    // Export to stdout, then import that into a fresh data dir: the same locks.
    let out = binary().args(["mapping", "export", "--config"]).arg(&config).output().unwrap();
    let fresh = dir.path().join("fresh.toml");
    std::fs::write(&fresh, setup.toml(&dir.path().join("fresh"))).unwrap();
    let again = dir.path().join("again.json");
    std::fs::write(&again, &out.stdout).unwrap();
    let out = binary().args(["mapping", "import"]).arg(&again).arg("--config").arg(&fresh).output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "added 4, kept 0, refused 0 (0 already locked to another tenant, 0 invalid sender, 0 unknown tenant)"
    );

    // The router serves the imported locks.
    let router = Router::start(&setup, &data).await;
    assert_eq!(
        router.webhook(message("971502222222@c.us", "hello")).await.1,
        json!({"status": "routed", "tenant_id": 1})
    );
    router.stop().await;

    // A malformed file is an error, not a partial success message.
    std::fs::write(&seed, "{\"1\": 2,").unwrap();
    let out = binary().args(["mapping", "import"]).arg(&seed).arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
}
