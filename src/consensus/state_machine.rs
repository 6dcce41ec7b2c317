//! The raft state machine: the leader's table. Applying a committed entry counts its
//! words as the next seq (blank and membership entries take none, so every node
//! numbers the same batches the same way), unless its idempotency key was seen within
//! the window, in which case it answers the first write's seq and counts nothing.
//!
//! A raft snapshot is a memdb base snapshot file (the rkyv archive local replicas map)
//! plus a JSON record of the raft log id it reflects, the membership and the key
//! window. On disk: `raft/snapshot-<index>.memdb` and `raft/snapshot.json`, which names
//! it; the JSON is renamed in last, so it always names a whole file. Sent to a node
//! that fell behind as one stream: a [`crate::storage::container`] of the JSON and the
//! file.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rkyv::util::AlignedVec;
use serde::{Deserialize, Serialize};

use super::applier::Applier;
use super::keys::{KeyState, Keys, Seen, StoredKeys};
use super::types::{Applied, Entry, NodeId, Outcome, TypeConfig};
use crate::storage::container;
use crate::storage::counts::CountMap;
use crate::storage::snapshot;

pub const META_NAME: &str = "snapshot.json";
/// What `snapshot.json` holds (and what travels before the file).
#[derive(Serialize, Deserialize, Clone)]
pub struct StoredMeta {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    /// The memdb snapshot file beside it (in the raft directory).
    pub file: String,
    #[serde(flatten)]
    pub keys: StoredKeys,
}

/// What the state machine had on disk at start.
pub struct Loaded {
    pub stored: StoredMeta,
    /// The memdb snapshot file: the table at `stored.meta.last_log_id`.
    pub image: PathBuf,
}

/// Reads the raft snapshot in `dir`, if one was taken.
pub fn load(dir: &Path) -> Result<Option<Loaded>, String> {
    let meta_path = dir.join(META_NAME);
    let bytes = match fs::read(&meta_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", meta_path.display())),
    };
    let stored: StoredMeta = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a raft snapshot record: {e}", meta_path.display()))?;
    if stored.file.contains('/') {
        return Err(format!("{} names a file outside it", meta_path.display()));
    }
    let image = dir.join(&stored.file);
    Ok(Some(Loaded { stored, image }))
}

struct Inner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    keys: Keys,
}

/// The state machine handle openraft drives (cheap to clone).
#[derive(Clone)]
pub struct StateMachine {
    node: Arc<dyn Applier>,
    dir: PathBuf,
    inner: Arc<tokio::sync::Mutex<Inner>>,
    keys_len: Arc<AtomicUsize>,
}

fn sm_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snap_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

impl StateMachine {
    pub fn new(
        node: Arc<dyn Applier>,
        dir: PathBuf,
        loaded: Option<&StoredMeta>,
        keys: Keys,
    ) -> StateMachine {
        let inner = match loaded {
            Some(s) => Inner {
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                keys: keys.restore(&s.keys),
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
        }
    }

    /// Idempotency keys held now.
    pub fn keys_held(&self) -> usize {
        self.keys_len.load(Ordering::Relaxed)
    }

    /// Writes a snapshot's file and record into the raft directory, replacing the
    /// previous one (whose file is removed once the record no longer names it).
    fn store(&self, stored: &StoredMeta, image: &[u8]) -> std::io::Result<()> {
        let previous = load(&self.dir).ok().flatten().map(|l| l.stored.file);
        crate::fs::write_atomically(
            &self.dir,
            &stored.file,
            &format!(".{}.tmp", stored.file),
            image,
        )?;
        let json = serde_json::to_vec(stored).map_err(std::io::Error::other)?;
        crate::fs::write_atomically(&self.dir, META_NAME, &format!(".{META_NAME}.tmp"), &json)?;
        if let Some(old) = previous
            && old != stored.file
        {
            let _ = fs::remove_file(self.dir.join(old));
        }
        Ok(())
    }

    fn container(stored: &StoredMeta, image: &[u8]) -> Vec<u8> {
        let json = serde_json::to_vec(stored).expect("metadata serializes");
        container::pack(&json, image)
    }
}

/// Splits a received snapshot stream into its record and a validated table.
pub fn open_container(bytes: &[u8]) -> Result<(StoredMeta, AlignedVec<16>, CountMap), String> {
    let (json, file) = container::unpack(bytes)?;
    let stored: StoredMeta =
        serde_json::from_slice(json).map_err(|e| format!("raft snapshot record: {e}"))?;
    let mut image = AlignedVec::<16>::with_capacity(file.len());
    image.extend_from_slice(file);
    let map = decode_image(&image)?;
    Ok((stored, image, map))
}

/// Validates a memdb base snapshot image and copies its table out.
pub fn decode_image(image: &[u8]) -> Result<CountMap, String> {
    let (header, archived) = snapshot::validate(image).map_err(|e| e.to_string())?;
    if header.kind != snapshot::Kind::Base {
        return Err("a raft snapshot must be a base snapshot".into());
    }
    let mut map = CountMap::with_capacity(archived.len());
    for (w, n) in archived.iter() {
        map.insert_new(w.as_str(), n.to_native());
    }
    Ok(map)
}

fn file_name(last: Option<LogId<NodeId>>) -> String {
    let index = last.map_or(0, |l| l.index);
    format!("snapshot-{index:020}.memdb")
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // The table and the raft state at one point: applying holds `inner`.
        let (map, snapshot_of, stored) = {
            let inner = self.inner.lock().await;
            let (map, snapshot_of) = self.node.copy();
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    inner.last_applied.map_or(0, |l| l.index),
                    rand::random::<u32>()
                ),
            };
            let stored = StoredMeta {
                file: file_name(inner.last_applied),
                meta,
                keys: inner.keys.stored(),
            };
            (map, snapshot_of, stored)
        };
        let me = self.clone();
        let meta = stored.meta.clone();
        let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let image = snapshot::encode_entries(map.iter(), snapshot_of, None)
                .map_err(|e| e.to_string())?;
            me.store(&stored, &image).map_err(|e| e.to_string())?;
            tracing::info!(seq = snapshot_of.seq, words = map.len(), file = %stored.file, "raft snapshot taken");
            Ok(StateMachine::container(&stored, &image))
        })
        .await
        .map_err(sm_error)?
        .map_err(sm_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
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

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.inner.lock().await;
        let mut out = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => Applied {
                    seq: self.node.seq(),
                    outcome: Outcome::Counted,
                },
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    Applied {
                        seq: self.node.seq(),
                        outcome: Outcome::Counted,
                    }
                }
                EntryPayload::Normal(p) => {
                    let seen = match p.key.as_deref() {
                        Some(k) => inner.keys.check(k, p.at_ms),
                        None => KeyState::New,
                    };
                    match seen {
                        KeyState::Seen(s) if s.fingerprint == p.fingerprint => Applied {
                            seq: s.seq,
                            outcome: Outcome::Duplicate,
                        },
                        KeyState::Seen(s) => Applied {
                            seq: s.seq,
                            outcome: Outcome::KeyReused,
                        },
                        KeyState::Forgotten => Applied {
                            seq: self.node.seq(),
                            outcome: Outcome::KeyExpired,
                        },
                        KeyState::New => {
                            let deltas = Arc::try_unwrap(p.deltas).unwrap_or_else(|d| (*d).clone());
                            // No words: nothing to count, no seq taken; the key is kept.
                            let seq = if deltas.is_empty() {
                                self.node.seq()
                            } else {
                                self.node.apply(deltas)
                            };
                            if let Some(k) = p.key {
                                let seen = Seen {
                                    seq,
                                    fingerprint: p.fingerprint,
                                };
                                inner.keys.insert(&k, seen, p.at_ms);
                            }
                            Applied {
                                seq,
                                outcome: Outcome::Counted,
                            }
                        }
                    }
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

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let mut inner = self.inner.lock().await;
        let me = self.clone();
        let meta = meta.clone();
        let (stored, map, seq) = tokio::task::spawn_blocking(move || {
            let (mut stored, image, map) = open_container(&bytes)?;
            let seq = snapshot::read_header(&image, image.len() as u64)
                .map_err(|e| e.to_string())?
                .seq;
            stored.meta = meta;
            stored.file = file_name(stored.meta.last_log_id);
            me.store(&stored, &image).map_err(|e| e.to_string())?;
            Ok::<_, String>((stored, map, seq))
        })
        .await
        .map_err(snap_error)?
        .map_err(snap_error)?;
        tracing::info!(
            seq,
            words = map.len(),
            "installing a raft snapshot from the leader"
        );
        self.node.install(map, seq);
        inner.last_applied = stored.meta.last_log_id;
        inner.membership = stored.meta.last_membership.clone();
        let empty = Keys::new(
            std::time::Duration::from_millis(inner.keys.window_ms),
            inner.keys.max_bytes,
        );
        inner.keys = empty.restore(&stored.keys);
        self.keys_len.store(inner.keys.len(), Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<Snapshot<TypeConfig>>, String> {
            let Some(loaded) = load(&dir)? else {
                return Ok(None);
            };
            let image = fs::read(&loaded.image)
                .map_err(|e| format!("reading {}: {e}", loaded.image.display()))?;
            Ok(Some(Snapshot {
                meta: loaded.stored.meta.clone(),
                snapshot: Box::new(Cursor::new(StateMachine::container(&loaded.stored, &image))),
            }))
        })
        .await
        .map_err(snap_error)?
        .map_err(snap_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_round_trips_and_a_damaged_one_is_refused() {
        let mut map = CountMap::new();
        map.add("hello", 3);
        map.add("world", 1);
        let meta = snapshot::Meta {
            tokenizer: crate::words::Tokenizer::Unicode,
            seq: 7,
            incarnation: crate::consensus::types::group_incarnation("memdb"),
        };
        let image = snapshot::encode_entries(map.iter(), meta, None).unwrap();
        let stored = StoredMeta {
            meta: SnapshotMeta::default(),
            file: "snapshot-x.memdb".into(),
            keys: StoredKeys {
                keys: vec![("key".into(), 7, 42)],
                ..Default::default()
            },
        };
        let bytes = StateMachine::container(&stored, &image);
        let (back, _, decoded) = open_container(&bytes).unwrap();
        assert_eq!(back.keys.keys, stored.keys.keys);
        assert_eq!(decoded.get("hello"), Some(3));
        assert_eq!(decoded.len(), 2);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open_container(&bad).is_err());
        assert!(open_container(&bytes[..20]).is_err());
        assert!(open_container(b"not a snapshot at all").is_err());
    }
}
