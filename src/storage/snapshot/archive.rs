//! Serialising (word, count) pairs into an rkyv `ArchivedHashMap` from any re-iterable
//! source, into memory or straight into a file: a compaction streams the mapped base
//! and the changed words through here without building either map in memory.
//!
//! rkyv places each entry by its hash, so it holds one item per slot while it writes
//! (freed afterwards), never the archive itself: the item is a pointer to the entry in
//! the mapped file when the source is files (a compaction: about 14 bytes a word in
//! all, with the control bytes and the resolvers), or a borrowed word and its count
//! (a publication of words in memory: about 33).

use std::hash::{Hash, Hasher};

use rkyv::collections::swiss_table::{ArchivedHashTable, HashTableResolver};
use rkyv::collections::util::{Entry, EntryAdapter, EntryResolver};
use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::allocator::Arena;
use rkyv::ser::{Allocator, Serializer, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::{Archive, Place, Serialize};

use super::error::SnapshotError;
use super::hasher::ArchiveHasher;

/// How full an archived table is. The capacity is stored in the archive (readers probe
/// with it, and validation checks only that the length is below it), so each file may
/// choose. A base is written as full as rkyv's own maps (7/8): it is large and most
/// lookups find their word. A delta is written half full: most lookups do not find
/// their word there, and a miss in a 7/8-full table walks several groups before it
/// meets an empty slot.
pub(super) fn load_factor(delta: bool) -> (usize, usize) {
    if delta { (1, 2) } else { (7, 8) }
}

/// A borrowed word that archives as an `ArchivedString` and hashes as a `str` does
/// (lookups hash the `&str` they are given).
struct Key<'a>(&'a str);

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}
impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Key<'_> {}

impl Archive for Key<'_> {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedString::resolve_from_str(self.0, resolver, out);
    }
}

impl<S: Fallible + Writer + ?Sized> Serialize<S> for Key<'_>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedString::serialize_from_str(self.0, serializer)
    }
}

/// An archived map's entry, as the files hold it.
pub type ArchivedEntry = Entry<ArchivedString, rkyv::Archived<u64>>;

/// A (word, count) pair the writer takes: a borrowed word and its count, or an entry of
/// a mapped file (one pointer: a compaction of 10M words holds one per slot while it
/// places them, so the item's size is most of its scratch).
pub trait Pair<'a>: Copy {
    fn word(&self) -> &'a str;
    fn count(&self) -> u64;
}

impl<'a> Pair<'a> for (&'a str, u64) {
    fn word(&self) -> &'a str {
        self.0
    }
    fn count(&self) -> u64 {
        self.1
    }
}

impl<'a> Pair<'a> for &'a ArchivedEntry {
    fn word(&self) -> &'a str {
        self.key.as_str()
    }
    fn count(&self) -> u64 {
        self.value.to_native()
    }
}

/// A pair as the table writer places and archives it.
#[derive(Clone, Copy)]
struct Item<P>(P);

impl<'a, P: Pair<'a>> Archive for Item<P> {
    type Archived = ArchivedEntry;
    type Resolver = EntryResolver<StringResolver, ()>;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        EntryAdapter::<_, _, Key<'a>, u64>::new(Key(self.0.word()), self.0.count())
            .resolve(resolver, out);
    }
}

impl<'a, P: Pair<'a>, S: Fallible + Writer + ?Sized> Serialize<S> for Item<P>
where
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        EntryAdapter::<_, _, Key<'a>, u64>::new(Key(self.0.word()), self.0.count())
            .serialize(serializer)
    }
}

/// `len` pairs from a re-iterable source, as one archived map. Written as rkyv's
/// hash table of entries, which is what an `ArchivedHashMap` is (a transparent wrapper
/// of it): the bytes are the map's, and readers take them as one.
struct Entries<I> {
    iter: I,
    len: usize,
    load_factor: (usize, usize),
}

/// The source's pairs, stopping at the announced length (rkyv sizes its tables from
/// it; a source that yields more must not overrun them). The length was counted on
/// the same source just before.
#[derive(Clone)]
struct Exact<I> {
    iter: I,
    left: usize,
}

impl<I: Iterator> Iterator for Exact<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.iter.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
impl<I: Iterator> ExactSizeIterator for Exact<I> {}

impl<'a, I> Archive for Entries<I>
where
    I: Iterator + Clone,
    I::Item: Pair<'a>,
{
    type Archived = ArchivedHashTable<ArchivedEntry>;
    type Resolver = HashTableResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedHashTable::resolve_from_len(self.len, self.load_factor, resolver, out);
    }
}

impl<'a, I, S> Serialize<S> for Entries<I>
where
    I: Iterator + Clone,
    I::Item: Pair<'a>,
    S: Fallible + Writer + Allocator + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let exact = Exact {
            iter: self.iter.clone(),
            left: self.len,
        };
        // Each word hashed as the map hashes its keys (a `str` under the file's key).
        let hashes = exact
            .clone()
            .map(|p| rkyv::hash::hash_value::<str, ArchiveHasher>(p.word()));
        ArchivedHashTable::<ArchivedEntry>::serialize_from_iter::<_, Item<I::Item>, _, _>(
            exact.map(Item),
            hashes,
            self.load_factor,
            serializer,
        )
    }
}

/// Writes the `len` pairs of `entries` (each word once; counted by the caller on the
/// same source) as an archived map after whatever `writer` already holds, which must
/// end 16-aligned. Returns the writer and the number of pairs.
pub(super) fn write_entries<'a, W, I>(
    writer: W,
    entries: I,
    len: usize,
    load_factor: (usize, usize),
    key: (u64, u64),
) -> Result<(W, usize), SnapshotError>
where
    W: Writer<rancor::Error>,
    I: Iterator + Clone,
    I::Item: Pair<'a>,
{
    // A fresh arena, dropped at the end: the scratch of a large compaction must not
    // stay with the thread.
    let mut arena = Arena::new();
    let mut serializer = Serializer::new(writer, arena.acquire(), ());
    // The table is laid out by each word's hash under the file's key.
    super::hasher::with_key(Some(key), || {
        rkyv::api::serialize_using::<_, rancor::Error>(
            &Entries {
                iter: entries,
                len,
                load_factor,
            },
            &mut serializer,
        )
    })
    .map_err(|e| SnapshotError::Serialize(e.to_string()))?;
    Ok((serializer.into_writer(), len))
}

#[cfg(test)]
mod tests {
    use rkyv::collections::swiss_table::{ArchivedHashMap, HashMapResolver};
    use rkyv::util::AlignedVec;

    use super::*;
    use crate::storage::snapshot::layout::ArchivedWordMap;

    /// rkyv's own map writer, as this file used it before it wrote the table itself:
    /// the reference the bytes must match.
    struct Reference<'a>(Vec<(&'a str, u64)>, (usize, usize));

    impl Archive for Reference<'_> {
        type Archived = ArchivedWordMap;
        type Resolver = HashMapResolver;
        fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
            ArchivedHashMap::resolve_from_len(self.0.len(), self.1, resolver, out);
        }
    }

    impl<S: Fallible + Writer + Allocator + ?Sized> Serialize<S> for Reference<'_>
    where
        S::Error: Source,
    {
        fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
            ArchivedWordMap::serialize_from_iter::<_, Key<'_>, u64, Key<'_>, u64, _>(
                self.0.iter().map(|&(w, n)| (Key(w), n)),
                self.1,
                s,
            )
        }
    }

    fn reference(pairs: &[(&str, u64)], lf: (usize, usize), key: (u64, u64)) -> AlignedVec {
        let mut arena = Arena::new();
        let mut s = Serializer::new(AlignedVec::<16>::new(), arena.acquire(), ());
        super::super::hasher::with_key(Some(key), || {
            rkyv::api::serialize_using::<_, rancor::Error>(&Reference(pairs.to_vec(), lf), &mut s)
        })
        .unwrap();
        s.into_writer()
    }

    fn ours<'a, P: Pair<'a>>(
        pairs: impl Iterator<Item = P> + Clone,
        len: usize,
        lf: (usize, usize),
        key: (u64, u64),
    ) -> AlignedVec {
        write_entries(AlignedVec::<16>::new(), pairs, len, lf, key)
            .unwrap()
            .0
    }

    #[test]
    fn the_table_is_rkyvs_map_byte_for_byte_from_pairs_and_from_mapped_entries() {
        let words: Vec<String> = (0..5000)
            .map(|i| match i % 3 {
                0 => format!("w{i}"),
                1 => format!("a-longer-word-{i}"),
                _ => "é".repeat(i % 7 + 1) + &i.to_string(),
            })
            .collect();
        let pairs: Vec<(&str, u64)> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.as_str(), i as u64 * 7 + 1))
            .collect();
        let key = (0x1234, 0x5678);
        for lf in [load_factor(false), load_factor(true)] {
            let want = reference(&pairs, lf, key);
            let got = ours(pairs.iter().copied(), pairs.len(), lf, key);
            assert_eq!(got.as_slice(), want.as_slice(), "pairs, load factor {lf:?}");
            // The entries of the archive just written, by pointer, in its order; and
            // the same pairs in that order, the other way.
            let map = rkyv::access::<ArchivedWordMap, rancor::Error>(&want).unwrap();
            let entries: Vec<&ArchivedEntry> = map
                .iter()
                .map(|(k, v)| crate::storage::mapped::entry_of(k, v))
                .collect();
            let as_pairs: Vec<(&str, u64)> =
                entries.iter().map(|e| (e.word(), e.count())).collect();
            let by_pointer = ours(entries.iter().copied(), entries.len(), lf, key);
            let by_pair = ours(as_pairs.iter().copied(), as_pairs.len(), lf, key);
            assert_eq!(by_pointer.as_slice(), by_pair.as_slice());
            assert_eq!(
                by_pointer.as_slice(),
                reference(&as_pairs, lf, key).as_slice()
            );
            // And it reads back as the map it is.
            let back = rkyv::access::<ArchivedWordMap, rancor::Error>(&by_pointer).unwrap();
            super::super::hasher::with_key(Some(key), || {
                for &(w, n) in &pairs {
                    assert_eq!(back.get(w).map(|v| v.to_native()), Some(n), "{w}");
                }
            });
        }
    }
}
