//! Per-tenant isolation: a circuit breaker and a cap on concurrent deliveries.
//!
//! While a tenant's breaker is open its messages are parked at once, without an
//! inline attempt, so WAHA is answered in microseconds and a dead backend costs
//! nothing. The breaker opens after `failures` consecutive failures, and after
//! `open_for` lets one trial through (half-open): success closes it, failure
//! opens it again. The state machine is pure (time is passed in); [`Tenants`]
//! holds one per tenant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::route::TenantId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial is in flight; everything else waits.
    HalfOpen,
}

#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    pub failures: u32,
    pub open_for: Duration,
}

/// Whether a delivery may be attempted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Not before this instant.
    NotBefore(Instant),
}

impl BreakerState {
    pub fn admit(&mut self, now: Instant) -> Admit {
        match *self {
            BreakerState::Closed { .. } => Admit::Yes,
            BreakerState::Open { until } if now >= until => {
                *self = BreakerState::HalfOpen;
                Admit::Yes
            }
            BreakerState::Open { until } => Admit::NotBefore(until),
            // The trial has not reported yet; look again shortly.
            BreakerState::HalfOpen => Admit::NotBefore(now + Duration::from_millis(200)),
        }
    }

    pub fn record(&mut self, success: bool, now: Instant, config: &BreakerConfig) {
        *self = match (*self, success) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 < config.failures => {
                BreakerState::Closed { failures: failures + 1 }
            }
            (_, false) => BreakerState::Open { until: now + config.open_for },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(self, BreakerState::Closed { .. })
    }
}

/// Lanes to wake after an attempt: some now, maybe one later (the next trial).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wake {
    pub now: Vec<u64>,
    pub later: Option<(u64, Instant)>,
}

/// Breakers and delivery slots of every tenant, created on first use.
pub struct Tenants {
    config: BreakerConfig,
    max_in_flight: usize,
    entries: DashMap<TenantId, Entry>,
}

struct Entry {
    breaker: BreakerState,
    slots: Arc<Semaphore>,
    /// Lanes waiting for this tenant's breaker to close. They have no timer:
    /// one lane (`trial`) carries the next half-open attempt, and a success
    /// wakes them all, so a dead tenant with thousands of parked senders costs
    /// one attempt per breaker period, not thousands of wake-ups.
    blocked: std::collections::HashSet<u64>,
    /// The trial lane and when it became one.
    trial: Option<(u64, Instant)>,
}

impl Tenants {
    pub fn new(config: BreakerConfig, max_in_flight: usize) -> Tenants {
        Tenants { config, max_in_flight, entries: DashMap::new() }
    }

    fn with<R>(&self, tenant: TenantId, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entry = self.entries.entry(tenant).or_insert_with(|| Entry {
            breaker: BreakerState::Closed { failures: 0 },
            slots: Arc::new(Semaphore::new(self.max_in_flight)),
            blocked: std::collections::HashSet::new(),
            trial: None,
        });
        f(&mut entry)
    }

    pub fn admit(&self, tenant: TenantId, now: Instant) -> Admit {
        self.with(tenant, |e| e.breaker.admit(now))
    }

    /// `None` when the breaker is closed; otherwise when the queue may try next.
    pub fn closed_or_retry_at(&self, tenant: TenantId) -> Option<Instant> {
        self.with(tenant, |e| match e.breaker {
            BreakerState::Closed { .. } => None,
            BreakerState::Open { until } => Some(until),
            BreakerState::HalfOpen => Some(Instant::now()),
        })
    }

    /// Records an attempt's result for `lane`. Returns the lanes to schedule:
    /// on success every lane that waited for the breaker (now), on failure the
    /// next trial lane (at the end of the new open period), so that while lanes
    /// wait there is always exactly one scheduled to try.
    pub fn record(&self, tenant: TenantId, lane: u64, success: bool, now: Instant) -> Wake {
        let config = self.config;
        self.with(tenant, |e| {
            e.breaker.record(success, now, &config);
            if e.trial.is_some_and(|(t, _)| t == lane) {
                e.trial = None;
            }
            if success {
                e.trial = None;
                return Wake { now: std::mem::take(&mut e.blocked).into_iter().collect(), later: None };
            }
            let later = match (e.trial, e.breaker) {
                (None, BreakerState::Open { until }) => e.blocked.iter().next().copied().map(|next| {
                    e.blocked.remove(&next);
                    e.trial = Some((next, now));
                    (next, until)
                }),
                _ => None,
            };
            Wake { now: Vec::new(), later }
        })
    }

    /// A lane's head may not go yet (open breaker). Returns true if the lane
    /// should be scheduled for the breaker's next trial (it is the trial lane);
    /// false if it now waits, without a timer, for the trial to succeed.
    /// A trial is due within one open period; one that has not reported after
    /// two (its lane vanished) is replaced, so waiting lanes never stall.
    pub fn wait_for_breaker(&self, tenant: TenantId, lane: u64, now: Instant) -> bool {
        let stale_after = self.config.open_for * 2 + Duration::from_secs(10);
        self.with(tenant, |e| match e.trial {
            Some((trial, _)) if trial == lane => true,
            Some((_, since)) if now.saturating_duration_since(since) < stale_after => {
                e.blocked.insert(lane);
                false
            }
            _ => {
                e.trial = Some((lane, now));
                true
            }
        })
    }

    /// A delivery slot if one is free right now (the inline path never waits).
    pub fn try_slot(&self, tenant: TenantId) -> Option<OwnedSemaphorePermit> {
        self.with(tenant, |e| Arc::clone(&e.slots)).try_acquire_owned().ok()
    }

    /// A delivery slot, waiting for one (the queue's path).
    pub async fn slot(&self, tenant: TenantId) -> OwnedSemaphorePermit {
        let slots = self.with(tenant, |e| Arc::clone(&e.slots));
        slots.acquire_owned().await.expect("delivery semaphores are never closed")
    }

    /// Tenants whose breaker is not closed (for metrics).
    pub fn open_count(&self) -> usize {
        self.entries.iter().filter(|e| e.breaker.is_open()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_half_opens() {
        let config = BreakerConfig { failures: 3, open_for: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut b = BreakerState::Closed { failures: 0 };
        b.record(false, t0, &config);
        b.record(false, t0, &config);
        assert_eq!(b.admit(t0), Admit::Yes);
        b.record(true, t0, &config);
        assert_eq!(b, BreakerState::Closed { failures: 0 }, "a success resets the count");
        for _ in 0..3 {
            b.record(false, t0, &config);
        }
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), Admit::NotBefore(t0 + Duration::from_secs(10)));
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Admit::Yes, "half-open: one trial");
        assert!(matches!(b.admit(t0 + Duration::from_secs(10)), Admit::NotBefore(_)), "only one trial");
        b.record(false, t0 + Duration::from_secs(11), &config);
        assert_eq!(b, BreakerState::Open { until: t0 + Duration::from_secs(21) });
        assert_eq!(b.admit(t0 + Duration::from_secs(21)), Admit::Yes);
        b.record(true, t0 + Duration::from_secs(21), &config);
        assert_eq!(b.admit(t0 + Duration::from_secs(21)), Admit::Yes);
    }

    /// Lanes waiting on an open breaker: one carries the trial; a failed trial
    /// hands the trial on (nothing stalls); a success wakes everyone.
    #[test]
    fn waiting_lanes_always_have_a_trial() {
        let t0 = Instant::now();
        let t = Tenants::new(BreakerConfig { failures: 1, open_for: Duration::from_secs(10) }, 4);
        assert_eq!(t.record(1, 100, false, t0), Wake::default(), "opens; nobody waits yet");
        assert!(t.wait_for_breaker(1, 100, t0), "the first waiting lane is the trial");
        assert!(t.wait_for_breaker(1, 100, t0), "and stays it when told to wait again");
        assert!(!t.wait_for_breaker(1, 101, t0));
        assert!(!t.wait_for_breaker(1, 102, t0));
        // The trial fails: another waiting lane becomes the trial at the new reopen time.
        let wake = t.record(1, 100, false, t0 + Duration::from_secs(10));
        assert_eq!(wake.now, Vec::<u64>::new());
        let (trial, at) = wake.later.expect("a waiting lane takes over the trial");
        assert!(trial == 101 || trial == 102, "{trial}");
        assert_eq!(at, t0 + Duration::from_secs(20));
        let other = 203 - trial;
        // The failed lane retries on its own schedule and waits behind the new trial.
        assert!(!t.wait_for_breaker(1, 100, t0 + Duration::from_secs(11)));
        let wake = t.record(1, trial, true, t0 + Duration::from_secs(20));
        let mut woken = wake.now.clone();
        woken.sort();
        let mut expected = vec![100, other];
        expected.sort();
        assert_eq!((woken, wake.later), (expected, None));
        assert!(t.wait_for_breaker(1, 7, t0 + Duration::from_secs(20)), "a fresh wait after recovery becomes a trial");
        // A trial that never reports (its lane vanished) is replaced after two open periods.
        assert!(!t.wait_for_breaker(1, 8, t0 + Duration::from_secs(30)));
        assert!(t.wait_for_breaker(1, 8, t0 + Duration::from_secs(51)));
    }

    #[test]
    fn slots_cap_concurrency_per_tenant() {
        let t = Tenants::new(BreakerConfig { failures: 1, open_for: Duration::from_secs(1) }, 2);
        let a = t.try_slot(1).unwrap();
        let _b = t.try_slot(1).unwrap();
        assert!(t.try_slot(1).is_none());
        assert!(t.try_slot(2).is_some(), "another tenant is not affected");
        drop(a);
        assert!(t.try_slot(1).is_some());
    }
}
