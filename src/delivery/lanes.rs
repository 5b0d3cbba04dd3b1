//! Per-sender lanes: the order in which a sender's messages may be delivered.
//!
//! A lane holds a sender's pending messages in arrival order; only its head is
//! ever in flight (inline in a webhook request, or sent by the scheduler). A
//! lane exists while it has slots and is dropped when empty, so memory follows
//! the number of senders with something pending, not the number of senders.

use std::cmp::Reverse;
use std::collections::VecDeque;

use super::{now_ms, Delivery};
use crate::store::StoreError;

pub(super) struct Lane {
    pub(super) slots: VecDeque<Slot>,
    /// When the scheduler should look at the head; matches a `timers` entry.
    pub(super) due_ms: Option<u64>,
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
    pub(super) fn reserve(&self, lane_key: u64) -> Result<(u64, bool), StoreError> {
        let mut lane = self.lanes.entry(lane_key).or_insert_with(|| Lane { slots: VecDeque::new(), due_ms: None });
        let seq = self.store.next_seq()?;
        let head = lane.slots.is_empty();
        lane.slots.push_back(Slot { seq, state: SlotState::Inline });
        Ok((seq, head))
    }

    /// Marks a slot parked; if it is (by now) the head of its lane, schedules
    /// the lane at `due_ms`. The head may have finished while this message was
    /// being written, so "head" is decided here, under the lane's lock.
    pub(super) fn park_slot(&self, lane_key: u64, seq: u64, due_ms: u64) {
        let is_head = {
            let Some(mut lane) = self.lanes.get_mut(&lane_key) else { return };
            if let Some(slot) = lane.slots.iter_mut().find(|s| s.seq == seq) {
                slot.state = SlotState::Parked;
            }
            lane.slots.front().is_some_and(|s| s.seq == seq)
        };
        if is_head {
            self.schedule(lane_key, due_ms);
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
        }
    }

    /// The head is done (delivered, dead, or cancelled): the next message of the
    /// sender, if parked, is due now.
    pub(super) fn finish_head(&self, lane_key: u64, seq: u64) {
        let next = {
            let Some(mut lane) = self.lanes.get_mut(&lane_key) else { return };
            lane.slots.retain(|s| s.seq != seq);
            lane.due_ms = None;
            lane.slots.front().copied()
        };
        match next {
            None => {
                self.lanes.remove_if(&lane_key, |_, lane| lane.slots.is_empty());
            }
            Some(slot) if slot.state == SlotState::Parked => self.schedule(lane_key, now_ms()),
            // An inline slot behind us is parked by its own request.
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
