//! The publisher thread: its loop, and a publication (seal, write, map, swap).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::{Mutex, RwLock};

use super::types::{Msg, PublishError, PublishStats, Records};
use crate::leader::compaction::Compaction;
use crate::protocol::Incarnation;
use crate::storage::delta::memory_over_file;
use crate::storage::layered::{Layered, Lower};
use crate::storage::mapped::{MappedSnapshot, MappedState};
use crate::storage::snapshot::checked::Checked;
use crate::storage::snapshot::{self, BaseRef, Meta};
use crate::words::Tokenizer;

/// How often the thread looks for a finished compaction while one runs.
const POLL_COMPACTION: Duration = Duration::from_millis(20);

pub(super) struct Worker {
    pub(super) dir: PathBuf,
    pub(super) table: Arc<RwLock<Layered>>,
    /// The seq of the state on disk.
    pub(super) published: u64,
    pub(super) records: Records,
    pub(super) tokenizer: Tokenizer,
    pub(super) incarnation: Incarnation,
    pub(super) interval: Duration,
    pub(super) compact_after: usize,
    /// The delta into a new base.
    pub(super) compaction: Option<Compaction>,
    /// The recent delta into the delta.
    /// Recent deltas into the delta.
    pub(super) merge_delta: Option<Compaction>,
    /// Recent deltas into one.
    pub(super) merge_recent: Option<Compaction>,
    pub(super) stats: Arc<Mutex<PublishStats>>,
    pub(super) published_tx: tokio::sync::watch::Sender<u64>,
    pub(super) on_published: Box<dyn Fn(u64) + Send>,
    /// Whether the heap was trimmed since the last publication.
    pub(super) trimmed: bool,
}

impl Worker {
    pub(super) fn meta(&self, seq: u64) -> Meta {
        Meta {
            tokenizer: self.tokenizer,
            seq,
            incarnation: self.incarnation,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
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
                Ok(Msg::Capture(into, reply)) => {
                    let _ = reply.send(self.capture(&into));
                }
                Ok(Msg::Adopt(a, reply)) => {
                    let _ = reply.send(self.adopt(&a.dir, &a.chain, &a.checked));
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
    pub(super) fn durable(&self) -> u64 {
        self.merges()
            .map(|c| c.fallback)
            .fold(self.published, u64::min)
    }

    /// The merges under way.
    pub(super) fn merges(&self) -> impl Iterator<Item = &Compaction> {
        [&self.compaction, &self.merge_delta, &self.merge_recent]
            .into_iter()
            .flatten()
    }

    pub(super) fn publish_if_changed(&mut self) -> Result<u64, PublishError> {
        if self.table.read().seq() == self.published {
            return Ok(self.published);
        }
        self.publish()
    }

    /// Seals what changed and publishes it: as the next recent delta on the newest
    /// file (only the words of this interval), or as the delta when the base has none.
    pub(super) fn publish(&mut self) -> Result<u64, PublishError> {
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
            // Written by this thread from words it holds: recorded as checked before
            // it is in place, so a local replica verifies its checksum only.
            self.pre_record(&[Checked::of(&staged.header, top.digest)]);
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
    pub(super) fn note_files(
        &self,
        delta: Option<&MappedSnapshot>,
        recent: &[Arc<MappedSnapshot>],
    ) {
        let mut st = self.stats.lock();
        st.delta_words = delta.map_or(0, |d| d.header().words);
        st.recent_files = recent.len() as u64;
        st.recent_words = recent.iter().map(|r| r.header().words).sum();
    }
}
