//! The sender -> tenant lock table as the request path sees it: a DashMap cache
//! in front of the sled tree.
//!
//! Invariant: the cache holds only locks that are durable, so it never disagrees
//! with what sled will hold after a crash. A lock read from sled that a writer has
//! not yet confirmed durable (it is in `unflushed`) is flushed before use.
//! No DashMap guard is held across an `.await`: values are copied out.
//!
//! Admin changes (delete, reassign) are the only writes that replace or remove a
//! lock, and they must not be undone by a lookup that read sled just before the
//! change and fills the cache just after it. The `epoch` counter closes that gap:
//! an admin change (1) writes sled, (2) makes it durable, (3) bumps `epoch`, (4)
//! removes the key from the cache. A cache fill (a) reads `epoch`, (b) reads sled,
//! (c) inserts, (d) re-reads `epoch` and removes its own insert if it moved.
//! If (b) saw the old value then (b) < (1), so (a) < (3): an insert at (c) before
//! (4) is removed by (4), and one after (4) comes after (3), so (d) sees a new
//! epoch and removes it. Removing is always safe (the next lookup reads sled), so
//! the rare spurious removal of a fresh entry costs one sled read, nothing more.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Bumped by every admin change to a lock; see the module comment.
    epoch: AtomicU64,
}

impl Locks {
    pub fn new(store: Arc<Store>) -> Locks {
        Locks { store, cache: DashMap::new(), unflushed: DashSet::new(), epoch: AtomicU64::new(0) }
    }

    /// The tenant `key` is locked to, from the cache or else from sled.
    pub async fn lookup(&self, key: SenderKey) -> Result<Option<TenantId>, StoreError> {
        let k = key.cache_key();
        if let Some(tenant) = self.cache.get(&k).map(|t| *t) {
            return Ok(Some(tenant));
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let found = self.store.get_lock(key)?;
        if let Some(tenant) = found {
            if self.unflushed.contains(&k) {
                // Another request's lock, not yet acknowledged as durable.
                self.store.durable().await?;
            }
            self.fill(k, tenant, epoch);
        }
        Ok(found)
    }

    /// Caches a value read from sled after `epoch` was read, unless an admin
    /// change may have replaced it meanwhile (steps (c) and (d) above).
    fn fill(&self, k: u64, tenant: TenantId, epoch: u64) {
        self.cache.insert(k, tenant);
        if self.epoch.load(Ordering::SeqCst) != epoch {
            self.cache.remove(&k);
        }
    }

    /// Admin: removes a sender's lock. Returns the tenant it had.
    pub async fn delete(&self, key: SenderKey, actor: &str) -> Result<Option<TenantId>, StoreError> {
        let store = Arc::clone(&self.store);
        let actor = actor.to_owned();
        let previous = tokio::task::spawn_blocking(move || store.delete_lock(key, &actor))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.changed(key).await?;
        Ok(previous)
    }

    /// Admin: locks a sender to `tenant`, replacing any lock. Returns the previous tenant.
    pub async fn reassign(
        &self,
        key: SenderKey,
        tenant: TenantId,
        actor: &str,
    ) -> Result<Option<TenantId>, StoreError> {
        let store = Arc::clone(&self.store);
        let actor = actor.to_owned();
        let previous = tokio::task::spawn_blocking(move || store.set_lock(key, tenant, &actor))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.changed(key).await?;
        Ok(previous)
    }

    /// Steps (2) to (4) of an admin change, after sled was written.
    async fn changed(&self, key: SenderKey) -> Result<(), StoreError> {
        let flushed = self.store.durable().await;
        // Even when the flush failed, sled now holds the new value: drop the old one.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(&key.cache_key());
        flushed
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
        let epoch = self.epoch.load(Ordering::SeqCst);
        let store = Arc::clone(&self.store);
        let cas_keys = keys.clone();
        let outcome = tokio::task::spawn_blocking(move || store.lock_if_absent(&cas_keys, tenant))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        // On error the keys stay in `unflushed`, so readers flush before trusting them.
        self.store.durable().await?;
        for key in &keys {
            self.fill(key.cache_key(), outcome.tenant, epoch);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Sender;

    /// The interleaving the epoch exists for, step by step: a lookup reads the
    /// old tenant from sled, an admin change completes, then the lookup fills the
    /// cache. The stale fill must not survive, in either order of (c) and (4).
    #[tokio::test]
    async fn a_fill_racing_an_admin_change_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::new(Arc::new(Store::open(&dir.path().join("db")).unwrap()));
        let key = SenderKey::Phone(971500000001);
        locks.lock(Sender { key, alias: None }, 1).await.unwrap();
        locks.cache.clear();

        // Fill after the admin change finished.
        let epoch = locks.epoch.load(Ordering::SeqCst); // (a)
        let stale = locks.store.get_lock(key).unwrap().unwrap(); // (b): tenant 1
        assert_eq!(locks.reassign(key, 2, "test").await.unwrap(), Some(1)); // (1)-(4)
        locks.fill(key.cache_key(), stale, epoch); // (c), (d)
        assert_eq!(locks.lookup(key).await.unwrap(), Some(2));

        // Fill between the sled write and the eviction: the eviction removes it.
        locks.cache.clear();
        let epoch = locks.epoch.load(Ordering::SeqCst);
        let stale = locks.store.get_lock(key).unwrap().unwrap(); // tenant 2
        locks.store.delete_lock(key, "test").unwrap(); // (1)
        locks.fill(key.cache_key(), stale, epoch); // (c) before (3): epoch unchanged, kept for now
        locks.changed(key).await.unwrap(); // (2)-(4)
        assert_eq!(locks.lookup(key).await.unwrap(), None);
        assert_eq!(locks.cached(), 0);
    }
}
