//! The hash an archived table places its words by, keyed per file.
//!
//! rkyv's archived maps hash with a type that is built by `Default`, which leaves no
//! room for a key; its default, FxHash, is unkeyed and cheap to collide (words that
//! differ only in the high bits of their last 8 bytes agree in the low bits of their
//! hash, which place them), and words come from untrusted clients: a few thousand
//! crafted words would make a compaction quadratic and their lookups long scans. So a
//! file of format version 2 carries a random 128-bit key, and its table is built and
//! read with SipHash-1-3 under that key, which an attacker does not know; the key is
//! handed to the `Default` hasher through a thread-local set just around each use
//! ([`with_key`]). Files of version 1 (no key) keep FxHash.

use std::cell::Cell;
use std::hash::Hasher;

use rkyv::hash::FxHasher64;
use siphasher::sip::SipHasher13;

thread_local! {
    static KEY: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// Runs `f` with archived tables hashed under `key` (`None`: FxHash, version 1).
pub fn with_key<T>(key: Option<(u64, u64)>, f: impl FnOnce() -> T) -> T {
    let before = KEY.replace(key);
    let out = f();
    KEY.set(before);
    out
}

/// The hasher of every archived table (see the module docs).
pub enum ArchiveHasher {
    Fx(FxHasher64),
    Keyed(SipHasher13),
}

impl Default for ArchiveHasher {
    fn default() -> Self {
        match KEY.get() {
            None => ArchiveHasher::Fx(FxHasher64::default()),
            Some((k0, k1)) => ArchiveHasher::Keyed(SipHasher13::new_with_keys(k0, k1)),
        }
    }
}

impl Hasher for ArchiveHasher {
    fn finish(&self) -> u64 {
        match self {
            ArchiveHasher::Fx(h) => h.finish(),
            ArchiveHasher::Keyed(h) => h.finish(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        match self {
            ArchiveHasher::Fx(h) => h.write(bytes),
            ArchiveHasher::Keyed(h) => h.write(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn hash(word: &str) -> u64 {
        let mut h = ArchiveHasher::default();
        word.hash(&mut h);
        h.finish()
    }

    #[test]
    fn the_key_decides_the_hash_and_no_key_is_fxhash() {
        let fx = {
            let mut h = FxHasher64::default();
            "word".hash(&mut h);
            h.finish()
        };
        assert_eq!(with_key(None, || hash("word")), fx);
        let a = with_key(Some((1, 2)), || hash("word"));
        assert_eq!(a, with_key(Some((1, 2)), || hash("word")));
        assert_ne!(a, with_key(Some((1, 3)), || hash("word")));
        assert_ne!(a, fx);
    }

    #[test]
    fn fxhash_collisions_crafted_for_any_number_of_words_do_not_survive_a_key() {
        // FxHash over two 8-byte blocks is ((rotl(w1 * K, 5) ^ w2) * K): given any
        // first block, the second that keeps the hash is one xor away. Keep those that
        // are printable ASCII: words a client could post, all with one FxHash.
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mix = |w1: u64| (w1.wrapping_mul(K)).rotate_left(5);
        let (a1, a2) = (
            u64::from_le_bytes(*b"collide!"),
            u64::from_le_bytes(*b"12345678"),
        );
        let target = mix(a1) ^ a2;
        let mut words = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w1 = u64::from_le_bytes(x.to_le_bytes().map(|b| 0x21 + b % 94));
            let w2 = (target ^ mix(w1)).to_le_bytes();
            if w2.iter().all(|b| (0x21..0x7f).contains(b)) {
                let mut w = w1.to_le_bytes().to_vec();
                w.extend_from_slice(&w2);
                words.push(String::from_utf8(w).unwrap());
            }
        }
        assert!(words.len() >= 20, "found {}", words.len());
        let fx: std::collections::HashSet<u64> =
            words.iter().map(|w| with_key(None, || hash(w))).collect();
        assert_eq!(fx.len(), 1, "every crafted word has the same FxHash");
        let keyed: std::collections::HashSet<u64> = words
            .iter()
            .map(|w| with_key(Some((7, 9)), || hash(w)))
            .collect();
        assert_eq!(keyed.len(), words.len(), "under a key they all differ");
    }
}
