//! A local replica: serves reads straight from the leader's memory-mapped snapshot.
//!
//! No HTTP and no deserialization on the replication path: the leader publishes
//! `snapshot.memdb` in its data directory and says so on its Unix socket; this replica
//! maps the new file, validates it once, and swaps an `Arc` so in-flight reads finish
//! on the old mapping. Three sources tell it to look at the file, any of which suffices:
//! the leader's socket (immediate); while the socket is down, a `notify` watch on the
//! directory (rename events); and a slow poll of the file's identity (the last resort,
//! always on, for a socket that is up but silent). A file that fails
//! validation is rejected and the last good mapping keeps serving. It never writes into
//! the leader's directory.

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backoff::Backoff;
use crate::protocol::{SOCKET_NAME, parse_socket_line, socket_line};
use crate::server::error::ApiError;
use crate::server::router::{self, CountSource};
use crate::storage::mapped::{MappedSnapshot, identity_of};
use crate::storage::snapshot;
use crate::words::Tokenizer;

/// Reconnect delays to the leader's socket: from the first to the cap.
const RECONNECT_START: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A local replica's settings.
#[derive(Debug, Clone)]
pub struct LocalReplicaConfig {
    /// The leader's data directory (read only).
    pub data_dir: PathBuf,
    /// The leader's notification socket; default `<data_dir>/memdb.sock`.
    pub socket: Option<PathBuf>,
    /// How often to stat the snapshot file in case both notifications fail. Default 1s.
    pub poll_interval: Duration,
    /// Longest a `min_seq` read waits. Default 2s.
    pub max_wait: Duration,
    /// Token (required on `/sync`, and on lookups with `protect_reads`) and limits.
    pub serving: router::Serving,
    /// A snapshot file larger than this is refused before it is read. Default 16 GiB.
    pub max_snapshot_bytes: u64,
}

/// A snapshot the leader announced but that is not mapped this long after is stale, and
/// a loader busy this long with one file is stuck: `/health` then answers 503.
const STALE_AFTER: Duration = Duration::from_secs(5);

impl LocalReplicaConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalReplicaConfig {
            data_dir: data_dir.into(),
            socket: None,
            poll_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(2),
            serving: router::Serving::default(),
            max_snapshot_bytes: 16 << 30,
        }
    }

    fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join(SOCKET_NAME))
    }
}

/// What told the replica to look at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Start = 0,
    Socket = 1,
    Watch = 2,
    Poll = 3,
}

#[derive(Debug, Default, Serialize)]
struct LoadsBySource {
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
    /// The file last rejected, so the same bad file is not validated again and again.
    rejected_identity: Option<(u64, u64)>,
}

struct Shared {
    /// The mapping reads are served from. Swapped whole; readers clone the `Arc` and
    /// never hold the lock while answering.
    current: RwLock<Option<Arc<MappedSnapshot>>>,
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
                stopping: AtomicBool::new(false),
                config,
            }),
        }
    }

    /// The mapping reads are served from now, if any.
    pub fn current(&self) -> Option<Arc<MappedSnapshot>> {
        self.shared.current.read().clone()
    }

    fn trigger(&self, source: Source) {
        self.shared.pending.lock().get_or_insert(source);
        self.shared.check.notify_one();
    }

    /// Maps the published file if it is not the one mapped now. Blocking (it reads and
    /// checksums the whole file): call from a blocking context.
    fn reload_if_changed(&self, source: Source) {
        let s = &self.shared;
        s.checks.fetch_add(1, Ordering::Relaxed);
        let path = s.config.data_dir.join(snapshot::FILE_NAME);
        let Some(id) = identity_of(&path) else {
            return;
        };
        let current_id = self.current().map(|m| m.identity());
        if current_id == Some(id) || s.stats.lock().rejected_identity == Some(id) {
            return;
        }
        *s.loading_since.lock() = Some(Instant::now());
        let opened = MappedSnapshot::open_until(&path, s.config.max_snapshot_bytes, &|| {
            s.stopping.load(Ordering::Acquire)
        })
        .map_err(|e| e.to_string())
        .and_then(|m| {
            // Never back in time within one history: an older file renamed into place
            // (a restored backup, a mistake) is not the leader's newest state.
            match self.current() {
                Some(cur)
                    if cur.header().incarnation == m.header().incarnation
                        && m.header().seq < cur.header().seq =>
                {
                    Err(format!(
                        "snapshot of seq {} is older than the mapped seq {} of the same \
                         leader incarnation",
                        m.header().seq,
                        cur.header().seq
                    ))
                }
                _ => Ok(m),
            }
        });
        *s.loading_since.lock() = None;
        match opened {
            Ok(m) if Some(m.identity()) == current_id => {}
            Ok(m) => {
                let h = *m.header();
                *s.current.write() = Some(Arc::new(m));
                s.seq_tx.send_replace(h.seq);
                {
                    let mut a = s.announced.lock();
                    if a.0 <= h.seq {
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
                tracing::debug!(
                    seq = h.seq,
                    words = h.words,
                    ?source,
                    "mapped a new snapshot"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "rejected a snapshot; still serving the previous one");
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

    /// Follows the leader's socket: every `seq N` (and every reconnect) triggers a
    /// check; readers' `min_seq` waits are passed on as `want N`.
    async fn socket_follower(self, cancel: CancellationToken) {
        let path = self.shared.config.socket_path();
        let mut backoff = Backoff::new(RECONNECT_START, RECONNECT_MAX);
        let mut want_rx = self.shared.want_tx.subscribe();
        loop {
            let stream = tokio::select! {
                r = UnixStream::connect(&path) => r,
                _ = cancel.cancelled() => return,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = cancel.cancelled() => return,
                    }
                    continue;
                }
            };
            backoff.reset();
            self.shared.socket_connected.store(true, Ordering::Release);
            tracing::info!(socket = %path.display(), "connected to the leader's notification socket");
            // Whatever happened while disconnected, look at the file now.
            self.trigger(Source::Socket);
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut asked = 0u64;
            loop {
                let wanted = *want_rx.borrow_and_update();
                if wanted > asked && wanted > self.seq_now() {
                    asked = wanted;
                    if w.write_all(socket_line("want", wanted).as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(l)) => {
                            if let Some(seq) = parse_socket_line(&l, "seq")
                                && seq != self.seq_now()
                            {
                                self.announce(seq);
                                self.trigger(Source::Socket);
                            }
                        }
                        _ => break,
                    },
                    r = want_rx.changed() => if r.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
            self.shared.socket_connected.store(false, Ordering::Release);
            tracing::info!(
                "the leader's notification socket closed; reconnecting (file watch and poll still on)"
            );
        }
    }

    /// Watches the data directory for the snapshot being renamed into place, and polls
    /// the file's identity every `poll_interval` as the last resort.
    async fn watch_and_poll(self, cancel: CancellationToken) {
        let dir = self.shared.config.data_dir.clone();
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        let mut interval = tokio::time::interval(self.shared.config.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = cancel.cancelled() => return,
            }
            if watcher.is_none() {
                watcher = self.start_watcher(&dir);
            }
            let path = dir.join(snapshot::FILE_NAME);
            let now = identity_of(&path);
            let mapped = self.current().map(|m| m.identity());
            if now.is_some() && now != mapped {
                self.trigger(Source::Poll);
            }
        }
    }

    fn start_watcher(&self, dir: &std::path::Path) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let me = self.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            // The fallback: while the socket is up, it tells us first and for sure.
            if me.shared.socket_connected.load(Ordering::Acquire) {
                return;
            }
            if let Ok(ev) = res
                && ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| n == snapshot::FILE_NAME))
            {
                me.trigger(Source::Watch);
            }
        };
        let mut w = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a file watcher; polling only");
                return None;
            }
        };
        match w.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching for new snapshots");
                Some(w)
            }
            Err(e) => {
                tracing::debug!(error = %e, dir = %dir.display(), "cannot watch the data directory yet");
                None
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

    /// Why the mapping cannot be trusted to be fresh, if it cannot.
    fn problem(&self) -> Option<String> {
        let s = &self.shared;
        if let Some(t) = *s.loading_since.lock()
            && t.elapsed() > STALE_AFTER
        {
            return Some(format!(
                "the loader has been validating one file for {:?}",
                t.elapsed()
            ));
        }
        let (seq, since) = *s.announced.lock();
        match since {
            Some(t) if t.elapsed() > STALE_AFTER && seq > self.seq_now() => Some(format!(
                "stale: the leader announced seq {seq} {:?} ago but seq {} is mapped{}",
                t.elapsed(),
                self.seq_now(),
                s.stats
                    .lock()
                    .last_rejection
                    .as_ref()
                    .map(|r| format!(" (last rejection: {r})"))
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }

    fn health(&self) -> (StatusCode, Value) {
        let s = &self.shared;
        let cur = self.current();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let problem = self.problem();
        let st = s.stats.lock();
        let status = match (&cur, &problem) {
            (None, _) => "waiting for a snapshot",
            (Some(_), Some(_)) => "stale",
            (Some(_), None) => "ok",
        };
        let body = json!({
            "role": "local-replica",
            "pid": std::process::id(),
            "status": status,
            "problem": problem,
            "loading_ms": s.loading_since.lock().map(|t| t.elapsed().as_millis() as u64),
            "ready": cur.is_some(),
            "seq": cur.as_ref().map(|m| m.header().seq).unwrap_or(0),
            "incarnation": cur.as_ref().map(|m| crate::protocol::incarnation_string(m.header().incarnation)),
            "tokenizer": cur.as_ref().map(|m| m.header().tokenizer),
            "words": cur.as_ref().map(|m| m.header().words).unwrap_or(0),
            "snapshot_age_ms": cur.as_ref().map(|m| now_ms.saturating_sub(m.header().written_unix_ms)),
            "mapped_bytes": cur.as_ref().map(|m| m.len()).unwrap_or(0),
            "data_dir": s.config.data_dir,
            "socket": s.config.socket_path(),
            "socket_connected": s.socket_connected.load(Ordering::Acquire),
            "loads": st.loads,
            "checks": s.checks.load(Ordering::Relaxed),
            "rejected_snapshots": st.rejected,
            "last_rejection": st.last_rejection,
        });
        let code = if cur.is_some() && problem.is_none() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body)
    }

    fn mapped(&self) -> Result<Arc<MappedSnapshot>, ApiError> {
        self.current().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no valid snapshot mapped yet; waiting for the leader to publish one",
            )
        })
    }
}

/// Serialises an archived map as a JSON object without building an owned copy.
struct ArchivedJson<'a>(&'a MappedSnapshot);

impl Serialize for ArchivedJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .map()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_native())),
        )
    }
}

impl CountSource for LocalReplica {
    fn distinct_words(&self) -> u64 {
        self.current().map(|m| m.header().words).unwrap_or(0)
    }

    fn write_metrics(&self, out: &mut String) {
        use crate::server::metrics::{write_labelled, write_metric};
        let cur = self.current();
        let h = cur.as_ref().map(|m| *m.header());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        write_metric(
            out,
            "memdb_ready",
            "gauge",
            "1 once a snapshot is mapped.",
            cur.is_some() as u8 as f64,
        );
        write_metric(
            out,
            "memdb_snapshot_age_seconds",
            "gauge",
            "Age of the mapped snapshot (-1 if none).",
            h.map(|h| now_ms.saturating_sub(h.written_unix_ms) as f64 / 1e3)
                .unwrap_or(-1.0),
        );
        let st = self.shared.stats.lock();
        write_metric(
            out,
            "memdb_rejected_snapshots_total",
            "counter",
            "Snapshot files that failed validation.",
            st.rejected as f64,
        );
        write_labelled(
            out,
            "memdb_snapshot_loads_total",
            "counter",
            "Snapshots mapped, by what announced them.",
            "source",
            [
                ("start".to_owned(), st.loads.start as f64),
                ("socket".to_owned(), st.loads.socket as f64),
                ("watch".to_owned(), st.loads.watch as f64),
                ("poll".to_owned(), st.loads.poll as f64),
            ],
        );
    }

    fn seq(&self) -> u64 {
        self.seq_now()
    }

    fn seq_watch(&self) -> watch::Receiver<u64> {
        self.shared.seq_tx.subscribe()
    }

    fn max_wait(&self) -> Duration {
        self.shared.config.max_wait
    }

    fn ready(&self) -> Result<(), ApiError> {
        self.mapped().map(|_| ())
    }

    fn want_seq(&self, seq: u64) {
        self.shared.want_tx.send_if_modified(|w| {
            let newer = seq > *w;
            if newer {
                *w = seq;
            }
            newer
        });
    }

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let m = self.mapped()?;
        let h = m.header();
        let body = crate::server::parse::lookup_body(h.tokenizer, words, |w| m.get(w))?;
        Ok((body, h.seq))
    }

    fn sync_json(&self) -> (Vec<u8>, u64, u64, Tokenizer) {
        match self.current() {
            Some(m) => {
                let h = *m.header();
                let mut body = Vec::with_capacity(m.len() + 2);
                serde_json::to_writer(&mut body, &ArchivedJson(&m))
                    .expect("serialising to a Vec cannot fail");
                (body, h.seq, h.incarnation, h.tokenizer)
            }
            None => (b"{}".to_vec(), 0, 0, Tokenizer::default()),
        }
    }
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Readiness and the mapped snapshot",
    responses(
        (status = 200, description = "A snapshot is mapped: its seq, age and size, the \
                                      socket's state and loads by source", body = Object),
        (status = 503, description = "No snapshot mapped yet (same body)", body = Object),
    )
)]
async fn health_handler(State(r): State<LocalReplica>) -> Response {
    let (code, body) = r.health();
    (code, axum::Json(body)).into_response()
}

/// The local replica's routes.
pub fn local_replica_router(replica: LocalReplica) -> Router {
    let cfg = &replica.shared.config;
    let guarded = OpenApiRouter::new().routes(crate::server::openapi::documented::<
        router::__path_sync,
        _,
        _,
        _,
    >(router::sync::<LocalReplica>));
    router::node_router(
        replica.clone(),
        "local replica",
        guarded,
        routes!(health_handler),
        &cfg.serving,
        None,
    )
}

/// Runs a local replica on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: LocalReplicaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let replica = LocalReplica::new(config);
    let cancel = CancellationToken::new();
    replica.trigger(Source::Start);
    let tasks = [
        tokio::spawn(replica.clone().loader(cancel.clone())),
        tokio::spawn(replica.clone().socket_follower(cancel.clone())),
        tokio::spawn(replica.clone().watch_and_poll(cancel.clone())),
    ];
    let conns = replica.shared.config.serving.limits.connections;
    let served = crate::server::listen::serve(
        listener,
        local_replica_router(replica.clone()),
        shutdown,
        conns,
    )
    .await;
    replica.shared.stopping.store(true, Ordering::Release);
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    served
}
