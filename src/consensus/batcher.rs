//! Concurrent writes proposed as one raft entry. A write waits here while the entries
//! before it are in flight ([`IN_FLIGHT`] at a time); the writes that gathered
//! meanwhile go into the next entry together, up to [`BATCH_BYTES`] of words, and
//! share its log record, its fsync and its round trip to the followers. Each keeps its
//! own Idempotency-Key and answer (see [`super::state_machine`]).
//!
//! A voter of an earlier release would apply only the first write of such an entry,
//! so a leader batches only while every other voter's last answer said it applies
//! batches (header [`FEATURES_HEADER`]); until then each write is an entry of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, oneshot};

use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};

use super::types::{Applied, NodeId, Proposal, Raft, TypeConfig, WriteError};

/// Entries proposed and not yet applied, at most: while they are, new writes gather.
pub const IN_FLIGHT: usize = 2;
/// The most bytes of words one entry gathers (one append to a follower carries 64 KiB,
/// see [`super::network::APPEND_BYTES`]); a larger write is an entry by itself.
pub const BATCH_BYTES: usize = 64 << 10;
/// The most writes one entry gathers.
pub const BATCH_MAX: usize = 256;

/// The header a voter answers raft RPCs with: what it can apply.
pub const FEATURES_HEADER: &str = "x-memdb-raft-features";
/// Its value: entries of several writes.
pub const BATCHES: &str = "batches";

/// What each peer's last answer said, and when it came: whether it applies batches,
/// and whether it answers at all (a learner is promoted only if it does).
#[derive(Clone, Default)]
pub struct Peers(Arc<Mutex<HashMap<NodeId, (bool, Instant)>>>);

impl Peers {
    /// Notes what `id`'s answer said.
    pub fn answered(&self, id: NodeId, batches: bool) {
        self.0.lock().insert(id, (batches, Instant::now()));
    }

    /// Whether `id` answered an RPC within `window`.
    pub fn answered_within(&self, id: NodeId, window: Duration) -> bool {
        self.answered_ago(id).is_some_and(|ago| ago <= window)
    }

    /// How long ago `id` last answered an RPC (`None`: never).
    pub fn answered_ago(&self, id: NodeId) -> Option<Duration> {
        self.0.lock().get(&id).map(|(_, at)| at.elapsed())
    }

    fn all(&self, ids: impl Iterator<Item = NodeId>) -> bool {
        let map = self.0.lock();
        ids.into_iter()
            .all(|id| map.get(&id).is_some_and(|(b, _)| *b))
    }
}

type Reply = oneshot::Sender<Result<Applied, WriteError>>;

/// Where writes are handed to be proposed (cheap to clone).
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<(Proposal, Reply)>,
    counts: Arc<Counts>,
}

/// Writes and entries proposed here (and applied: a follower's refusals are not
/// counted).
#[derive(Default)]
pub struct Counts {
    pub writes: AtomicU64,
    pub entries: AtomicU64,
}

impl Batcher {
    /// Starts proposing on `raft` (node `me`).
    pub fn start(raft: Raft, me: NodeId, peers: Peers) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(raft, me, peers, rx, counts.clone()));
        Batcher { tx, counts }
    }

    /// Writes and entries proposed so far: (writes, entries).
    pub fn proposed(&self) -> (u64, u64) {
        (
            self.counts.writes.load(Ordering::Relaxed),
            self.counts.entries.load(Ordering::Relaxed),
        )
    }

    /// Proposes `p` (perhaps with others) and waits for its answer.
    pub async fn write(&self, p: Proposal) -> Result<Applied, WriteError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((p, tx)).is_err() {
            return Err(WriteError::Unavailable("the raft engine stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(WriteError::Unavailable("the raft engine stopped".into())))
    }
}

/// A `client_write`'s answer as [`super::engine::Consensus::write`] gives it.
fn write_outcome(
    r: Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    >,
) -> Result<Vec<Applied>, WriteError> {
    match r {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(
            WriteError::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr))),
        ),
        Err(e) => Err(WriteError::Unavailable(e.to_string())),
    }
}

fn words_bytes(p: &Proposal) -> usize {
    p.deltas.iter().map(|(w, _)| w.len() + 8).sum()
}

async fn run(
    raft: Raft,
    me: NodeId,
    peers: Peers,
    mut rx: mpsc::UnboundedReceiver<(Proposal, Reply)>,
    counts: Arc<Counts>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        let others_batch = {
            let m = raft.metrics().borrow().clone();
            let voters = m.membership_config.membership().voter_ids();
            peers.all(voters.filter(|&id| id != me))
        };
        if others_batch {
            let mut bytes = words_bytes(&jobs[0].0);
            while bytes < BATCH_BYTES && jobs.len() < BATCH_MAX {
                let Ok(job) = rx.try_recv() else { break };
                bytes += words_bytes(&job.0);
                jobs.push(job);
            }
        }
        // A write whose client stopped waiting (its deadline passed) is dropped: it was
        // answered "outcome unknown", and not proposing it keeps an overload from
        // growing.
        jobs.retain(|(_, reply)| !reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let raft = raft.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let (mut proposals, replies): (Vec<Proposal>, Vec<Reply>) = jobs.into_iter().unzip();
            let mut head = proposals.remove(0);
            head.more = proposals;
            let outcome = write_outcome(raft.client_write(head).await);
            drop(permit);
            match outcome {
                Ok(answers) => {
                    counts
                        .writes
                        .fetch_add(answers.len() as u64, Ordering::Relaxed);
                    counts.entries.fetch_add(1, Ordering::Relaxed);
                    for (reply, a) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(a));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
