//! The local replica's status (`/health`, metrics, lookups from the mapping), its
//! routes and `run`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::LocalReplicaConfig;
use crate::protocol::Incarnation;
use crate::server::error::ApiError;
use crate::server::metrics::Series;
use crate::server::parse::TopQuery;
use crate::server::router;
use crate::server::source::{CountSource, SyncBody};
use crate::storage::mapped::MappedState;
use crate::words::Tokenizer;

use crate::reader::LoadsBySource;

use super::{LocalReplica, STALE_AFTER};

/// The local replica's `GET /health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LocalReplicaHealth {
    /// `local-replica`.
    role: &'static str,
    pid: u32,
    /// `ok`, `stale`, or `waiting for a snapshot`.
    status: &'static str,
    /// Why it is not `ok`, if it is stale.
    problem: Option<String>,
    /// How long the load under way has taken, if one is.
    loading_ms: Option<u64>,
    /// A snapshot is mapped.
    ready: bool,
    /// The mapped snapshot's seq (0 if none).
    seq: u64,
    /// The incarnation of the leader that wrote it (16 hex digits).
    #[schema(value_type = Option<String>)]
    incarnation: Option<Incarnation>,
    #[schema(value_type = Option<String>)]
    tokenizer: Option<Tokenizer>,
    /// Distinct words in the mapped state.
    words: u64,
    /// Words in the mapped delta (changed since the base).
    delta_words: u64,
    /// The seq of the mapped base (the last compaction).
    base_seq: u64,
    /// Age of the mapped snapshot.
    snapshot_age_ms: Option<u64>,
    mapped_bytes: usize,
    /// The leader's data directory it maps from.
    data_dir: String,
    /// The leader's notification socket.
    socket: String,
    socket_connected: bool,
    loads: LoadsBySource,
    /// Files examined.
    checks: u64,
    rejected_snapshots: u64,
    last_rejection: Option<String>,
    /// The certificate served, when the node serves TLS (null otherwise).
    tls: Option<crate::tls::server::TlsHealth>,
}

/// What `/health` reports beside the status word.
enum Problem {
    /// Something other than the mapping is wrong (an expired certificate).
    Failing(String),
    /// The mapping may be behind the leader, or the loader is stuck.
    Stale(String),
}

impl LocalReplica {
    /// What is wrong with this node, if anything: its served certificate first, then
    /// whether the mapping can be trusted to be fresh.
    fn problem(&self) -> Option<Problem> {
        let s = &self.shared;
        if let Some(p) = s
            .config
            .serving
            .tls
            .as_ref()
            .and_then(|t| t.health().problem())
        {
            return Some(Problem::Failing(p));
        }
        self.shared
            .reader
            .staleness(STALE_AFTER)
            .map(Problem::Stale)
    }

    fn health(&self) -> (StatusCode, LocalReplicaHealth) {
        let s = &self.shared;
        let cur = self.current();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let problem = self.problem();
        let st = s.reader.status();
        let status = match (&cur, &problem) {
            (None, _) => "waiting for a snapshot",
            (Some(_), Some(Problem::Failing(_))) => "failing",
            (Some(_), Some(Problem::Stale(_))) => "stale",
            (Some(_), None) => "ok",
        };
        let problem = problem.map(|(Problem::Failing(p) | Problem::Stale(p))| p);
        let body = LocalReplicaHealth {
            role: "local-replica",
            pid: std::process::id(),
            status,
            problem,
            loading_ms: st.loading.map(|t| t.as_millis() as u64),
            ready: cur.is_some(),
            seq: cur.as_ref().map(|m| m.header().seq).unwrap_or(0),
            incarnation: cur.as_ref().and_then(|m| m.header().incarnation),
            tokenizer: cur.as_ref().map(|m| m.header().tokenizer),
            words: cur.as_ref().map(|m| m.words()).unwrap_or(0),
            delta_words: cur
                .as_ref()
                .and_then(|m| m.delta.as_ref())
                .map_or(0, |d| d.header().words),
            base_seq: cur.as_ref().map_or(0, |m| m.base.header().seq),
            snapshot_age_ms: cur
                .as_ref()
                .map(|m| now_ms.saturating_sub(m.header().written_unix_ms)),
            mapped_bytes: cur.as_ref().map(|m| m.len()).unwrap_or(0),
            data_dir: s.config.data_dir.display().to_string(),
            socket: s.config.socket_path().display().to_string(),
            socket_connected: st.socket_connected,
            loads: st.loads,
            checks: st.checks,
            rejected_snapshots: st.rejected,
            last_rejection: st.last_rejection,
            tls: s.config.serving.tls.as_ref().map(|t| t.health()),
        };
        let code = if body.ready && body.problem.is_none() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body)
    }

    fn mapped(&self) -> Result<Arc<MappedState>, ApiError> {
        self.current().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no valid snapshot mapped yet; waiting for the leader to publish one",
            )
        })
    }
}

impl CountSource for LocalReplica {
    fn distinct_words(&self) -> u64 {
        self.current().map(|m| m.words()).unwrap_or(0)
    }

    fn collect(&self, m: &mut Series<'_>) {
        let cur = self.current();
        let h = cur.as_ref().map(|m| *m.header());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        m.gauge("memdb_ready", "1 once a snapshot is mapped.", cur.is_some());
        m.gauge(
            "memdb_files_held_bytes",
            "Bytes of mapped files the leader has replaced or removed since: disk the \
             mapping keeps until the next snapshot is mapped.",
            cur.as_ref()
                .map_or(0, |s| s.held_bytes(&self.shared.config.data_dir)),
        );
        m.gauge(
            "memdb_snapshot_age_seconds",
            "Age of the mapped snapshot (-1 if none).",
            h.map(|h| now_ms.saturating_sub(h.written_unix_ms) as f64 / 1e3)
                .unwrap_or(-1.0),
        );
        let st = self.shared.reader.status();
        m.counter(
            "memdb_rejected_snapshots_total",
            "Snapshot files that failed validation.",
            st.rejected,
        );
        m.counters(
            "memdb_snapshot_loads_total",
            "Snapshots mapped, by what announced them.",
            "source",
            [
                ("start".to_owned(), st.loads.start as f64),
                ("socket".to_owned(), st.loads.socket as f64),
                ("watch".to_owned(), st.loads.watch as f64),
                ("poll".to_owned(), st.loads.poll as f64),
                ("refresh".to_owned(), st.loads.refresh as f64),
            ],
        );
    }

    fn seq(&self) -> u64 {
        self.seq_now()
    }

    fn seq_watch(&self) -> watch::Receiver<u64> {
        self.shared.reader.seq_watch()
    }

    fn max_wait(&self) -> Duration {
        self.shared.config.max_wait
    }

    fn ready(&self) -> Result<(), ApiError> {
        self.mapped().map(|_| ())
    }

    fn want_seq(&self, seq: u64) {
        self.shared.reader.want(seq);
    }

    fn top_ranked(&self, q: &TopQuery<'_>) -> Result<Option<(Vec<u8>, u64)>, ApiError> {
        let m = self.mapped()?;
        let h = m.header();
        let (ranked, complete) = m.top();
        let words =
            crate::storage::top::from_ranked(ranked, complete, q.n, &q.prefix_for(h.tokenizer));
        Ok(words.map(|w| (crate::server::parse::top_body(&w), h.seq)))
    }

    /// Over the mapping, which no writer waits for.
    async fn top_scan(&self, q: TopQuery<'static>) -> Result<(Vec<u8>, u64), ApiError> {
        let m = self.mapped()?;
        tokio::task::spawn_blocking(move || {
            let h = m.header();
            let words = crate::storage::top::scanned(m.iter(), q.n, &q.prefix_for(h.tokenizer));
            (crate::server::parse::top_body(&words), h.seq)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let m = self.mapped()?;
        let h = m.header();
        let body = crate::server::parse::lookup_body(h.tokenizer, words, |w| m.get(w))?;
        Ok((body, h.seq))
    }

    async fn sync_body(&self) -> SyncBody {
        match self.current() {
            Some(m) => {
                let h = *m.header();
                let inc = h.incarnation;
                SyncBody::streamed(m, h.tokenizer, h.seq, inc)
            }
            // Not reached: /sync answers 503 before asking while nothing is mapped.
            None => SyncBody::of(&serde_json::Map::new(), 0, 0, None, Tokenizer::default()),
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
                                      socket's state and loads by source",
         body = LocalReplicaHealth),
        (status = 503, description = "No snapshot mapped yet, or it is stale: `problem` \
                                      says why (same body)", body = LocalReplicaHealth),
    )
)]
async fn health_handler(State(r): State<LocalReplica>) -> Response {
    let (code, body) = r.health();
    (code, axum::Json(body)).into_response()
}

/// The local replica's routes.
pub fn local_replica_router(replica: LocalReplica) -> Router {
    let cfg = &replica.shared.config;
    router::node_router(
        replica.clone(),
        "local replica",
        OpenApiRouter::new(),
        OpenApiRouter::new(),
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
    let serving = &replica.shared.config.serving;
    let (conns, tls) = (serving.connections(), serving.tls.clone());
    // The leader lists this replica under the URL it can reach it at on this host.
    let url = local_url(listener.local_addr()?, tls.is_some());
    replica
        .shared
        .reader
        .introduce(crate::protocol::PeerKind::LocalReplica, Some(url));
    let cancel = CancellationToken::new();
    let follower = replica.follow(&cancel)?;
    let served = crate::server::listen::serve(
        listener,
        local_replica_router(replica.clone()),
        shutdown,
        conns,
        tls,
    )
    .await;
    cancel.cancel();
    let _ = follower.await;
    served
}

/// `addr` as a URL on this host: a wildcard address is reached at loopback.
fn local_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", std::net::SocketAddr::new(ip, addr.port()))
}
