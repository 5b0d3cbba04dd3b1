//! Durable state in sled: the sender locks, the tenant registry, and (in
//! `outbox`) the delivery queue.
//!
//! The only module that touches sled. Locks are written once, by a
//! compare-and-swap from empty, and made durable with a group commit: concurrent
//! callers of [`Store::durable`] share one `flush_async`, so a burst of first
//! contacts costs one flush, not one each. sled's flush is `sync_file_range`, not
//! an fsync of the drive's cache (see README, "Durability").

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::route::TenantId;
use crate::sender::SenderKey;

mod outbox;

pub use outbox::{DeliveryRecord, DeliveryState};

mod admin;
mod backup;

pub use admin::{AuditAction, AuditEntry, AuditQuery, Stats};
pub use backup::{BackupError, BACKUP_MAGIC};

const LOCKS_TREE: &str = "locks";
const TENANTS_TREE: &str = "tenants";
/// Tenant id (4 bytes BE) -> number of lock keys held (u64 BE); kept in the same
/// transaction as every lock change, so stats never scan `locks`.
const COUNTS_TREE: &str = "tenant_counts";
/// Sequence (u64 BE) -> JSON [`AuditEntry`].
const AUDIT_TREE: &str = "audit";
/// `p` + sender key + seq, and `t` + tenant + seq: indexes of `audit` for paged filters.
const AUDIT_INDEX_TREE: &str = "audit_index";

/// The watchdog's marker, in sled's default tree (not in backups).
const PROBE_KEY: &[u8] = b"watchdog_probe";

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
    /// The tenant's own Standard Webhooks secrets (`whsec_...`), newest first;
    /// empty means the global secret signs its forwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_secrets: Vec<String>,
}

pub struct Store {
    db: sled::Db,
    locks: sled::Tree,
    tenants: sled::Tree,
    outbox: sled::Tree,
    dead: sled::Tree,
    dedupe: sled::Tree,
    counts: sled::Tree,
    audit: sled::Tree,
    audit_index: sled::Tree,
    /// Serialises flushes; waiters queue here and usually find their write
    /// already covered by the flush that was running when they arrived.
    flush_lock: tokio::sync::Mutex<()>,
    /// Generation of the most recently started flush.
    flush_started: AtomicU64,
    /// Generation of the most recently completed successful flush.
    flush_done: AtomicU64,
    /// Fault injection for tests: when set, every write and flush fails as on a
    /// full or read-only disk. One relaxed load per write when unset.
    fail_writes: AtomicBool,
}

impl Store {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).cache_capacity(256 * 1024 * 1024).open()?;
        let locks = db.open_tree(LOCKS_TREE)?;
        let tenants = db.open_tree(TENANTS_TREE)?;
        let outbox = db.open_tree(outbox::OUTBOX_TREE)?;
        let dead = db.open_tree(outbox::DEAD_TREE)?;
        let dedupe = db.open_tree(outbox::DEDUPE_TREE)?;
        let counts = db.open_tree(COUNTS_TREE)?;
        let audit = db.open_tree(AUDIT_TREE)?;
        let audit_index = db.open_tree(AUDIT_INDEX_TREE)?;
        let store = Store {
            db,
            locks,
            tenants,
            outbox,
            dead,
            dedupe,
            counts,
            audit,
            audit_index,
            flush_lock: tokio::sync::Mutex::new(()),
            flush_started: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
            fail_writes: AtomicBool::new(false),
        };
        // A database from before the counters existed: count once, then keep them.
        if store.counts.is_empty() && !store.locks.is_empty() {
            store.rebuild_counts()?;
        }
        Ok(store)
    }

    /// Keys in the lock table, from the per-tenant counters kept in the same
    /// transaction as every lock change: O(tenants), exact after restarts,
    /// deletes, reassigns and imports, and no scan of `locks` at start.
    pub fn lock_count(&self) -> Result<u64, StoreError> {
        Ok(self.stats()?.total())
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
        self.lock_if_absent_by(keys, tenant, "webhook")
    }

    /// [`Store::lock_if_absent`] naming who locks, for the audit log. One sled
    /// transaction over `locks`, `tenant_counts` and the audit trees: a lock never
    /// exists without being counted and audited, even across a crash.
    pub fn lock_if_absent_by(
        &self,
        keys: &[SenderKey],
        tenant: TenantId,
        actor: &str,
    ) -> Result<LockOutcome, StoreError> {
        self.check_writable()?;
        let now = admin::now_ms();
        let result =
            (&self.locks, &self.counts, &self.audit, &self.audit_index).transaction(|(locks, counts, audit, index)| {
                let mut winner = None;
                for key in keys {
                    if let Some(v) = locks.get(key.to_bytes())? {
                        winner = Some(decode_tenant(&v).map_err(ConflictableTransactionError::Abort)?);
                        break;
                    }
                }
                let holder = winner.unwrap_or(tenant);
                for key in keys {
                    if locks.get(key.to_bytes())?.is_none() {
                        locks.insert(&key.to_bytes()[..], &holder.to_be_bytes()[..])?;
                        admin::tx_add_count(counts, holder, 1)?;
                        let entry = AuditEntry::new(now, AuditAction::Lock, *key, actor, None, Some(holder));
                        admin::tx_audit(audit, index, &entry)?;
                    }
                }
                Ok(LockOutcome { tenant: holder, created: winner.is_none() })
            });
        result.map_err(tx_error)
    }

    /// Returns once everything written before the call is on disk. Concurrent
    /// callers share flushes (group commit).
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.check_writable()?;
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

    /// Makes every later write fail (`true`) or work again (`false`): how tests
    /// simulate a full or unwritable disk.
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Relaxed);
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(StoreError::Sled(sled::Error::Io(std::io::Error::other("injected write failure"))));
        }
        Ok(())
    }

    /// Writes and flushes a marker, past the fault injection: whether the disk
    /// takes writes at all. sled stops taking writes after its first I/O error
    /// (until the database is reopened), so a failed probe on a disk with room
    /// again still fails: see `watchdog`.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.db.insert(PROBE_KEY, &admin::now_ms().to_be_bytes()[..])?;
        self.db.flush()?;
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

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
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
        let t = TenantRecord { id: 2, name: "Saman".into(), url: None, signing_secrets: vec![] };
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
            assert_eq!(store.lock_count().unwrap(), 0);
            store.lock_if_absent(&[Phone(1)], 2).unwrap();
            store.lock_if_absent(&[Phone(1)], 3).unwrap();
            store.lock_if_absent(&[Lid(9), Phone(5)], 4).unwrap();
            store.lock_if_absent(&[Lid(10), Phone(5)], 4).unwrap();
            store.lock_if_absent(&[Lid(10), Phone(5)], 4).unwrap();
            assert_eq!(store.lock_count().unwrap(), 4);
            store.flush().unwrap();
        }
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.lock_count().unwrap(), 4);
        store.lock_if_absent(&[Phone(6)], 2).unwrap();
        assert_eq!(store.lock_count().unwrap(), 5);
        store.delete_lock(Phone(6), "test").unwrap();
        assert_eq!(store.lock_count().unwrap(), 4);
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
