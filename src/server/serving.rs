//! How a node serves, the same for every role: its credentials, TLS and request
//! limits (filled from flags by the binary, re-exported by [`crate::config`]).

use std::time::Duration;

/// How a node serves, the same for every role: who may call what, and its limits.
/// `guarded` routes (writes, replication, bulk reads, admin) need the token when one is
/// set; lookups need it only with `protect_reads`; `/health` never does.
#[derive(Debug, Clone, Default)]
pub struct Serving {
    /// Required (as `Authorization: Bearer`) on guarded routes; None: no authentication.
    pub auth_token: Option<super::auth::Token>,
    /// Required instead of `auth_token` on the peer routes (replication, raft, admin),
    /// and sent on this node's calls to its peers; None: the client token serves both.
    pub peer_token: Option<super::auth::Token>,
    /// Also require the token on `/wordcount` and `/metrics`.
    pub protect_reads: bool,
    pub limits: Limits,
    /// Set: the node serves HTTPS only, with this certificate (see [`crate::tls`]).
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// What the node trusts (and presents) when it calls other nodes over `https://`.
    pub client_tls: crate::tls::ClientTls,
}

impl Serving {
    /// How the node accepts connections: its limits, and whether requests learn the
    /// address they came from (where a token is checked, failures are throttled by it).
    pub fn connections(&self) -> super::listen::Connections {
        super::listen::Connections {
            client_addresses: self.auth_token.is_some() || self.peer_token.is_some(),
            ..self.limits.connections
        }
    }

    /// What the peer routes require and this node presents to its peers: the peer
    /// token, or the client token when no peer token is set.
    pub fn peer_credential(&self) -> Option<&super::auth::Token> {
        self.peer_token.as_ref().or(self.auth_token.as_ref())
    }
}

/// Limits every node applies to its requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests handled at once; beyond it a request is answered 503 at once.
    pub max_concurrent: usize,
    /// Longest a request may take before it is answered 503; zero for no limit.
    pub request_timeout: Duration,
    /// Requests per second the node accepts (bursts of as many); beyond it 429.
    /// `/health`, `/metrics` and replication (`/update`, `/replicas`, `/sync`) are
    /// exempt: a flood of reads must not starve the leader's pushes.
    pub rate_limit: Option<u32>,
    /// Bytes of request bodies (by their declared length, or the body limit when it
    /// is not declared) being handled at once; beyond it 503 at once.
    pub max_body_in_flight: usize,
    /// Idle and header timeouts, and the connection cap.
    pub connections: super::listen::Connections,
    /// `/top` requests that need a pass over the whole table, run at once; more are
    /// answered 429.
    pub max_scans: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent: 4096,
            request_timeout: Duration::from_secs(30),
            rate_limit: None,
            max_body_in_flight: 256 << 20,
            connections: super::listen::Connections::default(),
            max_scans: 1,
        }
    }
}
