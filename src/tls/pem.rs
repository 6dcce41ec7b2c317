//! Reading TLS material: PEM certificates, keys and CA bundles (regular files of
//! bounded size only), and the crypto provider every config uses.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {what}")]
    File { path: String, what: String },
    #[error("{0}")]
    Config(String),
}

impl TlsError {
    pub(super) fn file(path: &Path, what: impl std::fmt::Display) -> TlsError {
        TlsError::File {
            path: path.display().to_string(),
            what: what.to_string(),
        }
    }
}

/// The crypto provider every TLS config here is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The most a PEM file may hold: a certificate chain, a key or a CA bundle is a few
/// kilobytes; the system's whole root store is under a megabyte.
pub const MAX_PEM_BYTES: u64 = 4 << 20;

/// The bytes of a PEM file, read by the snapshot loader's rules: a regular file only,
/// opened without blocking (a FIFO or a device named as a certificate would otherwise
/// hang or fill the node), no larger than [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use crate::fs::OpenError;
    use std::io::Read;
    let (file, meta) = crate::fs::open_regular(path, MAX_PEM_BYTES).map_err(|e| match e {
        OpenError::TooLarge { len, max } => TlsError::file(
            path,
            format!("is {len} bytes, over the {max}-byte limit for a PEM file"),
        ),
        e => TlsError::file(path, e),
    })?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError::file(path, e))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::file(
            path,
            "grew past the size a PEM file may have",
        ));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, pem_error(e)))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::file(path, "holds no PEM private key")
        }
        e => TlsError::file(path, pem_error(e)),
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        e => format!("not valid PEM ({e:?})"),
    }
}

/// A root store of the certificates in `path` (a private CA).
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::file(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}
