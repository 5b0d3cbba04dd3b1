//! Durable state in sled: the sender locks and the tenant registry.
//!
//! The only module that touches sled. Locks are written once, by a
//! compare-and-swap from empty, and made durable with a group commit: concurrent
//! callers of [`Store::durable`] share one `flush_async`, so a burst of first
//! contacts costs one flush, not one each. sled's flush is `sync_file_range`, not
//! an fsync of the drive's cache (see README, "Durability").

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::route::TenantId;
use crate::sender::SenderKey;

const LOCKS_TREE: &str = "locks";
const TENANTS_TREE: &str = "tenants";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree `{tree}`: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("storage task failed: {0}")]
    Task(String),
}

/// The result of a first-contact lock attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOutcome {
    /// Who holds the lock now.
    pub tenant: TenantId,
    /// True if this call created it.
    pub created: bool,
}

/// A tenant as stored in the registry tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: String,
    /// The tenant's own forward URL; `None` follows `forward.url_template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

pub struct Store {
    db: sled::Db,
    locks: sled::Tree,
    tenants: sled::Tree,
    /// Serialises flushes; waiters queue here and usually find their write
    /// already covered by the flush that was running when they arrived.
    flush_lock: tokio::sync::Mutex<()>,
    /// Generation of the most recently started flush.
    flush_started: AtomicU64,
    /// Generation of the most recently completed successful flush.
    flush_done: AtomicU64,
    /// Keys in the lock tree: the scan of [`Store::count_locks`] plus every key
    /// inserted through this handle. Keeps the `whatsapp_router_locks` gauge
    /// exact without a scan per scrape (`Tree::len` walks the whole tree).
    lock_keys: AtomicU64,
}

impl Store {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).cache_capacity(256 * 1024 * 1024).open()?;
        let locks = db.open_tree(LOCKS_TREE)?;
        let tenants = db.open_tree(TENANTS_TREE)?;
        Ok(Store {
            db,
            locks,
            tenants,
            flush_lock: tokio::sync::Mutex::new(()),
            flush_started: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
            lock_keys: AtomicU64::new(0),
        })
    }

    /// Counts the lock tree once, so [`Store::lock_count`] is right from the start.
    /// A full scan: about a second per few million locks (README, "Metrics"), so
    /// it runs once at start, before the router serves. Locks inserted while it
    /// runs would be counted twice; the router calls it before it accepts any.
    pub fn count_locks(&self) -> u64 {
        let n = self.locks.len() as u64;
        self.lock_keys.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Keys in the lock tree: the start-up count plus what was inserted since.
    pub fn lock_count(&self) -> u64 {
        self.lock_keys.load(Ordering::Relaxed)
    }

    /// The tenant a sender is locked to.
    pub fn get_lock(&self, key: SenderKey) -> Result<Option<TenantId>, StoreError> {
        self.locks.get(key.to_bytes())?.map(|v| decode_tenant(&v)).transpose()
    }

    /// Locks every key in `keys` (a sender and maybe its alias in the other key
    /// space) to one tenant, atomically. If any key is already locked, the first
    /// locked key's tenant wins and the other keys join it; otherwise `tenant` wins.
    /// Blocking: sled can stall for a long time on a big tree, so async callers run
    /// this on a blocking thread.
    pub fn lock_if_absent(&self, keys: &[SenderKey], tenant: TenantId) -> Result<LockOutcome, StoreError> {
        let value = tenant.to_be_bytes();
        if let [key] = keys {
            return match self.locks.compare_and_swap(key.to_bytes(), None as Option<&[u8]>, Some(&value[..]))? {
                Ok(()) => {
                    self.lock_keys.fetch_add(1, Ordering::Relaxed);
                    Ok(LockOutcome { tenant, created: true })
                }
                Err(e) => {
                    let current =
                        e.current.ok_or_else(|| corrupt(LOCKS_TREE, "CAS from empty failed on an empty key"))?;
                    Ok(LockOutcome { tenant: decode_tenant(&current)?, created: false })
                }
            };
        }
        let result = self.locks.transaction(|tx| {
            let mut winner = None;
            for key in keys {
                if let Some(v) = tx.get(key.to_bytes())? {
                    winner = Some(decode_tenant(&v).map_err(sled::transaction::ConflictableTransactionError::Abort)?);
                    break;
                }
            }
            let holder = winner.unwrap_or(tenant);
            let mut inserted = 0u64;
            for key in keys {
                if tx.get(key.to_bytes())?.is_none() {
                    tx.insert(&key.to_bytes()[..], &holder.to_be_bytes()[..])?;
                    inserted += 1;
                }
            }
            Ok((LockOutcome { tenant: holder, created: winner.is_none() }, inserted))
        });
        // A transaction closure may run several times; only the committed run counts.
        let (outcome, inserted) = result.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        })?;
        self.lock_keys.fetch_add(inserted, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Returns once everything written before the call is on disk. Concurrent
    /// callers share flushes (group commit).
    pub async fn durable(&self) -> Result<(), StoreError> {
        // We need a flush that starts after this point.
        let needed = self.flush_started.load(Ordering::Acquire) + 1;
        if self.flush_done.load(Ordering::Acquire) >= needed {
            return Ok(());
        }
        let _turn = self.flush_lock.lock().await;
        if self.flush_done.load(Ordering::Acquire) >= needed {
            return Ok(());
        }
        let generation = self.flush_started.fetch_add(1, Ordering::AcqRel) + 1;
        self.db.flush_async().await?;
        self.flush_done.store(generation, Ordering::Release);
        Ok(())
    }

    /// Flushes synchronously (shutdown, command-line tools).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Every lock, in key order. Reads a consistent-enough scan for export: locks
    /// are only ever added, so a concurrent writer can only add entries.
    pub fn locks(&self) -> impl Iterator<Item = Result<(SenderKey, TenantId), StoreError>> + '_ {
        self.locks.iter().map(|item| {
            let (k, v) = item?;
            let key = SenderKey::from_bytes(&k).ok_or_else(|| corrupt(LOCKS_TREE, "key is not 8 bytes"))?;
            Ok((key, decode_tenant(&v)?))
        })
    }

    /// Inserts or replaces a tenant.
    pub fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(tenant).map_err(|e| corrupt(TENANTS_TREE, e))?;
        self.tenants.insert(tenant.id.to_be_bytes(), bytes)?;
        Ok(())
    }

    pub fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.tenants
            .iter()
            .map(|item| {
                let (_, v) = item?;
                serde_json::from_slice(&v).map_err(|e| corrupt(TENANTS_TREE, e))
            })
            .collect()
    }
}

fn corrupt(tree: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { tree, detail: detail.to_string() }
}

fn decode_tenant(bytes: &[u8]) -> Result<TenantId, StoreError> {
    let array: [u8; 4] =
        bytes.try_into().map_err(|_| corrupt(LOCKS_TREE, format!("value of {} bytes", bytes.len())))?;
    Ok(TenantId::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use SenderKey::{Lid, Phone};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        (dir, store)
    }

    #[test]
    fn first_contact_wins() {
        let (_dir, store) = open();
        assert_eq!(store.get_lock(Phone(1)).unwrap(), None);
        assert_eq!(store.lock_if_absent(&[Phone(1)], 2).unwrap(), LockOutcome { tenant: 2, created: true });
        assert_eq!(store.lock_if_absent(&[Phone(1)], 3).unwrap(), LockOutcome { tenant: 2, created: false });
        assert_eq!(store.get_lock(Phone(1)).unwrap(), Some(2));
        assert_eq!(store.get_lock(Lid(1)).unwrap(), None, "key spaces are separate");
    }

    #[test]
    fn aliases_join_the_existing_lock() {
        let (_dir, store) = open();
        assert_eq!(store.lock_if_absent(&[Lid(9), Phone(5)], 4).unwrap(), LockOutcome { tenant: 4, created: true });
        assert_eq!(store.get_lock(Phone(5)).unwrap(), Some(4));
        // The phone form was locked first elsewhere: the LID joins that tenant.
        store.lock_if_absent(&[Phone(6)], 7).unwrap();
        assert_eq!(store.lock_if_absent(&[Lid(10), Phone(6)], 8).unwrap(), LockOutcome { tenant: 7, created: false });
        assert_eq!(store.get_lock(Lid(10)).unwrap(), Some(7));
    }

    #[test]
    fn tenants_and_export_round_trip() {
        let (_dir, store) = open();
        let t = TenantRecord { id: 2, name: "Saman".into(), url: None };
        store.put_tenant(&t).unwrap();
        store.put_tenant(&TenantRecord { url: Some("http://x/".into()), ..t.clone() }).unwrap();
        assert_eq!(store.tenants().unwrap()[0].url.as_deref(), Some("http://x/"));
        store.lock_if_absent(&[Lid(3)], 2).unwrap();
        store.lock_if_absent(&[Phone(4)], 2).unwrap();
        let all: Vec<_> = store.locks().collect::<Result<_, _>>().unwrap();
        assert_eq!(all, vec![(Phone(4), 2), (Lid(3), 2)]);
    }

    #[test]
    fn lock_count_survives_reopen_and_counts_keys_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&dir.path().join("db")).unwrap();
            assert_eq!(store.count_locks(), 0);
            store.lock_if_absent(&[Phone(1)], 2).unwrap();
            store.lock_if_absent(&[Phone(1)], 3).unwrap();
            store.lock_if_absent(&[Lid(9), Phone(5)], 4).unwrap();
            store.lock_if_absent(&[Lid(10), Phone(5)], 4).unwrap();
            store.lock_if_absent(&[Lid(10), Phone(5)], 4).unwrap();
            assert_eq!(store.lock_count(), 4);
            store.flush().unwrap();
        }
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.lock_count(), 0, "not counted before count_locks");
        assert_eq!(store.count_locks(), 4);
        store.lock_if_absent(&[Phone(6)], 2).unwrap();
        assert_eq!(store.lock_count(), 5);
    }

    #[tokio::test]
    async fn durable_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&dir.path().join("db")).unwrap();
            store.lock_if_absent(&[Phone(77)], 5).unwrap();
            let (a, b) = tokio::join!(store.durable(), store.durable());
            a.unwrap();
            b.unwrap();
        }
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.get_lock(Phone(77)).unwrap(), Some(5));
    }
}
