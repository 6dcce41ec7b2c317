//! How the layers of a table (see [`crate::storage::layered`]) are merged into the
//! next file: each merge is an iterator that yields every word once, re-iterable (the
//! archive writer walks its entries twice), with no copy of the words in memory.

use std::sync::Arc;

use crate::storage::counts::CountMap;
use crate::storage::mapped::{MappedSnapshot, MappedState, entry_of};
use crate::storage::snapshot::{ArchivedEntry, ArchivedWordMap, Pair};

/// The next delta: the words in `over` (sealed in memory), then the words of the delta
/// file `under` that `over` does not hold.
pub fn memory_over_file<'a>(
    over: &'a CountMap,
    under: Option<&'a MappedSnapshot>,
) -> impl Iterator<Item = (&'a str, u64)> + Clone {
    let rest = under
        .into_iter()
        .flat_map(|d| ArchivedIter::new(d.map()))
        .map(|e| (e.word(), e.count()))
        .filter(move |(w, _)| over.get(w).is_none());
    over.iter().chain(rest)
}

/// The next base: the delta file `over`'s words, then the base file `under`'s that
/// `over` does not hold; as the files' entries (one pointer each: the writer's scratch
/// for a 10M-word base is what it holds per entry).
pub fn file_over_file<'a>(
    over: &'a MappedSnapshot,
    under: &'a MappedSnapshot,
) -> impl Iterator<Item = &'a ArchivedEntry> + Clone {
    let rest = ArchivedIter::new(under.map()).filter(move |e| over.lookup(e.word()).is_none());
    ArchivedIter::new(over.map()).chain(rest)
}

/// The merge of `over` (newest first) and the file `under` them (if any): each word
/// once, from the newest file that holds it, as that file's entry. Nothing is held in
/// memory: a word of an older file is passed over when a newer one holds it, which a
/// probe of each newer file tells (a Bloom filter's bit tests for most, see
/// [`crate::storage::filter`]). The writer's scratch is then one pointer a word.
pub fn files_over_file<'a>(
    over: &'a [Arc<MappedSnapshot>],
    under: Option<&'a MappedSnapshot>,
) -> impl Iterator<Item = &'a ArchivedEntry> + Clone {
    let layers = over.iter().map(|f| &**f).chain(under);
    layers.enumerate().flat_map(move |(i, f)| {
        let newer = &over[..i.min(over.len())];
        ArchivedIter::new(f.map()).filter(move |e| {
            let h = crate::storage::filter::hash(e.word());
            newer.iter().all(|n| n.lookup_hashed(e.word(), h).is_none())
        })
    })
}

/// A delta re-expressed on new files under it (a new base, or a merged delta): the
/// delta's words whose count `under` does not already have. Exact because counts only
/// grow: a word the delta holds with `under`'s count did not change since `under`'s
/// seq, and a word it does not hold is in neither.
pub fn rebased<'a>(
    delta: &'a MappedSnapshot,
    under: &'a MappedState,
) -> impl Iterator<Item = (&'a str, u64)> + Clone {
    entries(delta).filter(move |(w, n)| under.lookup(w) != Some(*n))
}

/// A file's entries, re-iterable.
pub fn entries(file: &MappedSnapshot) -> impl Iterator<Item = (&str, u64)> + Clone {
    ArchivedIter::new(file.map()).map(|e| (e.word(), e.count()))
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
    type Item = &'a ArchivedEntry;
    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = self.iter.next()?;
        self.taken += 1;
        Some(entry_of(k, v))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::Incarnation;
    use crate::storage::snapshot::{self, BaseRef, DELTA_NAME, FILE_NAME, Meta, TEMP_NAME};
    use crate::storage::table::WordMap;
    use crate::words::Tokenizer;

    fn write(
        dir: &std::path::Path,
        name: &str,
        seq: u64,
        base: Option<BaseRef>,
        entries: Vec<(&str, u64)>,
    ) -> Arc<MappedSnapshot> {
        let meta = Meta {
            tokenizer: Tokenizer::Unicode,
            seq,
            incarnation: Incarnation::from_raw(1).unwrap(),
        };
        let staged = snapshot::stage(dir, TEMP_NAME, meta, base, entries.into_iter()).unwrap();
        let path = snapshot::install(dir, &staged, name).unwrap();
        Arc::new(MappedSnapshot::open(&path).unwrap())
    }

    fn collect<'a, P: Pair<'a>>(it: impl Iterator<Item = P> + Clone) -> WordMap {
        let it = it.map(|p| (p.word(), p.count()));
        let again: Vec<_> = it.clone().collect();
        let map: WordMap = it.map(|(w, n)| (w.to_owned(), n)).collect();
        assert_eq!(
            again.len(),
            map.len(),
            "each word once, and a clone starts over"
        );
        map
    }

    #[test]
    fn merges_yield_each_word_once_with_the_highest_layers_count() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = write(d, FILE_NAME, 1, None, vec![("a", 1), ("b", 2), ("c", 3)]);
        let bref = BaseRef {
            checksum: base.header().checksum,
            seq: 1,
            total_words: 4,
            digest: 0,
        };
        let delta = write(d, DELTA_NAME, 2, Some(bref), vec![("b", 5), ("d", 1)]);
        let mut sealed = CountMap::new();
        sealed.set("d", 4);
        sealed.set("e", 1);
        let want = |pairs: &[(&str, u64)]| -> WordMap {
            pairs.iter().map(|(w, n)| (w.to_string(), *n)).collect()
        };
        assert_eq!(
            collect(memory_over_file(&sealed, Some(&delta))),
            want(&[("b", 5), ("d", 4), ("e", 1)])
        );
        assert_eq!(
            collect(memory_over_file(&sealed, None)),
            want(&[("d", 4), ("e", 1)])
        );
        assert_eq!(
            collect(file_over_file(&delta, &base)),
            want(&[("a", 1), ("b", 5), ("c", 3), ("d", 1)])
        );
        // Several files over one: each word from the newest that holds it.
        let r1 = write(d, "recent-1.memdb", 3, Some(bref), vec![("b", 6), ("d", 2)]);
        let r2 = write(d, "recent-2.memdb", 4, Some(bref), vec![("b", 7), ("f", 1)]);
        let newest_first = [r2, r1];
        assert_eq!(
            collect(files_over_file(&newest_first, Some(&delta))),
            want(&[("b", 7), ("d", 2), ("f", 1)])
        );
        assert_eq!(
            collect(files_over_file(&newest_first, Some(&base))),
            want(&[("a", 1), ("b", 7), ("c", 3), ("d", 2), ("f", 1)])
        );
        assert_eq!(
            collect(files_over_file(&newest_first, None)),
            want(&[("b", 7), ("d", 2), ("f", 1)])
        );
        assert_eq!(
            collect(files_over_file(&newest_first[1..], Some(&base))),
            want(&[("a", 1), ("b", 6), ("c", 3), ("d", 2)])
        );
        // A compaction wrote a base at the delta's seq; a later delta then changed
        // `b` again and `c`: on the new base it holds only those.
        let next = write(
            d,
            FILE_NAME,
            2,
            None,
            vec![("a", 1), ("b", 5), ("c", 3), ("d", 1)],
        );
        let later = write(
            d,
            DELTA_NAME,
            3,
            Some(bref),
            vec![("b", 6), ("c", 4), ("d", 1)],
        );
        let on_next = MappedState::base(next.clone());
        assert_eq!(
            collect(rebased(&later, &on_next)),
            want(&[("b", 6), ("c", 4)])
        );
    }
}
