//! The scheduler: delivers parked lane heads when they are due.
//!
//! One loop sleeps until the earliest due lane (or a wake-up), then hands each
//! due head to a tracked task. A head goes back to `Parked` with a new due time
//! when it fails, when its tenant's breaker is open, or when its tenant is gone.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::breaker::Admit;
use super::{breaker_success, note_failure, now_ms, Delivery, SlotState, Targets};
use crate::forward::Forwarder;
use crate::store::DeliveryState;

/// How often accepted dedupe keys are written to sled (in one batch).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Expired dedupe keys are pruned from sled every this many housekeeping ticks.
const PRUNE_EVERY_TICKS: u64 = 60;

/// How long to wait before looking again at a head whose record could not be read.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled; attempts in flight are tracked by `tracker`.
pub async fn run(
    delivery: Arc<Delivery>,
    targets: Arc<dyn Targets>,
    forwarder: Forwarder,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
    let mut ticks = 0u64;
    loop {
        let now = now_ms();
        let mut due = Vec::new();
        let next_due = {
            let mut timers = delivery.timers.lock().expect("timer lock poisoned");
            while let Some(Reverse((at, lane))) = timers.peek().copied() {
                if at > now {
                    break;
                }
                timers.pop();
                due.push((at, lane));
            }
            timers.peek().map(|Reverse((at, _))| *at)
        };
        for (at, lane_key) in due {
            if let Some(seq) = delivery.claim_head(lane_key, at) {
                let (delivery, targets, forwarder, stop) =
                    (Arc::clone(&delivery), Arc::clone(&targets), forwarder.clone(), stop.clone());
                tracker.spawn(async move { send_parked(&delivery, &*targets, &forwarder, &stop, lane_key, seq).await });
            }
        }
        let sleep = next_due.map_or(Duration::from_secs(60), |at| Duration::from_millis(at.saturating_sub(now_ms())));
        tokio::select! {
            () = stop.cancelled() => break,
            () = delivery.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            _ = housekeeping.tick() => {
                ticks += 1;
                // Histogram samples are folded into buckets here too, so they do
                // not pile up when nothing scrapes (or `metrics_listen = "off"`).
                if ticks % 5 == 0 {
                    delivery.metrics.upkeep();
                }
                if let Err(e) = delivery.save_dedupe(ticks % PRUNE_EVERY_TICKS == 0) {
                    tracing::warn!(error = %e, "could not save dedupe keys; will try again");
                }
            }
        }
    }
}

async fn send_parked(
    delivery: &Delivery,
    targets: &dyn Targets,
    forwarder: &Forwarder,
    stop: &CancellationToken,
    lane_key: u64,
    seq: u64,
) {
    let mut record = match delivery.store.delivery(DeliveryState::Parked, seq) {
        Ok(Some(record)) => record,
        Ok(None) => {
            // Gone from the outbox (replayed elsewhere or removed): move on.
            delivery.finish_head(lane_key, seq);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, seq, "cannot read a parked message");
            delivery.requeue(lane_key, seq, now_ms() + STORE_RETRY.as_millis() as u64);
            return;
        }
    };
    let Some(target) = targets.target(record.tenant) else {
        // The tenant was removed: keep the message until it is back or replayed.
        delivery.requeue(lane_key, seq, now_ms() + delivery.tenants_retry_ms());
        return;
    };
    if let Admit::NotBefore(at) = delivery.tenants.admit(record.tenant, Instant::now()) {
        delivery.set_slot(lane_key, seq, SlotState::Parked);
        if delivery.tenants.wait_for_breaker(record.tenant, lane_key, Instant::now()) {
            delivery.schedule(lane_key, now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64);
        }
        return;
    }
    let _slot = tokio::select! {
        slot = delivery.tenants.slot(record.tenant) => slot,
        () = stop.cancelled() => {
            delivery.requeue(lane_key, seq, now_ms());
            return;
        }
    };
    let result = delivery.attempt(forwarder, &target, &record, delivery.queue_timeout).await;
    delivery.record_attempt(record.tenant, lane_key, &result);
    let now = now_ms();
    match result {
        Ok(()) => {
            if let Err(e) = delivery.store.unpark(seq) {
                // Delivered anyway; a restart would deliver it again (same webhook-id).
                tracing::warn!(error = %e, seq, "delivered message not removed from the outbox");
            }
            delivery.stats.parked.fetch_sub(1, Ordering::Relaxed);
            delivery.finish_head(lane_key, seq);
        }
        Err(e) => {
            note_failure(&mut record, &e);
            record.attempts += 1;
            delivery.stats.retries.fetch_add(1, Ordering::Relaxed);
            let expired = delivery.policy.expired(Duration::from_millis(now.saturating_sub(record.created_ms)));
            if e.is_permanent() || expired {
                tracing::warn!(seq, tenant = record.tenant, error = %e, "message moved to the dead letters");
                match delivery.store.bury(&record) {
                    Ok(()) => {
                        delivery.stats.parked.fetch_sub(1, Ordering::Relaxed);
                        delivery.stats.dead.fetch_add(1, Ordering::Relaxed);
                        delivery.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                        delivery.finish_head(lane_key, seq);
                    }
                    Err(err) => {
                        tracing::error!(error = %err, seq, "cannot move a message to the dead letters");
                        delivery.requeue(lane_key, seq, now + STORE_RETRY.as_millis() as u64);
                    }
                }
                return;
            }
            record.next_attempt_ms = now + delivery.retry_delay(record.attempts, e.retry_after());
            if let Err(err) = delivery.store.park(&record) {
                tracing::error!(error = %err, seq, "cannot record a failed attempt");
            }
            delivery.requeue(lane_key, seq, record.next_attempt_ms);
        }
    }
}

impl Delivery {
    /// Takes the head of a lane for sending if the timer entry is current.
    fn claim_head(&self, lane_key: u64, due_ms: u64) -> Option<u64> {
        let mut lane = self.lanes.get_mut(&lane_key)?;
        if lane.due_ms != Some(due_ms) {
            return None;
        }
        lane.due_ms = None;
        let head = lane.slots.front_mut()?;
        if head.state != SlotState::Parked {
            return None;
        }
        head.state = SlotState::Sending;
        Some(head.seq)
    }

    /// Puts a head back to waiting, due at `due_ms`.
    fn requeue(&self, lane_key: u64, seq: u64, due_ms: u64) {
        self.set_slot(lane_key, seq, SlotState::Parked);
        self.schedule(lane_key, due_ms);
    }

    /// Feeds the breaker; wakes the lanes that waited for it (see `Tenants::record`).
    pub(super) fn record_attempt(
        &self,
        tenant: crate::route::TenantId,
        lane: u64,
        result: &Result<(), crate::forward::ForwardError>,
    ) {
        let now = now_ms();
        let wake = self.tenants.record(tenant, lane, breaker_success(result), Instant::now());
        for lane in wake.now {
            self.schedule(lane, now);
        }
        if let Some((lane, at)) = wake.later {
            self.schedule(lane, now + at.saturating_duration_since(Instant::now()).as_millis() as u64);
        }
    }

    fn tenants_retry_ms(&self) -> u64 {
        self.policy.schedule.first().map_or(5_000, |d| d.as_millis() as u64)
    }
}
