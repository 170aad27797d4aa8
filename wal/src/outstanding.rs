//! Which of a run of sequence numbers are not yet confirmed, when confirmations arrive out of
//! order: the WAL's unconfirmed records, the edge shipper's records in flight to Kafka.
//!
//! Sequence numbers are added in increasing order and confirmed in any order; what is asked is
//! the lowest one still outstanding. A `BTreeSet<u64>` answers that with a tree node per
//! number and a search per insert and remove, which showed at 3-4% of the edge's CPU; this is a
//! flag per number in a ring that starts at the lowest outstanding one, O(1) per operation.

use std::collections::VecDeque;

#[derive(Debug, Default, Clone)]
pub struct Outstanding {
    /// The sequence number of `pending[0]`.
    base: u64,
    /// `true`: outstanding. The front is always `true` (confirmed ones are popped).
    pending: VecDeque<bool>,
    count: usize,
}

impl Outstanding {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `seq`, which must be above every number added since the set was last empty;
    /// numbers skipped between are not outstanding.
    pub fn insert(&mut self, seq: u64) {
        if self.pending.is_empty() {
            self.base = seq;
        }
        let at = seq.checked_sub(self.base).expect("sequence numbers are added in increasing order") as usize;
        assert!(at >= self.pending.len(), "sequence number {seq} added twice or out of order");
        self.pending.resize(at, false);
        self.pending.push_back(true);
        self.count += 1;
    }

    /// Confirms `seq`; returns whether it was outstanding.
    pub fn remove(&mut self, seq: u64) -> bool {
        let Some(at) = seq.checked_sub(self.base) else { return false };
        match self.pending.get_mut(at as usize) {
            Some(flag) if *flag => *flag = false,
            _ => return false,
        }
        self.count -= 1;
        while self.pending.front() == Some(&false) {
            self.pending.pop_front();
            self.base += 1;
        }
        true
    }

    /// The lowest outstanding sequence number.
    pub fn first(&self) -> Option<u64> {
        (!self.pending.is_empty()).then_some(self.base)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn clear(&mut self) {
        self.pending.clear();
        self.count = 0;
    }
}

impl FromIterator<u64> for Outstanding {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut set = Outstanding::new();
        for seq in iter {
            set.insert(seq);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The same answers as a `BTreeSet` for any interleaving of increasing inserts (with
        /// gaps) and removals (including of numbers never added or already removed).
        #[test]
        fn behaves_like_a_btree_set(ops in proptest::collection::vec((any::<bool>(), 0u64..4, 0usize..64), 0..300)) {
            let (mut set, mut model, mut next) = (Outstanding::new(), BTreeSet::new(), 1000u64);
            for (insert, gap, pick) in ops {
                if insert {
                    next += gap;
                    set.insert(next);
                    model.insert(next);
                    next += 1;
                } else {
                    let seq = model.iter().nth(pick % (model.len() + 1)).copied().unwrap_or(next + pick as u64);
                    prop_assert_eq!(set.remove(seq), model.remove(&seq));
                    prop_assert!(!set.remove(seq));
                }
                prop_assert_eq!(set.first(), model.first().copied());
                prop_assert_eq!(set.len(), model.len());
            }
            set.clear();
            prop_assert_eq!(set.first(), None);
            set.insert(3); // after a clear it starts again anywhere
            prop_assert_eq!(set.first(), Some(3));
        }
    }
}
