//! Failover: leader-capable nodes form an openraft group. A write batch is a raft log
//! entry; `POST /post` answers once the entry is committed on a majority and applied.
//! Every voter applies committed entries to its own table (so every voter numbers the
//! same batches with the same seqs, and publishes snapshots for the local replicas on
//! its host); followers answer writes with a redirect to the leader.
//!
//! - [`crosscheck`]: voters compare their tables' digests at equal seqs.
//! - [`identity`]: which node and group a data directory belongs to.
//! - [`keys`]: the idempotency keys remembered, for a time and within a size.
//! - [`log_store`]: the raft log on disk (the node's write-ahead log in a group).
//! - [`state_machine`]: applying entries to the table, idempotency keys, snapshots.
//! - [`network`]: raft's RPCs over HTTP to the other voters.
//! - [`pending`]: a retried keyed write joins the proposal in flight.
//! - [`routes`]: the RPC endpoints and the membership routes.
//! - [`status`]: what a voter's `/health` and `/metrics` say of it.

// openraft's error types are large by design and every storage call returns them.
#![allow(clippy::result_large_err)]

pub mod crosscheck;
pub mod identity;
pub mod keys;
pub mod log_store;
pub mod network;
pub mod pending;
pub mod routes;
pub mod state_machine;
pub mod status;

pub use status::{MemberStatus, RaftStatus};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::config::RaftConfig;
use crate::leader::Leader;
use crate::words::Deltas;

pub type NodeId = u64;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// memdb's raft types: a proposal counts words; applying it answers a seq.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;

/// The largest raft RPC body a voter takes: `MAX_ENTRIES_PER_APPEND` entries of the
/// largest posts, as JSON, or a snapshot chunk of `SNAPSHOT_CHUNK` bytes as JSON.
pub const MAX_RPC_BODY: usize = 256 << 20;
/// Entries per `/raft/append`.
const MAX_ENTRIES_PER_APPEND: u64 = 16;
/// Bytes of snapshot per `/raft/snapshot` (a JSON array of numbers: up to 4x on the wire).
const SNAPSHOT_CHUNK: u64 = 8 << 20;

/// How many write timeouts a keyed proposal is waited for in the background before a
/// retry of its key may propose it again (a bound, should the engine never answer).
const PROPOSAL_LIMIT: u32 = 12;

/// How often a voter compares its table with its members' (see [`crosscheck`]).
const CROSSCHECK_EVERY: Duration = Duration::from_secs(1);

/// A `client_write`'s answer as [`Consensus::write`] gives it.
fn write_outcome(
    r: Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    >,
) -> Result<Applied, WriteError> {
    match r {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(
            WriteError::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr))),
        ),
        Err(e) => Err(WriteError::Unavailable(e.to_string())),
    }
}

/// The header every raft RPC carries: a node refuses RPCs of another group.
pub const CLUSTER_HEADER: &str = "x-memdb-cluster";

/// The incarnation every voter of group `cluster` serves under.
pub fn group_incarnation(cluster: &str) -> crate::protocol::Incarnation {
    let h = xxhash_rust::xxh3::xxh3_64(format!("memdb raft group {cluster}").as_bytes());
    crate::protocol::Incarnation::from_raw(h | 1).expect("non-zero")
}

/// A write batch as a log entry: the words to count, and the client's idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    /// On the wire and in the log: one string of `word count` lines (words hold no
    /// white space), which is several times faster to write and parse than a JSON array
    /// of pairs, and smaller.
    /// Shared: the engine clones entries for the log and for every follower.
    #[serde(with = "packed")]
    pub deltas: Arc<Deltas>,
    pub key: Option<String>,
    /// A digest of the words and their counts (in any order), so that a key reused
    /// for other words is refused.
    pub fingerprint: u64,
    /// The proposing leader's clock (ms since the epoch): the key window's time, the
    /// same on every voter.
    #[serde(default)]
    pub at_ms: u64,
}

impl Proposal {
    pub fn new(deltas: Deltas, key: Option<String>) -> Proposal {
        // Order-independent: the tokenizer's order of words is not fixed.
        let fingerprint = deltas.iter().fold(0u64, |acc, (w, n)| {
            acc.wrapping_add(xxhash_rust::xxh3::xxh3_64_with_seed(w.as_bytes(), *n))
        });
        Proposal {
            deltas: Arc::new(deltas),
            key,
            fingerprint,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// [`Proposal::deltas`] as one string.
mod packed {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use std::sync::Arc;

    use crate::words::Deltas;

    pub fn serialize<S: Serializer>(deltas: &Arc<Deltas>, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(deltas.iter().map(|(w, _)| w.len() + 4).sum());
        let mut n = itoa::Buffer::new();
        for (w, c) in deltas.iter() {
            out.push_str(w);
            out.push(' ');
            out.push_str(n.format(*c));
            out.push('\n');
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Deltas>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let deltas: Result<Deltas, D::Error> = text
            .lines()
            .map(|line| {
                let (w, c) = line
                    .rsplit_once(' ')
                    .filter(|(w, _)| !w.is_empty() && !w.contains(char::is_whitespace))
                    .ok_or_else(|| D::Error::custom("a delta line is not `word count`"))?;
                let c: u64 = c
                    .parse()
                    .map_err(|_| D::Error::custom("a delta's count is not a number"))?;
                if c == 0 {
                    return Err(D::Error::custom("a delta's count is zero"));
                }
                Ok((w.to_owned(), c))
            })
            .collect();
        deltas.map(Arc::new)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Counted,
    /// The key was seen with the same words: not counted again; `seq` is the first's.
    Duplicate,
    /// The key was seen with other words: refused; `seq` is the first write's.
    KeyReused,
    /// The key was seen longer ago than the window: its write was counted then; not
    /// counted again, and refused.
    KeyExpired,
}

/// What applying an entry answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub seq: u64,
    pub outcome: Outcome,
}

/// Why a write was not applied here.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// Another node leads (its id and URL, if known).
    NotLeader(Option<(NodeId, String)>),
    /// No leader now (an election), or the engine stopped.
    Unavailable(String),
    /// Not committed within the write timeout: its outcome is unknown.
    Timeout,
}

/// A voter's raft handle, kept by its [`Leader`].
#[derive(Clone)]
pub struct Consensus {
    pub raft: Raft,
    pub node_id: NodeId,
    pub config: Arc<RaftConfig>,
    pub log: log_store::LogStore,
    pub state: state_machine::StateMachine,
    elections: Arc<AtomicU64>,
    /// What this voter's calls to members trust and present; it vets members' URLs.
    tls: crate::tls::ClientTls,
    /// Keyed writes proposed here and not yet answered.
    pending: pending::Pending<Result<Applied, WriteError>>,
    /// Which group this voter belongs to (its RPCs are checked against it).
    pub group: identity::Group,
    /// Members whose table differs from this voter's at the same seq.
    pub divergences: crosscheck::Divergences,
    /// Since when this node has known no leader (`None` while it knows one).
    leaderless_since: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl Consensus {
    /// Starts the raft engine for `leader`'s table. With `--peers`, forms the group
    /// (every voter may do it with the same list; a formed group ignores it).
    pub async fn start(
        leader: Leader,
        config: RaftConfig,
        boot: Option<state_machine::StoredMeta>,
        fsync: crate::storage::log::FsyncPolicy,
        token: Option<crate::server::auth::Token>,
        tls: crate::tls::ClientTls,
    ) -> Result<Consensus, String> {
        let dir = leader.data_dir().join("raft");
        let raft_config = openraft::Config {
            cluster_name: config.cluster.clone(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.as_millis() as u64,
            // A follower that saw a leader waits out the leader's lease (this maximum)
            // and then a random timeout between the two: failover takes about 1.75 to
            // 2.5 times --election-timeout. A narrower spread than the usual 2x keeps
            // that short; 1.5x still separates the candidates.
            election_timeout_max: config.election_timeout.as_millis() as u64 * 3 / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every.min(1000),
            install_snapshot_timeout: 10_000,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft settings: {e}"))?;
        let group = identity::Group::open(&dir, config.node_id, &config.cluster)?;
        let log = log_store::LogStore::open(&dir, fsync)
            .map_err(|e| format!("opening the raft log in {}: {e}", dir.display()))?;
        let keys = keys::Keys::new(config.key_window, config.key_bytes);
        let state = state_machine::StateMachine::new(leader.clone(), dir, boot.as_ref(), keys);
        let network = network::Network::new(
            config.cluster.clone(),
            token,
            group.clone(),
            config.election_timeout.max(Duration::from_millis(200)),
            &tls,
        );
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log.clone(),
            state.clone(),
        )
        .await
        .map_err(|e| format!("starting raft: {e}"))?;
        let c = Consensus {
            raft,
            node_id: config.node_id,
            config: Arc::new(config),
            log,
            state,
            elections: Arc::new(AtomicU64::new(0)),
            tls,
            pending: pending::Pending::default(),
            group,
            divergences: crosscheck::Divergences::default(),
            leaderless_since: Arc::new(parking_lot::Mutex::new(Some(std::time::Instant::now()))),
        };
        crosscheck::spawn(
            c.raft.clone(),
            c.node_id,
            leader,
            c.tls
                .builder()
                .connect_timeout(Duration::from_secs(1))
                .build()
                .map_err(|e| format!("an HTTP client: {e}"))?,
            CROSSCHECK_EVERY,
            c.divergences.clone(),
        );
        if !c.config.peers.is_empty() {
            c.initialize(c.config.peers.clone()).await?;
        }
        c.watch_elections();
        Ok(c)
    }

    /// Forms the group with `members` as voters, if this node is pristine.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<bool, String> {
        for url in members.values() {
            self.check_member_url(url)?;
        }
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        let group = identity::group_id(&self.config.cluster, &members);
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, url)| (id, BasicNode::new(url)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => {
                self.group.formed(group.clone())?;
                tracing::info!(group, "formed raft group");
                Ok(true)
            }
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Refuses a member this voter must not call (see [`crate::tls::ClientTls::check_peer`]).
    pub fn check_member_url(&self, url: &str) -> Result<(), String> {
        self.tls.check_peer(url)
    }

    /// Counts the elections this node sees start (as candidate or by a term change).
    fn watch_elections(&self) {
        let mut rx = self.raft.metrics();
        let n = self.elections.clone();
        let id = self.node_id;
        let leaderless = self.leaderless_since.clone();
        tokio::spawn(async move {
            let (mut term, mut leader) = {
                let m = rx.borrow();
                (m.current_term, m.current_leader)
            };
            while rx.changed().await.is_ok() {
                let m = rx.borrow().clone();
                if m.current_term > term {
                    n.fetch_add(m.current_term - term, Ordering::Relaxed);
                    term = m.current_term;
                }
                {
                    let mut since = leaderless.lock();
                    match m.current_leader {
                        Some(_) => *since = None,
                        None => {
                            since.get_or_insert_with(std::time::Instant::now);
                        }
                    }
                }
                if m.current_leader != leader {
                    leader = m.current_leader;
                    tracing::info!(node = id, term, leader = ?leader, state = ?m.state, "raft leadership changed");
                }
            }
        });
    }

    /// Proposes a batch and waits (at most the write timeout) until it is applied. A
    /// keyed batch whose key is in flight here with the same words is not proposed
    /// again: this waits for that proposal ([`pending`]), and answers a duplicate.
    pub async fn write(&self, proposal: Proposal) -> Result<Applied, WriteError> {
        let timeout = self.config.write_timeout;
        let Some(key) = proposal.key.clone() else {
            return match tokio::time::timeout(timeout, self.raft.client_write(proposal)).await {
                Err(_) => Err(WriteError::Timeout),
                Ok(r) => write_outcome(r),
            };
        };
        let raft = self.raft.clone();
        let (done, joined) = self.pending.join_or_start(
            key,
            proposal.fingerprint,
            timeout * PROPOSAL_LIMIT,
            Err(WriteError::Timeout),
            move || async move { write_outcome(raft.client_write(proposal).await) },
        );
        let mut outcome = pending::wait(done, timeout)
            .await
            .unwrap_or(Err(WriteError::Timeout));
        // The batch was counted for the request that proposed it, not for this one.
        if joined
            && let Ok(a) = &mut outcome
            && a.outcome == Outcome::Counted
        {
            a.outcome = Outcome::Duplicate;
        }
        outcome
    }

    /// The current leader's id and URL, as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let url = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_travel_packed_and_bad_ones_are_refused() {
        let p = Proposal::new(vec![("héllo".into(), 2), ("w".into(), 1)], Some("k".into()));
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""deltas":"héllo 2\nw 1\n""#), "{json}");
        let back: Proposal = serde_json::from_str(&json).unwrap();
        assert_eq!(back.deltas, p.deltas);
        for bad in ["a\n", "a b c\n", "a 0\n", " 1\n", "a x\n"] {
            let j = format!(r#"{{"deltas":"{bad}","key":null,"fingerprint":0}}"#);
            assert!(serde_json::from_str::<Proposal>(&j).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_proposals_fingerprint_ignores_word_order_but_not_counts() {
        let a = Proposal::new(vec![("a".into(), 1), ("b".into(), 2)], None);
        let b = Proposal::new(vec![("b".into(), 2), ("a".into(), 1)], None);
        let c = Proposal::new(vec![("a".into(), 2), ("b".into(), 1)], None);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }
}
