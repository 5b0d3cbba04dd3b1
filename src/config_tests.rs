use super::*;

const MINIMAL: &str = r#"
gateway_phone = "971557357753"
[waha]
api_key = "0123456789abcdef0123"
"#;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), env(vars))
}

#[test]
fn embedded_default_is_valid_and_complete() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8000".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("data"));
    assert_eq!(c.deep_link_prefix, "start_realty_");
    assert_eq!(c.waha.api_key, Some(SecretSetting::Generate));
    assert_eq!(c.admin.jwt_secret, SecretSetting::Generate);
    assert_eq!(c.forward.timeout, Duration::from_millis(5000));
    assert!(c.metrics_tenant_labels);
    assert_eq!(c.log_format, LogFormat::Human);
}

#[test]
fn defaults_fill_a_minimal_file() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.listen.port(), 8000);
    assert!(c.tenants.is_empty());
    assert_eq!(c.admin.jwt_secret, SecretSetting::Generate);
}

#[test]
fn env_overrides_every_level() {
    let c = load_with(
        MINIMAL,
        &[
            ("WHATSAPP_ROUTER_LISTEN", "127.0.0.1:0"),
            ("WHATSAPP_ROUTER_GATEWAY_PHONE", "15550001111"),
            ("WHATSAPP_ROUTER_FORWARD__TIMEOUT_MS", "250"),
            ("WHATSAPP_ROUTER_WAHA__ALLOW_UNAUTHENTICATED", "true"),
            ("WHATSAPP_ROUTER_WAHA__HMAC_KEY", "1234567890123456"),
            ("WHATSAPP_ROUTER_METRICS_TENANT_LABELS", "false"),
            ("WHATSAPP_ROUTER_LOG_FORMAT", "json"),
            (
                "WHATSAPP_ROUTER_TENANTS",
                r#"[{id = 2, name = "Saman"}, {id = 3, name = "B", url = "https://b.example/x"}]"#,
            ),
            ("WHATSAPP_ROUTER_CONFIG", "ignored: names the file, not a key"),
            ("OTHER_VAR", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen.port(), 0);
    assert_eq!(c.gateway_phone, "15550001111");
    assert_eq!(c.forward.timeout, Duration::from_millis(250));
    assert!(c.waha.allow_unauthenticated);
    assert_eq!(c.waha.hmac_key, Some(SecretSetting::Value("1234567890123456".into())));
    assert!(!c.metrics_tenant_labels);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.tenants.len(), 2);
    assert_eq!(c.tenant_url(&c.tenants[0]), "http://127.0.0.1:9000/tenants/2/whatsapp");
    assert_eq!(c.tenant_url(&c.tenants[1]), "https://b.example/x");
}

#[track_caller]
fn check_error(text: &str, vars: &[(&str, &str)], key: &str) {
    match load_with(text, vars) {
        Ok(_) => panic!("expected an error about `{key}`"),
        Err(e) => {
            assert_eq!(e.key, key, "error: {e}");
            assert!(e.to_string().contains(key), "message must name the key: {e}");
        }
    }
}

#[test]
fn errors_name_the_key() {
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_LISTEN", "nope")], "listen");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_GATEWAY_PHONE", "+97155")], "gateway_phone");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_DEEP_LINK_PREFIX", "a b")], "deep_link_prefix");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_FORWARD__TIMEOUT_MS", "abc")], "forward.timeout_ms");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_FORWARD__TIMEOUT_MS", "0")], "forward.timeout_ms");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_FORWARD__URL_TEMPLATE", "http://x/no-id")], "forward.url_template");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_FORWARD__URL_TEMPLATE", "ftp://x/{tenant_id}")], "forward.url_template");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_FORWARD__BOGUS", "1")], "forward.bogus");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_WAHA__API_KEY", "short")], "waha.api_key");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_WAHA__ALLOW_UNAUTHENTICATED", "maybe")], "waha.allow_unauthenticated");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_LOG_FORMAT", "xml")], "log_format");
    check_error(MINIMAL, &[("WHATSAPP_ROUTER_METRICS_TENANT_LABELS", "1")], "metrics_tenant_labels");
    check_error("gateway_phone = \"1\"\n", &[], "waha.api_key");
    check_error("[waha]\napi_key = \"0123456789abcdef0123\"\n", &[], "gateway_phone");
    check_error(&format!("unknown = 1\n{MINIMAL}"), &[], "unknown");
    check_error(&format!("{MINIMAL}\nunknown = 1\n"), &[], "waha.unknown");
    check_error(
        &format!("{MINIMAL}\n[[tenants]]\nid = 2\nname = \"a\"\n[[tenants]]\nid = 2\nname = \"b\"\n"),
        &[],
        "tenants[1].id",
    );
    check_error(&format!("{MINIMAL}\n[[tenants]]\nid = \"x\"\nname = \"a\"\n"), &[], "tenants[0].id");
    check_error(&format!("{MINIMAL}\n[[tenants]]\nid = 2\nname = \"a\"\nurl = \"nope\"\n"), &[], "tenants[0].url");
}

#[test]
fn unreadable_file_names_the_flag() {
    let e = Config::load(Some(Path::new("/nonexistent/x.toml")), env(&[])).unwrap_err();
    assert_eq!(e.key, "--config");
}

#[test]
fn runtime_model_and_workers() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.runtime, RuntimeModel::ThreadPerCore);
    assert_eq!(c.workers, std::thread::available_parallelism().unwrap().get());
    let c =
        load_with(MINIMAL, &[("WHATSAPP_ROUTER_RUNTIME", "multi-thread"), ("WHATSAPP_ROUTER_WORKERS", "3")]).unwrap();
    assert_eq!((c.runtime, c.workers), (RuntimeModel::MultiThread, 3));
    let e = load_with(MINIMAL, &[("WHATSAPP_ROUTER_RUNTIME", "tokio")]).unwrap_err();
    assert_eq!(e.key, "runtime");
    let e = load_with(MINIMAL, &[("WHATSAPP_ROUTER_WORKERS", "100000")]).unwrap_err();
    assert_eq!(e.key, "workers");
}

#[test]
fn connection_limits_have_defaults_and_refuse_zero() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.max_connections, 4096);
    assert_eq!(c.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.body_read_timeout, Duration::from_secs(10));
    let c = load_with(MINIMAL, &[("WHATSAPP_ROUTER_HEADER_READ_TIMEOUT_MS", "500")]).unwrap();
    assert_eq!(c.header_read_timeout, Duration::from_millis(500));
    for key in ["max_connections", "header_read_timeout_ms", "body_read_timeout_ms"] {
        let err = Config::from_toml(&format!("{key} = 0\n{MINIMAL}")).unwrap_err();
        assert_eq!(err.key, key);
    }
}
