//! Every raft route of a voter, with its handler on the voter's [`Consensus`]: the
//! three RPCs the other voters call (each must name this group in `x-memdb-cluster`),
//! forming the group and changing its membership (these behind the peer credential),
//! and `POST /post` on a voter (in [`write`]). The node's router merges [`Routes`].

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

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::engine::{Consensus, MAX_RPC_BODY};
use super::identity::GROUP_HEADER;
use super::types::{CLUSTER_HEADER, NodeId, Outcome, Proposal, TypeConfig, WriteError};
use crate::protocol::{IDEMPOTENCY_KEY, SEQ};
use crate::server::deadline::{Deadline, remaining};
use crate::server::error::{ApiError, Applied as Fate};

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
    State(c): State<Consensus>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: VoteRequest<NodeId> = rpc_body(&c, &headers, body)?;
    check_candidate(&c, &req)?;
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
    State(c): State<Consensus>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: InstallSnapshotRequest<TypeConfig> = rpc_body(&c, &headers, body)?;
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
    crate::origin::origin(url)
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
    State(c): State<Consensus>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
        (status = 400, description = "Not {\"nodes\": {id: url}}, a bad URL, or an id that is not a member", body = crate::server::openapi::ErrorBody),
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
        .map_err(|e| change_error(&c, e))?;
    let urls: BTreeMap<NodeId, String> = nodes.into_iter().map(|(id, n)| (id, n.addr)).collect();
    Ok(axum::Json(json!({ "nodes": urls, "log_index": r.log_id.index })).into_response())
}

/// A voter's raft routes, by the limits they take (the node's router merges them with
/// its own and applies state, credentials and mutual TLS).
pub struct Routes<S> {
    /// `POST /post` on a voter; `--max-body` applies.
    pub writes: OpenApiRouter<S>,
    /// Forming the group and changing its membership; `--max-body` applies.
    pub admin: OpenApiRouter<S>,
    /// The RPCs between voters, which take bodies up to [`MAX_RPC_BODY`].
    pub rpcs: OpenApiRouter<S>,
}

/// Every raft route, served on `c`, in the state type `S` of the router that merges
/// them.
pub fn routes<S: Clone + Send + Sync + 'static>(c: Consensus, max_body: usize) -> Routes<S> {
    let limit = axum::extract::DefaultBodyLimit::max;
    Routes {
        writes: OpenApiRouter::new()
            .routes(routes!(write))
            .layer(limit(max_body))
            .with_state(c.clone()),
        admin: OpenApiRouter::new()
            .routes(routes!(init))
            .routes(routes!(add_learner))
            .routes(routes!(membership))
            .routes(routes!(addresses))
            .layer(limit(max_body))
            .with_state(c.clone()),
        rpcs: OpenApiRouter::new()
            .routes(routes!(append))
            .routes(routes!(vote))
            .routes(routes!(snapshot))
            .layer(limit(MAX_RPC_BODY))
            .with_state(c),
    }
}

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

#[utoipa::path(
    post,
    path = "/post",
    tag = "writes",
    summary = "Count the words of a text (a voter of a raft group)",
    description = "Proposes the text's words as one raft entry and answers once it is \
                   committed on a majority and applied here. A follower redirects to the \
                   leader. With an Idempotency-Key, a retried write is counted once.",
    params(("Idempotency-Key" = Option<String>, Header,
            description = "1 to 255 visible ASCII characters; a retry with the same key \
                           and words is counted once")),
    request_body(content(
        (inline(crate::server::parse::PostForm) = "application/x-www-form-urlencoded"),
        (String = "text/plain"),
        (inline(crate::server::parse::PostJson) = "application/json"),
    )),
    responses(
        (status = 202, description = "Counted (or, `duplicate: true`, counted before under \
                                      this key)", body = Object,
         headers(("x-memdb-seq" = u64, description = "The batch's seq"))),
        (status = 307, description = "A follower: post to the leader (`Location`, and \
                                      `leader_url` in the body); nothing counted",
         body = crate::server::openapi::ErrorBody),
        (status = 400, description = "No text, empty text, a malformed body or key",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "This Idempotency-Key was used longer ago than the \
                                      group remembers keys; not counted again",
         body = crate::server::openapi::ErrorBody),
        (status = 413, description = "Larger than --max-body", body = crate::server::openapi::ErrorBody),
        (status = 415, description = "Unsupported content type", body = crate::server::openapi::ErrorBody),
        (status = 422, description = "This Idempotency-Key was used for other words; \
                                      nothing counted", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "No leader now, or not committed in time: `applied` \
                                      says `no` or `unknown` (retry with the same key)",
         body = crate::server::openapi::ErrorBody),
        (status = 507, description = "The raft log cannot be written (disk full or \
                                      failed): refused, nothing counted; retry later",
         body = crate::server::openapi::ErrorBody),
    )
)]
async fn write(
    State(c): State<Consensus>,
    deadline: Option<axum::Extension<Deadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let deadline = deadline.map(|d| d.0);
    let text = crate::server::parse::post_request(&headers, body)?;
    let key = idempotency_key(&headers).map_err(|e| e.applied(Fate::No))?;
    let (deltas, words) = c.node().tokenizer().count(&text);
    // A keyed post without words is still proposed: its key is kept (and a later use
    // of it for other words refused), though it takes no seq.
    if words == 0 && key.is_none() {
        let seq = c.node().seq();
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
        .applied(Fate::No));
    }
    let applied = remaining(deadline, c.write(Proposal::new(deltas, key)))
        .await
        .unwrap_or(Err(WriteError::Timeout));
    let applied = match applied {
        Ok(a) => a,
        Err(e) => return write_refused(e),
    };
    match applied.outcome {
        Outcome::KeyReused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for a write of other words; nothing was counted",
        )
        .with("seq", applied.seq)
        .applied(Fate::No)),
        Outcome::KeyExpired => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this Idempotency-Key was used longer ago than the group remembers keys \
                 (--idempotency-window {:?}, --idempotency-max-bytes): its write was \
                 counted then, and this one is not counted; use a new key for a new write",
                c.config.key_window
            ),
        )
        .applied(Fate::No)),
        outcome => Ok((
            StatusCode::ACCEPTED,
            [(SEQ, crate::protocol::seq_value(applied.seq))],
            axum::Json(json!({
                "seq": applied.seq,
                "words": words,
                "duplicate": outcome == Outcome::Duplicate,
            })),
        )
            .into_response()),
    }
}

/// The answer to a write the group did not apply here: a redirect to the leader, or a
/// refusal that says whether it may have been counted.
fn write_refused(e: WriteError) -> Result<Response, ApiError> {
    let refused = |why: String, reason, fate| {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)
            .with("reason", reason)
            .with("retry_after", 1)
            .applied(fate))
    };
    match e {
        WriteError::NotLeader(Some((id, url))) => {
            let location = format!("{}/post", url.trim_end_matches('/'));
            let body = ApiError::new(
                StatusCode::TEMPORARY_REDIRECT,
                format!("node {id} leads the group: post to {location}"),
            )
            .with("leader_id", id)
            .with("leader_url", url);
            let mut resp = body.applied(Fate::No).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(axum::http::header::LOCATION, v);
            }
            Ok(resp)
        }
        WriteError::NotLeader(None) => refused(
            "the group cannot take writes now (no leader is elected); nothing was counted".into(),
            "no_leader",
            Fate::No,
        ),
        // The engine failed with the proposal in hand (a log it cannot write, a stop):
        // it may have reached the log, and other voters, first.
        WriteError::Unavailable(why) => refused(
            format!(
                "the group cannot take writes now ({why}); whether this write was \
                 counted is unknown: retry with the same Idempotency-Key"
            ),
            "unavailable",
            Fate::Unknown,
        ),
        WriteError::Timeout => refused(
            "not committed in time (--write-timeout or --request-timeout): the outcome \
             is unknown; retry with the same Idempotency-Key to have it counted exactly \
             once"
                .into(),
            "not_committed",
            Fate::Unknown,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::rpc;

    #[test]
    fn the_rpcs_the_network_calls_are_the_ones_served() {
        let (_, api) = OpenApiRouter::<Consensus>::new()
            .routes(routes!(append))
            .routes(routes!(vote))
            .routes(routes!(snapshot))
            .split_for_parts();
        let served: BTreeSet<&str> = api.paths.paths.keys().map(String::as_str).collect();
        assert_eq!(
            served,
            BTreeSet::from([rpc::APPEND, rpc::VOTE, rpc::SNAPSHOT])
        );
    }
}
