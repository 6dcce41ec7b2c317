//! What a node or a tool trusts when it calls a node (`--tls-ca`, or the system's
//! roots, reloadable), the certificate it presents, and which peer URLs it refuses.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;

use super::pem::{TlsError, provider, read_certs, read_key, read_roots};

/// A private CA a client trusts, read again on [`Trust::reload`] (a node's SIGHUP): the
/// CA can be rotated without a restart. Verification is webpki's, against the roots
/// loaded last.
#[derive(Debug)]
pub struct Trust {
    path: std::path::PathBuf,
    current: parking_lot::RwLock<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl Trust {
    pub fn load(path: &Path) -> Result<Arc<Trust>, TlsError> {
        Ok(Arc::new(Trust {
            path: path.to_owned(),
            current: parking_lot::RwLock::new(Trust::verifier(path)?),
        }))
    }

    fn verifier(path: &Path) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            read_roots(path)?.into(),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::file(path, e))
    }

    /// Reads the CA file again; on failure the roots in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let v = Trust::verifier(&self.path)?;
        *self.current.write() = v;
        Ok(())
    }

    fn now(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        self.current.read().clone()
    }
}

impl rustls::client::danger::ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.now()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.now().supported_verify_schemes()
    }
}

/// What a client trusts when it calls a node over `https://`, and the certificate it
/// presents when the node asks for one. Plain `http://` URLs are unaffected.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// Where the roots came from, for messages.
    trusts: Arc<str>,
    /// The calls of a node that serves TLS: see [`ClientTls::check_peer`].
    refuses_plain_peers: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("trusts", &self.trusts)
            .field("refuses_plain_peers", &self.refuses_plain_peers)
            .field(
                "presents_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl Default for ClientTls {
    /// The system's roots, no client certificate.
    fn default() -> Self {
        static SYSTEM: OnceLock<ClientTls> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                ClientTls::new(None, None).expect("a client config with the system roots")
            })
            .clone()
    }
}

impl ClientTls {
    /// Trusts only the CA certificates of `trust` (a private CA; the system's roots
    /// are not trusted then, so a certificate any public CA issued cannot pose as a
    /// node), or else the system's roots; presents `identity`'s certificate when asked.
    pub fn new(
        trust: Option<Arc<Trust>>,
        identity: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    ) -> Result<ClientTls, TlsError> {
        let versions = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let (builder, trusts) = match &trust {
            Some(t) => {
                let builder = versions
                    .dangerous()
                    .with_custom_certificate_verifier(t.clone());
                (builder, t.path.display().to_string())
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                let builder = versions.with_root_certificates(roots);
                (builder, "the system's roots".to_owned())
            }
        };
        let mut config = match identity {
            Some(id) => builder.with_client_cert_resolver(id),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            trusts: trusts.into(),
            refuses_plain_peers: false,
        })
    }

    /// The client of a node that serves TLS: [`ClientTls::check_peer`] refuses plain
    /// `http://` peers on other hosts.
    pub fn for_tls_node(mut self) -> ClientTls {
        self.refuses_plain_peers = true;
        self
    }

    /// `Err(why)` when this client must not call `url`: it is a TLS node's, and `url` is
    /// a plain `http://` URL of another host, which would receive the token, and every
    /// word, in clear. (Loopback is the same host: allowed.) Checked wherever a node
    /// takes a peer's URL: replicas, raft members, a replica's `--leader`.
    pub fn check_peer(&self, url: &str) -> Result<(), String> {
        match plain_peer(url) {
            Some(why) if self.refuses_plain_peers => Err(why),
            _ => Ok(()),
        }
    }

    /// A client for tools: trusts `ca` (or the system's roots) and presents the
    /// certificate in `cert` with the key in `key`, if given.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, TlsError> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => {
                let ck = rustls::sign::CertifiedKey::from_der(
                    read_certs(cert)?,
                    read_key(key)?,
                    &provider(),
                )
                .map_err(|e| {
                    TlsError::file(key, format!("does not fit {}: {e}", cert.display()))
                })?;
                Some(Arc::new(rustls::sign::SingleCertAndKey::from(ck))
                    as Arc<dyn rustls::client::ResolvesClientCert>)
            }
            (None, None) => None,
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both --tls-cert and --tls-key".into(),
                ));
            }
        };
        if ca.is_none() && identity.is_none() {
            return Ok(ClientTls::default());
        }
        ClientTls::new(ca.map(Trust::load).transpose()?, identity)
    }

    /// A `reqwest` client builder that uses this config for `https://` URLs.
    pub fn builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().use_preconfigured_tls((*self.config).clone())
    }
}

/// `Some(why)` when `url` is a plain `http://` URL of another host.
fn plain_peer(url: &str) -> Option<String> {
    crate::origin::is_plain_http_elsewhere(url).then(|| {
        format!(
            "{url}: this node serves TLS, and a plain http:// peer on another host would \
             receive the token and the data in clear: use https://"
        )
    })
}

/// An error with its causes, `: `-separated: what a TLS failure inside a request looks
/// like in a log line (`reqwest`'s own message names only the URL).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// A TLS server on loopback that serves `pair` and completes handshakes.
    async fn serve(pair: &crate::tls::certs::Issued) -> std::net::SocketAddr {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pair.cert_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(pair.key_pem().as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::pem::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        use tokio::io::AsyncReadExt;
                        let mut b = [0u8; 1];
                        let _ = s.read(&mut b).await;
                    }
                });
            }
        });
        addr
    }

    async fn handshake(tls: &super::ClientTls, addr: std::net::SocketAddr) -> Result<(), String> {
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        connector
            .connect(name, tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_reload_of_the_trusted_ca_takes_effect_on_the_next_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            crate::tls::certs::Ca::new("old CA").unwrap(),
            crate::tls::certs::Ca::new("new CA").unwrap(),
        );
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, old.cert_pem()).unwrap();
        let trust = super::Trust::load(&ca_file).unwrap();
        let tls = super::ClientTls::new(Some(trust.clone()), None).unwrap();
        let addr = serve(&new.issue("node", &["127.0.0.1"]).unwrap()).await;
        let err = handshake(&tls, addr).await.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        // Both CAs (a rotation under way), then reload: the new one's node is trusted.
        std::fs::write(&ca_file, format!("{}{}", old.cert_pem(), new.cert_pem())).unwrap();
        trust.reload().unwrap();
        handshake(&tls, addr).await.unwrap();
        // A broken file is refused and the roots in use stay.
        std::fs::write(&ca_file, "garbage").unwrap();
        assert!(trust.reload().is_err());
        handshake(&tls, addr).await.unwrap();
    }

    #[test]
    fn a_tls_node_calls_plain_http_only_on_its_own_host() {
        use super::plain_peer;
        for ok in [
            "https://db2:8081",
            "http://127.0.0.1:8081",
            "http://127.9.9.9:1",
            "http://localhost:8081",
            "http://LOCALHOST:1",
            "http://[::1]:8081",
        ] {
            assert_eq!(plain_peer(ok), None, "{ok}");
        }
        let node = super::ClientTls::default().for_tls_node();
        for refused in [
            "http://db2:8081",
            "http://10.0.0.2:8081",
            "http://[2001:db8::1]:1",
        ] {
            let why = plain_peer(refused).unwrap_or_else(|| panic!("{refused} allowed"));
            assert!(why.contains("https://"), "{why}");
            // Only the client of a node that serves TLS applies the rule.
            assert_eq!(node.check_peer(refused), Err(why));
            assert_eq!(super::ClientTls::default().check_peer(refused), Ok(()));
        }
    }
}
