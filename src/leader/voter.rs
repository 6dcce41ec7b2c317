//! What a leader does as a voter of a raft group (see [`crate::consensus`]): apply
//! committed entries and installed snapshots to its table, hand the engine copies of
//! it, start and stop the engine.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::{Leader, LeaderError, ShutdownError, word_hashes};
use crate::server::router::CountSource;
use crate::storage::batch::Batch;
use crate::storage::snapshot;
use crate::storage::table::CountMap;
use crate::words::Deltas;

impl Leader {
    /// A voter applies a committed raft entry: the next seq (the raft log is the
    /// write-ahead log here). Returns the seq.
    pub fn apply_committed(&self, deltas: Deltas) -> u64 {
        let s = &self.shared;
        let words = deltas.iter().map(|(_, n)| *n).sum();
        let hashes = word_hashes(&deltas);
        let seq = {
            let mut table = s.table.write();
            let batch = self.apply_locked(&mut table, deltas, &hashes);
            s.publisher.push(batch.clone());
            batch.seq
        };
        self.advance(seq, words);
        seq
    }

    /// A voter installs a raft snapshot from the leader: the table becomes `map` at
    /// `seq`. Counts only grow, so the difference is a batch of additions, which the
    /// publisher and replicas take like any other (the backlog restarts at it).
    pub fn install_table(&self, map: CountMap, seq: u64) {
        let s = &self.shared;
        // The difference is found under the read lock (readers go on meanwhile): only
        // the state machine writes a voter's table, one entry or snapshot at a time, so
        // nothing changes it before the write lock below.
        let deltas = {
            let table = s.table.read();
            if seq <= table.seq() {
                return;
            }
            let mut deltas = Deltas::new();
            for (w, n) in map.iter() {
                let old = table.map().get(w).unwrap_or(0);
                if n > old {
                    deltas.push((w.to_owned(), n - old));
                }
            }
            deltas
        };
        let hashes = word_hashes(&deltas);
        let mut table = s.table.write();
        table.apply_hashed(&deltas, &hashes, seq);
        let batch = Arc::new(Batch {
            seq,
            deltas,
            digest: Some(table.digest()),
        });
        s.backlog.lock().restart(batch.clone());
        s.publisher.push(batch);
        drop(table);
        self.advance(seq, 0);
    }

    /// The table's digest as it was at `seq`: now, or from the backlog (if it still
    /// holds that batch).
    pub fn digest_at(&self, seq: u64) -> Option<u64> {
        let s = &self.shared;
        let t = s.table.read();
        if t.seq() == seq {
            return Some(t.digest());
        }
        drop(t);
        s.backlog.lock().digest_at(seq)
    }

    /// A copy of the table and its seq (for a raft snapshot, taken off the lock).
    pub fn table_copy(&self) -> (CountMap, u64) {
        let t = self.shared.table.read();
        (t.map().clone(), t.seq())
    }

    /// What a snapshot of this node's table at `seq` says about itself.
    pub fn snapshot_meta(&self, seq: u64) -> snapshot::Meta {
        snapshot::Meta {
            tokenizer: self.shared.config.tokenizer,
            seq,
            incarnation: self.shared.incarnation,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.config.data_dir
    }

    /// The raft engine, on a voter of a raft group.
    pub fn consensus(&self) -> Option<&crate::consensus::Consensus> {
        self.shared.consensus.get()
    }

    /// Starts the raft engine (a voter: `config.raft` is set). Call once, after
    /// [`Leader::open`].
    pub async fn start_consensus(&self) -> Result<(), LeaderError> {
        let s = &self.shared;
        let Some(cfg) = s.config.raft.clone() else {
            return Ok(());
        };
        let boot = s.raft_boot.lock().take();
        let c = crate::consensus::Consensus::start(
            self.clone(),
            cfg,
            boot,
            s.config.wal.fsync,
            s.config.serving.peer_credential().cloned(),
            s.config.serving.client_tls.clone(),
        )
        .await
        .map_err(LeaderError::Raft)?;
        let _ = s.consensus.set(c);
        Ok(())
    }

    /// A voter's shutdown: stop the raft engine (nothing more is applied), publish the
    /// final snapshot for the local replicas. What it applied is in its raft log.
    pub(super) async fn shutdown_voter(
        &self,
        c: &crate::consensus::Consensus,
    ) -> Result<u64, ShutdownError> {
        let s = &self.shared;
        if let Err(e) = c.raft.shutdown().await {
            tracing::error!(error = %e, "stopping the raft engine");
        }
        s.replicas.shutdown().await;
        match self.flush_snapshot().await {
            Ok(p) => tracing::info!(seq = p, "final snapshot published"),
            Err(e) => tracing::error!(error = %e, "final snapshot failed"),
        }
        s.notifier_stop.cancel();
        let _ = fs::remove_file(&s.socket_path);
        Ok(self.seq())
    }
}
