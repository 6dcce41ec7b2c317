//! What a network replica's table is: the leader's files, mapped, with the words its
//! pushes changed since in memory (a binary bootstrap, see `bootstrap.rs`); or, after a
//! JSON `/sync` from a leader that serves no files, every word in memory.

use crate::protocol::Incarnation;
use crate::server::source::SyncBody;
use crate::storage::layered::Layered;
use crate::storage::table::{DeltaError, Table};
use crate::words::Tokenizer;

pub(super) enum Counts {
    /// Every word in memory (a JSON sync).
    Whole(Table),
    /// The leader's files mapped, and the words changed since in memory.
    Files(Layered),
}

impl Counts {
    pub(super) fn seq(&self) -> u64 {
        match self {
            Counts::Whole(t) => t.seq(),
            Counts::Files(t) => t.seq(),
        }
    }

    pub(super) fn set_seq(&mut self, seq: u64) {
        match self {
            Counts::Whole(t) => t.set_seq(seq),
            Counts::Files(t) => t.set_seq(seq),
        }
    }

    pub(super) fn digest(&self) -> u64 {
        match self {
            Counts::Whole(t) => t.digest(),
            Counts::Files(t) => t.digest(),
        }
    }

    /// Distinct words.
    pub(super) fn len(&self) -> usize {
        match self {
            Counts::Whole(t) => t.len(),
            Counts::Files(t) => t.len(),
        }
    }

    pub(super) fn get(&self, word: &str) -> u64 {
        match self {
            Counts::Whole(t) => t.get(word),
            Counts::Files(t) => t.get(word),
        }
    }

    pub(super) fn apply_signed(&mut self, deltas: &[(String, i64)]) -> Result<(), DeltaError> {
        match self {
            Counts::Whole(t) => t.apply_signed(deltas),
            Counts::Files(t) => t.apply_signed(deltas),
        }
    }

    pub(super) fn with_ranked_words<R>(
        &self,
        n: usize,
        prefix: &str,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> Option<R> {
        match self {
            Counts::Whole(t) => t.with_ranked_words(n, prefix, f),
            Counts::Files(t) => t.with_ranked_words(n, prefix, f),
        }
    }

    pub(super) fn with_top_words<R>(
        &self,
        n: usize,
        prefix: &str,
        f: impl FnOnce(&[(&str, u64)]) -> R,
    ) -> R {
        match self {
            Counts::Whole(t) => t.with_top_words(n, prefix, f),
            Counts::Files(t) => t.with_top_words(n, prefix, f),
        }
    }

    /// Words held in anonymous memory (the rest, if any, is mapped).
    pub(super) fn in_memory(&self) -> usize {
        match self {
            Counts::Whole(t) => t.len(),
            Counts::Files(t) => t.live().len(),
        }
    }

    /// Bytes of the leader's files mapped.
    pub(super) fn mapped_bytes(&self) -> usize {
        match self {
            Counts::Whole(_) => 0,
            Counts::Files(t) => t.lower().files.len(),
        }
    }

    /// Bytes of mapped files `dir` no longer holds under their names.
    pub(super) fn held_bytes(&self, dir: &std::path::Path) -> u64 {
        match self {
            Counts::Whole(_) => 0,
            Counts::Files(t) => t.lower().files.held_bytes(dir),
        }
    }

    /// The whole table as `GET /sync` answers it: built from the map, or streamed from
    /// a view of the layers (the mapped files and a copy of the words changed since).
    pub(super) fn sync_body(&self, inc: Option<Incarnation>, tok: Tokenizer) -> SyncBody {
        match self {
            Counts::Whole(t) => SyncBody::of(t.map(), t.len() * 16, t.seq(), inc, tok),
            Counts::Files(t) => {
                SyncBody::streamed(std::sync::Arc::new(t.view()), tok, t.seq(), inc)
            }
        }
    }
}
