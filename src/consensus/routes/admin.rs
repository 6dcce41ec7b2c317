//! Forming the group and changing its membership at run time (behind the peer
//! credential, like the RPCs).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use openraft::BasicNode;
use serde::Deserialize;
use serde_json::json;

use crate::consensus::engine::Consensus;
use crate::consensus::types::NodeId;
use crate::server::error::ApiError;

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
    crate::server::parse::json_body(&body?)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON object {shape}: {e}")))
}

fn check_url(url: &str) -> Result<String, ApiError> {
    crate::origin::origin(url)
        .map_err(|e| ApiError::bad_request(format!("member url {url:?}: {e}")))
}

#[utoipa::path(post, path = "/raft/init", tag = "raft",
    summary = "Form the raft group (on a pristine node)",
    request_body = Init,
    responses(
        (status = 200, description = "Formed, or already formed (`formed: false`)", body = Object),
        (status = 400, description = "Not {\"members\": {id: url}} with plain-origin URLs", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "This node is not among the members", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn init(
    State(c): State<Consensus>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let init: Init = admin_body(body, "{\"members\": {\"1\": \"http://host:port\", ...}}")?;
    if !init.members.contains_key(&c.node_id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("members must include this node ({})", c.node_id),
        ));
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
    State(c): State<Consensus>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let l: Learner = admin_body(body, "{\"id\": 4, \"url\": \"http://host:port\"}")?;
    let url = check_url(&l.url)?;
    c.check_member_url(&url).map_err(ApiError::bad_request)?;
    let r = c
        .raft
        .add_learner(l.id, BasicNode::new(url), true)
        .await
        .map_err(|e| change_error(&c, e))?;
    Ok(axum::Json(json!({ "added": l.id, "log_index": r.log_id.index })).into_response())
}

#[utoipa::path(post, path = "/raft/membership", tag = "raft",
    summary = "Set the voters (on the leader): promote learners, remove nodes",
    request_body = Voters,
    responses(
        (status = 200, description = "Changed", body = Object),
        (status = 400, description = "Not {\"voters\": [ids]}", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "An id that is not a member (add it as a learner first)", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 421, description = "This node does not lead: the body names the leader", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not possible now (a node not a member, another change under way)", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn membership(
    State(c): State<Consensus>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v: Voters = admin_body(body, "{\"voters\": [1, 2, 3]}")?;
    if v.voters.is_empty() {
        return Err(ApiError::bad_request("voters must not be empty"));
    }
    // Checked here: openraft asked to promote a node it does not know may not answer
    // (a request of a schema-driven tester waited out its 10 s).
    {
        let m = c.raft.metrics().borrow().clone();
        if let Some(id) = v
            .voters
            .iter()
            .find(|id| m.membership_config.membership().get_node(id).is_none())
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("node {id} is not a member: add it with POST /raft/learners first"),
            ));
        }
    }
    let r = c
        .raft
        .change_membership(v.voters.clone(), false)
        .await
        .map_err(|e| change_error(&c, e))?;
    Ok(axum::Json(json!({ "voters": v.voters, "log_index": r.log_id.index })).into_response())
}

#[utoipa::path(post, path = "/raft/addresses", tag = "raft",
    summary = "Re-address members (on the leader): the URLs the group reaches them at",
    description = "For a member that moved (restarted on another port or host): its id \
                   stays, its URL changes. Each id must be a member already.",
    request_body = Addresses,
    responses(
        (status = 200, description = "Changed", body = Object),
        (status = 400, description = "Not {\"nodes\": {id: url}}, or a bad URL", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "An id that is not a member", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 421, description = "This node does not lead: the body names the leader", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not possible now (another change under way)", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn addresses(
    State(c): State<Consensus>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let a: Addresses = admin_body(body, "{\"nodes\": {\"2\": \"http://host:port\"}}")?;
    if a.nodes.is_empty() {
        return Err(ApiError::bad_request("nodes must not be empty"));
    }
    let m = c.raft.metrics().borrow().clone();
    let mut nodes = BTreeMap::new();
    for (id, url) in a.nodes {
        if m.membership_config.membership().get_node(&id).is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("node {id} is not a member: add it with POST /raft/learners"),
            ));
        }
        let url = check_url(&url)?;
        c.check_member_url(&url).map_err(ApiError::bad_request)?;
        nodes.insert(id, BasicNode::new(url));
    }
    let r = c
        .raft
        .change_membership(openraft::ChangeMembers::SetNodes(nodes.clone()), false)
        .await
        .map_err(|e| change_error(&c, e))?;
    let urls: BTreeMap<NodeId, String> = nodes.into_iter().map(|(id, n)| (id, n.addr)).collect();
    Ok(axum::Json(json!({ "nodes": urls, "log_index": r.log_id.index })).into_response())
}
