//! Backup and restore of the whole store in one self-describing stream.
//!
//! Format: the magic line [`BACKUP_MAGIC`], then records `tree:u8 klen:u32 key
//! vlen:u32 value` (big-endian lengths), then `0xFF count:u64`. The trailer makes a
//! truncated file an error instead of a silently smaller database. `tenant_counts`
//! is not written: restore recounts it from `locks`, so a restored database is
//! self-consistent even though the scan ran while the router was serving (each
//! lock is captured as it was at some instant during the scan).

use std::io::{self, Read, Write};

use super::{Store, StoreError};

/// First bytes of every backup file.
pub const BACKUP_MAGIC: &[u8] = b"WHATSAPP-ROUTER-BACKUP 1\n";
const TRAILER: u8 = 0xFF;
/// Keys and values are small; anything larger is a corrupt file, not a reason to allocate.
const MAX_FIELD: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("not a whatsapp-router backup: {0}")]
    Format(String),
    #[error("restore needs an empty data dir; this one already holds {0} locks or tenants")]
    NotEmpty(usize),
}

impl Store {
    /// The trees a backup holds, in the order written; the index is the tree id.
    fn backup_trees(&self) -> [&sled::Tree; 4] {
        [&self.tenants, &self.locks, &self.audit, &self.audit_index]
    }

    /// Writes every tree but the counters to `out`; returns the record count.
    pub fn backup(&self, mut out: impl Write) -> Result<u64, BackupError> {
        out.write_all(BACKUP_MAGIC)?;
        let mut count = 0u64;
        for (id, tree) in self.backup_trees().into_iter().enumerate() {
            for item in tree.iter() {
                let (k, v) = item.map_err(StoreError::from)?;
                out.write_all(&[id as u8])?;
                for field in [&k[..], &v[..]] {
                    out.write_all(&(field.len() as u32).to_be_bytes())?;
                    out.write_all(field)?;
                }
                count += 1;
            }
        }
        out.write_all(&[TRAILER])?;
        out.write_all(&count.to_be_bytes())?;
        out.flush()?;
        Ok(count)
    }

    /// Loads a backup into this (empty) store, recounts, and flushes.
    pub fn restore(&self, mut input: impl Read) -> Result<u64, BackupError> {
        let existing = self.locks.len() + self.tenants.len();
        if existing > 0 {
            return Err(BackupError::NotEmpty(existing));
        }
        let mut magic = vec![0u8; BACKUP_MAGIC.len()];
        read_exact(&mut input, &mut magic)?;
        if magic != BACKUP_MAGIC {
            return Err(BackupError::Format("wrong magic line".into()));
        }
        let trees = self.backup_trees();
        let mut count = 0u64;
        let mut max_seq = 0u64;
        loop {
            let mut id = [0u8; 1];
            read_exact(&mut input, &mut id)?;
            if id[0] == TRAILER {
                let mut n = [0u8; 8];
                read_exact(&mut input, &mut n)?;
                if u64::from_be_bytes(n) != count {
                    return Err(BackupError::Format(format!(
                        "trailer says {} records, read {count}",
                        u64::from_be_bytes(n)
                    )));
                }
                break;
            }
            let tree = trees
                .get(usize::from(id[0]))
                .ok_or_else(|| BackupError::Format(format!("unknown tree id {}", id[0])))?;
            let key = read_field(&mut input)?;
            let value = read_field(&mut input)?;
            if id[0] == 2 {
                if let Ok(seq) = <[u8; 8]>::try_from(&key[..]) {
                    max_seq = max_seq.max(u64::from_be_bytes(seq));
                }
            }
            tree.insert(key, value).map_err(StoreError::from)?;
            count += 1;
        }
        // Audit sequence numbers come from sled's id generator, which starts over
        // in a new database: move it past the restored log so nothing is overwritten.
        while self.db.generate_id().map_err(StoreError::from)? <= max_seq {}
        self.rebuild_counts()?;
        self.flush()?;
        Ok(count)
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), BackupError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BackupError::Format("file ends early (truncated?)".into()),
        _ => BackupError::Io(e),
    })
}

fn read_field(input: &mut impl Read) -> Result<Vec<u8>, BackupError> {
    let mut len = [0u8; 4];
    read_exact(input, &mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FIELD {
        return Err(BackupError::Format(format!("field of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(input, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender::SenderKey::{Lid, Phone};
    use crate::store::TenantRecord;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        a.put_tenant(&TenantRecord {
            id: 2,
            name: "T".into(),
            url: None,
            signing_secrets: vec!["whsec_".to_owned() + &"A".repeat(32)],
        })
        .unwrap();
        a.lock_if_absent(&[Phone(5), Lid(6)], 2).unwrap();
        a.set_lock(Phone(7), 3, "ops").unwrap();
        let mut bytes = Vec::new();
        // 1 tenant, 3 locks, 3 audit entries with 2 index keys each.
        assert_eq!(a.backup(&mut bytes).unwrap(), 1 + 3 + 3 + 3 * 2);

        let b = Store::open(&dir.path().join("b")).unwrap();
        b.restore(&bytes[..]).unwrap();
        assert_eq!(b.tenants().unwrap(), a.tenants().unwrap());
        assert_eq!(b.stats().unwrap(), a.stats().unwrap());
        b.delete_lock(Phone(5), "ops").unwrap();
        let (log, _) = b.audit_page(crate::store::AuditQuery { limit: 100, ..Default::default() }).unwrap();
        assert_eq!(log.len(), 4, "the restored log is kept and continued: {log:?}");

        assert!(matches!(b.restore(&bytes[..]), Err(BackupError::NotEmpty(_))));
        let mut huge = BACKUP_MAGIC.to_vec();
        huge.extend_from_slice(&[1, 0xFF, 0xFF, 0xFF, 0xFF]);
        for (i, bad) in [&bytes[..bytes.len() - 3], &b"nope"[..], &huge[..]].into_iter().enumerate() {
            let c = Store::open(&dir.path().join(format!("c{i}"))).unwrap();
            assert!(matches!(c.restore(bad), Err(BackupError::Format(_))), "case {i}");
        }
    }
}
