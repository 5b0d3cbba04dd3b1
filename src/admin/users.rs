//! Sender endpoints: stats, lookup, delete and reassign a lock, the audit log.
//!
//! Lock changes go through [`crate::locks::Locks`] so the cache is fixed after
//! sled (see its module comment); stats come from the per-tenant counters.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{json, Value};

use super::token::Scope;
use super::{parse_tenant_id, Caller};
use crate::error::{json_response, ApiError};
use crate::sender::{parse_user_input, SenderKey};
use crate::store::AuditQuery;
use crate::App;

type Answer = Result<Response<Full<Bytes>>, ApiError>;

const AUDIT_PAGE_DEFAULT: usize = 100;
const AUDIT_PAGE_MAX: usize = 1000;

/// `GET /api/gateway/stats`, the prototype's shape. A tenant token sees only its own entry.
pub fn stats(app: &App, caller: &Caller) -> Answer {
    let mut per_tenant = app.store.stats()?.per_tenant;
    if let Scope::Tenant(own) = caller.scope {
        let n = per_tenant.get(&own).copied().unwrap_or(0);
        per_tenant = BTreeMap::from([(own, n)]);
    }
    let total_users: u64 = per_tenant.values().sum();
    let users_per_tenant: serde_json::Map<String, Value> =
        per_tenant.iter().map(|(t, n)| (t.to_string(), json!(n))).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "success", "gateway_stats": {
            "total_users": total_users,
            "total_tenants": users_per_tenant.len(),
            "users_per_tenant": users_per_tenant,
        }}),
    ))
}

fn not_found(key: SenderKey) -> Response<Full<Bytes>> {
    json_response(StatusCode::NOT_FOUND, &json!({"status": "not_found", "phone_number": key.to_string()}))
}

/// `GET /api/gateway/user/{phone}/tenant`. A tenant token may look up only its
/// own senders; any other sender (locked elsewhere or not at all) is 403, so a
/// tenant cannot probe who talks to its competitors.
pub async fn lookup(app: &App, caller: &Caller, key: SenderKey) -> Answer {
    let found = app.locks.lookup(key).await?;
    if let Scope::Tenant(own) = caller.scope {
        if found != Some(own) {
            return Err(ApiError::Forbidden);
        }
    }
    Ok(match found {
        Some(tenant) => json_response(
            StatusCode::OK,
            &json!({"status": "found", "phone_number": key.to_string(), "tenant_id": tenant}),
        ),
        None => not_found(key),
    })
}

/// `DELETE /api/gateway/user/{phone}/mapping`.
pub async fn delete(app: &App, caller: &Caller, key: SenderKey) -> Answer {
    Ok(match app.locks.delete(key, &caller.claims.sub).await? {
        Some(previous) => {
            tracing::info!(sender = %key.masked(), previous, actor = %caller.claims.sub, "lock deleted");
            json_response(StatusCode::OK, &json!({"status": "deleted", "previous_tenant_id": previous}))
        }
        None => not_found(key),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reassign {
    tenant_id: u64,
}

/// `PUT /api/gateway/user/{phone}/mapping` `{"tenant_id": 3}`: admin reassignment.
pub async fn reassign(app: &App, caller: &Caller, key: SenderKey, body: Reassign) -> Answer {
    let tenant = u32::try_from(body.tenant_id)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| ApiError::BadRequest("tenant_id must be a number from 1 to 4294967295".into()))?;
    if !app.registry.contains(tenant) {
        return Err(ApiError::Missing(format!("tenant {tenant} not found")));
    }
    let previous = app.locks.reassign(key, tenant, &caller.claims.sub).await?;
    tracing::info!(sender = %key.masked(), ?previous, tenant, actor = %caller.claims.sub, "lock reassigned");
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "reassigned", "phone_number": key.to_string(),
                "previous_tenant_id": previous, "tenant_id": tenant}),
    ))
}

/// `GET /api/gateway/audit?phone=&tenant_id=&before=&limit=`, newest first.
pub fn audit(app: &App, query: &str) -> Answer {
    let mut q = AuditQuery { limit: AUDIT_PAGE_DEFAULT, ..AuditQuery::default() };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(raw).ok_or_else(|| ApiError::BadRequest(format!("`{name}` is badly encoded")))?;
        let bad = |what: &str| ApiError::BadRequest(format!("`{name}` must be {what}"));
        match name {
            "phone" if value.is_empty() => {}
            "phone" => q.sender = Some(parse_user_input(&value).ok_or_else(|| bad("a phone number or LID"))?),
            "tenant_id" if value.is_empty() => {}
            "tenant_id" => q.tenant = Some(parse_tenant_id(&value).ok_or_else(|| bad("a tenant id"))?),
            "before" => q.before = Some(value.parse().map_err(|_| bad("a sequence number"))?),
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=AUDIT_PAGE_MAX).contains(n))
                    .ok_or_else(|| bad("a number from 1 to 1000"))?
            }
            _ => return Err(ApiError::BadRequest(format!("unknown query parameter `{name}`"))),
        }
    }
    let (entries, next) = app.store.audit_page(q)?;
    Ok(json_response(StatusCode::OK, &json!({"status": "success", "entries": entries, "next_before": next})))
}

/// Decodes `%XX` escapes (a `+` stays a `+`, so `phone=+971...` works as typed).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        let cases: &[(&str, Option<&str>)] =
            &[("%2B971", Some("+971")), ("+971", Some("+971")), ("a%4", None), ("%zz", None), ("%C3%A9", Some("é"))];
        for (input, expected) in cases {
            assert_eq!(super::percent_decode(input).as_deref(), *expected, "{input}");
        }
    }
}
