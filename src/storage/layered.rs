//! A node's count table as layers: the mapped base file, the mapped delta on it, the
//! words sealed for a delta being written, and a small in-memory map of the words
//! changed since. The files are the state; memory holds only what changed since the
//! last publication.
//!
//! A read probes the layers from the top (live → sealed → delta → base) and takes the
//! first count found. A write adds to the live map, taking a word's old count from the
//! layers under it the first time the word is written after a seal. Publication seals
//! the live map (a pointer swap under the writer's lock), writes the sealed words over
//! the delta as the next delta file without any lock, maps it, and swaps the mapped
//! file in for the sealed words (see `leader/publisher.rs`). On a leader or a voter
//! counts only grow. A network replica also applies signed deltas (the Go original's
//! `/update` may lower a count): a word whose count falls to zero stays in the live map
//! with a zero count, which hides the word in the layers under it (a tombstone; every
//! walk of the table leaves zero counts out).
//!
//! At 10M words the base is some 250 MB of page cache shared with every local replica
//! on the host, and the anonymous memory is the live map: the words of one interval.

use std::sync::Arc;

use crate::storage::counts::CountMap;
use crate::storage::mapped::{Entries, MappedState};
use crate::storage::ranking::Ranking;
use crate::storage::table::{DeltaError, entry_digest, moved, stage_signed, word_hash};
use crate::storage::top::TopWords;
use crate::words::Deltas;

/// Words sealed at `seq`: each word changed since the layer under it, with its count
/// at `seq`, and what the whole table was then.
pub struct Sealed {
    pub map: CountMap,
    pub seq: u64,
    /// The whole table's digest at `seq`.
    pub digest: u64,
    /// The whole table's distinct words at `seq`.
    pub words: u64,
}

/// The layers under the live map. Immutable: a change is a new value, swapped in
/// under the table's lock, so a reader that took one keeps a consistent table.
#[derive(Clone)]
pub struct Lower {
    /// The base and the delta on it.
    pub files: MappedState,
    /// The digest of the table the files make.
    pub digest: u64,
    /// Oldest first; each holds the words changed since the layer under it.
    pub sealed: Vec<Arc<Sealed>>,
}

impl Lower {
    pub fn new(files: MappedState, digest: u64) -> Self {
        Lower {
            files,
            digest,
            sealed: Vec::new(),
        }
    }

    /// A word's count, from the highest layer that holds it.
    pub fn lookup(&self, word: &str) -> Option<u64> {
        self.lookup_hashed(word, word_hash(word))
    }

    /// [`Lower::lookup`] with the word's [`word_hash`] computed already (a write has
    /// it for its digest).
    pub fn lookup_hashed(&self, word: &str, h: u64) -> Option<u64> {
        for s in self.sealed.iter().rev() {
            if let Some(n) = s.map.get(word) {
                return Some(n);
            }
        }
        self.files.lookup_hashed(word, h)
    }

    /// The sealed layers' words as one map, each word with its newest count: the
    /// newest layer itself when it is the only one (more than one is sealed only after
    /// a publication failed).
    pub fn sealed_words(&self) -> std::borrow::Cow<'_, CountMap> {
        use std::borrow::Cow;
        match &self.sealed[..] {
            [] => Cow::Owned(CountMap::new()),
            [one] => Cow::Borrowed(&one.map),
            many => {
                let mut out = CountMap::new();
                for s in many.iter().rev() {
                    for (w, n) in s.map.iter() {
                        if out.get(w).is_none() {
                            out.insert_new(w, n);
                        }
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// The seq these layers are at.
    pub fn seq(&self) -> u64 {
        self.sealed.last().map_or(self.files.seq(), |s| s.seq)
    }

    /// Distinct words in these layers.
    pub fn words(&self) -> u64 {
        self.sealed.last().map_or(self.files.words(), |s| s.words)
    }

    /// The digest of the table these layers make.
    pub fn digest(&self) -> u64 {
        self.sealed.last().map_or(self.digest, |s| s.digest)
    }
}

/// Every word of `live` over `lower` once, with its count: each layer's words that no
/// layer above holds, from the top.
fn walk<'a>(live: &'a CountMap, lower: &'a Lower) -> Box<dyn Iterator<Item = (&'a str, u64)> + 'a> {
    let mems: Vec<&'a CountMap> = std::iter::once(live)
        .chain(lower.sealed.iter().rev().map(|s| &s.map))
        .collect();
    let in_mem = |above: &[&CountMap], w: &str| above.iter().any(|m| m.get(w).is_some());
    let from_mem = (0..mems.len()).flat_map({
        let mems = mems.clone();
        move |k| {
            let above = mems[..k].to_vec();
            mems[k].iter().filter(move |(w, _)| !in_mem(&above, w))
        }
    });
    let from_files = lower.files.iter().filter(move |(w, _)| !in_mem(&mems, w));
    // A zero count is a word that went away (a tombstone, see the module docs).
    Box::new(from_mem.chain(from_files).filter(|&(_, n)| n > 0))
}

/// The table: see the module's documentation. Not synchronised: the node wraps it in
/// a lock, and keeps `seq` and the counts changing together.
pub struct Layered {
    lower: Arc<Lower>,
    /// Words changed since the newest layer under it was taken.
    live: CountMap,
    seq: u64,
    /// The whole table's digest (see [`crate::storage::table::digest_of`]).
    digest: u64,
    /// Distinct words in the whole table.
    words: u64,
    /// The top list (entry numbers are `live`'s, settled at each seal).
    ranking: Ranking,
}

impl Layered {
    /// The table the files make, whose digest is `digest`.
    pub fn new(files: MappedState, digest: u64) -> Self {
        let lower = Lower::new(files, digest);
        let top = TopWords::of(lower.files.top().0);
        Layered {
            seq: lower.seq(),
            words: lower.words(),
            digest,
            lower: Arc::new(lower),
            live: CountMap::new(),
            ranking: Ranking::new(top),
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The whole table's digest.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Distinct words.
    pub fn len(&self) -> usize {
        self.words as usize
    }

    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    pub fn get(&self, word: &str) -> u64 {
        self.live
            .get(word)
            .or_else(|| self.lower.lookup(word))
            .unwrap_or(0)
    }

    /// The layers under the live map.
    pub fn lower(&self) -> &Arc<Lower> {
        &self.lower
    }

    /// Words changed since the last seal.
    pub fn live(&self) -> &CountMap {
        &self.live
    }

    /// Applies the positive deltas of batch `seq` (counts saturate at `u64::MAX`).
    pub fn apply(&mut self, deltas: &Deltas, seq: u64) {
        let hashes: Vec<u64> = deltas.iter().map(|(w, _)| word_hash(w)).collect();
        self.apply_hashed(deltas, &hashes, seq);
    }

    /// [`Layered::apply`] with each word's [`word_hash`] computed beforehand.
    pub fn apply_hashed(&mut self, deltas: &Deltas, hashes: &[u64], seq: u64) {
        debug_assert_eq!(deltas.len(), hashes.len());
        let mut digest = self.digest;
        for ((word, n), &h) in deltas.iter().zip(hashes) {
            let lower = &self.lower;
            let (i, before, after, new) = self
                .live
                .add_over(word, *n, || lower.lookup_hashed(word, h));
            self.words += new as u64;
            self.ranking.raised(&self.live, i, after);
            digest = digest
                .wrapping_sub(entry_digest(h, before))
                .wrapping_add(entry_digest(h, after));
        }
        self.digest = digest;
        self.seq = seq;
    }

    /// Applies signed deltas atomically (a network replica's pushes): every delta or,
    /// if one would take a count below zero or past `u64::MAX`, none. A count that
    /// falls to zero stays in the live map as a tombstone. Does not change `seq`; the
    /// caller decides what the batch's number is.
    pub fn apply_signed(&mut self, deltas: &[(String, i64)]) -> Result<(), DeltaError> {
        let staged = stage_signed(deltas, |w| self.get(w))?;
        // Raises pending by entry number are settled before any count is set.
        self.ranking.settle(&self.live);
        let mut lowered = false;
        for (word, count) in staged {
            let before = self.get(word);
            lowered |= self.ranking.set(word, before, count);
            self.digest = moved(self.digest, word, before, count);
            match (before, count) {
                (0, c) if c > 0 => self.words += 1,
                (b, 0) if b > 0 => self.words -= 1,
                _ => {}
            }
            self.live.put(word, count);
        }
        if lowered {
            self.ranking = Ranking::new(TopWords::of(walk(&self.live, &self.lower)));
        }
        Ok(())
    }

    /// Puts `files` under the live map in place of the layers there (a network
    /// replica's newer copy of its leader's files, whose table has digest `digest`),
    /// and drops from the live map each word of `same` whose count there is still the
    /// one given: the count the files hold. The table does not change.
    ///
    /// The caller vouches that for every word the live map does not hold, the files'
    /// count is its count now: they are of the same history, at a seq no older than
    /// the last time a word left the live map without changing (see
    /// `replica/network/mod.rs`). Returns how many words left.
    pub fn rebase(&mut self, files: MappedState, digest: u64, same: &[(Box<str>, u64)]) -> usize {
        debug_assert!(files.seq() <= self.seq);
        self.ranking.settle(&self.live);
        self.lower = Arc::new(Lower::new(files, digest));
        let mut gone = 0;
        for (word, count) in same {
            if self.live.get(word) == Some(*count) {
                self.live.remove(word);
                gone += 1;
            }
        }
        if gone > self.live.len() {
            // Most words went: a map sized for what is left gives the memory back.
            let mut live = CountMap::with_capacity(self.live.len());
            for (w, n) in self.live.iter() {
                live.put(w, n);
            }
            self.live = live;
        }
        gone
    }

    /// Sets the seq (a batch that changed no count still has its number).
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Calls `f` with the top list, brought up to date first, and whether it holds
    /// every word.
    pub fn with_top<R>(&self, f: impl FnOnce(&TopWords, bool) -> R) -> R {
        self.ranking.with_top(&self.live, self.words, f)
    }

    /// The first `n` words in rank order that start with `prefix` (a pass over the
    /// whole table if the top list cannot say).
    pub fn with_top_words<R>(
        &self,
        n: usize,
        prefix: &str,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> R {
        let scan = || walk(&self.live, &self.lower);
        self.ranking
            .with_top_words(&self.live, self.words, n, prefix, scan, f)
    }

    /// [`Layered::with_top_words`] if the top list holds the answer; `None` when only
    /// a pass over the whole table can say.
    pub fn with_ranked_words<R>(
        &self,
        n: usize,
        prefix: &str,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> Option<R> {
        self.ranking
            .with_ranked_words(&self.live, self.words, n, prefix, f)
    }

    /// Seals the live map into a layer of its own (if anything changed since the
    /// newest layer) and starts an empty one; returns the layers now under it. Costs
    /// the top list's pending raises, not the words.
    pub fn seal(&mut self) -> Arc<Lower> {
        if self.live.is_empty() && self.seq == self.lower.seq() {
            return self.lower.clone();
        }
        self.ranking.settle(&self.live);
        let sealed = Arc::new(Sealed {
            map: std::mem::take(&mut self.live),
            seq: self.seq,
            digest: self.digest,
            words: self.words,
        });
        let mut lower = (*self.lower).clone();
        lower.sealed.push(sealed);
        self.lower = Arc::new(lower);
        self.lower.clone()
    }

    /// Replaces the layers under the live map with `f`'s, which must make the same
    /// table (a delta file in place of the sealed words it holds, a new base).
    pub fn replace_lower(&mut self, f: impl FnOnce(&Lower) -> Lower) {
        let next = f(&self.lower);
        debug_assert_eq!(next.seq(), self.lower.seq());
        debug_assert_eq!(next.words(), self.lower.words());
        self.lower = Arc::new(next);
    }

    /// The table now, for a reader that walks it without the lock: the layers and a
    /// copy of the live map (the words of one interval).
    pub fn view(&self) -> View {
        View {
            lower: self.lower.clone(),
            live: self.live.clone(),
            seq: self.seq,
            words: self.words,
        }
    }
}

/// The table at one seq, detached from the lock (see [`Layered::view`]).
pub struct View {
    lower: Arc<Lower>,
    live: CountMap,
    seq: u64,
    words: u64,
}

impl View {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn get(&self, word: &str) -> u64 {
        self.live
            .get(word)
            .or_else(|| self.lower.lookup(word))
            .unwrap_or(0)
    }

    /// Every word once with its count.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, u64)> + '_> {
        walk(&self.live, &self.lower)
    }
}

impl Entries for View {
    fn entries(&self) -> Box<dyn Iterator<Item = (&str, u64)> + '_> {
        self.iter()
    }

    fn words(&self) -> u64 {
        self.words
    }
}

#[cfg(test)]
mod tests;
