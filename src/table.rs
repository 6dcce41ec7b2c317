//! The count table: word → count, plus the sequence number of the last batch applied.

use std::collections::HashMap;

use crate::words::Deltas;

/// The map every node keeps. foldhash is randomly seeded per process, so crafted words
/// cannot force collisions (the words come from untrusted clients).
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
#[derive(Debug, Default, Clone)]
pub struct Table {
    map: WordMap,
    seq: u64,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_parts(map: WordMap, seq: u64) -> Self {
        Table { map, seq }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn map(&self) -> &WordMap {
        &self.map
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, word: &str) -> u64 {
        self.map.get(word).copied().unwrap_or(0)
    }

    /// Applies the positive deltas of batch `seq`. Counts saturate at `u64::MAX` rather
    /// than wrap (2^64 words will not be posted, but a wrap would be silent corruption).
    pub fn apply(&mut self, deltas: &Deltas, seq: u64) {
        for (word, n) in deltas {
            match self.map.get_mut(word.as_str()) {
                Some(c) => *c = c.saturating_add(*n),
                None => {
                    self.map.insert(word.clone(), *n);
                }
            }
        }
        self.seq = seq;
    }

    /// Applies signed deltas atomically: either every delta is applied or none is.
    /// Does not change `seq`; the caller decides what the batch's number is.
    pub fn apply_signed(&mut self, deltas: &[(String, i64)]) -> Result<(), DeltaError> {
        // Stage on a scratch map first: a batch may name a word twice and cross a bound
        // only in sum.
        let mut staged: HashMap<&str, u64> = HashMap::new();
        for (word, delta) in deltas {
            if word.is_empty() {
                return Err(DeltaError::EmptyWord);
            }
            let count = *staged
                .entry(word.as_str())
                .or_insert_with(|| self.get(word));
            let next = check_delta(word, count, *delta)?;
            staged.insert(word.as_str(), next);
        }
        for (word, count) in staged {
            if count == 0 {
                self.map.remove(word);
            } else if let Some(c) = self.map.get_mut(word) {
                *c = count;
            } else {
                self.map.insert(word.to_owned(), count);
            }
        }
        Ok(())
    }

    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    pub fn replace(&mut self, map: WordMap, seq: u64) {
        self.map = map;
        self.seq = seq;
    }
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
mod tests {
    use super::*;

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
