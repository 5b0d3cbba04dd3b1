//! Logs of the real binary: `log_format = "json"` gives one JSON object per
//! line, the lifecycle is logged at info, each routed request at debug with
//! tenant, outcome and latency, and no phone number or secret appears unmasked.

use http::StatusCode;
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn json_logs_cover_the_lifecycle_and_mask_phone_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_top = "log_format = \"json\"".into();
    let config = dir.path().join("router.toml");
    std::fs::write(&config, setup.toml(&dir.path().join("data"))).unwrap();
    let mut cmd = binary();
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("WHATSAPP_ROUTER_METRICS_LISTEN", "off")
        .env("RUST_LOG", "whatsapp_router=debug");
    let router = Process::spawn(cmd).await;
    for text in ["hello start_realty_2", "when can I visit?"] {
        let (status, body) = router.webhook(message("971509876543@c.us", text)).await;
        assert_eq!((status, body["tenant_id"].as_u64()), (StatusCode::OK, Some(2)), "{body}");
    }
    router.signal("TERM");
    let (status, text) = router.finish().await;
    assert!(status.success());

    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let find = |message: &str| -> Vec<&Value> { lines.iter().filter(|l| l["message"] == message).collect() };
    let started = find("whatsapp-router started");
    assert_eq!(started.len(), 1, "{text}");
    assert_eq!(started[0]["level"], "INFO");
    assert_eq!((started[0]["tenants"].as_u64(), started[0]["webhook_auth"].as_str()), (Some(3), Some("api_key")));
    assert_eq!(started[0]["log_format"], "json");
    let forwarded = find("forwarded");
    assert_eq!(forwarded.len(), 2, "one debug line per routed request:\n{text}");
    for (line, outcome) in forwarded.iter().zip(["locked_new", "routed"]) {
        assert_eq!(line["level"], "DEBUG");
        assert_eq!((line["tenant"].as_u64(), line["outcome"].as_str()), (Some(2), Some(outcome)), "{line}");
        assert!(line["elapsed_us"].is_u64(), "{line}");
        assert_eq!(line["sender"], "9715****6543");
    }
    for message in ["sender locked to tenant", "shutdown requested", "stopped"] {
        assert_eq!(find(message).len(), 1, "`{message}` once:\n{text}");
    }
    // Each worker drains its own connections (thread-per-core: one per CPU).
    assert!(!find("draining").is_empty(), "draining logged:\n{text}");
    assert!(!text.contains("971509876543"), "a phone number is logged unmasked:\n{text}");
    assert!(!text.contains(API_KEY), "the API key is logged:\n{text}");
}
