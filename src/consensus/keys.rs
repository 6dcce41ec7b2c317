//! The idempotency keys a raft group remembers: each keyed write's key with its seq
//! and a fingerprint of its words, for a time by the leader's clock (carried in the
//! log, so every voter keeps and forgets the same keys) and within a byte bound; a
//! forgotten key is still recognised by its hash for a while, so a late retry is
//! refused rather than counted again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Keys forgotten (out of the window) that are still recognised, by a 64-bit hash,
/// so that a late retry is answered 409 rather than counted again: 8 MiB of hashes.
pub const FORGOTTEN_KEPT: usize = 1 << 20;
/// What a remembered key costs besides its bytes (its entries in the order and the
/// index), for the byte bound.
const KEY_OVERHEAD: usize = 64;

/// A remembered key's write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub seq: u64,
    pub fingerprint: u64,
}

/// The idempotency keys of recent keyed writes, each with its seq and a fingerprint of
/// its words (a key reused for other words is refused). Kept for `window_ms` by the
/// leader's clock as the entries carry it, and within `max_bytes`, the oldest
/// forgotten first; a forgotten key's hash is kept a while longer
/// ([`FORGOTTEN_KEPT`]). Every voter applies the same entries, so every voter keeps
/// and forgets the same keys.
#[derive(Clone)]
pub struct Keys {
    order: VecDeque<(Arc<str>, Seen, u64)>,
    index: HashMap<Arc<str>, Seen>,
    bytes: usize,
    forgotten: VecDeque<u64>,
    forgotten_set: std::collections::HashSet<u64>,
    /// The latest leader time seen (ms since the epoch); time never runs back here.
    now_ms: u64,
    pub(super) window_ms: u64,
    pub(super) max_bytes: usize,
}

/// What the key of a keyed write says about it.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyState {
    New,
    Seen(Seen),
    /// Seen once, and forgotten since: its write was counted then.
    Forgotten,
}

fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 0x006b_6579)
}

impl Keys {
    pub fn new(window: std::time::Duration, max_bytes: usize) -> Keys {
        Keys {
            order: VecDeque::new(),
            index: HashMap::new(),
            bytes: 0,
            forgotten: VecDeque::new(),
            forgotten_set: Default::default(),
            now_ms: 0,
            window_ms: window.as_millis() as u64,
            max_bytes,
        }
    }

    /// The window `stored` holds, under this one's limits.
    pub fn restore(mut self, stored: &StoredKeys) -> Keys {
        for (i, (key, seq, fp)) in stored.keys.iter().enumerate() {
            let at = stored.key_at.get(i).copied().unwrap_or(0);
            self.now_ms = self.now_ms.max(at);
            self.insert(
                key,
                Seen {
                    seq: *seq,
                    fingerprint: *fp,
                },
                at,
            );
        }
        self.now_ms = self.now_ms.max(stored.keys_now_ms);
        for h in &stored.forgotten {
            self.remember_forgotten(*h);
        }
        self
    }

    /// What `key` says, at leader time `at_ms` (which moves the window on first).
    pub fn check(&mut self, key: &str, at_ms: u64) -> KeyState {
        self.advance(at_ms);
        if let Some(seen) = self.index.get(key) {
            return KeyState::Seen(*seen);
        }
        if self.forgotten_set.contains(&key_hash(key)) {
            return KeyState::Forgotten;
        }
        KeyState::New
    }

    /// Moves the window to leader time `at_ms`, forgetting the keys it leaves.
    fn advance(&mut self, at_ms: u64) {
        self.now_ms = self.now_ms.max(at_ms);
        let horizon = self.now_ms.saturating_sub(self.window_ms);
        while self.order.front().is_some_and(|(_, _, at)| *at < horizon) {
            self.forget_oldest();
        }
    }

    pub fn insert(&mut self, key: &str, seen: Seen, at_ms: u64) {
        let key: Arc<str> = key.into();
        self.bytes += key.len() + KEY_OVERHEAD;
        self.index.insert(key.clone(), seen);
        self.order.push_back((key, seen, at_ms));
        while self.bytes > self.max_bytes && self.order.len() > 1 {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some((key, _, _)) = self.order.pop_front() else {
            return;
        };
        self.bytes -= key.len() + KEY_OVERHEAD;
        self.index.remove(&key);
        self.remember_forgotten(key_hash(&key));
    }

    fn remember_forgotten(&mut self, h: u64) {
        if self.forgotten_set.insert(h) {
            self.forgotten.push_back(h);
        }
        while self.forgotten.len() > FORGOTTEN_KEPT {
            let old = self.forgotten.pop_front().expect("non-empty");
            self.forgotten_set.remove(&old);
        }
    }

    /// The window as a snapshot holds it.
    pub fn stored(&self) -> StoredKeys {
        StoredKeys {
            keys: self
                .order
                .iter()
                .map(|(k, s, _)| (k.to_string(), s.seq, s.fingerprint))
                .collect(),
            key_at: self.order.iter().map(|(_, _, at)| *at).collect(),
            keys_now_ms: self.now_ms,
            forgotten: self.forgotten.iter().copied().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes of keys remembered (with their overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The key window as a snapshot holds it.
#[derive(Serialize, Deserialize, Clone, Default)]
pub struct StoredKeys {
    /// Key, seq, fingerprint: oldest first.
    pub keys: Vec<(String, u64, u64)>,
    /// When each was written (leader ms; a snapshot of an older version has none).
    #[serde(default)]
    pub key_at: Vec<u64>,
    /// The latest leader time the window saw.
    #[serde(default)]
    pub keys_now_ms: u64,
    /// Hashes of keys forgotten, still recognised.
    #[serde(default)]
    pub forgotten: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seq: u64) -> Seen {
        Seen {
            seq,
            fingerprint: seq * 10,
        }
    }

    #[test]
    fn keys_are_kept_for_the_window_by_the_leaders_clock_and_within_their_bytes() {
        let mut k = Keys::new(std::time::Duration::from_secs(60), 1 << 20);
        k.insert("a", seen(1), 1_000);
        k.insert("b", seen(2), 30_000);
        assert_eq!(k.check("a", 50_000), KeyState::Seen(seen(1)));
        // 61 s after "a" was written: gone, and recognised as forgotten.
        assert_eq!(k.check("a", 62_000), KeyState::Forgotten);
        assert_eq!(k.check("b", 62_000), KeyState::Seen(seen(2)));
        // A clock that runs back does not bring keys back.
        assert_eq!(k.check("a", 10_000), KeyState::Forgotten);
        assert_eq!(k.check("never", 10_000), KeyState::New);
        // The byte bound forgets the oldest first.
        let mut k = Keys::new(
            std::time::Duration::from_secs(3600),
            10 * (KEY_OVERHEAD + 3),
        );
        for i in 0..20u64 {
            k.insert(&format!("k{i:02}"), seen(i), 0);
        }
        assert_eq!(k.len(), 10);
        assert!(k.bytes() <= 10 * (KEY_OVERHEAD + 3));
        assert_eq!(k.check("k09", 0), KeyState::Forgotten);
        assert_eq!(k.check("k10", 0), KeyState::Seen(seen(10)));
        // A snapshot round trip keeps all of it.
        let again = Keys::new(
            std::time::Duration::from_secs(3600),
            10 * (KEY_OVERHEAD + 3),
        )
        .restore(&k.stored());
        let mut again = again;
        assert_eq!(again.len(), 10);
        assert_eq!(again.check("k09", 0), KeyState::Forgotten);
        assert_eq!(again.check("k19", 0), KeyState::Seen(seen(19)));
    }
}
