//! The flags that say who a node or tool is and whom it trusts: tokens (the client's
//! and the peers') and TLS.

use std::path::PathBuf;

use clap::Args;
use memdb::server::auth::Token;

/// A serving role's TLS: what it serves with, and what it trusts when it calls others.
#[derive(Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// Serve HTTPS only, with this certificate chain (PEM, the node's own first). The
    /// node also presents it when it calls other nodes, so it should allow both server
    /// and client authentication. SIGHUP reloads it and the key.
    #[arg(long, env = "MEMDB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "MEMDB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate signed by these CAs (PEM) on the routes that carry
    /// replication, raft and admin traffic (mutual TLS); reads and writes keep the token
    /// [default: --tls-ca, when given].
    #[arg(long, env = "MEMDB_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Trust only these CAs (PEM) when calling other nodes over https:// [default: the
    /// system's roots].
    #[arg(long, env = "MEMDB_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The node's TLS, and the client side of its calls to other nodes.
    pub(super) fn load(
        &self,
    ) -> anyhow::Result<(
        Option<std::sync::Arc<memdb::tls::ServerTls>>,
        memdb::tls::ClientTls,
    )> {
        use memdb::tls::{ClientTls, ServerTls, TlsPaths, Trust};
        let trust = self.tls_ca.as_deref().map(Trust::load).transpose()?;
        let server = match (&self.tls_cert, &self.tls_key) {
            // SIGHUP reloads the CA the node trusts along with its own pair.
            // Whenever TLS is on, the peer routes want a client certificate: from
            // --tls-client-ca, or else the CA this node trusts its peers by (--tls-ca).
            (Some(cert), Some(key)) => {
                let client_ca = self.tls_client_ca.clone().or_else(|| self.tls_ca.clone());
                if client_ca.is_none() {
                    eprintln!(
                        "warning: TLS without --tls-client-ca or --tls-ca: the replication, \
                         raft and admin routes are guarded by the token alone (give \
                         --tls-ca, the CA your nodes' certificates come from)"
                    );
                }
                Some(ServerTls::load(
                    TlsPaths {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca,
                    },
                    trust.clone(),
                )?)
            }
            _ => None,
        };
        let client = match &server {
            None if trust.is_none() => ClientTls::default(),
            None => ClientTls::new(trust, None)?,
            Some(server) => ClientTls::new(trust, Some(server.identity()))?.for_tls_node(),
        };
        Ok((server, client))
    }
}

/// What a client command trusts when it calls a node over https://.
#[derive(Args)]
#[command(next_help_heading = "TLS")]
pub struct ClientTlsArgs {
    /// Trust only these CAs (PEM) for https:// URLs [default: the system's roots].
    #[arg(long, env = "MEMDB_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) when a node asks (mutual TLS).
    #[arg(long, env = "MEMDB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "MEMDB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    pub fn client_tls(&self) -> anyhow::Result<memdb::tls::ClientTls> {
        Ok(memdb::tls::ClientTls::from_files(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?)
    }
}

#[derive(Args)]
pub struct AuthArgs {
    /// Bearer token required on writes, replication, /sync and admin routes (and on
    /// reads with --protect-reads); nodes send it to each other.
    #[arg(long, env = "MEMDB_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Read the token from this file instead (first line); SIGHUP reads it again.
    #[arg(long, env = "MEMDB_AUTH_TOKEN_FILE", conflicts_with = "auth_token")]
    pub auth_token_file: Option<PathBuf>,
    /// Require the token on the reads too (GET /wordcount, /top, /metrics, the status page).
    #[arg(long, env = "MEMDB_PROTECT_READS")]
    pub protect_reads: bool,
    /// The nodes' own credential: required (instead of --auth-token) on the routes that
    /// carry replication, raft and admin traffic (/sync, /update, /replicas, /raft/*),
    /// and sent on a node's calls to its peers. Clients that may write cannot then
    /// forge replication or raft traffic [default: the client token serves both].
    #[arg(long, env = "MEMDB_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
    /// Read the peer token from this file instead (first line); SIGHUP reads it again.
    #[arg(long, env = "MEMDB_PEER_TOKEN_FILE", conflicts_with = "peer_token")]
    pub peer_token_file: Option<PathBuf>,
}

/// A token from a flag or the first line of a file; `what` names it in errors.
fn read_token(
    value: &Option<String>,
    file: &Option<PathBuf>,
    what: &'static str,
) -> anyhow::Result<Option<Token>> {
    let token = match (value, file) {
        (Some(t), _) => Token::new(t).ok_or_else(|| anyhow::anyhow!("the {what} is empty"))?,
        // Read again on SIGHUP.
        (None, Some(path)) => Token::from_file(path, what).map_err(|e| anyhow::anyhow!(e))?,
        (None, None) => return Ok(None),
    };
    if token.len() < memdb::server::auth::MIN_TOKEN_BYTES {
        eprintln!(
            "warning: the {what} is {} bytes long: one shorter than {} bytes can be \
             guessed; `head -c 24 /dev/urandom | base64` makes a good one",
            token.len(),
            memdb::server::auth::MIN_TOKEN_BYTES
        );
    }
    Ok(Some(token))
}

impl AuthArgs {
    pub(super) fn token(&self) -> anyhow::Result<Option<Token>> {
        let token = read_token(&self.auth_token, &self.auth_token_file, "auth token")?;
        anyhow::ensure!(
            token.is_some() || !self.protect_reads,
            "--protect-reads needs --auth-token"
        );
        Ok(token)
    }

    /// The peer token, which must differ from `client` (the client token read already).
    pub(super) fn peer_token(&self, client: Option<&Token>) -> anyhow::Result<Option<Token>> {
        let peer = read_token(&self.peer_token, &self.peer_token_file, "peer token")?;
        if let (Some(p), Some(c)) = (&peer, client) {
            anyhow::ensure!(
                !p.same_secret(c),
                "--peer-token must differ from --auth-token: a client holding the auth \
                 token could otherwise forge replication and raft traffic"
            );
        }
        Ok(peer)
    }
}
