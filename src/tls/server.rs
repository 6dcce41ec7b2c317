//! A node's side of TLS: its certificate and key, reloaded on SIGHUP (connections
//! accepted after a reload use the new pair; a pair that does not load is refused and
//! the old one keeps serving), the handshake of each accepted connection (a plain HTTP
//! request is answered with a 400 that says to use `https://`), and, with
//! `--tls-client-ca`, the guard that asks for a verified client certificate on the
//! routes that carry replication, raft and admin traffic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::Trust;
use super::pem::{TlsError, provider, read_certs, read_key, read_roots};
use crate::throttle::LogThrottle;

/// Handshakes that failed (bad or missing certificates, wrong protocol, timeouts).
pub static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Connections that spoke plain HTTP to the TLS port (answered 400).
pub static PLAIN_HTTP_REFUSED: AtomicU64 = AtomicU64::new(0);
/// Reloads of the certificate and key that took effect, and that were refused.
pub static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
pub static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);
/// When the certificate in use expires (Unix seconds; 0: no TLS).
pub static CERT_NOT_AFTER: AtomicI64 = AtomicI64::new(0);

/// The files a node's TLS is read from (again at every reload).
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// The certificate chain (PEM), the node's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Set: client certificates must chain to these CAs, and the replication, raft and
    /// admin routes refuse a request whose connection presented none.
    pub client_ca: Option<PathBuf>,
}

/// What a certificate says about itself, for logs and `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    pub fn of(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An RFC 3339 time for Unix seconds.
fn rfc3339(secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
        .to_string()
}

/// One loaded certificate and key, with the server config built on them.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

fn load(paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let certs = read_certs(&paths.cert)?;
    let info = CertInfo::of(&certs[0]).map_err(|e| TlsError::file(&paths.cert, e))?;
    if info.not_after <= now_secs() {
        return Err(TlsError::file(
            &paths.cert,
            format!("the certificate expired at {}", rfc3339(info.not_after)),
        ));
    }
    let key = read_key(&paths.key)?;
    let key = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        TlsError::file(
            &paths.key,
            format!("is not the key of {}: {e}", paths.cert.display()),
        )
    })?;
    let key = Arc::new(key);
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &paths.client_ca {
        Some(ca) => {
            let roots = read_roots(ca)?;
            // Asked of every client, required only by the routes that need it (see
            // `require_client_cert`): readers and writers keep using the token alone.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::file(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key.clone())));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // TLS 1.3 session tickets (keys in memory, rotated): a client that reconnects (a
    // node after an idle pool drop, the CLI) resumes instead of a full handshake.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Loaded {
        config: Arc::new(config),
        key,
        info,
    })
}

/// The outcome of the last reload, for `/health`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reload {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node's TLS state: the pair in use and how it got there.
pub struct ServerTls {
    paths: TlsPaths,
    current: RwLock<Loaded>,
    last_reload: Mutex<Option<Reload>>,
    /// The CA the node's own calls trust (`--tls-ca`), reloaded with the pair.
    trust: Option<Arc<Trust>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// The `tls` section of `/health`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TlsHealth {
    pub cert: String,
    pub subject: String,
    pub issuer: String,
    /// RFC 3339.
    pub not_after: String,
    /// Seconds until the certificate expires (negative once it has).
    pub expires_in_s: i64,
    /// Whether the replication, raft and admin routes require a client certificate.
    pub client_certificates_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<Reload>,
}

impl TlsHealth {
    /// What `/health` lists as a problem: an expired certificate (clients refuse it).
    pub fn problem(&self) -> Option<String> {
        (self.expires_in_s <= 0).then(|| {
            format!(
                "the TLS certificate {} expired at {}: clients refuse it; replace the files and send SIGHUP",
                self.cert, self.not_after
            )
        })
    }
}

impl ServerTls {
    /// Loads the pair (and the client CAs): an error here stops the node at start.
    /// `trust`, the CA the node's own calls trust, is read again with the pair.
    pub fn load(paths: TlsPaths, trust: Option<Arc<Trust>>) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = load(&paths)?;
        CERT_NOT_AFTER.store(loaded.info.not_after, Relaxed);
        tracing::info!(
            cert = %paths.cert.display(),
            subject = %loaded.info.subject,
            not_after = %rfc3339(loaded.info.not_after),
            client_certificates = paths.client_ca.is_some(),
            "serving TLS"
        );
        Ok(Arc::new(ServerTls {
            paths,
            current: RwLock::new(loaded),
            last_reload: Mutex::new(None),
            trust,
        }))
    }

    /// Reads the files again. On success, connections accepted from now on use the new
    /// pair (open ones keep theirs); on failure the pair in use keeps serving.
    pub fn reload(&self) -> Result<(), TlsError> {
        let at = rfc3339(now_secs());
        // Held until the outcome is recorded: `/health` (which takes it first) never
        // shows the new certificate beside the reload before this one.
        let mut last_reload = self.last_reload.lock();
        let pair = load(&self.paths).map(|loaded| {
            tracing::info!(
                subject = %loaded.info.subject,
                not_after = %rfc3339(loaded.info.not_after),
                "TLS certificate and key reloaded: new connections use them"
            );
            CERT_NOT_AFTER.store(loaded.info.not_after, Relaxed);
            *self.current.write() = loaded;
        });
        if let Err(e) = &pair {
            tracing::error!(
                error = %e,
                "TLS reload refused: the certificate and key in use keep serving"
            );
        }
        // The CA this node trusts when it calls others (--tls-ca), read again too.
        let trust = self.trust.as_ref().map_or(Ok(()), |t| t.reload());
        match &trust {
            Ok(()) if self.trust.is_some() => {
                tracing::info!("TLS CA for calls to other nodes reloaded (--tls-ca)")
            }
            Ok(()) => {}
            Err(e) => tracing::error!(
                error = %e,
                "TLS CA reload refused (--tls-ca): the CA in use stays trusted"
            ),
        }
        let result = pair.and(trust);
        if result.is_ok() {
            RELOADS_OK.fetch_add(1, Relaxed);
        } else {
            RELOADS_FAILED.fetch_add(1, Relaxed);
        }
        *last_reload = Some(Reload {
            at,
            ok: result.is_ok(),
            error: result.as_ref().err().map(|e| e.to_string()),
        });
        result
    }

    /// Whether the replication, raft and admin routes require a client certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.paths.client_ca.is_some()
    }

    /// The acceptor for a connection accepted now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().config.clone())
    }

    /// The node's certificate as the client certificate of its own calls to other
    /// nodes (replication, registration, raft): it follows reloads.
    pub fn identity(self: &Arc<Self>) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(NodeIdentity(self.clone()))
    }

    pub fn health(&self) -> TlsHealth {
        let last = self.last_reload.lock();
        let info = self.current.read().info.clone();
        let last_reload = last.clone();
        drop(last);
        TlsHealth {
            cert: self.paths.cert.display().to_string(),
            subject: info.subject,
            issuer: info.issuer,
            not_after: rfc3339(info.not_after),
            expires_in_s: info.not_after - now_secs(),
            client_certificates_required: self.requires_client_certs(),
            last_reload,
        }
    }
}

/// The node's own pair, presented when a node it calls asks for a client certificate.
#[derive(Debug)]
struct NodeIdentity(Arc<ServerTls>);

impl rustls::client::ResolvesClientCert for NodeIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.read().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Listens for SIGHUP now (so a signal sent once this returns is not missed) and
/// returns a future that reloads `tls` on each one until it is dropped. A node without
/// TLS logs that there is nothing to reload.
pub fn reload_on_sighup(
    tls: Option<Arc<ServerTls>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    if let Err(e) = &hup {
        tracing::warn!(error = %e, "cannot listen for SIGHUP: a TLS reload needs a restart");
    }
    async move {
        let Ok(mut hup) = hup else { return };
        reload_loop(&mut hup, tls).await
    }
}

async fn reload_loop(hup: &mut tokio::signal::unix::Signal, tls: Option<Arc<ServerTls>>) {
    while hup.recv().await.is_some() {
        match &tls {
            Some(tls) => {
                tracing::info!("SIGHUP: reloading the TLS certificate and key");
                // File reads, off the threads that serve.
                let tls = tls.clone();
                let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
            }
            None => tracing::info!("SIGHUP: this node serves no TLS; nothing to reload"),
        }
    }
}

/// Whether the connection a request came on presented a client certificate that
/// verified against `--tls-client-ca` (set on every request of a TLS connection).
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate(pub bool);

static HANDSHAKE_LOG: LogThrottle = LogThrottle::new();
static PLAIN_LOG: LogThrottle = LogThrottle::new();

/// The TLS handshake of an accepted connection, within `within`. `None` (logged,
/// counted) when it fails; a connection that speaks plain HTTP is answered `400` with
/// a JSON body saying to use `https://`.
pub async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    within: Duration,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    ClientCertificate,
)> {
    let deadline = tokio::time::Instant::now() + within;
    // A TLS connection opens with a handshake record (0x16); an HTTP request with a
    // method name in capitals.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            refuse_plain_http(tcp, peer).await;
            return None;
        }
        Ok(Ok(1)) => {}
        Ok(_) => return None, // Closed before a byte, or a socket error.
        Err(_) => {
            handshake_failed(peer, "no data within the handshake timeout");
            return None;
        }
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let verified = stream.get_ref().1.peer_certificates().is_some();
            Some((stream, ClientCertificate(verified)))
        }
        Ok(Err(e)) => {
            handshake_failed(peer, &e.to_string());
            None
        }
        Err(_) => {
            handshake_failed(peer, "not finished within the handshake timeout");
            None
        }
    }
}

fn handshake_failed(peer: SocketAddr, why: &str) {
    HANDSHAKE_FAILURES.fetch_add(1, Relaxed);
    if let Some(unlogged) = HANDSHAKE_LOG.tick() {
        tracing::warn!(
            %peer,
            error = why,
            hint = handshake_hint(why),
            unlogged,
            "TLS handshake failed: connection closed"
        );
    }
}

/// What a handshake error most likely means, for the operator reading the log.
fn handshake_hint(why: &str) -> &'static str {
    if why.contains("received fatal alert") {
        "the client refused this node's certificate: does it trust the CA that signed it, \
         and does the certificate name the host the client dialled?"
    } else if why.contains("UnknownIssuer") || why.contains("BadSignature") {
        "the client's certificate is not signed by a CA in --tls-client-ca"
    } else if why.contains("xpired") {
        "the client's certificate has expired"
    } else if why.contains("corrupt message") || why.contains("InvalidContentType") {
        "the client does not speak TLS"
    } else {
        "see the error"
    }
}

async fn refuse_plain_http(mut tcp: TcpStream, peer: SocketAddr) {
    PLAIN_HTTP_REFUSED.fetch_add(1, Relaxed);
    if let Some(unlogged) = PLAIN_LOG.tick() {
        tracing::warn!(%peer, unlogged, "plain HTTP on the TLS port: answered 400 (use https://)");
    }
    let body = br#"{"error":"this node serves HTTPS only: use an https:// URL"}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let wrote = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body).await?;
        tcp.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(2), wrote)
        .await
        .is_ok_and(|r| r.is_ok())
    {
        // Read what the client sent (up to a limit) before closing, so the close is
        // not a reset that could discard the answer on its way.
        let mut sink = [0u8; 8192];
        let mut left = 1usize << 20;
        let drain = async {
            while left > 0 {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `node.pem` and `node-key.pem` in `dir`, no client CA.
    fn paths_in(dir: &std::path::Path) -> TlsPaths {
        TlsPaths {
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            client_ca: None,
        }
    }

    #[test]
    fn a_pair_that_does_not_fit_is_refused_and_the_old_one_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::certs::Ca::new("test CA").unwrap();
        let a = ca.issue("node a", &["127.0.0.1"]).unwrap();
        let b = ca.issue("node b", &["127.0.0.1"]).unwrap();
        let paths = paths_in(dir.path());
        a.write(&paths.cert, &paths.key).unwrap();
        let tls = ServerTls::load(paths.clone(), None).unwrap();
        assert_eq!(tls.health().subject, "CN=node a");
        // b's certificate with a's key.
        std::fs::write(&paths.cert, b.cert_pem()).unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("is not the key of"), "{err}");
        assert_eq!(tls.health().subject, "CN=node a");
        assert!(!tls.health().last_reload.unwrap().ok);
        std::fs::write(&paths.cert, "not pem").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        b.write(&paths.cert, &paths.key).unwrap();
        tls.reload().unwrap();
        assert_eq!(tls.health().subject, "CN=node b");
        assert!(tls.health().last_reload.unwrap().ok);
    }

    #[test]
    fn a_fifo_a_device_or_a_huge_file_as_the_certificate_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::certs::Ca::new("test CA").unwrap();
        let a = ca.issue("node a", &["127.0.0.1"]).unwrap();
        let paths = paths_in(dir.path());
        a.write(&paths.cert, &paths.key).unwrap();
        let tls = ServerTls::load(paths.clone(), None).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let huge = dir.path().join("huge.pem");
        std::fs::write(&huge, vec![b'A'; (crate::tls::MAX_PEM_BYTES + 1) as usize]).unwrap();
        for (target, says) in [
            (fifo.as_path(), "a FIFO"),
            (std::path::Path::new("/dev/zero"), "a device"),
            (huge.as_path(), "limit for a PEM file"),
        ] {
            for path in [&paths.cert, &paths.key] {
                std::fs::remove_file(path).unwrap();
                std::os::unix::fs::symlink(target, path).unwrap();
            }
            let started = std::time::Instant::now();
            let err = tls.reload().unwrap_err().to_string();
            assert!(err.contains(says), "{target:?}: {err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            assert_eq!(tls.health().subject, "CN=node a");
            for path in [&paths.cert, &paths.key] {
                std::fs::remove_file(path).unwrap();
            }
            a.write(&paths.cert, &paths.key).unwrap();
        }
        tls.reload().unwrap();
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::certs::Ca::new("test CA").unwrap();
        let old = ca.issue_expired("old", &["127.0.0.1"]).unwrap();
        let paths = paths_in(dir.path());
        old.write(&paths.cert, &paths.key).unwrap();
        let err = ServerTls::load(paths, None).unwrap_err().to_string();
        assert!(err.contains("expired at"), "{err}");
    }
}
