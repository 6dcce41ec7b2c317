//! A voter's raft engine: starting it on a node's [`Applier`], forming the group,
//! proposing writes and knowing who leads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{BasicNode, SnapshotPolicy};

use super::applier::Applier;
use super::types::{Applied, NodeId, Outcome, Proposal, Raft, WriteError};
use super::{batcher, crosscheck, identity, keys, log_store, network, pending, state_machine};
use crate::config::RaftConfig;

/// The largest raft RPC body a voter takes: `MAX_ENTRIES_PER_APPEND` entries of the
/// largest posts, as JSON. (A snapshot offer is small: its files are downloaded.)
pub const MAX_RPC_BODY: usize = 256 << 20;
/// Entries per `/raft/append`.
const MAX_ENTRIES_PER_APPEND: u64 = 16;
/// How long a voter has to download, check and install a snapshot it was offered.
const INSTALL_TIMEOUT_MS: u64 = 120_000;

/// How many write timeouts a keyed proposal is waited for in the background before a
/// retry of its key may propose it again (a bound, should the engine never answer).
const PROPOSAL_LIMIT: u32 = 12;

/// How often the log's bytes are looked at (see [`Consensus::bound_log`]).
const LOG_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a snapshot asked for may take before it is asked for again.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(60);
/// How often, at most, a snapshot is taken again because only it holds old files.
const RELINK_EVERY: Duration = Duration::from_secs(10);

/// How often a voter compares its table with its members' (see [`crosscheck`]).
const CROSSCHECK_EVERY: Duration = Duration::from_secs(1);

/// A voter's raft handle (cheap to clone): the node above keeps one, and the raft
/// routes serve on one.
#[derive(Clone)]
pub struct Consensus {
    pub raft: Raft,
    pub node_id: NodeId,
    pub config: Arc<RaftConfig>,
    pub log: log_store::LogStore,
    pub state: state_machine::StateMachine,
    /// The node the state machine applies to.
    node: Arc<dyn Applier>,
    pub(super) elections: Arc<AtomicU64>,
    /// What this voter's calls to members trust and present; it vets members' URLs.
    tls: crate::tls::ClientTls,
    /// Keyed writes proposed here and not yet answered.
    pub(super) pending: pending::Pending<Result<Applied, WriteError>>,
    /// Which group this voter belongs to (its RPCs are checked against it).
    pub group: identity::Group,
    /// Members whose table differs from this voter's at the same seq.
    pub divergences: crosscheck::Divergences,
    /// Since when this node has known no leader (`None` while it knows one).
    pub(super) leaderless_since: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
    /// The peer credential this voter presents (fetching a snapshot's files).
    token: Option<crate::server::auth::Token>,
    /// Held while a snapshot is received: one download at a time.
    pub(super) receiving: Arc<tokio::sync::Mutex<()>>,
    /// Why this voter could not store the last snapshot offered, until it takes one.
    pub(super) receive_failed: Arc<parking_lot::Mutex<Option<String>>>,
    /// This voter's URL as its membership names it (an offer of a snapshot names it).
    pub(super) me: Arc<parking_lot::RwLock<Option<String>>>,
    /// Where writes are proposed, several to an entry when they come together.
    pub(super) batcher: batcher::Batcher,
    /// When each peer last answered (a learner is promoted only if it does).
    pub(super) peers: batcher::Peers,
}

impl Consensus {
    /// Starts the raft engine on `node`'s table, with its log and snapshots in `dir`.
    /// With `--peers`, forms the group (every voter may do it with the same list; a
    /// formed group ignores it).
    pub async fn start(
        node: Arc<dyn Applier>,
        dir: PathBuf,
        config: RaftConfig,
        boot: Option<super::snapshot::Record>,
        fsync: crate::storage::log::FsyncPolicy,
        token: Option<crate::server::auth::Token>,
        tls: crate::tls::ClientTls,
    ) -> Result<Consensus, String> {
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
            // A snapshot is downloaded and checked whole before the offer is answered:
            // some 2 s for 10M words on loopback.
            install_snapshot_timeout: INSTALL_TIMEOUT_MS,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft settings: {e}"))?;
        let group = identity::Group::open(&dir, config.node_id, &config.cluster)?;
        let log = log_store::LogStore::open(&dir, fsync, config.log_cache_bytes)
            .map_err(|e| format!("opening the raft log in {}: {e}", dir.display()))?;
        let keys = keys::Keys::new(config.key_window, config.key_bytes);
        let state = state_machine::StateMachine::new(node.clone(), dir, boot.as_ref(), keys);
        let me = Arc::new(parking_lot::RwLock::new(None));
        let peers = batcher::Peers::default();
        let network = network::Network::new(
            config.cluster.clone(),
            token.clone(),
            (me.clone(), peers.clone()),
            group.clone(),
            (
                config.election_timeout.max(Duration::from_millis(200)),
                config.heartbeat,
            ),
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
            batcher: batcher::Batcher::start(raft.clone(), config.node_id, peers.clone()),
            peers,
            raft,
            node_id: config.node_id,
            config: Arc::new(config),
            log,
            state,
            node: node.clone(),
            elections: Arc::new(AtomicU64::new(0)),
            tls,
            pending: pending::Pending::default(),
            group,
            divergences: crosscheck::Divergences::default(),
            leaderless_since: Arc::new(parking_lot::Mutex::new(Some(std::time::Instant::now()))),
            token,
            receiving: Arc::new(tokio::sync::Mutex::new(())),
            receive_failed: Arc::default(),
            me,
        };
        crosscheck::spawn(
            c.raft.clone(),
            c.node_id,
            node,
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
        c.bound_log();
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

    /// What this voter's calls to members trust and present.
    pub fn client_tls(&self) -> &crate::tls::ClientTls {
        &self.tls
    }

    /// The peer credential this voter presents.
    pub fn token(&self) -> Option<&crate::server::auth::Token> {
        self.token.as_ref()
    }

    /// Refuses a member this voter must not call (see [`crate::tls::ClientTls::check_peer`]).
    pub fn check_member_url(&self, url: &str) -> Result<(), String> {
        self.tls.check_peer(url)
    }

    /// Bounds the log by bytes, which openraft's own policy (a count of entries) does
    /// not: a snapshot is taken once the entries applied since the last one hold
    /// `--raft-snapshot-bytes`, and the log behind a snapshot is purged down to that
    /// many bytes (what a follower a little behind catches up from; one further behind
    /// is sent the snapshot). A snapshot costs one publication (see
    /// [`super::state_machine`]), so taking them often is cheap. Before this, a voter
    /// of 20k-word posts never reached 20,000 entries and held every word it was ever
    /// sent in its log, in memory and on disk.
    ///
    /// A snapshot is also taken when the files only it still holds (the table's chain
    /// compacted past them) reach that bound: a voter's disk, and its page cache, would
    /// otherwise hold an old base beside the new one until the log grew again.
    fn bound_log(&self) {
        let (raft, log) = (self.raft.clone(), self.log.clone());
        let dir = self.state.dir().to_owned();
        let bound = self.config.snapshot_bytes;
        tokio::spawn(async move {
            let mut asked: Option<(Option<u64>, std::time::Instant)> = None;
            let mut relinked: Option<std::time::Instant> = None;
            let mut tick = tokio::time::interval(LOG_CHECK_EVERY);
            loop {
                tick.tick().await;
                let rx = raft.metrics();
                if rx.has_changed().is_err() {
                    return; // The engine stopped.
                }
                let (applied, snapshot, purged) = {
                    let m = rx.borrow();
                    (
                        m.last_applied.map(|l| l.index),
                        m.snapshot.map(|l| l.index),
                        m.purged.map(|l| l.index),
                    )
                };
                let Some(applied) = applied else { continue };
                // One at a time: not while the last one asked for is being taken.
                let waiting = asked
                    .is_some_and(|(at, when)| at == snapshot && when.elapsed() < SNAPSHOT_PATIENCE);
                let due = !waiting && log.bytes_between(snapshot, applied) >= bound;
                // Taken again even at the same index (it replaces the last one's
                // directory); at most every RELINK_EVERY.
                let stale = relinked.is_none_or(|t| t.elapsed() >= RELINK_EVERY)
                    && super::snapshot::held_bytes(&dir) >= bound;
                if due || stale {
                    tracing::debug!(
                        applied,
                        ?snapshot,
                        stale,
                        "the log since the last snapshot, or the files only it holds, are \
                         past the bound: snapshotting"
                    );
                    if stale {
                        relinked = Some(std::time::Instant::now());
                    }
                    if raft.trigger().snapshot().await.is_err() {
                        return;
                    }
                    asked = Some((snapshot, std::time::Instant::now()));
                }
                if let Some(upto) = snapshot.and_then(|s| log.purge_point(s, bound))
                    && Some(upto) > purged
                    && raft.trigger().purge_log(upto).await.is_err()
                {
                    return;
                }
            }
        });
    }

    /// Counts the elections this node sees start (as candidate or by a term change).
    fn watch_elections(&self) {
        let mut rx = self.raft.metrics();
        let n = self.elections.clone();
        let id = self.node_id;
        let leaderless = self.leaderless_since.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            let (mut term, mut leader) = {
                let m = rx.borrow();
                (m.current_term, m.current_leader)
            };
            // This voter's URL as its membership names it: a snapshot offer names it.
            let note_me = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone());
                if addr.is_some() && *me.read() != addr {
                    *me.write() = addr;
                }
            };
            note_me(&rx.borrow());
            while rx.changed().await.is_ok() {
                let m = rx.borrow().clone();
                note_me(&m);
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
            return tokio::time::timeout(timeout, self.batcher.write(proposal))
                .await
                .unwrap_or(Err(WriteError::Timeout));
        };
        let batcher = self.batcher.clone();
        let (done, joined) = self.pending.join_or_start(
            key,
            proposal.fingerprint,
            timeout * PROPOSAL_LIMIT,
            Err(WriteError::Timeout),
            move || async move { batcher.write(proposal).await },
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

    /// The node the engine applies to.
    pub fn node(&self) -> &dyn Applier {
        &*self.node
    }

    /// The current leader's id and URL, as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let url = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, url))
    }
}
