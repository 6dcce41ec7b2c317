//! A table's top list kept up to date lazily, over a [`CountMap`] whose entry numbers
//! stay put between settlements: shared by the plain table ([`crate::storage::table`])
//! and the layered one ([`crate::storage::layered`], over its live layer).

use parking_lot::Mutex;

use crate::storage::counts::CountMap;
use crate::storage::top::TopWords;

/// Raises a writer settles into the top list itself.
const PENDING_MAX: usize = 1 << 18;

/// The top list and how much of `pending` it includes.
#[derive(Debug, Default, Clone)]
struct Settled {
    list: TopWords,
    /// `pending[..done]` are in the list.
    done: usize,
    /// Entry numbers seen while settling (cleared after), so that each word is ranked
    /// once, with its last count.
    seen: Vec<u64>,
}

impl Settled {
    /// Brings the list up to date with `pending`, each word once with its last count
    /// (counts only grow, so the last is the highest).
    fn settle(&mut self, map: &CountMap, pending: &[(u32, u64)]) {
        let fresh = &pending[self.done.min(pending.len())..];
        if fresh.is_empty() {
            return;
        }
        let words = map.len().div_ceil(64);
        if self.seen.len() < words {
            self.seen.resize(words, 0);
        }
        for &(i, count) in fresh.iter().rev() {
            if !self.list.may_enter(count) {
                continue;
            }
            let (slot, bit) = (i as usize / 64, 1u64 << (i % 64));
            if self.seen[slot] & bit != 0 {
                continue;
            }
            self.seen[slot] |= bit;
            self.list.raised(map.entry_at(i).0, count);
        }
        for &(i, _) in fresh {
            self.seen[i as usize / 64] = 0;
        }
        self.done = pending.len();
    }
}

/// The most frequent words, as of `pending[..settled]`, and the raises since.
#[derive(Debug, Default)]
pub struct Ranking {
    top: Mutex<Settled>,
    /// Counts raised since the top list was last settled with the writer's lock: each
    /// word's entry number and its count after the raise. A write only appends here;
    /// the work of ranking is done once per word for many writes, by the next reader
    /// of the top list (under the caller's read lock) or by a writer every
    /// [`PENDING_MAX`] raises.
    pending: Vec<(u32, u64)>,
}

impl Clone for Ranking {
    fn clone(&self) -> Self {
        Ranking {
            top: Mutex::new(self.top.lock().clone()),
            pending: self.pending.clone(),
        }
    }
}

impl Ranking {
    /// Starting from `list`, the top list of the words so far.
    pub fn new(list: TopWords) -> Self {
        Ranking {
            top: Mutex::new(Settled {
                list,
                ..Default::default()
            }),
            pending: Vec::new(),
        }
    }

    /// Entry `i` of `map` rose to `count`.
    pub fn raised(&mut self, map: &CountMap, i: u32, count: u64) {
        self.pending.push((i, count));
        if self.pending.len() >= PENDING_MAX {
            self.settle(map);
        }
    }

    /// Settles the pending raises into the list with the writer's lock, and forgets
    /// them: `map`'s entry numbers may change after this.
    pub fn settle(&mut self, map: &CountMap) {
        let top = self.top.get_mut();
        top.settle(map, &self.pending);
        top.done = 0;
        self.pending.clear();
    }

    /// The list itself, to change with the writer's lock (settle first).
    pub fn list_mut(&mut self) -> &mut TopWords {
        &mut self.top.get_mut().list
    }

    /// A word's count set from `before` to `after` by a signed delta (settle first):
    /// raises it in the list, or returns true when the list must be ranked again (a
    /// listed word fell, maybe below words the list never kept).
    pub fn set(&mut self, word: &str, before: u64, after: u64) -> bool {
        if after < before {
            self.list_mut().contains(word)
        } else {
            if after > before {
                self.list_mut().raised(word, after);
            }
            false
        }
    }

    /// Calls `f` with the list, brought up to date first, and whether it holds all
    /// `words` of the table.
    pub fn with_top<R>(
        &self,
        map: &CountMap,
        words: u64,
        f: impl FnOnce(&TopWords, bool) -> R,
    ) -> R {
        let mut top = self.top.lock();
        top.settle(map, &self.pending);
        f(&top.list, top.list.len() as u64 == words)
    }

    /// Calls `f` with the first `n` words in rank order that start with `prefix` (see
    /// [`crate::storage::top::select`]; `scan` walks the whole table when the list
    /// cannot say).
    pub fn with_top_words<'a, R, S>(
        &self,
        map: &CountMap,
        words: u64,
        n: usize,
        prefix: &str,
        scan: impl FnOnce() -> S,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> R
    where
        S: Iterator<Item = (&'a str, u64)>,
    {
        self.with_top(map, words, |top, complete| {
            // The scan's words outlive the list's: shorten them to its.
            let scan = || scan().map(|(w, c)| -> (&str, u64) { (w, c) });
            f(&crate::storage::top::select(
                top.iter(),
                complete,
                n,
                prefix,
                scan,
            ))
        })
    }

    /// [`Ranking::with_top_words`]'s answer if the list holds it; `None` when only a
    /// pass over the whole table can say.
    pub fn with_ranked_words<R>(
        &self,
        map: &CountMap,
        words: u64,
        n: usize,
        prefix: &str,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> Option<R> {
        self.with_top(map, words, |top, complete| {
            crate::storage::top::from_ranked(top.iter(), complete, n, prefix).map(|w| f(&w))
        })
    }
}
