//! The queue as the admin API shows it: listing parked and dead deliveries,
//! and replaying dead letters.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::{now_ms, Delivery, Lane, Slot, SlotState};
use crate::error::ApiError;
use crate::route::TenantId;
use crate::store::{DeliveryRecord, DeliveryState, StoreError};

/// Page size bounds for `GET /api/gateway/deliveries`.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// One page of deliveries: records after `after` (a sequence number), oldest first.
pub struct Page {
    pub items: Vec<DeliveryRecord>,
    /// The cursor for the next page, if there may be one.
    pub next: Option<u64>,
}

impl Delivery {
    pub fn page(
        &self,
        state: DeliveryState,
        tenant: Option<TenantId>,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut items = Vec::new();
        for record in self.store.deliveries(state, after) {
            let record = record?;
            if tenant.is_some_and(|t| t != record.tenant) {
                continue;
            }
            items.push(record);
            if items.len() == limit {
                let next = items.last().map(|r| r.seq);
                return Ok(Page { items, next });
            }
        }
        Ok(Page { items, next: None })
    }

    /// Moves dead letter `seq` back into its sender's queue. `None` if there is
    /// no such dead letter.
    pub fn replay(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        let Some(record) = self.store.delivery(DeliveryState::Dead, seq)? else {
            return Ok(None);
        };
        let lane_key = record.sender.cache_key();
        let now = now_ms();
        let (new_seq, head) = {
            let mut lane = self.lanes.entry(lane_key).or_insert_with(Lane::new);
            let new_seq = self.store.next_seq()?;
            if self.store.resurrect(seq, new_seq, now)?.is_none() {
                return Ok(None);
            }
            let head = lane.slots.is_empty();
            lane.slots.push_back(Slot { seq: new_seq, state: SlotState::Parked });
            (new_seq, head)
        };
        self.stats.dead.fetch_sub(1, Ordering::Relaxed);
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
        if head {
            self.schedule(lane_key, now);
        }
        Ok(Some(new_seq))
    }

    /// Replays every dead letter of a tenant; returns how many.
    pub fn replay_tenant(&self, tenant: TenantId) -> Result<usize, StoreError> {
        let seqs: Vec<u64> = self
            .store
            .deliveries(DeliveryState::Dead, 0)
            .filter_map(|r| match r {
                Ok(r) if r.tenant == tenant => Some(Ok(r.seq)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        let mut replayed = 0;
        for seq in seqs {
            if self.replay(seq)?.is_some() {
                replayed += 1;
            }
        }
        Ok(replayed)
    }
}

/// The JSON form of a delivery for the admin API.
pub fn delivery_json(record: &DeliveryRecord, state: DeliveryState) -> Value {
    json!({
        "id": record.seq,
        "state": match state { DeliveryState::Parked => "parked", DeliveryState::Dead => "dead" },
        "tenant_id": record.tenant,
        "sender": record.sender.to_string(),
        "webhook_id": record.webhook_id,
        "attempts": record.attempts,
        "created_ms": record.created_ms,
        "next_attempt_ms": record.next_attempt_ms,
        "last_error": record.last_error,
        "last_status": record.last_status,
        "response_body": record.response_body,
        "body_bytes": record.body.len(),
    })
}

/// `GET /api/gateway/deliveries?state=parked|dead&tenant_id=&after=&limit=`.
pub fn list(delivery: &Delivery, query: &str) -> Result<Value, ApiError> {
    let mut state = DeliveryState::Parked;
    let (mut tenant, mut after, mut limit) = (None, 0u64, DEFAULT_LIMIT);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| ApiError::BadRequest(format!("query `{key}`: {what}"));
        match key {
            "state" => {
                state = match value {
                    "parked" => DeliveryState::Parked,
                    "dead" => DeliveryState::Dead,
                    _ => return Err(bad("must be `parked` or `dead`")),
                }
            }
            "tenant_id" => tenant = Some(value.parse::<TenantId>().map_err(|_| bad("must be a tenant id"))?),
            "after" => after = value.parse().map_err(|_| bad("must be a delivery id"))?,
            "limit" => {
                limit =
                    value.parse().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| bad("must be 1 to 500"))?
            }
            _ => return Err(bad("unknown parameter")),
        }
    }
    let page = delivery.page(state, tenant, after, limit)?;
    Ok(json!({
        "status": "success",
        "deliveries": page.items.iter().map(|r| delivery_json(r, state)).collect::<Vec<_>>(),
        "next_after": page.next,
    }))
}

/// `POST /api/gateway/deliveries/{id}/replay`.
pub fn replay(delivery: &Delivery, seq: u64) -> Result<Value, ApiError> {
    match delivery.replay(seq)? {
        Some(new_id) => Ok(json!({"status": "queued", "id": seq, "new_id": new_id})),
        None => Err(ApiError::Missing(format!("no dead letter with id {seq}"))),
    }
}

/// `POST /api/gateway/tenants/{id}/replay`.
pub fn replay_tenant(delivery: &Delivery, tenant: TenantId) -> Result<Value, ApiError> {
    let replayed = delivery.replay_tenant(tenant)?;
    Ok(json!({"status": "queued", "tenant_id": tenant, "replayed": replayed}))
}
