//! The webhook endpoint, `POST /api/gateway/waha`: authenticate, read, classify,
//! resolve the sender's lock, forward, answer.
//!
//! Answers are chosen for WAHA's retry behaviour: WAHA retries anything but a
//! 2xx, so everything that must never be retried (ignored events, senders without
//! a link, messages parked for later delivery) gets a 200 with the reason, and
//! only failures a retry can fix (store down: 503; the same message in flight
//! right now: 409) get an error status. A failing tenant is the queue's problem,
//! not WAHA's: its messages are parked and WAHA gets 200 `queued`.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::auth;
use crate::config::MAX_BODY_BYTES;
use crate::delivery::dedupe::MessageKey;
use crate::delivery::{Accepted, Message};
use crate::error::{self, json_bytes, ApiError};
use crate::forward::HEADER_REQUEST_ID;
use crate::metrics::{event_index, Outcome};
use crate::route::{classify, decide, identity_hash, message_identity, Decision, Plan, Sender, Skip, TenantId};
use crate::server::Worker;
use crate::webhook::with_envelope;

/// Handles one webhook; never fails, every error becomes its response.
pub async fn handle(worker: &Worker, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut event = event_index("other");
    let result = process(worker, req, &mut event).await;
    let app = &worker.app;
    match result {
        Ok((outcome, resp)) => {
            app.metrics.webhook(event, outcome);
            resp
        }
        Err(e) => {
            let outcome = match &e {
                ApiError::Unauthorized => Outcome::Unauthorized,
                ApiError::TooLarge(_) => Outcome::TooLarge,
                ApiError::BadRequest(_) => Outcome::BadRequest,
                ApiError::Store(_) => Outcome::StoreError,
                ApiError::InProgress => Outcome::InProgress,
                // A body that never arrived is a bad request as far as metrics go.
                _ => Outcome::BadRequest,
            };
            app.metrics.webhook(event, outcome);
            e.into_response()
        }
    }
}

async fn process(
    worker: &Worker,
    req: Request<Incoming>,
    event: &mut usize,
) -> Result<(Outcome, Response<Full<Bytes>>), ApiError> {
    let app = &worker.app;
    let (parts, body) = req.into_parts();
    // The API key is checked before reading the body: a caller without it costs nothing.
    if !auth::api_key_ok(&parts.headers, app.secrets.waha_api_key.as_ref()) {
        return Err(ApiError::Unauthorized);
    }
    let body = read_body(&parts.headers, body, app.config.body_read_timeout).await?;
    if !auth::hmac_ok(&parts.headers, &body, app.secrets.waha_hmac_key.as_ref()) {
        return Err(ApiError::Unauthorized);
    }
    let (plan, identity) = with_envelope(&body, |envelope| {
        *event = event_index(&envelope.event);
        (classify(envelope, &app.config.deep_link_prefix), message_identity(envelope))
    })?;
    let (sender, link, may_lock) = match plan {
        Plan::Skip(skip) => return Ok(skipped(skip)),
        Plan::Resolve { sender, link, may_lock } => (sender, link, may_lock),
    };
    let current = app.locks.lookup_sender(&sender).await?;
    let (tenant, outcome) = match decide(link, may_lock, current, |t| app.registry.contains(t)) {
        Decision::Skip(skip) => {
            if let (Skip::NoDeepLink, Some(auto_reply)) = (skip, &app.auto_reply) {
                auto_reply.notice(sender.key);
            }
            return Ok(skipped(skip));
        }
        Decision::Forward { tenant, relock_refused } => {
            app.locks.join_alias(sender, tenant).await?;
            if relock_refused {
                audit_refused(app, sender, tenant, link.and_then(|l| TenantId::try_from(l).ok()));
            }
            (tenant, if relock_refused { Outcome::RelockRefused } else { Outcome::Routed })
        }
        Decision::Lock { tenant } => {
            let started = Instant::now();
            let lock = app.locks.lock(sender, tenant).await?;
            app.metrics.store_flush.record(started.elapsed().as_secs_f64());
            if lock.created {
                app.metrics.lock_created(lock.tenant);
                tracing::info!(sender = %sender.key.masked(), tenant = lock.tenant, "sender locked to tenant");
            }
            let outcome = match (lock.created, lock.tenant == tenant) {
                (true, _) => Outcome::LockedNew,
                // Lost a race to another first message; that one's tenant wins.
                (false, true) => Outcome::Routed,
                (false, false) => {
                    audit_refused(app, sender, lock.tenant, Some(tenant));
                    Outcome::RelockRefused
                }
            };
            (lock.tenant, outcome)
        }
    };
    // Without a key id or event id, identical bodies are the same message.
    let key = identity.unwrap_or_else(|| identity_hash(&[b"body", &body]));
    deliver(worker, &parts.headers, body, key, sender, tenant, outcome).await
}

/// Audits a refused relock. Best effort: the audit log must not fail a webhook.
fn audit_refused(app: &crate::App, sender: Sender, held: TenantId, asked: Option<TenantId>) {
    let Some(asked) = asked else { return };
    if let Err(e) = app.store.audit_relock_refused(sender.key, held, asked) {
        tracing::warn!(error = %e, "could not audit a refused relock");
    }
}

fn skipped(skip: Skip) -> (Outcome, Response<Full<Bytes>>) {
    (Outcome::Skipped(skip), error::skipped(skip))
}

async fn deliver(
    worker: &Worker,
    headers: &HeaderMap,
    body: Bytes,
    key: MessageKey,
    sender: Sender,
    tenant: TenantId,
    outcome: Outcome,
) -> Result<(Outcome, Response<Full<Bytes>>), ApiError> {
    let app = &worker.app;
    let Some(target) = app.registry.get(tenant) else {
        // Locked to a tenant that is no longer in the registry: kept, not forwarded.
        return Ok(skipped(Skip::UnknownTenant));
    };
    let started = Instant::now();
    let message = Message {
        key,
        tenant,
        sender: sender.key,
        new_session: outcome == Outcome::LockedNew,
        request_id: headers.get(HEADER_REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned),
        body,
    };
    let accepted = app.delivery.deliver(&worker.forwarder, &target, message).await?;
    // The one line per routed request; the sender is masked, as everywhere in logs.
    tracing::debug!(
        sender = %sender.key.masked(),
        tenant,
        outcome = outcome.as_str(),
        result = ?accepted,
        elapsed_us = started.elapsed().as_micros() as u64,
        "forwarded"
    );
    // Fixed shapes, written directly: no `serde_json::Value` per answer.
    let (outcome, body) = match accepted {
        Accepted::Delivered => return Ok((outcome, error::routed(tenant))),
        Accepted::Queued { seq } => {
            (Outcome::Queued, format!(r#"{{"delivery_id":{seq},"status":"queued","tenant_id":{tenant}}}"#))
        }
        Accepted::DeadLettered { seq, status } => (
            Outcome::DeadLettered,
            format!(
                r#"{{"delivery_id":{seq},"status":"dead_lettered","tenant_id":{tenant},"tenant_status":{status}}}"#
            ),
        ),
        Accepted::Duplicate => (Outcome::Duplicate, format!(r#"{{"status":"duplicate","tenant_id":{tenant}}}"#)),
    };
    Ok((outcome, json_bytes(StatusCode::OK, Bytes::from(body))))
}

/// Reads the body, refusing more than [`MAX_BODY_BYTES`]: at once when
/// `Content-Length` says so, else as soon as the limit is crossed. A body that
/// takes longer than `timeout` in all (a trickle, or chunks that never end) is
/// a 408: the header timeout alone would let it hold the connection forever.
async fn read_body(headers: &HeaderMap, body: Incoming, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(ApiError::TooLarge(MAX_BODY_BYTES));
    }
    let Ok(read) = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await else {
        return Err(ApiError::Timeout);
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge(MAX_BODY_BYTES)),
        Err(e) => Err(ApiError::BadRequest(format!("could not read body: {e}"))),
    }
}
