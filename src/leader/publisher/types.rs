//! What the publisher's handle and its thread share.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::RwLock;
use serde::Serialize;

use crate::protocol::Incarnation;
use crate::storage::layered::Layered;
use crate::storage::snapshot::checked::{self, Checked};
use crate::words::Tokenizer;

pub(super) enum Msg {
    /// Publish now if anything changed, then answer with the published seq.
    Flush(Sender<Result<u64, PublishError>>),
    /// Publish now unless this seq is already on disk (a local replica waits for it).
    Soon(u64),
    /// Publish now if anything changed, then link the files into this directory (a
    /// voter's raft snapshot).
    Capture(PathBuf, Sender<Result<crate::consensus::Captured, String>>),
    /// Make a received raft snapshot's files the table (see `raft.rs`).
    Adopt(Box<Adopt>, Sender<Result<(), String>>),
}

/// A received raft snapshot's files, to be made the table.
pub(super) struct Adopt {
    pub(super) dir: PathBuf,
    pub(super) chain: crate::protocol::Manifest,
    pub(super) checked: Vec<Checked>,
}

/// Why a snapshot was not published; the last good one stays in place.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("encoding the snapshot: {0}")]
    Encode(String),
    #[error("publishing snapshot: {0}")]
    Write(String),
    #[error("the publisher stopped")]
    Stopped,
}

/// What the publisher has done, for `/health`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PublishStats {
    /// Seq of the newest snapshot on disk (base and delta).
    pub seq: u64,
    /// Deltas (and bases) published since start.
    pub publishes: u64,
    pub last_duration_ms: Option<f64>,
    /// Size of the last delta published.
    pub last_bytes: Option<u64>,
    pub last_error: Option<String>,
    /// Seq of the base on disk (the last compaction's).
    pub base_seq: u64,
    /// Words in the base on disk.
    pub base_words: u64,
    /// Words in the delta on the base.
    pub delta_words: u64,
    /// Recent deltas on the delta, and their words (each file's, summed).
    pub recent_files: u64,
    pub recent_words: u64,
    /// Words in the last file published.
    pub last_words: u64,
    /// Compactions finished since start.
    pub compactions: u64,
    /// Delta merges (the recent delta into the delta) finished since start.
    pub merges: u64,
    /// Duration of the last compaction, from its start to the new base in place.
    pub last_compaction_ms: Option<f64>,
    /// A compaction is under way.
    pub compacting: bool,
}

/// What the publisher starts from.
pub struct Setup {
    pub dir: PathBuf,
    /// The table, whose lowest layers are the files on disk.
    pub table: Arc<RwLock<Layered>>,
    /// The seq of the state on disk (base and delta) now.
    pub published_seq: u64,
    /// The checked-file records of the base and delta on disk.
    pub records: Records,
    pub tokenizer: Tokenizer,
    pub incarnation: Incarnation,
    pub interval: Duration,
    /// See [`crate::config::LeaderConfig::compact_after`].
    pub compact_after: usize,
    /// Told the seq of every state made durable (the log drops what it covers).
    pub on_published: Box<dyn Fn(u64) + Send>,
}

/// The records of the files on disk (see [`crate::storage::snapshot::checked`]).
#[derive(Debug, Clone)]
pub struct Records {
    pub base: Checked,
    pub delta: Option<Checked>,
    /// The recent deltas', oldest first.
    pub recent: Vec<Checked>,
}

impl Records {
    /// The newest file's record: its digest is the table's the files make.
    pub fn top(&self) -> Checked {
        self.recent
            .last()
            .copied()
            .or(self.delta)
            .unwrap_or(self.base)
    }

    pub fn store(&self, dir: &std::path::Path) {
        let all: Vec<Checked> = std::iter::once(self.base)
            .chain(self.delta)
            .chain(self.recent.iter().copied())
            .collect();
        if let Err(e) = checked::store(dir, &all) {
            // Costs the next start a full check of the files, nothing more.
            tracing::warn!(error = %e, "recording the checked snapshot files");
        }
    }
}
