//! The leader: ingests text, assigns every write batch the next seq, pushes batches to
//! network replicas and publishes snapshots.

pub mod backlog;
pub mod notifier;
mod open;
pub mod publisher;
pub mod replication;
mod routes;
mod status;
mod voter;

pub use routes::{leader_router, run, serve};

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::LeaderConfig;
use crate::leader::backlog::Backlog;
use crate::leader::publisher::{PublishError, Publisher, Setup};
use crate::leader::replication::ReplicaSet;
use crate::protocol::Incarnation;
use crate::server::router::CountSource;
use crate::storage::batch::Batch;
use crate::storage::delta::Changes;
use crate::storage::history::History;
use crate::storage::log::Wal;
use crate::storage::snapshot::{self, SnapshotError};
use crate::storage::table::Table;
use crate::words::{Deltas, Tokenizer};

use open::{base_or_empty, lock_data_dir, recover, replica_set};

pub const LOCK_FILE: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another leader is using data directory {0}")]
    Locked(PathBuf),
    #[error("cannot restore from {path}: {source} (move the file away to start empty)")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error(
        "data in {dir} was counted with the {data} tokenizer; start with --tokenizer {data} \
         or use another data directory"
    )]
    TokenizerMismatch {
        dir: PathBuf,
        data: Tokenizer,
        configured: Tokenizer,
    },
    #[error(transparent)]
    Socket(#[from] crate::leader::notifier::NotifierError),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
    #[error("--replica: {0}")]
    Replica(#[from] crate::leader::replication::ReplicaUrlError),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a shutdown could not leave every applied write in the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    #[error(
        "the data directory lacks seqs {from}..={to} (snapshot: {snapshot}; log: {log}). \
         The whole table (seq {to}) was saved to {rescue}: free space, then move it over \
         {snapshot_path} before starting the leader again"
    )]
    Rescued {
        from: u64,
        to: u64,
        snapshot: String,
        log: String,
        rescue: String,
        snapshot_path: String,
    },
    #[error(
        "LOST seqs {from}..={to}: neither the data directory nor the rescue directory \
         could be written ({error})"
    )]
    Lost { from: u64, to: u64, error: String },
}

/// Why a write was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error(
        "the write-ahead log cannot be written ({0}); writes are refused until it can \
         (this one was not applied)"
    )]
    LogFailed(String),
}

pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LeaderError + 'a {
    move |source| LeaderError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Each word's hash, computed before the table's lock is taken.
fn word_hashes(deltas: &Deltas) -> Vec<u64> {
    deltas
        .iter()
        .map(|(w, _)| crate::storage::table::word_hash(w))
        .collect()
}

/// A cheap-clone handle to the leader's state.
#[derive(Clone)]
pub struct Leader {
    shared: Arc<Shared>,
}

struct Shared {
    /// The live table. parking_lot, never held across `.await`; the write lock is held
    /// only to apply one batch and enqueue it, so that seq order = apply order = queue
    /// order.
    ///
    /// Lock order: `table`, then `backlog` (and the publisher's queue). The backlog is
    /// also locked by the replication senders and reports, which never hold a link's
    /// or the link list's lock while they do.
    table: RwLock<Table>,
    backlog: Arc<Mutex<Backlog>>,
    /// The latest applied seq, for replication senders and `min_seq` readers.
    seq_tx: watch::Sender<u64>,
    /// Declared before `wal`: fields drop in order, and the publisher holds a handle
    /// to the log that must be gone before the log's writer can stop.
    publisher: Publisher,
    /// The single-leader write-ahead log; `None` in a raft group, whose raft log is
    /// the node's log.
    wal: Option<Wal>,
    /// Set once the raft engine runs (a voter of a raft group).
    consensus: std::sync::OnceLock<crate::consensus::Consensus>,
    /// The raft snapshot the table was restored from, for the raft engine to take.
    raft_boot: Mutex<Option<crate::consensus::state_machine::StoredMeta>>,
    replicas: Arc<ReplicaSet>,
    config: LeaderConfig,
    incarnation: Incarnation,
    /// The earlier incarnations this one continues (see [`crate::storage::history`]).
    history: History,
    /// Random per incarnation; carried by every push so replicas can refuse pushes the
    /// leader did not send. Handed to replicas when they register.
    push_secret: String,
    started: Instant,
    words_ingested: AtomicU64,
    posts: AtomicU64,
    /// Writes refused because the log could not be written.
    refused: AtomicU64,
    /// The notification socket's path, removed at shutdown.
    socket_path: PathBuf,
    /// Stops the notification socket's tasks.
    notifier_stop: CancellationToken,
    /// Held (flock) for the process's life.
    _lock: File,
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
        let (recovered, raft_boot) = if let Some(raft) = &config.raft {
            open::recover_voter(&dir, config.tokenizer, raft)?
        } else {
            (recover(&dir, config.tokenizer)?, None)
        };
        let table = recovered.table;
        let published_seq = recovered.state.as_ref().map_or(0, |s| s.seq());
        let seq = table.seq();
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
        let meta = snapshot::Meta {
            tokenizer: config.tokenizer,
            seq,
            incarnation,
        };
        let base = base_or_empty(&dir, recovered.state, meta)?;
        let publisher = Publisher::spawn(Setup {
            dir: dir.clone(),
            changes: Changes::new(base, recovered.changed),
            seq,
            published_seq,
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
        let leader = Leader {
            shared: Arc::new(Shared {
                table: RwLock::new(table),
                backlog,
                seq_tx,
                publisher,
                wal,
                consensus: std::sync::OnceLock::new(),
                raft_boot: Mutex::new(raft_boot),
                replicas,
                config,
                incarnation,
                history,
                push_secret,
                started: Instant::now(),
                words_ingested: AtomicU64::new(0),
                posts: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                socket_path,
                notifier_stop: CancellationToken::new(),
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
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(notifier::serve(
            socket,
            published,
            Arc::new(move |want| {
                if let Some(s) = weak.upgrade() {
                    s.publisher.publish_soon(want);
                }
            }),
            self.shared.notifier_stop.clone(),
        ));
    }

    pub fn incarnation(&self) -> Incarnation {
        self.shared.incarnation
    }

    pub fn replicas(&self) -> &ReplicaSet {
        &self.shared.replicas
    }

    /// Counts `text` and applies it as the next batch. Tokenizing happens before any
    /// lock is taken. Text without words changes nothing and takes no seq. While the
    /// write-ahead log cannot be written, nothing is applied: a write the log would not
    /// hold must not become visible (or be acknowledged).
    pub fn ingest(&self, text: &str) -> Result<Ingested, IngestError> {
        let s = &self.shared;
        let (deltas, words) = s.config.tokenizer.count(text);
        if words == 0 {
            return Ok(Ingested {
                seq: self.seq(),
                words: 0,
            });
        }
        let wal = s.wal.as_ref().expect("a single leader has a log");
        let hashes = word_hashes(&deltas);
        let seq = {
            let mut table = s.table.write();
            if wal.health().is_failed() {
                drop(table);
                s.refused.fetch_add(1, Ordering::Relaxed);
                return Err(IngestError::LogFailed(
                    wal.health().failure().unwrap_or_default(),
                ));
            }
            let batch = self.apply_locked(&mut table, deltas, &hashes);
            wal.append(batch.clone());
            s.publisher.push(batch.clone());
            batch.seq
        };
        self.advance(seq, words);
        Ok(Ingested { seq, words })
    }

    /// Applies `deltas` as the next seq under the table's write lock and queues the
    /// batch for the replicas.
    pub(super) fn apply_locked(
        &self,
        table: &mut Table,
        deltas: Deltas,
        hashes: &[u64],
    ) -> Arc<Batch> {
        let seq = table.seq() + 1;
        table.apply_hashed(&deltas, hashes, seq);
        let batch = Arc::new(Batch {
            seq,
            deltas,
            digest: Some(table.digest()),
        });
        self.shared.backlog.lock().push(batch.clone());
        batch
    }

    /// Tells `min_seq` readers and the senders about `seq`, and counts the write.
    pub(super) fn advance(&self, seq: u64, words: u64) {
        let s = &self.shared;
        s.seq_tx.send_if_modified(|cur| {
            let newer = seq > *cur;
            if newer {
                *cur = seq;
            }
            newer
        });
        s.words_ingested.fetch_add(words, Ordering::Relaxed);
        s.posts.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes a snapshot now (if anything changed); returns the seq on disk.
    pub async fn flush_snapshot(&self) -> Result<u64, PublishError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.shared.publisher.flush())
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
            .max(s.publisher.stats().seq);
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
        let t = s.table.read();
        let meta = snapshot::Meta {
            tokenizer: s.config.tokenizer,
            seq: t.seq(),
            incarnation: s.incarnation,
        };
        let image =
            snapshot::encode_entries(t.map().iter(), meta, None).map_err(std::io::Error::other)?;
        drop(t);
        let name = format!("memdb-rescue-{}-seq{}.memdb", s.incarnation, meta.seq);
        snapshot::write_atomically(&dir, &name, &format!(".{name}.tmp"), &image)
    }
}
