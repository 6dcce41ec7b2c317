//! The count table's storage: every word's bytes in one arena, a packed entry per word
//! (where its bytes are, and its count), and a hash index of entry numbers.
//!
//! A `HashMap<String, u64>` costs about 87 bytes a word (a 24-byte `String` and its
//! own heap block, the count, the table's slack); this costs the word's bytes plus 16
//! for the entry plus about 5 for the index, some 30 bytes for a typical word.
//!
//! The index hashes with foldhash seeded at random per process (per map), so words
//! from untrusted clients cannot be crafted to collide.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Lengths at or over this are stored in the arena in front of the word (8 bytes LE).
const LONG: u64 = (1 << 24) - 1;

/// Where a word's bytes are (offset << 24 | length) and its count.
#[derive(Clone, Copy)]
struct Entry {
    loc: u64,
    count: u64,
}

/// Word → count, compactly. Counts are never zero: a zero count is an absent word.
#[derive(Clone, Default)]
pub struct CountMap {
    index: HashTable<u32>,
    entries: Vec<Entry>,
    arena: Vec<u8>,
    /// Arena bytes of removed words, reclaimed when they are half of it.
    dead: usize,
    hasher: foldhash::fast::RandomState,
}

fn bytes_at(arena: &[u8], loc: u64) -> &[u8] {
    let (mut off, mut len) = ((loc >> 24) as usize, (loc & LONG) as usize);
    if len as u64 == LONG {
        len = u64::from_le_bytes(arena[off..off + 8].try_into().expect("8 bytes")) as usize;
        off += 8;
    }
    &arena[off..off + len]
}

/// A word's hash: what `str`'s `Hash` writes (its bytes, then 0xff), from the bytes
/// alone, so a rehash need not check them again as UTF-8.
fn hash_of(hasher: &foldhash::fast::RandomState, bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = hasher.build_hasher();
    h.write(bytes);
    h.write_u8(0xff);
    h.finish()
}

fn word_at(arena: &[u8], loc: u64) -> &str {
    // The bytes were copied from a `&str` and are never modified.
    std::str::from_utf8(bytes_at(arena, loc)).expect("the arena holds whole words")
}

impl CountMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(words: usize) -> Self {
        CountMap {
            index: HashTable::with_capacity(words),
            entries: Vec::with_capacity(words),
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes held (what the table costs, beyond the allocator's own overhead).
    pub fn heap_bytes(&self) -> usize {
        self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.arena.capacity()
    }

    fn find(&self, word: &str) -> Option<usize> {
        let h = hash_of(&self.hasher, word.as_bytes());
        self.index
            .find(h, |&i| {
                bytes_at(&self.arena, self.entries[i as usize].loc) == word.as_bytes()
            })
            .map(|&i| i as usize)
    }

    pub fn get(&self, word: &str) -> Option<u64> {
        self.find(word).map(|i| self.entries[i].count)
    }

    /// Adds `n` to `word`'s count (saturating), inserting it if absent. Returns the
    /// count before (0 if absent) and after.
    pub fn add(&mut self, word: &str, n: u64) -> (u64, u64) {
        if let Some(i) = self.find(word) {
            let e = &mut self.entries[i];
            let before = e.count;
            e.count = before.saturating_add(n);
            return (before, e.count);
        }
        self.push(word, n);
        (0, n)
    }

    /// [`CountMap::add`], also returning the word's entry number (see
    /// [`CountMap::entry_at`]; stable until a word is removed).
    pub fn add_indexed(&mut self, word: &str, n: u64) -> (u32, u64, u64) {
        if let Some(i) = self.find(word) {
            let e = &mut self.entries[i];
            let before = e.count;
            e.count = before.saturating_add(n);
            return (i as u32, before, e.count);
        }
        self.push(word, n);
        (self.entries.len() as u32 - 1, 0, n)
    }

    /// Adds `n` to `word`'s count (saturating). An absent word is inserted with `n`
    /// over the count `below` gives it (`None`: a word new to the whole table; the
    /// count of a layer under this map, see [`crate::storage::layered`]). Returns the
    /// entry number, the count before and after, and whether `below` said `None`.
    pub fn add_over(
        &mut self,
        word: &str,
        n: u64,
        below: impl FnOnce() -> Option<u64>,
    ) -> (u32, u64, u64, bool) {
        if let Some(i) = self.find(word) {
            let e = &mut self.entries[i];
            let before = e.count;
            e.count = before.saturating_add(n);
            return (i as u32, before, e.count, false);
        }
        let prev = below();
        let before = prev.unwrap_or(0);
        let after = before.saturating_add(n);
        self.push(word, after);
        (self.entries.len() as u32 - 1, before, after, prev.is_none())
    }

    /// The word and count of entry number `i`.
    pub fn entry_at(&self, i: u32) -> (&str, u64) {
        let e = &self.entries[i as usize];
        (word_at(&self.arena, e.loc), e.count)
    }

    /// Adds `n` to `word`'s count (saturating) if the word is there; `false` if not.
    pub fn add_if_present(&mut self, word: &str, n: u64) -> bool {
        match self.find(word) {
            Some(i) => {
                let e = &mut self.entries[i];
                e.count = e.count.saturating_add(n);
                true
            }
            None => false,
        }
    }

    /// Sets `word`'s count; a zero count removes it.
    pub fn set(&mut self, word: &str, count: u64) {
        match self.find(word) {
            Some(_) if count == 0 => {
                self.remove(word);
            }
            Some(i) => self.entries[i].count = count,
            None if count == 0 => {}
            None => self.push(word, count),
        }
    }

    /// Sets `word`'s count, keeping a zero count as an entry (a layer's word that went
    /// away: it hides the count of the layers under it; see [`crate::storage::layered`]).
    pub fn put(&mut self, word: &str, count: u64) {
        match self.find(word) {
            Some(i) => self.entries[i].count = count,
            None => self.push(word, count),
        }
    }

    /// Adds a word known to be absent (a base's words are distinct), without looking
    /// for it first.
    pub fn insert_new(&mut self, word: &str, count: u64) {
        debug_assert!(self.find(word).is_none(), "{word:?} is already in the map");
        if count > 0 {
            self.push(word, count);
        }
    }

    fn push(&mut self, word: &str, count: u64) {
        let id = u32::try_from(self.entries.len()).expect("under 2^32 words");
        let off = self.arena.len() as u64;
        assert!(off < 1 << 40, "the word arena is limited to 1 TiB");
        let len = word.len() as u64;
        if len >= LONG {
            self.arena.extend_from_slice(&len.to_le_bytes());
        }
        self.arena.extend_from_slice(word.as_bytes());
        self.entries.push(Entry {
            loc: off << 24 | len.min(LONG),
            count,
        });
        let h = hash_of(&self.hasher, word.as_bytes());
        let (entries, arena, hasher) = (&self.entries, &self.arena, &self.hasher);
        self.index.insert_unique(h, id, |&i| {
            hash_of(hasher, bytes_at(arena, entries[i as usize].loc))
        });
    }

    /// Removes `word`; returns its count if it was there.
    pub fn remove(&mut self, word: &str) -> Option<u64> {
        let h = hash_of(&self.hasher, word.as_bytes());
        let (entries, arena) = (&self.entries, &self.arena);
        let slot = self
            .index
            .find_entry(h, |&i| {
                bytes_at(arena, entries[i as usize].loc) == word.as_bytes()
            })
            .ok()?;
        let (i, _) = slot.remove();
        let i = i as usize;
        let gone = self.entries.swap_remove(i);
        self.dead += word.len() + if word.len() as u64 >= LONG { 8 } else { 0 };
        // The last entry moved into `i`: point its index slot there.
        if i < self.entries.len() {
            let hm = hash_of(&self.hasher, bytes_at(&self.arena, self.entries[i].loc));
            let last = self.entries.len() as u32;
            *self
                .index
                .find_mut(hm, |&j| j == last)
                .expect("every entry is indexed") = i as u32;
        }
        if self.dead > 1 << 20 && self.dead > self.arena.len() / 2 {
            self.compact_arena();
        }
        Some(gone.count)
    }

    /// Copies the live words into a new arena.
    fn compact_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.dead);
        for e in &mut self.entries {
            let word = word_at(&self.arena, e.loc);
            let off = arena.len() as u64;
            let len = word.len() as u64;
            if len >= LONG {
                arena.extend_from_slice(&len.to_le_bytes());
            }
            arena.extend_from_slice(word.as_bytes());
            e.loc = off << 24 | len.min(LONG);
        }
        self.arena = arena;
        self.dead = 0;
    }

    /// Every word once with its count, in insertion order (but for removals).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, u64)> + Clone + '_ {
        let arena = &self.arena;
        self.entries
            .iter()
            .map(move |e| (word_at(arena, e.loc), e.count))
    }
}

impl<S: AsRef<str>> FromIterator<(S, u64)> for CountMap {
    fn from_iter<I: IntoIterator<Item = (S, u64)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut m = CountMap::with_capacity(iter.size_hint().0);
        for (w, n) in iter {
            m.set(w.as_ref(), n);
        }
        m
    }
}

impl PartialEq for CountMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(w, n)| other.get(w) == Some(n))
    }
}
impl Eq for CountMap {}

impl std::fmt::Debug for CountMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for CountMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// A JSON object of counts (a `/sync` body), read straight into the compact form.
/// A word given twice keeps its last count; a zero count is an absent word.
impl<'de> serde::Deserialize<'de> for CountMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(WithCapacity(0), d)
    }
}

/// Reads a [`CountMap`] sized for about this many words up front (growing a large
/// index step by step rehashes every word each time).
pub struct WithCapacity(pub usize);

impl<'de> serde::de::DeserializeSeed<'de> for WithCapacity {
    type Value = CountMap;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<CountMap, D::Error> {
        struct Visitor(usize);
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CountMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of word counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<CountMap, A::Error> {
                let mut m = CountMap::with_capacity(a.size_hint().unwrap_or(self.0));
                while let Some((w, n)) = a.next_entry::<std::borrow::Cow<'de, str>, u64>()? {
                    m.set(&w, n);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Visitor(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn follows_a_hashmap_through_adds_sets_and_removes() {
        let mut m = CountMap::new();
        let mut model: HashMap<String, u64> = HashMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for step in 0..40_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let word = format!("w{}é{}", rng % 3_000, "x".repeat((rng % 7) as usize));
            match step % 5 {
                0..=2 => {
                    let (before, after) = m.add(&word, rng % 4 + 1);
                    let c = model.entry(word.clone()).or_insert(0);
                    assert_eq!(before, *c);
                    *c += rng % 4 + 1;
                    assert_eq!(after, *c);
                }
                3 => {
                    assert_eq!(m.remove(&word), model.remove(&word));
                }
                _ => {
                    let n = rng % 3;
                    m.set(&word, n);
                    if n == 0 {
                        model.remove(&word);
                    } else {
                        model.insert(word.clone(), n);
                    }
                }
            }
            assert_eq!(m.get(&word), model.get(&word).copied());
        }
        assert_eq!(m.len(), model.len());
        let back: HashMap<String, u64> = m.iter().map(|(w, n)| (w.to_owned(), n)).collect();
        assert_eq!(back, model);
        assert_eq!(m.iter().len(), model.len());
    }

    #[test]
    fn the_arena_is_reclaimed_after_many_removals() {
        let mut m = CountMap::new();
        for i in 0..200_000 {
            m.add(&format!("word-number-{i}"), 1);
        }
        let full = m.arena.len();
        for i in 0..150_000 {
            m.remove(&format!("word-number-{i}"));
        }
        assert!(m.arena.len() < full / 2, "{} of {full}", m.arena.len());
        assert_eq!(m.len(), 50_000);
        assert_eq!(m.get("word-number-199999"), Some(1));
        assert_eq!(m.get("word-number-0"), None);
    }

    #[test]
    fn long_words_keep_their_length() {
        let mut m = CountMap::new();
        let long = "y".repeat(LONG as usize + 5);
        m.add(&long, 2);
        m.add("short", 1);
        assert_eq!(m.get(&long), Some(2));
        assert_eq!(m.iter().map(|(w, _)| w.len()).max(), Some(long.len()));
        assert_eq!(m.remove(&long), Some(2));
        assert_eq!(m.get("short"), Some(1));
    }

    #[test]
    fn json_round_trips() {
        let m: CountMap = serde_json::from_str(r#"{"a": 2, "b\u00e9": 5, "z": 0}"#).unwrap();
        assert_eq!(
            (m.get("a"), m.get("bé"), m.get("z"), m.len()),
            (Some(2), Some(5), None, 2)
        );
        let back: CountMap = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let mut m = CountMap::new();
        m.add("a", u64::MAX - 1);
        assert_eq!(m.add("a", 5), (u64::MAX - 1, u64::MAX));
    }
}
