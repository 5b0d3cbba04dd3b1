//! `whatsapp-router waha setup`: points a WAHA session's webhook at the router,
//! idempotently (what the prototype's deploy script did).
//!
//! GET the session; 404 -> POST /api/sessions with `start: true`; otherwise PUT
//! the full config, but only when our webhook differs, because a PUT restarts the
//! session (a gap in webhooks). Our webhook: `<public-url>/api/gateway/waha`,
//! events `message` and `session.status` only (`message.any` too would deliver
//! every inbound message twice), `hmac.key` = `waha.hmac_key`, our `waha.api_key`
//! as a custom `X-Api-Key` header, and retries set explicitly.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::forward::{self, ForwardError};

/// WAHA's session calls answer quickly; a stuck WAHA should not hang a deploy.
const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ANSWER: usize = 1024 * 1024;

pub struct SetupOptions {
    /// WAHA's base URL, e.g. `http://127.0.0.1:3000`.
    pub waha_url: String,
    /// WAHA's own API key (sent as `X-Api-Key` to WAHA).
    pub waha_api_key: String,
    pub session: String,
    /// Where WAHA reaches the router, e.g. `http://127.0.0.1:8000`.
    pub public_url: String,
    /// The router's webhook key, sent back by WAHA as a custom header.
    pub webhook_api_key: Option<String>,
    pub hmac_key: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SetupOutcome {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot reach WAHA: {0}")]
    Http(#[from] ForwardError),
    #[error("WAHA answered {status} to {what}: {body}")]
    Status { what: String, status: StatusCode, body: String },
    #[error("WAHA's session answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("--session must be letters, digits, `_` or `-`")]
    BadSession,
}

/// The webhook entry we want in the session config.
pub fn desired_webhook(opts: &SetupOptions) -> Value {
    let mut hook = json!({
        "url": format!("{}/api/gateway/waha", opts.public_url.trim_end_matches('/')),
        "events": ["message", "session.status"],
        "retries": {"policy": "constant", "delaySeconds": 2, "attempts": 15},
        "customHeaders": [],
    });
    if let Some(key) = &opts.hmac_key {
        hook["hmac"] = json!({"key": key});
    }
    if let Some(key) = &opts.webhook_api_key {
        hook["customHeaders"] = json!([{"name": "X-Api-Key", "value": key}]);
    }
    hook
}

/// Whether `have` already says everything `want` says (extra fields WAHA adds,
/// such as defaults, do not count as a difference; event order does not either).
pub fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| h.get(k).is_some_and(|hv| covers(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && w.iter().all(|wv| h.iter().any(|hv| covers(hv, wv)))
        }
        _ => have == want,
    }
}

/// Runs the setup against WAHA.
pub async fn run(opts: &SetupOptions) -> Result<SetupOutcome, SetupError> {
    if opts.session.is_empty() || !opts.session.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(SetupError::BadSession);
    }
    let base = opts.waha_url.trim_end_matches('/');
    let session_url = format!("{base}/api/sessions/{}", opts.session);
    let want = desired_webhook(opts);
    let (status, body) = call(opts, Method::GET, &session_url, None).await?;
    if status == StatusCode::NOT_FOUND {
        let create = json!({"name": opts.session, "start": true, "config": {"webhooks": [want]}});
        expect(opts, Method::POST, &format!("{base}/api/sessions"), create, "POST /api/sessions").await?;
        return Ok(SetupOutcome::Created);
    }
    if !status.is_success() {
        return Err(failed(format!("GET /api/sessions/{}", opts.session), status, &body));
    }
    let session: Value = serde_json::from_slice(&body)?;
    let mut config = session.get("config").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    let hooks: Vec<Value> = config.get("webhooks").and_then(Value::as_array).cloned().unwrap_or_default();
    let ours = |h: &Value| h.get("url") == want.get("url");
    if hooks.iter().filter(|h| ours(h)).count() == 1 && hooks.iter().any(|h| ours(h) && covers(h, &want)) {
        return Ok(SetupOutcome::Unchanged);
    }
    // Keep other webhooks; replace ours (PUT takes the full config).
    let mut next: Vec<Value> = hooks.into_iter().filter(|h| !ours(h)).collect();
    next.push(want);
    config["webhooks"] = Value::Array(next);
    expect(opts, Method::PUT, &session_url, json!({"config": config}), "PUT /api/sessions/{session}").await?;
    Ok(SetupOutcome::Updated)
}

async fn call(
    opts: &SetupOptions,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Bytes), SetupError> {
    let headers = [("x-api-key", opts.waha_api_key.as_str()), ("accept", "application/json")];
    let body = body.map(|b| Bytes::from(b.to_string()));
    Ok(forward::request(method, url, &headers, body, TIMEOUT, MAX_ANSWER).await?)
}

async fn expect(opts: &SetupOptions, method: Method, url: &str, body: Value, what: &str) -> Result<(), SetupError> {
    let (status, answer) = call(opts, method, url, Some(body)).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(failed(what.replace("{session}", &opts.session), status, &answer))
    }
}

fn failed(what: String, status: StatusCode, body: &[u8]) -> SetupError {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    SetupError::Status { what, status, body: text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_ignores_extras_and_order() {
        let want = json!({"url": "u", "events": ["message", "session.status"], "hmac": {"key": "k"}});
        let cases = [
            (json!({"url": "u", "events": ["session.status", "message"], "hmac": {"key": "k"}, "x": 1}), true),
            (json!({"url": "u", "events": ["message", "session.status", "message.any"], "hmac": {"key": "k"}}), false),
            (json!({"url": "u", "events": ["message", "session.status"], "hmac": null}), false),
            (json!({"url": "v", "events": ["message", "session.status"], "hmac": {"key": "k"}}), false),
        ];
        for (have, expected) in cases {
            assert_eq!(covers(&have, &want), expected, "{have}");
        }
    }
}
