//! Serialising (word, count) pairs into an rkyv `ArchivedHashMap` from any re-iterable
//! source, into memory or straight into a file: a compaction streams the mapped base
//! and the changed words through here without building either map in memory.
//!
//! rkyv places each entry by its hash, so it holds one small slot per entry while it
//! writes (about 40 bytes a word, freed afterwards), never the archive itself.

use std::hash::{Hash, Hasher};

use rkyv::collections::swiss_table::{ArchivedHashMap, HashMapResolver};
use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::allocator::Arena;
use rkyv::ser::{Allocator, Serializer, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::{Archive, Place, Serialize};

use super::error::SnapshotError;
use super::layout::ArchivedWordMap;

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

/// `len` pairs from a re-iterable source, as one archived map.
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

impl<'a, I: Iterator<Item = (&'a str, u64)>> Iterator for Exact<I> {
    type Item = (Key<'a>, u64);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.iter.next().map(|(k, v)| (Key(k), v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
impl<'a, I: Iterator<Item = (&'a str, u64)>> ExactSizeIterator for Exact<I> {}

impl<'a, I: Iterator<Item = (&'a str, u64)> + Clone> Archive for Entries<I> {
    type Archived = ArchivedWordMap;
    type Resolver = HashMapResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedHashMap::resolve_from_len(self.len, self.load_factor, resolver, out);
    }
}

impl<'a, I, S> Serialize<S> for Entries<I>
where
    I: Iterator<Item = (&'a str, u64)> + Clone,
    S: Fallible + Writer + Allocator + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let items = Exact {
            iter: self.iter.clone(),
            left: self.len,
        };
        ArchivedWordMap::serialize_from_iter::<_, Key<'a>, u64, Key<'a>, u64, _>(
            items,
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
    I: Iterator<Item = (&'a str, u64)> + Clone,
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
