//! The operations CLI through the real binary: `token`, `tenant`, `mapping
//! get|delete|set`, `backup`/`restore` (online and offline), `waha setup`
//! against a fake WAHA that checks every request's shape.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use whatsapp_router::admin::token::{now_secs, verify, Role, Scope};
use whatsapp_router::secrets::Secret;

use crate::support::*;

/// Runs the binary with `args` and `--config`, off the async runtime.
async fn run(config: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = binary();
    cmd.args(args).arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn write_config(dir: &Path, name: &str, setup: &Setup) -> (PathBuf, PathBuf) {
    let data = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, setup.toml(&data)).unwrap();
    (data, config)
}

#[tokio::test]
async fn token_command_prints_a_working_token() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let (data, config) = write_config(dir.path(), "data", &setup);
    let out =
        run(&config, &["token", "--role", "tenant", "--tenant-id", "2", "--ttl", "1h", "--sub", "alice"], &[]).await;
    let token = stdout(&out).trim().to_owned();
    let (claims, scope) = verify(&Secret::new(ADMIN_SECRET), &token).unwrap();
    assert_eq!((claims.sub.as_str(), claims.role, scope), ("alice", Role::Tenant, Scope::Tenant(2)));
    assert!((claims.exp as i64 - (now_secs() + 3600) as i64).abs() < 5);

    let router = Router::start(&setup, &data).await;
    assert_eq!(router.admin("GET", "/api/gateway/tenants/2/link", None, &token).await.0, StatusCode::OK);
    assert_eq!(router.admin("GET", "/api/gateway/tenants/1/link", None, &token).await.0, StatusCode::FORBIDDEN);
    let admin = stdout(&run(&config, &["token", "--role", "admin"], &[]).await).trim().to_owned();
    assert_eq!(router.admin("GET", "/api/gateway/audit", None, &admin).await.0, StatusCode::OK);
    router.stop().await;

    for bad in [&["token", "--role", "tenant"][..], &["token", "--role", "admin", "--ttl", "1w"][..]] {
        let out = run(&config, bad, &[]).await;
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
    }
}

#[tokio::test]
async fn tenant_and_mapping_commands() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let (data, config) = write_config(dir.path(), "data", &setup);
    let url = format!("http://{}/tenants/7/whatsapp", backend.addr);
    assert_eq!(
        stdout(&run(&config, &["tenant", "add", "--id", "7", "--name", "Seven", "--url", &url], &[]).await),
        "tenant 7 created\n"
    );
    let list = stdout(&run(&config, &["tenant", "list"], &[]).await);
    assert!(
        list.lines().any(|l| serde_json::from_str::<Value>(l).unwrap()
            == json!({"tenant_id": 7, "name": "Seven", "url": url, "users": 0})),
        "{list}"
    );
    assert_eq!(list.lines().count(), 4);

    let set = stdout(&run(&config, &["mapping", "set", "971506000001", "7"], &[]).await);
    let expected =
        json!({"status": "reassigned", "phone_number": "971506000001", "previous_tenant_id": null, "tenant_id": 7});
    assert_eq!(serde_json::from_str::<Value>(&set).unwrap(), expected);
    let got = stdout(&run(&config, &["mapping", "get", "+971506000001"], &[]).await);
    assert_eq!(
        serde_json::from_str::<Value>(&got).unwrap(),
        json!({"status": "found", "phone_number": "971506000001", "tenant_id": 7})
    );
    assert_eq!(run(&config, &["mapping", "set", "971506000001", "99"], &[]).await.status.code(), Some(1));
    assert_eq!(run(&config, &["mapping", "get", "not-a-phone"], &[]).await.status.code(), Some(1));

    // The router forwards to the tenant added from the command line.
    let router = Process::start(&setup, &data).await;
    assert_eq!(router.webhook(message("971506000001@c.us", "hi")).await.1, json!({"status": "routed", "tenant_id": 7}));
    let out = run(&config, &["mapping", "get", "971506000001"], &[]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the router running"), "{out:?}");
    router.signal("TERM");
    assert!(router.wait_exit().await.success());

    let deleted = stdout(&run(&config, &["mapping", "delete", "971506000001"], &[]).await);
    assert_eq!(serde_json::from_str::<Value>(&deleted).unwrap(), json!({"status": "deleted", "previous_tenant_id": 7}));
    assert_eq!(run(&config, &["mapping", "delete", "971506000001"], &[]).await.status.code(), Some(1));
    assert_eq!(run(&config, &["mapping", "get", "971506000001"], &[]).await.status.code(), Some(1));
    assert!(stdout(&run(&config, &["tenant", "remove", "7"], &[]).await).starts_with("tenant 7 removed"));
    assert_eq!(run(&config, &["tenant", "remove", "7"], &[]).await.status.code(), Some(1));
}

#[tokio::test]
async fn backup_while_serving_and_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let setup = Setup::new(&backend);
    let (data, config) = write_config(dir.path(), "data", &setup);
    let router = Process::start(&setup, &data).await;
    let listen = [("WHATSAPP_ROUTER_LISTEN", router.addr.to_string())];
    for (i, from) in ["971507000001@c.us", "971507000002@c.us", "4639135154355@lid"].iter().enumerate() {
        router.webhook(message(from, &format!("start_realty_{}", i + 1))).await;
    }
    let admin = admin_token();
    let call = |method: &'static str, path: &'static str, body: Value| {
        let bearer = format!("Bearer {admin}");
        let addr = router.addr;
        async move { send(addr, method, path, Bytes::from(body.to_string()), &[("authorization", &bearer)]).await }
    };
    call(
        "PUT",
        "/api/gateway/tenants/4",
        json!({"name": "Four", "signing_secret": "whsec_Zm91ci1zaWduaW5nLXNlY3JldC0xMjM0NTY3OA=="}),
    )
    .await;
    call("PUT", "/api/gateway/user/971507000001/mapping", json!({"tenant_id": 4})).await;

    let online = dir.path().join("online.backup");
    let out = run(&config, &["backup", online.to_str().unwrap()], &listen).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("through the running router"));
    // Serving goes on after the backup.
    assert_eq!(router.webhook(message("971507000002@c.us", "hi")).await.1["tenant_id"], 2);
    router.signal("TERM");
    assert!(router.wait_exit().await.success());

    let offline = dir.path().join("offline.backup");
    let out = run(&config, &["backup", offline.to_str().unwrap()], &listen).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken from"), "{out:?}");
    assert_eq!(std::fs::read(&online).unwrap(), std::fs::read(&offline).unwrap(), "same data, same bytes");

    let (fresh, fresh_config) = write_config(dir.path(), "fresh", &setup);
    let restored = stdout(&run(&fresh_config, &["restore", online.to_str().unwrap()], &[]).await);
    assert!(restored.starts_with("restored "), "{restored}");
    assert_eq!(run(&fresh_config, &["restore", online.to_str().unwrap()], &[]).await.status.code(), Some(1));

    let router = Router::start(&setup, &fresh).await;
    let (_, stats) = router.admin("GET", "/api/gateway/stats", None, &admin).await;
    let per_tenant = json!({"2": 1, "3": 1, "4": 1});
    assert_eq!(stats["gateway_stats"], json!({"total_users": 3, "total_tenants": 3, "users_per_tenant": per_tenant}));
    let (_, tenant) = router.admin("GET", "/api/gateway/tenants/4", None, &admin).await;
    assert_eq!(
        (tenant["tenant"]["name"].clone(), tenant["tenant"]["signing_secret_set"].clone()),
        (json!("Four"), json!(true))
    );
    let (_, audit) = router.admin("GET", "/api/gateway/audit", None, &admin).await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 4, "{audit}");
    assert_eq!(router.webhook(message("971507000001@c.us", "restored?")).await.1["tenant_id"], 4);
    router.stop().await;
}

/// A fake WAHA: checks the API key, keeps one session's config, records calls.
struct FakeWaha {
    addr: std::net::SocketAddr,
    session: Arc<Mutex<Option<Value>>>,
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
}

const WAHA_KEY: &str = "waha-own-api-key-123";

impl FakeWaha {
    async fn start() -> FakeWaha {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let session: Arc<Mutex<Option<Value>>> = Arc::default();
        let calls: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
        let (s, c) = (session.clone(), calls.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (s, c) = (s.clone(), c.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (s, c) = (s.clone(), c.clone());
                    async move { Ok::<_, std::convert::Infallible>(waha_answer(req, &s, &c).await) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        FakeWaha { addr, session, calls }
    }

    fn take_calls(&self) -> Vec<(String, String, Value)> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }
}

async fn waha_answer(
    req: Request<Incoming>,
    session: &Mutex<Option<Value>>,
    calls: &Mutex<Vec<(String, String, Value)>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
    calls.lock().unwrap().push((method.clone(), path.clone(), json.clone()));
    let reply = |status: u16, body: Value| {
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        resp
    };
    if parts.headers.get("x-api-key").map(|v| v.as_bytes()) != Some(WAHA_KEY.as_bytes()) {
        return reply(401, json!({"message": "Unauthorized", "statusCode": 401}));
    }
    let mut current = session.lock().unwrap();
    match (method.as_str(), path.as_str()) {
        ("GET", "/api/sessions/default") => match &*current {
            None => reply(404, json!({"message": "Session not found", "statusCode": 404})),
            Some(config) => reply(
                200,
                json!({"name": "default", "status": "WORKING", "config": config, "me": null, "engine": {"engine": "NOWEB"}}),
            ),
        },
        ("POST", "/api/sessions") if current.is_some() => {
            reply(422, json!({"message": "Session 'default' already exists. Use PUT to update it."}))
        }
        ("POST", "/api/sessions") if json["name"] == "default" && json["start"] == true => {
            // WAHA adds defaults to what it was given.
            let mut config = json["config"].clone();
            config["debug"] = json!(false);
            *current = Some(config);
            reply(201, json!({"name": "default", "status": "STARTING"}))
        }
        ("PUT", "/api/sessions/default") if current.is_some() && json["config"].is_object() => {
            *current = Some(json["config"].clone());
            reply(200, json!({"name": "default", "status": "STARTING"}))
        }
        _ => reply(400, json!({"message": "unexpected request"})),
    }
}

#[tokio::test]
async fn waha_setup_is_idempotent_and_sends_the_right_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start().await;
    let mut setup = Setup::new(&backend);
    setup.extra_waha = format!("hmac_key = \"{HMAC_KEY}\"");
    let (_data, config) = write_config(dir.path(), "data", &setup);
    let waha = FakeWaha::start().await;
    let url = format!("http://{}", waha.addr);
    let args =
        ["waha", "setup", "--waha-url", &url, "--waha-api-key", WAHA_KEY, "--public-url", "https://router.example/"];
    let hook = json!({
        "url": "https://router.example/api/gateway/waha",
        "events": ["message", "session.status"],
        "hmac": {"key": HMAC_KEY},
        "retries": {"policy": "constant", "delaySeconds": 2, "attempts": 15},
        "customHeaders": [{"name": "X-Api-Key", "value": API_KEY}],
    });

    assert_eq!(stdout(&run(&config, &args, &[]).await), "session default: created and started\n");
    let calls = waha.take_calls();
    assert_eq!(calls[0], ("GET".into(), "/api/sessions/default".into(), Value::Null));
    assert_eq!(
        calls[1],
        (
            "POST".into(),
            "/api/sessions".into(),
            json!({"name": "default", "start": true, "config": {"webhooks": [hook]}})
        )
    );
    assert_eq!(calls.len(), 2);

    assert_eq!(stdout(&run(&config, &args, &[]).await), "session default: already set up; nothing changed\n");
    assert_eq!(waha.take_calls().len(), 1, "only the GET: a PUT would restart the session");

    // Someone subscribed message.any too and added another webhook: fixed, the rest kept.
    {
        let mut session = waha.session.lock().unwrap();
        let config = session.as_mut().unwrap();
        config["webhooks"][0]["events"] = json!(["message", "session.status", "message.any"]);
        config["webhooks"].as_array_mut().unwrap().push(json!({"url": "http://other/", "events": ["message"]}));
    }
    assert!(stdout(&run(&config, &args, &[]).await).starts_with("session default: webhook updated"));
    let calls = waha.take_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[1].0.as_str(), calls[1].1.as_str()), ("PUT", "/api/sessions/default"));
    assert_eq!(
        calls[1].2,
        json!({"config": {"debug": false, "webhooks": [{"url": "http://other/", "events": ["message"]}, hook]}})
    );

    let wrong =
        ["waha", "setup", "--waha-url", &url, "--waha-api-key", "wrong-key", "--public-url", "https://router.example"];
    let out = run(&config, &wrong, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
}
