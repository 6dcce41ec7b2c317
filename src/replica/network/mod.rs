//! A network replica: bootstraps from the leader's files (or full-syncs by JSON from a
//! leader that serves none), then applies the batches it pushes, strictly in seq
//! order, and serves reads.

mod bootstrap;
mod counts;
pub mod routes;
mod update;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::Client;
use crate::config::ReplicaConfig;
use crate::protocol::Incarnation;
use crate::storage::layered::Layered;
use crate::storage::table::Table;
use crate::words::Tokenizer;
use bootstrap::DataDir;
use counts::Counts;

/// Retry delays while the leader cannot be reached: from the first to the cap.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    #[error("bound to {0}, which the leader cannot reach: pass --advertise URL")]
    NeedAdvertise(std::net::SocketAddr),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("the replica's data directory: {0}")]
    DataDir(#[from] crate::fs::LockError),
}

/// A cheap-clone handle to a replica's state.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
}

/// The table and what it belongs to; they change together.
struct Data {
    table: Counts,
    /// The seq since which every word the table's live map does not hold has kept
    /// the count its files give (set at a bootstrap and at each rebase): newer files
    /// of the same history, at this seq or later, may go under the live map.
    clean_seq: u64,
    /// The incarnation of the leader whose history `table` follows.
    incarnation: Option<Incarnation>,
    tokenizer: Tokenizer,
}

#[derive(Default)]
struct Stats {
    syncs: u64,
    last_sync_error: Option<String>,
    last_sync_ms: Option<f64>,
    /// How the last sync came: `files` (a binary bootstrap) or `json`.
    last_sync_kind: Option<&'static str>,
    /// Bytes the last bootstrap downloaded (the rest was in the data directory).
    last_sync_downloaded: Option<u64>,
    leader_reachable: bool,
    last_heartbeat: Option<Instant>,
}

struct Shared {
    /// parking_lot, never held across `.await`.
    data: RwLock<Data>,
    seq_tx: watch::Sender<u64>,
    /// Set once the first full sync succeeded; until then reads answer 503.
    ready: AtomicBool,
    syncing: AtomicBool,
    resync_requested: AtomicBool,
    /// The table cannot be trusted (a digest that differed, deltas that did not
    /// apply): the next full sync replaces it even with older files. Without it, a
    /// sync never takes the table back in time (see [`Replica::sync_once`]).
    suspect: AtomicBool,
    wake: Notify,
    updates: AtomicU64,
    gaps: AtomicU64,
    /// Leader restarts followed without a full sync.
    adoptions: AtomicU64,
    /// The leader's incarnation and push secret, as its registration reply gave them.
    leader_secret: Mutex<Option<(Incarnation, String)>>,
    /// Pushes refused for claiming the leader's incarnation without its secret.
    forged_pushes: AtomicU64,
    /// Pushes after which this replica's digest differed from the leader's.
    digest_mismatches: AtomicU64,
    stats: Mutex<Stats>,
    /// The leader, then the fallbacks (the other voters of a raft group).
    leaders: Vec<Client>,
    /// Which of `leaders` is followed now.
    current: std::sync::atomic::AtomicUsize,
    advertise: String,
    /// Declared after `data`: the mappings go before a temporary directory does.
    dir: DataDir,
    /// Held while files are downloaded into `dir` (a full sync, a rebase).
    dir_busy: tokio::sync::Mutex<()>,
    rebasing: AtomicBool,
    /// Rebases done: newer files mapped under the live map.
    rebases: AtomicU64,
    config: ReplicaConfig,
}

impl Replica {
    /// A replica that will follow `config.leader`, with its data directory locked.
    pub fn new(config: ReplicaConfig, advertise: String) -> Result<Self, ReplicaError> {
        let dir = DataDir::open(config.data_dir.as_deref())?;
        Ok(Replica {
            shared: Arc::new(Shared {
                data: RwLock::new(Data {
                    table: Counts::Whole(Table::new()),
                    clean_seq: 0,
                    incarnation: None,
                    tokenizer: Tokenizer::default(),
                }),
                seq_tx: watch::Sender::new(0),
                ready: AtomicBool::new(false),
                syncing: AtomicBool::new(false),
                resync_requested: AtomicBool::new(false),
                suspect: AtomicBool::new(false),
                wake: Notify::new(),
                updates: AtomicU64::new(0),
                gaps: AtomicU64::new(0),
                adoptions: AtomicU64::new(0),
                leader_secret: Mutex::new(None),
                forged_pushes: AtomicU64::new(0),
                digest_mismatches: AtomicU64::new(0),
                stats: Mutex::new(Stats::default()),
                leaders: std::iter::once(&config.leader)
                    .chain(&config.fallbacks)
                    .map(|url| {
                        Client::with_tls(url, &config.serving.client_tls)
                            .with_token(config.serving.peer_credential().cloned())
                    })
                    .collect(),
                current: std::sync::atomic::AtomicUsize::new(0),
                advertise,
                dir,
                dir_busy: tokio::sync::Mutex::new(()),
                rebasing: AtomicBool::new(false),
                rebases: AtomicU64::new(0),
                config,
            }),
        })
    }

    /// The node followed now.
    fn leader(&self) -> &Client {
        let s = &self.shared;
        &s.leaders[s.current.load(Ordering::Relaxed) % s.leaders.len()]
    }

    /// Moves on to the next node of the group (after the one followed failed).
    fn next_leader(&self) {
        let s = &self.shared;
        if s.leaders.len() > 1 {
            s.current.fetch_add(1, Ordering::Relaxed);
            tracing::info!(node = %self.leader().base(), "following the next voter of the group");
        }
    }

    /// The URL of the node followed now.
    pub fn leader_url(&self) -> &str {
        self.leader().base()
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    fn request_resync(&self) {
        self.shared.resync_requested.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Our table is wrong, not only behind: re-sync, whatever seq the leader's files
    /// are at.
    fn distrust(&self) {
        self.shared.suspect.store(true, Ordering::Release);
        self.request_resync();
    }

    /// Whether a full sync at `seq` of `inc` would take a trusted table of the same
    /// history back in time. The leader asks for a sync when it cannot resend what
    /// this replica missed, and may ask again while one runs; pushes carry the table
    /// past the files meanwhile, and installing them then would lose those writes
    /// that the leader counts as acknowledged.
    fn would_go_back(&self, d: &Data, inc: Incarnation, seq: u64) -> bool {
        self.is_ready()
            && !self.shared.suspect.load(Ordering::Acquire)
            && d.incarnation == Some(inc)
            && d.table.seq() > seq
    }

    fn set_seq(&self, seq: u64) {
        self.shared.seq_tx.send_replace(seq);
    }

    /// Replaces the table with the leader's whole table: its files, downloaded and
    /// mapped (see `bootstrap.rs`), or by JSON `/sync` from a leader that serves none.
    /// On any failure the table stays as it was.
    async fn full_sync(&self) -> Result<(), String> {
        let s = &self.shared;
        s.syncing.store(true, Ordering::Release);
        let started = Instant::now();
        let result = self.sync_once().await;
        let mut stats = s.stats.lock();
        let out = match result {
            Ok((kind, downloaded)) => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                stats.syncs += 1;
                stats.last_sync_ms = Some(ms);
                stats.last_sync_error = None;
                stats.last_sync_kind = Some(kind);
                stats.last_sync_downloaded = downloaded;
                let d = s.data.read();
                tracing::info!(
                    seq = d.table.seq(),
                    words = d.table.len(),
                    ms,
                    kind,
                    downloaded,
                    "full sync done"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "full sync failed; retrying");
                stats.last_sync_error = Some(e.clone());
                Err(e)
            }
        };
        s.syncing.store(false, Ordering::Release);
        out
    }

    /// One sync: how it came and, for files, the bytes downloaded.
    async fn sync_once(&self) -> Result<(&'static str, Option<u64>), String> {
        let s = &self.shared;
        let leader = self.leader();
        let busy = s.dir_busy.lock().await;
        let got = bootstrap::bootstrap(leader, s.dir.path()).await;
        drop(busy);
        match got {
            Ok(Some(b)) => {
                let table = Layered::new(b.files, b.digest);
                let seq = table.seq();
                {
                    let mut d = s.data.write();
                    if self.would_go_back(&d, b.manifest.incarnation, seq) {
                        tracing::info!(
                            files_seq = seq,
                            seq = d.table.seq(),
                            "the leader's files are older than this replica's table: kept"
                        );
                        return Ok(("kept", Some(b.downloaded)));
                    }
                    s.suspect.store(false, Ordering::Release);
                    d.table = Counts::Files(table);
                    d.clean_seq = seq;
                    d.incarnation = Some(b.manifest.incarnation);
                    d.tokenizer = b.manifest.tokenizer;
                }
                self.set_seq(seq);
                s.ready.store(true, Ordering::Release);
                return Ok(("files", Some(b.downloaded)));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("bootstrap from {}: {e}", leader.base())),
        }
        let reply = leader.sync().await.map_err(|e| e.to_string())?;
        {
            let mut d = s.data.write();
            if self.would_go_back(&d, reply.incarnation, reply.seq) {
                return Ok(("kept", None));
            }
            s.suspect.store(false, Ordering::Release);
            d.table = Counts::Whole(Table::from_parts(reply.map, reply.seq));
            d.incarnation = Some(reply.incarnation);
            d.tokenizer = reply.tokenizer;
        }
        self.set_seq(reply.seq);
        s.ready.store(true, Ordering::Release);
        Ok(("json", None))
    }

    /// Registers with the leader on every heartbeat (idempotent) and full-syncs when
    /// this replica has no data yet, the leader's incarnation changed, or the leader
    /// asked for it.
    /// Starts registering with the leader and syncing from it until `cancel`. `run`
    /// calls it; tests that drive the router in-process call it themselves.
    pub fn follow(&self, cancel: &CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().control(cancel.clone()))
    }

    async fn control(self, cancel: CancellationToken) {
        let s = &self.shared;
        let mut retry = Backoff::new(RETRY_START, RETRY_MAX);
        loop {
            let at = {
                let d = s.data.read();
                d.incarnation
                    .filter(|_| self.is_ready())
                    .map(|inc| (d.table.seq(), inc))
            };
            let healthy = match self.leader().register(&s.advertise, at).await {
                Ok(reply) => {
                    {
                        let mut st = s.stats.lock();
                        if !st.leader_reachable {
                            tracing::info!(leader = %self.leader().base(), seq = reply.seq, "leader reachable");
                        }
                        st.leader_reachable = true;
                        st.last_heartbeat = Some(Instant::now());
                    }
                    let leader_inc = reply.incarnation;
                    if let Some(secret) = &reply.push_secret {
                        *s.leader_secret.lock() = Some((leader_inc, secret.clone()));
                    }
                    let ours = s.data.read().incarnation;
                    let asked = s.resync_requested.swap(false, Ordering::AcqRel);
                    if let Some((seq, inc)) = at
                        && !asked
                        && ours != Some(leader_inc)
                        && reply.continues
                        && self.adopt(inc, seq, leader_inc)
                    {
                        tracing::info!(seq, leader_incarnation = %reply.incarnation, "leader restarted; our data continues its history: catching up without a full sync");
                        // Register again now, reporting the seq in the new incarnation, so
                        // the leader resumes pushing at once.
                        continue;
                    } else if !self.is_ready() || ours != Some(leader_inc) || asked {
                        if ours.is_some_and(|o| o != leader_inc) {
                            tracing::info!(leader_incarnation = %reply.incarnation, "leader has a new incarnation: re-syncing");
                        }
                        self.full_sync().await.is_ok()
                    } else {
                        true
                    }
                }
                Err(e) => {
                    let mut st = s.stats.lock();
                    if st.leader_reachable || !self.is_ready() {
                        tracing::warn!(error = %e, "leader unreachable; serving what we have and retrying");
                    }
                    st.leader_reachable = false;
                    // Without data, this is why it cannot sync: /health says so.
                    if !self.is_ready() {
                        st.last_sync_error = Some(format!("registering with the leader: {e}"));
                    }
                    drop(st);
                    self.next_leader();
                    false
                }
            };
            let wait = if healthy {
                self.maybe_rebase();
                retry.reset();
                s.config.heartbeat
            } else {
                retry.next_delay()
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = s.wake.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Switches to the leader's new incarnation `to`, if the data is still at `seq` of
    /// `from` (what the leader judged a prefix of its history).
    fn adopt(&self, from: Incarnation, seq: u64, to: Incarnation) -> bool {
        let mut d = self.shared.data.write();
        if d.incarnation != Some(from) || d.table.seq() != seq {
            return false;
        }
        d.incarnation = Some(to);
        self.shared.adoptions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// When pushes have changed `--rebase-words` words since the files were mapped,
    /// maps the leader's newer files under the live map (downloading only the files
    /// that changed) and lets go of the words whose count the files now hold: a
    /// replica's memory stays the words of a few intervals, as the leader's does. In
    /// the background; reads and pushes wait only for the swap.
    fn maybe_rebase(&self) {
        let s = &self.shared;
        let limit = s.config.rebase_words;
        if limit == 0 || s.rebasing.load(Ordering::Acquire) {
            return;
        }
        let due = matches!(&s.data.read().table, Counts::Files(t) if t.live().len() >= limit);
        if !due || s.rebasing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.rebase().await {
                tracing::warn!(error = %e, "mapping the leader's newer files failed; retrying later");
            }
            me.shared.rebasing.store(false, Ordering::Release);
        });
    }

    async fn rebase(&self) -> Result<(), String> {
        let s = &self.shared;
        let started = Instant::now();
        let b = {
            let _busy = s.dir_busy.lock().await;
            match bootstrap::bootstrap(self.leader(), s.dir.path()).await {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        };
        let at = b.files.seq();
        let inc = Some(b.manifest.incarnation);
        // Files of another history, from before the last rebase, or ahead of this
        // replica (they would hold counts it has not reached): not now.
        let usable = |d: &Data| d.incarnation == inc && at >= d.clean_seq && at <= d.table.seq();
        let live = {
            let d = s.data.read();
            match &d.table {
                Counts::Files(t) if usable(&d) => t.live().clone(),
                _ => return Ok(()),
            }
        };
        // The live words whose count the new files hold, found without the lock.
        let files = b.files;
        let (files, same) = tokio::task::spawn_blocking(move || {
            let same: Vec<(Box<str>, u64)> = live
                .iter()
                .filter(|&(w, n)| files.lookup(w).unwrap_or(0) == n)
                .map(|(w, n)| (w.into(), n))
                .collect();
            (files, same)
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut d = s.data.write();
        if !usable(&d) {
            return Ok(());
        }
        let now = d.table.seq();
        let Counts::Files(t) = &mut d.table else {
            return Ok(());
        };
        let gone = t.rebase(files, b.digest, &same);
        let left = t.live().len();
        d.clean_seq = now;
        drop(d);
        s.rebases.fetch_add(1, Ordering::Relaxed);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            files_seq = at,
            seq = now,
            gone,
            left,
            downloaded = b.downloaded,
            ms,
            "mapped the leader's newer files under the live map"
        );
        Ok(())
    }
}
