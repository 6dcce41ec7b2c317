//! The leader's snapshot publisher: a thread that keeps its own copy of the table and
//! publishes it as a snapshot file every interval when it changed.
//!
//! The copy is fed the same ordered batches as the live table, so serialising never
//! takes the live table's lock: writers are not slowed by a publish however big the
//! table is. The cost is a second copy of the table in memory.
//!
//! Batches are handed over through a mutex-guarded queue that the thread drains every
//! few milliseconds, not one channel message per batch: waking a thread per write cost
//! the leader a tenth of its CPU under load. Control messages (flush, publish soon,
//! stop) go through a channel; each drains the queue first, so it sees every batch
//! handed over before it was sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde::Serialize;

use crate::protocol::Incarnation;
use crate::storage::batch::Batch;
use crate::storage::snapshot::{self, Meta};
use crate::storage::table::{Table, WordMap};
use crate::words::Tokenizer;

/// How often the thread applies handed-over batches to its copy when it has nothing
/// else to do: bounds the queue's memory whatever the snapshot interval.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

enum Msg {
    /// Publish now if anything changed, then answer with the published seq.
    Flush(Sender<Result<u64, PublishError>>),
    /// Publish now unless this seq is already on disk (a local replica waits for it).
    Soon(u64),
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
    /// Seq of the newest snapshot on disk.
    pub seq: u64,
    pub publishes: u64,
    pub last_duration_ms: Option<f64>,
    pub last_bytes: Option<u64>,
    pub last_error: Option<String>,
}

/// Handle to the publisher thread. Dropping it stops the thread after a final publish.
pub struct Publisher {
    /// The thread; dropping the handle publishes a last time and stops it.
    thread: crate::worker::Worker<Msg>,
    queue: Arc<Mutex<Vec<Arc<Batch>>>>,
    stats: Arc<Mutex<PublishStats>>,
    published: tokio::sync::watch::Receiver<u64>,
}

impl Publisher {
    /// Starts the thread with a copy of the table as it stands at `seq`, whose snapshot
    /// (if any) is already on disk as `published_seq`.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        dir: PathBuf,
        map: WordMap,
        seq: u64,
        published_seq: u64,
        tokenizer: Tokenizer,
        incarnation: Incarnation,
        interval: Duration,
        on_published: Box<dyn Fn(u64) + Send>,
    ) -> Self {
        let stats = Arc::new(Mutex::new(PublishStats {
            seq: published_seq,
            ..Default::default()
        }));
        let (published_tx, published) = tokio::sync::watch::channel(published_seq);
        let queue = Arc::new(Mutex::new(Vec::new()));
        let worker = Worker {
            dir,
            shadow: Table::from_parts(map, seq),
            published: published_seq,
            tokenizer,
            incarnation,
            interval,
            stats: stats.clone(),
            published_tx,
            queue: queue.clone(),
            scratch: Vec::new(),
            on_published,
        };
        let thread = crate::worker::Worker::spawn("memdb-publisher", move |rx| worker.run(rx))
            .expect("spawning the publisher thread");
        Publisher {
            thread,
            queue,
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

    /// Hands the publisher the next batch. Call in seq order (under the table lock).
    /// Never blocks on the publisher: it only appends to a queue.
    pub fn push(&self, batch: Arc<Batch>) {
        self.queue.lock().push(batch);
    }

    /// Publishes everything pushed so far (if it changed) and returns the seq on disk.
    /// Blocks until done: call from a blocking context.
    pub fn flush(&self) -> Result<u64, PublishError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        if !self.thread.send(Msg::Flush(reply_tx)) {
            return Err(PublishError::Stopped);
        }
        reply_rx.recv().map_err(|_| PublishError::Stopped)?
    }

    pub fn stats(&self) -> PublishStats {
        self.stats.lock().clone()
    }
}

struct Worker {
    dir: PathBuf,
    shadow: Table,
    published: u64,
    tokenizer: Tokenizer,
    incarnation: Incarnation,
    interval: Duration,
    stats: Arc<Mutex<PublishStats>>,
    published_tx: tokio::sync::watch::Sender<u64>,
    queue: Arc<Mutex<Vec<Arc<Batch>>>>,
    /// Swapped with the queue so that draining holds its lock for a moment only.
    scratch: Vec<Arc<Batch>>,
    /// Told the seq of every snapshot made durable (the log drops what it covers).
    on_published: Box<dyn Fn(u64) + Send>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        // A data directory without a snapshot gets one at once, even of an empty table:
        // local replicas serve from the file and have nothing to map until it exists.
        if !self.dir.join(snapshot::FILE_NAME).exists() {
            let _ = self.publish();
        }
        let mut next_tick = Instant::now() + self.interval;
        loop {
            let wake = next_tick.min(Instant::now() + DRAIN_EVERY);
            let msg = rx.recv_deadline(wake);
            self.drain();
            match msg {
                Ok(Msg::Flush(reply)) => {
                    let _ = reply.send(self.publish_if_changed());
                }
                // Every batch up to the wanted seq was handed over before this request
                // (the write was acknowledged before a reader could ask for it), so the
                // copy holds it after the drain above.
                Ok(Msg::Soon(want)) => {
                    if self.published < want {
                        let _ = self.publish_if_changed();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.publish_if_changed() {
                        tracing::error!(error = %e, "final snapshot failed");
                    }
                    return;
                }
            }
            if Instant::now() >= next_tick {
                let _ = self.publish_if_changed();
                next_tick = Instant::now() + self.interval;
            }
        }
    }

    /// Applies every handed-over batch to the copy, in order.
    fn drain(&mut self) {
        std::mem::swap(&mut *self.queue.lock(), &mut self.scratch);
        for b in self.scratch.drain(..) {
            self.shadow.apply(&b.deltas, b.seq);
        }
    }

    fn publish_if_changed(&mut self) -> Result<u64, PublishError> {
        if self.shadow.seq() == self.published {
            return Ok(self.published);
        }
        self.publish()
    }

    fn publish(&mut self) -> Result<u64, PublishError> {
        let started = Instant::now();
        let meta = Meta {
            tokenizer: self.tokenizer,
            seq: self.shadow.seq(),
            incarnation: self.incarnation,
        };
        let result = snapshot::encode(self.shadow.map(), meta)
            .map_err(|e| PublishError::Encode(e.to_string()))
            .and_then(|img| {
                snapshot::publish(&self.dir, &img)
                    .map(|_| img.len())
                    .map_err(|e| PublishError::Write(e.to_string()))
            });
        let mut stats = self.stats.lock();
        match result {
            Ok(bytes) => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                self.published = meta.seq;
                self.published_tx.send_replace(meta.seq);
                (self.on_published)(meta.seq);
                stats.seq = meta.seq;
                stats.publishes += 1;
                stats.last_duration_ms = Some(ms);
                stats.last_bytes = Some(bytes as u64);
                stats.last_error = None;
                tracing::debug!(
                    seq = meta.seq,
                    words = self.shadow.len(),
                    bytes,
                    ms,
                    "snapshot published"
                );
                Ok(meta.seq)
            }
            Err(e) => {
                tracing::error!(error = %e, seq = meta.seq, "snapshot failed; the last good one stays in place");
                stats.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}
