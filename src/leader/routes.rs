//! The leader's HTTP routes, each with its OpenAPI annotation, its router, and `run`.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::LeaderConfig;
use crate::leader::replication::ReplicaUrlError;
use crate::protocol::SEQ;
use crate::server::deadline::{Deadline, remaining};
use crate::server::error::{ApiError, Applied};
use crate::server::router::{self, CountSource};
use crate::storage::log::FsyncPolicy;

use super::{IngestError, Ingested, Leader, LeaderError};

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
        (status = 307, description = "A raft follower: post to the leader (`Location`, and \
                                      `leader_url` in the body); nothing counted",
         body = crate::server::openapi::ErrorBody),
        (status = 409, description = "A raft group: this Idempotency-Key was used longer ago \
                                      than the group remembers keys; not counted again",
         body = crate::server::openapi::ErrorBody),
        (status = 422, description = "A raft group: this Idempotency-Key was used for other \
                                      words; nothing counted",
         body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Every refusal says `applied`: `no`, `yes` (with its \
                                      `seq`) or `unknown`. With --fsync always: applied in \
                                      memory but not durable in time; overloaded; a raft \
                                      group without a leader, or a write not committed in \
                                      time (outcome unknown: retry with the same key)",
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
    deadline: Option<axum::Extension<Deadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let deadline = deadline.map(|d| d.0);
    let body = body.map_err(|e| ApiError::from(e).applied(Applied::No))?;
    let text =
        crate::server::parse::post_text(&headers, &body).map_err(|e| e.applied(Applied::No))?;
    if let Some(c) = leader.consensus() {
        return post_to_group(&leader, c, deadline, &headers, &text).await;
    }
    let ingested = leader.ingest(&text).map_err(|e| match e {
        IngestError::LogFailed(_) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            .with("reason", "log_failed")
            .with("retry_after", 1)
            .applied(Applied::No),
    })?;
    let cfg = &leader.shared.config;
    let applied = |status, why: String| {
        ApiError::new(status, why)
            .with("seq", ingested.seq)
            .with("words", ingested.words)
            .applied(Applied::Yes)
    };
    if cfg.wal.fsync == FsyncPolicy::Always
        && ingested.words > 0
        && let Some(wal) = &leader.shared.wal
    {
        let durable = remaining(deadline, wal.wait_durable(ingested.seq)).await;
        let why = match durable {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(format!("not made durable: {e}")),
            None => Some("not yet durable within the node's --request-timeout".to_string()),
        };
        if let Some(why) = why {
            return Err(applied(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "write applied in memory as seq {} but {why}; it is kept and written \
                     when the log recovers (it was counted: do not send it again)",
                    ingested.seq
                ),
            )
            .with("reason", "log_failed"));
        }
    }
    if cfg.min_acks > 0 && ingested.words > 0 {
        let acks = leader
            .shared
            .replicas
            .wait_acks(ingested.seq, cfg.min_acks, cfg.ack_timeout);
        let confirmed = match remaining(deadline, acks).await {
            Some(Ok(())) => None,
            Some(Err(confirmed)) => Some(confirmed),
            // The request's own deadline came first: count what is confirmed now.
            None => Some(leader.shared.replicas.count_acked(ingested.seq)),
        };
        if let Some(confirmed) = confirmed {
            return Err(applied(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "write applied on the leader as seq {} but confirmed by only {confirmed} \
                     of the {} replicas --min-acks requires in time (it was counted: do not \
                     send it again)",
                    ingested.seq, cfg.min_acks
                ),
            )
            .with("confirmed", confirmed));
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        [(SEQ, crate::protocol::seq_value(ingested.seq))],
        axum::Json(ingested),
    )
        .into_response())
}

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header's value, if sent: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut all = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::bad_request(
            "Idempotency-Key is given more than once: send one key per write",
        ));
    }
    let ok = (1..=255).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(v.to_str().expect("ASCII").to_owned()))
}

/// `POST /post` on a voter of a raft group: proposes the batch, and answers once it is
/// committed on a majority and applied here; a follower redirects to the leader.
async fn post_to_group(
    leader: &Leader,
    c: &crate::consensus::Consensus,
    deadline: Option<Deadline>,
    headers: &HeaderMap,
    text: &str,
) -> Result<Response, ApiError> {
    use crate::consensus::{Outcome, Proposal, WriteError};
    let key = idempotency_key(headers).map_err(|e| e.applied(Applied::No))?;
    let (deltas, words) = leader.shared.config.tokenizer.count(text);
    // A keyed post without words is still proposed: its key is kept (and a later use
    // of it for other words refused), though it takes no seq.
    if words == 0 && key.is_none() {
        let seq = leader.seq();
        return Ok((
            StatusCode::ACCEPTED,
            [(SEQ, crate::protocol::seq_value(seq))],
            axum::Json(json!({ "seq": seq, "words": 0 })),
        )
            .into_response());
    }
    // A raft log that cannot be written (a full disk) refuses at once, before the
    // batch is proposed: it is not in the log, on this node or any other.
    if let Some(e) = c.log.failure() {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the raft log cannot be written ({e}); writes are refused until it can \
                 (this one was not counted)"
            ),
        )
        .with("reason", "log_failed")
        .with("retry_after", 1)
        .applied(Applied::No));
    }
    let applied = remaining(deadline, c.write(Proposal::new(deltas, key)))
        .await
        .unwrap_or(Err(WriteError::Timeout));
    let applied = match applied {
        Ok(a) => a,
        Err(WriteError::NotLeader(Some((id, url)))) => {
            let location = format!("{}/post", url.trim_end_matches('/'));
            let body = ApiError::new(
                StatusCode::TEMPORARY_REDIRECT,
                format!("node {id} leads the group: post to {location}"),
            )
            .with("leader_id", id)
            .with("leader_url", url);
            let mut resp = body.applied(Applied::No).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(axum::http::header::LOCATION, v);
            }
            return Ok(resp);
        }
        Err(WriteError::NotLeader(None)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the group cannot take writes now (no leader is elected); nothing was counted",
            )
            .with("reason", "no_leader")
            .with("retry_after", 1)
            .applied(Applied::No));
        }
        // The engine failed with the proposal in hand (a log it cannot write, a stop):
        // it may have reached the log, and other voters, first.
        Err(WriteError::Unavailable(why)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the group cannot take writes now ({why}); whether this write was \
                     counted is unknown: retry with the same Idempotency-Key"
                ),
            )
            .with("reason", "unavailable")
            .with("retry_after", 1)
            .applied(Applied::Unknown));
        }
        Err(WriteError::Timeout) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not committed in time (--write-timeout or --request-timeout): the outcome \
                 is unknown; retry with the same Idempotency-Key to have it counted exactly \
                 once",
            )
            .with("reason", "not_committed")
            .with("retry_after", 1)
            .applied(Applied::Unknown));
        }
    };
    match applied.outcome {
        Outcome::KeyReused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for a write of other words; nothing was counted",
        )
        .with("seq", applied.seq)
        .applied(Applied::No)),
        Outcome::KeyExpired => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this Idempotency-Key was used longer ago than the group remembers keys \
                 (--idempotency-window {:?}, --idempotency-max-bytes): its write was \
                 counted then, and this one is not counted; use a new key for a new write",
                c.config.key_window
            ),
        )
        .applied(Applied::No)),
        outcome => {
            let duplicate = outcome == Outcome::Duplicate;
            Ok((
                StatusCode::ACCEPTED,
                [(SEQ, crate::protocol::seq_value(applied.seq))],
                axum::Json(json!({
                    "seq": applied.seq,
                    "words": words,
                    "duplicate": duplicate,
                })),
            )
                .into_response())
        }
    }
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness and replication status",
    responses(
        (status = 200, description = "The leader's seq, its replicas (acked seq, lag, \
                                      last error), snapshot and log statistics",
         body = super::status::LeaderHealth),
        (status = 503, description = "Something is failing (the write-ahead log, a log \
                                      segment roll, the snapshot): `problems` says what; \
                                      same body",
         body = super::status::LeaderHealth),
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
    let at = reg
        .seq
        .zip(reg.incarnation.as_deref().and_then(|s| s.parse().ok()));
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
        "incarnation": leader.shared.incarnation,
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
    // A voter takes raft RPCs far larger than a client's text (a batch of entries, a
    // snapshot chunk): the node's limit is theirs, and --max-body stays the limit of
    // every route a client calls.
    let max_body = if cfg.raft.is_some() {
        cfg.max_body.max(crate::consensus::MAX_RPC_BODY)
    } else {
        cfg.max_body
    };
    let writes = OpenApiRouter::new()
        .routes(routes!(post_handler))
        .layer(axum::extract::DefaultBodyLimit::max(cfg.max_body));
    let mut clients = OpenApiRouter::new().routes(routes!(
        register_handler,
        list_replicas_handler,
        unregister_handler
    ));
    let mut rpcs = OpenApiRouter::new();
    if cfg.raft.is_some() {
        use crate::consensus::routes as raft;
        clients = clients
            .routes(routes!(raft::init))
            .routes(routes!(raft::add_learner))
            .routes(routes!(raft::membership))
            .routes(routes!(raft::addresses));
        rpcs = rpcs
            .routes(routes!(raft::append))
            .routes(routes!(raft::vote))
            .routes(routes!(raft::snapshot));
    }
    // Replication (registration), membership and the raft RPCs: the routes mutual TLS
    // guards.
    let peers = clients
        .layer(axum::extract::DefaultBodyLimit::max(cfg.max_body))
        .merge(rpcs);
    router::node_router(
        leader.clone(),
        "leader",
        writes,
        peers,
        routes!(health_handler),
        &cfg.serving,
        Some(max_body),
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
    let serving = &leader.shared.config.serving;
    let (conns, tls) = (serving.connections(), serving.tls.clone());
    let served = crate::server::listen::serve(listener, app, shutdown, conns, tls)
        .await
        .map_err(LeaderError::Serve);
    let stopped = leader.shutdown().await;
    served?;
    stopped.map(|_| ()).map_err(LeaderError::from)
}
