//! A bounded window of recently seen event ids (FIFO eviction). Terminals resend after
//! reconnects, brokers redeliver unacknowledged QoS 1 messages and edges re-produce after a
//! crash; all arrive with the original `event_id` and the original bytes. Used by the edge and
//! by cloud ingest.
//!
//! Each id is kept with a fingerprint of the bytes it first arrived with, so the same
//! `event_id` arriving with *different* content (a buggy or malicious sender) is told apart
//! from a resend instead of being silently dropped as a duplicate.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use hashbrown::{DefaultHashBuilder, HashTable};

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

/// A fingerprint of an event's wire bytes (foldhash, seeded once per process). The window lives
/// in memory and is refilled from the bytes in the log at start, so fingerprints only need to
/// agree within one process; a per-process seed also keeps a sender from crafting two payloads
/// with one fingerprint ahead of time. Never [`UNKNOWN_CONTENT`].
pub fn fingerprint(payload: &[u8]) -> u64 {
    // SipHash, which this replaced, was ~1.5% of the edge's CPU at full load (`perf`): it hashes
    // every accepted event's whole payload.
    static SEED: LazyLock<DefaultHashBuilder> = LazyLock::new(DefaultHashBuilder::default);
    SEED.hash_one(payload) | 1
}

/// The fingerprint of an id known to be stored without its original bytes (the cloud reads ids
/// back from Parquet after a crash): a later copy is taken as a duplicate whatever its bytes.
pub const UNKNOWN_CONTENT: u64 = 0;

/// One remembered event. The id is held as two `u64`s rather than a `u128` so a slot is 24 bytes
/// with 8-byte alignment, not 32 with 16.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: [u64; 2],
    fingerprint: u64,
}

/// The most recent `capacity` event ids, oldest forgotten first.
///
/// Laid out for memory: the ids live once, in a ring of 24-byte slots in arrival order, and the
/// hash index holds only 4-byte slot numbers. A million-entry window is about 34 MB (24 MB of
/// ring, 10 MB of index) where a `HashMap<u128, u64>` beside a `VecDeque<u128>` took about 85 MB;
/// the index is allocated up front so it never rehashes on the hot path, and the ring's pages
/// are touched only as they fill. The index is seeded per process (foldhash), so a sender that
/// picks its own event ids cannot aim them at one bucket.
#[derive(Debug)]
pub struct DedupWindow {
    /// Slot numbers into `ring`, hashed by the slot's id.
    index: HashTable<u32>,
    /// Grows to `capacity`, then each new id overwrites the oldest, at `oldest`.
    ring: Vec<Slot>,
    oldest: usize,
    capacity: usize,
    hasher: DefaultHashBuilder,
}

impl DedupWindow {
    /// A window remembering the last `capacity` ids (at least one, at most `u32::MAX`).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        Self {
            index: HashTable::with_capacity(capacity),
            ring: Vec::with_capacity(capacity),
            oldest: 0,
            capacity,
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Looks `id` up and records it with `fingerprint` when it is new.
    pub fn observe(&mut self, id: u128, fingerprint: u64) -> Seen {
        let id = [id as u64, (id >> 64) as u64];
        let hash = self.hasher.hash_one(id);
        let ring = &self.ring;
        if let Some(&slot) = self.index.find(hash, |&s| ring[s as usize].id == id) {
            let seen = ring[slot as usize].fingerprint;
            return if seen == fingerprint || seen == UNKNOWN_CONTENT { Seen::Duplicate } else { Seen::Conflict };
        }
        let slot = Slot { id, fingerprint };
        let at = if self.ring.len() < self.capacity {
            self.ring.push(slot);
            self.ring.len() - 1
        } else {
            let at = self.oldest;
            let evicted = self.hasher.hash_one(self.ring[at].id);
            if let Ok(entry) = self.index.find_entry(evicted, |&s| s as usize == at) {
                entry.remove();
            }
            self.ring[at] = slot;
            self.oldest = (at + 1) % self.capacity;
            at
        };
        let (ring, hasher) = (&self.ring, &self.hasher);
        self.index.insert_unique(hash, at as u32, |&s| hasher.hash_one(ring[s as usize].id));
        Seen::New
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Bytes the window has allocated (index and ring): what the edge budgets for it.
    pub fn allocated_bytes(&self) -> usize {
        self.index.allocation_size() + self.ring.capacity() * size_of::<Slot>()
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

    #[test]
    fn a_million_entry_window_stays_under_40_mb() {
        let mut w = DedupWindow::new(1_000_000);
        for id in 0..1_200_000u128 {
            w.observe(id << 64 | id, 1);
        }
        assert_eq!(w.len(), 1_000_000);
        let bytes = w.allocated_bytes();
        assert!(bytes < 40 << 20, "a full million-entry window holds {bytes} bytes");
    }

    /// The window against the obvious model (a set and a FIFO queue), over many wraps of the
    /// ring and with ids drawn from a small range so that repeats, conflicts and re-admission
    /// after eviction all happen.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{HashMap, VecDeque};

        proptest! {
            #[test]
            fn behaves_like_a_fifo_map(
                capacity in 1usize..12,
                events in proptest::collection::vec((0u128..24, 1u64..3), 0..400),
            ) {
                let mut window = DedupWindow::new(capacity);
                let (mut seen, mut order) = (HashMap::new(), VecDeque::new());
                for (id, fp) in events {
                    let id = id.rotate_left(67); // both halves of the key matter
                    let expected = match seen.get(&id) {
                        Some(&f) if f == fp => Seen::Duplicate,
                        Some(_) => Seen::Conflict,
                        None => {
                            seen.insert(id, fp);
                            order.push_back(id);
                            if order.len() > capacity {
                                seen.remove(&order.pop_front().unwrap());
                            }
                            Seen::New
                        }
                    };
                    prop_assert_eq!(window.observe(id, fp), expected);
                    prop_assert_eq!(window.len(), order.len());
                }
            }
        }
    }
}
