//! A write batch: what the leader applied under one seq. The unit of the log, the
//! backlog, the publisher's queue and every push to a replica.

use crate::words::Deltas;

/// One applied write: its sequence number and the per-word deltas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub seq: u64,
    pub deltas: Deltas,
    /// The leader's table digest once this batch is applied (see
    /// [`crate::storage::table::digest_of`]); `None` for a batch read from a log written before
    /// digests were recorded.
    pub digest: Option<u64>,
}

impl Batch {
    /// Heap bytes held, for the backlog's byte budget: each word's `(String, u64)`
    /// and its own allocation as malloc rounds it (16-byte steps, 8 bytes of header,
    /// 32 at least).
    pub fn cost(&self) -> usize {
        64 + self
            .deltas
            .iter()
            .map(|(w, _)| 32 + (w.len() + 8).next_multiple_of(16).max(32))
            .sum::<usize>()
    }
}
