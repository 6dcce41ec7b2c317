//! A leader's counting state: the table and its seq, and what follows every applied
//! batch (the backlog for network replicas, the publisher for local ones, the seq's
//! watchers). Both write paths end here: a single leader's ingest and, on a voter,
//! the raft state machine (through [`crate::consensus::Applier`], see `voter.rs`).
//! It holds nothing of the node around it (no log, no raft engine), so the engine can
//! hold it without a loop back to the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::backlog::Backlog;
use super::publisher::Publisher;
use crate::protocol::Incarnation;
use crate::storage::batch::Batch;
use crate::storage::layered::Layered;
use crate::storage::snapshot;
use crate::words::{Deltas, Tokenizer};

/// See the module's documentation. Fields are the leader's to use; handlers go
/// through [`super::node::Leader`]'s methods.
pub struct State {
    /// The table: the files on disk and the words changed since (see
    /// [`crate::storage::layered`]), shared with the publisher, which swaps layers in
    /// under the write lock. parking_lot, never held across `.await`; the write lock is
    /// held only to apply one batch and enqueue it, so that seq order = apply order =
    /// queue order.
    ///
    /// Lock order: `table`, then `backlog` (and the publisher's queue). The backlog is
    /// also locked by the replication senders and reports, which never hold a link's
    /// or the link list's lock while they do.
    pub(super) table: Arc<RwLock<Layered>>,
    pub(super) backlog: Arc<Mutex<Backlog>>,
    /// The latest applied seq, for replication senders and `min_seq` readers.
    pub(super) seq_tx: watch::Sender<u64>,
    pub(super) publisher: Publisher,
    pub(super) tokenizer: Tokenizer,
    pub(super) incarnation: Incarnation,
    pub(super) words_ingested: AtomicU64,
    pub(super) posts: AtomicU64,
}

/// Each word's hash, computed before the table's lock is taken.
pub(super) fn word_hashes(deltas: &Deltas) -> Vec<u64> {
    deltas
        .iter()
        .map(|(w, _)| crate::storage::table::word_hash(w))
        .collect()
}

impl State {
    /// The seq of the last batch applied.
    pub fn seq(&self) -> u64 {
        self.table.read().seq()
    }

    /// Applies `deltas` as the next seq under the table's write lock and queues the
    /// batch for the replicas.
    pub(super) fn apply_locked(
        &self,
        table: &mut Layered,
        deltas: Deltas,
        hashes: &[u64],
    ) -> Arc<Batch> {
        let seq = table.seq() + 1;
        table.apply_hashed(&deltas, hashes, seq);
        let batch = Arc::new(Batch {
            seq,
            deltas,
            digest: Some(table.digest()),
        });
        self.backlog.lock().push(batch.clone());
        batch
    }

    /// Tells `min_seq` readers and the senders about `seq`, and counts the write.
    pub(super) fn advance(&self, seq: u64, words: u64) {
        self.seq_tx.send_if_modified(|cur| {
            let newer = seq > *cur;
            if newer {
                *cur = seq;
            }
            newer
        });
        self.words_ingested.fetch_add(words, Ordering::Relaxed);
        self.posts.fetch_add(1, Ordering::Relaxed);
    }

    /// What a snapshot of this table at `seq` says about itself.
    pub(super) fn snapshot_meta(&self, seq: u64) -> snapshot::Meta {
        snapshot::Meta {
            tokenizer: self.tokenizer,
            seq,
            incarnation: self.incarnation,
        }
    }
}
