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
    if init.members.is_empty() {
        return Err(ApiError::bad_request("members must not be empty"));
    }
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

/// How far behind the log (in entries) a learner may be and still be promoted.
const MAX_PROMOTE_LAG: u64 = 1024;

/// A learner is promoted only if it answered the leader within this long (or two
/// election timeouts, if longer): heartbeats reach it several times a second.
const ANSWER_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// How long `POST /raft/learners` waits for the learner to catch up (a snapshot of
/// ten million words and the log behind it take about 3 s) before answering `202`.
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// Waits until learner `id` has the log up to `index` (true), or until it has not
/// answered for [`ANSWER_WINDOW`] since it was added, or [`CATCH_UP_TIMEOUT`] passed.
async fn caught_up(c: &Consensus, id: NodeId, index: u64) -> bool {
    let added = std::time::Instant::now();
    loop {
        let matched = matched(&c.raft.metrics().borrow(), id);
        if matched.is_some_and(|x| x >= index) {
            return true;
        }
        let silent = !c.peers.answered_within(id, ANSWER_WINDOW);
        if added.elapsed() >= CATCH_UP_TIMEOUT || (silent && added.elapsed() >= ANSWER_WINDOW) {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The last log index `id` is known to hold (on the leader only).
fn matched(m: &openraft::RaftMetrics<NodeId, BasicNode>, id: NodeId) -> Option<u64> {
    let progress = m.replication.as_ref()?;
    progress.get(&id).cloned().flatten().map(|l| l.index)
}

/// Refuses (409) voters that are not members, checked here because openraft asked to
/// promote a node it does not know may not answer (a schema-driven tester's request
/// waited out its 10 s); and, on the leader, learners it cannot count on: a learner
/// the leader cannot reach would be a voter the new majority needs, so the change
/// could not commit, and neither could any write behind it.
fn check_promotion(c: &Consensus, voters: &BTreeSet<NodeId>) -> Result<(), ApiError> {
    let m = c.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    if let Some(id) = voters.iter().find(|id| membership.get_node(id).is_none()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {id} is not a member: add it with POST /raft/learners first"),
        ));
    }
    if m.replication.is_none() {
        // Not the leader: openraft's answer names the one that is.
        return Ok(());
    }
    let last = m.last_log_index.unwrap_or(0);
    let current: BTreeSet<NodeId> = membership.voter_ids().collect();
    let window = (c.config.election_timeout * 2).max(ANSWER_WINDOW);
    for &id in voters.iter().filter(|id| !current.contains(id)) {
        let matched = matched(&m, id);
        let answers = c.peers.answered_within(id, window);
        if answers && matched.is_some_and(|x| last.saturating_sub(x) <= MAX_PROMOTE_LAG) {
            continue;
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "learner {id} {} (matched {}, the log is at {last}): a voter the leader \
                 cannot reach would stop every write; check that it runs and is \
                 reachable at its URL",
                if answers {
                    "has not caught up"
                } else {
                    "does not answer"
                },
                matched.map_or("nothing".to_string(), |x| x.to_string())
            ),
        )
        .with("matched", matched)
        .with("last_log_index", last));
    }
    Ok(())
}

/// How long a membership change may take to commit before the answer says so
/// (it may still commit: `GET /health` shows the membership).
const CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

fn timed_out(after: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the change did not commit within {} s: a majority of the old or the new \
             voters is not reachable; it may still commit (see raft.members in GET /health)",
            after.as_secs()
        ),
    )
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
        (status = 200, description = "Added and caught up", body = Object),
        (status = 202, description = "Added; not caught up within 8 s, or not answering for 2 s (it goes on being sent the log)", body = Object),
        (status = 400, description = "Not {\"id\": n, \"url\": ...}", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 421, description = "This node does not lead: the body names the leader", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not possible now, or not added within 8 s", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn add_learner(
    State(c): State<Consensus>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let l: Learner = admin_body(body, "{\"id\": 4, \"url\": \"http://host:port\"}")?;
    let url = check_url(&l.url)?;
    c.check_member_url(&url).map_err(ApiError::bad_request)?;
    // openraft's own wait for a blocking add gives up after half a second and answers
    // as if it had caught up: this waits for the learner's match itself.
    let add = c.raft.add_learner(l.id, BasicNode::new(url), false);
    let r = tokio::time::timeout(CHANGE_TIMEOUT, add)
        .await
        .map_err(|_| timed_out(CHANGE_TIMEOUT))?
        .map_err(|e| change_error(&c, e))?;
    let index = r.log_id.index;
    let caught_up = caught_up(&c, l.id, index).await;
    let body = json!({ "added": l.id, "caught_up": caught_up, "log_index": index });
    if !caught_up {
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    }
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(post, path = "/raft/membership", tag = "raft",
    summary = "Set the voters (on the leader): promote learners, remove nodes",
    request_body = Voters,
    responses(
        (status = 200, description = "Changed", body = Object),
        (status = 400, description = "Not {\"voters\": [ids]}", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "An id that is not a member (add it as a learner first), or a learner that has not caught up (it may be unreachable)", body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 421, description = "This node does not lead: the body names the leader", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "Not possible now (another change under way), or not committed within 8 s", body = crate::server::openapi::ErrorBody),
    ))]
pub async fn membership(
    State(c): State<Consensus>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v: Voters = admin_body(body, "{\"voters\": [1, 2, 3]}")?;
    if v.voters.is_empty() {
        return Err(ApiError::bad_request("voters must not be empty"));
    }
    check_promotion(&c, &v.voters)?;
    let r = tokio::time::timeout(
        CHANGE_TIMEOUT,
        c.raft.change_membership(v.voters.clone(), false),
    )
    .await
    .map_err(|_| timed_out(CHANGE_TIMEOUT))?
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
        (status = 503, description = "Not possible now (another change under way), or not committed within 8 s", body = crate::server::openapi::ErrorBody),
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
    let change = openraft::ChangeMembers::SetNodes(nodes.clone());
    let r = tokio::time::timeout(CHANGE_TIMEOUT, c.raft.change_membership(change, false))
        .await
        .map_err(|_| timed_out(CHANGE_TIMEOUT))?
        .map_err(|e| change_error(&c, e))?;
    let urls: BTreeMap<NodeId, String> = nodes.into_iter().map(|(id, n)| (id, n.addr)).collect();
    Ok(axum::Json(json!({ "nodes": urls, "log_index": r.log_id.index })).into_response())
}
