//! What a leader's state does as a voter of a raft group (see [`crate::consensus`]):
//! the raft state machine applies committed entries and installed snapshots to it,
//! and takes copies of it for snapshots, through [`Applier`].

use std::sync::Arc;

use super::state::{State, word_hashes};
use crate::consensus::Applier;
use crate::storage::batch::Batch;
use crate::storage::snapshot;
use crate::storage::table::CountMap;
use crate::words::{Deltas, Tokenizer};

impl Applier for State {
    fn seq(&self) -> u64 {
        State::seq(self)
    }

    /// A committed raft entry becomes the next seq (the raft log is the write-ahead
    /// log here).
    fn apply(&self, deltas: Deltas) -> u64 {
        let words = deltas.iter().map(|(_, n)| *n).sum();
        let hashes = word_hashes(&deltas);
        let seq = {
            let mut table = self.table.write();
            self.apply_locked(&mut table, deltas, &hashes).seq
        };
        self.advance(seq, words);
        seq
    }

    /// The table becomes `map` at `seq`. Counts only grow, so the difference is a
    /// batch of additions, which the publisher and replicas take like any other (the
    /// backlog restarts at it).
    fn install(&self, map: CountMap, seq: u64) {
        // The difference is found under the read lock (readers go on meanwhile): only
        // the state machine writes a voter's table, one entry or snapshot at a time, so
        // nothing changes it before the write lock below.
        let deltas = {
            let table = self.table.read();
            if seq <= table.seq() {
                return;
            }
            let mut deltas = Deltas::new();
            for (w, n) in map.iter() {
                let old = table.get(w);
                if n > old {
                    deltas.push((w.to_owned(), n - old));
                }
            }
            deltas
        };
        let hashes = word_hashes(&deltas);
        let mut table = self.table.write();
        table.apply_hashed(&deltas, &hashes, seq);
        let batch = Arc::new(Batch {
            seq,
            deltas,
            digest: Some(table.digest()),
        });
        self.backlog.lock().restart(batch);
        drop(table);
        self.advance(seq, 0);
    }

    /// Walks the table's layers without its lock (a view of them at one seq).
    fn copy(&self) -> (CountMap, snapshot::Meta) {
        let view = self.table.read().view();
        let mut map = CountMap::new();
        for (w, n) in view.iter() {
            map.insert_new(w, n);
        }
        (map, self.snapshot_meta(view.seq()))
    }

    /// Now, or from the backlog (if it still holds that batch).
    fn digest_at(&self, seq: u64) -> Option<u64> {
        let t = self.table.read();
        if t.seq() == seq {
            return Some(t.digest());
        }
        drop(t);
        self.backlog.lock().digest_at(seq)
    }

    fn tokenizer(&self) -> Tokenizer {
        self.tokenizer
    }
}
