//! Mapping the published state: what a reader of a data directory keeps (the state it
//! serves, what it counted, what the leader announced), and the one reload that every
//! reader goes through, whoever triggers it (the leader's socket, the file watch, the
//! poll, or a caller's `refresh`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use tokio::sync::watch;

use crate::protocol::PeerLine;
use crate::storage::mapped::{MappedSnapshot, MappedState, StateId, identity_of};
use crate::storage::snapshot;

use super::link::Link;

/// Where a reader maps from and how it follows.
#[derive(Debug, Clone)]
pub struct Options {
    /// The leader's data directory (only read, never written).
    pub data_dir: PathBuf,
    /// The leader's notification socket; default `<data_dir>/memdb.sock`.
    pub socket: Option<PathBuf>,
    /// How often the follower stats the published files in case both the socket and
    /// the file watch are silent. Default 1 s.
    pub poll_interval: Duration,
    /// A snapshot file larger than this is refused before it is read. Default 16 GiB.
    pub max_snapshot_bytes: u64,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Options {
            data_dir: data_dir.into(),
            socket: None,
            poll_interval: Duration::from_secs(1),
            max_snapshot_bytes: 16 << 30,
        }
    }

    /// The leader's notification socket: `socket`, or `memdb.sock` in `data_dir`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::protocol::SOCKET_NAME))
    }
}

/// What told the reader to look at the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Start,
    Socket,
    Watch,
    Poll,
    /// A caller's [`super::Reader::refresh`].
    Refresh,
}

/// States mapped, by what announced them.
#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct LoadsBySource {
    pub start: u64,
    pub socket: u64,
    pub watch: u64,
    pub poll: u64,
    /// By a caller's `refresh` (an embedded reader that follows by hand).
    pub refresh: u64,
}

impl LoadsBySource {
    fn count(&mut self, source: Source) {
        match source {
            Source::Start => self.start += 1,
            Source::Socket => self.socket += 1,
            Source::Watch => self.watch += 1,
            Source::Poll => self.poll += 1,
            Source::Refresh => self.refresh += 1,
        }
    }
}

#[derive(Default)]
pub(super) struct Stats {
    pub loads: LoadsBySource,
    pub rejected: u64,
    pub last_rejection: Option<String>,
    /// The files last rejected, so the same bad files are not validated again and again.
    pub rejected_identity: Option<StateId>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A newer state is mapped.
    New { seq: u64 },
    /// The files are the ones mapped (or none is published yet, or a compaction's
    /// base is ahead of the delta that pairs with it).
    Same,
    /// The files were refused; the state mapped before (if any) keeps serving.
    Rejected(String),
}

/// Everything a reader and its follower threads share.
pub(super) struct Maps {
    /// The state lookups are answered from. Swapped whole; a lookup loads it without
    /// a lock and finishes on the mapping it loaded.
    pub current: ArcSwapOption<MappedState>,
    /// The mapped seq, for async waiters (a tokio watch works without a runtime).
    pub seq_tx: watch::Sender<u64>,
    /// The mapped seq, for blocking waiters.
    pub seq: Mutex<u64>,
    pub seq_changed: Condvar,
    /// One reload at a time, whoever asks.
    reloading: Mutex<()>,
    pub socket_connected: AtomicBool,
    pub checks: AtomicU64,
    pub stats: Mutex<Stats>,
    /// Since when a reload has been validating a file, while it is.
    pub loading_since: Mutex<Option<Instant>>,
    /// The newest seq the leader announced on its socket, and since when it has been
    /// newer than the mapping.
    pub announced: Mutex<(u64, Option<Instant>)>,
    /// A new base mapped and validated before the delta that pairs with it appeared.
    spare_base: Mutex<Option<Arc<MappedSnapshot>>>,
    /// Set when the reader stops: a validation under way gives up.
    pub stopping: AtomicBool,
    pub options: Options,
    /// The connection to the leader's socket (while following), told of every load.
    pub link: Arc<Link>,
}

impl Maps {
    pub fn new(options: Options) -> Self {
        Maps {
            current: ArcSwapOption::empty(),
            seq_tx: watch::Sender::new(0),
            seq: Mutex::new(0),
            seq_changed: Condvar::new(),
            reloading: Mutex::new(()),
            socket_connected: AtomicBool::new(false),
            checks: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
            loading_since: Mutex::new(None),
            announced: Mutex::new((0, None)),
            spare_base: Mutex::new(None),
            stopping: AtomicBool::new(false),
            options,
            link: Arc::default(),
        }
    }

    pub fn current(&self) -> Option<Arc<MappedState>> {
        self.current.load_full()
    }

    pub fn seq_now(&self) -> u64 {
        *self.seq_tx.borrow()
    }

    /// The published files' identities now (`None` without a base).
    pub fn published_identity(&self) -> Option<StateId> {
        let dir = &self.options.data_dir;
        let base = identity_of(&dir.join(snapshot::FILE_NAME))?;
        let recents = snapshot::recents(dir).unwrap_or_default();
        Some((
            base,
            identity_of(&dir.join(snapshot::DELTA_NAME)),
            recents
                .iter()
                .filter_map(|(_, name)| identity_of(&dir.join(name)))
                .collect(),
        ))
    }

    /// The leader said a state of `seq` is published.
    pub fn announce(&self, seq: u64) {
        let mut a = self.announced.lock();
        a.0 = seq;
        if seq > self.seq_now() {
            a.1.get_or_insert_with(Instant::now);
        } else {
            a.1 = None;
        }
    }

    /// Maps the published files if they are not the ones mapped now. Blocking (it
    /// reads and checksums a new file whole). Files that fail validation are refused
    /// and the state mapped before keeps serving; the same refused files are not
    /// validated again.
    pub fn reload(&self, source: Source) -> Reloaded {
        let _one = self.reloading.lock();
        self.checks.fetch_add(1, Ordering::Relaxed);
        let Some(id) = self.published_identity() else {
            return Reloaded::Same;
        };
        let current = self.current();
        let current_id = current.as_ref().map(|m| m.identity());
        if current_id.as_ref() == Some(&id) {
            return Reloaded::Same;
        }
        {
            let st = self.stats.lock();
            if st.rejected_identity.as_ref() == Some(&id) {
                return Reloaded::Rejected(st.last_rejection.clone().unwrap_or_default());
            }
        }
        let started = Instant::now();
        *self.loading_since.lock() = Some(started);
        let opened = self.open(current.as_deref());
        *self.loading_since.lock() = None;
        let micros = started.elapsed().as_micros() as u64;
        match opened {
            Ok(None) => Reloaded::Same,
            Ok(Some(m)) if Some(m.identity()) == current_id => Reloaded::Same,
            Ok(Some(m)) => {
                self.spare_base.lock().take();
                let seq = m.seq();
                let words = m.words();
                self.current.store(Some(Arc::new(m)));
                self.seq_tx.send_replace(seq);
                *self.seq.lock() = seq;
                self.seq_changed.notify_all();
                {
                    let mut a = self.announced.lock();
                    if a.0 <= seq {
                        a.1 = None;
                    }
                }
                self.stats.lock().loads.count(source);
                self.link.loaded(PeerLine::Loaded { seq, micros });
                tracing::debug!(seq, words, ?source, "mapped a new state");
                Reloaded::New { seq }
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.options.data_dir.display(),
                    "rejected a snapshot; still serving the previous one");
                let mut st = self.stats.lock();
                st.rejected += 1;
                st.last_rejection = Some(e.clone());
                st.rejected_identity = Some(id);
                drop(st);
                self.link.loaded(PeerLine::Failed(e.clone()));
                Reloaded::Rejected(e)
            }
        }
    }

    /// Opens the published state, reusing what `current` maps; `Ok(None)` when it is
    /// not newer (see [`Maps::reload`]).
    fn open(&self, current: Option<&MappedState>) -> Result<Option<MappedState>, String> {
        // The mapped files, and a base validated earlier that was ahead of its delta.
        let mut reuse: Vec<_> = current
            .iter()
            .flat_map(|c| {
                std::iter::once(c.base.clone())
                    .chain(c.delta.clone())
                    .chain(c.recent.iter().cloned())
            })
            .collect();
        reuse.extend(self.spare_base.lock().clone());
        // Files the leader checked whole, or wrote itself from words it held, are in
        // its `snapshot.checked`: their checksums are still verified over every byte,
        // but rkyv's structural check (seconds for a 10M-word base, while the reader
        // serves the state before it) is not repeated. The record is in the leader's
        // directory, as the files are: whoever could forge one could write the files
        // too.
        let known = snapshot::checked::load(&self.options.data_dir);
        let trusted = |h: &snapshot::Header| known.iter().any(|r| r.names(h));
        let m = MappedState::open_checked(
            &self.options.data_dir,
            self.options.max_snapshot_bytes,
            &|| self.stopping.load(Ordering::Acquire),
            &reuse,
            &trusted,
        )
        .map_err(|e| e.to_string())?;
        // Never back in time within one history: an older file renamed into place (a
        // restored backup, a mistake), or a new base seen before the delta that
        // follows it, is not the leader's newest state.
        match (current, m) {
            (_, None) => Ok(None),
            (Some(cur), Some(m))
                if cur.header().incarnation == m.header().incarnation && m.seq() < cur.seq() =>
            {
                if m.base.header().seq >= cur.base.header().seq {
                    // A compaction's base ahead of its delta: not an error. Keep its
                    // mapping: the delta that pairs with it follows.
                    *self.spare_base.lock() = Some(m.base.clone());
                    Ok(None)
                } else {
                    Err(format!(
                        "snapshot of seq {} is older than the mapped seq {} of the same \
                         leader incarnation",
                        m.seq(),
                        cur.seq()
                    ))
                }
            }
            (_, Some(m)) => Ok(Some(m)),
        }
    }

    /// Why the mapping cannot be trusted to be fresh, if it cannot: a validation busy
    /// longer than `after`, or a seq the leader announced longer ago than that and not
    /// mapped yet.
    pub fn staleness(&self, after: Duration) -> Option<String> {
        if let Some(t) = *self.loading_since.lock()
            && t.elapsed() > after
        {
            return Some(format!(
                "the loader has been validating one file for {:?}",
                t.elapsed()
            ));
        }
        let (seq, since) = *self.announced.lock();
        match since {
            Some(t) if t.elapsed() > after && seq > self.seq_now() => Some(format!(
                "stale: the leader announced seq {seq} {:?} ago but seq {} is mapped{}",
                t.elapsed(),
                self.seq_now(),
                self.stats
                    .lock()
                    .last_rejection
                    .as_ref()
                    .map(|r| format!(" (last rejection: {r})"))
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }
}
