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
    /// one lane carries the half-open trial, and a success wakes them all, so a
    /// dead tenant with thousands of parked senders costs one attempt per
    /// backoff step, not thousands of wake-ups.
    blocked: Vec<u64>,
}

impl Tenants {
    pub fn new(config: BreakerConfig, max_in_flight: usize) -> Tenants {
        Tenants { config, max_in_flight, entries: DashMap::new() }
    }

    fn with<R>(&self, tenant: TenantId, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entry = self.entries.entry(tenant).or_insert_with(|| Entry {
            breaker: BreakerState::Closed { failures: 0 },
            slots: Arc::new(Semaphore::new(self.max_in_flight)),
            blocked: Vec::new(),
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

    /// Records an attempt's result. On success, returns the lanes that were
    /// waiting for the breaker to close.
    pub fn record(&self, tenant: TenantId, success: bool, now: Instant) -> Vec<u64> {
        let config = self.config;
        self.with(tenant, |e| {
            e.breaker.record(success, now, &config);
            if success {
                std::mem::take(&mut e.blocked)
            } else {
                Vec::new()
            }
        })
    }

    /// Parks a lane until the tenant's breaker closes. Returns true if it is the
    /// first such lane, which then carries the next half-open trial itself.
    pub fn block(&self, tenant: TenantId, lane: u64) -> bool {
        self.with(tenant, |e| {
            let first = e.blocked.is_empty();
            if !first {
                e.blocked.push(lane);
            }
            first
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
