//! The webhook endpoint, `POST /api/gateway/waha`: authenticate, read, classify,
//! resolve the sender's lock, forward, answer.
//!
//! Answers are chosen for WAHA's retry behaviour: WAHA retries anything but a
//! 2xx, so everything that must never be retried (ignored events, senders without
//! a link) gets a 200 with the reason, and only failures worth retrying (store
//! down: 503; tenant down: 502) get an error status.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::auth;
use crate::config::MAX_BODY_BYTES;
use crate::error::{self, ApiError};
use crate::forward::{Outbound, HEADER_REQUEST_ID};
use crate::metrics::{event_index, Outcome};
use crate::route::{classify, decide, Decision, Plan, Sender, Skip, TenantId};
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
                _ => Outcome::ForwardFailed,
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
    let body = read_body(&parts.headers, body).await?;
    if !auth::hmac_ok(&parts.headers, &body, app.secrets.waha_hmac_key.as_ref()) {
        return Err(ApiError::Unauthorized);
    }
    let plan = with_envelope(&body, |envelope| {
        *event = event_index(&envelope.event);
        classify(envelope, &app.config.deep_link_prefix)
    })?;
    let (sender, link, may_lock) = match plan {
        Plan::Skip(skip) => return Ok(skipped(skip)),
        Plan::Resolve { sender, link, may_lock } => (sender, link, may_lock),
    };
    let current = app.locks.lookup_sender(&sender).await?;
    let (tenant, outcome) = match decide(link, may_lock, current, |t| app.registry.contains(t)) {
        Decision::Skip(skip) => return Ok(skipped(skip)),
        Decision::Forward { tenant, relock_refused } => {
            app.locks.join_alias(sender, tenant).await?;
            (tenant, if relock_refused { Outcome::RelockRefused } else { Outcome::Routed })
        }
        Decision::Lock { tenant } => {
            let started = Instant::now();
            let lock = app.locks.lock(sender, tenant).await?;
            app.metrics.store_flush.record(started.elapsed().as_secs_f64());
            if lock.created {
                app.metrics.locks_created.increment(1);
                tracing::info!(sender = %sender.key.masked(), tenant = lock.tenant, "sender locked to tenant");
            }
            let outcome = match (lock.created, lock.tenant == tenant) {
                (true, _) => Outcome::LockedNew,
                // Lost a race to another first message; that one's tenant wins.
                (false, true) => Outcome::Routed,
                (false, false) => Outcome::RelockRefused,
            };
            (lock.tenant, outcome)
        }
    };
    forward(worker, &parts.headers, body, sender, tenant, outcome).await
}

fn skipped(skip: Skip) -> (Outcome, Response<Full<Bytes>>) {
    (Outcome::Skipped(skip), error::skipped(skip))
}

async fn forward(
    worker: &Worker,
    headers: &HeaderMap,
    body: Bytes,
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
    let result = worker
        .forwarder
        .send(Outbound {
            uri: &target.uri,
            body,
            tenant,
            sender: sender.key,
            new_session: outcome == Outcome::LockedNew,
            request_id: headers.get(HEADER_REQUEST_ID),
        })
        .await;
    app.metrics.forward_duration.record(started.elapsed().as_secs_f64());
    tracing::debug!(
        sender = %sender.key.masked(),
        tenant,
        outcome = outcome.as_str(),
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = result.is_ok(),
        "forwarded"
    );
    match result {
        Ok(_) => {
            app.metrics.forward("ok");
            Ok((outcome, error::routed(tenant)))
        }
        Err(source) => {
            app.metrics.forward(source.kind());
            tracing::warn!(tenant, error = %source, "forward failed");
            Err(ApiError::Forward { tenant, source })
        }
    }
}

/// Reads the body, refusing more than [`MAX_BODY_BYTES`]: at once when
/// `Content-Length` says so, else as soon as the limit is crossed.
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(ApiError::TooLarge(MAX_BODY_BYTES));
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge(MAX_BODY_BYTES)),
        Err(e) => Err(ApiError::BadRequest(format!("could not read body: {e}"))),
    }
}
