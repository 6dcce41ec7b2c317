//! The most frequent words, exactly: the rank order (count descending, then word in
//! byte order), the leader's and network replicas' incremental top list, and the
//! selection every node kind answers `GET /top` with.
//!
//! Counts only grow on the write path, so a word can only climb: when a word's count
//! rises, only that word's rank changes, and it either was in the top list, enters it
//! (pushing out the last), or stays below it. A word below the list's last entry costs
//! one comparison. Anything that lowers a count (a legacy signed `/update`) rebuilds
//! the list from the table.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};

/// The most words `/top` answers with, and the length of every kept top list.
pub const MAX_TOP: usize = 10_000;
/// `/top`'s `n` when the query gives none.
pub const DEFAULT_TOP: usize = 10;

/// Rank order: the higher count first, then the word that sorts first (by bytes).
pub fn rank(a: (&str, u64), b: (&str, u64)) -> Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))
}

/// A sort key in rank order (derived order: count descending, then word).
type Key<W> = (Reverse<u64>, W);

/// The best `n` of `entries` (each word once), in rank order, holding at most `n`
/// candidates at a time: one comparison for an entry below the worst kept.
pub fn best_of<'a>(entries: impl Iterator<Item = (&'a str, u64)>, n: usize) -> Vec<(&'a str, u64)> {
    if n == 0 {
        return Vec::new();
    }
    // A max-heap whose top is the worst kept.
    let mut heap: BinaryHeap<Key<&'a str>> = BinaryHeap::with_capacity(n.min(1 << 16) + 1);
    for (word, count) in entries {
        let key = (Reverse(count), word);
        if heap.len() < n {
            heap.push(key);
        } else if let Some(mut worst) = heap.peek_mut()
            && key < *worst
        {
            *worst = key;
        }
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|(Reverse(c), w)| (w, c))
        .collect()
}

/// The top [`MAX_TOP`] words of a table, kept as counts rise.
#[derive(Clone, Default)]
pub struct TopWords {
    order: BTreeSet<Key<Box<str>>>,
    /// The same words, for their current count.
    members: HashMap<Box<str>, u64, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for TopWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl TopWords {
    /// The top list of `entries` (each word once).
    pub fn of<'a>(entries: impl Iterator<Item = (&'a str, u64)>) -> Self {
        let mut top = TopWords::default();
        for (w, c) in best_of(entries, MAX_TOP) {
            top.order.insert((Reverse(c), w.into()));
            top.members.insert(w.into(), c);
        }
        top
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, word: &str) -> bool {
        self.members.contains_key(word)
    }

    /// Whether a word whose count is now `count` may belong to the list: `false` means
    /// it is below the last entry whatever the word.
    pub fn may_enter(&self, count: u64) -> bool {
        self.order.len() < MAX_TOP
            || self
                .order
                .last()
                .is_none_or(|(Reverse(min), _)| count >= *min)
    }

    /// `word`'s count rose to `count`.
    pub fn raised(&mut self, word: &str, count: u64) {
        if self.order.len() >= MAX_TOP
            && let Some((Reverse(min), last)) = self.order.last()
            && (count, Reverse(word)) <= (*min, Reverse(&**last))
        {
            // Not above the last entry: a member is at least the last entry, and
            // rises above it when its count rises, so this word is not one.
            return;
        }
        if let Some((word, old)) = self.members.remove_entry(word) {
            let new = count.max(old);
            let key = (Reverse(old), word);
            let stored = self.order.take(&key).map(|(_, w)| w);
            let (_, word) = key;
            self.order
                .insert((Reverse(new), stored.unwrap_or_else(|| word.clone())));
            self.members.insert(word, new);
            return;
        }
        self.order.insert((Reverse(count), word.into()));
        self.members.insert(word.into(), count);
        if self.order.len() > MAX_TOP
            && let Some((_, out)) = self.order.pop_last()
        {
            self.members.remove(&out);
        }
    }

    /// The list in rank order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.order.iter().map(|(Reverse(c), w)| (&**w, *c))
    }
}

/// What `/top` answers: the first `n` words in rank order that start with `prefix`.
///
/// `ranked` is a top list: the exact top [`MAX_TOP`] words in rank order, or every
/// word when `complete`. When the list holds `n` matching words, or all there are,
/// those are the answer; otherwise (a rare prefix of a table larger than the list) the
/// words come from `scan`, a pass over the whole table.
pub fn select<'a, R, S>(
    ranked: R,
    complete: bool,
    n: usize,
    prefix: &str,
    scan: impl FnOnce() -> S,
) -> Vec<(&'a str, u64)>
where
    R: Iterator<Item = (&'a str, u64)>,
    S: Iterator<Item = (&'a str, u64)>,
{
    match from_ranked(ranked, complete, n, prefix) {
        Some(found) => found,
        None => scanned(scan(), n, prefix),
    }
}

/// [`select`]'s answer from the top list alone, if it holds one; `None` when only a
/// pass over the whole table can answer.
pub fn from_ranked<'a>(
    ranked: impl Iterator<Item = (&'a str, u64)>,
    complete: bool,
    n: usize,
    prefix: &str,
) -> Option<Vec<(&'a str, u64)>> {
    let found: Vec<_> = ranked
        .take(MAX_TOP)
        .filter(|(w, _)| w.starts_with(prefix))
        .take(n)
        .collect();
    (found.len() == n || complete).then_some(found)
}

/// The first `n` words in rank order that start with `prefix`, by a pass over `all`.
pub fn scanned<'a>(
    all: impl Iterator<Item = (&'a str, u64)>,
    n: usize,
    prefix: &str,
) -> Vec<(&'a str, u64)> {
    best_of(all.filter(|(w, _)| w.starts_with(prefix)), n)
}

/// Two top lists merged into the top list of the state they make together: `over`'s
/// words (a delta: the current counts of the words it holds) and `under`'s (a base)
/// that `shadowed` does not report as held by `over`. Exact for the first
/// [`MAX_TOP`] when each list is its own file's top [`MAX_TOP`] (or all of it):
/// a word of the state that `over` does not hold has its base count, and every word
/// above it in the state is above it in the base too (counts only grow).
pub fn merged<'a>(
    over: impl Iterator<Item = (&'a str, u64)>,
    under: impl Iterator<Item = (&'a str, u64)>,
    shadowed: impl Fn(&str) -> bool,
) -> impl Iterator<Item = (&'a str, u64)> {
    let mut over = over.peekable();
    let mut under = under.filter(move |(w, _)| !shadowed(w)).peekable();
    std::iter::from_fn(move || match (over.peek(), under.peek()) {
        (Some(&a), Some(&b)) => {
            if rank(a, b) == Ordering::Greater {
                under.next()
            } else {
                over.next()
            }
        }
        (Some(_), None) => over.next(),
        (None, _) => under.next(),
    })
    .take(MAX_TOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(map: &HashMap<String, u64>, n: usize, prefix: &str) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = map
            .iter()
            .filter(|(w, _)| w.starts_with(prefix))
            .map(|(w, c)| (w.clone(), *c))
            .collect();
        all.sort_by(|a, b| rank((&a.0, a.1), (&b.0, b.1)));
        all.truncate(n);
        all
    }

    fn owned(v: Vec<(&str, u64)>) -> Vec<(String, u64)> {
        v.into_iter().map(|(w, c)| (w.to_owned(), c)).collect()
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn rank_is_count_descending_then_word() {
        let mut v = vec![("b", 2), ("a", 1), ("c", 2), ("a2", 9), ("", 2)];
        v.sort_by(|a, b| rank(*a, *b));
        assert_eq!(v, vec![("a2", 9), ("", 2), ("b", 2), ("c", 2), ("a", 1)]);
        assert_eq!(best_of(v.clone().into_iter(), 2), vec![("a2", 9), ("", 2)]);
        assert_eq!(best_of(v.clone().into_iter(), 0), vec![]);
        assert_eq!(best_of(v.clone().into_iter(), 99).len(), 5);
    }

    /// A table of more words than the list holds, raised at random with ties: the
    /// kept list is always the table's exact top.
    #[test]
    fn the_kept_list_is_the_exact_top_as_counts_rise() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut map: HashMap<String, u64> = HashMap::new();
        let mut top = TopWords::default();
        let words = MAX_TOP * 3 / 2;
        for step in 0..(words * 6) {
            // Skewed: low word numbers are raised far more often.
            let r = rng.next();
            let i = (r % words as u64) * ((r >> 32) % words as u64) / words as u64;
            let word = format!("w{i}");
            let count = map.entry(word.clone()).or_insert(0);
            *count += 1 + (r >> 60) % 2;
            top.raised(&word, *count);
            if step % 20_000 == 0 || step == words * 6 - 1 {
                assert_eq!(top.len(), map.len().min(MAX_TOP));
                let got = owned(top.iter().collect());
                assert_eq!(got, expected(&map, MAX_TOP, ""), "at step {step}");
            }
        }
        assert!(map.len() > MAX_TOP, "the test must overflow the list");
        let rebuilt = TopWords::of(map.iter().map(|(w, c)| (w.as_str(), *c)));
        assert!(rebuilt.iter().eq(top.iter()));
        // A repeated report of the same count changes nothing.
        let (w, c) = top.iter().next().map(|(w, c)| (w.to_owned(), c)).unwrap();
        top.raised(&w, c);
        assert!(rebuilt.iter().eq(top.iter()));
    }

    #[test]
    fn select_uses_the_list_and_scans_only_when_it_must() {
        let mut map: HashMap<String, u64> = HashMap::new();
        for i in 0..(MAX_TOP + 500) {
            map.insert(format!("w{i:05}"), 1_000_000 - i as u64);
        }
        map.insert("rare".into(), 1);
        map.insert("rarer".into(), 1);
        let top = TopWords::of(map.iter().map(|(w, c)| (w.as_str(), *c)));
        let scanned = std::cell::Cell::new(false);
        let scan = || {
            scanned.set(true);
            map.iter().map(|(w, c)| (w.as_str(), *c))
        };
        let got = owned(select(top.iter(), false, 100, "", scan));
        assert_eq!(got, expected(&map, 100, ""));
        assert!(!scanned.get());
        let got = owned(select(top.iter(), false, 5, "w0001", scan));
        assert_eq!(got, expected(&map, 5, "w0001"));
        assert!(!scanned.get());
        // Below the list: only a scan finds them.
        let got = owned(select(top.iter(), false, 10, "rar", scan));
        assert_eq!(got, vec![("rare".into(), 1), ("rarer".into(), 1)]);
        assert!(scanned.get());
        // A complete list never scans.
        let small: HashMap<String, u64> = [("a".into(), 1), ("b".into(), 3)].into();
        let top = TopWords::of(small.iter().map(|(w, c)| (w.as_str(), *c)));
        let got = select(
            top.iter(),
            true,
            10,
            "z",
            || -> std::iter::Empty<(&str, u64)> { panic!("a complete list was scanned") },
        );
        assert!(got.is_empty());
    }

    /// A base's and a delta's lists, each its own file's top, merge into the exact top
    /// of the state they make.
    #[test]
    fn merged_lists_are_the_exact_top_of_base_and_delta() {
        let mut rng = Rng(42);
        for round in 0..5 {
            let mut base: HashMap<String, u64> = HashMap::new();
            for i in 0..(MAX_TOP * 2) {
                base.insert(format!("b{i}"), 1 + rng.next() % 500);
            }
            let mut delta: HashMap<String, u64> = HashMap::new();
            for _ in 0..(MAX_TOP * 3 / 2) {
                let r = rng.next();
                let i = r % (MAX_TOP as u64 * 3);
                let w = format!("b{i}");
                let now = base.get(&w).copied().unwrap_or(0);
                let e = delta.entry(w).or_insert(now);
                *e += 1 + (r >> 40) % 300;
            }
            let mut state = base.clone();
            state.extend(delta.clone());
            let bl = best_of(base.iter().map(|(w, c)| (w.as_str(), *c)), MAX_TOP);
            let dl = best_of(delta.iter().map(|(w, c)| (w.as_str(), *c)), MAX_TOP);
            let got =
                owned(merged(dl.into_iter(), bl.into_iter(), |w| delta.contains_key(w)).collect());
            assert_eq!(got, expected(&state, MAX_TOP, ""), "round {round}");
        }
    }
}
