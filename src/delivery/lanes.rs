//! Per-sender lanes: the order in which a sender's messages may be delivered.
//!
//! A lane holds a sender's pending messages in arrival order; only its head is
//! ever in flight (inline in a webhook request, or sent by the scheduler). A
//! lane exists while it has slots and is dropped when empty, so memory follows
//! the number of senders with something pending, not the number of senders.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use super::{now_ms, Delivery};
use crate::store::StoreError;

pub(super) struct Lane {
    pub(super) slots: VecDeque<Slot>,
    /// When the scheduler should look at the head; matches a `timers` entry.
    pub(super) due_ms: Option<u64>,
    /// Woken whenever a slot of the lane changes, for requests waiting their turn.
    pub(super) turn: Arc<Notify>,
}

impl Lane {
    pub(super) fn new() -> Lane {
        Lane { slots: VecDeque::new(), due_ms: None, turn: Arc::new(Notify::new()) }
    }
}

/// Where a message stands in its sender's lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    Head,
    /// Only messages being delivered inline are ahead: wait for them.
    Behind,
    /// A parked (or queue-sent) message is ahead: park behind it.
    Blocked,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Slot {
    pub(super) seq: u64,
    pub(super) state: SlotState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SlotState {
    /// Being forwarded inside a webhook request; not in the outbox.
    Inline,
    /// In the outbox, waiting for the scheduler.
    Parked,
    /// In the outbox, being forwarded by the scheduler.
    Sending,
}

impl Delivery {
    /// Appends a slot for a new message to its sender's lane. Returns its
    /// sequence number and whether it is the head (nothing earlier pending).
    /// The number is drawn under the lane's lock, so lane order and sequence
    /// order agree, and a restart rebuilds the same order from the outbox.
    pub(super) fn reserve(&self, lane_key: u64) -> Result<(u64, bool, Arc<Notify>), StoreError> {
        let mut lane = self.lanes.entry(lane_key).or_insert_with(Lane::new);
        let seq = self.store.next_seq()?;
        let head = lane.slots.is_empty();
        lane.slots.push_back(Slot { seq, state: SlotState::Inline });
        Ok((seq, head, Arc::clone(&lane.turn)))
    }

    /// A message behind others of its sender that are being delivered inline
    /// waits for them, so a burst from one sender to a healthy tenant goes
    /// inline, in order, instead of through the outbox. Returns true once the
    /// message is the head; false when something ahead was parked, or the wait
    /// passed `inline_timeout`: then it parks behind.
    pub(super) async fn wait_for_turn(&self, lane_key: u64, seq: u64, turn: &Notify) -> bool {
        let deadline = Instant::now() + self.inline_timeout;
        loop {
            // Registered before looking, so a change in between is not missed.
            let notified = turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.position(lane_key, seq) {
                Position::Head => return true,
                Position::Blocked => return false,
                Position::Behind => {}
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                return false;
            }
        }
    }

    fn position(&self, lane_key: u64, seq: u64) -> Position {
        let Some(lane) = self.lanes.get(&lane_key) else { return Position::Blocked };
        let mut ahead = lane.slots.iter().take_while(|s| s.seq != seq).peekable();
        if ahead.peek().is_none() {
            return Position::Head;
        }
        if ahead.all(|s| s.state == SlotState::Inline) {
            Position::Behind
        } else {
            Position::Blocked
        }
    }

    /// Marks a slot parked; if it is (by now) the head of its lane, schedules
    /// the lane at `due_ms`. The head may have finished while this message was
    /// being written, so "head" is decided here, under the lane's lock.
    pub(super) fn park_slot(&self, lane_key: u64, seq: u64, due_ms: Option<u64>) {
        let is_head = {
            let Some(mut lane) = self.lanes.get_mut(&lane_key) else { return };
            if let Some(slot) = lane.slots.iter_mut().find(|s| s.seq == seq) {
                slot.state = SlotState::Parked;
            }
            lane.turn.notify_waiters();
            lane.slots.front().is_some_and(|s| s.seq == seq)
        };
        if let (true, Some(due)) = (is_head, due_ms) {
            self.schedule(lane_key, due);
        }
    }

    pub(super) fn set_slot(&self, lane_key: u64, seq: u64, state: SlotState) {
        if let Some(mut lane) = self.lanes.get_mut(&lane_key) {
            if let Some(slot) = lane.slots.iter_mut().find(|s| s.seq == seq) {
                slot.state = state;
            }
        }
    }

    /// Drops a slot that never made it to the outbox.
    pub(super) fn cancel(&self, lane_key: u64, seq: u64) {
        let was_head = self.lanes.get(&lane_key).is_some_and(|l| l.slots.front().is_some_and(|s| s.seq == seq));
        if was_head {
            self.finish_head(lane_key, seq);
        } else if let Some(mut lane) = self.lanes.get_mut(&lane_key) {
            lane.slots.retain(|s| s.seq != seq);
            lane.turn.notify_waiters();
        }
    }

    /// The head is done (delivered, dead, or cancelled): the next message of the
    /// sender, if parked, is due now.
    pub(super) fn finish_head(&self, lane_key: u64, seq: u64) {
        let next = {
            let Some(mut lane) = self.lanes.get_mut(&lane_key) else { return };
            lane.slots.retain(|s| s.seq != seq);
            lane.due_ms = None;
            lane.turn.notify_waiters();
            lane.slots.front().copied()
        };
        match next {
            None => {
                self.lanes.remove_if(&lane_key, |_, lane| lane.slots.is_empty());
            }
            Some(slot) if slot.state == SlotState::Parked => self.schedule(lane_key, now_ms()),
            // An inline slot behind us goes on (or parks) in its own request.
            Some(_) => {}
        }
    }

    pub(super) fn schedule(&self, lane_key: u64, due_ms: u64) {
        if let Some(mut lane) = self.lanes.get_mut(&lane_key) {
            lane.due_ms = Some(due_ms);
        } else {
            return;
        }
        self.timers.lock().expect("timer lock poisoned").push(Reverse((due_ms, lane_key)));
        self.wake.notify_one();
    }
}
