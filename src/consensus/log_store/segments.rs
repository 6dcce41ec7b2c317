//! The raft log's files: `raft/raft.log/<n>.seg`, numbered in the order written. Records
//! are appended to the newest segment; one that reaches [`SEGMENT_BYTES`] is closed
//! and a new one begun, starting with the whole state (vote, commit point, purge
//! point), so that the oldest segments can be deleted as soon as the entries they hold
//! are purged: a purge deletes files and never rewrites one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{self, Meta, legacy};

/// The directory of segments, in the raft directory. It has the name of the single
/// file earlier releases wrote: one of those cannot open it as a file and refuses to
/// start, where it would otherwise begin an empty log and forget its vote.
pub const DIR: &str = "raft.log";
/// The single file while a start moves it into segments.
const MOVING: &str = "raft.log.moving";
/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// One segment file.
pub(super) struct Segment {
    pub id: u64,
    /// Shared with readers, which read entries back without the log's lock.
    pub file: Arc<File>,
    /// Bytes written (and good).
    pub len: u64,
    /// Entries of the log that are in this segment.
    pub live: usize,
}

fn name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// Opens segment `id` of `dir`, creating it (empty) with `create`.
pub(super) fn open(dir: &Path, id: u64, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(create)
        .mode(0o600)
        .open(dir.join(name(id)))
}

/// The segments of `dir`, oldest first.
pub(super) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name();
        let Some(id) = n
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        ids.push(id);
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Begins segment `id` with `state`, durably (its file, and its name in `dir`), so
/// that the segments before it may be deleted.
pub(super) fn begin(dir: &Path, id: u64, state: &Meta) -> io::Result<Segment> {
    let mut file = open(dir, id, true)?;
    let mut head = Vec::new();
    record::put_meta(&mut head, state);
    let written = io::Write::write_all(&mut file, &head).and_then(|_| file.sync_data());
    if let Err(e) = written.and_then(|_| crate::fs::sync_dir(dir)) {
        let _ = std::fs::remove_file(dir.join(name(id)));
        return Err(e);
    }
    Ok(Segment {
        id,
        file: Arc::new(file),
        len: head.len() as u64,
        live: 0,
    })
}

/// Deletes segment `id`.
pub(super) fn remove(dir: &Path, id: u64) -> io::Result<()> {
    std::fs::remove_file(dir.join(name(id)))
}

/// Reads `len` bytes at `at` of `file`.
pub(super) fn read_at(file: &File, at: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, at)?;
    Ok(buf)
}

/// A segment's records, read at a start. A torn or corrupt tail is cut off the newest
/// segment (`last`); in an older one it means the log ends there: the segments after
/// it are set aside, renamed `<n>.seg.after-damage`, not deleted.
pub(super) fn replay(
    dir: &Path,
    id: u64,
    last: bool,
) -> io::Result<(Segment, Vec<record::Located>, bool)> {
    let path = dir.join(name(id));
    let file = open(dir, id, false)?;
    let bytes = std::fs::read(&path)?;
    let (records, good) = record::read_all(&bytes);
    let damaged = good < bytes.len();
    if damaged {
        tracing::warn!(
            path = %path.display(),
            cut = bytes.len() - good,
            "a raft log segment ends in a torn or corrupt record; cutting it off"
        );
        file.set_len(good as u64)?;
        file.sync_all()?;
    }
    let seg = Segment {
        id,
        file: Arc::new(file),
        len: good as u64,
        live: 0,
    };
    Ok((seg, records, damaged && !last))
}

/// Renames the segments after a damaged one out of the log.
pub(super) fn set_aside(dir: &Path, ids: &[u64]) -> io::Result<()> {
    for &id in ids {
        let from = dir.join(name(id));
        let to = dir.join(format!("{}.after-damage", name(id)));
        tracing::error!(path = %from.display(), "set aside: it follows a damaged segment");
        std::fs::rename(from, to)?;
    }
    crate::fs::sync_dir(dir)
}

/// Makes the segments' directory from a release's single `raft.log`, if that is what
/// the raft directory holds: its state and live entries are written to a first segment
/// in a scratch directory; the old file is renamed aside, the scratch directory renamed
/// into its place, and the old file removed. A start interrupted anywhere in this
/// finishes it the next time.
pub(super) fn migrate(raft: &Path) -> io::Result<()> {
    let dir = raft.join(DIR);
    let moving = raft.join(MOVING);
    let scratch = raft.join(format!(".{DIR}.new"));
    if dir.is_dir() {
        if moving.exists() {
            std::fs::remove_file(&moving)?;
        }
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)?;
        }
        return Ok(());
    }
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    // The old file, under its name or (a start stopped half way) renamed aside.
    let old = if dir.is_file() {
        Some(dir.clone())
    } else {
        moving.is_file().then(|| moving.clone())
    };
    crate::fs::create_private_dir(&scratch)?;
    let (state, entries) = match &old {
        Some(path) => legacy::replay(&std::fs::read(path)?),
        None => (
            Meta::State {
                vote: None,
                committed: None,
                purged: None,
            },
            Vec::new(),
        ),
    };
    let mut seg = begin(&scratch, 1, &state)?;
    let mut out = Vec::new();
    for e in &entries {
        record::put_entry(&mut out, e);
    }
    if old.is_some() {
        tracing::info!(entries = entries.len(), "moving the raft log into segments");
    }
    let file = Arc::get_mut(&mut seg.file).expect("not shared yet");
    io::Write::write_all(file, &out)?;
    file.sync_data()?;
    if dir.is_file() {
        std::fs::rename(&dir, &moving)?;
    }
    std::fs::rename(&scratch, &dir)?;
    crate::fs::sync_dir(raft)?;
    if moving.exists() {
        std::fs::remove_file(&moving)?;
    }
    Ok(())
}

/// The path of the segments' directory in the raft directory `raft`.
pub fn dir_in(raft: &Path) -> PathBuf {
    raft.join(DIR)
}
