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
use crate::storage::table::{DeltaError, entry_digest, stage_signed, word_hash};
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
            if count < before {
                // A count that falls may fall below words the top list never kept.
                lowered |= self.ranking.list_mut().contains(word);
            } else if count > before {
                self.ranking.list_mut().raised(word, count);
            }
            let h = word_hash(word);
            self.digest = self
                .digest
                .wrapping_sub(entry_digest(h, before))
                .wrapping_add(entry_digest(h, count));
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
mod tests {
    use super::*;
    use crate::protocol::Incarnation;
    use crate::storage::delta::{file_over_file, memory_over_file, rebased, union};
    use crate::storage::mapped::MappedSnapshot;
    use crate::storage::snapshot::{self, BaseRef, Meta};
    use crate::storage::table::{Table, WordMap, digest_of};
    use crate::storage::top::{MAX_TOP, best_of};
    use crate::words::Tokenizer;

    fn meta(seq: u64) -> Meta {
        Meta {
            tokenizer: Tokenizer::Unicode,
            seq,
            incarnation: Incarnation::from_raw(7).unwrap(),
        }
    }

    fn write<'a>(
        dir: &std::path::Path,
        name: &str,
        seq: u64,
        base: Option<BaseRef>,
        entries: impl Iterator<Item = (&'a str, u64)> + Clone,
    ) -> Arc<MappedSnapshot> {
        let staged = snapshot::stage(dir, ".tmp", meta(seq), base, entries).unwrap();
        let path = snapshot::install(dir, &staged, name).unwrap();
        Arc::new(MappedSnapshot::open(&path).unwrap())
    }

    /// What a file on `under` completing a table of `total_words` and `digest` names.
    fn base_ref(under: &MappedSnapshot, total_words: u64, digest: u64) -> BaseRef {
        BaseRef {
            checksum: under.header().chain_name().unwrap(),
            seq: under.header().seq,
            total_words,
            digest,
        }
    }

    /// What the publisher does: seal, write the sealed words as a file on the newest
    /// (the delta when the base has none, else the next recent delta), map it, swap it
    /// in.
    fn publish(dir: &std::path::Path, t: &mut Layered) {
        let lower = t.seal();
        let Some(top) = lower.sealed.last().cloned() else {
            return;
        };
        let over = lower.sealed_words();
        let f = &lower.files;
        let under = f.recent.last().or(f.delta.as_ref()).unwrap_or(&f.base);
        let name = match f.delta {
            None => "delta".to_owned(),
            Some(_) => format!("recent{}", top.seq),
        };
        let bref = base_ref(under, top.words, top.digest);
        let file = write(
            dir,
            &name,
            top.seq,
            Some(bref),
            memory_over_file(&over, None),
        );
        let mut files = f.clone();
        match files.delta {
            None => files.delta = Some(file),
            Some(_) => files.recent.push(file),
        }
        t.replace_lower(|cur| Lower {
            files,
            digest: top.digest,
            sealed: cur.sealed[lower.sealed.len()..].to_vec(),
        });
    }

    /// What a merge of recent deltas does: all but the newest `keep` into the delta
    /// (`into_delta`), or into one recent delta. The ones it leaves name the table the
    /// newest merged one completes, which the merged file completes too.
    fn merge(dir: &std::path::Path, t: &mut Layered, keep: usize, into_delta: bool) {
        let lower = t.lower().clone();
        let f = &lower.files;
        let Some(delta) = f.delta.clone() else {
            return;
        };
        if f.recent.len() <= keep {
            return;
        }
        let n = f.recent.len() - keep;
        let h = f.recent[n - 1].header();
        let digest = h.base.unwrap().digest;
        let over: Vec<_> = f.recent[..n].iter().rev().cloned().collect();
        let (bref, under, name) = if into_delta {
            let bref = base_ref(&f.base, h.total_words(), digest);
            (bref, Some(&*delta), "delta".to_owned())
        } else {
            let on = f.recent[0].header().base.unwrap();
            let bref = BaseRef {
                total_words: h.total_words(),
                digest,
                ..on
            };
            (bref, None, format!("recent{}", h.seq))
        };
        let words = union(&over);
        let merged = write(
            dir,
            &name,
            h.seq,
            Some(bref),
            memory_over_file(&words, under),
        );
        let mut files = f.clone();
        if into_delta {
            files.delta = Some(merged);
            files.recent.drain(..n);
        } else {
            files.recent.splice(..n, [merged]);
        }
        t.replace_lower(|cur| Lower {
            files,
            digest: cur.digest,
            sealed: cur.sealed.clone(),
        });
    }

    /// What a compaction does: the delta into a new base, the delta again on it, and
    /// the recent deltas again on that.
    fn compact(dir: &std::path::Path, t: &mut Layered) {
        let lower = t.lower().clone();
        let f = &lower.files;
        let Some(delta) = f.delta.clone() else {
            return;
        };
        let seq = delta.header().seq;
        let base = write(dir, "base", seq, None, file_over_file(&delta, &f.base));
        let h = delta.header();
        let bref = base_ref(&base, h.total_words(), h.base.unwrap().digest);
        let on_base = MappedState::base(base.clone());
        let again = write(dir, "delta", seq, Some(bref), rebased(&delta, &on_base));
        assert!(again.header().words <= delta.header().words);
        // The recent deltas name the table the delta completes: they stay as they are.
        let recent = f.recent.clone();
        t.replace_lower(|cur| Lower {
            files: MappedState {
                base,
                delta: Some(again),
                recent,
            },
            digest: cur.digest,
            sealed: cur.sealed.clone(),
        });
    }

    /// Each file of the table's chain pairs with the one under it, as a reader checks.
    fn assert_chain(t: &Layered) {
        let f = &t.lower().files;
        let mut under = &f.base;
        for file in f.delta.iter().chain(&f.recent) {
            assert!(
                crate::storage::mapped::pairs(under.header(), file.header()),
                "{:?} on {:?}",
                file.header(),
                under.header()
            );
            under = file;
        }
    }

    fn whole(t: &Layered) -> WordMap {
        let view = t.view();
        let all: Vec<(&str, u64)> = view.iter().collect();
        let map: WordMap = all.iter().map(|(w, n)| (w.to_string(), *n)).collect();
        assert_eq!(map.len(), all.len(), "each word once");
        map
    }

    /// A layered table follows a plain one through writes, seals, publications and
    /// compactions: the same counts, digest, length, top list and whole walk.
    #[test]
    fn layers_follow_a_plain_table_through_publications_and_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let empty = write(d, "base", 0, None, std::iter::empty());
        let mut t = Layered::new(MappedState::base(empty), 0);
        let mut plain = Table::new();
        let mut batches = crate::storage::table::tests::skewed_batches(MAX_TOP as u64 * 2, 40);
        for seq in 1..=600u64 {
            let deltas = batches();
            t.apply(&deltas, seq);
            plain.apply(&deltas, seq);
            match seq % 50 {
                3 | 7 | 9 | 11 | 19 | 23 | 33 | 35 | 44 | 45 => publish(d, &mut t),
                // A seal whose words are not yet written: reads go through it.
                21 => {
                    t.seal();
                }
                13 => merge(d, &mut t, 1, false),
                25 => {
                    publish(d, &mut t);
                    merge(d, &mut t, 1, true);
                }
                37 => merge(d, &mut t, 0, false),
                47 => merge(d, &mut t, 0, true),
                40 => {
                    publish(d, &mut t);
                    compact(d, &mut t);
                }
                _ => {}
            }
            assert_chain(&t);
            assert_eq!((t.seq(), t.len()), (plain.seq(), plain.len()), "at {seq}");
            assert_eq!(t.digest(), plain.digest(), "at {seq}");
            if seq % 25 == 0 {
                let want: WordMap = plain.map().iter().map(|(w, n)| (w.into(), n)).collect();
                assert_eq!(whole(&t), want, "at {seq}");
                assert_eq!(digest_of(t.view().iter()), t.digest());
                let top = best_of(plain.map().iter(), MAX_TOP);
                t.with_top(|list, complete| {
                    assert!(list.iter().eq(top.iter().copied()), "top at {seq}");
                    assert_eq!(complete, plain.len() <= MAX_TOP);
                });
                for (w, n) in plain.map().iter().take(50) {
                    assert_eq!(t.get(w), n);
                }
                assert_eq!(t.get("never"), 0);
            }
        }
        // A table opened on the files the last publication left: the same table.
        publish(d, &mut t);
        let files = t.lower().files.clone();
        let reopened = Layered::new(files, t.lower().digest);
        assert_eq!(whole(&reopened), whole(&t));
        assert_eq!((reopened.seq(), reopened.len()), (t.seq(), t.len()));
        reopened.with_top_words(5, "w1", |got| {
            let want = crate::storage::top::scanned(plain.map().iter(), 5, "w1");
            assert_eq!(got, &want[..]);
        });
    }

    /// A replica's signed deltas over the files: raises, lowerings and words that go
    /// (a zero count hides the word in the files), exactly as a plain table.
    #[test]
    fn signed_deltas_over_files_lower_and_remove_words_as_a_plain_table_does() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut plain = Table::new();
        let mut batches = crate::storage::table::tests::skewed_batches(MAX_TOP as u64 * 2, 40);
        for seq in 1..=40u64 {
            plain.apply(&batches(), seq);
        }
        let words: Vec<(String, u64)> = plain.map().iter().map(|(w, n)| (w.into(), n)).collect();
        let base = write(d, "base", 40, None, plain.map().iter());
        let mut t = Layered::new(MappedState::base(base), plain.digest());
        // Too low for a word: refused whole, nothing changed.
        let (w0, n0) = words[0].clone();
        let bad = vec![("new".to_owned(), 5), (w0.clone(), -(n0 as i64) - 1)];
        assert!(t.apply_signed(&bad).is_err());
        assert_eq!(
            (t.get("new"), t.len(), t.digest()),
            (0, plain.len(), plain.digest())
        );
        let mut rng = 7u64;
        for step in 0..300usize {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (w, _) = &words[(rng >> 33) as usize % words.len()];
            let have = plain.get(w) as i64;
            let delta = match step % 4 {
                0 => -have,       // the word goes
                1 => -(have / 2), // lowered
                2 => 3,           // raised (back, if it went)
                _ => 1 + (step as i64 % 5),
            };
            let batch = vec![(w.clone(), delta), (format!("fresh{}", step % 7), 1)];
            t.apply_signed(&batch).unwrap();
            plain.apply_signed(&batch).unwrap();
            assert_eq!(t.get(w), plain.get(w), "{w} at step {step}");
            assert_eq!(
                (t.len(), t.digest()),
                (plain.len(), plain.digest()),
                "at {step}"
            );
        }
        let want: WordMap = plain.map().iter().map(|(w, n)| (w.into(), n)).collect();
        assert_eq!(whole(&t), want);
        assert_eq!(digest_of(t.view().iter()), t.digest());
        let top = best_of(plain.map().iter(), MAX_TOP);
        t.with_top(|list, _| assert!(list.iter().eq(top.iter().copied())));
    }
}
