//! A voter's raft routes, all behind the token: the three RPCs the other voters call
//! (each must name this group in `x-memdb-cluster`), forming the group, and changing
//! its membership at run time.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use openraft::BasicNode;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Deserialize;
use serde_json::json;

use super::identity::GROUP_HEADER;
use super::{CLUSTER_HEADER, Consensus, NodeId, TypeConfig};
use crate::leader::Leader;
use crate::server::error::ApiError;

fn consensus(leader: &Leader) -> Result<&Consensus, ApiError> {
    leader.consensus().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the raft engine is not running yet",
        )
    })
}

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
    State(leader): State<Leader>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = consensus(&leader)?;
    let req: AppendEntriesRequest<TypeConfig> = rpc_body(c, &headers, body)?;
    check_append(c, &req)?;
    Ok(axum::Json(c.raft.append_entries(req).await).into_response())
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
    State(leader): State<Leader>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = consensus(&leader)?;
    let req: VoteRequest<NodeId> = rpc_body(c, &headers, body)?;
    check_candidate(c, &req)?;
    Ok(axum::Json(c.raft.vote(req).await).into_response())
}

#[utoipa::path(post, path = "/raft/snapshot", tag = "raft",
    summary = "Raft InstallSnapshot, one chunk (leader to a node that fell behind)",
    request_body = Object,
    responses(
        (status = 200, description = "The engine's answer", body = Object),
        (status = 400, description = "Not a snapshot chunk", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 403, description = "Another raft group", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn snapshot(
    State(leader): State<Leader>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = consensus(&leader)?;
    let req: InstallSnapshotRequest<TypeConfig> = rpc_body(c, &headers, body)?;
    Ok(axum::Json(c.raft.install_snapshot(req).await).into_response())
}

/// `POST /raft/init`: the voters, id → URL.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Init {
    members: BTreeMap<NodeId, String>,
}

/// `POST /raft/learners`: a node to add (it receives the log but does not vote).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Learner {
    id: NodeId,
    url: String,
}

/// `POST /raft/addresses`: members' new URLs (a voter restarted on another port).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Addresses {
    nodes: BTreeMap<NodeId, String>,
}

/// `POST /raft/membership`: the voters from now on (each a member already).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Voters {
    voters: BTreeSet<NodeId>,
}

fn admin_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON object {shape}: {e}")))
}

fn check_url(url: &str) -> Result<String, ApiError> {
    crate::leader::replication::replica_origin(url)
        .map_err(|e| ApiError::bad_request(format!("member url {url:?}: {e}")))
}

#[utoipa::path(post, path = "/raft/init", tag = "raft",
    summary = "Form the raft group (on a pristine node)",
    request_body = Init,
    responses(
        (status = 200, description = "Formed, or already formed (`formed: false`)", body = Object),
        (status = 400, description = "Not {\"members\": {id: url}}, or this node not among them", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn init(
    State(leader): State<Leader>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = consensus(&leader)?;
    let init: Init = admin_body(body, "{\"members\": {\"1\": \"http://host:port\", ...}}")?;
    if !init.members.contains_key(&c.node_id) {
        return Err(ApiError::bad_request(format!(
            "members must include this node ({})",
            c.node_id
        )));
    }
    let mut members = BTreeMap::new();
    for (id, url) in init.members {
        let url = check_url(&url)?;
        c.check_member_url(&url).map_err(ApiError::bad_request)?;
        members.insert(id, url);
    }
    let formed = c
        .initialize(members)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(axum::Json(json!({ "formed": formed })).into_response())
}

fn change_error(c: &Consensus, e: impl std::fmt::Display) -> ApiError {
    let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    if let Some((id, url)) = c.leader().filter(|(id, _)| *id != c.node_id) {
        err = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("node {id} leads: send membership changes to {url}"),
        )
        .with("leader_id", id)
        .with("leader_url", url);
    }
    err
}

#[utoipa::path(post, path = "/raft/learners", tag = "raft",
    summary = "Add a node as a learner (on the leader); answers once it has caught up",
    request_body = Learner,
    responses(
        (status = 200, description = "Added", body = Object),
        (status = 400, description = "Not {\"id\": n, \"url\": ...}", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 421, description = "This node does not lead: the body names the leader", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not possible now", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn add_learner(
    State(leader): State<Leader>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = consensus(&leader)?;
    let l: Learner = admin_body(body, "{\"id\": 4, \"url\": \"http://host:port\"}")?;
    let url = check_url(&l.url)?;
    c.check_member_url(&url).map_err(ApiError::bad_request)?;
    let r = c
        .raft
        .add_learner(l.id, BasicNode::new(url), true)
        .await
        .map_err(|e| change_error(c, e))?;
    Ok(axum::Json(json!({ "added": l.id, "log_index": r.log_id.index })).into_response())
}

#[utoipa::path(post, path = "/raft/membership", tag = "raft",
    summary = "Set the voters (on the leader): promote learners, remove nodes",
    request_body = Voters,
    responses(
        (status = 200, description = "Changed", body = Object),
        (status = 400, description = "Not {\"voters\": [ids]}", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 421, description = "This node does not lead: the body names the leader", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not possible now (a node not a member, another change under way)", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn membership(
    State(leader): State<Leader>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = consensus(&leader)?;
    let v: Voters = admin_body(body, "{\"voters\": [1, 2, 3]}")?;
    if v.voters.is_empty() {
        return Err(ApiError::bad_request("voters must not be empty"));
    }
    let r = c
        .raft
        .change_membership(v.voters.clone(), false)
        .await
        .map_err(|e| change_error(c, e))?;
    Ok(axum::Json(json!({ "voters": v.voters, "log_index": r.log_id.index })).into_response())
}

#[utoipa::path(post, path = "/raft/addresses", tag = "raft",
    summary = "Re-address members (on the leader): the URLs the group reaches them at",
    description = "For a member that moved (restarted on another port or host): its id \
                   stays, its URL changes. Each id must be a member already.",
    request_body = Addresses,
    responses(
        (status = 200, description = "Changed", body = Object),
        (status = 400, description = "Not {\"nodes\": {id: url}}, a bad URL, or an id that is not a member", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 421, description = "This node does not lead: the body names the leader", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not possible now (another change under way)", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn addresses(
    State(leader): State<Leader>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let c = consensus(&leader)?;
    let a: Addresses = admin_body(body, "{\"nodes\": {\"2\": \"http://host:port\"}}")?;
    if a.nodes.is_empty() {
        return Err(ApiError::bad_request("nodes must not be empty"));
    }
    let m = c.raft.metrics().borrow().clone();
    let mut nodes = BTreeMap::new();
    for (id, url) in a.nodes {
        if m.membership_config.membership().get_node(&id).is_none() {
            return Err(ApiError::bad_request(format!(
                "node {id} is not a member: add it with POST /raft/learners"
            )));
        }
        let url = check_url(&url)?;
        c.check_member_url(&url).map_err(ApiError::bad_request)?;
        nodes.insert(id, BasicNode::new(url));
    }
    let r = c
        .raft
        .change_membership(openraft::ChangeMembers::SetNodes(nodes.clone()), false)
        .await
        .map_err(|e| change_error(c, e))?;
    let urls: BTreeMap<NodeId, String> = nodes.into_iter().map(|(id, n)| (id, n.addr)).collect();
    Ok(axum::Json(json!({ "nodes": urls, "log_index": r.log_id.index })).into_response())
}
