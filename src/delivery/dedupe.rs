//! Duplicate detection for the same WhatsApp message arriving twice (WAHA
//! retries, `message` + `message.any`, the GOWS `@lid`/`@c.us` double).
//!
//! In memory: two generations of keys, each covering half the window; a lookup
//! probes both, and the older one is dropped when the newer one is half a window
//! old or half the entry cap full. Memory is therefore bounded by
//! `max_entries`; under more traffic than that the effective window shrinks
//! (tenants still have `webhook-id` for their own dedupe). Accepted keys are also
//! collected for sled ([`Dedupe::take_unsaved`]), written in batches off the
//! request path and at shutdown, so a clean restart reloads them.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;

/// 16 bytes of SHA-256 over the message identity (see `route::message_identity`).
pub type MessageKey = [u8; 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Being delivered right now by another request.
    InFlight,
    /// Accepted (forwarded or parked) at this time, in ms since the epoch.
    Done(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    New,
    Duplicate,
    InFlight,
}

pub struct Dedupe {
    window_ms: u64,
    max_entries: usize,
    generations: RwLock<Generations>,
    /// Accepted keys not yet written to sled: (accepted at ms, key).
    unsaved: Mutex<Vec<(u64, MessageKey)>>,
}

struct Generations {
    current: DashMap<MessageKey, Seen>,
    previous: DashMap<MessageKey, Seen>,
    current_since_ms: u64,
}

impl Dedupe {
    pub fn new(window: Duration, max_entries: usize, now_ms: u64) -> Dedupe {
        Dedupe {
            window_ms: window.as_millis() as u64,
            max_entries: max_entries.max(2),
            generations: RwLock::new(Generations {
                current: DashMap::new(),
                previous: DashMap::new(),
                current_since_ms: now_ms,
            }),
            unsaved: Mutex::new(Vec::new()),
        }
    }

    /// Claims `key` for delivery unless it was seen within the window or is in flight.
    pub fn begin(&self, key: MessageKey, now_ms: u64) -> Begin {
        self.rotate_if_due(now_ms);
        let g = self.generations.read().expect("dedupe lock poisoned");
        for map in [&g.current, &g.previous] {
            match map.get(&key).map(|s| *s) {
                Some(Seen::InFlight) => return Begin::InFlight,
                Some(Seen::Done(at)) if now_ms.saturating_sub(at) < self.window_ms => return Begin::Duplicate,
                _ => {}
            }
        }
        let claimed = match g.current.entry(key) {
            dashmap::Entry::Occupied(e) if *e.get() == Seen::InFlight => Begin::InFlight,
            dashmap::Entry::Occupied(mut e) => {
                e.insert(Seen::InFlight);
                Begin::New
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(Seen::InFlight);
                Begin::New
            }
        };
        claimed
    }

    /// The message was accepted: later copies are duplicates.
    pub fn commit(&self, key: MessageKey, now_ms: u64) {
        {
            let g = self.generations.read().expect("dedupe lock poisoned");
            g.previous.remove(&key);
            g.current.insert(key, Seen::Done(now_ms));
        }
        self.unsaved.lock().expect("dedupe lock poisoned").push((now_ms, key));
    }

    /// Gives back keys that could not be written, to be tried again.
    pub fn put_back(&self, keys: Vec<(u64, MessageKey)>) {
        self.unsaved.lock().expect("dedupe lock poisoned").extend(keys);
    }

    /// Keys accepted since the last call, for the caller to write to sled.
    pub fn take_unsaved(&self) -> Vec<(u64, MessageKey)> {
        std::mem::take(&mut *self.unsaved.lock().expect("dedupe lock poisoned"))
    }

    /// The message was not accepted (e.g. parking failed): a retry may try again.
    pub fn abort(&self, key: MessageKey) {
        let g = self.generations.read().expect("dedupe lock poisoned");
        g.current.remove_if(&key, |_, s| *s == Seen::InFlight);
        g.previous.remove_if(&key, |_, s| *s == Seen::InFlight);
    }

    /// Loads a key accepted before a restart.
    pub fn restore(&self, key: MessageKey, at_ms: u64, now_ms: u64) {
        if now_ms.saturating_sub(at_ms) < self.window_ms {
            self.rotate_if_due(now_ms);
            let g = self.generations.read().expect("dedupe lock poisoned");
            g.current.insert(key, Seen::Done(at_ms));
        }
    }

    pub fn len(&self) -> usize {
        let g = self.generations.read().expect("dedupe lock poisoned");
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rotate_if_due(&self, now_ms: u64) {
        let due = |g: &Generations| {
            now_ms.saturating_sub(g.current_since_ms) >= self.window_ms / 2 || g.current.len() >= self.max_entries / 2
        };
        if !due(&self.generations.read().expect("dedupe lock poisoned")) {
            return;
        }
        let mut g = self.generations.write().expect("dedupe lock poisoned");
        if due(&g) {
            // In-flight keys of the dropped generation must stay visible.
            let in_flight: Vec<MessageKey> =
                g.previous.iter().filter(|e| *e.value() == Seen::InFlight).map(|e| *e.key()).collect();
            let current = std::mem::take(&mut g.current);
            g.previous = current;
            for key in in_flight {
                g.previous.insert(key, Seen::InFlight);
            }
            g.current_since_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn duplicates_within_the_window() {
        let d = Dedupe::new(Duration::from_millis(24 * HOUR), 1000, 0);
        assert_eq!(d.begin([1; 16], 0), Begin::New);
        assert_eq!(d.begin([1; 16], 1), Begin::InFlight);
        d.commit([1; 16], 2);
        assert_eq!(d.begin([1; 16], 3), Begin::Duplicate);
        assert_eq!(d.begin([1; 16], 23 * HOUR), Begin::Duplicate);
        assert_eq!(d.begin([1; 16], 25 * HOUR), Begin::New, "outside the window");
    }

    #[test]
    fn accepted_keys_are_handed_out_once_for_saving() {
        let d = Dedupe::new(Duration::from_millis(HOUR), 1000, 0);
        assert_eq!(d.begin([5; 16], 1), Begin::New);
        d.commit([5; 16], 2);
        assert_eq!(d.begin([6; 16], 3), Begin::New);
        d.abort([6; 16]);
        assert_eq!(d.take_unsaved(), vec![(2, [5; 16])]);
        assert_eq!(d.take_unsaved(), vec![]);
    }

    #[test]
    fn abort_lets_a_retry_through() {
        let d = Dedupe::new(Duration::from_millis(HOUR), 1000, 0);
        assert_eq!(d.begin([2; 16], 0), Begin::New);
        d.abort([2; 16]);
        assert_eq!(d.begin([2; 16], 1), Begin::New);
    }

    #[test]
    fn memory_is_bounded() {
        let d = Dedupe::new(Duration::from_millis(HOUR), 100, 0);
        for i in 0..10_000u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_be_bytes());
            assert_eq!(d.begin(key, 1), Begin::New);
            d.commit(key, 1);
        }
        assert!(d.len() <= 100, "{}", d.len());
        // The most recent keys are still known.
        let mut last = [0u8; 16];
        last[..4].copy_from_slice(&9_999u32.to_be_bytes());
        assert_eq!(d.begin(last, 2), Begin::Duplicate);
    }

    #[test]
    fn restore_respects_the_window() {
        let d = Dedupe::new(Duration::from_millis(HOUR), 100, 10 * HOUR);
        d.restore([3; 16], 10 * HOUR - 10, 10 * HOUR);
        d.restore([4; 16], 8 * HOUR, 10 * HOUR);
        assert_eq!(d.begin([3; 16], 10 * HOUR), Begin::Duplicate);
        assert_eq!(d.begin([4; 16], 10 * HOUR), Begin::New);
    }
}
