//! Prometheus metrics: names, labels, and handles cached for the hot path.
//!
//! Each [`Metrics`] owns its own recorder (not the process-global one), so two
//! routers in one process, as in the tests, never mix their counts. Handles are
//! registered once at start, or once per tenant / HTTP label set on first use;
//! recording is then a few atomic adds, never a registry lookup by name.
//! Labels come from closed sets, never from request data: no per-sender and no
//! raw-path labels. The one open label, `tenant_id`, sits on two counters only
//! and is switched off by `metrics_tenant_labels = false` ([`tenant`]).
//!
//! Submodules: [`requests`] (HTTP request duration by route template), [`tenant`]
//! (per-tenant counters), [`process`] (RSS, CPU, fds, rendered at scrape time).

mod process;
mod requests;
mod tenant;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub use self::process::PROCESS_FAMILIES;
pub use self::requests::{Route, HTTP_REQUEST_DURATION};
pub use self::tenant::{TENANT_FORWARDS_TOTAL, TENANT_LOCKS_CREATED_TOTAL};
use crate::route::{Skip, TenantId};

pub const WEBHOOKS_TOTAL: &str = "whatsapp_router_webhooks_total";
pub const FORWARDS_TOTAL: &str = "whatsapp_router_forwards_total";
pub const FORWARD_DURATION: &str = "whatsapp_router_forward_duration_seconds";
pub const LOCKS_CREATED_TOTAL: &str = "whatsapp_router_locks_created_total";
pub const LOCKS: &str = "whatsapp_router_locks";
pub const STORE_FLUSH_DURATION: &str = "whatsapp_router_store_flush_duration_seconds";
pub const TENANTS: &str = "whatsapp_router_tenants";
pub const QUEUE_PARKED: &str = "whatsapp_router_queue_parked";
pub const QUEUE_DEAD: &str = "whatsapp_router_queue_dead";
pub const DELIVERY_RETRIES_TOTAL: &str = "whatsapp_router_delivery_retries_total";
pub const DEAD_LETTERS_TOTAL: &str = "whatsapp_router_dead_letters_total";
pub const BREAKERS_OPEN: &str = "whatsapp_router_breakers_open";

/// Every metric family this module exports, by the name in the exposition
/// (histograms add `_bucket`, `_sum`, `_count`); the two `tenant_*` families
/// only with `metrics_tenant_labels`. The dashboard and README tests check
/// against a scrape; this list is what that scrape must contain.
pub fn families() -> impl Iterator<Item = &'static str> {
    [
        WEBHOOKS_TOTAL,
        FORWARDS_TOTAL,
        FORWARD_DURATION,
        LOCKS_CREATED_TOTAL,
        LOCKS,
        STORE_FLUSH_DURATION,
        TENANTS,
        HTTP_REQUEST_DURATION,
        TENANT_FORWARDS_TOTAL,
        TENANT_LOCKS_CREATED_TOTAL,
        QUEUE_PARKED,
        QUEUE_DEAD,
        DELIVERY_RETRIES_TOTAL,
        DEAD_LETTERS_TOTAL,
        BREAKERS_OPEN,
    ]
    .into_iter()
    .chain(PROCESS_FAMILIES.iter().map(|(name, _, _)| *name))
}

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
    /// Parked in the outbox for later delivery (answered 200 `queued`).
    Queued,
    /// Refused by the tenant for good (answered 200 `dead_lettered`).
    DeadLettered,
    /// Already accepted within the dedupe window.
    Duplicate,
    /// The same message was in flight (answered 409).
    InProgress,
    /// The store failed (answered 503 to WAHA).
    StoreError,
}

const OTHER_OUTCOMES: [Outcome; 11] = [
    Outcome::Routed,
    Outcome::LockedNew,
    Outcome::RelockRefused,
    Outcome::Unauthorized,
    Outcome::BadRequest,
    Outcome::TooLarge,
    Outcome::Queued,
    Outcome::DeadLettered,
    Outcome::Duplicate,
    Outcome::InProgress,
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
            Outcome::Queued => "queued",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Duplicate => "duplicate",
            Outcome::InProgress => "in_progress",
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
            Outcome::Queued => 6,
            Outcome::DeadLettered => 7,
            Outcome::Duplicate => 8,
            Outcome::InProgress => 9,
            Outcome::StoreError => 10,
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

/// Histogram buckets for every `_seconds` metric: 0.5 ms (a cached lookup plus a
/// local forward) up to 10 s (past the longest forward timeout anyone should set).
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `[event][outcome]`, outcome in the order of `Outcome::all()`.
    webhooks: Vec<Vec<Counter>>,
    forwards: Vec<Counter>,
    pub forward_duration: Histogram,
    locks_created: Counter,
    pub store_flush: Histogram,
    pub tenants: Gauge,
    pub queue_parked: Gauge,
    pub queue_dead: Gauge,
    pub delivery_retries: Counter,
    pub dead_letters: Counter,
    pub breakers_open: Gauge,
    /// Sender keys in the lock table; set from the store at each scrape.
    pub locks: Gauge,
    /// `whatsapp_router_http_request_duration_seconds`, one slot per label set,
    /// registered on first use so label sets that never occur are not exported.
    http: [OnceLock<Histogram>; requests::SLOTS],
    /// Per-tenant counters; `None` when `metrics_tenant_labels = false`.
    per_tenant: Option<tenant::PerTenant>,
    upkeep_running: AtomicBool,
}

impl Metrics {
    /// Metrics with per-tenant counters on.
    pub fn new() -> Metrics {
        Metrics::with_tenant_labels(true)
    }

    /// `tenant_labels`: whether the `tenant_id` counters exist (config key
    /// `metrics_tenant_labels`; off for very large tenant counts).
    pub fn with_tenant_labels(tenant_labels: bool) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let counter = |name: &'static str, labels: Vec<Label>| register_counter(&recorder, name, labels);
        let describe_counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, SharedString::const_str(help));
        };
        let describe_seconds = |name: &'static str, help: &'static str| {
            recorder.describe_histogram(name.into(), Some(Unit::Seconds), SharedString::const_str(help));
        };
        describe_counter(WEBHOOKS_TOTAL, "Webhooks received, by event type and outcome.");
        describe_counter(FORWARDS_TOTAL, "Forwards to tenant backends, by outcome.");
        describe_counter(LOCKS_CREATED_TOTAL, "Senders locked to a tenant by a first contact.");
        describe_seconds(FORWARD_DURATION, "Time from sending a forward to the tenant's complete answer.");
        describe_seconds(STORE_FLUSH_DURATION, "Time a caller waited for a durable store flush (group commit).");
        describe_seconds(HTTP_REQUEST_DURATION, "Time to answer a request on the webhook listener, by route template.");
        recorder.describe_gauge(TENANTS.into(), None, "Tenants in the registry.".into());
        recorder.describe_gauge(
            QUEUE_PARKED.into(),
            None,
            "Messages parked in the outbox, waiting for delivery.".into(),
        );
        recorder.describe_gauge(QUEUE_DEAD.into(), None, "Dead letters kept for inspection and replay.".into());
        recorder.describe_gauge(
            BREAKERS_OPEN.into(),
            None,
            "Tenants whose circuit breaker is open or half-open.".into(),
        );
        describe_counter(
            DELIVERY_RETRIES_TOTAL,
            "Failed delivery attempts from the queue (each is retried or dead-lettered).",
        );
        describe_counter(DEAD_LETTERS_TOTAL, "Messages moved to the dead letters.");
        recorder.describe_gauge(
            LOCKS.into(),
            None,
            "Sender keys locked to a tenant (a sender known by phone and LID counts twice).".into(),
        );
        if tenant_labels {
            describe_counter(TENANT_FORWARDS_TOTAL, "Forwards to tenant backends, by tenant and outcome.");
            describe_counter(TENANT_LOCKS_CREATED_TOTAL, "Senders locked by a first contact, by tenant.");
        }

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
        let meta = metadata();
        let forward_duration = recorder.register_histogram(&Key::from_name(FORWARD_DURATION), &meta);
        let store_flush = recorder.register_histogram(&Key::from_name(STORE_FLUSH_DURATION), &meta);
        let tenants = recorder.register_gauge(&Key::from_name(TENANTS), &meta);
        let locks = recorder.register_gauge(&Key::from_name(LOCKS), &meta);
        let locks_created = counter(LOCKS_CREATED_TOTAL, vec![]);
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &meta);
        let (queue_parked, queue_dead, breakers_open) = (gauge(QUEUE_PARKED), gauge(QUEUE_DEAD), gauge(BREAKERS_OPEN));
        let delivery_retries = counter(DELIVERY_RETRIES_TOTAL, vec![]);
        let dead_letters = counter(DEAD_LETTERS_TOTAL, vec![]);
        Metrics {
            webhooks,
            forwards,
            forward_duration,
            locks_created,
            store_flush,
            tenants,
            queue_parked,
            queue_dead,
            delivery_retries,
            dead_letters,
            breakers_open,
            locks,
            http: std::array::from_fn(|_| OnceLock::new()),
            per_tenant: tenant_labels.then(DashMap::new),
            upkeep_running: AtomicBool::new(false),
            recorder,
            handle,
        }
    }

    pub fn webhook(&self, event: usize, outcome: Outcome) {
        if let Some(c) = self.webhooks.get(event).and_then(|row| row.get(outcome.index())) {
            c.increment(1);
        }
    }

    /// One forward to `tenant` ended with `outcome` (one of [`FORWARD_OUTCOMES`]).
    pub fn forward(&self, tenant: TenantId, outcome: &'static str) {
        if let Some(i) = FORWARD_OUTCOMES.iter().position(|o| *o == outcome) {
            self.forwards[i].increment(1);
            self.tenant_forward(tenant, i);
        }
    }

    /// A first contact locked a sender to `tenant`.
    pub fn lock_created(&self, tenant: TenantId) {
        self.locks_created.increment(1);
        self.tenant_lock_created(tenant);
    }

    /// The Prometheus text exposition of every metric, process metrics included.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        process::render(&mut text);
        text
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

    /// The recorder, for code that must use the `metrics` macros
    /// (`metrics::with_local_recorder(app.metrics.recorder(), || ...)`).
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, None)
}

fn register_counter(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    recorder.register_counter(&Key::from_parts(name, labels), &metadata())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_after_use() {
        let m = Metrics::new();
        m.webhook(0, Outcome::Routed);
        m.forward(7, "ok");
        m.lock_created(7);
        m.http_request(Route::Webhook, &http::Method::POST, http::StatusCode::OK, 0.001);
        let text = m.render();
        for family in families() {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing from:\n{text}");
        }
        let tenant = |labels: &str| format!("whatsapp_router_tenant_forwards_total{{tenant_id=\"7\",{labels}}}");
        assert!(text.contains(&format!("{} 1\n", tenant("outcome=\"ok\""))), "{text}");
        // Every outcome of a tenant exists from its first event, so the first
        // failure is an increase from 0 that rate() can see.
        assert!(text.contains(&format!("{} 0\n", tenant("outcome=\"timeout\""))), "{text}");
        assert!(text.contains("whatsapp_router_tenant_locks_created_total{tenant_id=\"7\"} 1\n"), "{text}");
    }

    #[test]
    fn tenant_labels_can_be_switched_off() {
        let m = Metrics::with_tenant_labels(false);
        m.forward(7, "timeout");
        m.lock_created(7);
        let text = m.render();
        assert!(text.contains("whatsapp_router_forwards_total{outcome=\"timeout\"} 1"), "{text}");
        assert!(text.contains("whatsapp_router_locks_created_total 1"), "{text}");
        assert!(!text.contains("tenant_id"), "{text}");
    }

    #[test]
    fn outcome_index_matches_all() {
        for (i, outcome) in Outcome::all().enumerate() {
            assert_eq!(outcome.index(), i, "{outcome:?}");
        }
    }
}
