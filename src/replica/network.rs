//! A network replica: full-syncs from the leader, then applies the batches it pushes,
//! strictly in seq order, and serves reads.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use crate::config::ReplicaConfig;
use crate::protocol::DIGEST;
use crate::protocol::FROM_SEQ;
use crate::protocol::INCARNATION;
use crate::protocol::PUSH_SECRET;
use crate::protocol::RESYNC;
use crate::protocol::TO_SEQ;
use crate::server::error::ApiError;
use crate::server::router::{self, CountSource};
use crate::storage::table::Table;
use crate::words::Tokenizer;

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
}

/// A cheap-clone handle to a replica's state.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
}

/// The table and what it belongs to; they change together.
struct Data {
    table: Table,
    /// The incarnation of the leader whose history `table` follows; 0 for none.
    incarnation: u64,
    tokenizer: Tokenizer,
}

#[derive(Default)]
struct Stats {
    syncs: u64,
    last_sync_error: Option<String>,
    last_sync_ms: Option<f64>,
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
    wake: Notify,
    updates: AtomicU64,
    gaps: AtomicU64,
    /// Leader restarts followed without a full sync.
    adoptions: AtomicU64,
    /// The leader's incarnation and push secret, as its registration reply gave them.
    leader_secret: Mutex<Option<(u64, String)>>,
    /// Pushes refused for claiming the leader's incarnation without its secret.
    forged_pushes: AtomicU64,
    /// Pushes after which this replica's digest differed from the leader's.
    digest_mismatches: AtomicU64,
    stats: Mutex<Stats>,
    leader: Client,
    advertise: String,
    config: ReplicaConfig,
}

impl Replica {
    pub fn new(config: ReplicaConfig, advertise: String) -> Self {
        Replica {
            shared: Arc::new(Shared {
                data: RwLock::new(Data {
                    table: Table::new(),
                    incarnation: 0,
                    tokenizer: Tokenizer::default(),
                }),
                seq_tx: watch::Sender::new(0),
                ready: AtomicBool::new(false),
                syncing: AtomicBool::new(false),
                resync_requested: AtomicBool::new(false),
                wake: Notify::new(),
                updates: AtomicU64::new(0),
                gaps: AtomicU64::new(0),
                adoptions: AtomicU64::new(0),
                leader_secret: Mutex::new(None),
                forged_pushes: AtomicU64::new(0),
                digest_mismatches: AtomicU64::new(0),
                stats: Mutex::new(Stats::default()),
                leader: Client::new(&config.leader).with_token(config.serving.auth_token.clone()),
                advertise,
                config,
            }),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    fn request_resync(&self) {
        self.shared.resync_requested.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    fn set_seq(&self, seq: u64) {
        self.shared.seq_tx.send_replace(seq);
    }

    /// Replaces the table with the leader's whole table.
    async fn full_sync(&self) -> Result<(), ClientError> {
        let s = &self.shared;
        s.syncing.store(true, Ordering::Release);
        let started = Instant::now();
        let result = s.leader.sync().await;
        let mut stats = s.stats.lock();
        let out = match result {
            Ok(reply) => {
                let words = reply.map.len();
                {
                    let mut d = s.data.write();
                    d.table.replace(reply.map, reply.seq);
                    d.incarnation = reply.incarnation;
                    d.tokenizer = reply.tokenizer;
                }
                self.set_seq(reply.seq);
                s.ready.store(true, Ordering::Release);
                let ms = started.elapsed().as_secs_f64() * 1e3;
                stats.syncs += 1;
                stats.last_sync_ms = Some(ms);
                stats.last_sync_error = None;
                tracing::info!(seq = reply.seq, words, ms, incarnation = %crate::protocol::incarnation_string(reply.incarnation), "full sync done");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "full sync failed; retrying");
                stats.last_sync_error = Some(e.to_string());
                Err(e)
            }
        };
        s.syncing.store(false, Ordering::Release);
        out
    }

    /// Registers with the leader on every heartbeat (idempotent) and full-syncs when
    /// this replica has no data yet, the leader's incarnation changed, or the leader
    /// asked for it.
    async fn control(self, cancel: CancellationToken) {
        let s = &self.shared;
        let mut retry = Backoff::new(RETRY_START, RETRY_MAX);
        loop {
            let at = {
                let d = s.data.read();
                (self.is_ready() && d.incarnation != 0).then(|| (d.table.seq(), d.incarnation))
            };
            let healthy = match s.leader.register(&s.advertise, at).await {
                Ok(reply) => {
                    {
                        let mut st = s.stats.lock();
                        if !st.leader_reachable {
                            tracing::info!(leader = %s.leader.base(), seq = reply.seq, "leader reachable");
                        }
                        st.leader_reachable = true;
                        st.last_heartbeat = Some(Instant::now());
                    }
                    let leader_inc =
                        crate::protocol::parse_incarnation(&reply.incarnation).unwrap_or(0);
                    if let Some(secret) = &reply.push_secret {
                        *s.leader_secret.lock() = Some((leader_inc, secret.clone()));
                    }
                    let ours = s.data.read().incarnation;
                    let asked = s.resync_requested.swap(false, Ordering::AcqRel);
                    if let Some((seq, inc)) = at
                        && !asked
                        && leader_inc != ours
                        && reply.continues
                        && self.adopt(inc, seq, leader_inc)
                    {
                        tracing::info!(seq, leader_incarnation = %reply.incarnation, "leader restarted; our data continues its history: catching up without a full sync");
                        // Register again now, reporting the seq in the new incarnation, so
                        // the leader resumes pushing at once.
                        continue;
                    } else if !self.is_ready() || leader_inc != ours || asked {
                        if ours != 0 && leader_inc != ours {
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
                    false
                }
            };
            let wait = if healthy {
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
    fn adopt(&self, from: u64, seq: u64, to: u64) -> bool {
        let mut d = self.shared.data.write();
        if d.incarnation != from || d.table.seq() != seq {
            return false;
        }
        d.incarnation = to;
        self.shared.adoptions.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn health(&self) -> (StatusCode, Value) {
        let s = &self.shared;
        let ready = self.is_ready();
        let (seq, words, inc, tok, digest) = {
            let d = s.data.read();
            (
                d.table.seq(),
                d.table.len(),
                d.incarnation,
                d.tokenizer,
                d.table.digest(),
            )
        };
        let st = s.stats.lock();
        let body = json!({
            "role": "replica",
            "pid": std::process::id(),
            "status": if ready { "ok" } else { "syncing" },
            "ready": ready,
            "syncing": s.syncing.load(Ordering::Acquire),
            "seq": seq,
            "digest": format!("{digest:016x}"),
            "words": words,
            "tokenizer": tok,
            "leader": s.leader.base(),
            "leader_incarnation": crate::protocol::incarnation_string(inc),
            "leader_reachable": st.leader_reachable,
            "advertise": s.advertise,
            "updates_applied": s.updates.load(Ordering::Relaxed),
            "gaps": s.gaps.load(Ordering::Relaxed),
            "digest_mismatches": s.digest_mismatches.load(Ordering::Relaxed),
            "forged_pushes_refused": s.forged_pushes.load(Ordering::Relaxed),
            "syncs": st.syncs,
            "continued_across_restarts": s.adoptions.load(Ordering::Relaxed),
            "last_sync_ms": st.last_sync_ms,
            "last_sync_error": st.last_sync_error,
        });
        let code = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body)
    }

    /// Applies a pushed batch. See the module docs of `replication` for the protocol.
    fn apply_update(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
        let s = &self.shared;
        let inc = match crate::server::parse::header_str(headers, &INCARNATION) {
            None => None,
            Some(v) => Some(crate::protocol::parse_incarnation(v).ok_or_else(|| {
                ApiError::bad_request("header x-memdb-incarnation must be 16 hex digits")
            })?),
        };
        // A push that claims the incarnation we know the secret of must carry it.
        let known = s.leader_secret.lock().clone();
        if let Some((ki, secret)) = &known
            && inc == Some(*ki)
            && !crate::server::parse::header_str(headers, &PUSH_SECRET)
                .is_some_and(|p| crate::server::auth::secrets_match(p, secret))
        {
            s.forged_pushes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("refused a push without the leader's secret");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this push was not sent by the replica's leader: x-memdb-push-secret is \
                 missing or wrong",
            )
            .with("reason", "secret"));
        }
        let digest = match crate::server::parse::header_str(headers, &DIGEST) {
            None => None,
            Some(v) => Some(
                (v.len() == 16)
                    .then(|| u64::from_str_radix(v, 16).ok())
                    .flatten()
                    .ok_or_else(|| {
                        ApiError::bad_request("header x-memdb-digest must be 16 hex digits")
                    })?,
            ),
        };
        if headers.contains_key(RESYNC) {
            match (&known, inc) {
                // From our leader (its secret was checked above), or we know none yet.
                (Some((ki, _)), Some(i)) if i == *ki => self.request_resync(),
                (None, _) => self.request_resync(),
                // Another incarnation, or none: ask the leader rather than obey.
                _ => s.wake.notify_one(),
            }
            let seq = s.data.read().table.seq();
            return Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"seq": seq, "resyncing": true})),
            )
                .into_response());
        }
        let from = crate::server::parse::header_u64(headers, &FROM_SEQ)?;
        let to = crate::server::parse::header_u64(headers, &TO_SEQ)?;
        let deltas = parse_deltas(body)?;
        let (from, to, inc) = match (from, to, inc) {
            (Some(f), Some(t), Some(i)) if f <= t => (f, t, i),
            (Some(_), Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "x-memdb-from-seq is greater than x-memdb-to-seq",
                ));
            }
            (None, None, None) => return self.apply_unsequenced(&deltas),
            _ => {
                return Err(ApiError::bad_request(
                    "x-memdb-from-seq, x-memdb-to-seq and x-memdb-incarnation go together",
                ));
            }
        };
        if !self.is_ready() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica has not synced yet",
            )
            .with("seq", 0));
        }
        let mut d = s.data.write();
        let seq = d.table.seq();
        if d.incarnation != inc {
            drop(d);
            // Ask the leader at once whether our data continues its history (then we
            // adopt its incarnation) or not (then we full-sync).
            s.wake.notify_one();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "batch is from another leader incarnation; checking with the leader",
            )
            .with("reason", "incarnation")
            .with("seq", seq));
        }
        if seq >= to {
            // At exactly `to`, the digests must agree: a push forged at our seq makes
            // the leader's real batch look like a duplicate, and this is where it shows.
            if seq == to
                && let Some(want) = digest
                && want != d.table.digest()
            {
                let got = d.table.digest();
                drop(d);
                return Err(self.diverged(seq, want, got));
            }
            return Ok(axum::Json(json!({"seq": seq, "duplicate": true})).into_response());
        }
        if seq != from {
            drop(d);
            s.gaps.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("batch starts at seq {from} but this replica is at {seq}"),
            )
            .with("reason", "gap")
            .with("seq", seq));
        }
        if let Err(e) = d.table.apply_signed(&deltas) {
            drop(d);
            // The leader only sends what it applied: our state cannot be trusted.
            self.request_resync();
            return Err(ApiError::bad_request(e.to_string()).with("seq", seq));
        }
        d.table.set_seq(to);
        let got = d.table.digest();
        drop(d);
        self.set_seq(to);
        s.updates.fetch_add(1, Ordering::Relaxed);
        if let Some(want) = digest
            && want != got
        {
            return Err(self.diverged(to, want, got));
        }
        Ok(axum::Json(json!({"seq": to})).into_response())
    }

    /// Our table does not match the leader's at `seq`: count it, full-sync, and answer
    /// so the leader waits for the sync.
    fn diverged(&self, seq: u64, want: u64, got: u64) -> ApiError {
        self.shared
            .digest_mismatches
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            seq,
            leader = format!("{want:016x}"),
            ours = format!("{got:016x}"),
            "our table's digest differs from the leader's at the same seq: re-syncing"
        );
        self.request_resync();
        ApiError::new(
            StatusCode::CONFLICT,
            format!("table digest differs from the leader's at seq {seq}: re-syncing"),
        )
        .with("reason", "digest")
        .with("seq", seq)
    }

    /// The Go original's `/update`: deltas without seq headers. Applied as a write of
    /// its own; this replica's history then no longer matches any leader's, so the next
    /// push from a memdb leader makes it re-sync (which undoes this write).
    fn apply_unsequenced(&self, deltas: &[(String, i64)]) -> Result<Response, ApiError> {
        let s = &self.shared;
        if !self.is_ready() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica has not synced yet",
            ));
        }
        let mut d = s.data.write();
        d.table
            .apply_signed(deltas)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let seq = d.table.seq() + 1;
        d.table.set_seq(seq);
        d.incarnation = 0;
        drop(d);
        self.set_seq(seq);
        tracing::warn!(
            seq,
            "applied an unsequenced /update: this replica now diverges from its leader until the next re-sync"
        );
        Ok(axum::Json(json!({"seq": seq})).into_response())
    }
}

fn parse_deltas(body: &[u8]) -> Result<Vec<(String, i64)>, ApiError> {
    let map: std::collections::HashMap<String, i64> =
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "expected a JSON object of word deltas like {{\"hello\": 5}}: {e}"
            ))
        })?;
    Ok(map.into_iter().collect())
}

impl CountSource for Replica {
    fn distinct_words(&self) -> u64 {
        self.shared.data.read().table.len() as u64
    }

    fn write_metrics(&self, out: &mut String) {
        use crate::server::metrics::write_metric;
        let s = &self.shared;
        let syncs = s.stats.lock().syncs;
        write_metric(
            out,
            "memdb_ready",
            "gauge",
            "1 once the replica has synced.",
            self.is_ready() as u8 as f64,
        );
        write_metric(
            out,
            "memdb_updates_applied_total",
            "counter",
            "Pushed batches applied.",
            s.updates.load(Ordering::Relaxed) as f64,
        );
        write_metric(
            out,
            "memdb_update_gaps_total",
            "counter",
            "Pushes refused because they did not start at the replica's seq.",
            s.gaps.load(Ordering::Relaxed) as f64,
        );
        write_metric(
            out,
            "memdb_digest_mismatches_total",
            "counter",
            "Pushes after which the replica's table digest differed from the leader's.",
            s.digest_mismatches.load(Ordering::Relaxed) as f64,
        );
        write_metric(
            out,
            "memdb_forged_pushes_total",
            "counter",
            "Pushes refused for claiming the leader's incarnation without its secret.",
            s.forged_pushes.load(Ordering::Relaxed) as f64,
        );
        write_metric(
            out,
            "memdb_full_syncs_total",
            "counter",
            "Full syncs from the leader.",
            syncs as f64,
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

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let d = self.shared.data.read();
        let body = crate::server::parse::lookup_body(d.tokenizer, words, |w| d.table.get(w))?;
        Ok((body, d.table.seq()))
    }

    fn sync_json(&self) -> (Vec<u8>, u64, u64, Tokenizer) {
        let d = self.shared.data.read();
        let mut body = Vec::with_capacity(d.table.len() * 16 + 2);
        serde_json::to_writer(&mut body, d.table.map()).expect("serialising to a Vec cannot fail");
        (body, d.table.seq(), d.incarnation, d.tokenizer)
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
        (status = 200, description = "Synced: seq, leader, incarnation, lag", body = Object),
        (status = 503, description = "Not synced yet (same body)", body = Object),
    )
)]
async fn health_handler(State(replica): State<Replica>) -> Response {
    let (code, body) = replica.health();
    (code, axum::Json(body)).into_response()
}

/// The replica's routes.
pub fn replica_router(replica: Replica) -> Router {
    let cfg = &replica.shared.config;
    let guarded = OpenApiRouter::new()
        .routes(crate::server::openapi::documented::<
            router::__path_sync,
            _,
            _,
            _,
        >(router::sync::<Replica>))
        .routes(routes!(update_handler));
    router::node_router(
        replica.clone(),
        "replica",
        guarded,
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
        None => format!("http://{addr}"),
    };
    let replica = Replica::new(config, advertise);
    let cancel = CancellationToken::new();
    let control = tokio::spawn(replica.clone().control(cancel.clone()));
    let conns = replica.shared.config.serving.limits.connections;
    let served =
        crate::server::listen::serve(listener, replica_router(replica), shutdown, conns).await;
    cancel.cancel();
    let _ = control.await;
    served.map_err(ReplicaError::Serve)
}
