//! Durable delivery: every routed message is forwarded at once or parked in
//! sled and retried, in order per sender, deduplicated, signed, and isolated
//! per tenant.
//!
//! The request path calls [`Delivery::deliver`]. A sender's messages form a
//! lane (arrival order). Only the head of a lane is ever in flight, so a message
//! is never delivered before an earlier one of the same sender, retries
//! included. A message that cannot go inline right away (the lane is busy, the
//! tenant's breaker is open, its delivery slots are full, or the attempt fails)
//! is written to the outbox and flushed before WAHA gets its 200; the
//! scheduler ([`Delivery::run`]) delivers lane heads when they are due.
//!
//! Invariant: a lane slot is `Parked` only once its record is in the outbox.

pub mod api;
pub mod breaker;
pub mod dedupe;
pub mod schedule;
pub mod sign;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use rand::Rng;
use tokio::sync::Notify;

use crate::config::DeliveryConfig;
use crate::forward::{ForwardError, Forwarder, Outbound};
use crate::metrics::Metrics;
use crate::registry::{Registry, Tenant};
use crate::route::TenantId;
use crate::sender::SenderKey;
use crate::store::{DeliveryRecord, DeliveryState, Store, StoreError};
use breaker::{BreakerConfig, Tenants};
use dedupe::{Begin, Dedupe, MessageKey};
use schedule::RetryPolicy;

/// A routed message on its way to a tenant.
pub struct Message {
    pub key: MessageKey,
    pub tenant: TenantId,
    pub sender: SenderKey,
    pub new_session: bool,
    pub request_id: Option<String>,
    pub body: Bytes,
}

/// What the request path tells WAHA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The tenant answered 2xx.
    Delivered,
    /// Parked in the outbox (on disk); the queue will deliver it.
    Queued { seq: u64 },
    /// The tenant refused it for good (4xx other than 408/429).
    DeadLettered { seq: u64, status: u16 },
    /// Already accepted within the dedupe window.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The same message is being delivered by another request right now.
    #[error("the same message is being delivered right now; retry shortly")]
    InProgress,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts for metrics and the admin API.
#[derive(Default)]
pub struct QueueStats {
    pub parked: AtomicI64,
    pub dead: AtomicI64,
    pub retries: AtomicI64,
    pub dead_letters: AtomicI64,
}

pub struct Delivery {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
    inline_timeout: Duration,
    queue_timeout: Duration,
    tenants: Tenants,
    dedupe: Dedupe,
    dedupe_window: Duration,
    /// Lanes by sender cache key.
    lanes: DashMap<u64, Lane>,
    /// (due ms, lane) for the scheduler; stale entries are skipped.
    timers: Mutex<BinaryHeap<Reverse<(u64, u64)>>>,
    wake: Notify,
    pub stats: QueueStats,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `msg_` + 32 hex digits: stable for a message across retries and duplicates.
pub fn webhook_id(key: &MessageKey) -> String {
    format!("msg_{}", hex::encode(key))
}

impl Delivery {
    /// Opens the queue: reloads parked messages into their lanes (arrival order)
    /// and the dedupe keys of the last window.
    pub fn open(
        store: Arc<Store>,
        config: &DeliveryConfig,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Delivery, StoreError> {
        let now = now_ms();
        let delivery = Delivery {
            policy: config.retry.clone(),
            inline_timeout: config.inline_timeout,
            queue_timeout,
            tenants: Tenants::new(
                BreakerConfig { failures: config.breaker_failures, open_for: config.breaker_open },
                config.max_in_flight_per_tenant,
            ),
            dedupe: Dedupe::new(config.dedupe_window, config.dedupe_max_entries, now),
            dedupe_window: config.dedupe_window,
            lanes: DashMap::new(),
            timers: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            stats: QueueStats::default(),
            store,
            metrics,
        };
        let window_start = now.saturating_sub(config.dedupe_window.as_millis() as u64);
        for item in delivery.store.dedupe_since(window_start) {
            let (at, key) = item?;
            delivery.dedupe.restore(key, at, now);
        }
        let mut parked = 0;
        for record in delivery.store.deliveries(DeliveryState::Parked, 0) {
            let record = record?;
            let mut lane = delivery.lanes.entry(record.sender.cache_key()).or_insert_with(Lane::new);
            if lane.slots.is_empty() {
                lane.due_ms = Some(record.next_attempt_ms);
            }
            lane.slots.push_back(Slot { seq: record.seq, state: SlotState::Parked });
            parked += 1;
        }
        let mut timers = delivery.timers.lock().expect("timer lock poisoned");
        for lane in delivery.lanes.iter() {
            if let Some(due) = lane.due_ms {
                timers.push(Reverse((due, *lane.key())));
            }
        }
        drop(timers);
        delivery.stats.parked.store(parked, Ordering::Relaxed);
        delivery.stats.dead.store(delivery.store.dead_count() as i64, Ordering::Relaxed);
        Ok(delivery)
    }

    /// Delivers a routed message inline if it may go now, else parks it.
    /// Returns once the outcome is durable.
    pub async fn deliver(
        &self,
        forwarder: &Forwarder,
        target: &Tenant,
        msg: Message,
    ) -> Result<Accepted, DeliveryError> {
        let now = now_ms();
        match self.dedupe.begin(msg.key, now) {
            Begin::Duplicate => return Ok(Accepted::Duplicate),
            Begin::InFlight => return Err(DeliveryError::InProgress),
            Begin::New => {}
        }
        let claim = Claim { dedupe: &self.dedupe, key: msg.key, done: false };
        let lane_key = msg.sender.cache_key();
        let (seq, head, turn) = self.reserve(lane_key)?;
        let mut record = DeliveryRecord {
            seq,
            webhook_id: webhook_id(&msg.key),
            tenant: msg.tenant,
            sender: msg.sender,
            new_session: msg.new_session,
            request_id: msg.request_id,
            created_ms: now,
            attempts: 0,
            next_attempt_ms: now,
            last_error: None,
            last_status: None,
            response_body: None,
            body: msg.body,
        };
        let head = head || self.wait_for_turn(lane_key, seq, &turn).await;
        // Inline attempts only go to tenants whose breaker is closed; the
        // half-open trial of a failing tenant is the queue's, so WAHA never
        // waits on a tenant known to be failing.
        let mut breaker_open = false;
        let permit = match (head, self.tenants.closed_or_retry_at(msg.tenant)) {
            (true, None) => self.tenants.try_slot(msg.tenant),
            (true, Some(at)) => {
                record.next_attempt_ms = now + at.saturating_duration_since(Instant::now()).as_millis() as u64;
                breaker_open = true;
                None
            }
            (false, _) => None,
        };
        let Some(_permit) = permit else {
            // Park behind the lane, or until the breaker lets a trial through.
            return self.park_new(lane_key, record, claim, breaker_open).await;
        };
        let result = self.attempt(forwarder, target, &record, self.inline_timeout).await;
        self.record_attempt(msg.tenant, lane_key, &result);
        match result {
            Ok(()) => {
                claim.commit(now);
                self.finish_head(lane_key, seq);
                Ok(Accepted::Delivered)
            }
            Err(e) if e.is_permanent() => {
                let status = note_failure(&mut record, &e);
                if let Err(err) = self.bury_durably(&record).await {
                    // Not acknowledged: no dead letter for a message WAHA retries.
                    self.forget(seq, "dead letters", self.store.remove_dead(seq));
                    self.cancel(lane_key, seq);
                    return Err(err.into());
                }
                claim.commit(now);
                self.finish_head(lane_key, seq);
                Ok(Accepted::DeadLettered { seq, status: status.unwrap_or(0) })
            }
            Err(e) => {
                note_failure(&mut record, &e);
                record.attempts = 1;
                record.next_attempt_ms = now_ms() + self.retry_delay(1, e.retry_after());
                self.park_new(lane_key, record, claim, false).await
            }
        }
    }

    /// Writes a new record to the outbox, flushes, and marks its slot parked.
    async fn park_new(
        &self,
        lane_key: u64,
        record: DeliveryRecord,
        claim: Claim<'_>,
        breaker_open: bool,
    ) -> Result<Accepted, DeliveryError> {
        let seq = record.seq;
        let written = match self.store.park(&record) {
            Ok(()) => self.store.durable().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Not acknowledged: forget the slot and the record (WAHA retries the
            // webhook under a new seq). A record left in the outbox would be
            // delivered again after the next restart, behind later messages.
            self.forget(seq, "outbox", self.store.unpark(seq));
            self.cancel(lane_key, seq);
            return Err(e.into());
        }
        claim.commit(record.created_ms);
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
        // Behind an open breaker only the tenant's trial lane gets a timer; the
        // others wait, without one, for the trial to succeed.
        let due = if breaker_open && !self.tenants.wait_for_breaker(record.tenant, lane_key, Instant::now()) {
            None
        } else {
            Some(record.next_attempt_ms)
        };
        self.park_slot(lane_key, seq, due);
        Ok(Accepted::Queued { seq })
    }

    /// Logs a failed removal of an unacknowledged record (best effort: the
    /// disk is failing already).
    fn forget(&self, seq: u64, list: &str, removed: Result<(), StoreError>) {
        if let Err(e) = removed {
            tracing::warn!(error = %e, seq, list, "an unacknowledged record stays; a restart may deliver it again");
        }
    }

    async fn bury_durably(&self, record: &DeliveryRecord) -> Result<(), StoreError> {
        self.store.bury(record)?;
        self.store.durable().await?;
        self.stats.dead.fetch_add(1, Ordering::Relaxed);
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> u64 {
        let draw: f64 = rand::thread_rng().gen();
        self.policy.delay(attempt, draw, retry_after).as_millis() as u64
    }

    /// One signed POST of `record` to `target`.
    async fn attempt(
        &self,
        forwarder: &Forwarder,
        target: &Tenant,
        record: &DeliveryRecord,
        timeout: Duration,
    ) -> Result<(), ForwardError> {
        let timestamp = now_ms() / 1000;
        let signature = sign::signature_header(&target.signing_keys, &record.webhook_id, timestamp, &record.body);
        let started = Instant::now();
        let result = forwarder
            .send(Outbound {
                uri: &target.uri,
                body: record.body.clone(),
                tenant: record.tenant,
                sender: record.sender,
                new_session: record.new_session,
                request_id: record.request_id.as_deref(),
                webhook_id: &record.webhook_id,
                timestamp,
                signature: &signature,
                timeout,
            })
            .await
            .map(|_| ());
        self.metrics.forward_duration.record(started.elapsed().as_secs_f64());
        self.metrics.forward(record.tenant, result.as_ref().map_or_else(ForwardError::kind, |()| "ok"));
        if let Err(e) = &result {
            tracing::debug!(tenant = record.tenant, seq = record.seq, error = %e, "forward failed");
        }
        result
    }

    /// Copies the queue's counts into the metrics (at scrape time).
    pub fn export_metrics(&self) {
        let s = &self.stats;
        self.metrics.queue_parked.set(s.parked.load(Ordering::Relaxed) as f64);
        self.metrics.queue_dead.set(s.dead.load(Ordering::Relaxed) as f64);
        self.metrics.delivery_retries.absolute(s.retries.load(Ordering::Relaxed).max(0) as u64);
        self.metrics.dead_letters.absolute(s.dead_letters.load(Ordering::Relaxed).max(0) as u64);
        self.metrics.breakers_open.set(self.tenants.open_count() as f64);
    }

    /// Writes the dedupe keys accepted since the last call to sled, in one
    /// batch (every second from the scheduler, and at shutdown), and drops keys
    /// older than the window. Returns how many were written.
    pub fn save_dedupe(&self, prune: bool) -> Result<usize, StoreError> {
        let keys = self.dedupe.take_unsaved();
        if let Err(e) = self.store.dedupe_mark_all(&keys) {
            self.dedupe.put_back(keys);
            return Err(e);
        }
        if prune {
            let window = self.dedupe_window.as_millis() as u64;
            let pruned = self.store.dedupe_prune(now_ms().saturating_sub(window))?;
            tracing::debug!(pruned, "expired dedupe keys removed");
        }
        Ok(keys.len())
    }

    /// Number of messages waiting in lanes (parked or being sent).
    pub fn parked(&self) -> i64 {
        self.stats.parked.load(Ordering::Relaxed)
    }
}

/// A dedupe claim: released unless the message was accepted.
struct Claim<'a> {
    dedupe: &'a Dedupe,
    key: MessageKey,
    done: bool,
}

impl Claim<'_> {
    /// Later copies are duplicates. The key reaches sled in the next batch
    /// ([`Delivery::save_dedupe`]), not on the request path.
    fn commit(mut self, at_ms: u64) {
        self.done = true;
        self.dedupe.commit(self.key, at_ms);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.dedupe.abort(self.key);
        }
    }
}

/// A tenant that answers, even with a 4xx, is up; only failures to answer
/// properly count against its breaker.
fn breaker_success(result: &Result<(), ForwardError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => e.is_permanent(),
    }
}

/// Records the failure on the record; returns the HTTP status if there was one.
fn note_failure(record: &mut DeliveryRecord, e: &ForwardError) -> Option<u16> {
    record.last_error = Some(e.to_string());
    if let ForwardError::Status { status, body, .. } = e {
        record.last_status = Some(status.as_u16());
        record.response_body = Some(body.clone());
        return Some(status.as_u16());
    }
    None
}

mod lanes;
mod worker;

use lanes::{Lane, Slot, SlotState};
pub use worker::run;

/// Registry lookups the scheduler needs; kept separate so the queue can be
/// driven without the whole app.
pub trait Targets: Send + Sync {
    fn target(&self, tenant: TenantId) -> Option<Arc<Tenant>>;
}

impl Targets for Registry {
    fn target(&self, tenant: TenantId) -> Option<Arc<Tenant>> {
        self.get(tenant)
    }
}
