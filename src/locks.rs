//! The sender -> tenant lock table as the request path sees it: a DashMap cache
//! in front of the sled tree.
//!
//! Invariant: the cache holds only locks that are durable, so it never disagrees
//! with what sled will hold after a crash. A lock read from sled that a writer has
//! not yet confirmed durable (it is in `unflushed`) is flushed before use.
//! No DashMap guard is held across an `.await`: values are copied out.

use std::sync::Arc;

use dashmap::{DashMap, DashSet};

use crate::route::{Sender, TenantId};
use crate::sender::SenderKey;
use crate::store::{LockOutcome, Store, StoreError};

pub struct Locks {
    store: Arc<Store>,
    /// Durable locks by [`SenderKey::cache_key`]: 8 + 4 bytes a sender.
    cache: DashMap<u64, TenantId>,
    /// Keys a writer has touched but not yet seen flushed.
    unflushed: DashSet<u64>,
}

impl Locks {
    pub fn new(store: Arc<Store>) -> Locks {
        Locks { store, cache: DashMap::new(), unflushed: DashSet::new() }
    }

    /// The tenant `key` is locked to, from the cache or else from sled.
    pub async fn lookup(&self, key: SenderKey) -> Result<Option<TenantId>, StoreError> {
        let k = key.cache_key();
        if let Some(tenant) = self.cache.get(&k).map(|t| *t) {
            return Ok(Some(tenant));
        }
        let found = self.store.get_lock(key)?;
        if let Some(tenant) = found {
            if self.unflushed.contains(&k) {
                // Another request's lock, not yet acknowledged as durable.
                self.store.durable().await?;
            }
            self.cache.insert(k, tenant);
        }
        Ok(found)
    }

    /// The lock of a sender, trying its alias when the primary key is not locked.
    pub async fn lookup_sender(&self, sender: &Sender) -> Result<Option<TenantId>, StoreError> {
        for key in sender.keys() {
            if let Some(tenant) = self.lookup(key).await? {
                return Ok(Some(tenant));
            }
        }
        Ok(None)
    }

    /// First contact: locks the sender (and its alias) to `tenant` unless already
    /// locked, and returns once the result is durable.
    pub async fn lock(&self, sender: Sender, tenant: TenantId) -> Result<LockOutcome, StoreError> {
        let keys: Vec<SenderKey> = sender.keys().collect();
        for key in &keys {
            self.unflushed.insert(key.cache_key());
        }
        let store = Arc::clone(&self.store);
        let cas_keys = keys.clone();
        let outcome = tokio::task::spawn_blocking(move || store.lock_if_absent(&cas_keys, tenant))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        // On error the keys stay in `unflushed`, so readers flush before trusting them.
        self.store.durable().await?;
        for key in &keys {
            self.cache.insert(key.cache_key(), outcome.tenant);
            self.unflushed.remove(&key.cache_key());
        }
        Ok(outcome)
    }

    /// When a payload names a sender in both key spaces and only one is locked,
    /// the other joins that lock, so the person cannot reach a second tenant
    /// under their other id.
    pub async fn join_alias(&self, sender: Sender, tenant: TenantId) -> Result<(), StoreError> {
        if sender.alias.is_none() {
            return Ok(());
        }
        for key in sender.keys() {
            if self.lookup(key).await?.is_none() {
                self.lock(sender, tenant).await?;
                break;
            }
        }
        Ok(())
    }

    /// Number of locks in the cache (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}
