//! Why a snapshot could not be written or was refused.

use std::io;

use super::kind::Kind;

/// Why a snapshot could not be written or was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("file is {len} bytes, shorter than its header")]
    TooShort { len: usize },
    #[error("not a memdb snapshot (bad magic)")]
    BadMagic,
    #[error("a {found:?} file where a {expected:?} was expected")]
    WrongKind { expected: Kind, found: Kind },
    #[error(
        "snapshot format version {found} is not supported (this build reads versions 1 to \
         {newest}): written by a newer memdb? run that version or a newer one"
    )]
    UnsupportedVersion { found: u32, newest: u32 },
    #[error("unknown tokenizer code {0} in snapshot header")]
    UnknownTokenizer(u32),
    #[error("file is {actual} bytes but its header says {expected}")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("checksum mismatch: header says {expected:016x}, content hashes to {actual:016x}")]
    Checksum { expected: u64, actual: u64 },
    #[error("payload is not 16-byte aligned in memory")]
    Misaligned,
    #[error("archive failed validation: {0}")]
    Archive(String),
    #[error("header says {expected} words, archive holds {actual}")]
    WordCount { expected: u64, actual: u64 },
    #[error("the delta's reserved field is not zero")]
    Reserved,
    #[error("the top list is damaged: {0}")]
    TopList(String),
    #[error("serializing the table failed: {0}")]
    Serialize(String),
    #[error("{0} is not a regular file")]
    NotRegularFile(String),
    #[error("file is {len} bytes, over the {max}-byte limit for a snapshot")]
    TooLarge { len: u64, max: u64 },
    #[error(
        "file is {len} bytes but only {allocated} are allocated on disk: a sparse file, \
         which the leader never writes"
    )]
    Sparse { len: u64, allocated: u64 },
    #[error("validation stopped: shutting down")]
    Cancelled,
}

impl From<crate::fs::OpenError> for SnapshotError {
    fn from(e: crate::fs::OpenError) -> Self {
        use crate::fs::OpenError;
        match e {
            OpenError::Io(e) => SnapshotError::Io(e),
            OpenError::NotRegularFile(what) => SnapshotError::NotRegularFile(what),
            OpenError::TooLarge { len, max } => SnapshotError::TooLarge { len, max },
            OpenError::Sparse { len, allocated } => SnapshotError::Sparse { len, allocated },
        }
    }
}
