//! The delivery queue on disk: parked messages (`outbox`), dead letters
//! (`dead`), and accepted message keys for dedupe (`dedupe`).
//!
//! Records are keyed by a sequence number from sled's `generate_id`, which only
//! grows, so a scan of `outbox` lists messages in arrival order: the order the
//! queue must deliver each sender's messages in.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{corrupt, Store, StoreError};
use crate::route::TenantId;
use crate::sender::SenderKey;

pub(super) const OUTBOX_TREE: &str = "outbox";
pub(super) const DEAD_TREE: &str = "dead";
pub(super) const DEDUPE_TREE: &str = "dedupe";

/// One message to deliver, with its delivery history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub seq: u64,
    pub webhook_id: String,
    pub tenant: TenantId,
    #[serde(with = "sender_text")]
    pub sender: SenderKey,
    pub new_session: bool,
    pub request_id: Option<String>,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    /// The first 1 KB of the tenant's last answer (dead letters).
    pub response_body: Option<String>,
    #[serde(skip)]
    pub body: Bytes,
}

mod sender_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::sender::{parse_user_input, SenderKey};

    pub fn serialize<S: Serializer>(key: &SenderKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SenderKey, D::Error> {
        let text = String::deserialize(d)?;
        parse_user_input(&text).ok_or_else(|| serde::de::Error::custom(format!("bad sender `{text}`")))
    }
}

/// Which list a delivery is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    Parked,
    Dead,
}

impl DeliveryRecord {
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let meta = serde_json::to_vec(self).map_err(|e| corrupt(OUTBOX_TREE, e))?;
        let mut out = Vec::with_capacity(4 + meta.len() + self.body.len());
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    fn decode(tree: &'static str, bytes: &[u8]) -> Result<DeliveryRecord, StoreError> {
        let len = bytes.get(..4).ok_or_else(|| corrupt(tree, "record shorter than its header"))?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let meta = bytes.get(4..4 + len).ok_or_else(|| corrupt(tree, "record shorter than its metadata"))?;
        let mut record: DeliveryRecord = serde_json::from_slice(meta).map_err(|e| corrupt(tree, e))?;
        record.body = Bytes::copy_from_slice(&bytes[4 + len..]);
        Ok(record)
    }
}

fn flatten(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

impl Store {
    /// A new sequence number (from 1), larger than every earlier one, also
    /// across restarts; 0 is free to mean "from the start" in page cursors.
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()? + 1)
    }

    /// Writes (or rewrites) a parked message. Call [`Store::durable`] before acknowledging.
    pub fn park(&self, record: &DeliveryRecord) -> Result<(), StoreError> {
        self.check_writable()?;
        self.outbox.insert(record.seq.to_be_bytes(), record.encode()?)?;
        Ok(())
    }

    /// Removes a delivered message.
    pub fn unpark(&self, seq: u64) -> Result<(), StoreError> {
        self.outbox.remove(seq.to_be_bytes())?;
        Ok(())
    }

    /// Removes a dead letter that was never acknowledged (its flush failed).
    pub fn remove_dead(&self, seq: u64) -> Result<(), StoreError> {
        self.dead.remove(seq.to_be_bytes())?;
        Ok(())
    }

    /// Moves a message to the dead letters (from the outbox if it was parked), atomically.
    pub fn bury(&self, record: &DeliveryRecord) -> Result<(), StoreError> {
        self.check_writable()?;
        let encoded = record.encode()?;
        (&self.outbox, &self.dead)
            .transaction(|(outbox, dead)| {
                outbox.remove(&record.seq.to_be_bytes()[..])?;
                dead.insert(&record.seq.to_be_bytes()[..], encoded.as_slice())?;
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            })
            .map_err(flatten)
    }

    /// Moves a dead letter back to the outbox under a new sequence number (the
    /// end of its sender's queue), with a fresh retry budget.
    pub fn resurrect(&self, seq: u64, new_seq: u64, now_ms: u64) -> Result<Option<DeliveryRecord>, StoreError> {
        (&self.outbox, &self.dead)
            .transaction(|(outbox, dead)| {
                let Some(bytes) = dead.remove(&seq.to_be_bytes()[..])? else {
                    return Ok(None);
                };
                let mut record =
                    DeliveryRecord::decode(DEAD_TREE, &bytes).map_err(ConflictableTransactionError::Abort)?;
                record.seq = new_seq;
                record.attempts = 0;
                record.created_ms = now_ms;
                record.next_attempt_ms = now_ms;
                let encoded = record.encode().map_err(ConflictableTransactionError::Abort)?;
                outbox.insert(&new_seq.to_be_bytes()[..], encoded)?;
                Ok(Some(record))
            })
            .map_err(flatten)
    }

    pub fn delivery(&self, state: DeliveryState, seq: u64) -> Result<Option<DeliveryRecord>, StoreError> {
        let (tree, name) = self.delivery_tree(state);
        tree.get(seq.to_be_bytes())?.map(|v| DeliveryRecord::decode(name, &v)).transpose()
    }

    /// Deliveries in `state` after sequence number `after`, in order.
    pub fn deliveries(
        &self,
        state: DeliveryState,
        after: u64,
    ) -> impl Iterator<Item = Result<DeliveryRecord, StoreError>> + '_ {
        let (tree, name) = self.delivery_tree(state);
        let start = after.saturating_add(1).to_be_bytes();
        tree.range(start..).map(move |item| {
            let (_, v) = item?;
            DeliveryRecord::decode(name, &v)
        })
    }

    pub fn dead_count(&self) -> usize {
        self.dead.len()
    }

    fn delivery_tree(&self, state: DeliveryState) -> (&sled::Tree, &'static str) {
        match state {
            DeliveryState::Parked => (&self.outbox, OUTBOX_TREE),
            DeliveryState::Dead => (&self.dead, DEAD_TREE),
        }
    }

    /// Records accepted message keys as one record: key = the newest
    /// `at_ms` of the batch (big-endian, so records sort by time) plus a
    /// sequence number, value = the keys, 24 bytes each (`at_ms` + key). One
    /// sled write a second instead of one per message.
    pub fn dedupe_mark_all(&self, keys: &[(u64, [u8; 16])]) -> Result<(), StoreError> {
        let Some(newest) = keys.iter().map(|(at, _)| *at).max() else {
            return Ok(());
        };
        self.check_writable()?;
        let mut record_key = [0u8; 16];
        record_key[..8].copy_from_slice(&newest.to_be_bytes());
        record_key[8..].copy_from_slice(&self.next_seq()?.to_be_bytes());
        let mut value = Vec::with_capacity(keys.len() * 24);
        for (at_ms, key) in keys {
            value.extend_from_slice(&at_ms.to_be_bytes());
            value.extend_from_slice(key);
        }
        self.dedupe.insert(record_key, value)?;
        Ok(())
    }

    /// Accepted keys from records written since `since_ms` (a record may also
    /// hold keys up to a second older; callers filter by time).
    pub fn dedupe_since(&self, since_ms: u64) -> impl Iterator<Item = Result<(u64, [u8; 16]), StoreError>> + '_ {
        self.dedupe.range(since_ms.to_be_bytes()..).flat_map(|item| {
            let keys: Vec<Result<(u64, [u8; 16]), StoreError>> = match item {
                Err(e) => vec![Err(e.into())],
                Ok((_, v)) if v.len() % 24 != 0 => vec![Err(corrupt(DEDUPE_TREE, "record is not 24-byte entries"))],
                Ok((_, v)) => v
                    .chunks_exact(24)
                    .map(|c| {
                        let at = u64::from_be_bytes(c[..8].try_into().expect("8 bytes"));
                        Ok((at, c[8..].try_into().expect("16 bytes")))
                    })
                    .collect(),
            };
            keys
        })
    }

    /// Deletes the records written before `before_ms`; returns how many.
    pub fn dedupe_prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.dedupe.range(..before_ms.to_be_bytes()) {
            let (k, _) = item?;
            self.dedupe.remove(k)?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> DeliveryRecord {
        DeliveryRecord {
            seq,
            webhook_id: format!("msg_{seq}"),
            tenant: 2,
            sender: SenderKey::Lid(42),
            new_session: false,
            request_id: Some("r".into()),
            created_ms: 1,
            attempts: 1,
            next_attempt_ms: 5,
            last_error: Some("boom".into()),
            last_status: Some(503),
            response_body: None,
            body: Bytes::from_static(b"{\"event\":\"message\"}"),
        }
    }

    #[test]
    fn park_bury_resurrect() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (store.next_seq().unwrap(), store.next_seq().unwrap());
        assert!(b > a);
        store.park(&record(a)).unwrap();
        store.park(&record(b)).unwrap();
        let parked: Vec<_> = store.deliveries(DeliveryState::Parked, 0).map(|r| r.unwrap().seq).collect();
        assert_eq!(parked, vec![a, b]);
        assert_eq!(store.delivery(DeliveryState::Parked, a).unwrap(), Some(record(a)));
        store.bury(&record(a)).unwrap();
        assert_eq!(store.delivery(DeliveryState::Parked, a).unwrap(), None);
        assert_eq!(store.dead_count(), 1);
        let c = store.next_seq().unwrap();
        let back = store.resurrect(a, c, 99).unwrap().unwrap();
        assert_eq!((back.seq, back.attempts, back.body.clone()), (c, 0, record(a).body));
        assert_eq!(store.resurrect(a, c, 99).unwrap(), None, "only once");
        assert_eq!(store.dead_count(), 0);
        store.unpark(b).unwrap();
        let parked: Vec<_> = store.deliveries(DeliveryState::Parked, 0).map(|r| r.unwrap().seq).collect();
        assert_eq!(parked, vec![c]);
    }

    #[test]
    fn dedupe_keys_prune_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.dedupe_mark_all(&[(10, [1; 16]), (12, [3; 16])]).unwrap();
        store.dedupe_mark_all(&[(20, [2; 16])]).unwrap();
        store.dedupe_mark_all(&[]).unwrap();
        let all: Vec<_> = store.dedupe_since(0).map(|r| r.unwrap()).collect();
        assert_eq!(all, vec![(10, [1; 16]), (12, [3; 16]), (20, [2; 16])]);
        assert_eq!(store.dedupe_prune(15).unwrap(), 1, "the first record, newest key at 12");
        let left: Vec<_> = store.dedupe_since(0).map(|r| r.unwrap()).collect();
        assert_eq!(left, vec![(20, [2; 16])]);
    }
}
