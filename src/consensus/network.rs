//! How voters reach each other: raft's three RPCs as JSON over HTTP POST to
//! `/raft/append`, `/raft/vote` and `/raft/snapshot`, carrying the cluster id and the
//! token (see [`super::routes`] for the receiving side).

use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CLUSTER_HEADER, NodeId, TypeConfig};

/// Makes a connection per peer; all share one HTTP client (and its pool).
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    cluster: String,
    /// The `Authorization` header value, if the group has a token.
    token: Option<String>,
}

impl Network {
    /// Each RPC's own deadline is the engine's (`RPCOption`); `connect_timeout` bounds
    /// reaching a peer.
    pub fn new(
        cluster: String,
        token: Option<String>,
        connect_timeout: Duration,
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
        let mut r = self
            .net
            .http
            .post(format!("{}{path}", self.url))
            .timeout(timeout)
            .header(CLUSTER_HEADER, &self.net.cluster)
            .json(req);
        if let Some(t) = &self.net.token {
            r = r.header(reqwest::header::AUTHORIZATION, t);
        }
        let resp = r.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("{path} answered {status}: {body}")),
            )));
        }
        let res: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/append", &req, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", &req, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/vote", &req, option.hard_ttl()).await
    }
}
