//! Downloading a node's files as they are into a directory, and checking that what
//! arrived is the chain a manifest names: a network replica's binary bootstrap (the
//! leader's `GET /files`) and a voter receiving a raft snapshot (the sender's
//! `GET /raft/snapshot/files`) both go through it. Nothing is parsed into memory.
//!
//! - **Resumable.** A file downloads to `.<name>.<checksum>.part`; a part left by an
//!   interrupted download (a killed node, a dropped connection) is continued with
//!   `Range` and `If-Range` on the checksum. A file already in the directory with the
//!   checksum the manifest names is not downloaded again.
//! - **Clean on change.** A file replaced on the serving node mid-download answers 404,
//!   412 or the whole new file: [`fetch`] says so (`Ok(None)`) and the caller starts
//!   over from a new list.
//! - **Checked.** [`verify`] validates every file completely (length, checksum,
//!   archive) and the chain must be the one the manifest names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::Path;

use reqwest::StatusCode;

use super::{Client, ClientError, REQUEST_TIMEOUT, SYNC_TIMEOUT};
use crate::protocol::{Manifest, ManifestFile};
use crate::storage::mapped::MappedState;
use crate::storage::snapshot::{self, HEAD_READ_LEN};

/// Why files could not be brought in.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the manifest is not usable: {0}")]
    Manifest(String),
    #[error("{0}")]
    Io(String),
    #[error("the downloaded files do not make the table named: {0}")]
    Invalid(String),
    #[error("the files kept changing during {0} downloads")]
    Unsettled(usize),
}

impl Client {
    /// `GET /files`: the files a leader's table is made of. `Ok(None)` from a node
    /// that serves none (an older memdb): sync by `/sync` then.
    pub async fn manifest(&self) -> Result<Option<Manifest>, ClientError> {
        let (url, req) = self.get("/files", REQUEST_TIMEOUT);
        let resp = self.send(req, &url).await?;
        if matches!(
            resp.status(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(None);
        }
        Self::ok_json(resp, &url).await.map(Some)
    }

    /// `GET {dir}/{name}` (`dir` is `/files` on a leader) of the file whose checksum is
    /// `checksum` (16 hex digits), appended to `out` from byte `from` (a resumed
    /// download asks for the rest with `Range` and `If-Range`). Streams: memory stays
    /// one chunk. `Ok(false)` when the node no longer serves that file under `name` (a
    /// merge or compaction replaced it): start over from a new manifest. Failing to
    /// write `out` (a full disk here) is [`FetchError::Io`], not the node's fault.
    pub async fn download(
        &self,
        dir: &str,
        name: &str,
        checksum: &str,
        from: u64,
        out: &mut (impl std::io::Write + ?Sized),
    ) -> Result<bool, FetchError> {
        let tag = format!("\"{checksum}\"");
        let path = format!(
            "{dir}/{}",
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
        );
        let (url, mut req) = self.get(&path, SYNC_TIMEOUT);
        req = if from > 0 {
            req.header(reqwest::header::RANGE, format!("bytes={from}-"))
                .header(reqwest::header::IF_RANGE, &tag)
        } else {
            req.header(reqwest::header::IF_MATCH, &tag)
        };
        let mut resp = self.send(req, &url).await?;
        let status = resp.status();
        if matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::PRECONDITION_FAILED
        ) {
            return Ok(false);
        }
        let served = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok());
        let expected = if from > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if status.is_success() && served != Some(tag.as_str()) {
            return Ok(false); // Another file under the name now (If-Range sent it whole).
        }
        if status != expected {
            let body = resp.text().await.unwrap_or_default();
            return Err(ClientError::Status { url, status, body }.into());
        }
        if from > 0 {
            let starts = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if starts != Some(from) {
                return Err(ClientError::Protocol {
                    url,
                    what: format!("asked for the bytes from {from}, got {starts:?}"),
                }
                .into());
            }
        }
        let io = |e: std::io::Error| FetchError::Io(format!("writing the download of {url}: {e}"));
        loop {
            let chunk = resp.chunk().await.map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
            let Some(chunk) = chunk else { break };
            out.write_all(&chunk).map_err(io)?;
        }
        out.flush().map_err(io)?;
        Ok(true)
    }
}

/// Whether `name` is a file a download writes: a published file's name or a part.
pub fn ours(name: &str) -> bool {
    valid_name(name) || (name.starts_with('.') && name.ends_with(".part"))
}

fn is_recent(name: &str) -> bool {
    name.strip_prefix(snapshot::RECENT_PREFIX)
        .and_then(|r| r.strip_suffix(".memdb"))
        .is_some_and(|seq| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
}

/// A file name a manifest may name: one of the published names, nothing with a path.
pub fn valid_name(name: &str) -> bool {
    name == snapshot::FILE_NAME || name == snapshot::DELTA_NAME || is_recent(name)
}

/// A checksum as a manifest writes it: 16 hex digits.
pub fn parse_checksum(hex: &str) -> Option<u64> {
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Refuses a manifest that names a file outside the directory, or none.
pub fn check(m: &Manifest) -> Result<(), FetchError> {
    let bad = |what: String| Err(FetchError::Manifest(what));
    match m.files.first() {
        Some(f) if f.name == snapshot::FILE_NAME => {}
        _ => return bad(format!("it does not start with {}", snapshot::FILE_NAME)),
    }
    for f in &m.files {
        if !valid_name(&f.name) {
            return bad(format!("{:?} is not a file name memdb publishes", f.name));
        }
        if parse_checksum(&f.checksum).is_none() {
            return bad(format!("{:?} is not a checksum", f.checksum));
        }
    }
    if u64::from_str_radix(&m.digest, 16).is_err() {
        return bad(format!("{:?} is not a digest", m.digest));
    }
    Ok(())
}

/// The checksum in the header of the snapshot file at `path`, if it has a header.
pub fn checksum_of(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut head = vec![0; HEAD_READ_LEN.min(len as usize)];
    f.read_exact(&mut head).ok()?;
    snapshot::read_header(&head, len).ok().map(|h| h.checksum)
}

/// Whether the snapshot file at `path` is `f` (its header's checksum and its length).
fn holds(path: &Path, f: &ManifestFile) -> bool {
    parse_checksum(&f.checksum).is_some_and(|want| checksum_of(path) == Some(want))
        && fs::metadata(path).is_ok_and(|m| m.len() == f.len)
}

/// Brings `f` into `dir` under its name: already there, hard-linked from one of
/// `elsewhere` (directories that may hold the same file: a node's own), or downloaded
/// from `from`'s `{files}/{name}` (resuming a part). `Ok(Some(bytes downloaded))`, or
/// `Ok(None)` if the node no longer serves it. `snapshot` says whether `f` is a
/// snapshot file (whose header names its checksum): any other is always downloaded.
pub async fn fetch(
    from: &Client,
    files: &str,
    dir: &Path,
    f: &ManifestFile,
    elsewhere: &[&Path],
    snapshot: bool,
) -> Result<Option<u64>, FetchError> {
    let target = dir.join(&f.name);
    if snapshot {
        if holds(&target, f) {
            return Ok(Some(0));
        }
        for other in elsewhere {
            let there = other.join(&f.name);
            if holds(&there, f) {
                let _ = fs::remove_file(&target);
                if fs::hard_link(&there, &target).is_ok() {
                    return Ok(Some(0));
                }
            }
        }
    }
    let part = dir.join(format!(".{}.{}.part", f.name, f.checksum));
    let io = |what: &str| {
        let what = format!("{what} {}", part.display());
        move |e: io::Error| FetchError::Io(format!("{what}: {e}"))
    };
    let mut start = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if start > f.len {
        fs::remove_file(&part).map_err(io("removing"))?;
        start = 0;
    }
    if start < f.len || f.len == 0 {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .map_err(io("opening"))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        if !from
            .download(files, &f.name, &f.checksum, start, &mut out)
            .await?
        {
            drop(out);
            let _ = fs::remove_file(&part);
            return Ok(None);
        }
        // Not synced to disk here: every file is validated whole (checksum and
        // archive) before it is mapped, so one a crash left half written is refused
        // and downloaded again, never served. A caller that keeps it syncs it.
        out.into_inner()
            .map_err(|e| io("writing")(e.into_error()))?;
    }
    if fs::metadata(&part).map_err(io("reading"))?.len() != f.len {
        let _ = fs::remove_file(&part);
        return Err(FetchError::Invalid(format!(
            "{} did not download whole ({} bytes named)",
            f.name, f.len
        )));
    }
    fs::rename(&part, &target).map_err(io("renaming"))?;
    Ok(Some(f.len - start))
}

/// Removes from `dir` the files of ours (see [`ours`]) that `m` does not name: an
/// older chain's, parts of files no longer wanted.
pub fn remove_unnamed(dir: &Path, m: &Manifest) -> Result<(), FetchError> {
    let named = |n: &str| m.files.iter().any(|f| f.name == n);
    let entries = fs::read_dir(dir).map_err(|e| FetchError::Io(e.to_string()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ours(&name) && !named(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Maps the chain in `dir`, validating every file whole, and checks it is the one `m`
/// names (files, seq, words, tokenizer, digest). Returns it with its digest.
pub fn verify(dir: &Path, m: &Manifest) -> Result<(MappedState, u64), FetchError> {
    let invalid = |what: String| FetchError::Invalid(what);
    let state = MappedState::open(dir, u64::MAX, &|| false, &[])
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("no base".into()))?;
    let got: Vec<u64> = state.files().map(|f| f.header().checksum).collect();
    let want: Vec<u64> = m
        .files
        .iter()
        .rev()
        .map(|f| parse_checksum(&f.checksum).unwrap_or(0))
        .collect();
    if got != want || state.seq() != m.seq || state.words() != m.words {
        return Err(invalid(format!(
            "they map as {} files at seq {} with {} words, not the {} at seq {} with {} \
             words the manifest names",
            got.len(),
            state.seq(),
            state.words(),
            want.len(),
            m.seq,
            m.words
        )));
    }
    if state.header().tokenizer != m.tokenizer {
        return Err(invalid("they were counted with another tokenizer".into()));
    }
    let digest = u64::from_str_radix(&m.digest, 16)
        .map_err(|_| FetchError::Manifest(format!("{:?} is not a digest", m.digest)))?;
    // A version 4 delta names the digest of the table it completes: it must agree.
    if let Some(named) = state.header().base.filter(|_| state.delta.is_some())
        && state.header().version >= snapshot::Version::CHAIN
        && named.digest != digest
    {
        return Err(invalid(format!(
            "the newest file completes digest {:016x}, the manifest says {digest:016x}",
            named.digest
        )));
    }
    Ok((state, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_published_names_are_taken_from_a_manifest() {
        assert!(valid_name("snapshot.memdb"));
        assert!(valid_name("delta.memdb"));
        assert!(valid_name("recent-00000000000000000042.memdb"));
        for bad in [
            "../snapshot.memdb",
            "/etc/passwd",
            "recent-.memdb",
            "recent-1/../x.memdb",
            "LOCK",
            ".snapshot.memdb.tmp",
            "",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(ours(".snapshot.memdb.00000000000000ab.part"));
        assert!(!ours("notes.txt"));
        assert_eq!(parse_checksum("00000000000000ab"), Some(0xab));
        assert_eq!(parse_checksum("ab"), None);
        assert_eq!(parse_checksum("+000000000000000"), None);
    }
}
