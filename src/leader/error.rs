//! Why a leader could not open, shut down cleanly, or take a write.

use std::path::{Path, PathBuf};

use crate::storage::snapshot::SnapshotError;
use crate::words::Tokenizer;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another leader is using data directory {0}")]
    Locked(PathBuf),
    #[error("cannot restore from {path}: {source} (move the file away to start empty)")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error(
        "data in {dir} was counted with the {data} tokenizer; start with --tokenizer {data} \
         or use another data directory"
    )]
    TokenizerMismatch {
        dir: PathBuf,
        data: Tokenizer,
        configured: Tokenizer,
    },
    #[error(transparent)]
    Socket(#[from] super::notifier::NotifierError),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
    #[error("--replica: {0}")]
    Replica(#[from] super::replication::ReplicaUrlError),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a shutdown could not leave every applied write in the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    #[error(
        "the data directory lacks seqs {from}..={to} (snapshot: {snapshot}; log: {log}). \
         The whole table (seq {to}) was saved to {rescue}: free space, then move it over \
         {snapshot_path} before starting the leader again"
    )]
    Rescued {
        from: u64,
        to: u64,
        snapshot: String,
        log: String,
        rescue: String,
        snapshot_path: String,
    },
    #[error(
        "LOST seqs {from}..={to}: neither the data directory nor the rescue directory \
         could be written ({error})"
    )]
    Lost { from: u64, to: u64, error: String },
}

/// Why a write was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error(
        "the write-ahead log cannot be written ({0}); writes are refused until it can \
         (this one was not applied)"
    )]
    LogFailed(String),
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LeaderError + 'a {
    move |source| LeaderError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}
