//! What a voter says of itself: the raft part of `/health` (with the problems that make
//! it untrustworthy) and the raft series of `/metrics`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use serde::Serialize;

use super::crosscheck;
use super::engine::Consensus;
use super::types::NodeId;
use crate::server::metrics::Series;

/// One member as `/health` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberStatus {
    pub id: NodeId,
    pub url: String,
    pub voter: bool,
    /// The last log index known to be on it (on the leader only).
    pub matched: Option<u64>,
    /// How many entries it lacks (on the leader only).
    pub lag: Option<u64>,
    /// Milliseconds since it last answered an RPC of this node (`null`: never, or
    /// this node does not call it).
    pub answered_ms_ago: Option<u64>,
}

/// The raft part of `/health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RaftStatus {
    pub node_id: NodeId,
    pub cluster: String,
    /// The group's id (16 hex digits), once this node formed or joined the group; every
    /// RPC names it (header `x-memdb-group`).
    pub group: Option<String>,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub state: &'static str,
    pub leader_id: Option<NodeId>,
    pub leader_url: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// The last entry dropped from the log (behind a snapshot).
    pub purged_index: Option<u64>,
    /// Bytes of the entries the log holds.
    pub log_bytes: u64,
    /// Bytes of the newest entries held decoded in memory (at most --raft-log-cache).
    pub log_cache_bytes: usize,
    /// Bytes of the log's segment files on disk.
    pub log_file_bytes: u64,
    /// Writes this node proposed as leader, and the entries they went in.
    pub proposed_writes: u64,
    pub proposed_entries: u64,
    pub elections_seen: u64,
    pub members: Vec<MemberStatus>,
    /// Idempotency keys remembered.
    pub keys: usize,
    /// The raft log's write error, if it failed.
    pub log_failed: Option<String>,
    /// Why this voter could not store the last snapshot offered (507: its disk), until
    /// it takes one.
    pub snapshot_receive_failed: Option<String>,
    /// Members whose table differs from this voter's at the same seq.
    pub diverged: Vec<crosscheck::Divergence>,
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Consensus {
    /// Why the raft engine no longer runs, if it stopped: a fatal storage error, or a
    /// panic inside it (its metrics channel then closes). Such a node takes no write
    /// and applies nothing more until it is restarted, so `/health` must say so.
    pub fn stopped(&self) -> Option<String> {
        let rx = self.raft.metrics();
        if rx.has_changed().is_err() {
            return Some(match self.state.failure() {
                Some(why) => format!("the raft engine stopped: {why}"),
                None => "the raft engine stopped (it panicked or was shut down)".into(),
            });
        }
        let m = rx.borrow();
        match (&m.running_state, m.state) {
            (Err(fatal), _) => Some(format!("the raft engine stopped: {fatal}")),
            (Ok(()), ServerState::Shutdown) => Some("the raft engine is shut down".into()),
            _ => None,
        }
    }

    /// What makes this voter untrustworthy now, each a `/health` problem: the engine
    /// stopped; a leader that has not heard from a majority within two election
    /// timeouts (writes cannot commit: etcd's check-quorum); a member that has known
    /// no leader that long (a removed voter campaigns forever; a cut-off one waits);
    /// the group reaching this node at another URL than `--peers` names for it; a
    /// member whose table differs at the same seq.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .divergences
            .list()
            .iter()
            .map(|d| d.to_string())
            .collect();
        if let Some(e) = self.stopped() {
            out.push(format!(
                "{e}: writes are refused until the node is restarted"
            ));
            return out;
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let formed = membership.nodes().next().is_some();
        let limit = self.config.election_timeout * 2;
        let voters = membership.voter_ids().count();
        if m.state == ServerState::Leader
            && voters > 1
            && let Some(ms) = m.millis_since_quorum_ack
            && Duration::from_millis(ms) > limit
        {
            out.push(format!(
                "this node leads but has heard from no majority of the {voters} voters for \
                 {ms} ms (more than two election timeouts): writes cannot commit"
            ));
        }
        if formed && membership.get_node(&self.node_id).is_none() {
            out.push(
                "this node is not a member of the group (it was removed): it takes no \
                 writes and its seq no longer moves; stop it, or add it again with POST \
                 /raft/learners"
                    .into(),
            );
        }
        let leaderless = *self.leaderless_since.lock();
        if formed
            && m.current_leader.is_none()
            && let Some(since) = leaderless
            && since.elapsed() > limit
        {
            out.push(format!(
                "no leader known for {} ms (this node is a {}): it cannot take writes and \
                 may serve an old seq",
                since.elapsed().as_millis(),
                state_name(m.state)
            ));
        }
        if let Some(why) = self.receive_failed.lock().clone() {
            out.push(format!(
                "this node needs the leader's snapshot and could not receive it: {why}; \
                 it is offered again until it can be taken"
            ));
        }
        if let (Some(named), Some(known)) = (
            self.config.peers.get(&self.node_id),
            membership.get_node(&self.node_id),
        ) && named.trim_end_matches('/') != known.addr.trim_end_matches('/')
        {
            out.push(format!(
                "the group reaches this node at {} but --peers names it {named}: the others \
                 (and their redirects) use the old address; re-address it with POST \
                 /raft/addresses {{\"nodes\": {{\"{}\": \"{named}\"}}}} on the leader",
                known.addr, self.node_id
            ));
        }
        out
    }

    /// This node's raft state by name (`leader`, `follower`, ...).
    pub fn state_name(&self) -> &'static str {
        state_name(self.raft.metrics().borrow().state)
    }

    pub fn elections(&self) -> u64 {
        self.elections.load(Ordering::Relaxed)
    }

    /// The raft series of `/metrics`.
    pub fn collect(&self, m: &mut Series<'_>) {
        let r = self.raft.metrics().borrow().clone();
        m.gauge(
            "memdb_raft_term",
            "The raft term this node is in.",
            r.current_term,
        );
        m.gauge(
            "memdb_raft_is_leader",
            "1 while this node leads the raft group.",
            r.state == ServerState::Leader,
        );
        m.gauge(
            "memdb_raft_quorum_ack_age_seconds",
            "On the leader: seconds since a majority of the voters last acknowledged it.",
            r.millis_since_quorum_ack.unwrap_or(0) as f64 / 1e3,
        );
        m.gauge(
            "memdb_raft_keyed_writes_in_flight",
            "Keyed writes proposed here and not yet answered (a retry of one joins it).",
            self.pending.len() as u64,
        );
        let (writes, entries) = self.batcher.proposed();
        m.counter(
            "memdb_raft_proposed_writes_total",
            "Writes this node proposed as leader.",
            writes,
        );
        m.counter(
            "memdb_raft_proposed_entries_total",
            "Raft entries those writes were proposed in (concurrent writes share one).",
            entries,
        );
        m.counter(
            "memdb_raft_elections_total",
            "Elections this node has seen start (term changes).",
            self.elections(),
        );
        m.gauge(
            "memdb_raft_last_log_index",
            "The last raft log index this node holds.",
            r.last_log_index.unwrap_or(0),
        );
        m.gauge(
            "memdb_raft_commit_index",
            "The last raft log index known committed (on a majority).",
            self.log.committed_index().unwrap_or(0),
        );
        m.gauge(
            "memdb_raft_applied_index",
            "The last raft log index applied to the table.",
            r.last_applied.map_or(0, |l| l.index),
        );
        m.gauge(
            "memdb_raft_snapshot_held_bytes",
            "Bytes of the raft snapshot's files that only it holds (the table's files \
             have moved on since it was taken): freed when the next snapshot replaces it.",
            super::snapshot::held_bytes(self.state.dir()),
        );
        m.gauge(
            "memdb_raft_log_failed",
            "1 while the raft log cannot be written.",
            self.log.failure().is_some(),
        );
    }

    /// The raft part of `/health`.
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|l| l.map_or(0, |l| l.index));
                MemberStatus {
                    id: *id,
                    url: node.addr.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag: matched.map(|x| last.unwrap_or(0).saturating_sub(x)),
                    answered_ms_ago: self.peers.answered_ago(*id).map(|d| d.as_millis() as u64),
                }
            })
            .collect();
        let leader_url = m
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|n| n.addr.clone());
        let (cache, files) = self.log.held_bytes();
        let (writes, entries) = self.batcher.proposed();
        RaftStatus {
            node_id: self.node_id,
            cluster: self.config.cluster.clone(),
            group: self.group.id(),
            state: state_name(m.state),
            leader_id: m.current_leader,
            leader_url,
            term: m.current_term,
            last_log_index: last,
            commit_index: self.log.committed_index(),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            log_bytes: self.log.bytes_between(None, u64::MAX),
            log_cache_bytes: cache,
            log_file_bytes: files,
            proposed_writes: writes,
            proposed_entries: entries,
            elections_seen: self.elections(),
            members,
            keys: self.state.keys_held(),
            log_failed: self.log.failure(),
            snapshot_receive_failed: self.receive_failed.lock().clone(),
            diverged: self.divergences.list(),
        }
    }
}
