//! The leader's snapshot publisher: a thread that publishes, every interval when the
//! table changed, the delta of the words changed since the base (see
//! [`crate::storage::snapshot`]), and compacts in the background when the delta grows.
//!
//! It keeps no copy of the table: a word's count is the delta's if it changed since
//! the base, else the base's, read from the leader's own mapping of the base file
//! ([`Changes`]). It is fed the same ordered batches as the live table, so publishing
//! never takes the live table's lock. A publication costs what changed since the last
//! compaction, whatever the table's size.
//!
//! A compaction freezes the changes, and a second thread streams the mapped base and
//! the frozen changes into a new base file (never the whole archive in memory) while
//! this thread goes on publishing deltas on the old base. When the new base is written
//! and validated, this thread renames it into place and at once publishes a delta on
//! it. The log's checkpoint stays at the compaction's seq until then: a crash between
//! the two renames leaves the new base and a delta on the old one, which does not pair
//! with it, and recovery replays the log from the new base's seq.
//!
//! Batches are handed over through a mutex-guarded queue that the thread drains every
//! few milliseconds, not one channel message per batch: waking a thread per write cost
//! the leader a tenth of its CPU under load. Control messages (flush, publish soon,
//! stop) go through a channel; each drains the queue first, so it sees every batch
//! handed over before it was sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde::Serialize;

use crate::protocol::Incarnation;
use crate::storage::batch::Batch;
use crate::storage::delta::{Changes, merged};
use crate::storage::mapped::{MappedSnapshot, MappedState};
use crate::storage::snapshot::{self, BaseRef, Meta, Staged};
use crate::words::Tokenizer;

/// How often the thread applies handed-over batches to its changes when it has
/// nothing else to do: bounds the queue's memory whatever the snapshot interval.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// A compaction starts once the delta holds an eighth of the base's words (or the
/// configured minimum, if that is more).
const COMPACT_FRACTION: u64 = 8;

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
    /// Words in the last delta published.
    pub delta_words: u64,
    /// Compactions finished since start.
    pub compactions: u64,
    /// Duration of the last compaction, from freezing the changes to the new base
    /// in place.
    pub last_compaction_ms: Option<f64>,
    /// A compaction is under way.
    pub compacting: bool,
}

/// Handle to the publisher thread. Dropping it stops the thread after a final publish.
pub struct Publisher {
    /// The thread; dropping the handle publishes a last time and stops it.
    thread: crate::worker::Worker<Msg>,
    queue: Arc<Mutex<Vec<Arc<Batch>>>>,
    stats: Arc<Mutex<PublishStats>>,
    published: tokio::sync::watch::Receiver<u64>,
    dir: PathBuf,
    /// The base on disk, as the thread maps it.
    base: Arc<Mutex<Arc<MappedSnapshot>>>,
}

/// What the publisher starts from.
pub struct Setup {
    pub dir: PathBuf,
    /// The base on disk and the changes since, up to `seq`.
    pub changes: Changes,
    pub seq: u64,
    /// The seq of the state on disk (base and delta) now.
    pub published_seq: u64,
    pub tokenizer: Tokenizer,
    pub incarnation: Incarnation,
    pub interval: Duration,
    /// See [`crate::config::LeaderConfig::compact_after`].
    pub compact_after: usize,
    /// Told the seq of every state made durable (the log drops what it covers).
    pub on_published: Box<dyn Fn(u64) + Send>,
}

impl Publisher {
    /// Starts the thread.
    pub fn spawn(setup: Setup) -> Self {
        let base = *setup.changes.base().header();
        let stats = Arc::new(Mutex::new(PublishStats {
            seq: setup.published_seq,
            base_seq: base.seq,
            base_words: base.words,
            ..Default::default()
        }));
        let (published_tx, published) = tokio::sync::watch::channel(setup.published_seq);
        let queue = Arc::new(Mutex::new(Vec::new()));
        let base = Arc::new(Mutex::new(setup.changes.base().clone()));
        let dir = setup.dir.clone();
        let worker = Worker {
            base: base.clone(),
            dir: setup.dir,
            changes: setup.changes,
            seq: setup.seq,
            published: setup.published_seq,
            tokenizer: setup.tokenizer,
            incarnation: setup.incarnation,
            interval: setup.interval,
            compact_after: setup.compact_after,
            compaction: None,
            stats: stats.clone(),
            published_tx,
            queue: queue.clone(),
            scratch: Vec::new(),
            on_published: setup.on_published,
        };
        let thread = crate::worker::Worker::spawn("memdb-publisher", move |rx| worker.run(rx))
            .expect("spawning the publisher thread");
        Publisher {
            thread,
            queue,
            stats,
            published,
            dir,
            base,
        }
    }

    /// The state on disk, mapped: the base the publisher maps (validated once, when it
    /// was written) and the delta on disk (validated now). For `GET /sync`.
    pub fn published_state(&self) -> Result<MappedState, String> {
        let base = self.base.lock().clone();
        MappedState::open(&self.dir, u64::MAX, &|| false, &[base])
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no snapshot is published".to_owned())
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
    /// The base on disk, shared with the handle (for `GET /sync`).
    base: Arc<Mutex<Arc<MappedSnapshot>>>,
    changes: Changes,
    /// The seq the changes are at.
    seq: u64,
    /// The seq of the state on disk.
    published: u64,
    tokenizer: Tokenizer,
    incarnation: Incarnation,
    interval: Duration,
    compact_after: usize,
    compaction: Option<Compaction>,
    stats: Arc<Mutex<PublishStats>>,
    published_tx: tokio::sync::watch::Sender<u64>,
    queue: Arc<Mutex<Vec<Arc<Batch>>>>,
    /// Swapped with the queue so that draining holds its lock for a moment only.
    scratch: Vec<Arc<Batch>>,
    on_published: Box<dyn Fn(u64) + Send>,
}

/// A compaction under way on its own thread.
struct Compaction {
    /// The seq of the base it writes.
    seq: u64,
    started: Instant,
    stop: Arc<AtomicBool>,
    done: Receiver<Result<(Staged, MappedSnapshot), String>>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        // Recovered writes (the log replayed past the state on disk) are published at
        // once: local replicas see what the leader serves.
        if self.seq != self.published {
            let _ = self.publish();
        }
        let mut next_tick = Instant::now() + self.interval;
        loop {
            let wake = next_tick.min(Instant::now() + DRAIN_EVERY);
            let msg = rx.recv_deadline(wake);
            self.drain();
            self.finish_compaction();
            match msg {
                Ok(Msg::Flush(reply)) => {
                    let _ = reply.send(self.publish_if_changed());
                }
                // Every batch up to the wanted seq was handed over before this request
                // (the write was acknowledged before a reader could ask for it), so the
                // changes hold it after the drain above.
                Ok(Msg::Soon(want)) => {
                    if self.published < want {
                        let _ = self.publish_if_changed();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.abandon_compaction();
                    if let Err(e) = self.publish_if_changed() {
                        tracing::error!(error = %e, "final snapshot failed");
                    }
                    return;
                }
            }
            if Instant::now() >= next_tick {
                let _ = self.publish_if_changed();
                self.maybe_compact();
                next_tick = Instant::now() + self.interval;
            }
        }
    }

    /// Applies every handed-over batch to the changes, in order.
    fn drain(&mut self) {
        std::mem::swap(&mut *self.queue.lock(), &mut self.scratch);
        for b in self.scratch.drain(..) {
            self.changes.apply(&b.deltas);
            self.seq = b.seq;
        }
    }

    fn publish_if_changed(&mut self) -> Result<u64, PublishError> {
        if self.seq == self.published {
            return Ok(self.published);
        }
        self.publish()
    }

    /// Publishes the delta as it stands.
    fn publish(&mut self) -> Result<u64, PublishError> {
        let started = Instant::now();
        let meta = Meta {
            tokenizer: self.tokenizer,
            seq: self.seq,
            incarnation: self.incarnation,
        };
        let base = self.changes.base().header();
        let base_ref = BaseRef {
            checksum: base.checksum,
            seq: base.seq,
            total_words: self.changes.total_words(),
        };
        let result = snapshot::stage(
            &self.dir,
            snapshot::DELTA_TEMP_NAME,
            meta,
            Some(base_ref),
            self.changes.entries(),
        )
        .map_err(|e| PublishError::Encode(e.to_string()))
        .and_then(|staged| {
            snapshot::install(&self.dir, &staged, snapshot::DELTA_NAME)
                .map(|_| staged.header)
                .map_err(|e| PublishError::Write(e.to_string()))
        });
        let mut stats = self.stats.lock();
        match result {
            Ok(header) => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                self.published = meta.seq;
                self.published_tx.send_replace(meta.seq);
                // While a compaction is under way, the log must still hold what
                // follows its base: a crash before the delta on the new base is
                // published recovers from the new base alone.
                let durable = match &self.compaction {
                    Some(c) => c.seq.min(meta.seq),
                    None => meta.seq,
                };
                (self.on_published)(durable);
                let bytes = header.payload_len + snapshot::HEADER_LEN as u64;
                stats.seq = meta.seq;
                stats.publishes += 1;
                stats.last_duration_ms = Some(ms);
                stats.last_bytes = Some(bytes);
                stats.delta_words = header.words;
                stats.last_error = None;
                tracing::debug!(
                    seq = meta.seq,
                    words = header.words,
                    bytes,
                    ms,
                    "delta published"
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

    /// Starts a compaction if the delta has grown past its share of the base and none
    /// is under way.
    fn maybe_compact(&mut self) {
        let base_words = self.changes.base().header().words;
        let due = compaction_due(self.changes.len(), base_words, self.compact_after);
        if self.compaction.is_some() || !due {
            return;
        }
        let Some((frozen, _)) = self.changes.freeze() else {
            return;
        };
        let base = self.changes.base().clone();
        let dir = self.dir.clone();
        let meta = Meta {
            tokenizer: self.tokenizer,
            seq: self.seq,
            incarnation: self.incarnation,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("memdb-compactor".into())
            .spawn(move || {
                let stop = || stopped.load(Ordering::Acquire);
                let result = snapshot::stage_until(
                    &dir,
                    snapshot::TEMP_NAME,
                    meta,
                    None,
                    merged(base.map(), &frozen),
                    &stop,
                )
                .and_then(|staged| {
                    // Validated here, off the publisher's thread, as a replica will.
                    let mapped = MappedSnapshot::open_until(&staged.path, u64::MAX, &stop)?;
                    Ok((staged, mapped))
                })
                .map_err(|e| e.to_string());
                if result.is_err() {
                    let _ = std::fs::remove_file(dir.join(snapshot::TEMP_NAME));
                }
                let _ = done_tx.send(result);
            })
            .expect("spawning the compaction thread");
        tracing::debug!(seq = self.seq, "compaction started");
        self.stats.lock().compacting = true;
        self.compaction = Some(Compaction {
            seq: self.seq,
            started: Instant::now(),
            stop,
            done,
            thread,
        });
    }

    /// Puts a finished compaction's base in place and publishes a delta on it.
    fn finish_compaction(&mut self) {
        let Some(c) = &self.compaction else {
            return;
        };
        let result = match c.done.try_recv() {
            Ok(r) => r,
            Err(crossbeam_channel::TryRecvError::Empty) => return,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                Err("the compaction thread died".to_owned())
            }
        };
        let c = self.compaction.take().expect("checked above");
        let _ = c.thread.join();
        let installed = result.and_then(|(staged, mut mapped)| {
            snapshot::install(&self.dir, &staged, snapshot::FILE_NAME)
                .map(|path| {
                    mapped.follow_rename(&path);
                    mapped
                })
                .map_err(|e| {
                    let _ = std::fs::remove_file(&staged.path);
                    e.to_string()
                })
        });
        match installed {
            Ok(mapped) => {
                let h = *mapped.header();
                let mapped = Arc::new(mapped);
                *self.base.lock() = mapped.clone();
                self.changes.rebase(mapped);
                let ms = c.started.elapsed().as_secs_f64() * 1e3;
                {
                    let mut st = self.stats.lock();
                    st.compacting = false;
                    st.compactions += 1;
                    st.last_compaction_ms = Some(ms);
                    st.base_seq = h.seq;
                    st.base_words = h.words;
                }
                tracing::info!(
                    seq = h.seq,
                    words = h.words,
                    ms,
                    "compacted into a new base"
                );
                // The delta on disk names the old base: replace it now.
                let _ = self.publish();
            }
            Err(e) => {
                self.changes.thaw();
                tracing::error!(error = %e, "compaction failed; the delta keeps growing on the old base");
                let mut st = self.stats.lock();
                st.compacting = false;
                st.last_error = Some(format!("compaction: {e}"));
            }
        }
    }

    /// Stops a compaction under way (at shutdown): the delta on the old base is
    /// published instead.
    fn abandon_compaction(&mut self) {
        if let Some(c) = self.compaction.take() {
            c.stop.store(true, Ordering::Release);
            let _ = c.thread.join();
            // A base it finished but nobody installed.
            let _ = std::fs::remove_file(self.dir.join(snapshot::TEMP_NAME));
            self.changes.thaw();
            self.stats.lock().compacting = false;
        }
    }
}

/// Whether a delta of `delta_words` over a base of `base_words` should be merged into
/// a new base: once it holds an eighth of the base or `compact_after` words, whichever
/// is more. An empty delta never is (a `compact_after` of 0 must not rewrite the base
/// every interval).
fn compaction_due(delta_words: usize, base_words: u64, compact_after: usize) -> bool {
    let limit = (compact_after as u64)
        .max(base_words / COMPACT_FRACTION)
        .max(1);
    delta_words as u64 >= limit
}

#[cfg(test)]
mod tests {
    use super::compaction_due;

    #[test]
    fn a_compaction_is_due_at_an_eighth_of_the_base_or_the_minimum_never_when_empty() {
        assert!(
            !compaction_due(0, 0, 0),
            "an empty delta over an empty base"
        );
        assert!(!compaction_due(0, 1_000, 0), "an empty delta");
        assert!(compaction_due(1, 0, 0));
        assert!(!compaction_due(99, 0, 100));
        assert!(compaction_due(100, 0, 100));
        assert!(!compaction_due(124_999, 1_000_000, 100), "under an eighth");
        assert!(compaction_due(125_000, 1_000_000, 100));
    }
}
