//! A raft snapshot on disk: the node's own published files at one applied index, hard
//! linked (no copy of the table is made, in memory or on disk), and a record of what
//! raft says about them.
//!
//! ```text
//! raft/
//!   snapshot-<index, 20 digits>/   the snapshot (one; an older one goes once a newer is in place)
//!     snapshot.memdb               the base   } hard links of the node's chain at the
//!     delta.memdb                  the delta  } seq of the applied index
//!     recent-<seq>.memdb …         the recent deltas, oldest first
//!     raft.meta                    the record (see below)
//!   .building-<index>-<nonce>/     a snapshot being taken (removed at start)
//!   .receiving/                    a snapshot being downloaded from the leader (kept:
//!                                  a download cut short resumes from its parts)
//! ```
//!
//! A snapshot directory is complete when it has its name: it is built under a dot
//! name, its files and the directory synced, and renamed into place. A receiving
//! voter downloads the files (see [`super::transfer`]) and installs them through
//! openraft's snapshot API as a directory like this one.
//!
//! **The record** (`raft.meta`), binary, little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic b"MEMDBRM1"
//!      8     4  format version (1)
//!     12     …  one frame (see crate::storage::frame: length u32, xxh3-64, payload)
//! payload:
//!      0     4  n: length of the head
//!      4     n  the head, JSON: {"meta": openraft's SnapshotMeta (last log id,
//!               membership, snapshot id), "chain": the files' manifest (seq, digest,
//!               words, tokenizer, each file's name, length and checksum), "checked":
//!               [[checksum, payload length, digest of the table it completes], …] per
//!               file, base first}
//!    4+n     8  the key window's latest leader time, ms
//!            4  k: keys remembered; then k times: u32 length, the key's bytes,
//!               u64 seq, u64 fingerprint, u64 when written (leader ms)
//!            4  f: forgotten keys' hashes; then f times u64
//! ```
//!
//! The head is small (the membership, a few file names) and JSON keeps openraft's
//! own types in their own serde form; the key window, up to `--raft-key-bytes` of
//! keys and a million forgotten hashes, is binary. A snapshot written by an earlier
//! version (`snapshot.json` beside one base file `snapshot-<index>.memdb`) is taken
//! into this form at start ([`current`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::keys::StoredKeys;
use super::types::NodeId;
use crate::protocol::Manifest;
use crate::storage::frame;
use crate::storage::snapshot::checked::Checked;

/// The record's name in a snapshot directory.
pub const RECORD_NAME: &str = "raft.meta";
const MAGIC: [u8; 8] = *b"MEMDBRM1";
const VERSION: u32 = 1;
const HEAD: usize = 12;
/// Where a snapshot is downloaded into.
pub const RECEIVING: &str = ".receiving";
const PREFIX: &str = "snapshot-";
const BUILDING_PREFIX: &str = ".building-";
/// An earlier version's record, and the prefix of its one file. In this form it holds
/// only [`MARKER`], a JSON string, which an earlier version refuses to start on,
/// quoting it (it expects an object): it would otherwise take the directory for one
/// without a snapshot and lose the table.
const LEGACY_RECORD: &str = "snapshot.json";
const MARKER: &str = "this raft directory was written by a newer memdb (raft snapshots as \
                      files in raft/snapshot-<index>/): run that version or a later one";

/// What a raft snapshot is: raft's metadata, the key window, and the files.
#[derive(Clone)]
pub struct Record {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub keys: StoredKeys,
    /// The files at the snapshot's seq.
    pub chain: Manifest,
    /// Each file's checked record, in the manifest's order.
    pub checked: Vec<Checked>,
}

#[derive(Serialize, Deserialize)]
struct Head {
    meta: SnapshotMeta<NodeId, BasicNode>,
    chain: Manifest,
    checked: Vec<(u64, u64, u64)>,
}

fn le_u32(b: &[u8], at: &mut usize) -> Result<u32, String> {
    let v = b
        .get(*at..*at + 4)
        .ok_or("the record ends early")?
        .try_into()
        .expect("4 bytes");
    *at += 4;
    Ok(u32::from_le_bytes(v))
}

fn le_u64(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let v = b
        .get(*at..*at + 8)
        .ok_or("the record ends early")?
        .try_into()
        .expect("8 bytes");
    *at += 8;
    Ok(u64::from_le_bytes(v))
}

impl Record {
    /// The record as `raft.meta` holds it.
    pub fn encode(&self) -> Vec<u8> {
        let head = Head {
            meta: self.meta.clone(),
            chain: self.chain.clone(),
            checked: self
                .checked
                .iter()
                .map(|c| (c.checksum, c.payload_len, c.digest))
                .collect(),
        };
        let head = serde_json::to_vec(&head).expect("the head serializes");
        let k = &self.keys;
        let mut p = Vec::with_capacity(head.len() + 16 + k.keys.len() * 48 + k.forgotten.len() * 8);
        p.extend_from_slice(&(head.len() as u32).to_le_bytes());
        p.extend_from_slice(&head);
        p.extend_from_slice(&k.keys_now_ms.to_le_bytes());
        p.extend_from_slice(&(k.keys.len() as u32).to_le_bytes());
        for (i, (key, seq, fp)) in k.keys.iter().enumerate() {
            p.extend_from_slice(&(key.len() as u32).to_le_bytes());
            p.extend_from_slice(key.as_bytes());
            p.extend_from_slice(&seq.to_le_bytes());
            p.extend_from_slice(&fp.to_le_bytes());
            p.extend_from_slice(&k.key_at.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        p.extend_from_slice(&(k.forgotten.len() as u32).to_le_bytes());
        for h in &k.forgotten {
            p.extend_from_slice(&h.to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEAD + frame::HEAD_LEN + p.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        frame::put(&mut out, &p);
        out
    }

    /// Reads a record, refusing anything that is not one whole (a torn or damaged
    /// file, another format).
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() < HEAD || bytes[..8] != MAGIC {
            return Err("not a memdb raft snapshot record (bad magic)".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(format!(
                "a raft snapshot record of format {version}: this build reads {VERSION} (a newer \
                 memdb wrote it)"
            ));
        }
        let p = match frame::split(&bytes[HEAD..]) {
            frame::Next::Whole(p, n) if HEAD + n == bytes.len() => p,
            frame::Next::Whole(..) => return Err("bytes after the record".into()),
            frame::Next::End => return Err("the record is empty".into()),
            frame::Next::Bad(why) => return Err(format!("the record is damaged: {why}")),
        };
        let mut at = 0;
        let n = le_u32(p, &mut at)? as usize;
        let head: Head = serde_json::from_slice(p.get(at..at + n).ok_or("the record ends early")?)
            .map_err(|e| format!("the record's head: {e}"))?;
        at += n;
        let mut keys = StoredKeys {
            keys_now_ms: le_u64(p, &mut at)?,
            ..Default::default()
        };
        let k = le_u32(p, &mut at)? as usize;
        // Each key takes at least 28 bytes: a count past what is left is damage.
        if k > (p.len() - at) / 28 {
            return Err("the record's key count is out of range".into());
        }
        for _ in 0..k {
            let len = le_u32(p, &mut at)? as usize;
            let key = p.get(at..at + len).ok_or("the record ends early")?;
            let key = std::str::from_utf8(key).map_err(|_| "a key that is not UTF-8")?;
            at += len;
            let (seq, fp, when) = (
                le_u64(p, &mut at)?,
                le_u64(p, &mut at)?,
                le_u64(p, &mut at)?,
            );
            keys.keys.push((key.to_owned(), seq, fp));
            keys.key_at.push(when);
        }
        let f = le_u32(p, &mut at)? as usize;
        if f > (p.len() - at) / 8 {
            return Err("the record's forgotten count is out of range".into());
        }
        for _ in 0..f {
            keys.forgotten.push(le_u64(p, &mut at)?);
        }
        if at != p.len() {
            return Err("bytes after the key window".into());
        }
        if head.checked.len() != head.chain.files.len() {
            return Err("the record's checked files are not its manifest's".into());
        }
        Ok(Record {
            meta: head.meta,
            keys,
            chain: head.chain,
            checked: head
                .checked
                .into_iter()
                .map(|(checksum, payload_len, digest)| Checked {
                    checksum,
                    payload_len,
                    digest,
                })
                .collect(),
        })
    }

    /// The record of the snapshot directory `dir`.
    pub fn read(dir: &Path) -> Result<Record, String> {
        let path = dir.join(RECORD_NAME);
        let bytes = fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Record::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The record of the snapshot directory `dir`, as an offer names it (its checksum is
/// its bytes' xxh3-64).
pub fn record_file(dir: &Path) -> io::Result<crate::protocol::ManifestFile> {
    let bytes = fs::read(dir.join(RECORD_NAME))?;
    Ok(crate::protocol::ManifestFile {
        name: RECORD_NAME.to_owned(),
        len: bytes.len() as u64,
        checksum: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
    })
}

/// The name of the snapshot directory at `index`.
pub fn dir_name(index: u64) -> String {
    format!("{PREFIX}{index:020}")
}

fn index_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// A directory for a snapshot being taken at `index`.
pub fn building_dir(raft_dir: &Path, index: u64) -> io::Result<PathBuf> {
    let dir = raft_dir.join(format!(
        "{BUILDING_PREFIX}{index:020}-{:08x}",
        rand::random::<u32>()
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
    }
    Ok(dir)
}

/// The snapshot directories in `raft_dir`, newest first.
fn listed(raft_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(raft_dir)?
        .flatten()
        .filter_map(|e| Some((index_of(e.file_name().to_str()?)?, e.path())))
        .collect();
    found.sort();
    Ok(found.into_iter().rev().map(|(_, d)| d).collect())
}

/// The newest snapshot directory, without reading its record: what serving its files
/// and counting their bytes need (a directory has its name only once complete).
pub fn newest(raft_dir: &Path) -> Option<PathBuf> {
    listed(raft_dir).ok()?.into_iter().next()
}

/// The snapshot in `raft_dir`: its directory and record, if one was taken. Snapshot
/// directories with a damaged record are passed over (an older complete one serves);
/// an earlier version's snapshot is taken into this form first.
pub fn current(raft_dir: &Path) -> Result<Option<(PathBuf, Record)>, String> {
    convert_legacy(raft_dir)?;
    let found = listed(raft_dir).map_err(|e| format!("listing {}: {e}", raft_dir.display()))?;
    for dir in found {
        match Record::read(&dir) {
            Ok(r) => return Ok(Some((dir, r))),
            Err(e) => tracing::warn!(error = %e, "passing over a raft snapshot"),
        }
    }
    Ok(None)
}

/// Whether `name` is a file a snapshot directory holds.
fn snapshot_file(name: &str) -> bool {
    name == RECORD_NAME || crate::client::files::ours(name)
}

/// Removes a snapshot directory of ours: the files it may hold, then the directory
/// (which stays, with whatever else is in it, if anything else is).
pub fn remove_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(snapshot_file) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Syncs the files of `staged` and the directory, and renames it into place as the
/// snapshot at `index`; then removes every other snapshot (and an earlier version's
/// files). Returns the snapshot's directory.
pub fn put_in_place(raft_dir: &Path, staged: &Path, index: u64) -> io::Result<PathBuf> {
    for e in fs::read_dir(staged)?.flatten() {
        fs::File::open(e.path())?.sync_all()?;
    }
    fs::File::open(staged)?.sync_all()?;
    let dest = raft_dir.join(dir_name(index));
    if dest.exists() {
        remove_dir(&dest);
    }
    fs::rename(staged, &dest)?;
    fs::File::open(raft_dir)?.sync_all()?;
    if !raft_dir.join(LEGACY_RECORD).exists() {
        mark(raft_dir)?;
    }
    for e in fs::read_dir(raft_dir)?.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if index_of(&name).is_some_and(|i| i != index) {
            remove_dir(&e.path());
        }
    }
    Ok(dest)
}

/// Bytes of the current snapshot's files that no other name holds (the table's chain
/// has replaced them since): disk that only the snapshot keeps.
pub fn held_bytes(raft_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Some(entries) = newest(raft_dir).and_then(|d| fs::read_dir(d).ok()) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str() != Some(RECORD_NAME))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.nlink() == 1)
        .map(|m| m.len())
        .sum()
}

/// Writes [`MARKER`] as `snapshot.json`.
fn mark(raft_dir: &Path) -> io::Result<()> {
    let marker = serde_json::to_vec(MARKER).expect("a string serializes");
    crate::fs::write_atomically(raft_dir, LEGACY_RECORD, ".snapshot.json.tmp", &marker)?;
    Ok(())
}

/// Removes what a stop left half done: snapshots being taken.
pub fn clean(raft_dir: &Path) {
    if let Ok(entries) = fs::read_dir(raft_dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(BUILDING_PREFIX))
            {
                remove_dir(&e.path());
            }
        }
    }
}

/// An earlier version's snapshot record.
#[derive(Deserialize)]
struct Legacy {
    meta: SnapshotMeta<NodeId, BasicNode>,
    file: String,
    #[serde(flatten)]
    keys: StoredKeys,
}

/// Takes an earlier version's snapshot (`snapshot.json` naming one base file) into
/// this form: the file is linked in as the base of a snapshot directory, whose record
/// is written from the JSON; then both old files go.
fn convert_legacy(raft_dir: &Path) -> Result<(), String> {
    let json_path = raft_dir.join(LEGACY_RECORD);
    let bytes = match fs::read(&json_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading {}: {e}", json_path.display())),
    };
    if serde_json::from_slice::<String>(&bytes).is_ok() {
        return Ok(()); // The marker: this form already.
    }
    let old: Legacy = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a raft snapshot record: {e}", json_path.display()))?;
    if !old.file.starts_with(PREFIX) || old.file.contains('/') {
        return Err(format!("{} names a file outside it", json_path.display()));
    }
    let image = raft_dir.join(&old.file);
    let index = old.meta.last_log_id.map_or(0, |l| l.index);
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let staged =
        building_dir(raft_dir, index).map_err(|e| err("making a snapshot directory", &e))?;
    let base = staged.join(crate::storage::snapshot::FILE_NAME);
    fs::hard_link(&image, &base).map_err(|e| err(&format!("linking {}", image.display()), &e))?;
    let state = crate::storage::mapped::MappedState::open(&staged, u64::MAX, &|| false, &[])
        .map_err(|e| err(&image.display().to_string(), &e))?
        .ok_or_else(|| format!("{} is not a base snapshot", image.display()))?;
    let digest = crate::storage::table::digest_of(
        state
            .base
            .map()
            .iter()
            .map(|(w, n)| (w.as_str(), n.to_native())),
    );
    let header = *state.header();
    let incarnation = header
        .incarnation
        .unwrap_or_else(crate::protocol::Incarnation::random);
    let record = Record {
        meta: old.meta,
        keys: old.keys,
        chain: state.manifest(digest, incarnation),
        checked: vec![Checked::of(&header, digest)],
    };
    drop(state);
    crate::fs::write_atomically(&staged, RECORD_NAME, ".raft.meta.tmp", &record.encode())
        .map_err(|e| err("writing the snapshot record", &e))?;
    put_in_place(raft_dir, &staged, index).map_err(|e| err("placing the snapshot", &e))?;
    // Placed (and found first from now on): the old record goes, the marker in its
    // place.
    mark(raft_dir).map_err(|e| err("replacing the old record", &e))?;
    let _ = fs::remove_file(&image);
    tracing::info!(
        index,
        "took an earlier version's raft snapshot into the file form"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "7-1".into(),
            },
            keys: StoredKeys {
                keys: vec![("a".into(), 3, 30), ("bé".into(), 4, 40)],
                key_at: vec![100, 200],
                keys_now_ms: 250,
                forgotten: vec![9, 8, 7],
            },
            chain: Manifest {
                seq: 4,
                incarnation: crate::protocol::Incarnation::from_raw(5).unwrap(),
                tokenizer: crate::words::Tokenizer::Unicode,
                digest: format!("{:016x}", 77),
                words: 2,
                files: vec![crate::protocol::ManifestFile {
                    name: "snapshot.memdb".into(),
                    len: 10,
                    checksum: format!("{:016x}", 1),
                }],
            },
            checked: vec![Checked {
                checksum: 1,
                payload_len: 2,
                digest: 77,
            }],
        }
    }

    #[test]
    fn a_record_round_trips_and_a_damaged_one_is_refused() {
        let r = record();
        let bytes = r.encode();
        let back = Record::decode(&bytes).unwrap();
        assert_eq!(back.keys.keys, r.keys.keys);
        assert_eq!(back.keys.key_at, r.keys.key_at);
        assert_eq!(back.keys.keys_now_ms, 250);
        assert_eq!(back.keys.forgotten, r.keys.forgotten);
        assert_eq!(back.checked, r.checked);
        assert_eq!(back.meta, r.meta);
        assert_eq!(back.chain.files[0].name, "snapshot.memdb");
        for i in [0, 9, 14, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Record::decode(&bad).is_err(), "a flip at {i}");
        }
        for n in [0, 11, 20, bytes.len() - 1] {
            assert!(Record::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Record::decode(&longer).is_err());
    }

    #[test]
    fn only_snapshot_directories_are_named_so() {
        assert_eq!(index_of(&dir_name(42)), Some(42));
        assert_eq!(index_of("snapshot-42"), None);
        assert_eq!(index_of("snapshot-0000000000000000004x"), None);
        assert_eq!(index_of("snapshot.json"), None);
    }

    #[test]
    fn an_earlier_versions_snapshot_is_taken_into_the_file_form() {
        let raft = tempfile::tempdir().unwrap();
        let mut map = crate::storage::table::CountMap::new();
        map.add("hello", 3);
        map.add("world", 1);
        let meta = crate::storage::snapshot::Meta {
            tokenizer: crate::words::Tokenizer::Unicode,
            seq: 7,
            incarnation: crate::consensus::types::group_incarnation("memdb"),
        };
        let image = crate::storage::snapshot::encode_entries(map.iter(), meta, None).unwrap();
        let file = "snapshot-00000000000000000012.memdb";
        std::fs::write(raft.path().join(file), &image).unwrap();
        let legacy = serde_json::json!({
            "meta": {"last_log_id": {"leader_id": {"term": 2, "node_id": 1}, "index": 12},
                     "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
                     "snapshot_id": "12-1"},
            "file": file,
            "keys": [["k", 7, 70]],
            "key_at": [5],
            "keys_now_ms": 6,
            "forgotten": [1],
        });
        std::fs::write(raft.path().join(LEGACY_RECORD), legacy.to_string()).unwrap();
        let (dir, record) = current(raft.path()).unwrap().expect("converted");
        assert_eq!(dir, raft.path().join(dir_name(12)));
        assert_eq!(record.meta.last_log_id.unwrap().index, 12);
        assert_eq!(record.keys.keys, vec![("k".to_string(), 7, 70)]);
        assert_eq!(record.chain.seq, 7);
        assert_eq!(record.chain.words, 2);
        let want = crate::storage::table::digest_of([("hello", 3), ("world", 1)]);
        assert_eq!(record.chain.digest, format!("{want:016x}"));
        assert!(dir.join(crate::storage::snapshot::FILE_NAME).is_file());
        // The old files are gone, the marker an earlier version refuses in their
        // place; a second start finds the same snapshot.
        let marker: String =
            serde_json::from_slice(&std::fs::read(raft.path().join(LEGACY_RECORD)).unwrap())
                .unwrap();
        assert_eq!(marker, MARKER);
        // What an earlier version makes of it: it expects its record (an object with
        // these fields, among others), and refuses to start, quoting the marker.
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Earlier {
            meta: serde_json::Value,
            file: String,
        }
        let bytes = std::fs::read(raft.path().join(LEGACY_RECORD)).unwrap();
        let refused = serde_json::from_slice::<Earlier>(&bytes)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("written by a newer memdb"), "{refused}");
        assert!(!raft.path().join(file).exists());
        let (again, _) = current(raft.path()).unwrap().unwrap();
        assert_eq!(again, dir);
        // Only the snapshot holds its base: all of it is counted; linked from
        // elsewhere too (a table's chain), none.
        let base = dir.join(crate::storage::snapshot::FILE_NAME);
        let len = std::fs::metadata(&base).unwrap().len();
        assert_eq!(held_bytes(raft.path()), len);
        std::fs::hard_link(&base, raft.path().join("elsewhere")).unwrap();
        assert_eq!(held_bytes(raft.path()), 0);
    }
}
