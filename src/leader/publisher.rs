//! The leader's snapshot publisher: a thread that, every interval when the table
//! changed, seals the table's live words (see [`crate::storage::layered`]) and writes
//! them over the delta on disk as the next delta, then maps it and swaps it in for the
//! sealed words; and that compacts the base and the delta into a new base in the
//! background when the delta grows.
//!
//! The files are the table: memory holds only the words changed since the last
//! publication. Publishing takes the table's write lock twice, each time for a pointer
//! swap (the seal, and the mapped delta in place of the sealed words), and writes the
//! file with no lock held. A publication costs what changed since the last
//! compaction, whatever the table's size.
//!
//! A compaction reads the mapped base and the mapped delta as they are at its start
//! (immutable files: nothing is copied or frozen in memory) and streams them into a
//! new base on a second thread, while this thread goes on publishing deltas on the old
//! base. When the new base is written and checked, this thread writes the newest delta
//! again on the new base (only the words it changed since the compaction's seq),
//! renames the base, then that delta, into place, and swaps both into the table. The
//! log's checkpoint stays at the compaction's seq until then: a crash between the two
//! renames leaves the new base and a delta on the old one, which does not pair with
//! it, and recovery replays the log from the new base's seq.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::compaction::{Compaction, compaction_due};
use crate::protocol::Incarnation;
use crate::storage::counts::CountMap;
use crate::storage::delta::{memory_over_file, rebased};
use crate::storage::layered::{Layered, Lower, Sealed};
use crate::storage::mapped::{MappedSnapshot, MappedState};
use crate::storage::snapshot::checked::{self, Checked};
use crate::storage::snapshot::{self, BaseRef, Meta, Staged};
use crate::words::Tokenizer;

/// How often the thread looks for a finished compaction while one runs.
const POLL_COMPACTION: Duration = Duration::from_millis(20);

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
    /// Duration of the last compaction, from its start to the new base in place.
    pub last_compaction_ms: Option<f64>,
    /// A compaction is under way.
    pub compacting: bool,
}

/// Handle to the publisher thread. Dropping it stops the thread after a final publish.
pub struct Publisher {
    /// The thread; dropping the handle publishes a last time and stops it.
    thread: crate::worker::Worker<Msg>,
    stats: Arc<Mutex<PublishStats>>,
    published: tokio::sync::watch::Receiver<u64>,
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
#[derive(Debug, Clone, Copy)]
pub struct Records {
    pub base: Checked,
    pub delta: Option<Checked>,
}

impl Records {
    fn store(&self, dir: &std::path::Path) {
        let all: Vec<Checked> = std::iter::once(self.base).chain(self.delta).collect();
        if let Err(e) = checked::store(dir, &all) {
            // Costs the next start a full check of the files, nothing more.
            tracing::warn!(error = %e, "recording the checked snapshot files");
        }
    }
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

    pub fn stats(&self) -> PublishStats {
        self.stats.lock().clone()
    }
}

struct Worker {
    dir: PathBuf,
    table: Arc<RwLock<Layered>>,
    /// The seq of the state on disk.
    published: u64,
    records: Records,
    tokenizer: Tokenizer,
    incarnation: Incarnation,
    interval: Duration,
    compact_after: usize,
    compaction: Option<Compaction>,
    stats: Arc<Mutex<PublishStats>>,
    published_tx: tokio::sync::watch::Sender<u64>,
    on_published: Box<dyn Fn(u64) + Send>,
}

impl Worker {
    fn meta(&self, seq: u64) -> Meta {
        Meta {
            tokenizer: self.tokenizer,
            seq,
            incarnation: self.incarnation,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        // Recovered writes (the log replayed past the state on disk) are published at
        // once: local replicas see what the leader serves.
        if self.table.read().seq() != self.published {
            let _ = self.publish();
        }
        let mut next_tick = Instant::now() + self.interval;
        loop {
            let wake = match self.compaction {
                Some(_) => next_tick.min(Instant::now() + POLL_COMPACTION),
                None => next_tick,
            };
            let msg = rx.recv_deadline(wake);
            self.finish_compaction();
            match msg {
                Ok(Msg::Flush(reply)) => {
                    let _ = reply.send(self.publish_if_changed());
                }
                // The write a reader waits for was applied before it could ask, so the
                // table holds it.
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

    fn publish_if_changed(&mut self) -> Result<u64, PublishError> {
        if self.table.read().seq() == self.published {
            return Ok(self.published);
        }
        self.publish()
    }

    /// Seals what changed and publishes it over the delta on disk.
    fn publish(&mut self) -> Result<u64, PublishError> {
        let started = Instant::now();
        let lower = self.table.write().seal();
        let Some(top) = lower.sealed.last().cloned() else {
            return Ok(self.published);
        };
        let meta = self.meta(top.seq);
        let over = lower.sealed_words();
        let base = lower.files.base.header();
        let base_ref = BaseRef {
            checksum: base.checksum,
            seq: base.seq,
            total_words: top.words,
        };
        let entries = memory_over_file(&over, lower.files.delta.as_deref());
        let result = snapshot::stage(
            &self.dir,
            snapshot::DELTA_TEMP_NAME,
            meta,
            Some(base_ref),
            entries,
        )
        .map_err(|e| PublishError::Encode(e.to_string()))
        .and_then(|staged| {
            snapshot::install(&self.dir, &staged, snapshot::DELTA_NAME)
                .map(|path| (staged.header, path))
                .map_err(|e| PublishError::Write(e.to_string()))
        });
        let (header, path) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, seq = meta.seq, "snapshot failed; the last good one stays in place");
                self.stats.lock().last_error = Some(e.to_string());
                return Err(e);
            }
        };
        // On disk: local replicas may load it now.
        self.published = meta.seq;
        self.published_tx.send_replace(meta.seq);
        // While a compaction is under way, the log must still hold what follows its
        // base: a crash before the delta on the new base is published recovers from
        // the new base alone.
        let durable = match &self.compaction {
            Some(c) => c.seq.min(meta.seq),
            None => meta.seq,
        };
        (self.on_published)(durable);
        // Mapped (and checked whole, as a replica will) in place of the sealed words.
        // Until then, and if that fails, the sealed words serve.
        let mapped = MappedSnapshot::open(&path);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let bytes = header.payload_len + snapshot::HEADER_LEN as u64;
        let mut stats = self.stats.lock();
        stats.seq = meta.seq;
        stats.publishes += 1;
        stats.last_duration_ms = Some(ms);
        stats.last_bytes = Some(bytes);
        stats.delta_words = header.words;
        match mapped {
            Ok(delta) if delta.header().checksum == header.checksum => {
                stats.last_error = None;
                drop(stats);
                self.records.delta = Some(Checked::of(delta.header(), top.digest));
                self.records.store(&self.dir);
                let delta = Arc::new(delta);
                self.table.write().replace_lower(|cur| Lower {
                    files: MappedState {
                        base: cur.files.base.clone(),
                        delta: Some(delta),
                    },
                    digest: top.digest,
                    sealed: cur
                        .sealed
                        .iter()
                        .filter(|s| s.seq > meta.seq)
                        .cloned()
                        .collect(),
                });
            }
            Ok(_) => {
                stats.last_error = Some("the delta changed before it was mapped".into());
            }
            Err(e) => {
                tracing::error!(error = %e, "mapping the delta just published");
                stats.last_error = Some(format!("mapping the delta just published: {e}"));
            }
        }
        tracing::debug!(
            seq = meta.seq,
            words = header.words,
            bytes,
            ms,
            "delta published"
        );
        Ok(meta.seq)
    }

    /// Starts a compaction if the delta has grown past its share of the base and none
    /// is under way.
    fn maybe_compact(&mut self) {
        if self.compaction.is_some() {
            return;
        }
        let lower = self.table.read().lower().clone();
        let Some(delta) = lower.files.delta.clone() else {
            return;
        };
        let base = lower.files.base.clone();
        if !compaction_due(
            delta.header().words,
            base.header().words,
            self.compact_after,
        ) {
            return;
        }
        let meta = self.meta(delta.header().seq);
        tracing::debug!(seq = meta.seq, "compaction started");
        self.stats.lock().compacting = true;
        self.compaction = Some(Compaction::start(
            self.dir.clone(),
            meta,
            base,
            delta,
            lower.digest,
        ));
    }

    /// Puts a finished compaction's base in place, with the newest delta written again
    /// on it.
    fn finish_compaction(&mut self) {
        let Some(result) = self.compaction.as_ref().and_then(|c| c.poll()) else {
            return;
        };
        let c = self.compaction.take().expect("polled above");
        let installed = result.and_then(|(staged, base)| self.install_base(&c, staged, base));
        let mut st = self.stats.lock();
        st.compacting = false;
        match installed {
            Ok(h) => {
                let ms = c.started.elapsed().as_secs_f64() * 1e3;
                st.compactions += 1;
                st.last_compaction_ms = Some(ms);
                st.base_seq = h.seq;
                st.base_words = h.words;
                tracing::info!(
                    seq = h.seq,
                    words = h.words,
                    ms,
                    "compacted into a new base"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "compaction failed; the delta keeps growing on the old base");
                st.last_error = Some(format!("compaction: {e}"));
            }
        }
    }

    /// Writes the delta on disk again on the new base, renames the base then the delta
    /// into place, and swaps both into the table. Before the base's rename, a failure
    /// leaves everything as it was.
    fn install_base(
        &mut self,
        c: &Compaction,
        staged: Staged,
        mut base: MappedSnapshot,
    ) -> Result<snapshot::Header, String> {
        let discard = |e: String| {
            let _ = std::fs::remove_file(&staged.path);
            e
        };
        let lower = self.table.read().lower().clone();
        let Some(old) = lower.files.delta.clone() else {
            return Err(discard("no delta on disk to move onto the new base".into()));
        };
        let base_ref = BaseRef {
            checksum: base.header().checksum,
            seq: base.header().seq,
            total_words: old.header().total_words(),
        };
        let meta = self.meta(old.header().seq);
        let delta = snapshot::stage(
            &self.dir,
            snapshot::DELTA_TEMP_NAME,
            meta,
            Some(base_ref),
            rebased(&old, &base),
        )
        .map_err(|e| discard(format!("writing the delta on the new base: {e}")))?;
        let path = snapshot::install(&self.dir, &staged, snapshot::FILE_NAME).map_err(|e| {
            let _ = std::fs::remove_file(&delta.path);
            discard(e.to_string())
        })?;
        base.follow_rename(&path);
        let base = Arc::new(base);
        self.records.base = Checked::of(base.header(), c.digest);
        let header = *base.header();
        // The new base is the state on disk now (with the log from its seq): the
        // table's files must name it whatever happens to the delta.
        let mapped = snapshot::install(&self.dir, &delta, snapshot::DELTA_NAME)
            .map_err(|e| e.to_string())
            .and_then(|p| MappedSnapshot::open(&p).map_err(|e| e.to_string()));
        match mapped {
            Ok(d) => {
                self.records.delta = Some(Checked::of(d.header(), lower.digest));
                self.records.store(&self.dir);
                let d = Arc::new(d);
                self.table.write().replace_lower(|cur| Lower {
                    files: MappedState {
                        base,
                        delta: Some(d),
                    },
                    digest: cur.digest,
                    sealed: cur.sealed.clone(),
                });
                (self.on_published)(meta.seq);
            }
            Err(e) => {
                // The delta's words go back into memory, sealed over the new base,
                // and are published with the next delta.
                tracing::error!(error = %e, "publishing the delta on the new base");
                let mut words = CountMap::new();
                for (w, n) in rebased(&old, &base) {
                    words.insert_new(w, n);
                }
                let under = Sealed {
                    map: words,
                    seq: old.header().seq,
                    digest: lower.digest,
                    words: old.header().total_words(),
                };
                self.records.delta = None;
                self.records.store(&self.dir);
                self.published = c.seq;
                self.table.write().replace_lower(|cur| Lower {
                    files: MappedState { base, delta: None },
                    digest: c.digest,
                    sealed: std::iter::once(Arc::new(under))
                        .chain(cur.sealed.iter().cloned())
                        .collect(),
                });
            }
        }
        Ok(header)
    }

    /// Stops a compaction under way (at shutdown): the delta on the old base is
    /// published instead.
    fn abandon_compaction(&mut self) {
        if let Some(c) = self.compaction.take() {
            c.abandon();
            self.stats.lock().compacting = false;
        }
    }
}
