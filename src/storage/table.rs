//! The count table: word → count, plus the sequence number of the last batch applied.

use std::collections::HashMap;

pub use crate::storage::counts::CountMap;

use crate::storage::ranking::Ranking;
use crate::storage::top::TopWords;
use crate::words::Deltas;

/// A plain map of words, for what is not the table itself (a sync body, a snapshot's
/// changes). foldhash is randomly seeded per process, so crafted words cannot force
/// collisions (the words come from untrusted clients).
pub type WordMap = HashMap<String, u64, foldhash::fast::RandomState>;

/// Why a batch of signed deltas was refused. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta {delta} for {word:?} would make its count negative (count is {count})")]
    Negative {
        word: String,
        count: u64,
        delta: i64,
    },
    #[error("delta {delta} for {word:?} would overflow its count (count is {count})")]
    Overflow {
        word: String,
        count: u64,
        delta: i64,
    },
    #[error("empty word in deltas")]
    EmptyWord,
}

/// Counts and the sequence number they reflect. Not synchronised: callers wrap it in a
/// lock and keep `seq` and `map` changing together.
#[derive(Debug, Default)]
pub struct Table {
    map: CountMap,
    seq: u64,
    /// [`digest_of`] the map, kept up to date with every change.
    digest: u64,
    /// The top list (entry numbers are `map`'s).
    ranking: Ranking,
}

impl Clone for Table {
    fn clone(&self) -> Self {
        Table {
            map: self.map.clone(),
            seq: self.seq,
            digest: self.digest,
            ranking: self.ranking.clone(),
        }
    }
}

/// A word's part of the digest: a fixed (unseeded) hash, the same on every node.
pub fn word_hash(word: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(word.as_bytes())
}

/// An entry's part of the digest; nothing for a zero count (an absent word).
pub(crate) fn entry_digest(word_hash: u64, count: u64) -> u64 {
    if count == 0 {
        return 0;
    }
    // Non-linear in the count (a count moved from one word to another changes the
    // sum): a multiply-xorshift of the word's hash and the spread count.
    let h =
        (word_hash ^ count.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 31)
}

/// The order-independent digest of a whole table: the wrapping sum over its entries
/// of a 64-bit hash of `(word, count)`. Two tables with the same seq and different
/// digests have diverged, whatever the cause (a forged push, a bug, a flipped bit).
/// Kept incrementally in O(words changed); see `DEBUG DIGEST` in Redis.
pub fn digest_of<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    entries.into_iter().fold(0u64, |d, (w, n)| {
        d.wrapping_add(entry_digest(word_hash(w), n))
    })
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_parts(map: CountMap, seq: u64) -> Self {
        let digest = digest_of(map.iter());
        let ranking = Ranking::new(TopWords::of(map.iter()));
        Table {
            map,
            seq,
            digest,
            ranking,
        }
    }

    /// Calls `f` with the table's top list (see [`TopWords`]), brought up to date
    /// first, and whether it holds every word of the table.
    pub fn with_top<R>(&self, f: impl FnOnce(&TopWords, bool) -> R) -> R {
        self.ranking.with_top(&self.map, self.map.len() as u64, f)
    }

    /// Calls `f` with the first `n` words in rank order that start with `prefix` (see
    /// [`crate::storage::top::select`]).
    pub fn with_top_words<R>(
        &self,
        n: usize,
        prefix: &str,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> R {
        let words = self.map.len() as u64;
        let scan = || self.map.iter();
        self.ranking
            .with_top_words(&self.map, words, n, prefix, scan, f)
    }

    /// Calls `f` with [`Table::with_top_words`]'s answer if the top list holds it;
    /// `None` when only a pass over the whole table can answer (which the caller makes
    /// without this table's lock).
    pub fn with_ranked_words<R>(
        &self,
        n: usize,
        prefix: &str,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> Option<R> {
        let words = self.map.len() as u64;
        self.ranking
            .with_ranked_words(&self.map, words, n, prefix, f)
    }

    /// The table's digest (see [`digest_of`]).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn map(&self) -> &CountMap {
        &self.map
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, word: &str) -> u64 {
        self.map.get(word).unwrap_or(0)
    }

    /// Applies the positive deltas of batch `seq`. Counts saturate at `u64::MAX` rather
    /// than wrap (2^64 words will not be posted, but a wrap would be silent corruption).
    pub fn apply(&mut self, deltas: &Deltas, seq: u64) {
        let hashes: Vec<u64> = deltas.iter().map(|(w, _)| word_hash(w)).collect();
        self.apply_hashed(deltas, &hashes, seq);
    }

    /// [`Table::apply`] with each word's [`word_hash`] computed beforehand (outside the
    /// lock the caller holds around this: the digest then costs the critical section
    /// only a few multiplications per word).
    pub fn apply_hashed(&mut self, deltas: &Deltas, hashes: &[u64], seq: u64) {
        debug_assert_eq!(deltas.len(), hashes.len());
        let mut digest = self.digest;
        for ((word, n), &h) in deltas.iter().zip(hashes) {
            let (i, before, after) = self.map.add_indexed(word, *n);
            self.ranking.raised(&self.map, i, after);
            digest = digest
                .wrapping_sub(entry_digest(h, before))
                .wrapping_add(entry_digest(h, after));
        }
        self.digest = digest;
        self.seq = seq;
    }

    /// Applies signed deltas atomically: either every delta is applied or none is.
    /// Does not change `seq`; the caller decides what the batch's number is.
    pub fn apply_signed(&mut self, deltas: &[(String, i64)]) -> Result<(), DeltaError> {
        let staged = stage_signed(deltas, |w| self.get(w))?;
        // Entry numbers change when a word goes: none may be pending past here.
        self.ranking.settle(&self.map);
        let mut lowered = false;
        for (word, count) in staged {
            let before = self.get(word);
            lowered |= self.ranking.set(word, before, count);
            self.digest = moved(self.digest, word, before, count);
            self.map.set(word, count);
        }
        if lowered {
            self.ranking = Ranking::new(TopWords::of(self.map.iter()));
        }
        Ok(())
    }

    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    pub fn replace(&mut self, map: CountMap, seq: u64) {
        *self = Table::from_parts(map, seq);
    }
}

/// `digest` with `word`'s count moved from `before` to `after`.
pub(crate) fn moved(digest: u64, word: &str, before: u64, after: u64) -> u64 {
    let h = word_hash(word);
    digest
        .wrapping_sub(entry_digest(h, before))
        .wrapping_add(entry_digest(h, after))
}

/// Each word of a signed batch with its count after it (`get` gives the count before),
/// or why the batch is refused. Staged on a scratch map, nothing applied: a batch may
/// name a word twice and cross a bound only in sum.
pub(crate) fn stage_signed(
    deltas: &[(String, i64)],
    get: impl Fn(&str) -> u64,
) -> Result<HashMap<&str, u64>, DeltaError> {
    let mut staged: HashMap<&str, u64> = HashMap::new();
    for (word, delta) in deltas {
        if word.is_empty() {
            return Err(DeltaError::EmptyWord);
        }
        let count = *staged.entry(word.as_str()).or_insert_with(|| get(word));
        staged.insert(word.as_str(), check_delta(word, count, *delta)?);
    }
    Ok(staged)
}

fn check_delta(word: &str, count: u64, delta: i64) -> Result<u64, DeltaError> {
    let next = if delta >= 0 {
        count.checked_add(delta as u64)
    } else {
        count.checked_sub(delta.unsigned_abs())
    };
    next.ok_or_else(|| {
        let word = word.to_owned();
        if delta < 0 {
            DeltaError::Negative { word, count, delta }
        } else {
            DeltaError::Overflow { word, count, delta }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Batches of up to `per` distinct words out of `words`, skewed towards the first
    /// (a product of two uniform draws), each counted 1 to 4: many raises of a few
    /// words and a long tail. The same sequence every run.
    pub(crate) fn skewed_batches(words: u64, per: usize) -> impl FnMut() -> Vec<(String, u64)> {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        move || {
            (0..per)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let i = (rng % words) * ((rng >> 32) % words) / words;
                    (format!("w{i}"), 1 + (rng >> 62))
                })
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect()
        }
    }

    fn recomputed(t: &Table) -> u64 {
        digest_of(t.map().iter())
    }

    #[test]
    fn the_digest_follows_every_change_and_ignores_order() {
        let mut a = Table::new();
        let mut b = Table::new();
        assert_eq!(a.digest(), 0);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut batches = Vec::new();
        for seq in 1..=200 {
            let deltas: Vec<(String, u64)> = (0..5)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (format!("w{}", rng % 50), rng % 3 + 1)
                })
                .collect();
            a.apply(&deltas, seq);
            assert_eq!(a.digest(), recomputed(&a), "after batch {seq}");
            batches.push(deltas);
        }
        // The same counts reached in another order: the same digest.
        for d in batches.iter().rev() {
            b.apply(d, 0);
        }
        assert_eq!(a.map(), b.map());
        assert_eq!(a.digest(), b.digest());
        // Signed deltas, down to zero (the word goes) and back.
        let n = a.get("w7") as i64;
        a.apply_signed(&[("w7".into(), -n), ("new".into(), 4)])
            .unwrap();
        assert_eq!((a.get("w7"), a.digest()), (0, recomputed(&a)));
        // The top list followed every change, the fall to zero included.
        let fresh = TopWords::of(a.map().iter());
        a.with_top(|top, complete| {
            assert!(top.iter().eq(fresh.iter()), "{top:?} vs {fresh:?}");
            assert!(complete && !top.contains("w7"));
        });
        // One forged count, or a word moved to another: a different digest.
        let mut forged = b.clone();
        forged.apply_signed(&[("w3".into(), 1)]).unwrap();
        assert_ne!(forged.digest(), b.digest());
        let mut moved = b.clone();
        moved
            .apply_signed(&[("w3".into(), -1), ("w4".into(), 1)])
            .unwrap();
        assert_ne!(moved.digest(), b.digest());
        let rebuilt = Table::from_parts(b.map().clone(), 9);
        assert_eq!(rebuilt.digest(), b.digest());
    }

    /// The top list, settled by readers now and then and by the writer past
    /// `PENDING_MAX` raises, is always the table's exact top.
    #[test]
    fn the_top_list_follows_the_table() {
        use crate::storage::top::{MAX_TOP, best_of};
        let mut t = Table::new();
        let mut batches = skewed_batches(MAX_TOP as u64 * 3 / 2, 100);
        for seq in 1..=3_000u64 {
            let deltas = batches();
            t.apply(&deltas, seq);
            if seq % 700 == 0 || seq == 3_000 {
                let want = best_of(t.map().iter(), MAX_TOP);
                t.with_top(|top, complete| {
                    assert!(top.iter().eq(want.iter().copied()), "at seq {seq}");
                    assert!(!complete);
                });
            }
        }
        assert!(t.len() > MAX_TOP);
        // A clone keeps what was pending.
        t.apply(&vec![("zzz".into(), 1 << 40)], 3_001);
        let c = t.clone();
        c.with_top(|top, _| assert_eq!(top.iter().next(), Some(("zzz", 1 << 40))));
    }

    #[test]
    fn apply_adds_and_sets_seq() {
        let mut t = Table::new();
        t.apply(&vec![("a".into(), 2), ("b".into(), 1)], 1);
        t.apply(&vec![("a".into(), 3)], 2);
        assert_eq!((t.get("a"), t.get("b"), t.get("c")), (5, 1, 0));
        assert_eq!(t.seq(), 2);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn apply_saturates_instead_of_wrapping() {
        let mut t = Table::new();
        t.apply(&vec![("a".into(), u64::MAX - 1)], 1);
        t.apply(&vec![("a".into(), 5)], 2);
        assert_eq!(t.get("a"), u64::MAX);
    }

    #[test]
    fn signed_deltas_are_all_or_nothing() {
        let mut t = Table::new();
        t.apply(&vec![("a".into(), 2)], 1);
        let err = t
            .apply_signed(&[("b".into(), 4), ("a".into(), -3)])
            .unwrap_err();
        assert!(matches!(err, DeltaError::Negative { .. }), "{err}");
        assert_eq!((t.get("a"), t.get("b")), (2, 0));
        // Repeats that cross zero only in sum are refused too.
        let err = t
            .apply_signed(&[("a".into(), -2), ("a".into(), -1)])
            .unwrap_err();
        assert!(matches!(err, DeltaError::Negative { .. }));
        assert_eq!(t.get("a"), 2);
        // 2 + (2^63 - 1) fits; adding 2^63 - 1 again reaches 2^64, one past u64::MAX.
        t.apply_signed(&[("a".into(), i64::MAX)]).unwrap();
        assert_eq!(t.get("a"), 2 + i64::MAX as u64);
        let err = t.apply_signed(&[("a".into(), i64::MAX)]).unwrap_err();
        assert!(matches!(err, DeltaError::Overflow { .. }));
        assert_eq!(t.get("a"), 2 + i64::MAX as u64);
        assert_eq!(
            t.apply_signed(&[(String::new(), 1)]),
            Err(DeltaError::EmptyWord)
        );
    }

    #[test]
    fn signed_deltas_to_zero_remove_the_word() {
        let mut t = Table::new();
        t.apply(&vec![("a".into(), 2)], 1);
        t.apply_signed(&[("a".into(), -2), ("b".into(), 1)])
            .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("b"), 1);
        assert_eq!(t.seq(), 1, "apply_signed leaves seq to the caller");
    }
}
