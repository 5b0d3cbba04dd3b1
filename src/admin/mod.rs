//! The admin API under `/api/gateway/` (everything but the webhook): path
//! parsing, bearer-token authentication, per-route authorisation, dispatch.
//!
//! Order of checks: odd paths are refused (400) before anything else, unknown
//! paths are 404 (so more admin endpoints can be added as arms in
//! `server::dispatch`), then the method (405), the token (401) and the scope
//! (403). Handlers live in `users` (senders, stats, audit) and `tenants`
//! (registry, links, QR codes, backup).

pub mod qr;
mod tenants;
pub mod token;
mod users;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::delivery;
use crate::error::ApiError;
use crate::route::TenantId;
use crate::sender::{parse_user_input, SenderKey};
use crate::server::Worker;
use token::{Claims, Scope};

pub const PREFIX: &str = "/api/gateway/";
/// Longest admin path accepted; anything longer is an odd input (400).
const MAX_PATH: usize = 256;
/// Longest path segment (a phone with `@c.us` is under 30).
const MAX_SEGMENT: usize = 64;
/// Admin request bodies are tiny JSON objects.
const MAX_BODY: usize = 64 * 1024;

/// An admin endpoint, with its path parameters parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Stats,
    UserTenant(SenderKey),
    UserMapping(SenderKey),
    Tenants,
    Tenant(TenantId),
    TenantLink(TenantId),
    TenantQrSvg(TenantId),
    TenantQrPng(TenantId),
    Audit,
    Backup,
    /// The delivery queue (see `delivery::api`).
    Deliveries,
    DeliveryReplay(u64),
    TenantReplay(TenantId),
}

impl Route {
    /// Parses a path under [`PREFIX`]: `Ok(None)` is an unknown path (404).
    pub fn parse(path: &str) -> Result<Option<Route>, ApiError> {
        let bad = |what: &str| ApiError::BadRequest(format!("bad path: {what}"));
        if path.len() > MAX_PATH {
            return Err(bad("too long"));
        }
        let Some(rest) = path.strip_prefix(PREFIX) else { return Ok(None) };
        let segments: Vec<&str> = rest.split('/').collect();
        // Paths outside the admin namespaces (the webhook's, future endpoints')
        // are not judged here: they are simply unknown.
        if !matches!(segments[0], "stats" | "audit" | "backup" | "tenants" | "user" | "deliveries") {
            return Ok(None);
        }
        for s in &segments {
            if s.is_empty() || *s == "." || *s == ".." {
                return Err(bad("empty, `.` or `..` segment"));
            }
            if s.len() > MAX_SEGMENT {
                return Err(bad("segment too long"));
            }
            if s.contains('%') || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("encoded or non-printable characters"));
            }
        }
        let phone = |s: &str| {
            parse_user_input(s).ok_or_else(|| {
                ApiError::BadRequest(
                    "phone must be digits, +digits, digits@c.us, lid:digits or digits@lid (1-18 digits)".into(),
                )
            })
        };
        let tenant = |s: &str| parse_tenant_id(s).ok_or_else(|| bad("tenant id must be a number from 1 to 4294967295"));
        Ok(Some(match segments.as_slice() {
            ["stats"] => Route::Stats,
            ["audit"] => Route::Audit,
            ["backup"] => Route::Backup,
            ["tenants"] => Route::Tenants,
            ["user", p, "tenant"] => Route::UserTenant(phone(p)?),
            ["user", p, "mapping"] => Route::UserMapping(phone(p)?),
            ["tenants", id] => Route::Tenant(tenant(id)?),
            ["tenants", id, "link"] => Route::TenantLink(tenant(id)?),
            ["tenants", id, "qr.svg"] => Route::TenantQrSvg(tenant(id)?),
            ["tenants", id, "qr.png"] => Route::TenantQrPng(tenant(id)?),
            ["tenants", id, "replay"] => Route::TenantReplay(tenant(id)?),
            ["deliveries"] => Route::Deliveries,
            ["deliveries", id, "replay"] => Route::DeliveryReplay(
                id.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad("delivery id must be a positive number"))?,
            ),
            _ => return Ok(None),
        }))
    }

    /// The methods this route answers, as an `Allow` header value.
    fn allow(self) -> &'static str {
        match self {
            Route::UserMapping(_) => "DELETE, PUT",
            Route::Tenant(_) => "GET, PUT, DELETE",
            Route::DeliveryReplay(_) | Route::TenantReplay(_) => "POST",
            _ => "GET",
        }
    }

    /// Whether a tenant token may call this route (its own data only); admin may call all.
    fn permits(self, scope: &Scope) -> bool {
        let own = match scope {
            Scope::Admin => return true,
            Scope::Tenant(t) => *t,
        };
        match self {
            // Stats are filtered to the tenant's own entry; sender lookups are
            // checked against the lock in the handler.
            Route::Stats | Route::UserTenant(_) => true,
            Route::TenantLink(id) | Route::TenantQrSvg(id) | Route::TenantQrPng(id) => id == own,
            _ => false,
        }
    }
}

/// A tenant id as typed in a path or query: 1 to 10 digits, > 0, fits in u32.
pub fn parse_tenant_id(s: &str) -> Option<TenantId> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<TenantId>().ok().filter(|t| *t > 0)
}

/// A caller that passed authentication.
pub struct Caller {
    pub claims: Claims,
    pub scope: Scope,
}

/// Handles any `/api/gateway/...` request other than the webhook.
pub async fn handle(worker: &Worker, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match process(worker, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn process(worker: &Worker, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let route = Route::parse(req.uri().path())?.ok_or(ApiError::NotFound)?;
    let method = req.method().clone();
    let allowed = route.allow().split(", ").any(|m| m == method.as_str());
    if !allowed {
        return Err(ApiError::MethodNotAllowed(route.allow()));
    }
    let caller = authenticate(worker, req.headers())?;
    if !route.permits(&caller.scope) {
        return Err(ApiError::Forbidden);
    }
    let app = &worker.app;
    match (route, method) {
        (Route::Stats, _) => users::stats(app, &caller),
        (Route::UserTenant(key), _) => users::lookup(app, &caller, key).await,
        (Route::UserMapping(key), Method::DELETE) => users::delete(app, &caller, key).await,
        (Route::UserMapping(key), _) => {
            users::reassign(app, &caller, key, read_json(req, app.config.body_read_timeout).await?).await
        }
        (Route::Audit, _) => users::audit(app, req.uri().query().unwrap_or("")),
        (Route::Tenants, _) => tenants::list(app),
        (Route::Tenant(id), Method::GET) => tenants::get(app, id),
        (Route::Tenant(id), Method::PUT) => {
            tenants::put(app, id, read_json(req, app.config.body_read_timeout).await?).await
        }
        (Route::Tenant(id), _) => tenants::delete(app, id).await,
        (Route::TenantLink(id), _) => tenants::link(app, id),
        (Route::TenantQrSvg(id), _) => tenants::qr(app, id, false),
        (Route::TenantQrPng(id), _) => tenants::qr(app, id, true),
        (Route::Backup, _) => tenants::backup(app).await,
        (Route::Deliveries, _) => ok(delivery::api::list(&app.delivery, req.uri().query().unwrap_or(""))?),
        (Route::DeliveryReplay(id), _) => ok(delivery::api::replay(&app.delivery, id)?),
        (Route::TenantReplay(id), _) => ok(delivery::api::replay_tenant(&app.delivery, id)?),
    }
}

/// Checks the bearer token (401 when missing or invalid). Public so that other
/// `/api/gateway/...` endpoints can require the same tokens.
pub fn authenticate(worker: &Worker, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(ApiError::Unauthorized)?;
    let (scheme, token) = header.split_once(' ').ok_or(ApiError::Unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized);
    }
    let (claims, scope) = token::verify(&worker.app.secrets.admin_jwt_secret, token.trim()).map_err(|e| {
        tracing::debug!(error = %e, "admin token refused");
        ApiError::Unauthorized
    })?;
    Ok(Caller { claims, scope })
}

fn ok(body: serde_json::Value) -> Result<Response<Full<Bytes>>, ApiError> {
    Ok(crate::error::json_response(StatusCode::OK, &body))
}

/// Reads a small JSON body into `T`; unknown fields and wrong types are 400.
async fn read_json<T: DeserializeOwned>(req: Request<Incoming>, timeout: std::time::Duration) -> Result<T, ApiError> {
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), MAX_BODY).collect());
    let body = read
        .await
        .map_err(|_| ApiError::Timeout)?
        .map_err(|_| ApiError::BadRequest(format!("body must be JSON under {MAX_BODY} bytes")))?
        .to_bytes();
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))?;
    // serde would also read a struct from an array; only objects are bodies here.
    if !value.is_object() {
        return Err(ApiError::BadRequest("body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))
}

/// A response with a non-JSON body (QR images, backups).
fn raw_response(content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(path: &str, expected: Result<Option<Route>, ()>) {
        assert_eq!(Route::parse(path).map_err(|_| ()), expected, "{path}");
    }

    #[test]
    fn paths() {
        use SenderKey::{Lid, Phone};
        check("/api/gateway/stats", Ok(Some(Route::Stats)));
        check("/api/gateway/user/971509876543/tenant", Ok(Some(Route::UserTenant(Phone(971509876543)))));
        check("/api/gateway/user/+971509876543/mapping", Ok(Some(Route::UserMapping(Phone(971509876543)))));
        check("/api/gateway/user/971509876543@c.us/tenant", Ok(Some(Route::UserTenant(Phone(971509876543)))));
        check("/api/gateway/user/lid:4639135154355/tenant", Ok(Some(Route::UserTenant(Lid(4639135154355)))));
        check("/api/gateway/user/4639135154355@lid/tenant", Ok(Some(Route::UserTenant(Lid(4639135154355)))));
        check("/api/gateway/tenants/7/qr.png", Ok(Some(Route::TenantQrPng(7))));
        check("/api/gateway/tenants/4294967295", Ok(Some(Route::Tenant(u32::MAX))));
        check("/api/gateway/deliveries", Ok(Some(Route::Deliveries)));
        check("/api/gateway/deliveries/17/replay", Ok(Some(Route::DeliveryReplay(17))));
        check("/api/gateway/tenants/2/replay", Ok(Some(Route::TenantReplay(2))));
        check("/api/gateway/deliveries/17", Ok(None));
        check("/elsewhere", Ok(None));
        check("/api/gateway/waha/../x", Ok(None));
        for odd in [
            "/api/gateway/user/../tenant",
            "/api/gateway/user/..%2F..%2Fetc/tenant",
            "/api/gateway/user/971%2F1/tenant",
            "/api/gateway/user/12ab/tenant",
            "/api/gateway/user/1234567890123456789/tenant",
            "/api/gateway/user//tenant",
            "/api/gateway/tenants/0",
            "/api/gateway/tenants/4294967296",
            "/api/gateway/tenants/-1/link",
            "/api/gateway/tenants/1e3",
            "/api/gateway/stats/",
            &format!("/api/gateway/user/{}/tenant", "9".repeat(300)),
            &format!("/api/gateway/tenants/{}", "1".repeat(70)),
        ] {
            check(odd, Err(()));
        }
    }

    #[test]
    fn tenant_scope() {
        let t = Scope::Tenant(2);
        assert!(Route::TenantLink(2).permits(&t));
        assert!(!Route::TenantLink(3).permits(&t));
        assert!(!Route::TenantQrPng(3).permits(&t));
        assert!(!Route::Tenant(2).permits(&t));
        assert!(!Route::Audit.permits(&t));
        assert!(!Route::UserMapping(SenderKey::Phone(1)).permits(&t));
        assert!(Route::Backup.permits(&Scope::Admin));
    }
}
