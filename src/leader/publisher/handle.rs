//! The handle the leader holds on its publisher thread.

use std::sync::Arc;

use parking_lot::Mutex;

use super::types::{Adopt, Msg, PublishError, PublishStats, Setup};
use super::worker::Worker;

/// Handle to the publisher thread. Dropping it stops the thread after a final publish.
pub struct Publisher {
    /// The thread; dropping the handle publishes a last time and stops it.
    thread: crate::worker::Worker<Msg>,
    stats: Arc<Mutex<PublishStats>>,
    published: tokio::sync::watch::Receiver<u64>,
}

impl Publisher {
    /// Starts the thread.
    pub fn spawn(setup: Setup) -> Self {
        let base = *setup.table.read().lower().files.base.header();
        let stats = Arc::new(Mutex::new(PublishStats {
            seq: setup.published_seq,
            base_seq: base.seq,
            base_words: base.words,
            ..Default::default()
        }));
        let (published_tx, published) = tokio::sync::watch::channel(setup.published_seq);
        let worker = Worker {
            dir: setup.dir,
            table: setup.table,
            published: setup.published_seq,
            records: setup.records,
            tokenizer: setup.tokenizer,
            incarnation: setup.incarnation,
            interval: setup.interval,
            compact_after: setup.compact_after,
            compaction: None,
            merge_delta: None,
            merge_recent: None,
            trimmed: false,
            stats: stats.clone(),
            published_tx,
            on_published: setup.on_published,
        };
        let thread = crate::worker::Worker::spawn("memdb-publisher", move |rx| worker.run(rx))
            .expect("spawning the publisher thread");
        Publisher {
            thread,
            stats,
            published,
        }
    }

    /// Follows the seq of the snapshot on disk.
    pub fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.clone()
    }

    /// Asks for a publish as soon as the thread is free, unless `want` is already on
    /// disk by then. Does not wait.
    pub fn publish_soon(&self, want: u64) {
        self.thread.send(Msg::Soon(want));
    }

    /// Publishes everything applied so far (if it changed) and returns the seq on
    /// disk. Blocks until done: call from a blocking context.
    pub fn flush(&self) -> Result<u64, PublishError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        if !self.thread.send(Msg::Flush(reply_tx)) {
            return Err(PublishError::Stopped);
        }
        reply_rx.recv().map_err(|_| PublishError::Stopped)?
    }

    /// See [`crate::consensus::Applier::capture`]. Blocks.
    pub fn capture(&self, into: &std::path::Path) -> Result<crate::consensus::Captured, String> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        if !self.thread.send(Msg::Capture(into.to_owned(), reply_tx)) {
            return Err(PublishError::Stopped.to_string());
        }
        reply_rx
            .recv()
            .map_err(|_| PublishError::Stopped.to_string())?
    }

    /// See [`crate::consensus::Applier::adopt`]. Blocks.
    pub fn adopt(
        &self,
        dir: &std::path::Path,
        chain: &crate::protocol::Manifest,
        checked: &[crate::storage::snapshot::checked::Checked],
    ) -> Result<(), String> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let a = Adopt {
            dir: dir.to_owned(),
            chain: chain.clone(),
            checked: checked.to_vec(),
        };
        if !self.thread.send(Msg::Adopt(Box::new(a), reply_tx)) {
            return Err(PublishError::Stopped.to_string());
        }
        reply_rx
            .recv()
            .map_err(|_| PublishError::Stopped.to_string())?
    }

    pub fn stats(&self) -> PublishStats {
        self.stats.lock().clone()
    }
}
