//! Throwaway certificates (rcgen, ECDSA P-256): a private CA and the certificates it
//! issues, for `memdb certs`, `make start-servers-tls` and the tests. A node
//! certificate is good for both ends (server and client authentication), as etcd's
//! peer certificates are: a node presents the same pair when it calls another node.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::fs::write_atomically_mode;

/// How long a certificate made here is valid (from a day ago: clocks differ).
pub const VALIDITY_DAYS: i64 = 365;

/// A certificate and its private key, as PEM.
#[derive(Clone)]
pub struct Issued {
    cert: String,
    key: String,
}

impl Issued {
    pub fn cert_pem(&self) -> &str {
        &self.cert
    }

    pub fn key_pem(&self) -> &str {
        &self.key
    }

    /// Writes the certificate and (mode 0600) the key, each through a temp file renamed
    /// into place, so a reload never reads half a file.
    pub fn write(&self, cert: &Path, key: &Path) -> std::io::Result<()> {
        write_file(key, &self.key, 0o600)?;
        write_file(cert, &self.cert, 0o644)
    }
}

/// Replaces `path` with `text` atomically (see [`write_atomically_mode`]).
fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path");
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(invalid)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let temp = format!(".{name}.tmp");
    write_atomically_mode(dir, name, &temp, text.as_bytes(), mode).map(|_| ())
}

/// A private certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: String,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(VALIDITY_DAYS * 5);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert,
        })
    }

    /// The CA whose certificate and key are these PEM texts.
    pub fn from_pem(cert: &str, key: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::from_pem(key)?;
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(cert, key)?,
            cert: cert.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `name`, valid for `hosts` (DNS names or IP addresses), good
    /// for serving and for calling other nodes.
    pub fn issue(&self, name: &str, hosts: &[&str]) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            name,
            hosts,
            now - Duration::days(1),
            now + Duration::days(VALIDITY_DAYS),
        )
    }

    /// As [`Ca::issue`], but it expired yesterday (for tests).
    pub fn issue_expired(&self, name: &str, hosts: &[&str]) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            name,
            hosts,
            now - Duration::days(30),
            now - Duration::days(1),
        )
    }

    /// As [`Ca::issue`], but it expires `after` from now (for tests of expiry).
    pub fn issue_expiring(
        &self,
        name: &str,
        hosts: &[&str],
        after: std::time::Duration,
    ) -> Result<Issued, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(name, hosts, now - Duration::days(1), now + after)
    }

    /// A certificate for `name` and `hosts`, valid from `not_before` to `not_after`.
    fn issue_between(
        &self,
        name: &str,
        hosts: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        let mut params = leaf_params(name, hosts)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn leaf_params(name: &str, hosts: &[&str]) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// What `memdb certs` wrote.
#[derive(Debug, serde::Serialize)]
pub struct Written {
    /// The CA was made now (else the one in the directory issued the certificate).
    pub new_ca: bool,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// `memdb certs`: in `dir` (created 0700), the CA in `ca.pem` and `ca-key.pem` (made if
/// missing, else reused) issues `<name>.pem` and `<name>-key.pem` for `hosts`. An
/// existing certificate is replaced only with `replace` (a rotation).
pub fn write_dir(dir: &Path, name: &str, hosts: &[&str], replace: bool) -> anyhow::Result<Written> {
    use anyhow::Context;
    use std::os::unix::fs::DirBuilderExt;
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "--name {name:?}: use letters, digits, '-', '_' and '.'"
    );
    anyhow::ensure!(name != "ca", "--name ca is the CA's own file");
    anyhow::ensure!(!hosts.is_empty(), "name at least one --host");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    if !replace && (cert.exists() || key.exists()) {
        anyhow::bail!(
            "{} already exists: pass --replace to issue a new pair in its place (a rotation)",
            cert.display()
        );
    }
    let new_ca = !ca_cert.exists();
    let ca = if new_ca {
        anyhow::ensure!(
            !ca_key.exists(),
            "{} exists without {}: refusing to replace a CA key",
            ca_key.display(),
            ca_cert.display()
        );
        let ca = Ca::new("memdb throwaway CA")?;
        write_file(&ca_key, &ca.key_pem(), 0o600)?;
        write_file(&ca_cert, ca.cert_pem(), 0o644)?;
        ca
    } else {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ca::from_pem(&read(&ca_cert)?, &read(&ca_key)?)
            .with_context(|| format!("loading the CA in {}", dir.display()))?
    };
    ca.issue(name, hosts)?
        .write(&cert, &key)
        .with_context(|| format!("writing {}", cert.display()))?;
    let s = |p: &Path| p.display().to_string();
    Ok(Written {
        new_ca,
        ca: s(&ca_cert),
        cert: s(&cert),
        key: s(&key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_ca_and_replaces_a_pair_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("certs");
        let w = write_dir(&d, "node", &["127.0.0.1", "localhost"], false).unwrap();
        assert!(w.new_ca);
        let ca1 = std::fs::read(d.join("ca.pem")).unwrap();
        let err = write_dir(&d, "node", &["127.0.0.1"], false).unwrap_err();
        assert!(err.to_string().contains("--replace"), "{err}");
        let first = std::fs::read(d.join("node.pem")).unwrap();
        let w = write_dir(&d, "node", &["127.0.0.1"], true).unwrap();
        assert!(!w.new_ca);
        assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), ca1);
        assert_ne!(std::fs::read(d.join("node.pem")).unwrap(), first);
        // The new pair chains to the same CA and fits its key.
        let certs = crate::tls::read_certs(&d.join("node.pem")).unwrap();
        let info = crate::tls::server::CertInfo::of(&certs[0]).unwrap();
        assert_eq!(info.issuer, "CN=memdb throwaway CA");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("node-key.pem"), 0o600);
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert!(write_dir(&d, "../x", &["a"], false).is_err());
        assert!(write_dir(&d, "x", &[], false).is_err());
    }
}
