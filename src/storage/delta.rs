//! What the leader publishes between compactions: the current count of every word
//! changed since the base on disk, kept beside the base's mapping instead of a second
//! copy of the whole table.
//!
//! A count not in the changes is the base's, read from the leader's own mapping of the
//! base file. While a compaction merges the changes into the next base, they are
//! frozen (shared read-only with the compaction) and newer changes go to a live layer
//! on top; when the new base is in place, the frozen layer goes.

use std::sync::Arc;

use crate::storage::counts::CountMap;
use crate::storage::mapped::MappedSnapshot;
use crate::storage::snapshot::ArchivedWordMap;
use crate::words::Deltas;

/// The changes since a base, in one or two layers.
pub struct Changes {
    base: Arc<MappedSnapshot>,
    /// Being merged into the next base by a compaction.
    frozen: Option<Arc<CountMap>>,
    /// Words of the frozen layer that the base lacks.
    frozen_new: u64,
    /// Changed since the frozen layer (or the base) was taken.
    live: CountMap,
    /// Words of the live layer in neither the base nor the frozen layer.
    live_new: u64,
    /// Words of the live layer that the frozen layer holds too.
    live_over_frozen: usize,
}

impl Changes {
    /// Changes `live` (current counts) on top of `base`.
    pub fn new(base: Arc<MappedSnapshot>, live: CountMap) -> Self {
        let live_new = live
            .iter()
            .filter(|(w, _)| base.lookup(w).is_none())
            .count() as u64;
        Changes {
            base,
            frozen: None,
            frozen_new: 0,
            live,
            live_new,
            live_over_frozen: 0,
        }
    }

    pub fn base(&self) -> &Arc<MappedSnapshot> {
        &self.base
    }

    /// A word's current count.
    pub fn get(&self, word: &str) -> u64 {
        self.live
            .get(word)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.get(word)))
            .unwrap_or_else(|| self.base.get(word))
    }

    /// Adds one batch's counts (saturating, as the table does).
    pub fn apply(&mut self, deltas: &Deltas) {
        for (word, n) in deltas {
            if self.live.add_if_present(word, *n) {
                continue;
            }
            let frozen = self.frozen.as_ref().and_then(|f| f.get(word.as_str()));
            let prev = match frozen {
                Some(c) => {
                    self.live_over_frozen += 1;
                    Some(c)
                }
                None => self.base.lookup(word),
            };
            if prev.is_none() && frozen.is_none() {
                self.live_new += 1;
            }
            self.live.add(word, prev.unwrap_or(0).saturating_add(*n));
        }
    }

    /// Words in the delta as published: both layers, each word once.
    pub fn len(&self) -> usize {
        self.frozen.as_ref().map_or(0, |f| f.len()) + self.live.len() - self.live_over_frozen
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct words in the whole table.
    pub fn total_words(&self) -> u64 {
        self.base.header().words + self.frozen_new + self.live_new
    }

    /// The delta as published: each changed word once with its current count.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> + Clone {
        let live = &self.live;
        let over = self
            .frozen
            .iter()
            .flat_map(|f| f.iter())
            .filter(move |(w, _)| live.get(w).is_none());
        live.iter().chain(over)
    }

    /// Whether a compaction's layer is frozen now.
    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Freezes the changes for a compaction: returns them (with the number of their
    /// words the base lacks) and starts an empty live layer. `None` while a compaction
    /// already holds a frozen layer.
    pub fn freeze(&mut self) -> Option<(Arc<CountMap>, u64)> {
        if self.frozen.is_some() {
            return None;
        }
        let frozen = Arc::new(std::mem::take(&mut self.live));
        self.frozen = Some(frozen.clone());
        self.frozen_new = self.live_new;
        self.live_new = 0;
        self.live_over_frozen = 0;
        Some((frozen, self.frozen_new))
    }

    /// The compaction is done: `base` holds the old base and the frozen layer, which
    /// goes. The live layer's counts are current, so it stays as the delta on `base`.
    pub fn rebase(&mut self, base: Arc<MappedSnapshot>) {
        self.base = base;
        self.frozen = None;
        self.frozen_new = 0;
        self.live_over_frozen = 0;
    }

    /// The compaction failed: the frozen layer goes back under the live one.
    pub fn thaw(&mut self) {
        let Some(frozen) = self.frozen.take() else {
            return;
        };
        let frozen = Arc::try_unwrap(frozen).unwrap_or_else(|f| (*f).clone());
        let live = std::mem::replace(&mut self.live, frozen);
        for (w, n) in live.iter() {
            self.live.set(w, n);
        }
        self.live_new += self.frozen_new;
        self.frozen_new = 0;
        self.live_over_frozen = 0;
    }
}

/// The entries of a new base: the base's words that `changes` does not hold, then
/// `changes`. Each word once; re-iterable, as the archive writer needs.
pub fn merged<'a>(
    base: &'a ArchivedWordMap,
    changes: &'a CountMap,
) -> impl Iterator<Item = (&'a str, u64)> + Clone {
    ArchivedIter::new(base)
        .filter(move |(w, _)| changes.get(w).is_none())
        .chain(changes.iter())
}

/// An archived map's entries, clonable (rkyv's iterator is not): a clone starts over
/// and skips what the original has already yielded.
struct ArchivedIter<'a> {
    map: &'a ArchivedWordMap,
    iter: rkyv::collections::swiss_table::map::Iter<
        'a,
        rkyv::string::ArchivedString,
        rkyv::Archived<u64>,
        crate::storage::snapshot::hasher::ArchiveHasher,
    >,
    taken: usize,
}

impl<'a> ArchivedIter<'a> {
    fn new(map: &'a ArchivedWordMap) -> Self {
        ArchivedIter {
            map,
            iter: map.iter(),
            taken: 0,
        }
    }
}

impl Clone for ArchivedIter<'_> {
    fn clone(&self) -> Self {
        let mut c = ArchivedIter::new(self.map);
        for _ in 0..self.taken {
            c.next();
        }
        c
    }
}

impl<'a> Iterator for ArchivedIter<'a> {
    type Item = (&'a str, u64);
    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = self.iter.next()?;
        self.taken += 1;
        Some((k.as_str(), v.to_native()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Incarnation;
    use crate::storage::snapshot::{self, FILE_NAME, Meta, TEMP_NAME};
    use crate::storage::table::{Table, WordMap};
    use crate::words::Tokenizer;

    fn write_base(
        dir: &std::path::Path,
        seq: u64,
        entries: Vec<(&str, u64)>,
    ) -> Arc<MappedSnapshot> {
        let meta = Meta {
            tokenizer: Tokenizer::Unicode,
            seq,
            incarnation: Incarnation::from_raw(1).unwrap(),
        };
        let staged = snapshot::stage(dir, TEMP_NAME, meta, None, entries.into_iter()).unwrap();
        let path = snapshot::install(dir, &staged, FILE_NAME).unwrap();
        Arc::new(MappedSnapshot::open(&path).unwrap())
    }

    /// The whole table the changes stand for, as a base and its delta would give it.
    fn table_of(c: &Changes) -> WordMap {
        let delta: WordMap = c.entries().map(|(w, n)| (w.to_owned(), n)).collect();
        assert_eq!(delta.len(), c.len(), "len counts each word once");
        let mut all = snapshot::to_word_map(c.base().map());
        all.extend(delta);
        assert_eq!(all.len() as u64, c.total_words());
        all
    }

    #[test]
    fn changes_follow_a_table_across_freezes_rebases_and_thaws() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = Table::new();
        table.apply(&vec![("a".into(), 2), ("b".into(), 1)], 1);
        let base = write_base(dir.path(), 1, vec![("a", 2), ("b", 1)]);
        let mut c = Changes::new(base, CountMap::new());
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for seq in 2..400u64 {
            let deltas: Vec<(String, u64)> = (0..4)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (format!("w{}", rng % 60), rng % 3 + 1)
                })
                .collect();
            table.apply(&deltas, seq);
            c.apply(&deltas);
            match seq % 50 {
                // A compaction starts: the frozen layer is written as the next base.
                10 => {
                    let (frozen, _) = c.freeze().unwrap();
                    assert!(c.freeze().is_none(), "one compaction at a time");
                    let merged: Vec<(String, u64)> = merged(c.base().map(), &frozen)
                        .map(|(w, n)| (w.to_owned(), n))
                        .collect();
                    let next = write_base(
                        dir.path(),
                        seq,
                        merged.iter().map(|(w, n)| (w.as_str(), *n)).collect(),
                    );
                    // Writes go on meanwhile; then the new base goes in.
                    let more = vec![("a".to_owned(), 1), ("late".to_owned(), 1)];
                    table.apply(&more, seq);
                    c.apply(&more);
                    c.rebase(next);
                }
                // A compaction fails: the frozen layer goes back under the live one.
                30 => {
                    c.freeze().unwrap();
                    let more = vec![("a".to_owned(), 1), (format!("t{seq}"), 2)];
                    table.apply(&more, seq);
                    c.apply(&more);
                    c.thaw();
                }
                _ => {}
            }
            let want: WordMap = table.map().iter().map(|(w, n)| (w.to_owned(), n)).collect();
            assert_eq!(table_of(&c), want, "after seq {seq}");
            assert_eq!(c.get("a"), table.get("a"));
        }
    }
}
