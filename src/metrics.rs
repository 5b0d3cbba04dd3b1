//! Prometheus metrics: names, labels, and handles cached for the hot path.
//!
//! Each [`Metrics`] owns its own recorder (not the process-global one), so two
//! routers in one process, as in the tests, never mix their counts. Handles are
//! registered once at start; recording is then a few atomic adds. Labels come
//! from closed sets, never from request data (no per-sender or raw-path labels).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::route::Skip;

pub const WEBHOOKS_TOTAL: &str = "whatsapp_router_webhooks_total";
pub const FORWARDS_TOTAL: &str = "whatsapp_router_forwards_total";
pub const FORWARD_DURATION: &str = "whatsapp_router_forward_duration_seconds";
pub const LOCKS_CREATED_TOTAL: &str = "whatsapp_router_locks_created_total";
pub const STORE_FLUSH_DURATION: &str = "whatsapp_router_store_flush_duration_seconds";
pub const TENANTS: &str = "whatsapp_router_tenants";

/// Event types get their own label value; anything else is `other`.
pub const EVENTS: [&str; 8] = [
    "message",
    "message.any",
    "message.ack",
    "message.reaction",
    "message.edited",
    "message.revoked",
    "session.status",
    "other",
];

/// Outcomes of a webhook that is answered (or refused) by the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to the sender's existing tenant.
    Routed,
    /// First contact: locked and forwarded.
    LockedNew,
    /// A locked sender sent another tenant's link; forwarded to the first tenant.
    RelockRefused,
    Skipped(Skip),
    Unauthorized,
    BadRequest,
    TooLarge,
    /// The tenant backend failed (answered 502 to WAHA).
    ForwardFailed,
    /// The store failed (answered 503 to WAHA).
    StoreError,
}

const OTHER_OUTCOMES: [Outcome; 8] = [
    Outcome::Routed,
    Outcome::LockedNew,
    Outcome::RelockRefused,
    Outcome::Unauthorized,
    Outcome::BadRequest,
    Outcome::TooLarge,
    Outcome::ForwardFailed,
    Outcome::StoreError,
];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Routed => "routed",
            Outcome::LockedNew => "locked_new",
            Outcome::RelockRefused => "relock_refused",
            Outcome::Skipped(s) => s.as_str(),
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::ForwardFailed => "forward_failed",
            Outcome::StoreError => "store_error",
        }
    }

    fn all() -> impl Iterator<Item = Outcome> {
        OTHER_OUTCOMES.into_iter().chain(Skip::ALL.into_iter().map(Outcome::Skipped))
    }

    /// Position in [`Outcome::all`], computed instead of searched: this runs
    /// once per webhook. `outcome_index_matches_all` below checks it.
    fn index(self) -> usize {
        match self {
            Outcome::Routed => 0,
            Outcome::LockedNew => 1,
            Outcome::RelockRefused => 2,
            Outcome::Unauthorized => 3,
            Outcome::BadRequest => 4,
            Outcome::TooLarge => 5,
            Outcome::ForwardFailed => 6,
            Outcome::StoreError => 7,
            // `Skip::ALL` lists the variants in declaration order.
            Outcome::Skipped(skip) => OTHER_OUTCOMES.len() + skip as usize,
        }
    }
}

/// Index of an event name in [`EVENTS`].
pub fn event_index(event: &str) -> usize {
    EVENTS.iter().position(|e| *e == event).unwrap_or(EVENTS.len() - 1)
}

/// Forward outcomes (`whatsapp_router_forwards_total{outcome}`).
pub const FORWARD_OUTCOMES: [&str; 5] = ["ok", "status_4xx", "status_5xx", "timeout", "connect_error"];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `[event][outcome]`, outcome in the order of `Outcome::all()`.
    webhooks: Vec<Vec<Counter>>,
    forwards: Vec<Counter>,
    pub forward_duration: Histogram,
    pub locks_created: Counter,
    pub store_flush: Histogram,
    pub tenants: Gauge,
    upkeep_running: AtomicBool,
}

impl Metrics {
    pub fn new() -> Metrics {
        let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, None);
        let counter =
            |name: &'static str, labels: Vec<Label>| recorder.register_counter(&Key::from_parts(name, labels), &meta);
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, SharedString::const_str(help));
        };
        describe(WEBHOOKS_TOTAL, None, "Webhooks received, by event type and outcome.");
        describe(FORWARDS_TOTAL, None, "Forwards to tenant backends, by outcome.");
        describe(LOCKS_CREATED_TOTAL, None, "Senders locked to a tenant by a first contact.");
        recorder.describe_histogram(
            FORWARD_DURATION.into(),
            Some(Unit::Seconds),
            "Time from sending a forward to the tenant's complete answer.".into(),
        );
        recorder.describe_histogram(
            STORE_FLUSH_DURATION.into(),
            Some(Unit::Seconds),
            "Time a caller waited for a durable store flush (group commit).".into(),
        );
        recorder.describe_gauge(TENANTS.into(), None, "Tenants in the registry.".into());

        let webhooks = EVENTS
            .iter()
            .map(|event| {
                Outcome::all()
                    .map(|o| {
                        counter(WEBHOOKS_TOTAL, vec![Label::new("event", *event), Label::new("outcome", o.as_str())])
                    })
                    .collect()
            })
            .collect();
        let forwards =
            FORWARD_OUTCOMES.iter().map(|o| counter(FORWARDS_TOTAL, vec![Label::new("outcome", *o)])).collect();
        let forward_duration = recorder.register_histogram(&Key::from_name(FORWARD_DURATION), &meta);
        let store_flush = recorder.register_histogram(&Key::from_name(STORE_FLUSH_DURATION), &meta);
        let tenants = recorder.register_gauge(&Key::from_name(TENANTS), &meta);
        let locks_created = counter(LOCKS_CREATED_TOTAL, vec![]);
        Metrics {
            recorder,
            handle,
            webhooks,
            forwards,
            forward_duration,
            locks_created,
            store_flush,
            tenants,
            upkeep_running: AtomicBool::new(false),
        }
    }

    pub fn webhook(&self, event: usize, outcome: Outcome) {
        if let Some(c) = self.webhooks.get(event).and_then(|row| row.get(outcome.index())) {
            c.increment(1);
        }
    }

    pub fn forward(&self, outcome: &str) {
        if let Some(i) = FORWARD_OUTCOMES.iter().position(|o| *o == outcome) {
            self.forwards[i].increment(1);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets. Without this, samples pile up
    /// in memory between scrapes; [`crate::server`] runs it every few seconds.
    pub fn upkeep(&self) {
        if !self.upkeep_running.swap(true, Ordering::AcqRel) {
            self.handle.run_upkeep();
            self.upkeep_running.store(false, Ordering::Release);
        }
    }

    pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

    /// The recorder, for code that must use the `metrics` macros.
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_index_matches_all() {
        for (i, outcome) in Outcome::all().enumerate() {
            assert_eq!(outcome.index(), i, "{outcome:?}");
        }
    }
}
