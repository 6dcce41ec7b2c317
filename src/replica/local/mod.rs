//! A local replica: serves reads straight from the leader's memory-mapped snapshots.
//!
//! No HTTP and no deserialization on the replication path: the leader publishes
//! `delta.memdb` (the words changed since the base) every interval and, after a
//! compaction, a new `snapshot.memdb` (the base), and says so on its Unix socket; this
//! replica maps the new file, validates it once, and swaps an `Arc` to the new
//! (base, delta) pair so in-flight reads finish on the old mappings. Three sources tell it to look at the file, any of which suffices:
//! the leader's socket (immediate); while the socket is down, a `notify` watch on the
//! directory (rename events); and a slow poll of the file's identity (the last resort,
//! always on, for a socket that is up but silent). A file that fails
//! validation is rejected and the last good mapping keeps serving. It never writes into
//! the leader's directory.
mod follow;
pub mod routes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::LocalReplicaConfig;
use crate::storage::mapped::{MappedState, StateId, identity_of};
use crate::storage::snapshot;

/// Reconnect delays to the leader's socket: from the first to the cap.
const RECONNECT_START: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A snapshot the leader announced but that is not mapped this long after is stale, and
/// a loader busy this long with one file is stuck: `/health` then answers 503.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// What told the replica to look at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Start = 0,
    Socket = 1,
    Watch = 2,
    Poll = 3,
}

/// Snapshots mapped, by what announced them.
#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct LoadsBySource {
    start: u64,
    socket: u64,
    watch: u64,
    poll: u64,
}

#[derive(Default)]
struct Stats {
    loads: LoadsBySource,
    rejected: u64,
    last_rejection: Option<String>,
    /// The files last rejected, so the same bad files are not validated again and again.
    rejected_identity: Option<StateId>,
}

struct Shared {
    /// The mappings reads are served from. Swapped whole; readers clone the `Arc` and
    /// never hold the lock while answering.
    current: RwLock<Option<Arc<MappedState>>>,
    seq_tx: watch::Sender<u64>,
    /// The highest seq a reader is waiting for, for the socket task to ask the leader.
    want_tx: watch::Sender<u64>,
    check: Notify,
    /// The source of the first trigger not yet handled.
    pending: Mutex<Option<Source>>,
    socket_connected: AtomicBool,
    checks: AtomicU64,
    stats: Mutex<Stats>,
    /// Since when the loader has been validating a file, while it is.
    loading_since: Mutex<Option<Instant>>,
    /// The newest seq the leader announced on its socket, and since when it has been
    /// newer than the mapping.
    announced: Mutex<(u64, Option<Instant>)>,
    /// A new base mapped and validated before the delta that pairs with it appeared.
    spare_base: Mutex<Option<Arc<crate::storage::mapped::MappedSnapshot>>>,
    /// Set at shutdown: a validation in progress gives up.
    stopping: AtomicBool,
    config: LocalReplicaConfig,
}

/// A cheap-clone handle to a local replica.
#[derive(Clone)]
pub struct LocalReplica {
    shared: Arc<Shared>,
}

impl LocalReplica {
    pub fn new(config: LocalReplicaConfig) -> Self {
        LocalReplica {
            shared: Arc::new(Shared {
                current: RwLock::new(None),
                seq_tx: watch::Sender::new(0),
                want_tx: watch::Sender::new(0),
                check: Notify::new(),
                pending: Mutex::new(None),
                socket_connected: AtomicBool::new(false),
                checks: AtomicU64::new(0),
                stats: Mutex::new(Stats::default()),
                loading_since: Mutex::new(None),
                announced: Mutex::new((0, None)),
                spare_base: Mutex::new(None),
                stopping: AtomicBool::new(false),
                config,
            }),
        }
    }

    /// The state reads are served from now, if any.
    pub fn current(&self) -> Option<Arc<MappedState>> {
        self.shared.current.read().clone()
    }

    /// Starts following the leader's snapshots: maps the current one now, then
    /// reloads on notifications, file events and polls until `cancel`. `run` calls
    /// it; tests that drive the router in-process call it themselves.
    pub fn follow(&self, cancel: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        self.trigger(Source::Start);
        vec![
            tokio::spawn(self.clone().loader(cancel.clone())),
            tokio::spawn(self.clone().socket_follower(cancel.clone())),
            tokio::spawn(self.clone().watch_and_poll(cancel.clone())),
        ]
    }

    fn trigger(&self, source: Source) {
        self.shared.pending.lock().get_or_insert(source);
        self.shared.check.notify_one();
    }

    /// The published files' identities now (`None` without a base).
    fn published_identity(&self) -> Option<StateId> {
        let dir = &self.shared.config.data_dir;
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

    /// Maps the published files if they are not the ones mapped now. Blocking (it
    /// reads and checksums a new file whole): call from a blocking context.
    fn reload_if_changed(&self, source: Source) {
        let s = &self.shared;
        s.checks.fetch_add(1, Ordering::Relaxed);
        let Some(id) = self.published_identity() else {
            return;
        };
        let current = self.current();
        let current_id = current.as_ref().map(|m| m.identity());
        if current_id.as_ref() == Some(&id)
            || s.stats.lock().rejected_identity.as_ref() == Some(&id)
        {
            return;
        }
        *s.loading_since.lock() = Some(Instant::now());
        // The mapped files, and a base validated earlier that was ahead of its delta.
        let mut reuse: Vec<_> = current
            .iter()
            .flat_map(|c| {
                std::iter::once(c.base.clone())
                    .chain(c.delta.clone())
                    .chain(c.recent.iter().cloned())
            })
            .collect();
        reuse.extend(s.spare_base.lock().clone());
        // Files the leader checked whole, or wrote itself from words it held, are in
        // its `snapshot.checked`: their checksums are still verified over every byte,
        // but rkyv's structural check (seconds for a 10M-word base, while the replica
        // serves the state before it) is not repeated. The record is in the leader's
        // owner-only directory, as the files are: whoever could forge one could write
        // the files too.
        let known = snapshot::checked::load(&s.config.data_dir);
        let trusted = |h: &snapshot::Header| known.iter().any(|r| r.names(h));
        let opened = MappedState::open_checked(
            &s.config.data_dir,
            s.config.max_snapshot_bytes,
            &|| s.stopping.load(Ordering::Acquire),
            &reuse,
            &trusted,
        )
        .map_err(|e| e.to_string())
        .and_then(|m| {
            // Never back in time within one history: an older file renamed into place
            // (a restored backup, a mistake), or a new base seen before the delta that
            // follows it, is not the leader's newest state.
            match (&current, m) {
                (_, None) => Ok(None),
                (Some(cur), Some(m))
                    if cur.header().incarnation == m.header().incarnation
                        && m.seq() < cur.seq() =>
                {
                    if m.base.header().seq >= cur.base.header().seq {
                        // A compaction's base ahead of its delta: not an error. Keep
                        // its mapping: the delta that pairs with it follows.
                        *s.spare_base.lock() = Some(m.base.clone());
                        Ok(None)
                    } else {
                        Err(format!(
                            "snapshot of seq {} is older than the mapped seq {} of the \
                             same leader incarnation",
                            m.seq(),
                            cur.seq()
                        ))
                    }
                }
                (_, Some(m)) => Ok(Some(m)),
            }
        });
        *s.loading_since.lock() = None;
        match opened {
            Ok(None) => {}
            Ok(Some(m)) if Some(m.identity()) == current_id => {}
            Ok(Some(m)) => {
                s.spare_base.lock().take();
                let seq = m.seq();
                let words = m.words();
                *s.current.write() = Some(Arc::new(m));
                s.seq_tx.send_replace(seq);
                {
                    let mut a = s.announced.lock();
                    if a.0 <= seq {
                        a.1 = None;
                    }
                }
                let mut st = s.stats.lock();
                match source {
                    Source::Start => st.loads.start += 1,
                    Source::Socket => st.loads.socket += 1,
                    Source::Watch => st.loads.watch += 1,
                    Source::Poll => st.loads.poll += 1,
                }
                tracing::debug!(seq, words, ?source, "mapped a new snapshot");
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %s.config.data_dir.display(), "rejected a snapshot; still serving the previous one");
                let mut st = s.stats.lock();
                st.rejected += 1;
                st.last_rejection = Some(e);
                st.rejected_identity = Some(id);
            }
        }
    }

    /// Handles triggers one at a time until `cancel`.
    async fn loader(self, cancel: CancellationToken) {
        loop {
            let source = self.shared.pending.lock().take();
            if let Some(source) = source {
                let me = self.clone();
                let load = tokio::task::spawn_blocking(move || me.reload_if_changed(source));
                tokio::select! {
                    _ = load => {}
                    _ = cancel.cancelled() => return,
                }
                continue;
            }
            tokio::select! {
                _ = self.shared.check.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    fn seq_now(&self) -> u64 {
        *self.shared.seq_tx.borrow()
    }

    /// The leader said a snapshot of `seq` is published.
    fn announce(&self, seq: u64) {
        let mut a = self.shared.announced.lock();
        a.0 = seq;
        if seq > self.seq_now() {
            a.1.get_or_insert_with(Instant::now);
        } else {
            a.1 = None;
        }
    }
}
