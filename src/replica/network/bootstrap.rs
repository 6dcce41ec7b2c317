//! A binary bootstrap: the replica downloads the files the leader's table is made of
//! (`GET /files`) into its data directory as they are, validates and maps them, and
//! follows the leader's pushes from the seq they are at. Nothing is parsed into memory
//! and no JSON is built on either side.
//!
//! - **Resumable.** A file downloads to `.<name>.<checksum>.part`; a part left by an
//!   interrupted download (a killed replica, a dropped connection) is continued with
//!   `Range` and `If-Range` on the checksum. A file already in the directory with the
//!   checksum the manifest names is not downloaded again (a restarted replica fetches
//!   only the recent deltas, not the 250 MB base).
//! - **Clean on change.** A compaction or merge on the leader mid-download replaces a
//!   file: the leader then answers 404, 412 or the whole new file, and the bootstrap
//!   starts over from a new manifest (a few times, then it reports the failure and
//!   retries at the next heartbeat).
//! - **Checked.** Every file is validated completely (length, checksum, archive) before
//!   it is mapped, and the chain must be the one the manifest names. A truncated,
//!   corrupt or mismatched file is refused and the replica keeps its last good state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use crate::client::{Client, ClientError};
use crate::protocol::{Manifest, ManifestFile};
use crate::storage::mapped::MappedState;
use crate::storage::snapshot::{self, HEAD_READ_LEN};

/// Fresh manifests tried before a bootstrap is reported as failed.
const ATTEMPTS: usize = 4;
/// The lock file in a replica's data directory.
pub const LOCK_FILE: &str = "LOCK";

/// A replica's data directory, locked for the process's life. A temporary one (no
/// `--data-dir`) is removed when the replica stops.
pub(super) struct DataDir {
    path: PathBuf,
    temporary: bool,
    _lock: File,
}

impl DataDir {
    /// Locks `path`, or makes a private temporary directory when `None`.
    pub(super) fn open(path: Option<&Path>) -> Result<DataDir, crate::fs::LockError> {
        let (path, temporary) = match path {
            Some(p) => (p.to_owned(), false),
            None => {
                let name = format!(
                    "memdb-replica-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                );
                (std::env::temp_dir().join(name), true)
            }
        };
        let lock = crate::fs::lock_dir(&path, LOCK_FILE)?;
        Ok(DataDir {
            path,
            temporary,
            _lock: lock,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDir {
    /// A temporary directory goes, with the files this replica writes in it and
    /// nothing else: `remove_dir` fails on anything left, and then it stays.
    fn drop(&mut self) {
        if !self.temporary {
            return;
        }
        if let Ok(entries) = fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if ours(&name) || name == LOCK_FILE {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// Whether `name` is a file a bootstrap writes: a published file's name or a part.
fn ours(name: &str) -> bool {
    name == snapshot::FILE_NAME
        || name == snapshot::DELTA_NAME
        || is_recent(name)
        || (name.starts_with('.') && name.ends_with(".part"))
}

fn is_recent(name: &str) -> bool {
    name.strip_prefix(snapshot::RECENT_PREFIX)
        .and_then(|r| r.strip_suffix(".memdb"))
        .is_some_and(|seq| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
}

/// A file name the leader may name: one of the published names, nothing with a path.
fn valid_name(name: &str) -> bool {
    name == snapshot::FILE_NAME || name == snapshot::DELTA_NAME || is_recent(name)
}

/// What a bootstrap gives the replica.
pub(super) struct Bootstrapped {
    /// The leader's files, mapped and checked against the manifest.
    pub files: MappedState,
    /// The digest of the table they make.
    pub digest: u64,
    pub manifest: Manifest,
    /// Bytes downloaded (the rest was in the directory already).
    pub downloaded: u64,
}

/// Why a bootstrap failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum BootstrapError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the leader's manifest is not usable: {0}")]
    Manifest(String),
    #[error("{0}")]
    Io(String),
    #[error("the downloaded files do not make the leader's table: {0}")]
    Invalid(String),
    #[error("the leader's files kept changing during {ATTEMPTS} downloads")]
    Unsettled,
}

/// Downloads the leader's files into `dir`, maps them and returns the table they make;
/// `Ok(None)` when the leader serves no files (sync by `/sync` then).
pub(super) async fn bootstrap(
    leader: &Client,
    dir: &Path,
) -> Result<Option<Bootstrapped>, BootstrapError> {
    for _ in 0..ATTEMPTS {
        let Some(manifest) = leader.manifest().await? else {
            return Ok(None);
        };
        check(&manifest)?;
        let mut downloaded = 0;
        let mut complete = true;
        for f in &manifest.files {
            match fetch(leader, dir, f).await? {
                Some(n) => downloaded += n,
                None => {
                    complete = false;
                    break;
                }
            }
        }
        if !complete {
            tracing::info!("the leader's files changed during the download: starting over");
            continue;
        }
        let fetched = std::time::Instant::now();
        let at = dir.to_owned();
        let table = tokio::task::spawn_blocking(move || {
            let out = install(&at, &manifest);
            if out.is_err() {
                // Downloaded again next time: a file whose header is right but whose
                // body is not must not be taken as already there.
                for f in &manifest.files {
                    let _ = fs::remove_file(at.join(&f.name));
                }
            }
            out
        })
        .await
        .map_err(|e| BootstrapError::Io(e.to_string()))??;
        let (files, digest, manifest) = table;
        tracing::debug!(
            downloaded,
            validate_ms = fetched.elapsed().as_secs_f64() * 1e3,
            "the leader's files downloaded and mapped"
        );
        return Ok(Some(Bootstrapped {
            files,
            digest,
            manifest,
            downloaded,
        }));
    }
    Err(BootstrapError::Unsettled)
}

/// Refuses a manifest that names a file outside the data directory, or none.
fn check(m: &Manifest) -> Result<(), BootstrapError> {
    let bad = |what: String| Err(BootstrapError::Manifest(what));
    match m.files.first() {
        Some(f) if f.name == snapshot::FILE_NAME => {}
        _ => return bad(format!("it does not start with {}", snapshot::FILE_NAME)),
    }
    for f in &m.files {
        if !valid_name(&f.name) {
            return bad(format!("{:?} is not a file name memdb publishes", f.name));
        }
        if u64::from_str_radix(&f.checksum, 16).is_err() || f.checksum.len() != 16 {
            return bad(format!("{:?} is not a checksum", f.checksum));
        }
    }
    if u64::from_str_radix(&m.digest, 16).is_err() {
        return bad(format!("{:?} is not a digest", m.digest));
    }
    Ok(())
}

/// The checksum in the header of the file at `path`, if it has a header.
fn checksum_of(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut head = vec![0; HEAD_READ_LEN.min(len as usize)];
    f.read_exact(&mut head).ok()?;
    snapshot::read_header(&head, len).ok().map(|h| h.checksum)
}

/// Brings `f` into `dir` under its name: already there, or downloaded (resuming a
/// part). `Ok(Some(bytes downloaded))`, or `Ok(None)` if the leader no longer serves it.
async fn fetch(
    leader: &Client,
    dir: &Path,
    f: &ManifestFile,
) -> Result<Option<u64>, BootstrapError> {
    let target = dir.join(&f.name);
    let want = u64::from_str_radix(&f.checksum, 16).expect("checked");
    if checksum_of(&target) == Some(want) && fs::metadata(&target).is_ok_and(|m| m.len() == f.len) {
        return Ok(Some(0));
    }
    let part = dir.join(format!(".{}.{}.part", f.name, f.checksum));
    let io = |what: &str| {
        let what = format!("{what} {}", part.display());
        move |e: io::Error| BootstrapError::Io(format!("{what}: {e}"))
    };
    let mut from = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if from > f.len {
        fs::remove_file(&part).map_err(io("removing"))?;
        from = 0;
    }
    if from < f.len || f.len == 0 {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .map_err(io("opening"))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        if !leader
            .download(&f.name, &f.checksum, from, &mut out)
            .await?
        {
            drop(out);
            let _ = fs::remove_file(&part);
            return Ok(None);
        }
        // Not synced to disk: every file is validated whole (checksum and archive)
        // each time it is mapped, so one a crash left half written is refused and
        // downloaded again, never served.
        out.into_inner()
            .map_err(|e| io("writing")(e.into_error()))?;
    }
    if fs::metadata(&part).map_err(io("reading"))?.len() != f.len {
        let _ = fs::remove_file(&part);
        return Err(BootstrapError::Invalid(format!(
            "{} did not download whole ({} bytes named)",
            f.name, f.len
        )));
    }
    fs::rename(&part, &target).map_err(io("renaming"))?;
    Ok(Some(f.len - from))
}

/// Removes from `dir` the files the manifest does not name (an older chain's), then
/// maps the chain and checks it is the manifest's.
fn install(dir: &Path, m: &Manifest) -> Result<(MappedState, u64, Manifest), BootstrapError> {
    let named = |n: &str| m.files.iter().any(|f| f.name == n);
    let entries = fs::read_dir(dir).map_err(|e| BootstrapError::Io(e.to_string()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ours(&name) && !named(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
    let invalid = |what: String| BootstrapError::Invalid(what);
    let state = MappedState::open(dir, u64::MAX, &|| false, &[])
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("no base".into()))?;
    let got: Vec<u64> = state.files().map(|f| f.header().checksum).collect();
    let want: Vec<u64> = m
        .files
        .iter()
        .rev()
        .map(|f| u64::from_str_radix(&f.checksum, 16).expect("checked"))
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
    let digest = u64::from_str_radix(&m.digest, 16).expect("checked");
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
    Ok((state, digest, m.clone()))
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
    }
}
