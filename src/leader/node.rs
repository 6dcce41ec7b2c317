//! The leader node: opening its data directory, a single leader's write path, the
//! raft engine on a voter, and shutdown; with the methods its handlers use.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backlog::Backlog;
use super::error::{IngestError, LeaderError, ShutdownError, io_err};
use super::locals::{LagLimit, Locals};
use super::notifier;
use super::open::{lock_data_dir, recover, recover_voter, replica_set};
use super::publisher::{PublishError, Publisher, Setup};
use super::replication::{ReplicaSet, ReplicaUrlError};
use super::state::{State, word_hashes};
use crate::config::LeaderConfig;
use crate::consensus::Consensus;
use crate::consensus::snapshot::Record;
use crate::protocol::Incarnation;
use crate::storage::history::History;
use crate::storage::log::{Wal, WalError};
use crate::storage::snapshot;

/// A cheap-clone handle to the leader's state.
#[derive(Clone)]
pub struct Leader {
    pub(super) shared: Arc<Shared>,
}

/// What a leader holds besides its counting state. Fields are for the leader's own
/// files (`node.rs`, `status.rs`, `reads.rs`); handlers use [`Leader`]'s methods.
pub(super) struct Shared {
    /// The table and what follows every batch. Declared before `wal`: fields drop in
    /// order, and the publisher holds a handle to the log that must be gone before the
    /// log's writer can stop. (On a voter the raft engine holds it too, and no log.)
    pub(super) state: Arc<State>,
    /// The single-leader write-ahead log; `None` in a raft group, whose raft log is
    /// the node's log.
    pub(super) wal: Option<Wal>,
    /// Set once the raft engine runs (a voter of a raft group).
    pub(super) consensus: std::sync::OnceLock<Consensus>,
    /// The raft snapshot the table was restored from, for the raft engine to take.
    raft_boot: Mutex<Option<Record>>,
    pub(super) replicas: Arc<ReplicaSet>,
    pub(super) config: LeaderConfig,
    /// The earlier incarnations this one continues (see [`crate::storage::history`]).
    history: History,
    /// Random per incarnation; carried by every push so replicas can refuse pushes the
    /// leader did not send. Handed to replicas when they register.
    push_secret: String,
    pub(super) started: Instant,
    /// Writes refused because the log could not be written.
    pub(super) refused: AtomicU64,
    /// The notification socket's path, removed at shutdown.
    socket_path: PathBuf,
    /// Stops the notification socket's tasks.
    notifier_stop: CancellationToken,
    /// The local replicas and readers connected to that socket.
    pub(super) locals: Locals,
    /// Held (flock) for the process's life.
    _lock: File,
}

/// The registry of the socket's peers, with the configured lag limit; the client
/// that checks local replicas' URLs trusts what pushes to network replicas trust.
fn local_peers(config: &LeaderConfig) -> Locals {
    let limit = LagLimit {
        intervals: config.local_lag_intervals,
        floor: config.local_lag_floor,
        interval: config.snapshot_interval,
    };
    let http = config
        .serving
        .client_tls
        .builder()
        .connect_timeout(std::time::Duration::from_secs(1))
        .build()
        .ok();
    Locals::new(limit, http)
}

/// What a registering replica is told.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registered {
    /// Whether it was not registered before.
    #[serde(rename = "registered")]
    pub new: bool,
    /// Whether its data is a prefix of this leader's history.
    pub continues: bool,
    pub push_secret: String,
    pub incarnation: Incarnation,
    pub seq: u64,
    pub tokenizer: crate::words::Tokenizer,
}

/// `POST /post`'s answer.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Ingested {
    /// The seq of the batch (the seq the leader's table had after it, if it was empty).
    pub seq: u64,
    /// Words counted.
    pub words: u64,
}

impl Leader {
    /// Opens (or creates) the data directory, takes its lock, restores the newest
    /// snapshot and starts the publisher and the static replicas' senders. Must be
    /// called within a tokio runtime.
    pub fn open(config: LeaderConfig) -> Result<Leader, LeaderError> {
        let dir = config.data_dir.clone();
        let lock = lock_data_dir(&dir)?;
        crate::storage::sharing::apply(&dir, config.reader_group).map_err(super::error::io_err(
            "sharing the published state (--reader-group)",
            &dir,
        ))?;
        let (recovered, raft_boot) = if let Some(raft) = &config.raft {
            recover_voter(&dir, config.tokenizer, raft)?
        } else {
            (recover(&dir, config.tokenizer)?, None)
        };
        let published_seq = recovered.published_seq;
        let seq = recovered.table.seq();
        let table = Arc::new(RwLock::new(recovered.table));
        let wal = if config.raft.is_some() {
            None
        } else {
            Some(Wal::open(&dir, seq, config.wal).map_err(io_err("opening the log in", &dir))?)
        };
        // A new incarnation with every process, continuing the recorded history up to
        // what was recovered: replicas within it catch up; those ahead full-sync.
        let history = match &config.raft {
            // Every voter numbers the same batches the same way: one history for the
            // group, named by it, so local replicas never step back across restarts
            // and failovers.
            Some(r) => History {
                incarnation: crate::consensus::group_incarnation(&r.cluster),
                ancestors: Vec::new(),
            },
            None => History::begin(&dir, seq).map_err(io_err("recording the history in", &dir))?,
        };
        let incarnation = history.incarnation;
        let push_secret = format!("{:032x}", rand::random::<u128>());
        let (seq_tx, seq_rx) = watch::channel(seq);
        let backlog = Arc::new(Mutex::new(Backlog::new(
            seq,
            config.backlog_batches,
            config.backlog_bytes,
        )));
        let publisher = Publisher::spawn(Setup {
            dir: dir.clone(),
            table: table.clone(),
            published_seq,
            records: recovered.records,
            tokenizer: config.tokenizer,
            incarnation,
            interval: config.snapshot_interval,
            compact_after: config.compact_after,
            on_published: match &wal {
                Some(w) => Box::new(w.checkpointer()),
                None => Box::new(|_| {}),
            },
        });
        let socket_path = config
            .socket
            .clone()
            .unwrap_or_else(|| dir.join(notifier::SOCKET_NAME));
        let socket = notifier::bind(&socket_path)?;
        let replicas = replica_set(
            &config,
            backlog.clone(),
            wal.as_ref(),
            seq_rx,
            incarnation,
            &push_secret,
        )?;
        tracing::info!(
            incarnation = %incarnation,
            seq,
            tokenizer = %config.tokenizer,
            "leader recovered its data"
        );
        let published = publisher.published();
        let locals = local_peers(&config);
        let leader = Leader {
            shared: Arc::new(Shared {
                state: Arc::new(State {
                    table,
                    backlog,
                    seq_tx,
                    publisher,
                    tokenizer: config.tokenizer,
                    incarnation,
                    words_ingested: AtomicU64::new(0),
                    posts: AtomicU64::new(0),
                }),
                wal,
                consensus: std::sync::OnceLock::new(),
                raft_boot: Mutex::new(raft_boot),
                replicas,
                config,
                history,
                push_secret,
                started: Instant::now(),
                refused: AtomicU64::new(0),
                socket_path,
                notifier_stop: CancellationToken::new(),
                locals,
                _lock: lock,
            }),
        };
        leader.serve_socket(socket, published);
        Ok(leader)
    }

    /// Announces publications on the notification socket and takes local replicas'
    /// requests for an early one.
    fn serve_socket(&self, socket: tokio::net::UnixListener, published: watch::Receiver<u64>) {
        // A weak handle: the socket's tasks must not keep the leader (and so the
        // publisher thread) alive.
        let weak = Arc::downgrade(&self.shared.state);
        tokio::spawn(notifier::serve(
            socket,
            published,
            Arc::new(move |want| {
                if let Some(s) = weak.upgrade() {
                    s.publisher.publish_soon(want);
                }
            }),
            self.shared.locals.clone(),
            self.shared.notifier_stop.clone(),
        ));
    }

    pub fn incarnation(&self) -> Incarnation {
        self.shared.state.incarnation
    }

    pub fn replicas(&self) -> &ReplicaSet {
        &self.shared.replicas
    }

    /// The counting state (for the leader's read side and status).
    pub(super) fn state(&self) -> &Arc<State> {
        &self.shared.state
    }

    /// The seq of the last batch applied.
    pub fn seq(&self) -> u64 {
        self.shared.state.seq()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &LeaderConfig {
        &self.shared.config
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.config.data_dir
    }

    /// The raft engine, on a voter of a raft group.
    pub fn consensus(&self) -> Option<&Consensus> {
        self.shared.consensus.get()
    }

    /// With `--fsync always`, waits until `seq` is on disk (`None` for other
    /// policies, whose answers do not wait).
    pub async fn wait_durable(&self, seq: u64) -> Option<Result<(), WalError>> {
        if self.shared.config.wal.fsync != crate::storage::log::FsyncPolicy::Always {
            return None;
        }
        let wal = self.shared.wal.as_ref()?;
        Some(wal.wait_durable(seq).await)
    }

    /// Registers a network replica at `url` (a plain origin) that says it holds `at`
    /// (seq and incarnation), if it has synced.
    pub fn register_replica(
        &self,
        url: &str,
        at: Option<(u64, Incarnation)>,
    ) -> Result<Registered, ReplicaUrlError> {
        let s = &self.shared;
        let url = crate::origin::origin(url)?;
        let new = s.replicas.add(&url, false)?;
        if let Some((seq, inc)) = at
            && inc == s.state.incarnation
        {
            s.replicas.report(&url, seq);
        }
        Ok(Registered {
            new,
            // Whether the replica's data is a prefix of this history (it then adopts
            // this incarnation instead of full-syncing).
            continues: at.is_some_and(|(seq, inc)| s.history.continues(inc, seq)),
            push_secret: s.push_secret.clone(),
            incarnation: s.state.incarnation,
            seq: self.seq(),
            tokenizer: s.state.tokenizer,
        })
    }

    /// Starts the raft engine (a voter: `config.raft` is set), after [`Leader::open`];
    /// once started, does nothing. [`super::routes::serve`] calls it before it builds
    /// the router.
    pub async fn start_consensus(&self) -> Result<(), LeaderError> {
        let s = &self.shared;
        let Some(cfg) = s.config.raft.clone() else {
            return Ok(());
        };
        if s.consensus.get().is_some() {
            return Ok(());
        }
        let boot = s.raft_boot.lock().take();
        let c = Consensus::start(
            s.state.clone(),
            self.data_dir().join("raft"),
            cfg,
            boot,
            s.config.wal.fsync,
            s.config.serving.peer_credential().cloned(),
            s.config.serving.client_tls.clone(),
        )
        .await
        .map_err(LeaderError::Raft)?;
        let _ = s.consensus.set(c);
        Ok(())
    }

    /// A voter's shutdown: stop the raft engine (nothing more is applied), publish the
    /// final snapshot for the local replicas. What it applied is in its raft log.
    async fn shutdown_voter(&self, c: &Consensus) -> Result<u64, ShutdownError> {
        let s = &self.shared;
        if let Err(e) = c.raft.shutdown().await {
            tracing::error!(error = %e, "stopping the raft engine");
        }
        s.replicas.shutdown().await;
        match self.flush_snapshot().await {
            Ok(p) => tracing::info!(seq = p, "final snapshot published"),
            Err(e) => tracing::error!(error = %e, "final snapshot failed"),
        }
        s.notifier_stop.cancel();
        let _ = fs::remove_file(&s.socket_path);
        Ok(self.seq())
    }

    /// Counts `text` and applies it as the next batch. Tokenizing happens before any
    /// lock is taken. Text without words changes nothing and takes no seq. While the
    /// write-ahead log cannot be written, nothing is applied: a write the log would not
    /// hold must not become visible (or be acknowledged).
    pub fn ingest(&self, text: &str) -> Result<Ingested, IngestError> {
        let s = &self.shared;
        let st = &s.state;
        let (deltas, words) = st.tokenizer.count(text);
        if words == 0 {
            return Ok(Ingested {
                seq: self.seq(),
                words: 0,
            });
        }
        let wal = s.wal.as_ref().expect("a single leader has a log");
        let hashes = word_hashes(&deltas);
        let seq = {
            let mut table = st.table.write();
            if wal.health().is_failed() {
                drop(table);
                s.refused.fetch_add(1, Ordering::Relaxed);
                return Err(IngestError::LogFailed(
                    wal.health().failure().unwrap_or_default(),
                ));
            }
            let batch = st.apply_locked(&mut table, deltas, &hashes);
            let seq = batch.seq;
            wal.append(batch);
            seq
        };
        st.advance(seq, words);
        Ok(Ingested { seq, words })
    }

    /// Whether a replica at `seq` can be pushed what follows: from the log (a single
    /// leader's holds everything its files do not), or from the backlog (a voter's).
    pub(super) fn can_push_after(&self, seq: u64) -> bool {
        let st = &self.shared.state;
        self.shared.wal.is_some()
            || seq >= st.seq()
            || st
                .backlog
                .lock()
                .first_seq()
                .is_some_and(|first| first <= seq + 1)
    }

    /// Publishes a snapshot now (if anything changed); returns the seq on disk.
    pub async fn flush_snapshot(&self) -> Result<u64, PublishError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.shared.state.publisher.flush())
            .await
            .map_err(|_| PublishError::Stopped)?
    }

    /// The shutdown sequence after the HTTP server stopped: let replicas catch up (for
    /// at most `drain_timeout`), stop the senders, publish the final snapshot and sync
    /// the log. Succeeds only if the data directory holds every applied write (in the
    /// snapshot or the log). If it does not (a full or failed disk), the table is
    /// written to a rescue snapshot in `rescue_dir` and this fails, saying where it is
    /// or what was lost: never a quiet success with lost data.
    pub async fn shutdown(&self) -> Result<u64, ShutdownError> {
        let s = &self.shared;
        if let Some(c) = s.consensus.get() {
            return self.shutdown_voter(c).await;
        }
        let wal = s.wal.as_ref().expect("a single leader has a log");
        let seq = self.seq();
        if !s.replicas.is_empty() && !s.replicas.drain(seq, s.config.drain_timeout).await {
            tracing::warn!(seq, "not every replica caught up before the drain timeout");
        }
        s.replicas.shutdown().await;
        let published = self.flush_snapshot().await;
        match &published {
            Ok(p) => tracing::info!(seq = p, "final snapshot published"),
            Err(e) => tracing::error!(error = %e, "final snapshot failed"),
        }
        let me = self.clone();
        let synced = match tokio::task::spawn_blocking(move || {
            me.shared
                .wal
                .as_ref()
                .expect("a single leader has a log")
                .sync()
        })
        .await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match &synced {
            Ok(seq) => tracing::info!(seq, "write-ahead log synced"),
            Err(e) => tracing::error!(error = %e, "syncing the log at shutdown failed"),
        }
        // Local replicas see the socket close, keep serving the final snapshot and
        // reconnect when a leader is back.
        s.notifier_stop.cancel();
        let _ = fs::remove_file(&s.socket_path);
        let seq = self.seq();
        let kept =
            published.as_ref().is_ok_and(|p| *p >= seq) || synced.as_ref().is_ok_and(|l| *l >= seq);
        if kept {
            return Ok(seq);
        }
        let on_disk = published
            .as_ref()
            .ok()
            .copied()
            .max(synced.as_ref().ok().copied())
            .unwrap_or_else(|| wal.durable_seq())
            .max(s.state.publisher.stats().seq);
        Err(match self.rescue() {
            Ok(path) => ShutdownError::Rescued {
                from: on_disk + 1,
                to: seq,
                snapshot: published
                    .err()
                    .map_or_else(|| "ok".into(), |e| e.to_string()),
                log: synced.err().unwrap_or_else(|| "ok".into()),
                rescue: path.display().to_string(),
                snapshot_path: s
                    .config
                    .data_dir
                    .join(snapshot::FILE_NAME)
                    .display()
                    .to_string(),
            },
            Err(e) => ShutdownError::Lost {
                from: on_disk + 1,
                to: seq,
                error: e.to_string(),
            },
        })
    }

    /// Writes the whole table as a snapshot file into the rescue directory.
    fn rescue(&self) -> std::io::Result<PathBuf> {
        let s = &self.shared;
        let dir = s
            .config
            .rescue_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let view = s.state.table.read().view();
        let meta = s.state.snapshot_meta(view.seq());
        let mut words = crate::storage::counts::CountMap::new();
        for (w, n) in view.iter() {
            words.insert_new(w, n);
        }
        let image =
            snapshot::encode_entries(words.iter(), meta, None).map_err(std::io::Error::other)?;
        let name = format!("memdb-rescue-{}-seq{}.memdb", s.state.incarnation, meta.seq);
        crate::fs::write_atomically(&dir, &name, &format!(".{name}.tmp"), &image)
    }
}
