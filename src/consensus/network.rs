//! How voters reach each other: raft's three RPCs as JSON over HTTP POST to
//! `/raft/append`, `/raft/vote` and `/raft/snapshot` (an offer: the voter downloads
//! the snapshot's files, see [`super::transfer`]), carrying the cluster id and the
//! token (see [`super::routes`] for the receiving side).

use std::time::Duration;

use std::future::Future;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Snapshot, SnapshotMeta, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::identity::{GROUP_HEADER, Group};
use super::types::{Answer, CLUSTER_HEADER, NodeId, Offer, SnapshotFiles, TypeConfig, rpc};

/// The most entry bytes (roughly, the words) one `/raft/append` carries. openraft
/// bounds an append only by its count of entries (16), and gives the whole RPC one
/// heartbeat interval (100 ms by default) to be sent, decoded, written and answered.
/// Sixteen large posts take longer than that on a loaded host, and a batch that times
/// out is sent again whole, and times out again: the group stops committing at all.
/// Smaller appends each fit in the interval, so the log keeps moving.
pub const APPEND_BYTES: usize = 64 << 10;

/// How many of `entries` to send: those within `budget` bytes, and at least one.
fn entries_within(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        bytes += match &e.payload {
            openraft::EntryPayload::Normal(p) => {
                p.deltas.iter().map(|(w, _)| w.len() + 8).sum::<usize>()
            }
            _ => 64,
        };
        if bytes > budget {
            return i.max(1);
        }
    }
    entries.len()
}

/// Makes a connection per peer; all share one HTTP client (and its pool).
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    cluster: String,
    /// The peer credential, if the group has one (read at each call: it may be reloaded).
    token: Option<crate::server::auth::Token>,
    /// The group's id, named on every RPC once known.
    group: Group,
    /// This voter's URL, named in a snapshot offer (see [`super::transfer`]).
    me: std::sync::Arc<parking_lot::RwLock<Option<String>>>,
    /// Which voters apply entries of several writes (their answers say).
    peers: super::batcher::Peers,
    /// How soon a peer that could not be reached is tried again.
    retry: Duration,
}

impl Network {
    /// Each RPC's own deadline is the engine's (`RPCOption`); `connect_timeout` bounds
    /// reaching a peer; one that cannot be reached is tried again every `retry`.
    pub fn new(
        cluster: String,
        token: Option<crate::server::auth::Token>,
        (me, peers): (
            std::sync::Arc<parking_lot::RwLock<Option<String>>>,
            super::batcher::Peers,
        ),
        group: Group,
        (connect_timeout, retry): (Duration, Duration),
        tls: &crate::tls::ClientTls,
    ) -> Network {
        let http = tls
            .builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Network {
            http,
            cluster,
            token,
            group,
            me,
            peers,
            retry,
        }
    }
}

pub struct Connection {
    net: Network,
    target: NodeId,
    url: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            net: self.clone(),
            target,
            url: node.addr.trim_end_matches('/').to_owned(),
        }
    }
}

impl Connection {
    /// Posts `req` to the peer's `path`; the body of a 2xx answer.
    async fn post<Req: Serialize>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<reqwest::Response, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut r = self
            .net
            .http
            .post(format!("{}{path}", self.url))
            .timeout(timeout)
            .header(CLUSTER_HEADER, &self.net.cluster)
            .json(req);
        if let Some(t) = &self.net.token {
            r = r.header(reqwest::header::AUTHORIZATION, t.header_value());
        }
        if let Some(g) = self.net.group.id() {
            r = r.header(GROUP_HEADER, g);
        }
        let resp = r.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let batches = resp
            .headers()
            .get(super::batcher::FEATURES_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|f| f.trim() == super::batcher::BATCHES));
        self.net.peers.answered(self.target, batches);
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("{path} answered {status}: {body}")),
            )));
        }
        Ok(resp)
    }

    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let resp = self.post(path, req, timeout).await.map_err(|e| match e {
            RPCError::Unreachable(u) => RPCError::Unreachable(u),
            RPCError::Network(n) => RPCError::Network(n),
            other => RPCError::Network(NetworkError::new(&other)),
        })?;
        let res: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Offers the snapshot in `files` and waits until the voter has downloaded,
    /// checked and installed it (see [`super::transfer`]).
    async fn offer(
        &self,
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        files: &SnapshotFiles,
        timeout: Duration,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let dir = files.dir.clone();
        let record = tokio::task::spawn_blocking(move || super::snapshot::record_file(&dir))
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
            .map_err(|e| {
                StreamingError::StorageError(
                    StorageIOError::read_snapshot(Some(meta.signature()), &e).into(),
                )
            })?;
        let Some(from) = self.net.me.read().clone() else {
            return Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::other("this voter's own URL is not known yet"),
            )));
        };
        let offer = Offer {
            vote,
            meta,
            record,
            from,
        };
        let resp = self
            .post(rpc::SNAPSHOT, &offer, timeout)
            .await
            .map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?;
        let answer: Answer = resp
            .json()
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    /// Tries an unreachable voter again every heartbeat interval (openraft's default
    /// is every 500 ms). A voter that restarts starts its election timer at once
    /// (300 to 450 ms by default): tried only every 500 ms, it often called an
    /// election before the leader reached it, and its higher term made the leader
    /// step down, on every restart of a follower.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.net.retry))
    }

    /// Sends at most [`APPEND_BYTES`] of entries (at least one) and answers a partial
    /// success for the prefix sent; the engine sends the rest next.
    async fn append_entries(
        &mut self,
        mut req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let keep = entries_within(&req.entries, APPEND_BYTES);
        let cut = keep < req.entries.len();
        req.entries.truncate(keep);
        let sent = req.entries.last().map(|e| e.log_id);
        // The follower commits no further than the last entry it was sent (openraft
        // takes the least of that and the leader's commit), as raft requires.
        let resp = self.call(rpc::APPEND, &req, option.hard_ttl()).await?;
        Ok(match resp {
            AppendEntriesResponse::Success if cut => AppendEntriesResponse::PartialSuccess(sent),
            other => other,
        })
    }

    /// Offers the snapshot; the voter fetches its files. Dropped when the engine
    /// closes the replication (`cancel`).
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let offer = self.offer(vote, snapshot.meta, &snapshot.snapshot, option.hard_ttl());
        tokio::select! {
            r = offer => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(rpc::VOTE, &req, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::types::Proposal;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64, words: usize) -> openraft::Entry<TypeConfig> {
        // Words of 8 bytes: 16 bytes each as counted.
        let deltas = (0..words).map(|i| (format!("w{i:07}"), 1)).collect();
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal::new(deltas, None)),
        }
    }

    #[test]
    fn an_append_carries_the_entries_within_its_budget_and_at_least_one() {
        // 1,000 words: 16,000 bytes an entry.
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1000)).collect();
        assert_eq!(entries_within(&entries, 64_000), 4);
        assert_eq!(entries_within(&entries, 63_999), 3);
        assert_eq!(entries_within(&entries, usize::MAX), 10);
        // One entry larger than the budget still goes, alone.
        assert_eq!(entries_within(&[entry(1, 100_000)], 64_000), 1);
        assert_eq!(entries_within(&[], 64_000), 0);
        let blank = openraft::Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Blank,
        };
        assert_eq!(entries_within(&vec![blank; 100], APPEND_BYTES), 100);
    }
}
