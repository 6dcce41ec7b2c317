//! What a leader does before it serves: lock its data directory, recover the table
//! from the snapshot and the log, and set up the replication senders.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::backlog::Backlog;
use super::error::{LeaderError, io_err};
use super::publisher::Records;
use super::replication::{LogSource, ReplicaSet};
use crate::config::LeaderConfig;
use crate::consensus::snapshot::{self as snapshot_dir, Record};
use crate::protocol::Incarnation;
use crate::storage::layered::Layered;
use crate::storage::log::{self, Wal};
use crate::storage::mapped::{MappedSnapshot, MappedState};
use crate::storage::snapshot::checked::{self, Checked};
use crate::storage::snapshot::{self, SnapshotError};
use crate::storage::table::{digest_of, entry_digest, word_hash};
use crate::words::Tokenizer;

/// The data directory's lock file.
pub const LOCK_FILE: &str = "LOCK";

/// The network replicas' senders, with the configured replicas added and the expiry
/// of silent ones running.
pub(super) fn replica_set(
    config: &LeaderConfig,
    backlog: Arc<Mutex<Backlog>>,
    wal: Option<&Wal>,
    seq_rx: watch::Receiver<u64>,
    incarnation: Incarnation,
    push_secret: &str,
) -> Result<Arc<ReplicaSet>, LeaderError> {
    // With acknowledgements awaited, batches go out at once instead of coalescing.
    let linger = if config.min_acks > 0 {
        Duration::ZERO
    } else {
        config.replication_linger
    };
    let replicas = Arc::new(ReplicaSet::new(
        backlog,
        wal.map(|wal| LogSource {
            dir: config.data_dir.clone(),
            written: wal.written(),
        }),
        seq_rx,
        incarnation,
        config.tokenizer,
        linger,
        config.serving.peer_credential().cloned(),
        push_secret.to_owned(),
        config.max_replicas,
        config.replica_timeout,
        &config.serving.client_tls,
    ));
    for url in &config.replicas {
        replicas.add(url, true)?;
    }
    replicas.spawn_expiry();
    Ok(replicas)
}

/// Creates the data directory (0700) if needed and takes its lock (flock, held for the
/// process's life, with our pid written in it). Removes a temp snapshot a crash left.
pub(super) fn lock_data_dir(dir: &Path) -> Result<File, LeaderError> {
    let lock = crate::fs::lock_dir(dir, LOCK_FILE).map_err(|e| match e {
        crate::fs::LockError::Locked(dir) => LeaderError::Locked(dir),
        crate::fs::LockError::Io { what, path, source } => io_err(what, &path)(source),
    })?;
    // A temp file left by a crash mid-publish or mid-compaction is never valid.
    let _ = fs::remove_file(dir.join(snapshot::TEMP_NAME));
    let _ = fs::remove_file(dir.join(snapshot::DELTA_TEMP_NAME));
    let _ = fs::remove_file(dir.join(snapshot::MERGE_TEMP_NAME));
    let _ = fs::remove_file(dir.join(snapshot::RECENT_TEMP_NAME));
    let _ = fs::remove_file(dir.join(snapshot::RECENT_MERGE_TEMP_NAME));
    Ok(lock)
}

/// What the data directory holds, restored.
pub(super) struct Recovered {
    /// The whole table: the base and the delta on it, mapped, then every log record
    /// past them in memory.
    pub table: Layered,
    /// The seq of the state on disk (base and paired delta).
    pub published_seq: u64,
    /// The checked-file records of the base and delta mapped.
    pub records: Records,
}

/// The table as the data directory holds it: the base and the delta on it (if one
/// pairs with it) mapped, then every log record past them. Files this node checked
/// whole before are checked by their checksum only (see
/// [`crate::storage::snapshot::checked`]). A directory without a base gets an empty
/// one at seq 0.
pub(super) fn recover(dir: &Path, tokenizer: Tokenizer) -> Result<Recovered, LeaderError> {
    let known = checked::load(dir);
    let trusted = |h: &snapshot::Header| known.iter().any(|r| r.names(h));
    let state =
        MappedState::open_checked(dir, u64::MAX, &|| false, &[], &trusted).map_err(|e| {
            LeaderError::Snapshot {
                path: dir.join(e.file),
                source: e.source,
            }
        })?;
    if state.is_none() && dir.join(snapshot::DELTA_NAME).exists() {
        return Err(LeaderError::Snapshot {
            path: dir.join(snapshot::FILE_NAME),
            source: SnapshotError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing, but a delta on it is there: restore the base, or move both away",
            )),
        });
    }
    let state = match state {
        Some(s) => s,
        None => empty_base(dir, tokenizer)?,
    };
    let header = state.header();
    if header.tokenizer != tokenizer {
        return Err(LeaderError::TokenizerMismatch {
            dir: dir.to_owned(),
            data: header.tokenizer,
            configured: tokenizer,
        });
    }
    if state.delta.is_none() && dir.join(snapshot::DELTA_NAME).exists() {
        tracing::info!(
            "the delta on disk is on an earlier base (a compaction was cut short); \
             replaying the log from the base"
        );
    }
    // Recent deltas off the chain: replaced by a merge, or written on a file a merge
    // replaced before its renames were done. The log holds what they held.
    let chain: Vec<u64> = state.recent.iter().map(|r| r.header().seq).collect();
    for (seq, name) in snapshot::recents(dir).map_err(io_err("listing", dir))? {
        if !chain.contains(&seq) {
            tracing::info!(file = %name, "removing a recent delta off the chain");
            fs::remove_file(dir.join(&name)).map_err(io_err("removing", &dir.join(&name)))?;
        }
    }
    let records = records_of(&state, &known);
    if !state
        .files()
        .all(|f| known.iter().any(|r| r.names(f.header())))
    {
        // Checked whole just now: the next start need not.
        records.store(dir);
    }
    let digest = records.top().digest;
    let published_seq = state.seq();
    tracing::info!(
        seq = published_seq,
        base_seq = state.base.header().seq,
        words = state.words(),
        "mapped the snapshot"
    );
    let mut table = Layered::new(state, digest);
    let replayed = log::replay(dir, &mut table).map_err(io_err("replaying the log in", dir))?;
    if replayed.applied > 0 || replayed.cut.is_some() {
        tracing::info!(
            applied = replayed.applied,
            seq = table.seq(),
            cut = ?replayed.cut,
            "replayed the write-ahead log"
        );
    }
    Ok(Recovered {
        table,
        published_seq,
        records,
    })
}

/// The records of `state`'s files: from `known`, or made now (the table's digest
/// computed by a pass over the files, once).
fn records_of(state: &MappedState, known: &[Checked]) -> Records {
    let find = |m: &MappedSnapshot| known.iter().find(|r| r.names(m.header())).copied();
    let base = find(&state.base).unwrap_or_else(|| {
        tracing::info!(
            words = state.base.header().words,
            "computing the base's digest (once)"
        );
        let all = state.base.map().iter();
        Checked::of(
            state.base.header(),
            digest_of(all.map(|(k, v)| (k.as_str(), v.to_native()))),
        )
    });
    // A delta's digest: the digest under it, with each word it holds moved to its
    // count there.
    let on = |under: &Checked, below: &MappedState, d: &MappedSnapshot| {
        find(d).unwrap_or_else(|| {
            let mut digest = under.digest;
            for (w, n) in crate::storage::delta::entries(d) {
                let h = word_hash(w);
                digest = digest
                    .wrapping_sub(entry_digest(h, below.get(w)))
                    .wrapping_add(entry_digest(h, n));
            }
            Checked::of(d.header(), digest)
        })
    };
    let on_base = MappedState::base(state.base.clone());
    let delta = state.delta.as_ref().map(|d| on(&base, &on_base, d));
    let mut recent: Vec<Checked> = Vec::new();
    for (i, r) in state.recent.iter().enumerate() {
        let under = recent
            .last()
            .copied()
            .or(delta)
            .expect("a recent delta is on a delta");
        let below = MappedState {
            recent: state.recent[..i].to_vec(),
            ..state.clone()
        };
        recent.push(on(&under, &below, r));
    }
    Records {
        base,
        delta,
        recent,
    }
}

/// An empty base at seq 0, written now: a table's files begin with a base. Its
/// incarnation is a fresh one that no history names (nothing at seq 0 belongs to one).
fn empty_base(dir: &Path, tokenizer: Tokenizer) -> Result<MappedState, LeaderError> {
    let path = dir.join(snapshot::FILE_NAME);
    let fail = |source| LeaderError::Snapshot {
        path: path.clone(),
        source,
    };
    let meta = snapshot::Meta {
        tokenizer,
        seq: 0,
        incarnation: Incarnation::random(),
    };
    let staged = snapshot::stage(
        dir,
        snapshot::TEMP_NAME,
        meta,
        None,
        std::iter::empty::<(&str, u64)>(),
    )
    .map_err(fail)?;
    snapshot::install(dir, &staged, snapshot::FILE_NAME).map_err(|e| fail(SnapshotError::Io(e)))?;
    let base = MappedSnapshot::open(&path).map_err(fail)?;
    Ok(MappedState::base(Arc::new(base)))
}

/// A voter's table at start: the raft snapshot's files (linked in as the publisher's
/// chain), or an empty base; the raft engine then applies the committed log past it.
/// The publisher's own files are output here, never input: they are replaced.
pub(super) fn recover_voter(
    dir: &Path,
    tokenizer: Tokenizer,
    raft: &crate::config::RaftConfig,
) -> Result<(Recovered, Option<Record>), LeaderError> {
    if !log::segments(dir)
        .map_err(io_err("listing the log in", dir))?
        .is_empty()
    {
        return Err(LeaderError::Raft(format!(
            "{} holds a single leader's write-ahead log: a raft voter needs its own data \
             directory (to move a single leader's data into a group, start the group empty \
             and ingest the table from GET /sync)",
            dir.display()
        )));
    }
    let raft_dir = dir.join("raft");
    crate::fs::create_private_dir(&raft_dir).map_err(io_err("creating", &raft_dir))?;
    // Before anything in the directory is touched.
    crate::consensus::identity::check_or_record(&raft_dir, raft.node_id, &raft.cluster)
        .map_err(LeaderError::Raft)?;
    snapshot_dir::clean(&raft_dir);
    let loaded = snapshot_dir::current(&raft_dir).map_err(LeaderError::Raft)?;
    let _ = fs::remove_file(dir.join(snapshot::DELTA_NAME));
    for (_, name) in snapshot::recents(dir).map_err(io_err("listing", dir))? {
        fs::remove_file(dir.join(&name)).map_err(io_err("removing", &dir.join(&name)))?;
    }
    let Some((from, record)) = loaded else {
        let _ = fs::remove_file(dir.join(snapshot::FILE_NAME));
        return Ok((recover(dir, tokenizer)?, None));
    };
    // The snapshot's files are immutable: linked in, under their names.
    for f in &record.chain.files {
        let link = dir.join(format!(".{}.link", f.name));
        let _ = fs::remove_file(&link);
        fs::hard_link(from.join(&f.name), &link).map_err(io_err("linking", &from.join(&f.name)))?;
        fs::rename(&link, dir.join(&f.name)).map_err(io_err("renaming", &link))?;
    }
    // Checked when the snapshot was taken or received: the next mapping trusts them.
    if let Err(e) = checked::store(dir, &record.checked) {
        tracing::warn!(error = %e, "recording the snapshot's checked files");
    }
    crate::fs::sync_dir(dir).map_err(io_err("syncing", dir))?;
    let recovered = recover(dir, tokenizer)?;
    if recovered.table.seq() != record.chain.seq {
        return Err(LeaderError::Raft(format!(
            "the raft snapshot in {} maps at seq {}, its record says {}",
            from.display(),
            recovered.table.seq(),
            record.chain.seq
        )));
    }
    Ok((recovered, Some(record)))
}
