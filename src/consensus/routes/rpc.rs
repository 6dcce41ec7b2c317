//! The three RPCs the other voters call (and the snapshot files they fetch), each of which must name this group in
//! `x-memdb-cluster` (and carry its group id), with the checks that refuse what no
//! leader of this group can send.

use axum::extract::Path;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

use crate::consensus::engine::Consensus;
use crate::consensus::identity::GROUP_HEADER;
use crate::consensus::transfer;
use crate::consensus::types::Offer;
use crate::consensus::types::{CLUSTER_HEADER, NodeId, TypeConfig};
use crate::server::error::ApiError;

/// What this voter can apply, on its answers to appends and votes (see
/// [`crate::consensus::batcher`]).
const FEATURES: [(&str, &str); 1] = [(
    crate::consensus::batcher::FEATURES_HEADER,
    crate::consensus::batcher::BATCHES,
)];

/// The RPC's body, if it names this group.
fn rpc_body<T: serde::de::DeserializeOwned>(
    c: &Consensus,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let named = headers.get(CLUSTER_HEADER).and_then(|v| v.to_str().ok());
    if named != Some(c.config.cluster.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this node belongs to raft group {:?}; the request names {:?} (header {CLUSTER_HEADER})",
                c.config.cluster, named
            ),
        ));
    }
    let req = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request(format!("not a raft request of this version: {e}")))?;
    // Checked last: a node being added adopts the id of the first RPC it takes.
    let group = headers.get(GROUP_HEADER).and_then(|v| v.to_str().ok());
    c.group.admit(group).map_err(|why| {
        tracing::warn!(named = ?group, "refused a raft RPC of another group");
        ApiError::new(StatusCode::FORBIDDEN, why)
    })?;
    Ok(req)
}

/// Refuses an append no leader of this group can send: entries that are not one run
/// following `prev_log_id`, or that differ from an entry this node knows is committed
/// (raft never rewrites a committed entry; an RPC that does comes from another group or
/// a forger, and taken, would replace the log under the table built from it).
fn check_append(c: &Consensus, req: &AppendEntriesRequest<TypeConfig>) -> Result<(), ApiError> {
    let refuse = |why: String| {
        tracing::warn!(claimed_leader = ?req.vote.leader_id, "refused a raft append: {why}");
        Err(ApiError::new(StatusCode::CONFLICT, why))
    };
    let first = req.prev_log_id.map_or(0, |p| p.index + 1);
    for (due, e) in (first..).zip(&req.entries) {
        if e.log_id.index != due {
            return refuse(format!(
                "the append's entries are not one run after its prev_log_id: index {} where \
                 {due} was due",
                e.log_id.index
            ));
        }
    }
    // Only what is needed, copied out: this runs on every append.
    let (applied, snapshot) = {
        let m = c.raft.metrics();
        let m = m.borrow();
        (m.last_applied, m.snapshot)
    };
    let committed = [
        c.log.committed_index(),
        applied.map(|l| l.index),
        snapshot.map(|l| l.index),
    ]
    .into_iter()
    .flatten()
    .max();
    let Some(committed) = committed else {
        return Ok(());
    };
    let claimed = req
        .prev_log_id
        .iter()
        .chain(req.entries.iter().map(|e| &e.log_id));
    for id in claimed.take_while(|id| id.index <= committed) {
        let ours = c
            .log
            .log_id_at(id.index)
            .or(snapshot.filter(|s| s.index == id.index));
        if let Some(ours) = ours
            && ours != *id
        {
            return refuse(format!(
                "the append would rewrite committed entry {} (this node holds {ours}, the \
                 append {id}): raft never changes a committed entry, so it comes from \
                 another group or is forged",
                id.index
            ));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/raft/append", tag = "raft",
    summary = "Raft AppendEntries (voter to voter)",
    request_body = Object,
    responses(
        (status = 200, description = "The engine's answer", body = Object),
        (status = 400, description = "Not an AppendEntries request", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 403, description = "Another raft group", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "Entries no leader of this group can send (not one run, or \
                                      rewriting a committed entry): nothing was taken", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn append(
    State(c): State<Consensus>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: AppendEntriesRequest<TypeConfig> = rpc_body(&c, &headers, body)?;
    check_append(&c, &req)?;
    Ok((FEATURES, axum::Json(c.raft.append_entries(req).await)).into_response())
}

/// Refuses a vote request from a node that is not a voter of this node's membership:
/// its terms would only disrupt the group (a stranger's rising terms keep it
/// leaderless; a removed voter's too). Refusing a vote is always safe. Appends are not
/// checked so: a follower that missed the change naming a new leader learns it from
/// that leader's appends.
fn check_candidate(c: &Consensus, req: &VoteRequest<NodeId>) -> Result<(), ApiError> {
    let candidate = req.vote.leader_id.node_id;
    let m = c.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let known = membership.nodes().next().is_some();
    if known && !membership.voter_ids().any(|id| id == candidate) {
        tracing::warn!(
            candidate,
            "refused a vote request from a node that is not a voter"
        );
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("node {candidate} is not a voter of this group: its vote request is refused"),
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/raft/vote", tag = "raft",
    summary = "Raft RequestVote (voter to voter)",
    request_body = Object,
    responses(
        (status = 200, description = "The engine's answer", body = Object),
        (status = 400, description = "Not a vote request", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 403, description = "Another raft group, or a candidate that is not a voter", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn vote(
    State(c): State<Consensus>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: VoteRequest<NodeId> = rpc_body(&c, &headers, body)?;
    check_candidate(&c, &req)?;
    Ok((FEATURES, axum::Json(c.raft.vote(req).await)).into_response())
}

#[utoipa::path(post, path = "/raft/snapshot", tag = "raft",
    summary = "Raft InstallSnapshot as files (leader to a node that fell behind)",
    description = "An offer: the leader's vote, the snapshot's raft metadata, its record \
                   file's length and checksum, and the leader's URL. The voter downloads \
                   the record and the files it names from GET /raft/snapshot/files/{name} \
                   on the leader, checks every file whole, installs the snapshot and \
                   answers raft's answer.",
    request_body = Object,
    responses(
        (status = 200, description = "The engine's answer", body = Object),
        (status = 400, description = "Not an offer, or the leader's URL is not the one its membership names", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 403, description = "Another raft group", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "The leader's snapshot changed during the download: nothing was installed", body = crate::server::openapi::ErrorBody),
        (status = 422, description = "The files are not the snapshot offered (truncated, corrupt, mismatched): nothing was installed", body = crate::server::openapi::ErrorBody),
        (status = 502, description = "The leader's files could not be fetched", body = crate::server::openapi::ErrorBody),
        (status = 507, description = "The files could not be written here (a full disk)", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn snapshot(
    State(c): State<Consensus>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let offer: Offer = rpc_body(&c, &headers, body)?;
    let answer = transfer::receive(&c, offer).await?;
    Ok(axum::Json(answer).into_response())
}

#[utoipa::path(get, path = "/raft/snapshot/files/{name}", tag = "raft",
    summary = "A file of this voter's raft snapshot (to a voter it was offered to)",
    description = "The record (raft.meta) or a file it names, as it is, with its checksum \
                   as ETag; one Range resumes a download, If-Range and If-Match name the \
                   checksum wanted.",
    params(
        ("name" = String, Path, description = "raft.meta, or a file the record names"),
        ("range" = Option<String>, Header, description = "bytes=START-[END]"),
        ("if-range" = Option<String>, Header, description = "The quoted checksum the range is of"),
        ("if-match" = Option<String>, Header, description = "The quoted checksum wanted"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream"),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 404, description = "No such file in this voter's snapshot now", body = crate::server::openapi::ErrorBody),
        (status = 412, description = "If-Match names another file", body = crate::server::openapi::ErrorBody),
        (status = 416, description = "The range starts past the end", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn snapshot_file(
    State(c): State<Consensus>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    transfer::serve_file(&c, name, headers).await
}
