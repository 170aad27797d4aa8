//! A bounded window of recently seen event ids (FIFO eviction). Terminals resend after
//! reconnects, brokers redeliver unacknowledged QoS 1 messages and edges re-produce after a
//! crash; all arrive with the original `event_id`. Used by the edge and by cloud ingest.

use std::collections::{HashSet, VecDeque};

/// Event ids are UUIDs held as `u128`: a million-entry window stays near 40 MB.
type Id = u128;

#[derive(Debug)]
pub struct DedupWindow {
    seen: HashSet<Id>,
    order: VecDeque<Id>,
    capacity: usize,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> Self {
        Self { seen: HashSet::with_capacity(capacity.min(1 << 20)), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records `id`; returns false when it was already in the window (a duplicate).
    pub fn insert(&mut self, id: u128) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_duplicates_and_forgets_the_oldest_beyond_capacity() {
        let mut w = DedupWindow::new(2);
        assert!(w.insert(1));
        assert!(!w.insert(1));
        assert!(w.insert(2));
        assert!(w.insert(3)); // evicts 1
        assert_eq!(w.len(), 2);
        assert!(w.insert(1));
        assert!(!w.insert(3));
    }
}
