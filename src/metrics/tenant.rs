//! Per-tenant counters: the only metrics with a `tenant_id` label.
//!
//! A tenant's series cost memory in the router and in Prometheus, so only two
//! counters carry the label (6 series a tenant), and `metrics_tenant_labels =
//! false` turns them off for very large tenant counts (the dashboard's "top
//! tenants" panels are then empty). A tenant's handles are registered together
//! on its first event and cached in a DashMap: registering every outcome at once
//! means a later first failure shows up in `rate()`/`increase()`, which cannot
//! see the first sample of a series that appears with its value already 1.

use dashmap::DashMap;
use metrics::{Counter, Label};

use super::{register_counter, Metrics, FORWARD_OUTCOMES};
use crate::route::TenantId;

pub const TENANT_FORWARDS_TOTAL: &str = "whatsapp_router_tenant_forwards_total";
pub const TENANT_LOCKS_CREATED_TOTAL: &str = "whatsapp_router_tenant_locks_created_total";

/// One tenant's handles.
pub(super) struct TenantCounters {
    /// Indexed like [`FORWARD_OUTCOMES`].
    forwards: [Counter; FORWARD_OUTCOMES.len()],
    locks_created: Counter,
}

pub(super) type PerTenant = DashMap<TenantId, TenantCounters>;

impl Metrics {
    /// Runs `f` on the tenant's handles, registering them on first use. The
    /// DashMap guard lives only for this synchronous call.
    fn with_tenant(&self, tenant: TenantId, f: impl FnOnce(&TenantCounters)) {
        let Some(per) = &self.per_tenant else { return };
        if let Some(counters) = per.get(&tenant) {
            return f(&counters);
        }
        let id = tenant.to_string();
        let counters = per.entry(tenant).or_insert_with(|| TenantCounters {
            forwards: FORWARD_OUTCOMES.map(|outcome| {
                let labels = vec![Label::new("tenant_id", id.clone()), Label::new("outcome", outcome)];
                register_counter(&self.recorder, TENANT_FORWARDS_TOTAL, labels)
            }),
            locks_created: register_counter(
                &self.recorder,
                TENANT_LOCKS_CREATED_TOTAL,
                vec![Label::new("tenant_id", id.clone())],
            ),
        });
        f(&counters);
    }

    /// `outcome` indexes [`FORWARD_OUTCOMES`].
    pub(super) fn tenant_forward(&self, tenant: TenantId, outcome: usize) {
        self.with_tenant(tenant, |t| t.forwards[outcome].increment(1));
    }

    pub(super) fn tenant_lock_created(&self, tenant: TenantId) {
        self.with_tenant(tenant, |t| t.locks_created.increment(1));
    }
}
