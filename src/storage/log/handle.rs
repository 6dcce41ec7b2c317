//! The handle the leader holds: it queues batches for the writer thread, waits for
//! durability, and reports the log's health.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::worker::Worker;
use tokio::sync::watch;

use super::options::{FsyncPolicy, WalOptions};
use super::shared::{FsyncStats, LogHealth, Msg};
use super::writer::{RETRY_MAX, RETRY_START, Writer};
use crate::backoff::Backoff;
use crate::storage::batch::Batch;

/// The log writer's handle. Dropping it flushes, fsyncs and stops the thread.
pub struct Wal {
    /// The writer thread; dropping the handle flushes, fsyncs and stops it.
    writer: Worker<Msg>,
    stats: Arc<FsyncStats>,
    health: Arc<LogHealth>,
    durable: watch::Receiver<u64>,
    written: watch::Receiver<u64>,
    /// `Some(reason)` while the log cannot be written.
    failed: watch::Receiver<Option<String>>,
    policy: FsyncPolicy,
}

/// Why a write could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("the write-ahead log failed: {0}")]
pub struct WalError(pub String);

impl Wal {
    /// Opens the log for appending after `seq` (everything up to it is in the table).
    pub fn open(dir: &Path, seq: u64, options: WalOptions) -> io::Result<Wal> {
        let policy = options.fsync;
        let (durable_tx, durable) = watch::channel(seq);
        let (written_tx, written) = watch::channel(seq);
        let (failed_tx, failed) = watch::channel(None);
        let stats = Arc::new(FsyncStats::default());
        let health = Arc::new(LogHealth::default());
        let mut writer = Writer {
            stats: stats.clone(),
            health: health.clone(),
            dir: dir.to_owned(),
            file: None,
            first_seq: seq + 1,
            last_seq: seq,
            policy,
            options,
            safe_len: 0,
            pending: Vec::with_capacity(64 << 10),
            in_file: 0,
            durable: durable_tx,
            written: written_tx,
            failed: failed_tx,
            dirty: false,
            last_sync: Instant::now(),
            error: None,
            retry: Backoff::new(RETRY_START, RETRY_MAX),
            next_retry: Instant::now(),
            next_roll: Instant::now(),
        };
        writer.open_segment(seq + 1)?;
        let writer = Worker::spawn("memdb-wal", move |rx| writer.run(rx))?;
        Ok(Wal {
            writer,
            stats,
            health,
            durable,
            written,
            failed,
            policy,
        })
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    pub fn fsync_stats(&self) -> &FsyncStats {
        &self.stats
    }

    /// Whether the log can be written, and why not.
    pub fn health(&self) -> &LogHealth {
        &self.health
    }

    /// Queues the next batch. Call in seq order (under the table lock), and only while
    /// [`LogHealth::is_failed`] is false: a write the log cannot hold must not be
    /// applied. Never blocks. A batch queued just as the log fails is kept in memory
    /// and written once the log recovers.
    pub fn append(&self, batch: Arc<Batch>) {
        self.writer.send(Msg::Batch(batch));
    }

    /// Waits until `seq` is durable (with `always`) or at least written to the OS.
    /// Fails at once if the log fails first: the batch is then kept in memory and
    /// written when the log recovers, but it cannot be promised now.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        let mut durable = self.durable.clone();
        let mut failed = self.failed.clone();
        loop {
            if *durable.borrow_and_update() >= seq {
                return Ok(());
            }
            if let Some(why) = failed.borrow_and_update().clone() {
                return Err(WalError(why));
            }
            let stopped = tokio::select! {
                r = durable.changed() => r.is_err(),
                r = failed.changed() => r.is_err(),
            };
            if stopped {
                return Err(WalError("the log writer stopped".into()));
            }
        }
    }

    /// Follows the seq written through to the log file (readable by a [`super::LogReader`],
    /// not necessarily fsynced).
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    /// The highest seq known durable.
    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Writes and fsyncs everything queued (on a failed log: tries once more now).
    /// Blocking.
    pub fn sync(&self) -> io::Result<u64> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        if !self.writer.send(Msg::Sync(reply_tx)) {
            return Err(io::Error::other("log writer stopped"));
        }
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("log writer stopped"))?
    }

    /// A snapshot of `seq` is on disk: segments it covers, beyond the retained
    /// bytes, can go.
    pub fn checkpoint(&self, seq: u64) {
        self.writer.send(Msg::Checkpoint(seq));
    }

    /// A handle that calls [`Wal::checkpoint`] from elsewhere (the publisher thread).
    /// Drop it before the `Wal`: the writer stops only when every handle is gone.
    pub fn checkpointer(&self) -> impl Fn(u64) + Send + 'static {
        let tx = self.writer.sender().clone();
        move |seq| {
            let _ = tx.send(Msg::Checkpoint(seq));
        }
    }
}
