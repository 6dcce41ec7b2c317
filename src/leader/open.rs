//! What a leader does before it serves: lock its data directory, recover the table
//! from the snapshot and the log, and set up the replication senders.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::LeaderConfig;
use crate::leader::backlog::Backlog;
use crate::leader::replication::{LogSource, ReplicaSet};
use crate::protocol::Incarnation;
use crate::storage::log::{self, Wal};
use crate::storage::snapshot::{self};
use crate::storage::table::Table;
use crate::words::Tokenizer;

use super::{LOCK_FILE, LeaderError, io_err};

/// The network replicas' senders, with the configured replicas added and the expiry
/// of silent ones running.
pub(super) fn replica_set(
    config: &LeaderConfig,
    backlog: Arc<Mutex<Backlog>>,
    wal: &Wal,
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
        Some(LogSource {
            dir: config.data_dir.clone(),
            written: wal.written(),
        }),
        seq_rx,
        incarnation,
        config.tokenizer,
        linger,
        config.serving.auth_token.clone(),
        push_secret.to_owned(),
        config.max_replicas,
        config.replica_timeout,
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
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating data directory", dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err("opening", &lock_path))?;
    lock.try_lock()
        .map_err(|_| LeaderError::Locked(dir.to_owned()))?;
    lock.set_len(0).map_err(io_err("writing", &lock_path))?;
    writeln!(lock, "{}", std::process::id()).map_err(io_err("writing", &lock_path))?;
    // A temp file left by a crash mid-publish is never valid: remove it.
    let _ = fs::remove_file(dir.join(snapshot::TEMP_NAME));
    Ok(lock)
}

/// The table as the data directory holds it: the snapshot, then every log record
/// past it. Returns it with the snapshot's seq.
pub(super) fn recover(dir: &Path, tokenizer: Tokenizer) -> Result<(Table, u64), LeaderError> {
    let (map, snap_seq) = match snapshot::load(dir) {
        Ok(Some((header, map))) => {
            if header.tokenizer != tokenizer {
                return Err(LeaderError::TokenizerMismatch {
                    dir: dir.to_owned(),
                    data: header.tokenizer,
                    configured: tokenizer,
                });
            }
            tracing::info!(seq = header.seq, words = map.len(), "restored snapshot");
            (map, header.seq)
        }
        Ok(None) => (Default::default(), 0),
        Err(source) => {
            return Err(LeaderError::Snapshot {
                path: dir.join(snapshot::FILE_NAME),
                source,
            });
        }
    };
    let mut table = Table::from_parts(map, snap_seq);
    let replayed = log::replay(dir, &mut table).map_err(io_err("replaying the log in", dir))?;
    if replayed.applied > 0 || replayed.cut.is_some() {
        tracing::info!(
            applied = replayed.applied,
            seq = table.seq(),
            cut = ?replayed.cut,
            "replayed the write-ahead log"
        );
    }
    Ok((table, snap_seq))
}
