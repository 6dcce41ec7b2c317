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

use super::compaction::{Compaction, Merge, RECENT_FILES, compaction_due, merge_due};
use crate::protocol::Incarnation;
use crate::storage::counts::CountMap;
use crate::storage::delta::{entries, memory_over_file, rebased};
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

    pub(super) fn store(&self, dir: &std::path::Path) {
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
    /// The delta into a new base.
    compaction: Option<Compaction>,
    /// The recent delta into the delta.
    /// Recent deltas into the delta.
    merge_delta: Option<Compaction>,
    /// Recent deltas into one.
    merge_recent: Option<Compaction>,
    stats: Arc<Mutex<PublishStats>>,
    published_tx: tokio::sync::watch::Sender<u64>,
    on_published: Box<dyn Fn(u64) + Send>,
    /// Whether the heap was trimmed since the last publication.
    trimmed: bool,
}

/// Which merge of recent deltas.
#[derive(Clone, Copy)]
enum Slot {
    Delta,
    Recent,
}

/// A file staged for a merge's install, and the name it takes.
struct Step {
    staged: Staged,
    name: String,
    /// Mapped under its temp name (a rename keeps the inode).
    mapped: Arc<MappedSnapshot>,
    /// The digest of the table it completes.
    digest: u64,
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
            let wake = match self.merges().next() {
                None => next_tick,
                Some(_) => next_tick.min(Instant::now() + POLL_COMPACTION),
            };
            let msg = rx.recv_deadline(wake);
            self.finish_merges();
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
                    self.abandon_merges();
                    if let Err(e) = self.publish_if_changed() {
                        tracing::error!(error = %e, "final snapshot failed");
                    }
                    return;
                }
            }
            if Instant::now() >= next_tick {
                let idle = self.table.read().seq() == self.published;
                let _ = self.publish_if_changed();
                self.maybe_merge();
                // Nothing written for an interval: give back the memory the earlier
                // intervals' words and the merges' scratch freed (once, and again after
                // each merge; while writes go on, the next interval reuses it).
                if idle && !self.trimmed {
                    crate::heap::trim();
                    self.trimmed = true;
                }
                // On a fixed beat: a publication's own time does not stretch the
                // interval (one that took longer is followed at once).
                next_tick = (next_tick + self.interval).max(Instant::now());
            }
        }
    }

    /// The seq up to which the files on disk hold every write whatever happens to a
    /// merge under way: a crash between a merge's renames leaves the chain cut at the
    /// merged file, whose seq is the merge's.
    fn durable(&self) -> u64 {
        self.merges()
            .map(|c| c.fallback)
            .fold(self.published, u64::min)
    }

    /// The merges under way.
    fn merges(&self) -> impl Iterator<Item = &Compaction> {
        [&self.compaction, &self.merge_delta, &self.merge_recent]
            .into_iter()
            .flatten()
    }

    fn publish_if_changed(&mut self) -> Result<u64, PublishError> {
        if self.table.read().seq() == self.published {
            return Ok(self.published);
        }
        self.publish()
    }

    /// Seals what changed and publishes it: as the next recent delta on the newest
    /// file (only the words of this interval), or as the delta when the base has none.
    fn publish(&mut self) -> Result<u64, PublishError> {
        let started = Instant::now();
        let lower = self.table.write().seal();
        let sealed_ms = started.elapsed().as_secs_f64() * 1e3;
        let Some(top) = lower.sealed.last().cloned() else {
            return Ok(self.published);
        };
        let meta = self.meta(top.seq);
        let over = lower.sealed_words();
        let files = &lower.files;
        // A recent delta goes on a delta that names the table it completes (version
        // 4); on the base alone, or on a delta of an earlier version, the words go
        // into a new delta (over the old one's).
        let chained = files
            .delta
            .as_ref()
            .filter(|d| d.header().chain_name().is_some());
        let (name, temp, names, under, rest) = match chained {
            Some(d) => {
                let newest = files.recent.last().unwrap_or(d);
                (
                    snapshot::recent_name(meta.seq),
                    snapshot::RECENT_TEMP_NAME,
                    newest.header().chain_name().unwrap_or(0),
                    newest.header().seq,
                    None,
                )
            }
            None => (
                snapshot::DELTA_NAME.to_owned(),
                snapshot::DELTA_TEMP_NAME,
                files.base.header().checksum,
                files.base.header().seq,
                files.delta.as_deref(),
            ),
        };
        let base_ref = BaseRef {
            checksum: names,
            seq: under,
            total_words: top.words,
            digest: top.digest,
        };
        let result = snapshot::stage(
            &self.dir,
            temp,
            meta,
            Some(base_ref),
            memory_over_file(&over, rest),
        )
        .map_err(|e| PublishError::Encode(e.to_string()))
        .and_then(|staged| {
            snapshot::install(&self.dir, &staged, &name)
                .map(|path| (staged.header, path))
                .map_err(|e| PublishError::Write(e.to_string()))
        });
        let written_ms = started.elapsed().as_secs_f64() * 1e3;
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
        (self.on_published)(self.durable());
        // Mapped in place of the sealed words; until then, and if that fails, the
        // sealed words serve. Its checksum is verified (the writer computed it reading
        // the file back), its structure trusted: this thread just wrote it from the
        // words it holds. (A merge, which reads files back, checks its output whole.)
        let mapped = MappedSnapshot::open_checked(&path, u64::MAX, &|| false, &|h| {
            h.checksum == header.checksum
        });
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let bytes = header.payload_len + snapshot::HEADER_LEN as u64;
        let mut stats = self.stats.lock();
        stats.seq = meta.seq;
        stats.publishes += 1;
        stats.last_duration_ms = Some(ms);
        stats.last_bytes = Some(bytes);
        stats.last_words = header.words;
        match mapped {
            Ok(file) => {
                stats.last_error = None;
                drop(stats);
                let file = Arc::new(file);
                let record = Checked::of(file.header(), top.digest);
                let (delta, recent) = if chained.is_none() {
                    self.records.delta = Some(record);
                    self.records.recent.clear();
                    (Some(file), Vec::new())
                } else {
                    self.records.recent.push(record);
                    let mut recent = files.recent.clone();
                    recent.push(file);
                    (files.delta.clone(), recent)
                };
                self.records.store(&self.dir);
                self.note_files(delta.as_deref(), &recent);
                self.table.write().replace_lower(|cur| Lower {
                    files: MappedState {
                        base: cur.files.base.clone(),
                        delta,
                        recent,
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
            Err(e) => {
                tracing::error!(error = %e, "mapping the delta just published");
                stats.last_error = Some(format!("mapping the delta just published: {e}"));
            }
        }
        tracing::debug!(
            seq = meta.seq,
            words = header.words,
            bytes,
            sealed_ms,
            written_ms,
            ms,
            swapped_ms = started.elapsed().as_secs_f64() * 1e3,
            "delta published"
        );
        self.trimmed = false;
        Ok(meta.seq)
    }

    /// The chain's shape, for `/health`.
    fn note_files(&self, delta: Option<&MappedSnapshot>, recent: &[Arc<MappedSnapshot>]) {
        let mut st = self.stats.lock();
        st.delta_words = delta.map_or(0, |d| d.header().words);
        st.recent_files = recent.len() as u64;
        st.recent_words = recent.iter().map(|r| r.header().words).sum();
    }

    /// Starts a compaction (the delta into a new base) or a merge of the recent deltas
    /// (into one, or into the delta) when one is due and none of its kind is under way.
    fn maybe_merge(&mut self) {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let Some(delta) = files.delta.clone() else {
            return;
        };
        let base = files.base.clone();
        if self.compaction.is_none()
            && compaction_due(
                delta.header().words,
                base.header().words,
                self.compact_after,
            )
        {
            let meta = self.meta(delta.header().seq);
            tracing::debug!(seq = meta.seq, "compaction started");
            self.stats.lock().compacting = true;
            let digest = self.records.delta.map_or(lower.digest, |r| r.digest);
            self.compaction = Some(Compaction::start(
                self.dir.clone(),
                snapshot::TEMP_NAME,
                meta,
                None,
                vec![delta.clone()],
                Some(base.clone()),
                digest,
                meta.seq,
            ));
        }
        if files.recent.is_empty() || delta.header().chain_name().is_none() {
            return;
        }
        let recent_words = files.recent.iter().map(|r| r.header().words).sum();
        let due = merge_due(
            files.recent.len(),
            recent_words,
            delta.header().words,
            base.header().words,
            self.compact_after,
        );
        let digest_at = |r: &MappedSnapshot| r.header().base.map_or(0, |b| b.digest);
        if due == Merge::Delta && self.merge_delta.is_none() {
            // All of them into a new delta on the base.
            let h = files.recent.last().expect("checked above").header();
            let digest = h.base.map_or(0, |b| b.digest);
            let base_ref = BaseRef {
                checksum: base.header().checksum,
                seq: base.header().seq,
                total_words: h.total_words(),
                digest,
            };
            self.merge_delta = Some(Compaction::start(
                self.dir.clone(),
                snapshot::MERGE_TEMP_NAME,
                self.meta(h.seq),
                Some(base_ref),
                files.recent.iter().rev().cloned().collect(),
                Some(delta),
                digest,
                h.seq,
            ));
            return;
        }
        // Those a delta merge does not hold, into one recent delta, on what the oldest
        // is on (until the others are removed the chain on disk may stop under it),
        // while a delta merge runs too: the chain stays short whatever the delta costs.
        let taken = self.merge_delta.as_ref().map_or(0, |m| m.seq);
        let run: Vec<_> = files
            .recent
            .iter()
            .filter(|r| r.header().seq > taken)
            .collect();
        if self.merge_recent.is_some() || run.len() < RECENT_FILES {
            return;
        }
        let (oldest, newest) = (run[0], run[run.len() - 1]);
        let on = oldest.header().base.expect("a recent delta is a delta");
        let h = newest.header();
        let base_ref = BaseRef {
            total_words: h.total_words(),
            digest: digest_at(newest),
            ..on
        };
        self.merge_recent = Some(Compaction::start(
            self.dir.clone(),
            snapshot::RECENT_MERGE_TEMP_NAME,
            self.meta(h.seq),
            Some(base_ref),
            run.iter().rev().map(|r| (*r).clone()).collect(),
            None,
            digest_at(newest),
            on.seq,
        ));
    }

    /// Puts finished merges in place: merges of recent deltas first, and a compaction
    /// only while no delta merge runs (a delta merge writes on the base a compaction
    /// replaces).
    fn finish_merges(&mut self) {
        for slot in [Slot::Delta, Slot::Recent] {
            let merge = match slot {
                Slot::Delta => &mut self.merge_delta,
                Slot::Recent => &mut self.merge_recent,
            };
            let Some(result) = merge.as_ref().and_then(|m| m.poll()) else {
                continue;
            };
            let m = merge.take().expect("polled above");
            let done = result.and_then(|(staged, file)| match slot {
                Slot::Delta => self.install_merged_delta(&m, staged, file),
                Slot::Recent => self.install_merged_recent(&m, staged, file),
            });
            self.trimmed = false;
            match done {
                Ok(()) => self.stats.lock().merges += 1,
                Err(e) => {
                    tracing::error!(error = %e, "a merge of recent deltas failed; they stay");
                    self.stats.lock().last_error = Some(format!("merge: {e}"));
                }
            }
        }
        if self.merge_delta.is_some() {
            return;
        }
        let Some(result) = self.compaction.as_ref().and_then(|c| c.poll()) else {
            return;
        };
        let c = self.compaction.take().expect("polled above");
        self.trimmed = false;
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

    /// A delta merge is done: the merged delta goes in (the recent deltas published
    /// since it started name the table it completes, so they stay on it as they are),
    /// and the merged recent deltas go.
    fn install_merged_delta(
        &mut self,
        m: &Compaction,
        staged: Staged,
        merged: MappedSnapshot,
    ) -> Result<(), String> {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let under = m.under.as_ref().map(|u| u.identity());
        if files.delta.as_ref().map(|d| d.identity()) != under {
            let _ = std::fs::remove_file(&staged.path);
            return Err("the delta changed under the merge".into());
        }
        let since = files
            .recent
            .iter()
            .position(|r| r.header().seq > m.seq)
            .unwrap_or(files.recent.len());
        let step = Step {
            staged,
            name: snapshot::DELTA_NAME.to_owned(),
            mapped: Arc::new(merged),
            digest: m.digest,
        };
        let recent = (
            files.recent[since..].to_vec(),
            self.records.recent[since.min(self.records.recent.len())..].to_vec(),
        );
        self.install_chain(files.base.clone(), step, recent, &lower);
        Ok(())
    }

    /// A merge of recent deltas is done: the merged file takes the newest one's name
    /// (it completes the same table, so the recent deltas published since stay on it as
    /// they are), and the others it merged go.
    fn install_merged_recent(
        &mut self,
        m: &Compaction,
        staged: Staged,
        merged: MappedSnapshot,
    ) -> Result<(), String> {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let ids = |v: &[Arc<MappedSnapshot>]| v.iter().map(|f| f.identity()).collect::<Vec<_>>();
        let n = m.over.len();
        let mut merged_ids = ids(&m.over);
        merged_ids.reverse();
        // Where the run it merged is on the chain now (a delta merge may have taken
        // the ones before it).
        let at = files
            .recent
            .iter()
            .position(|r| Some(r.identity()) == merged_ids.first().copied());
        let Some(at) = at.filter(|&at| {
            files.recent.len() >= at + n && ids(&files.recent[at..at + n]) == merged_ids
        }) else {
            let _ = std::fs::remove_file(&staged.path);
            return Err("the recent deltas changed under the merge".into());
        };
        let name = snapshot::recent_name(m.seq);
        if let Err(e) = snapshot::install(&self.dir, &staged, &name) {
            let _ = std::fs::remove_file(&staged.path);
            return Err(format!("installing {name}: {e}"));
        }
        let merged = Arc::new(merged);
        let mut recent = files.recent[..at].to_vec();
        recent.push(merged.clone());
        recent.extend(files.recent[at + n..].iter().cloned());
        let old = &self.records.recent;
        let mut records = old.get(..at).unwrap_or_default().to_vec();
        records.push(Checked::of(merged.header(), m.digest));
        records.extend(old.get(at + n..).unwrap_or_default().iter().copied());
        self.records.recent = records;
        self.records.store(&self.dir);
        let keep: Vec<u64> = recent.iter().map(|r| r.header().seq).collect();
        for (seq, name) in snapshot::recents(&self.dir).unwrap_or_default() {
            if !keep.contains(&seq) {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
        self.note_files(files.delta.as_deref(), &recent);
        self.table.write().replace_lower(|cur| Lower {
            files: MappedState {
                recent,
                ..cur.files.clone()
            },
            digest: cur.digest,
            sealed: cur.sealed.clone(),
        });
        (self.on_published)(self.durable());
        Ok(())
    }

    /// A compaction is done: the delta on disk is written again on the new base (only
    /// the words it changed since the compaction's seq: the same table at the same
    /// seq, so the recent deltas stay on it as they are), and both go in.
    fn install_base(
        &mut self,
        c: &Compaction,
        staged: Staged,
        base: MappedSnapshot,
    ) -> Result<snapshot::Header, String> {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let discard = |e: String| {
            let _ = std::fs::remove_file(&staged.path);
            e
        };
        let Some(old) = files.delta.clone() else {
            return Err(discard("no delta on disk to move onto the new base".into()));
        };
        let base = Arc::new(base);
        let header = *base.header();
        let on_base = MappedState::base(base.clone());
        let digest = self.records.delta.map_or(lower.digest, |r| r.digest);
        let h = old.header();
        let base_ref = BaseRef {
            checksum: header.checksum,
            seq: header.seq,
            total_words: h.total_words(),
            digest,
        };
        let delta = snapshot::stage(
            &self.dir,
            snapshot::DELTA_TEMP_NAME,
            self.meta(h.seq),
            Some(base_ref),
            rebased(&old, &on_base),
        )
        .map_err(|e| discard(format!("writing the delta on the new base: {e}")))?;
        let mapped = MappedSnapshot::open(&delta.path).map_err(|e| {
            let _ = std::fs::remove_file(&delta.path);
            discard(format!("reading back the delta on the new base: {e}"))
        })?;
        if let Err(e) = snapshot::install(&self.dir, &staged, snapshot::FILE_NAME) {
            let _ = std::fs::remove_file(&delta.path);
            return Err(discard(e.to_string()));
        }
        self.records.base = Checked::of(&header, c.digest);
        let step = Step {
            staged: delta,
            name: snapshot::DELTA_NAME.to_owned(),
            mapped: Arc::new(mapped),
            digest,
        };
        let recent = (files.recent.clone(), self.records.recent.clone());
        self.install_chain(base, step, recent, &lower);
        Ok(header)
    }

    /// Renames a merge's delta into place over `base` (already in place), with the
    /// recent deltas `recent` on it, removes the recent deltas off the chain, and swaps
    /// the chain into the table. Should the rename fail, the delta's words and the
    /// recent deltas' go back into memory, sealed over the base, and the next
    /// publication writes them again: the table is the same either way.
    fn install_chain(
        &mut self,
        base: Arc<MappedSnapshot>,
        step: Step,
        recent: (Vec<Arc<MappedSnapshot>>, Vec<Checked>),
        lower: &Lower,
    ) {
        let (recent, records) = recent;
        let placed = match snapshot::install(&self.dir, &step.staged, &step.name) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, file = %step.name, "renaming a merged file into place");
                self.stats.lock().last_error = Some(format!("installing {}: {e}", step.name));
                let _ = std::fs::remove_file(&step.staged.path);
                false
            }
        };
        let (files, back) = if placed {
            self.records.delta = Some(Checked::of(step.mapped.header(), step.digest));
            self.records.recent = records;
            let files = MappedState {
                base,
                delta: Some(step.mapped),
                recent,
            };
            (files, None)
        } else {
            // Each word once, with its count in the newest file that holds it.
            let mut words = CountMap::new();
            let newest = recent.last().unwrap_or(&step.mapped).clone();
            for f in recent.iter().rev().chain([&step.mapped]) {
                for (w, n) in entries(f) {
                    if words.get(w).is_none() {
                        words.insert_new(w, n);
                    }
                }
            }
            let h = newest.header();
            let digest = records.last().map_or(step.digest, |r| r.digest);
            let sealed = Sealed {
                map: words,
                seq: h.seq,
                digest,
                words: h.total_words(),
            };
            self.records.delta = None;
            self.records.recent.clear();
            (MappedState::base(base), Some(Arc::new(sealed)))
        };
        self.records.store(&self.dir);
        // The recent deltas a merge took in, or off the chain now.
        let keep: Vec<u64> = files.recent.iter().map(|r| r.header().seq).collect();
        for (seq, name) in snapshot::recents(&self.dir).unwrap_or_default() {
            if !keep.contains(&seq) {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
        self.note_files(files.delta.as_deref(), &files.recent);
        if back.is_some() {
            // The chain on disk is older than the table's files were: publish again.
            self.published = self.published.min(files.seq());
        }
        debug_assert!(lower.files.seq() >= files.seq());
        let digest = self.records.top().digest;
        self.table.write().replace_lower(|cur| Lower {
            files,
            digest,
            sealed: back.into_iter().chain(cur.sealed.iter().cloned()).collect(),
        });
        (self.on_published)(self.durable());
    }

    /// Stops the merges under way (at shutdown): the files stay as they are.
    fn abandon_merges(&mut self) {
        for c in [
            self.compaction.take(),
            self.merge_delta.take(),
            self.merge_recent.take(),
        ]
        .into_iter()
        .flatten()
        {
            c.abandon();
        }
        self.stats.lock().compacting = false;
    }
}
