//! The simulator's event queue: earliest time first, and events with equal times in the order
//! they were scheduled.
//!
//! The binary heap holds only `(time, sequence number, slot)`, and the events themselves sit in
//! a slab of reused slots. An event that carries a message is several times larger than such
//! an entry, so the heap moves less memory on every push and pop. The order of events depends
//! only on the time and the sequence number, never on which slot an event occupies.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One heap entry: when, the scheduling order, and where the event is stored.
struct Entry {
    at: u64,
    sequence: u64,
    slot: u32,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap pops the earliest event first.
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// Events ordered by `(time, sequence number)`. Callers give every event a distinct sequence
/// number, so the order is total.
pub struct EventQueue<T> {
    heap: BinaryHeap<Entry>,
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> EventQueue<T> {
    /// Creates an empty queue.
    pub fn new() -> EventQueue<T> {
        EventQueue {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Adds `event` at time `at` with the scheduling order `sequence`.
    pub fn push(&mut self, at: u64, sequence: u64, event: T) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(event);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len())
                    .expect("fewer than 2^32 events are pending at once");
                self.slots.push(Some(event));
                slot
            }
        };
        self.heap.push(Entry { at, sequence, slot });
    }

    /// Removes and returns the earliest event as `(time, sequence number, event)`.
    pub fn pop(&mut self) -> Option<(u64, u64, T)> {
        let entry = self.heap.pop()?;
        let event = self.slots[entry.slot as usize]
            .take()
            .expect("every heap entry points at a filled slot");
        self.free.push(entry.slot);
        Some((entry.at, entry.sequence, event))
    }
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        EventQueue::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_by_time_then_sequence() {
        let mut queue = EventQueue::new();
        queue.push(20, 1, "late");
        queue.push(10, 3, "second");
        queue.push(10, 2, "first");
        assert_eq!(queue.pop(), Some((10, 2, "first")));

        // A slot freed by the pop is reused, and the order still follows time and sequence.
        queue.push(5, 4, "earliest");
        assert_eq!(queue.pop(), Some((5, 4, "earliest")));
        assert_eq!(queue.pop(), Some((10, 3, "second")));
        assert_eq!(queue.pop(), Some((20, 1, "late")));
        assert_eq!(queue.pop(), None);
    }
}
