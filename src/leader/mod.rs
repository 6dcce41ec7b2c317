//! The leader: ingests text, assigns every write batch the next seq, pushes batches to
//! network replicas and publishes snapshots.

pub mod backlog;
pub mod notifier;
pub mod publisher;
pub mod replication;

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::LeaderConfig;
use crate::leader::backlog::Backlog;
use crate::leader::publisher::Publisher;
use crate::leader::replication::{LogSource, ReplicaSet, ReplicaUrlError};
use crate::protocol::SEQ;
use crate::server::error::ApiError;
use crate::server::openapi;
use crate::server::router::{self, CountSource};
use crate::storage::batch::Batch;
use crate::storage::history::History;
use crate::storage::log::{self, FsyncPolicy, Wal};
use crate::storage::snapshot::{self, SnapshotError};
use crate::storage::table::Table;
use crate::words::Tokenizer;

/// The lock file that keeps two leaders off one data directory.
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
    #[error("{0}")]
    Shutdown(String),
    #[error("--replica: {0}")]
    Replica(#[from] crate::leader::replication::ReplicaUrlError),
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

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LeaderError + 'a {
    move |source| LeaderError::Io {
        what,
        path: path.to_owned(),
        source,
    }
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
    table: RwLock<Table>,
    backlog: Arc<Mutex<Backlog>>,
    /// The latest applied seq, for replication senders and `min_seq` readers.
    seq_tx: watch::Sender<u64>,
    /// Declared before `wal`: fields drop in order, and the publisher holds a handle
    /// to the log that must be gone before the log's writer can stop.
    publisher: Publisher,
    wal: Wal,
    replicas: Arc<ReplicaSet>,
    config: LeaderConfig,
    incarnation: u64,
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

/// `POST /post` as a JSON body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: `crate::server::parse::post_text` parses the body.
struct PostJson {
    text: String,
}

/// `POST /post` as a form (the Go clients' way); several `text` fields are all counted.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A schema only: `crate::server::parse::post_text` parses the body.
struct PostForm {
    text: String,
}

/// `POST /replicas`: a replica announces itself.
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct Register {
    /// Where the leader reaches the replica (`http://host:port`).
    url: String,
    /// The replica's seq and the incarnation it follows, if it has synced.
    seq: Option<u64>,
    incarnation: Option<String>,
}

impl Leader {
    /// Opens (or creates) the data directory, takes its lock, restores the newest
    /// snapshot and starts the publisher and the static replicas' senders. Must be
    /// called within a tokio runtime.
    pub fn open(config: LeaderConfig) -> Result<Leader, LeaderError> {
        let dir = config.data_dir.clone();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("creating data directory", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        lock.try_lock()
            .map_err(|_| LeaderError::Locked(dir.clone()))?;
        lock.set_len(0).map_err(io_err("writing", &lock_path))?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err("writing", &lock_path))?;
        // A temp file left by a crash mid-publish is never valid: remove it.
        let _ = fs::remove_file(dir.join(snapshot::TEMP_NAME));

        let snap_path = dir.join(snapshot::FILE_NAME);
        let (map, snap_seq) = match snapshot::load(&dir) {
            Ok(Some((header, map))) => {
                if header.tokenizer != config.tokenizer {
                    return Err(LeaderError::TokenizerMismatch {
                        dir,
                        data: header.tokenizer,
                        configured: config.tokenizer,
                    });
                }
                tracing::info!(seq = header.seq, words = map.len(), "restored snapshot");
                (map, header.seq)
            }
            Ok(None) => (Default::default(), 0),
            Err(source) => {
                return Err(LeaderError::Snapshot {
                    path: snap_path,
                    source,
                });
            }
        };
        // Then everything the log holds past the snapshot.
        let mut table = Table::from_parts(map, snap_seq);
        let replayed =
            log::replay(&dir, &mut table).map_err(io_err("replaying the log in", &dir))?;
        if replayed.applied > 0 || replayed.cut.is_some() {
            tracing::info!(
                applied = replayed.applied,
                seq = table.seq(),
                cut = ?replayed.cut,
                "replayed the write-ahead log"
            );
        }
        let seq = table.seq();
        let wal = Wal::open(&dir, seq, config.wal).map_err(io_err("opening the log in", &dir))?;
        // A new incarnation with every process, continuing the recorded history up to
        // what was recovered: replicas within it catch up; those ahead full-sync.
        let history =
            History::begin(&dir, seq).map_err(io_err("recording the history in", &dir))?;
        let incarnation = history.incarnation;
        let push_secret = format!("{:032x}", rand::random::<u128>());
        let (seq_tx, seq_rx) = watch::channel(seq);
        let backlog = Arc::new(Mutex::new(Backlog::new(
            seq,
            config.backlog_batches,
            config.backlog_bytes,
        )));
        let publisher = Publisher::spawn(
            dir.clone(),
            table.map().clone(),
            seq,
            snap_seq,
            config.tokenizer,
            incarnation,
            config.snapshot_interval,
            Box::new(wal.checkpointer()),
        );
        let socket_path = config
            .socket
            .clone()
            .unwrap_or_else(|| dir.join(notifier::SOCKET_NAME));
        let socket = notifier::bind(&socket_path)?;
        let linger = if config.min_acks > 0 {
            Duration::ZERO
        } else {
            config.replication_linger
        };
        let replicas = Arc::new(ReplicaSet::new(
            backlog.clone(),
            Some(LogSource {
                dir: dir.clone(),
                written: wal.written(),
            }),
            seq_rx,
            incarnation,
            config.tokenizer,
            linger,
            config.serving.auth_token.clone(),
            push_secret.clone(),
            config.max_replicas,
            config.replica_timeout,
        ));
        for url in &config.replicas {
            replicas.add(url, true)?;
        }
        replicas.spawn_expiry();
        tracing::info!(
            incarnation = %crate::protocol::incarnation_string(incarnation),
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
        // A weak handle: the socket's tasks must not keep the leader (and so the
        // publisher thread) alive.
        let weak = Arc::downgrade(&leader.shared);
        tokio::spawn(notifier::serve(
            socket,
            published,
            Arc::new(move |want| {
                if let Some(s) = weak.upgrade() {
                    s.publisher.publish_soon(want);
                }
            }),
            leader.shared.notifier_stop.clone(),
        ));
        Ok(leader)
    }

    pub fn incarnation(&self) -> u64 {
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
        let hashes: Vec<u64> = deltas
            .iter()
            .map(|(w, _)| crate::storage::table::word_hash(w))
            .collect();
        let seq = {
            let mut table = s.table.write();
            if s.wal.health().is_failed() {
                drop(table);
                s.refused.fetch_add(1, Ordering::Relaxed);
                return Err(IngestError::LogFailed(
                    s.wal.health().failure().unwrap_or_default(),
                ));
            }
            let seq = table.seq() + 1;
            table.apply_hashed(&deltas, &hashes, seq);
            let batch = Arc::new(Batch {
                seq,
                deltas,
                digest: Some(table.digest()),
            });
            s.backlog.lock().push(batch.clone());
            s.wal.append(batch.clone());
            s.publisher.push(batch);
            seq
        };
        s.seq_tx.send_if_modified(|cur| {
            let newer = seq > *cur;
            if newer {
                *cur = seq;
            }
            newer
        });
        s.words_ingested.fetch_add(words, Ordering::Relaxed);
        s.posts.fetch_add(1, Ordering::Relaxed);
        Ok(Ingested { seq, words })
    }

    /// Publishes a snapshot now (if anything changed); returns the seq on disk.
    pub async fn flush_snapshot(&self) -> Result<u64, String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.shared.publisher.flush())
            .await
            .map_err(|e| e.to_string())?
    }

    /// The shutdown sequence after the HTTP server stopped: let replicas catch up (for
    /// at most `drain_timeout`), stop the senders, publish the final snapshot and sync
    /// the log. Succeeds only if the data directory holds every applied write (in the
    /// snapshot or the log). If it does not (a full or failed disk), the table is
    /// written to a rescue snapshot in `rescue_dir` and this fails, saying where it is
    /// or what was lost: never a quiet success with lost data.
    pub async fn shutdown(&self) -> Result<u64, String> {
        let s = &self.shared;
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
        let synced = match tokio::task::spawn_blocking(move || me.shared.wal.sync()).await {
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
            .unwrap_or_else(|| s.wal.durable_seq())
            .max(s.publisher.stats().seq);
        Err(match self.rescue() {
            Ok(path) => format!(
                "the data directory lacks seqs {}..={seq} (snapshot: {}; log: {}). The whole \
                 table (seq {seq}) was saved to {}: free space, then move it over {} before \
                 starting the leader again",
                on_disk + 1,
                published.err().unwrap_or_else(|| "ok".into()),
                synced.err().unwrap_or_else(|| "ok".into()),
                path.display(),
                s.config.data_dir.join(snapshot::FILE_NAME).display(),
            ),
            Err(e) => format!(
                "LOST seqs {}..={seq}: neither the data directory nor the rescue directory \
                 could be written ({e})",
                on_disk + 1
            ),
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
        let image = snapshot::encode(t.map(), meta).map_err(std::io::Error::other)?;
        drop(t);
        let name = format!(
            "memdb-rescue-{}-seq{}.memdb",
            crate::protocol::incarnation_string(s.incarnation),
            meta.seq
        );
        snapshot::write_atomically(&dir, &name, &format!(".{name}.tmp"), &image)
    }

    /// What is failing now, each with its reason; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let s = &self.shared;
        let mut out = Vec::new();
        if let Some(e) = s.wal.health().failure() {
            out.push(format!(
                "write-ahead log cannot be written, writes are refused: {e}"
            ));
        }
        if let Some(e) = s.wal.health().roll_error() {
            out.push(e);
        }
        if let Some(e) = s.publisher.stats().last_error {
            out.push(format!("snapshot cannot be published: {e}"));
        }
        out
    }

    fn health(&self) -> (StatusCode, Value) {
        let s = &self.shared;
        let problems = self.problems();
        let (seq, words, digest) = {
            let t = s.table.read();
            (t.seq(), t.len(), t.digest())
        };
        let (backlog_len, backlog_first) = {
            let b = s.backlog.lock();
            (b.len(), b.first_seq())
        };
        let code = if problems.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = json!({
            "role": "leader",
            "pid": std::process::id(),
            "status": if problems.is_empty() { "ok" } else { "failing" },
            "problems": problems,
            "seq": seq,
            "digest": format!("{digest:016x}"),
            "incarnation": crate::protocol::incarnation_string(s.incarnation),
            "tokenizer": s.config.tokenizer,
            "words": words,
            "words_ingested": s.words_ingested.load(Ordering::Relaxed),
            "posts": s.posts.load(Ordering::Relaxed),
            "backlog": {
                "batches": backlog_len,
                "first_seq": backlog_first,
            },
            "min_acks": s.config.min_acks,
            "replicas": s.replicas.reports(),
            "snapshot": s.publisher.stats(),
            "wal": {
                "fsync": s.config.wal.fsync.as_str(),
                "durable_seq": s.wal.durable_seq(),
                "failed": s.wal.health().failure(),
                "roll_error": s.wal.health().roll_error(),
                "writes_refused": s.refused.load(Ordering::Relaxed),
            },
            "uptime_s": s.started.elapsed().as_secs(),
        });
        (code, body)
    }
}

impl CountSource for Leader {
    fn distinct_words(&self) -> u64 {
        self.shared.table.read().len() as u64
    }

    fn write_metrics(&self, out: &mut String) {
        use crate::server::metrics::{write_labelled, write_metric};
        let s = &self.shared;
        write_metric(
            out,
            "memdb_words_ingested_total",
            "counter",
            "Words counted since start.",
            s.words_ingested.load(Ordering::Relaxed) as f64,
        );
        let reports = s.replicas.reports();
        write_labelled(
            out,
            "memdb_replica_lag_batches",
            "gauge",
            "Batches a network replica is behind (-1 while unknown).",
            "replica",
            reports
                .iter()
                .map(|r| (r.url.clone(), r.lag.map(|l| l as f64).unwrap_or(-1.0))),
        );
        write_labelled(
            out,
            "memdb_replica_lag_seconds",
            "gauge",
            "Age of the oldest batch a network replica lacks; 0 when caught up (-1 while unknown).",
            "replica",
            reports
                .iter()
                .map(|r| (r.url.clone(), seconds_or_unknown(r.lag_ms))),
        );
        write_labelled(
            out,
            "memdb_replica_last_ack_age_seconds",
            "gauge",
            "Seconds since a network replica last acknowledged a push (-1 if never).",
            "replica",
            reports
                .iter()
                .map(|r| (r.url.clone(), seconds_or_unknown(r.last_ok_ms_ago))),
        );
        write_labelled(
            out,
            "memdb_replica_log_pushes_total",
            "counter",
            "Pushes to a network replica read back from the write-ahead log.",
            "replica",
            reports.iter().map(|r| (r.url.clone(), r.log_pushes as f64)),
        );
        write_labelled(
            out,
            "memdb_replica_resyncs_total",
            "counter",
            "Full syncs the leader asked a network replica to do.",
            "replica",
            reports.iter().map(|r| (r.url.clone(), r.resyncs as f64)),
        );
        let snap = s.publisher.stats();
        write_metric(
            out,
            "memdb_snapshot_seq",
            "gauge",
            "Seq of the snapshot on disk.",
            snap.seq as f64,
        );
        write_metric(
            out,
            "memdb_snapshot_publishes_total",
            "counter",
            "Snapshots published since start.",
            snap.publishes as f64,
        );
        write_metric(
            out,
            "memdb_snapshot_publish_seconds",
            "gauge",
            "Duration of the last snapshot publish.",
            snap.last_duration_ms.unwrap_or(0.0) / 1e3,
        );
        write_metric(
            out,
            "memdb_snapshot_bytes",
            "gauge",
            "Size of the last published snapshot.",
            snap.last_bytes.unwrap_or(0) as f64,
        );
        let f = s.wal.fsync_stats();
        write_metric(
            out,
            "memdb_wal_durable_seq",
            "gauge",
            "Highest seq the write-ahead log has made durable.",
            s.wal.durable_seq() as f64,
        );
        write_metric(
            out,
            "memdb_wal_fsyncs_total",
            "counter",
            "fsyncs of the write-ahead log.",
            f.fsyncs.load(Ordering::Relaxed) as f64,
        );
        write_metric(
            out,
            "memdb_wal_fsync_seconds_total",
            "counter",
            "Time spent in write-ahead log fsyncs.",
            f.total_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        let h = s.wal.health();
        write_metric(
            out,
            "memdb_wal_failed",
            "gauge",
            "1 while the write-ahead log cannot be written (writes are refused).",
            h.is_failed() as u8 as f64,
        );
        write_metric(
            out,
            "memdb_wal_failures_total",
            "counter",
            "Times the write-ahead log became unwritable.",
            h.failures.load(Ordering::Relaxed) as f64,
        );
        write_metric(
            out,
            "memdb_wal_roll_failing",
            "gauge",
            "1 while a full log segment cannot be closed (no new one can be created).",
            h.roll_error().is_some() as u8 as f64,
        );
        write_metric(
            out,
            "memdb_writes_refused_total",
            "counter",
            "Writes refused (not applied) because the write-ahead log failed.",
            s.refused.load(Ordering::Relaxed) as f64,
        );
        write_metric(
            out,
            "memdb_snapshot_failing",
            "gauge",
            "1 while the last snapshot publish failed.",
            snap.last_error.is_some() as u8 as f64,
        );
        write_metric(
            out,
            "memdb_wal_last_fsync_seconds",
            "gauge",
            "Duration of the last write-ahead log fsync.",
            f.last_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
    }

    fn seq(&self) -> u64 {
        self.shared.table.read().seq()
    }

    fn seq_watch(&self) -> watch::Receiver<u64> {
        self.shared.seq_tx.subscribe()
    }

    fn max_wait(&self) -> Duration {
        self.shared.config.max_wait
    }

    fn ready(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let t = self.shared.table.read();
        let body =
            crate::server::parse::lookup_body(self.shared.config.tokenizer, words, |w| t.get(w))?;
        Ok((body, t.seq()))
    }

    fn sync_json(&self) -> (Vec<u8>, u64, u64, Tokenizer) {
        // Serialised under the read lock so the body and its seq agree; writers wait
        // for this (a full sync is rare: replica start and recovery).
        let t = self.shared.table.read();
        let mut body = Vec::with_capacity(t.len() * 16 + 2);
        serde_json::to_writer(&mut body, t.map()).expect("serialising to a Vec cannot fail");
        (
            body,
            t.seq(),
            self.shared.incarnation,
            self.shared.config.tokenizer,
        )
    }
}

/// Milliseconds as seconds for a metric; -1 when unknown.
fn seconds_or_unknown(ms: Option<u64>) -> f64 {
    ms.map_or(-1.0, |ms| ms as f64 / 1e3)
}

#[utoipa::path(
    post,
    path = "/post",
    tag = "writes",
    summary = "Count the words of a text",
    description = "Applies the text as one batch with the next seq and pushes it to the \
                   network replicas. With --fsync always the answer waits for the log \
                   record to be on disk; with --min-acks N for N replicas to confirm.",
    request_body(content(
        (inline(PostForm) = "application/x-www-form-urlencoded"),
        (String = "text/plain"),
        (inline(PostJson) = "application/json"),
    )),
    responses(
        (status = 202, description = "Counted", body = Ingested,
         headers(("x-memdb-seq" = u64, description = "The batch's seq"))),
        (status = 400, description = "No text, empty text or a malformed body",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 413, description = "Larger than --max-body", body = crate::server::openapi::ErrorBody),
        (status = 415, description = "Unsupported content type", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "With --fsync always: applied in memory but the log \
                                      failed before it was durable; or overloaded",
         body = crate::server::openapi::ErrorBody),
        (status = 507, description = "The write-ahead log cannot be written (disk full or \
                                      failed): refused, nothing applied; retry later",
         body = crate::server::openapi::ErrorBody),
        (status = 504, description = "Applied on the leader but not confirmed by --min-acks \
                                      replicas within --ack-timeout",
         body = crate::server::openapi::ErrorBody),
    )
)]
async fn post_handler(
    State(leader): State<Leader>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let text = crate::server::parse::post_text(&headers, &body)?;
    let ingested = leader.ingest(&text).map_err(|e| match e {
        IngestError::LogFailed(_) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            .with("reason", "log_failed")
            .with("retry_after", 1),
    })?;
    let cfg = &leader.shared.config;
    if cfg.wal.fsync == FsyncPolicy::Always
        && ingested.words > 0
        && let Err(e) = leader.shared.wal.wait_durable(ingested.seq).await
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "write applied in memory as seq {} but not made durable: {e}; it is kept \
                 and written when the log recovers (its outcome is not known: do not \
                 simply retry it)",
                ingested.seq
            ),
        )
        .with("reason", "log_failed")
        .with("seq", ingested.seq));
    }
    if cfg.min_acks > 0
        && ingested.words > 0
        && let Err(confirmed) = leader
            .shared
            .replicas
            .wait_acks(ingested.seq, cfg.min_acks, cfg.ack_timeout)
            .await
    {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "write applied on the leader as seq {} but confirmed by only {confirmed} of \
                 the {} replicas --min-acks requires within {:?}",
                ingested.seq, cfg.min_acks, cfg.ack_timeout
            ),
        )
        .with("seq", ingested.seq)
        .with("words", ingested.words)
        .with("confirmed", confirmed));
    }
    Ok((
        StatusCode::ACCEPTED,
        [(SEQ, crate::protocol::seq_value(ingested.seq))],
        axum::Json(ingested),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness and replication status",
    responses(
        (status = 200, description = "The leader's seq, its replicas (acked seq, lag, \
                                      last error), snapshot and log statistics",
         body = Object),
        (status = 503, description = "Something is failing (the write-ahead log, a log \
                                      segment roll, the snapshot): `problems` says what; \
                                      same body",
         body = Object),
    ),
)]
async fn health_handler(State(leader): State<Leader>) -> Response {
    let (code, body) = leader.health();
    (code, axum::Json(body)).into_response()
}

#[utoipa::path(
    post,
    path = "/replicas",
    tag = "replication",
    summary = "Register a network replica",
    description = "Replicas call this at start and on every heartbeat; the leader then \
                   pushes its batches to the URL.",
    request_body = Register,
    responses(
        (status = 200, description = "Registered: the leader's incarnation, seq and tokenizer",
         body = Object),
        (status = 400, description = "Not a JSON object whose url is a plain http(s) \
                                      origin (no user, path, query or fragment)",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "The leader has --max-replicas replicas already",
         body = crate::server::openapi::ErrorBody),
    )
)]
async fn register_handler(
    State(leader): State<Leader>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let reg: Register = url_body(body)?;
    let url = crate::leader::replication::replica_origin(&reg.url)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let new = leader
        .shared
        .replicas
        .add(&url, false)
        .map_err(|e| match e {
            ReplicaUrlError::Full(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .with("reason", "max_replicas")
            }
            other => ApiError::bad_request(other.to_string()),
        })?;
    let at = reg.seq.zip(
        reg.incarnation
            .as_deref()
            .and_then(crate::protocol::parse_incarnation),
    );
    if let Some((seq, inc)) = at
        && inc == leader.shared.incarnation
    {
        leader.shared.replicas.report(&url, seq);
    }
    // Whether the replica's data is a prefix of this history (it then adopts this
    // incarnation instead of full-syncing).
    let continues = at.is_some_and(|(seq, inc)| leader.shared.history.continues(inc, seq));
    Ok(axum::Json(json!({
        "registered": new,
        "continues": continues,
        "push_secret": leader.shared.push_secret,
        "incarnation": crate::protocol::incarnation_string(leader.shared.incarnation),
        "seq": leader.seq(),
        "tokenizer": leader.shared.config.tokenizer,
    }))
    .into_response())
}

#[utoipa::path(
    get,
    path = "/replicas",
    tag = "replication",
    summary = "The replicas the leader pushes to",
    responses(
        (status = 200, description = "Each replica's URL, acked seq, lag and last error",
         body = Object),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
    )
)]
async fn list_replicas_handler(State(leader): State<Leader>) -> Response {
    axum::Json(json!({ "replicas": leader.shared.replicas.reports() })).into_response()
}

/// The JSON body of a `/replicas` call, which names a replica by `url`.
fn url_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    serde_json::from_slice(&body?).map_err(|e| {
        ApiError::bad_request(format!(
            "expected a JSON object {{\"url\": \"http://...\"}}: {e}"
        ))
    })
}

/// `DELETE /replicas`: which replica to stop pushing to.
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct Unregister {
    /// The URL it registered with.
    url: String,
}

#[utoipa::path(
    delete,
    path = "/replicas",
    tag = "replication",
    summary = "Stop pushing to a network replica",
    description = "Removes the replica and stops its sender. A replica that is still \
                   running registers again with its next heartbeat.",
    request_body = Unregister,
    responses(
        (status = 200, description = "Removed", body = Object),
        (status = 400, description = "Not a JSON object with a url", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 404, description = "No such replica", body = crate::server::openapi::ErrorBody),
    )
)]
async fn unregister_handler(
    State(leader): State<Leader>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let un: Unregister = url_body(body)?;
    if !leader.shared.replicas.remove(&un.url) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no replica {:?}", un.url),
        ));
    }
    Ok(axum::Json(json!({ "removed": un.url })).into_response())
}

/// The leader's routes.
pub fn leader_router(leader: Leader) -> Router {
    let cfg = &leader.shared.config;
    let guarded = OpenApiRouter::new()
        .routes(routes!(post_handler))
        .routes(openapi::documented::<router::__path_sync, _, _, _>(
            router::sync::<Leader>,
        ))
        .routes(routes!(
            register_handler,
            list_replicas_handler,
            unregister_handler
        ));
    router::node_router(
        leader.clone(),
        "leader",
        guarded,
        routes!(health_handler),
        &cfg.serving,
        Some(cfg.max_body),
    )
}

/// Runs a leader on `listener` until `shutdown` resolves, then drains replicas and
/// publishes a final snapshot.
pub async fn run(
    listener: TcpListener,
    config: LeaderConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LeaderError> {
    serve(listener, Leader::open(config)?, shutdown).await
}

/// Serves an opened leader on `listener` until `shutdown` resolves, then drains
/// replicas and publishes a final snapshot.
pub async fn serve(
    listener: TcpListener,
    leader: Leader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LeaderError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "leader ready");
    }
    let app = leader_router(leader.clone());
    let conns = leader.shared.config.serving.limits.connections;
    let served = crate::server::listen::serve(listener, app, shutdown, conns)
        .await
        .map_err(LeaderError::Serve);
    let stopped = leader.shutdown().await;
    served?;
    stopped.map(|_| ()).map_err(LeaderError::Shutdown)
}
