//! The network replica's status (`/health`, metrics, lookups), its routes and `run`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ReplicaConfig;
use crate::protocol::Incarnation;
use crate::server::error::ApiError;
use crate::server::metrics::Series;
use crate::server::parse::TopQuery;
use crate::server::router;
use crate::server::source::{CountSource, SyncBody};
use crate::words::Tokenizer;

use super::{Replica, ReplicaError};

/// The network replica's `GET /health`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReplicaHealth {
    /// `replica`.
    role: &'static str,
    pid: u32,
    /// `ok` once synced, `syncing` before, `failing` while something in `problems` is.
    status: &'static str,
    /// What is failing now, each with its reason.
    problems: Vec<String>,
    ready: bool,
    /// A full sync is under way.
    syncing: bool,
    seq: u64,
    /// The table's digest at `seq` (16 hex digits).
    digest: String,
    /// Distinct words.
    words: usize,
    /// Of those, the words held in memory: all after a JSON sync; after a binary
    /// bootstrap only the words pushes changed since (the rest are in the files).
    words_in_memory: usize,
    /// Bytes of the leader's files mapped from the data directory.
    mapped_bytes: usize,
    /// Times the leader's newer files were mapped under the words in memory (see
    /// `--rebase-words`).
    rebases: u64,
    /// The data directory.
    data_dir: String,
    #[schema(value_type = String)]
    tokenizer: Tokenizer,
    /// The leader's URL.
    leader: String,
    /// The incarnation of the leader whose history the data follows (16 hex digits).
    #[schema(value_type = Option<String>)]
    leader_incarnation: Option<Incarnation>,
    leader_reachable: bool,
    /// The URL the leader pushes to.
    advertise: String,
    updates_applied: u64,
    /// Pushes refused because they did not start at this replica's seq.
    gaps: u64,
    /// Pushes after which this table's digest differed from the leader's.
    digest_mismatches: u64,
    /// Pushes refused for claiming the leader's incarnation without its secret.
    forged_pushes_refused: u64,
    /// Full syncs from the leader.
    syncs: u64,
    /// Leader restarts followed without a full sync.
    continued_across_restarts: u64,
    last_sync_ms: Option<f64>,
    /// How the last full sync came: `files` (downloaded and mapped) or `json`.
    last_sync_kind: Option<&'static str>,
    /// Bytes the last bootstrap downloaded (files already in the data directory with
    /// the same checksum are not downloaded again).
    last_sync_downloaded_bytes: Option<u64>,
    last_sync_error: Option<String>,
    /// The certificate served, when the node serves TLS (null otherwise).
    tls: Option<crate::tls::server::TlsHealth>,
}

impl Replica {
    fn health(&self) -> (StatusCode, ReplicaHealth) {
        let s = &self.shared;
        let ready = self.is_ready();
        let (seq, words, inc, tok, digest, in_memory, mapped) = {
            let d = s.data.read();
            (
                d.table.seq(),
                d.table.len(),
                d.incarnation,
                d.tokenizer,
                d.table.digest(),
                d.table.in_memory(),
                d.table.mapped_bytes(),
            )
        };
        let st = s.stats.lock();
        let tls = s.config.serving.tls.as_ref().map(|t| t.health());
        let problems: Vec<String> = tls.as_ref().and_then(|t| t.problem()).into_iter().collect();
        let body = ReplicaHealth {
            role: "replica",
            pid: std::process::id(),
            status: match (ready, problems.is_empty()) {
                (false, _) => "syncing",
                (true, false) => "failing",
                (true, true) => "ok",
            },
            ready,
            syncing: s.syncing.load(Ordering::Acquire),
            seq,
            digest: format!("{digest:016x}"),
            words,
            words_in_memory: in_memory,
            mapped_bytes: mapped,
            rebases: s.rebases.load(Ordering::Relaxed),
            data_dir: s.dir.path().display().to_string(),
            tokenizer: tok,
            leader: self.leader_url().to_owned(),
            leader_incarnation: inc,
            leader_reachable: st.leader_reachable,
            advertise: s.advertise.clone(),
            updates_applied: s.updates.load(Ordering::Relaxed),
            gaps: s.gaps.load(Ordering::Relaxed),
            digest_mismatches: s.digest_mismatches.load(Ordering::Relaxed),
            forged_pushes_refused: s.forged_pushes.load(Ordering::Relaxed),
            syncs: st.syncs,
            continued_across_restarts: s.adoptions.load(Ordering::Relaxed),
            last_sync_ms: st.last_sync_ms,
            last_sync_kind: st.last_sync_kind,
            last_sync_downloaded_bytes: st.last_sync_downloaded,
            last_sync_error: st.last_sync_error.clone(),
            tls,
            problems,
        };
        let code = if ready && body.problems.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body)
    }
}

impl CountSource for Replica {
    fn distinct_words(&self) -> u64 {
        self.shared.data.read().table.len() as u64
    }

    fn collect(&self, m: &mut Series<'_>) {
        let s = &self.shared;
        let syncs = s.stats.lock().syncs;
        let (in_memory, mapped, held) = {
            let d = s.data.read();
            (
                d.table.in_memory(),
                d.table.mapped_bytes(),
                d.table.held_bytes(s.dir.path()),
            )
        };
        m.gauge(
            "memdb_ready",
            "1 once the replica has synced.",
            self.is_ready(),
        );
        m.counter(
            "memdb_updates_applied_total",
            "Pushed batches applied.",
            s.updates.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_update_gaps_total",
            "Pushes refused because they did not start at the replica's seq.",
            s.gaps.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_digest_mismatches_total",
            "Pushes after which the replica's table digest differed from the leader's.",
            s.digest_mismatches.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_forged_pushes_total",
            "Pushes refused for claiming the leader's incarnation without its secret.",
            s.forged_pushes.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_full_syncs_total",
            "Full syncs from the leader.",
            syncs,
        );
        m.gauge(
            "memdb_words_in_memory",
            "Words held in memory (the rest are in the mapped files).",
            in_memory as u64,
        );
        m.counter(
            "memdb_rebases_total",
            "Times the leader's newer files were mapped under the words in memory.",
            s.rebases.load(Ordering::Relaxed),
        );
        m.gauge(
            "memdb_mapped_bytes",
            "Bytes of the leader's files mapped from the data directory.",
            mapped as u64,
        );
        m.gauge(
            "memdb_files_held_bytes",
            "Bytes of mapped files the data directory no longer names (removed or \
             replaced): disk the mapping keeps until the next rebase or sync drops it.",
            held,
        );
    }

    fn seq(&self) -> u64 {
        self.shared.data.read().table.seq()
    }

    fn seq_watch(&self) -> watch::Receiver<u64> {
        self.shared.seq_tx.subscribe()
    }

    fn max_wait(&self) -> Duration {
        self.shared.config.max_wait
    }

    fn ready(&self) -> Result<(), ApiError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica has not synced from its leader yet",
            ))
        }
    }

    fn top_ranked(&self, q: &TopQuery<'_>) -> Result<Option<(Vec<u8>, u64)>, ApiError> {
        let d = self.shared.data.read();
        let prefix = q.prefix_for(d.tokenizer);
        let body = d
            .table
            .with_ranked_words(q.n, &prefix, crate::server::parse::top_body);
        Ok(body.map(|b| (b, d.table.seq())))
    }

    /// Under the table's read lock (a network replica keeps no other view of it):
    /// pushes wait while it runs, and `--max-scans` bounds how many run.
    async fn top_scan(&self, q: TopQuery<'static>) -> Result<(Vec<u8>, u64), ApiError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let d = me.shared.data.read();
            let prefix = q.prefix_for(d.tokenizer);
            let body = d
                .table
                .with_top_words(q.n, &prefix, crate::server::parse::top_body);
            (body, d.table.seq())
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let d = self.shared.data.read();
        let body = crate::server::parse::lookup_body(d.tokenizer, words, |w| d.table.get(w))?;
        Ok((body, d.table.seq()))
    }

    async fn sync_body(&self) -> SyncBody {
        let d = self.shared.data.read();
        d.table.sync_body(d.incarnation, d.tokenizer)
    }
}

#[utoipa::path(
    post,
    path = "/update",
    tag = "replication",
    summary = "Apply a batch of deltas (leader → replica)",
    description = "With x-memdb-from-seq, x-memdb-to-seq and x-memdb-incarnation the batch \
                   applies only at from-seq (a duplicate is acknowledged, a gap answers 409). \
                   Without them it is applied as the Go original did, which forks the \
                   replica from its leader until the next full sync.",
    params(
        ("x-memdb-from-seq" = Option<u64>, Header, description = "The seq the replica must be at"),
        ("x-memdb-to-seq" = Option<u64>, Header, description = "The seq it is at afterwards"),
        ("x-memdb-incarnation" = Option<String>, Header, description = "The leader history (16 hex digits)"),
        ("x-memdb-resync" = Option<String>, Header, description = "Present: full-sync from the leader now"),
        ("x-memdb-digest" = Option<String>, Header, description = "The leader's table digest \
          at to-seq (16 hex digits); a replica whose digest then differs re-syncs"),
        ("x-memdb-push-secret" = Option<String>, Header, description = "The secret of the \
          leader's incarnation, handed to the replica when it registers; required once the \
          replica knows it"),
    ),
    request_body(content = inline(crate::server::openapi::WordCounts), description = "Deltas by word",
                 content_type = "application/json"),
    responses(
        (status = 200, description = "Applied, or a duplicate acknowledged; the replica's seq",
         body = Object),
        (status = 202, description = "Re-sync requested", body = Object),
        (status = 400, description = "Malformed deltas or headers, or a count that would go \
                                      negative or overflow",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 403, description = "Claims the leader's incarnation without its push secret",
         body = crate::server::openapi::ErrorBody),
        (status = 409, description = "A gap, another incarnation, or a digest that differs \
                                      after applying (the replica re-syncs); carries the \
                                      replica's seq",
         body = crate::server::openapi::ErrorBody),
        (status = 413, description = "Larger than --max-body", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not synced yet", body = crate::server::openapi::ErrorBody),
    )
)]
async fn update_handler(
    State(replica): State<Replica>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    replica.apply_update(&headers, &body)
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Readiness and replication status",
    responses(
        (status = 200, description = "Synced: seq, leader, incarnation, lag", body = ReplicaHealth),
        (status = 503, description = "Not synced yet (same body)", body = ReplicaHealth),
    )
)]
async fn health_handler(State(replica): State<Replica>) -> Response {
    let (code, body) = replica.health();
    (code, axum::Json(body)).into_response()
}

/// The replica's routes.
pub fn replica_router(replica: Replica) -> Router {
    let cfg = &replica.shared.config;
    // The leader's pushes: a route mutual TLS guards.
    let peers = OpenApiRouter::new().routes(routes!(update_handler));
    router::node_router(
        replica.clone(),
        "replica",
        OpenApiRouter::new(),
        peers,
        routes!(health_handler),
        &cfg.serving,
        Some(cfg.max_body),
    )
}

/// Runs a replica on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: ReplicaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ReplicaError> {
    let addr = listener.local_addr().map_err(ReplicaError::Serve)?;
    let advertise = match &config.advertise {
        Some(a) => a.trim_end_matches('/').to_owned(),
        None if addr.ip().is_unspecified() => return Err(ReplicaError::NeedAdvertise(addr)),
        None if config.serving.tls.is_some() => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let replica = Replica::new(config, advertise)?;
    let cancel = CancellationToken::new();
    let control = replica.follow(&cancel);
    let serving = &replica.shared.config.serving;
    let (conns, tls) = (serving.connections(), serving.tls.clone());
    let served =
        crate::server::listen::serve(listener, replica_router(replica), shutdown, conns, tls).await;
    cancel.cancel();
    let _ = control.await;
    served.map_err(ReplicaError::Serve)
}
