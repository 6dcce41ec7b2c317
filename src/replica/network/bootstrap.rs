//! A binary bootstrap: the replica downloads the files the leader's table is made of
//! (`GET /files`) into its data directory as they are, validates and maps them, and
//! follows the leader's pushes from the seq they are at. Nothing is parsed into memory
//! and no JSON is built on either side.
//!
//! The downloading and the checks are [`crate::client::files`]'s: resumable, clean
//! when the leader's files change mid-download (then the bootstrap starts over from a
//! new manifest, a few times, then reports the failure and retries at the next
//! heartbeat), and every file validated whole before it is mapped. A truncated,
//! corrupt or mismatched file is refused and the replica keeps its last good state.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::client::{Client, files};
use crate::protocol::Manifest;
use crate::storage::mapped::MappedState;

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
                if files::ours(&name) || name == LOCK_FILE {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let _ = fs::remove_dir(&self.path);
    }
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

pub(super) use crate::client::files::FetchError as BootstrapError;

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
        files::check(&manifest)?;
        let mut downloaded = 0;
        let mut complete = true;
        for f in &manifest.files {
            match files::fetch(leader, "/files", dir, f, &[], true).await? {
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
    Err(BootstrapError::Unsettled(ATTEMPTS))
}

/// Removes the files `m` does not name (an older chain's), then maps the chain and
/// checks it is the manifest's.
fn install(dir: &Path, m: &Manifest) -> Result<(MappedState, u64, Manifest), BootstrapError> {
    files::remove_unnamed(dir, m)?;
    let (state, digest) = files::verify(dir, m)?;
    Ok((state, digest, m.clone()))
}
