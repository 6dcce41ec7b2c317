//! The leader's bounded in-memory log of recent write batches.
//!
//! Network replicas that fell behind are resent what they missed from here. When a
//! replica is further behind than the backlog reaches, its sender reads the batches
//! back from the write-ahead log instead, and only when the log does not reach back
//! either does the replica full-sync.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::storage::batch::Batch;

/// What [`Backlog::since`] found after a given seq.
#[derive(Debug)]
pub enum Since {
    /// Nothing newer than the given seq.
    UpToDate,
    /// The batches that follow it, in order (possibly fewer than all, per the limits).
    Batches(Vec<Arc<Batch>>),
    /// Batches right after it were already evicted: a full sync is needed.
    TooOld,
}

/// Recent batches in seq order, with no gaps. Bounded by batch count and bytes.
#[derive(Debug)]
pub struct Backlog {
    batches: VecDeque<Arc<Batch>>,
    /// When each batch in `batches` was applied (for replica lag in seconds).
    applied: VecDeque<Instant>,
    bytes: usize,
    max_batches: usize,
    max_bytes: usize,
    /// The seq of the newest batch pushed (or the starting seq if none yet).
    last_seq: u64,
}

impl Backlog {
    /// An empty backlog whose next batch will be `start_seq + 1`.
    pub fn new(start_seq: u64, max_batches: usize, max_bytes: usize) -> Self {
        Backlog {
            batches: VecDeque::new(),
            applied: VecDeque::new(),
            bytes: 0,
            max_batches: max_batches.max(1),
            max_bytes,
            last_seq: start_seq,
        }
    }

    /// Appends the next batch. Panics if its seq does not follow the last one: the
    /// leader assigns seqs under the same lock that pushes, so that would be a bug.
    pub fn push(&mut self, batch: Arc<Batch>) {
        assert_eq!(
            batch.seq,
            self.last_seq + 1,
            "backlog seqs must be contiguous"
        );
        self.last_seq = batch.seq;
        self.bytes += batch.cost();
        self.batches.push_back(batch);
        self.applied.push_back(Instant::now());
        while self.batches.len() > self.max_batches
            || (self.bytes > self.max_bytes && self.batches.len() > 1)
        {
            let old = self.batches.pop_front().expect("non-empty");
            self.applied.pop_front();
            self.bytes -= old.cost();
        }
    }

    /// Starts over at `batch`, whose seq may skip ahead (a raft snapshot installed):
    /// replicas behind it re-sync.
    pub fn restart(&mut self, batch: Arc<Batch>) {
        self.batches.clear();
        self.applied.clear();
        self.bytes = 0;
        self.last_seq = batch.seq - 1;
        self.push(batch);
    }

    /// Starts over empty at `seq` (a raft snapshot's files installed, with no batch
    /// from the seq before): replicas behind it re-sync.
    pub fn skip_to(&mut self, seq: u64) {
        self.batches.clear();
        self.applied.clear();
        self.bytes = 0;
        self.last_seq = seq;
    }

    /// When the oldest batch a replica at `acked` lacks was applied: `None` if it lacks
    /// nothing. If that batch was already evicted, the oldest held (so the lag it
    /// gives is a lower bound); if none is held (a restarted leader), `None`.
    pub fn lacking_since(&self, acked: u64) -> Option<Instant> {
        if acked >= self.last_seq {
            return None;
        }
        let first = self.first_seq()?;
        let i = (acked + 1).saturating_sub(first) as usize;
        self.applied.get(i).copied()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The oldest seq still held, if any.
    pub fn first_seq(&self) -> Option<u64> {
        self.batches.front().map(|b| b.seq)
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// The table's digest right after batch `seq` was applied, if that batch is held
    /// and recorded one.
    pub fn digest_at(&self, seq: u64) -> Option<u64> {
        let first = self.first_seq()?;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.batches.get(i).and_then(|b| b.digest)
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batches after `after`, at most `max_batches` of them and stopping once
    /// `max_bytes` is reached (always at least one).
    pub fn since(&self, after: u64, max_batches: usize, max_bytes: usize) -> Since {
        if after >= self.last_seq {
            return Since::UpToDate;
        }
        let Some(first) = self.first_seq() else {
            return Since::TooOld;
        };
        if after + 1 < first {
            return Since::TooOld;
        }
        let start = (after + 1 - first) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for b in self.batches.range(start..) {
            if !out.is_empty() && (out.len() >= max_batches || bytes >= max_bytes) {
                break;
            }
            bytes += b.cost();
            out.push(b.clone());
        }
        Since::Batches(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> Arc<Batch> {
        Arc::new(Batch {
            seq,
            deltas: vec![(format!("w{seq}"), seq)],
            digest: None,
        })
    }

    fn seqs(s: Since) -> Vec<u64> {
        match s {
            Since::Batches(v) => v.iter().map(|b| b.seq).collect(),
            other => panic!("expected batches, got {other:?}"),
        }
    }

    #[test]
    fn since_returns_what_follows_in_order() {
        let mut b = Backlog::new(10, 100, usize::MAX);
        for s in 11..=15 {
            b.push(batch(s));
        }
        assert_eq!(seqs(b.since(10, 100, usize::MAX)), [11, 12, 13, 14, 15]);
        assert_eq!(seqs(b.since(13, 100, usize::MAX)), [14, 15]);
        assert_eq!(seqs(b.since(10, 2, usize::MAX)), [11, 12]);
        assert_eq!(seqs(b.since(10, 100, 1)), [11], "at least one batch");
        assert!(matches!(b.since(15, 100, 100), Since::UpToDate));
        assert!(matches!(b.since(99, 100, 100), Since::UpToDate));
        assert!(matches!(b.since(9, 100, 100), Since::TooOld));
    }

    #[test]
    fn eviction_by_count_and_bytes() {
        let mut b = Backlog::new(0, 3, usize::MAX);
        for s in 1..=5 {
            b.push(batch(s));
        }
        assert_eq!((b.first_seq(), b.last_seq(), b.len()), (Some(3), 5, 3));
        assert!(matches!(b.since(1, 10, usize::MAX), Since::TooOld));
        assert_eq!(seqs(b.since(2, 10, usize::MAX)), [3, 4, 5]);

        let one = batch(1).cost();
        let mut b = Backlog::new(0, 100, one * 2);
        for s in 1..=4 {
            b.push(batch(s));
        }
        assert_eq!(b.first_seq(), Some(3));
    }

    #[test]
    fn lacking_since_is_when_the_first_missing_batch_was_applied() {
        let mut b = Backlog::new(0, 3, usize::MAX);
        assert_eq!(b.lacking_since(0), None);
        let before = Instant::now();
        for s in 1..=5 {
            b.push(batch(s));
        }
        assert_eq!(b.lacking_since(5), None, "caught up");
        assert_eq!(b.lacking_since(3), Some(b.applied[1]), "seq 4");
        // 1 and 2 were evicted: the oldest held (3) bounds the lag from below.
        assert_eq!(b.lacking_since(0), Some(b.applied[0]));
        assert!(b.lacking_since(0).unwrap() >= before);
    }

    #[test]
    fn empty_backlog_after_start() {
        let b = Backlog::new(7, 10, 10);
        assert!(matches!(b.since(7, 1, 1), Since::UpToDate));
        assert!(matches!(b.since(3, 1, 1), Since::TooOld));
    }

    #[test]
    #[should_panic(expected = "contiguous")]
    fn gaps_are_a_bug() {
        let mut b = Backlog::new(0, 10, 1000);
        b.push(batch(2));
    }
}
