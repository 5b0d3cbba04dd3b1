//! Tenant endpoints: the registry (list, get, put, delete), deep links and
//! their QR codes, and the online backup.
//!
//! Registry changes are written to sled first and then to the in-memory
//! registry, so a crash in between leaves sled (the truth) ahead, never behind.
//! A deleted tenant's senders stay locked to it and are answered `unknown_tenant`
//! (not forwarded) until they are reassigned or the tenant is added again.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{qr, raw_response};
use crate::config::{parse_forward_url, tenant_url};
use crate::delivery::sign::SigningKey;
use crate::error::{json_response, ApiError};
use crate::route::TenantId;
use crate::store::{StoreError, TenantRecord};
use crate::App;

type Answer = Result<Response<Full<Bytes>>, ApiError>;

const MAX_NAME: usize = 200;

/// The public view of a tenant: never the signing secret itself.
fn view(app: &App, record: &TenantRecord) -> Result<Value, StoreError> {
    Ok(json!({
        "tenant_id": record.id,
        "name": record.name,
        "url": record.url,
        "forward_url": tenant_url(&app.config.forward.url_template, record.id, record.url.as_deref()),
        "signing_secret_set": !record.signing_secrets.is_empty(),
        "previous_signing_secret_set": record.signing_secrets.len() > 1,
        "users": app.store.count(record.id)?,
    }))
}

fn missing(id: TenantId) -> ApiError {
    ApiError::Missing(format!("tenant {id} not found"))
}

pub fn list(app: &App) -> Answer {
    let tenants = app.store.tenants()?.iter().map(|r| view(app, r)).collect::<Result<Vec<_>, _>>()?;
    Ok(json_response(StatusCode::OK, &json!({"status": "success", "tenants": tenants})))
}

pub fn get(app: &App, id: TenantId) -> Answer {
    let record = app.store.get_tenant(id)?.ok_or_else(|| missing(id))?;
    Ok(json_response(StatusCode::OK, &json!({"status": "success", "tenant": view(app, &record)?})))
}

/// `PUT /api/gateway/tenants/{id}`. `url` absent or null follows the template.
/// `signing_secret` (a `whsec_` secret): absent keeps the current one, null
/// removes the tenant's own secrets (the global one signs again), and a new value
/// rotates: the old secret stays as the previous one, so forwards carry both
/// signatures until `previous_signing_secret` is set to null (or rotated again).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    name: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    signing_secret: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    previous_signing_secret: Option<Value>,
}

/// Absent is `None` (by `default`); present, even `null`, is `Some`: a plain
/// `Option<Value>` would read `null` as absent and "remove" as "keep".
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

pub async fn put(app: &App, id: TenantId, body: TenantBody) -> Answer {
    let name = body.name.trim();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!("name must be 1 to {MAX_NAME} printable characters")));
    }
    let url = body.url.filter(|u| !u.is_empty());
    if let Some(u) = &url {
        parse_forward_url(u).map_err(|e| ApiError::BadRequest(format!("url: {e}")))?;
    }
    let existing = app.store.get_tenant(id)?;
    let current = existing.as_ref().map(|r| r.signing_secrets.clone()).unwrap_or_default();
    let signing_secrets = signing_secrets(current, body.signing_secret, body.previous_signing_secret)?;
    let record = TenantRecord { id, name: name.to_owned(), url, signing_secrets };
    app.store.put_tenant(&record)?;
    app.store.durable().await?;
    app.registry.upsert(record.clone()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let status = if existing.is_some() { "updated" } else { "created" };
    tracing::info!(tenant = id, status, "tenant saved");
    Ok(json_response(StatusCode::OK, &json!({"status": status, "tenant": view(app, &record)?})))
}

/// The tenant's secrets after a PUT (see [`TenantBody`]), newest first.
fn signing_secrets(current: Vec<String>, new: Option<Value>, previous: Option<Value>) -> Result<Vec<String>, ApiError> {
    let parse = |field: &str, v: String| {
        SigningKey::parse(&v).map_err(|e| ApiError::BadRequest(format!("{field}: {e}")))?;
        Ok::<_, ApiError>(v)
    };
    let bad = |field: &str| ApiError::BadRequest(format!("{field} must be a `whsec_` secret or null"));
    let mut secrets = match new {
        None => current,
        Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) if current.first() == Some(&s) => current,
        Some(Value::String(s)) => {
            let mut rotated = vec![parse("signing_secret", s)?];
            rotated.extend(current.into_iter().take(1));
            rotated
        }
        Some(_) => return Err(bad("signing_secret")),
    };
    match previous {
        None => {}
        Some(Value::Null) => secrets.truncate(1),
        Some(Value::String(s)) if !secrets.is_empty() => {
            secrets.truncate(1);
            secrets.push(parse("previous_signing_secret", s)?);
        }
        Some(_) => return Err(bad("previous_signing_secret")),
    }
    Ok(secrets)
}

pub async fn delete(app: &App, id: TenantId) -> Answer {
    if !app.store.remove_tenant(id)? {
        return Err(missing(id));
    }
    app.store.durable().await?;
    app.registry.remove(id);
    let locked = app.store.count(id)?;
    tracing::info!(tenant = id, locked, "tenant deleted; its senders stay locked to it");
    Ok(json_response(StatusCode::OK, &json!({"status": "deleted", "tenant_id": id, "locked_users": locked})))
}

/// The deep link of a tenant that exists.
fn deep_link(app: &App, id: TenantId) -> Result<String, ApiError> {
    if !app.registry.contains(id) {
        return Err(missing(id));
    }
    Ok(format!("https://wa.me/{}?text={}{id}", app.config.gateway_phone, app.config.deep_link_prefix))
}

pub fn link(app: &App, id: TenantId) -> Answer {
    let link = deep_link(app, id)?;
    Ok(json_response(StatusCode::OK, &json!({"tenant_id": id, "link": link})))
}

pub fn qr(app: &App, id: TenantId, png: bool) -> Answer {
    let link = deep_link(app, id)?;
    let failed = |e: qr::QrError| ApiError::BadRequest(e.to_string());
    Ok(if png {
        raw_response("image/png", qr::png(&link).map_err(failed)?)
    } else {
        raw_response("image/svg+xml", qr::svg(&link).map_err(failed)?)
    })
}

/// `GET /api/gateway/backup`: the whole store in the backup format, built on a
/// blocking thread while the router keeps serving.
pub async fn backup(app: &App) -> Answer {
    let store = std::sync::Arc::clone(&app.store);
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        store.backup(&mut out).map(|count| (out, count))
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?;
    let (out, count) = bytes.map_err(|e| match e {
        crate::store::BackupError::Store(e) => ApiError::Store(e),
        other => ApiError::Store(StoreError::Task(other.to_string())),
    })?;
    tracing::info!(records = count, bytes = out.len(), "backup served");
    Ok(raw_response("application/octet-stream", out))
}
