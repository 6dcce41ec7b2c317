//! What the [`super::Wal`] handle and its writer thread share: the messages between
//! them, and the log's health and fsync figures both read.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::storage::batch::Batch;

pub(super) enum Msg {
    Batch(Arc<Batch>),
    /// Write and fsync everything queued, then answer.
    Sync(Sender<io::Result<u64>>),
    /// A snapshot of this seq is durable: segments it covers may go.
    Checkpoint(u64),
}

/// How the log's fsyncs are going, for `/metrics`.
#[derive(Debug, Default)]
pub struct FsyncStats {
    pub fsyncs: AtomicU64,
    pub last_nanos: AtomicU64,
    pub total_nanos: AtomicU64,
}

/// What is wrong with the log, shared by the writer thread and the leader. Read on
/// every write (one atomic load), so a failed log refuses writes at once.
#[derive(Debug, Default)]
pub struct LogHealth {
    pub(super) failed: AtomicBool,
    /// Why the log cannot be written, while it cannot.
    pub(super) reason: Mutex<Option<String>>,
    /// Why a full segment could not be closed (its successor could not be created),
    /// while that lasts: the open segment keeps growing past `--wal-segment-size`.
    pub(super) roll_error: Mutex<Option<String>>,
    /// Times the log went from writable to failed.
    pub failures: AtomicU64,
    /// Times a segment could not be rolled.
    pub roll_failures: AtomicU64,
}

impl LogHealth {
    /// Whether the log is failed (writes must be refused).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the log is failed, if it is.
    pub fn failure(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    /// Why the open segment could not be rolled, if it could not.
    pub fn roll_error(&self) -> Option<String> {
        self.roll_error.lock().clone()
    }
}
