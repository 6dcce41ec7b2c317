//! The newest entries, decoded, within a bound in bytes (`--raft-log-cache`): what the
//! engine reads back to apply them and to send them to followers that keep up. An
//! entry older than the cache, or larger than all of it, is read from its segment.

use std::collections::BTreeMap;

use openraft::EntryPayload;

use crate::consensus::types::Entry;

pub(super) struct Cache {
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
    bound: usize,
}

/// What an entry holds in memory, about: its words (each a `String` and a count) and
/// its key.
pub(super) fn held_bytes(e: &Entry) -> usize {
    let base = std::mem::size_of::<Entry>();
    match &e.payload {
        EntryPayload::Normal(p) => {
            base + p.key.as_ref().map_or(0, |k| k.len())
                + p.deltas
                    .iter()
                    .map(|(w, _)| w.capacity() + std::mem::size_of::<(String, u64)>())
                    .sum::<usize>()
        }
        _ => base + 256,
    }
}

impl Cache {
    pub fn new(bound: usize) -> Cache {
        Cache {
            entries: BTreeMap::new(),
            bytes: 0,
            bound,
        }
    }

    /// Keeps `e` (the newest entry), dropping the oldest ones past the bound.
    pub fn insert(&mut self, e: &Entry) {
        let size = held_bytes(e);
        if size > self.bound {
            return;
        }
        if let Some((_, old)) = self.entries.insert(e.log_id.index, (e.clone(), size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > self.bound {
            let Some((_, (_, s))) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= s;
        }
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        self.entries.get(&index).map(|(e, _)| e)
    }

    /// Forgets the entries from `index` on.
    pub fn drop_from(&mut self, index: u64) {
        for (_, (_, s)) in self.entries.split_off(&index) {
            self.bytes -= s;
        }
    }

    /// Forgets the entries up to `index`.
    pub fn drop_until(&mut self, index: u64) {
        let keep = self.entries.split_off(&index.saturating_add(1));
        for (_, (_, s)) in std::mem::replace(&mut self.entries, keep) {
            self.bytes -= s;
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::Proposal;
    use openraft::{CommittedLeaderId, LogId};

    fn words(index: u64, n: usize) -> Entry {
        let deltas = (0..n).map(|i| (format!("w{index}-{i}"), 1)).collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal::new(deltas, None)),
        }
    }

    #[test]
    fn the_cache_keeps_the_newest_entries_within_its_bound() {
        let one = held_bytes(&words(0, 100));
        let mut c = Cache::new(one * 3 + one / 2);
        for i in 1..=5 {
            c.insert(&words(i, 100));
        }
        assert!(c.bytes() <= one * 3 + one / 2, "{} > bound", c.bytes());
        assert!(c.get(1).is_none() && c.get(2).is_none());
        assert!(c.get(3).is_some() && c.get(5).is_some());
        c.drop_from(5);
        c.drop_until(3);
        assert!(c.get(3).is_none() && c.get(4).is_some() && c.get(5).is_none());
        assert_eq!(c.bytes(), held_bytes(&words(4, 100)));
        // An entry larger than the whole bound is not cached (it would evict all).
        c.insert(&words(6, 1000));
        assert!(c.get(6).is_none() && c.get(4).is_some());
    }
}
