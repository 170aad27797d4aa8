//! A bounded window of recently seen event ids (FIFO eviction). Terminals resend after
//! reconnects, brokers redeliver unacknowledged QoS 1 messages and edges re-produce after a
//! crash; all arrive with the original `event_id` and the original bytes. Used by the edge and
//! by cloud ingest.
//!
//! Each id is kept with a fingerprint of the bytes it first arrived with, so the same
//! `event_id` arriving with *different* content (a buggy or malicious sender) is told apart
//! from a resend instead of being silently dropped as a duplicate.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// Event ids are UUIDs held as `u128`: a million-entry window stays near 50 MB.
type Id = u128;

/// What the window says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not in the window: recorded now.
    New,
    /// In the window with the same content: a resend or redelivery.
    Duplicate,
    /// In the window with different content: not a resend. The first version is kept.
    Conflict,
}

/// A fingerprint of an event's wire bytes (SipHash with fixed keys). The window lives in memory
/// and is refilled from the bytes in the log at start, so fingerprints only need to agree
/// within one process. Never [`UNKNOWN_CONTENT`].
pub fn fingerprint(payload: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(payload) | 1
}

/// The fingerprint of an id known to be stored without its original bytes (the cloud reads ids
/// back from Parquet after a crash): a later copy is taken as a duplicate whatever its bytes.
pub const UNKNOWN_CONTENT: u64 = 0;

#[derive(Debug)]
pub struct DedupWindow {
    seen: HashMap<Id, u64>,
    order: VecDeque<Id>,
    capacity: usize,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> Self {
        Self { seen: HashMap::with_capacity(capacity.min(1 << 20)), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Looks `id` up and records it with `fingerprint` when it is new.
    pub fn observe(&mut self, id: u128, fingerprint: u64) -> Seen {
        match self.seen.get(&id) {
            Some(&f) if f == fingerprint || f == UNKNOWN_CONTENT => return Seen::Duplicate,
            Some(_) => return Seen::Conflict,
            None => {}
        }
        self.seen.insert(id, fingerprint);
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        Seen::New
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
        assert_eq!(w.observe(1, 10), Seen::New);
        assert_eq!(w.observe(1, 10), Seen::Duplicate);
        assert_eq!(w.observe(2, 20), Seen::New);
        assert_eq!(w.observe(3, 30), Seen::New); // evicts 1
        assert_eq!(w.len(), 2);
        assert_eq!(w.observe(1, 10), Seen::New);
        assert_eq!(w.observe(3, 30), Seen::Duplicate);
    }

    #[test]
    fn same_id_with_other_content_is_a_conflict_and_the_first_version_stays() {
        let mut w = DedupWindow::new(8);
        let (a, b) = (fingerprint(br#"{"rating":4}"#), fingerprint(br#"{"rating":1}"#));
        assert_ne!(a, b);
        assert_eq!(w.observe(7, a), Seen::New);
        assert_eq!(w.observe(7, b), Seen::Conflict);
        assert_eq!(w.observe(7, a), Seen::Duplicate, "the first version is the one remembered");
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn an_id_stored_without_its_bytes_takes_any_later_copy_as_a_duplicate() {
        let mut w = DedupWindow::new(8);
        assert_eq!(w.observe(9, UNKNOWN_CONTENT), Seen::New);
        assert_eq!(w.observe(9, fingerprint(b"whatever it was")), Seen::Duplicate);
        assert_ne!(fingerprint(b""), UNKNOWN_CONTENT);
    }
}
