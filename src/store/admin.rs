//! Admin operations on the lock table: delete, reassign, per-tenant counters,
//! tenant removal and the audit log.
//!
//! Every change to `locks` goes through one sled transaction that also updates
//! `tenant_counts` and appends to `audit` (+ `audit_index`), so the counters and
//! the log can never drift from the locks, whatever crashes in between. Stats are
//! then O(tenants): one read of `tenant_counts`, never a scan of the senders.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{corrupt, decode_tenant, tx_error, Store, StoreError, AUDIT_TREE, COUNTS_TREE};
use crate::route::TenantId;
use crate::sender::SenderKey;

/// What happened to a sender's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// First contact (or import, or an admin setting a sender that had no lock).
    Lock,
    /// A locked sender sent another tenant's link; the lock held.
    RelockRefused,
    Delete,
    Reassign,
}

/// One audit record, as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log; pages continue with `before=<seq>`.
    #[serde(default)]
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub action: AuditAction,
    /// The sender in canonical form (`digits`, or `digits@lid`).
    pub phone_number: String,
    /// Token subject for admin changes; `webhook` or `import` otherwise.
    pub actor: String,
    pub previous_tenant_id: Option<TenantId>,
    pub new_tenant_id: Option<TenantId>,
}

impl AuditEntry {
    pub fn new(
        time_ms: u64,
        action: AuditAction,
        key: SenderKey,
        actor: &str,
        previous: Option<TenantId>,
        new: Option<TenantId>,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            time_ms,
            action,
            phone_number: key.to_string(),
            actor: actor.to_owned(),
            previous_tenant_id: previous,
            new_tenant_id: new,
        }
    }
}

/// A page request for the audit log (newest first).
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditQuery {
    pub sender: Option<SenderKey>,
    pub tenant: Option<TenantId>,
    /// Only entries with a smaller `seq` (the previous page's `next_before`).
    pub before: Option<u64>,
    pub limit: usize,
}

impl Store {
    /// Bulk locks for `mapping import`: one transaction over `locks` and
    /// `tenant_counts` for the whole chunk (callers pass a few thousand
    /// entries), first lock wins as everywhere. Imported locks are counted but
    /// not audited one by one: ten million audit records would take several
    /// times the space of the locks themselves; the import's report is printed
    /// and logged instead.
    pub fn import_locks(&self, entries: &[(SenderKey, TenantId)]) -> Result<Vec<super::LockOutcome>, StoreError> {
        self.check_writable()?;
        (&self.locks, &self.counts)
            .transaction(|(locks, counts)| {
                let mut outcomes = Vec::with_capacity(entries.len());
                let mut added: BTreeMap<TenantId, i64> = BTreeMap::new();
                for (key, tenant) in entries {
                    // Reads see this transaction's own writes, so a key twice in
                    // one chunk is locked once, to its first tenant.
                    let outcome = match locks.get(key.to_bytes())? {
                        Some(v) => super::LockOutcome {
                            tenant: decode_tenant(&v).map_err(ConflictableTransactionError::Abort)?,
                            created: false,
                        },
                        None => {
                            locks.insert(&key.to_bytes()[..], &tenant.to_be_bytes()[..])?;
                            *added.entry(*tenant).or_default() += 1;
                            super::LockOutcome { tenant: *tenant, created: true }
                        }
                    };
                    outcomes.push(outcome);
                }
                for (tenant, n) in added {
                    tx_add_count(counts, tenant, n)?;
                }
                Ok(outcomes)
            })
            .map_err(tx_error)
    }
}

/// Lock counts per tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub per_tenant: BTreeMap<TenantId, u64>,
}

impl Stats {
    pub fn total(&self) -> u64 {
        self.per_tenant.values().sum()
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

pub(super) fn tx_add_count(counts: &TransactionalTree, tenant: TenantId, delta: i64) -> TxResult<()> {
    let key = tenant.to_be_bytes();
    let current = match counts.get(key)? {
        Some(v) => decode_count(&v).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    let next = current.saturating_add_signed(delta);
    if next == 0 {
        counts.remove(&key[..])?;
    } else {
        counts.insert(&key[..], &next.to_be_bytes()[..])?;
    }
    Ok(())
}

pub(super) fn tx_audit(audit: &TransactionalTree, index: &TransactionalTree, entry: &AuditEntry) -> TxResult<()> {
    let seq = audit.generate_id()?;
    let mut entry = entry.clone();
    entry.seq = seq;
    let bytes = serde_json::to_vec(&entry).map_err(|e| ConflictableTransactionError::Abort(corrupt(AUDIT_TREE, e)))?;
    audit.insert(&seq.to_be_bytes()[..], bytes)?;
    if let Some(key) = crate::sender::parse_user_input(&entry.phone_number) {
        index.insert(sender_index(key, seq), &[][..])?;
    }
    for tenant in [entry.previous_tenant_id, entry.new_tenant_id].into_iter().flatten() {
        index.insert(tenant_index(tenant, seq), &[][..])?;
    }
    Ok(())
}

fn sender_index(key: SenderKey, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'p');
    k.extend_from_slice(&key.to_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn tenant_index(tenant: TenantId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(b't');
    k.extend_from_slice(&tenant.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn decode_count(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| corrupt(COUNTS_TREE, "count is not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl Store {
    /// Removes a sender's lock; returns the tenant it was locked to. The sender's
    /// next deep link locks afresh.
    pub fn delete_lock(&self, key: SenderKey, actor: &str) -> Result<Option<TenantId>, StoreError> {
        let now = now_ms();
        (&self.locks, &self.counts, &self.audit, &self.audit_index)
            .transaction(|(locks, counts, audit, index)| {
                let Some(v) = locks.remove(&key.to_bytes()[..])? else {
                    return Ok(None);
                };
                let previous = decode_tenant(&v).map_err(abort)?;
                tx_add_count(counts, previous, -1)?;
                tx_audit(audit, index, &AuditEntry::new(now, AuditAction::Delete, key, actor, Some(previous), None))?;
                Ok(Some(previous))
            })
            .map_err(tx_error)
    }

    /// Locks a sender to `tenant` whatever it was locked to before (admin
    /// reassignment); returns the previous tenant.
    pub fn set_lock(&self, key: SenderKey, tenant: TenantId, actor: &str) -> Result<Option<TenantId>, StoreError> {
        let now = now_ms();
        (&self.locks, &self.counts, &self.audit, &self.audit_index)
            .transaction(|(locks, counts, audit, index)| {
                let previous = match locks.insert(&key.to_bytes()[..], &tenant.to_be_bytes()[..])? {
                    Some(v) => Some(decode_tenant(&v).map_err(abort)?),
                    None => None,
                };
                if previous == Some(tenant) {
                    return Ok(previous);
                }
                if let Some(p) = previous {
                    tx_add_count(counts, p, -1)?;
                }
                tx_add_count(counts, tenant, 1)?;
                let action = if previous.is_some() { AuditAction::Reassign } else { AuditAction::Lock };
                tx_audit(audit, index, &AuditEntry::new(now, action, key, actor, previous, Some(tenant)))?;
                Ok(previous)
            })
            .map_err(tx_error)
    }

    /// Records a refused relock (no lock changes, so no transaction with `locks`).
    pub fn audit_relock_refused(&self, key: SenderKey, held: TenantId, asked: TenantId) -> Result<(), StoreError> {
        let entry = AuditEntry::new(now_ms(), AuditAction::RelockRefused, key, "webhook", Some(held), Some(asked));
        (&self.audit, &self.audit_index).transaction(|(audit, index)| tx_audit(audit, index, &entry)).map_err(tx_error)
    }

    /// Lock counts per tenant, from the counters (O(tenants)).
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let mut per_tenant = BTreeMap::new();
        for item in self.counts.iter() {
            let (k, v) = item?;
            let id: [u8; 4] = k.as_ref().try_into().map_err(|_| corrupt(COUNTS_TREE, "key is not 4 bytes"))?;
            per_tenant.insert(TenantId::from_be_bytes(id), decode_count(&v)?);
        }
        Ok(Stats { per_tenant })
    }

    /// Locks held by one tenant, from its counter.
    pub fn count(&self, tenant: TenantId) -> Result<u64, StoreError> {
        self.counts.get(tenant.to_be_bytes())?.map_or(Ok(0), |v| decode_count(&v))
    }

    /// Recounts `tenant_counts` from `locks` (databases from before the counters,
    /// and after a restore). A full scan: never on the request path.
    pub fn rebuild_counts(&self) -> Result<(), StoreError> {
        let mut per_tenant: BTreeMap<TenantId, u64> = BTreeMap::new();
        for item in self.locks() {
            let (_, tenant) = item?;
            *per_tenant.entry(tenant).or_default() += 1;
        }
        self.counts.clear()?;
        for (tenant, n) in per_tenant {
            self.counts.insert(tenant.to_be_bytes(), &n.to_be_bytes()[..])?;
        }
        Ok(())
    }

    pub fn get_tenant(&self, id: TenantId) -> Result<Option<super::TenantRecord>, StoreError> {
        self.tenants
            .get(id.to_be_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(super::TENANTS_TREE, e)))
            .transpose()
    }

    /// Removes a tenant from the registry tree. Its senders stay locked to it.
    pub fn remove_tenant(&self, id: TenantId) -> Result<bool, StoreError> {
        Ok(self.tenants.remove(id.to_be_bytes())?.is_some())
    }

    /// One page of the audit log, newest first, and the `before` of the next page.
    pub fn audit_page(&self, q: AuditQuery) -> Result<(Vec<AuditEntry>, Option<u64>), StoreError> {
        let before = q.before.unwrap_or(u64::MAX);
        let mut seqs: Vec<u64> = Vec::with_capacity(q.limit + 1);
        match (q.sender, q.tenant) {
            (None, None) => {
                for item in self.audit.range(..before.to_be_bytes()).rev().take(q.limit + 1) {
                    seqs.push(seq_of(&item?.0)?);
                }
            }
            (sender, tenant) => {
                // Walk the narrower index (the sender's); check the tenant on the entry itself.
                let (lo, hi) = match sender {
                    Some(s) => (sender_index(s, 0), sender_index(s, before)),
                    None => {
                        let t = tenant.unwrap_or_default();
                        (tenant_index(t, 0), tenant_index(t, before))
                    }
                };
                for item in self.audit_index.range(lo..hi).rev() {
                    let (k, _) = item?;
                    let seq = seq_of(&k[k.len() - 8..])?;
                    if let (Some(_), Some(t)) = (sender, tenant) {
                        let entry = self.audit_entry(seq)?;
                        if entry.previous_tenant_id != Some(t) && entry.new_tenant_id != Some(t) {
                            continue;
                        }
                    }
                    seqs.push(seq);
                    if seqs.len() > q.limit {
                        break;
                    }
                }
            }
        }
        let next = if seqs.len() > q.limit {
            seqs.truncate(q.limit);
            seqs.last().copied()
        } else {
            None
        };
        let entries = seqs.into_iter().map(|s| self.audit_entry(s)).collect::<Result<_, _>>()?;
        Ok((entries, next))
    }

    fn audit_entry(&self, seq: u64) -> Result<AuditEntry, StoreError> {
        let v = self.audit.get(seq.to_be_bytes())?.ok_or_else(|| corrupt(AUDIT_TREE, "index names a missing entry"))?;
        serde_json::from_slice(&v).map_err(|e| corrupt(AUDIT_TREE, e))
    }
}

fn seq_of(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| corrupt(AUDIT_TREE, "key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use SenderKey::Phone;

    #[test]
    fn counters_follow_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.lock_if_absent(&[Phone(1)], 2).unwrap();
        store.lock_if_absent(&[Phone(2)], 2).unwrap();
        store.lock_if_absent(&[Phone(2)], 3).unwrap();
        store.audit_relock_refused(Phone(2), 2, 3).unwrap();
        assert_eq!(store.set_lock(Phone(1), 3, "ops").unwrap(), Some(2));
        assert_eq!(store.delete_lock(Phone(2), "ops").unwrap(), Some(2));
        assert_eq!(store.delete_lock(Phone(2), "ops").unwrap(), None);
        assert_eq!(store.stats().unwrap().per_tenant, BTreeMap::from([(3, 1)]));
        store.rebuild_counts().unwrap();
        assert_eq!(store.stats().unwrap().per_tenant, BTreeMap::from([(3, 1)]));

        let all = |q: AuditQuery| {
            store.audit_page(q).unwrap().0.into_iter().map(|e| (e.action, e.phone_number)).collect::<Vec<_>>()
        };
        use AuditAction::*;
        assert_eq!(
            all(AuditQuery { limit: 10, ..Default::default() }),
            [(Delete, "2"), (Reassign, "1"), (RelockRefused, "2"), (Lock, "2"), (Lock, "1")]
                .map(|(a, p)| (a, p.to_owned()))
        );
        assert_eq!(all(AuditQuery { sender: Some(Phone(1)), limit: 10, ..Default::default() }).len(), 2);
        assert_eq!(all(AuditQuery { tenant: Some(3), limit: 10, ..Default::default() }).len(), 2);
        let both = AuditQuery { sender: Some(Phone(2)), tenant: Some(3), limit: 10, ..Default::default() };
        assert_eq!(all(both), [(RelockRefused, "2".to_owned())]);
        let (page, next) = store.audit_page(AuditQuery { limit: 2, ..Default::default() }).unwrap();
        assert_eq!(page.len(), 2);
        let (rest, end) = store.audit_page(AuditQuery { limit: 10, before: next, ..Default::default() }).unwrap();
        assert_eq!((rest.len(), end), (3, None));
    }
}
