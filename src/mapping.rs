//! Import and export of the Python prototype's `user_tenant_mapping.json`
//! (`{"971509876543": 2, ...}`).
//!
//! Both stream: import reads one entry at a time with serde_json and export
//! writes one line per lock, so ten million entries need no more memory than a
//! few.  Import never overrides: a sender already locked keeps its tenant.

use std::fmt;
use std::io::{self, BufRead, Write};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};

use crate::registry::Registry;
use crate::route::TenantId;
use crate::sender::{parse_user_input, SenderKey};
use crate::store::{Store, StoreError};

/// What an import did, entry by entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// New locks.
    pub added: u64,
    /// Already locked to the same tenant.
    pub kept: u64,
    /// Already locked to another tenant: the existing lock wins.
    pub refused_locked: u64,
    /// The key is not a phone number or LID we can key on.
    pub refused_invalid_sender: u64,
    /// The value is not a tenant id, or names a tenant not in the registry.
    pub refused_unknown_tenant: u64,
}

impl ImportReport {
    pub fn refused(&self) -> u64 {
        self.refused_locked + self.refused_invalid_sender + self.refused_unknown_tenant
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "added {}, kept {}, refused {} ({} already locked to another tenant, {} invalid sender, {} unknown tenant)",
            self.added,
            self.kept,
            self.refused(),
            self.refused_locked,
            self.refused_invalid_sender,
            self.refused_unknown_tenant
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("reading the mapping file: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing: {0}")]
    Io(#[from] io::Error),
}

/// Entries locked per transaction: large enough that the per-transaction cost
/// vanishes, small enough to keep the transaction's memory bounded.
const IMPORT_CHUNK: usize = 4096;

/// Imports a mapping file into the store. Existing locks win (first lock wins,
/// as for first contacts); entries go in by chunks of [`IMPORT_CHUNK`], each one
/// transaction that also keeps the per-tenant counters; the store is flushed
/// before returning.
pub fn import(reader: impl BufRead, store: &Store, registry: &Registry) -> Result<ImportReport, MappingError> {
    let mut report = ImportReport::default();
    let mut failure: Option<StoreError> = None;
    let mut chunk: Vec<(SenderKey, TenantId)> = Vec::with_capacity(IMPORT_CHUNK);
    let flush_chunk = |chunk: &mut Vec<(SenderKey, TenantId)>, report: &mut ImportReport| -> Result<(), StoreError> {
        for ((_, asked), got) in chunk.iter().zip(store.import_locks(chunk)?) {
            match (got.created, got.tenant == *asked) {
                (true, _) => report.added += 1,
                (false, true) => report.kept += 1,
                (false, false) => report.refused_locked += 1,
            }
        }
        chunk.clear();
        Ok(())
    };
    let mut apply = |key: &str, tenant: Option<u64>| {
        if failure.is_some() {
            return;
        }
        let Some(sender) = parse_user_input(key) else {
            report.refused_invalid_sender += 1;
            return;
        };
        let Some(tenant) = tenant.and_then(|t| TenantId::try_from(t).ok()).filter(|t| registry.contains(*t)) else {
            report.refused_unknown_tenant += 1;
            return;
        };
        chunk.push((sender, tenant));
        if chunk.len() == IMPORT_CHUNK {
            if let Err(e) = flush_chunk(&mut chunk, &mut report) {
                failure = Some(e);
            }
        }
    };
    parse_entries(reader, &mut apply)?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    flush_chunk(&mut chunk, &mut report)?;
    store.flush()?;
    tracing::info!(%report, "mapping imported");
    Ok(report)
}

/// Streams the entries of a mapping file to `apply` as (key, tenant if the
/// value is a non-negative integer or a string of one). Separate from [`import`]
/// so the parser can be fuzzed without a store.
pub fn parse_entries(reader: impl io::Read, mut apply: impl FnMut(&str, Option<u64>)) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    EntrySeed { apply: &mut apply }.deserialize(&mut de)?;
    de.end()
}

/// Writes every lock as a JSON object, one entry per line. Returns the count.
pub fn export(store: &Store, mut out: impl Write) -> Result<u64, MappingError> {
    let mut count = 0u64;
    out.write_all(b"{")?;
    for item in store.locks() {
        let (key, tenant): (SenderKey, TenantId) = item?;
        let sep = if count == 0 { "\n" } else { ",\n" };
        write!(out, "{sep}  \"{key}\": {tenant}")?;
        count += 1;
    }
    out.write_all(if count == 0 { b"}\n" } else { b"\n}\n" })?;
    out.flush()?;
    Ok(count)
}

/// Visits a JSON object entry by entry without building it in memory.
struct EntrySeed<'a, F> {
    apply: &'a mut F,
}

impl<'de, F: FnMut(&str, Option<u64>)> DeserializeSeed<'de> for EntrySeed<'_, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, F: FnMut(&str, Option<u64>)> Visitor<'de> for EntrySeed<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a JSON object of "phone": tenant_id"#)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value: serde_json::Value = map.next_value()?;
            let tenant = value.as_u64().or_else(|| value.as_str().and_then(|s| s.parse().ok()));
            (self.apply)(&key, tenant);
        }
        Ok(())
    }
}
