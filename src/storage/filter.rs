//! A Bloom filter over a mapped delta's words, built when it is mapped: a lookup that
//! misses a delta (most of them: a delta holds a few words of the table) costs a few
//! bit tests instead of a probe into the file. A table's chain is several deltas deep,
//! and every word a leader writes for the first time after a publication is looked up
//! in each of them.

/// Bits per word: about 1% false positives with [`PROBES`] probes.
const BITS_PER_WORD: usize = 10;
const PROBES: u32 = 3;

/// See the module's documentation.
pub struct Filter {
    bits: Vec<u64>,
    /// `bits.len() * 64 - 1`; the length is a power of two.
    mask: u64,
}

/// The hash a filter is probed with (one per word, for every filter of a chain): the
/// same as the digest's ([`crate::storage::table::word_hash`]), so a write that has
/// one for its digest probes the chain with it.
pub use crate::storage::table::word_hash as hash;

impl Filter {
    /// A filter of `words`.
    pub fn of<'a>(len: usize, words: impl Iterator<Item = &'a str>) -> Self {
        let bits = (len.max(1) * BITS_PER_WORD).next_power_of_two().max(64);
        let mut f = Filter {
            bits: vec![0; bits / 64],
            mask: bits as u64 - 1,
        };
        for w in words {
            let h = hash(w);
            for i in f.positions(h) {
                f.bits[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        f
    }

    /// Double hashing: the probes of a hash.
    fn positions(&self, h: u64) -> impl Iterator<Item = u64> + use<> {
        let (a, b) = (h, h.rotate_left(32) | 1);
        let mask = self.mask;
        (0..PROBES as u64).map(move |i| a.wrapping_add(i.wrapping_mul(b)) & mask)
    }

    /// Whether the word whose [`hash`] is `h` may be in the set (`false`: it is not).
    pub fn may_hold(&self, h: u64) -> bool {
        self.positions(h)
            .all(|i| self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_word_and_few_others() {
        let words: Vec<String> = (0..10_000).map(|i| format!("w{i}")).collect();
        let f = Filter::of(words.len(), words.iter().map(|w| w.as_str()));
        assert!(
            words.iter().all(|w| f.may_hold(hash(w))),
            "no false negative"
        );
        let false_positives = (0..10_000)
            .filter(|i| f.may_hold(hash(&format!("other{i}"))))
            .count();
        assert!(false_positives < 300, "{false_positives} of 10,000");
        let empty = Filter::of(0, std::iter::empty());
        assert!(!empty.may_hold(hash("a")));
    }
}
