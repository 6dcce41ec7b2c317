//! The leader's HTTP routes, each with its OpenAPI annotation, its router (which
//! merges a voter's raft routes from [`crate::consensus::routes`]), and `run`.

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

use super::error::{IngestError, LeaderError};
use super::node::{Ingested, Leader};
use super::replication::ReplicaUrlError;
use crate::config::LeaderConfig;
use crate::protocol::SEQ;
use crate::server::deadline::{Deadline, remaining};
use crate::server::error::{ApiError, Applied};
use crate::server::router;

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
        (inline(crate::server::parse::PostForm) = "application/x-www-form-urlencoded"),
        (String = "text/plain"),
        (inline(crate::server::parse::PostJson) = "application/json"),
    )),
    responses(
        (status = 202, description = "Counted", body = Ingested,
         headers(("x-memdb-seq" = u64, description = "The batch's seq"))),
        (status = 400, description = "No text, empty text or a malformed body",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 413, description = "Larger than --max-body", body = crate::server::openapi::ErrorBody),
        (status = 415, description = "Unsupported content type", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Every refusal says `applied`: `no`, `yes` (with its \
                                      `seq`) or `unknown`. With --fsync always: applied in \
                                      memory but not durable in time; overloaded",
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
    let text = crate::server::parse::post_request(&headers, body)?;
    let ingested = leader.ingest(&text).map_err(|e| match e {
        IngestError::LogFailed(_) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            .with("reason", "log_failed")
            .with("retry_after", 1)
            .applied(Applied::No),
    })?;
    let cfg = leader.config();
    let applied = |status, why: String| {
        ApiError::new(status, why)
            .with("seq", ingested.seq)
            .with("words", ingested.words)
            .applied(Applied::Yes)
    };
    if ingested.words > 0 {
        let durable = remaining(deadline, leader.wait_durable(ingested.seq)).await;
        let why = match durable {
            Some(None | Some(Ok(_))) => None,
            Some(Some(Err(e))) => Some(format!("not made durable: {e}")),
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
            .replicas()
            .wait_acks(ingested.seq, cfg.min_acks, cfg.ack_timeout);
        let confirmed = match remaining(deadline, acks).await {
            Some(Ok(())) => None,
            Some(Err(confirmed)) => Some(confirmed),
            // The request's own deadline came first: count what is confirmed now.
            None => Some(leader.replicas().count_acked(ingested.seq)),
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
                                      origin (no user, path, query or fragment), or an \
                                      incarnation that is not 16 hex digits (not zero)",
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
    let incarnation = reg
        .incarnation
        .as_deref()
        .map(str::parse::<crate::protocol::Incarnation>)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("field incarnation: {e}")))?;
    let at = reg.seq.zip(incarnation);
    let registered = leader.register_replica(&reg.url, at).map_err(|e| match e {
        ReplicaUrlError::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            .with("reason", "max_replicas"),
        other => ApiError::bad_request(other.to_string()),
    })?;
    Ok(axum::Json(registered).into_response())
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
    axum::Json(json!({ "replicas": leader.replicas().reports() })).into_response()
}

/// The JSON body of a `/replicas` call, which names a replica by `url`.
fn url_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    crate::server::parse::json_body(&body?).map_err(|e| {
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
    if !leader.replicas().remove(&un.url) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no replica {:?}", un.url),
        ));
    }
    Ok(axum::Json(json!({ "removed": un.url })).into_response())
}

/// The leader's routes; a voter's `POST /post` and raft routes are its engine's.
pub fn leader_router(leader: Leader) -> Router {
    let cfg = leader.config();
    let replication = OpenApiRouter::new()
        .routes(routes!(
            register_handler,
            list_replicas_handler,
            unregister_handler
        ))
        .layer(axum::extract::DefaultBodyLimit::max(cfg.max_body));
    // Replication (registration), membership and the raft RPCs are the routes mutual
    // TLS guards. A voter takes raft RPCs far larger than a client's text: the node's
    // limit is theirs, and --max-body stays the limit of every route a client calls.
    let (writes, peers, max_body) = match leader.consensus() {
        Some(c) => {
            let raft = crate::consensus::routes::routes(c.clone(), cfg.max_body);
            let peers = replication
                .merge(super::files::routes())
                .merge(raft.admin)
                .merge(raft.rpcs);
            (
                raft.writes,
                peers,
                cfg.max_body.max(crate::consensus::MAX_RPC_BODY),
            )
        }
        None => {
            let writes = OpenApiRouter::new()
                .routes(routes!(post_handler))
                .layer(axum::extract::DefaultBodyLimit::max(cfg.max_body));
            (
                writes,
                replication.merge(super::files::routes()),
                cfg.max_body,
            )
        }
    };
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

/// Runs a leader (and, on a voter, its raft engine) on `listener` until `shutdown`
/// resolves, then drains replicas and publishes a final snapshot.
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
    // A voter's routes are its engine's: it runs before the router is built.
    leader.start_consensus().await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "leader ready");
    }
    let app = leader_router(leader.clone());
    let serving = &leader.config().serving;
    let (conns, tls) = (serving.connections(), serving.tls.clone());
    let served = crate::server::listen::serve(listener, app, shutdown, conns, tls)
        .await
        .map_err(LeaderError::Serve);
    let stopped = leader.shutdown().await;
    served?;
    stopped.map(|_| ()).map_err(LeaderError::from)
}
