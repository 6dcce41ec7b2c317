//! The raft state machine: the leader's table. Applying a committed entry counts its
//! words as the next seq (blank and membership entries take none, so every node
//! numbers the same batches the same way), unless its idempotency key was seen within
//! the window, in which case it answers the first write's seq and counts nothing.
//!
//! A raft snapshot is the node's own files at an applied index, hard-linked into a
//! snapshot directory with a record of the raft state (see [`super::snapshot`]).
//! Taking one holds applying only while the table's words since the last publication
//! are written out and linked; installing one makes a received directory's files the
//! table (see [`super::transfer`] for how they travel).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};

use super::applier::Applier;
use super::keys::{KeyState, Keys, Seen};
use super::snapshot::{self, RECORD_NAME, Record};
use super::types::{Applied, Entry, NodeId, Outcome, SnapshotFiles, TypeConfig};

struct Inner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    keys: Keys,
}

/// The state machine handle openraft drives (cheap to clone).
#[derive(Clone)]
pub struct StateMachine {
    node: Arc<dyn Applier>,
    /// The raft directory, which holds the snapshot.
    dir: PathBuf,
    inner: Arc<tokio::sync::Mutex<Inner>>,
    keys_len: Arc<AtomicUsize>,
    /// The last snapshot this state machine failed to take or install, and why: the
    /// engine stops on it, and `/health` says why.
    failure: Arc<parking_lot::Mutex<Option<String>>>,
}

fn sm_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snap_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

impl StateMachine {
    /// On `node`, whose table was restored from the snapshot `loaded` (if any).
    pub fn new(
        node: Arc<dyn Applier>,
        dir: PathBuf,
        loaded: Option<&Record>,
        keys: Keys,
    ) -> StateMachine {
        let inner = match loaded {
            Some(r) => Inner {
                last_applied: r.meta.last_log_id,
                membership: r.meta.last_membership.clone(),
                keys: keys.restore(&r.keys),
            },
            None => Inner {
                last_applied: None,
                membership: StoredMembership::default(),
                keys,
            },
        };
        StateMachine {
            node,
            dir,
            keys_len: Arc::new(AtomicUsize::new(inner.keys.len())),
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            failure: Arc::default(),
        }
    }

    /// Why the last snapshot failed, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// Notes a failed snapshot, and passes the error on to the engine.
    fn failed(&self, what: &str, e: String) -> String {
        let why = format!("{what}: {e}");
        tracing::error!(error = %e, "{what}");
        *self.failure.lock() = Some(why.clone());
        why
    }

    /// Idempotency keys held now.
    pub fn keys_held(&self) -> usize {
        self.keys_len.load(Ordering::Relaxed)
    }

    /// The raft directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// Applies an entry's writes (`first`, then `more`): each is checked against the keys
/// seen (and the keys of the writes before it in the entry); the words of those to
/// count are counted together, as one seq, which each of them answers. One write alone
/// is counted as it came; several are merged in word order, the same on every voter.
fn apply_writes(
    keys: &mut Keys,
    node: &dyn Applier,
    first: super::types::Proposal,
    more: Vec<super::types::Proposal>,
) -> Vec<Applied> {
    enum Fate {
        Done(Applied),
        Count,
        /// The same key as a write before it in the entry, which is counted.
        Same(Outcome),
    }
    let writes: Vec<_> = std::iter::once(first).chain(more).collect();
    let mut fresh = std::collections::HashMap::<&str, u64>::new();
    let mut fates = Vec::with_capacity(writes.len());
    for p in &writes {
        let fate = match p.key.as_deref() {
            None => Fate::Count,
            Some(k) => match fresh.get(k) {
                Some(&fp) if fp == p.fingerprint => Fate::Same(Outcome::Duplicate),
                Some(_) => Fate::Same(Outcome::KeyReused),
                None => match keys.check(k, p.at_ms) {
                    KeyState::Seen(s) if s.fingerprint == p.fingerprint => Fate::Done(Applied {
                        seq: s.seq,
                        outcome: Outcome::Duplicate,
                    }),
                    KeyState::Seen(s) => Fate::Done(Applied {
                        seq: s.seq,
                        outcome: Outcome::KeyReused,
                    }),
                    KeyState::Forgotten => Fate::Done(Applied {
                        seq: node.seq(),
                        outcome: Outcome::KeyExpired,
                    }),
                    KeyState::New => {
                        fresh.insert(k, p.fingerprint);
                        Fate::Count
                    }
                },
            },
        };
        fates.push(fate);
    }
    let counted: Vec<&super::types::Proposal> = writes
        .iter()
        .zip(&fates)
        .filter(|(_, f)| matches!(f, Fate::Count))
        .map(|(p, _)| p)
        .collect();
    let deltas = match counted.as_slice() {
        [one] => (*one.deltas).clone(),
        many => {
            let mut all: crate::words::Deltas =
                many.iter().flat_map(|p| p.deltas.iter().cloned()).collect();
            all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            all.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 += later.1;
                }
                same
            });
            all
        }
    };
    // No words: nothing to count, no seq taken; the keys are kept.
    let seq = if deltas.is_empty() {
        node.seq()
    } else {
        node.apply(deltas)
    };
    for p in &counted {
        if let Some(k) = &p.key {
            let seen = Seen {
                seq,
                fingerprint: p.fingerprint,
            };
            keys.insert(k, seen, p.at_ms);
        }
    }
    let counted = Applied {
        seq,
        outcome: Outcome::Counted,
    };
    fates
        .into_iter()
        .map(|f| match f {
            Fate::Done(a) => a,
            Fate::Count => counted.clone(),
            Fate::Same(outcome) => Applied { seq, outcome },
        })
        .collect()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Links the table's files at the applied index into a new snapshot directory and
    /// writes its record. Applying waits meanwhile (the files must be the table at
    /// that index): the words since the last publication are written out, which is
    /// what a publication costs; nothing else is copied.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let inner = self.inner.lock().await;
        let index = inner.last_applied.map_or(0, |l| l.index);
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!("{index}-{:08x}", rand::random::<u32>()),
        };
        let keys = inner.keys.stored();
        let (node, raft_dir, m) = (self.node.clone(), self.dir.clone(), meta.clone());
        let (placed, seq) = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let staged = snapshot::building_dir(&raft_dir, index)
                .map_err(|e| format!("making a snapshot directory: {e}"))?;
            let taken = node.capture(&staged).and_then(|c| {
                let seq = c.chain.seq;
                let record = Record {
                    meta: m,
                    keys,
                    chain: c.chain,
                    checked: c.checked,
                };
                crate::fs::write_atomically(
                    &staged,
                    RECORD_NAME,
                    ".raft.meta.tmp",
                    &record.encode(),
                )
                .and_then(|_| snapshot::put_in_place(&raft_dir, &staged, index))
                .map(|placed| (placed, seq))
                .map_err(|e| format!("writing the snapshot: {e}"))
            });
            if taken.is_err() {
                snapshot::remove_dir(&staged);
            }
            taken
        })
        .await
        .map_err(sm_error)?
        .map_err(|e| sm_error(self.failed("taking a raft snapshot", e)))?;
        drop(inner);
        tracing::info!(index, seq, dir = %placed.display(), "raft snapshot taken");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFiles { dir: placed }),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner.lock().await;
        let mut out = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => vec![Applied {
                    seq: self.node.seq(),
                    outcome: Outcome::Counted,
                }],
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    vec![Applied {
                        seq: self.node.seq(),
                        outcome: Outcome::Counted,
                    }]
                }
                EntryPayload::Normal(mut p) => {
                    let more = std::mem::take(&mut p.more);
                    apply_writes(&mut inner.keys, &*self.node, p, more)
                }
            };
            out.push(applied);
        }
        self.keys_len.store(inner.keys.len(), Ordering::Relaxed);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Not used: a snapshot arrives as files (see [`super::transfer`]), installed
    /// with `Raft::install_full_snapshot`.
    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotFiles>, StorageError<NodeId>> {
        Err(snap_error("snapshots arrive as files, not as a stream"))
    }

    /// Puts the received directory in place as this node's snapshot, then makes its
    /// files the table.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotFiles>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock().await;
        let (node, raft_dir, want) = (self.node.clone(), self.dir.clone(), meta.clone());
        let record = tokio::task::spawn_blocking(move || -> Result<Record, String> {
            let record = Record::read(&snapshot.dir)?;
            if record.meta.last_log_id != want.last_log_id
                || record.meta.snapshot_id != want.snapshot_id
            {
                return Err("the snapshot's record is not the snapshot installed".into());
            }
            let index = want.last_log_id.map_or(0, |l| l.index);
            let placed = if snapshot.dir.file_name() == Some(snapshot::dir_name(index).as_ref()) {
                snapshot.dir
            } else {
                snapshot::put_in_place(&raft_dir, &snapshot.dir, index)
                    .map_err(|e| format!("placing the snapshot: {e}"))?
            };
            node.adopt(&placed, &record.chain, &record.checked)?;
            Ok(record)
        })
        .await
        .map_err(snap_error)?
        .map_err(|e| snap_error(self.failed("installing a raft snapshot", e)))?;
        tracing::info!(
            seq = record.chain.seq,
            words = record.chain.words,
            "installed a raft snapshot from the leader"
        );
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        let empty = Keys::new(
            std::time::Duration::from_millis(inner.keys.window_ms),
            inner.keys.max_bytes,
        );
        inner.keys = empty.restore(&record.keys);
        self.keys_len.store(inner.keys.len(), Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let dir = self.dir.clone();
        let current = tokio::task::spawn_blocking(move || snapshot::current(&dir))
            .await
            .map_err(snap_error)?
            .map_err(snap_error)?;
        Ok(current.map(|(dir, record)| Snapshot {
            meta: record.meta,
            snapshot: Box::new(SnapshotFiles { dir }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::Proposal;
    use std::collections::BTreeMap;

    /// A table that records each batch it is given.
    #[derive(Default)]
    struct Table {
        batches: parking_lot::Mutex<Vec<crate::words::Deltas>>,
    }

    impl Applier for Table {
        fn seq(&self) -> u64 {
            self.batches.lock().len() as u64
        }
        fn apply(&self, deltas: crate::words::Deltas) -> u64 {
            let mut b = self.batches.lock();
            b.push(deltas);
            b.len() as u64
        }
        fn capture(&self, _: &std::path::Path) -> Result<super::super::Captured, String> {
            Err("not in this test".into())
        }
        fn adopt(
            &self,
            _: &std::path::Path,
            _: &crate::protocol::Manifest,
            _: &[crate::storage::snapshot::checked::Checked],
        ) -> Result<(), String> {
            Err("not in this test".into())
        }
        fn digest_at(&self, _: u64) -> Option<u64> {
            None
        }
        fn tokenizer(&self) -> crate::words::Tokenizer {
            crate::words::Tokenizer::default()
        }
    }

    fn write(words: &[(&str, u64)], key: Option<&str>) -> Proposal {
        let deltas = words.iter().map(|(w, n)| (w.to_string(), *n)).collect();
        Proposal::new(deltas, key.map(str::to_owned))
    }

    fn outcomes(a: &[Applied]) -> Vec<(u64, Outcome)> {
        a.iter().map(|a| (a.seq, a.outcome)).collect()
    }

    #[test]
    fn an_entry_of_several_writes_counts_them_as_one_seq_each_under_its_own_key() {
        let table = Table::default();
        let mut keys = Keys::new(std::time::Duration::from_secs(3600), 1 << 20);
        let first = apply_writes(&mut keys, &table, write(&[("a", 1)], Some("k0")), vec![]);
        assert_eq!(outcomes(&first), vec![(1, Outcome::Counted)]);
        let answers = apply_writes(
            &mut keys,
            &table,
            write(&[("b", 2), ("a", 1)], Some("k1")),
            vec![
                write(&[("a", 1)], Some("k0")),           // seen before: not again
                write(&[("c", 1)], None),                 // no key
                write(&[("b", 2), ("a", 1)], Some("k1")), // the same key and words
                write(&[("z", 9)], Some("k1")),           // the same key, other words
                write(&[("a", 5)], Some("k2")),
            ],
        );
        assert_eq!(
            outcomes(&answers),
            vec![
                (2, Outcome::Counted),
                (1, Outcome::Duplicate),
                (2, Outcome::Counted),
                (2, Outcome::Duplicate),
                (2, Outcome::KeyReused),
                (2, Outcome::Counted),
            ]
        );
        // One batch, the counted writes' words merged in word order.
        let batches = table.batches.lock();
        assert_eq!(batches.len(), 2);
        let merged: BTreeMap<_, _> = batches[1].iter().cloned().collect();
        assert_eq!(
            batches[1]
                .iter()
                .map(|(w, _)| w.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        assert_eq!(
            merged,
            BTreeMap::from([("a".into(), 6), ("b".into(), 2), ("c".into(), 1)])
        );
        // The keys counted in the entry are remembered with its seq.
        drop(batches);
        let again = apply_writes(&mut keys, &table, write(&[("a", 5)], Some("k2")), vec![]);
        assert_eq!(outcomes(&again), vec![(2, Outcome::Duplicate)]);
    }

    #[test]
    fn an_entry_whose_writes_are_all_seen_takes_no_seq() {
        let table = Table::default();
        let mut keys = Keys::new(std::time::Duration::from_secs(3600), 1 << 20);
        apply_writes(&mut keys, &table, write(&[("a", 1)], Some("k")), vec![]);
        let answers = apply_writes(
            &mut keys,
            &table,
            write(&[("a", 1)], Some("k")),
            vec![write(&[("a", 1)], Some("k"))],
        );
        assert_eq!(
            outcomes(&answers),
            vec![(1, Outcome::Duplicate), (1, Outcome::Duplicate)]
        );
        assert_eq!(table.batches.lock().len(), 1);
    }
}
