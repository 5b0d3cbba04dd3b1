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
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// Lanes by sender cache key.
    lanes: DashMap<u64, Lane>,
    /// (due ms, lane) for the scheduler; stale entries are skipped.
    timers: Mutex<BinaryHeap<Reverse<(u64, u64)>>>,
    wake: Notify,
    pub stats: QueueStats,
}

struct Lane {
    slots: VecDeque<Slot>,
    /// When the scheduler should look at the head; matches a `timers` entry.
    due_ms: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Slot {
    seq: u64,
    state: SlotState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    /// Being forwarded inside a webhook request; not in the outbox.
    Inline,
    /// In the outbox, waiting for the scheduler.
    Parked,
    /// In the outbox, being forwarded by the scheduler.
    Sending,
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
            let mut lane = delivery
                .lanes
                .entry(record.sender.cache_key())
                .or_insert_with(|| Lane { slots: VecDeque::new(), due_ms: None });
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
        let (seq, head) = self.reserve(lane_key)?;
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
        // Inline attempts only go to tenants whose breaker is closed; the
        // half-open trial of a failing tenant is the queue's, so WAHA never
        // waits on a tenant known to be failing.
        let permit = match (head, self.tenants.closed_or_retry_at(msg.tenant)) {
            (true, None) => self.tenants.try_slot(msg.tenant),
            (true, Some(at)) => {
                record.next_attempt_ms = now + at.saturating_duration_since(Instant::now()).as_millis() as u64;
                None
            }
            (false, _) => None,
        };
        let Some(_permit) = permit else {
            // Park behind the lane, or until the breaker lets a trial through.
            return self.park_new(lane_key, record, claim).await;
        };
        let result = self.attempt(forwarder, target, &record, self.inline_timeout).await;
        self.record_attempt(msg.tenant, &result);
        match result {
            Ok(()) => {
                claim.commit(&self.store, now);
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
                claim.commit(&self.store, now);
                self.finish_head(lane_key, seq);
                Ok(Accepted::DeadLettered { seq, status: status.unwrap_or(0) })
            }
            Err(e) => {
                note_failure(&mut record, &e);
                record.attempts = 1;
                record.next_attempt_ms = now_ms() + self.retry_delay(1, e.retry_after());
                self.park_new(lane_key, record, claim).await
            }
        }
    }

    /// Writes a new record to the outbox, flushes, and marks its slot parked.
    async fn park_new(
        &self,
        lane_key: u64,
        record: DeliveryRecord,
        claim: Claim<'_>,
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
        claim.commit(&self.store, record.created_ms);
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
        self.park_slot(lane_key, seq, record.next_attempt_ms);
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
        self.metrics.forward(result.as_ref().map_or_else(ForwardError::kind, |()| "ok"));
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

    /// Appends a slot for a new message to its sender's lane. Returns its
    /// sequence number and whether it is the head (nothing earlier pending).
    /// The number is drawn under the lane's lock, so lane order and sequence
    /// order agree, and a restart rebuilds the same order from the outbox.
    fn reserve(&self, lane_key: u64) -> Result<(u64, bool), StoreError> {
        let mut lane = self.lanes.entry(lane_key).or_insert_with(|| Lane { slots: VecDeque::new(), due_ms: None });
        let seq = self.store.next_seq()?;
        let head = lane.slots.is_empty();
        lane.slots.push_back(Slot { seq, state: SlotState::Inline });
        Ok((seq, head))
    }

    /// Marks a slot parked; if it is (by now) the head of its lane, schedules
    /// the lane at `due_ms`. The head may have finished while this message was
    /// being written, so "head" is decided here, under the lane's lock.
    fn park_slot(&self, lane_key: u64, seq: u64, due_ms: u64) {
        let is_head = {
            let Some(mut lane) = self.lanes.get_mut(&lane_key) else { return };
            if let Some(slot) = lane.slots.iter_mut().find(|s| s.seq == seq) {
                slot.state = SlotState::Parked;
            }
            lane.slots.front().is_some_and(|s| s.seq == seq)
        };
        if is_head {
            self.schedule(lane_key, due_ms);
        }
    }

    fn set_slot(&self, lane_key: u64, seq: u64, state: SlotState) {
        if let Some(mut lane) = self.lanes.get_mut(&lane_key) {
            if let Some(slot) = lane.slots.iter_mut().find(|s| s.seq == seq) {
                slot.state = state;
            }
        }
    }

    /// Drops a slot that never made it to the outbox.
    fn cancel(&self, lane_key: u64, seq: u64) {
        let was_head = self.lanes.get(&lane_key).is_some_and(|l| l.slots.front().is_some_and(|s| s.seq == seq));
        if was_head {
            self.finish_head(lane_key, seq);
        } else if let Some(mut lane) = self.lanes.get_mut(&lane_key) {
            lane.slots.retain(|s| s.seq != seq);
        }
    }

    /// The head is done (delivered, dead, or cancelled): the next message of the
    /// sender, if parked, is due now.
    fn finish_head(&self, lane_key: u64, seq: u64) {
        let next = {
            let Some(mut lane) = self.lanes.get_mut(&lane_key) else { return };
            lane.slots.retain(|s| s.seq != seq);
            lane.due_ms = None;
            lane.slots.front().copied()
        };
        match next {
            None => {
                self.lanes.remove_if(&lane_key, |_, lane| lane.slots.is_empty());
            }
            Some(slot) if slot.state == SlotState::Parked => self.schedule(lane_key, now_ms()),
            // An inline slot behind us is parked by its own request.
            Some(_) => {}
        }
    }

    fn schedule(&self, lane_key: u64, due_ms: u64) {
        if let Some(mut lane) = self.lanes.get_mut(&lane_key) {
            lane.due_ms = Some(due_ms);
        } else {
            return;
        }
        self.timers.lock().expect("timer lock poisoned").push(Reverse((due_ms, lane_key)));
        self.wake.notify_one();
    }

    /// Number of messages waiting in lanes (parked or being sent).
    pub fn parked(&self) -> i64 {
        self.stats.parked.load(Ordering::Relaxed)
    }

    pub fn open_breakers(&self) -> usize {
        self.tenants.open_count()
    }
}

/// A dedupe claim: released unless the message was accepted.
struct Claim<'a> {
    dedupe: &'a Dedupe,
    key: MessageKey,
    done: bool,
}

impl Claim<'_> {
    fn commit(mut self, store: &Store, at_ms: u64) {
        self.done = true;
        self.dedupe.commit(self.key, at_ms);
        // Persisted for restarts; not flushed per message (a clean shutdown flushes).
        if let Err(e) = store.dedupe_mark(at_ms, &self.key) {
            tracing::warn!(error = %e, "could not persist a dedupe key");
        }
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

mod worker;
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

/// Stops the scheduler: used by `lib::serve` at shutdown.
pub struct QueueHandle {
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
}
