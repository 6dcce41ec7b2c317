//! Snapshot files on disk: opening one safely (regular files only, never blocking,
//! sizes and holes checked first), publishing by atomic rename, and loading one whole
//! (the leader's restore).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rkyv::ser::writer::IoWriter;
use rkyv::util::AlignedVec;

use super::archive::Pair;
use super::error::SnapshotError;
use super::kind::Kind;
use super::layout::{BaseRef, HEAD_READ_LEN, HEADER_LEN, Header, Meta, new_key, read_header};
use super::read::{to_word_map, validate};
use super::write::{body, preamble, seal};
use crate::storage::table::WordMap;

/// The published base in a data directory.
pub const FILE_NAME: &str = "snapshot.memdb";
/// Where the next base is written before it is renamed over [`FILE_NAME`].
pub const TEMP_NAME: &str = ".snapshot.memdb.tmp";
/// The published delta in a data directory.
pub const DELTA_NAME: &str = "delta.memdb";
/// Where the next delta is written before it is renamed over [`DELTA_NAME`].
pub const DELTA_TEMP_NAME: &str = ".delta.memdb.tmp";
/// The published recent deltas (version 4) start with this, then their seq (20
/// digits, so names sort by seq) and `.memdb`: each holds the words changed since the
/// file under it (the delta, or the recent delta before it). See [`recent_name`].
pub const RECENT_PREFIX: &str = "recent-";
/// Where a delta merge writes the next delta before it is renamed over [`DELTA_NAME`].
pub const MERGE_TEMP_NAME: &str = ".delta.memdb.merge.tmp";
/// Where a merge of recent deltas writes one before it is renamed to its name.
pub const RECENT_MERGE_TEMP_NAME: &str = ".recent.memdb.merge.tmp";
/// Where the next recent delta is written before it is renamed to its name.
pub const RECENT_TEMP_NAME: &str = ".recent.memdb.tmp";

/// The name of the recent delta at `seq`.
pub fn recent_name(seq: u64) -> String {
    format!("{RECENT_PREFIX}{seq:020}.memdb")
}

/// The recent deltas in `dir`, by seq: (seq, name).
pub fn recents(dir: &Path) -> io::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let seq = name
            .strip_prefix(RECENT_PREFIX)
            .and_then(|r| r.strip_suffix(".memdb"))
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok());
        if let Some(seq) = seq {
            out.push((seq, name.to_owned()));
        }
    }
    out.sort();
    Ok(out)
}

/// Atomically replaces `dir/FILE_NAME` with `image`: temp file, fsync, rename, fsync the
/// directory. The previous file is unlinked by the rename but lives on for any reader
/// that still maps it. Returns the published path.
pub fn publish(dir: &Path, image: &[u8]) -> io::Result<PathBuf> {
    crate::fs::write_atomically_mode(
        dir,
        FILE_NAME,
        TEMP_NAME,
        image,
        crate::fs::published_mode(),
    )
}

/// A snapshot written and synced under its temp name, not yet published.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    pub header: Header,
}

/// Writes `entries` as a snapshot (a base when `base` is `None`, else a delta on it)
/// into `dir/temp_name`, streaming: the archive goes to the file as it is built, and the
/// checksum is read back from the file. Synced; publish it with [`install`]. A failed
/// write removes the temp file.
pub fn stage<'a, I>(
    dir: &Path,
    temp_name: &str,
    meta: Meta,
    base: Option<BaseRef>,
    entries: I,
) -> Result<Staged, SnapshotError>
where
    I: Iterator + Clone,
    I::Item: Pair<'a>,
{
    stage_until(dir, temp_name, meta, base, entries, &|| false)
}

/// Passes writes on until `stop` says otherwise: a long write can be stopped.
struct Stoppable<'s, W> {
    inner: W,
    stop: &'s dyn Fn() -> bool,
}

impl<W: Write> Write for Stoppable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if (self.stop)() {
            return Err(io::Error::other("stopped"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// [`stage`], giving up (with [`SnapshotError::Cancelled`]) when `stop` says so.
pub fn stage_until<'a, I>(
    dir: &Path,
    temp_name: &str,
    meta: Meta,
    base: Option<BaseRef>,
    entries: I,
    stop: &dyn Fn() -> bool,
) -> Result<Staged, SnapshotError>
where
    I: Iterator + Clone,
    I::Item: Pair<'a>,
{
    let path = dir.join(temp_name);
    let staged = (|| {
        use std::os::unix::fs::FileExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        // Readable by a reader group when the leader shares its state with one
        // (`crate::storage::sharing`); fchmod, so the umask does not apply.
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(crate::fs::published_mode()))?;
        }
        let key = new_key();
        let mut out = io::BufWriter::with_capacity(1 << 20, &file);
        let (pre, len) = preamble(base, key, entries.clone());
        pre.write(|bytes| out.write_all(bytes))?;
        let out = Stoppable { inner: out, stop };
        let (writer, words) = match body(IoWriter::new(out), base, key, entries, len) {
            Err(_) if stop() => return Err(SnapshotError::Cancelled),
            r => r?,
        };
        writer
            .into_inner()
            .inner
            .into_inner()
            .map_err(|e| e.into_error())?;
        let payload_len = file.metadata()?.len() - HEADER_LEN as u64;
        let head = seal(Kind::of(base.is_some()), meta, payload_len, words, |sum| {
            let mut chunk = vec![0u8; 1 << 20];
            let mut at = HEADER_LEN as u64;
            loop {
                let n = file.read_at(&mut chunk, at)?;
                if n == 0 {
                    return Ok(());
                }
                sum.update(&chunk[..n]);
                at += n as u64;
            }
        })?;
        file.write_all_at(&head, 0)?;
        file.sync_all()?;
        // The header as a reader will see it, read back.
        let mut first = vec![0u8; HEAD_READ_LEN.min((payload_len as usize) + HEADER_LEN)];
        file.read_exact_at(&mut first, 0)?;
        let header = read_header(&first, payload_len + HEADER_LEN as u64)?;
        Ok(Staged {
            path: path.clone(),
            header,
        })
    })();
    if staged.is_err() {
        // A part-written temp file would only hold on to the space a full disk lacks.
        let _ = fs::remove_file(&path);
    }
    staged
}

/// Publishes a staged snapshot as `dir/name`: rename, then fsync the directory.
pub fn install(dir: &Path, staged: &Staged, name: &str) -> io::Result<PathBuf> {
    let dest = dir.join(name);
    fs::rename(&staged.path, &dest)?;
    crate::fs::sync_dir(dir)?;
    Ok(dest)
}

/// Reads and validates `dir/FILE_NAME`. `Ok(None)` when there is no snapshot yet.
pub fn load(dir: &Path) -> Result<Option<(Header, WordMap)>, SnapshotError> {
    let path = dir.join(FILE_NAME);
    let (mut file, meta) =
        match crate::fs::open_regular(&path, u64::MAX).map_err(SnapshotError::from) {
            Ok(f) => f,
            Err(SnapshotError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
    let len = meta.len() as usize;
    let mut buf = AlignedVec::<16>::with_capacity(len);
    buf.extend_from_reader(&mut file)?;
    let (header, archived) = validate(&buf)?;
    Ok(Some((header, to_word_map(archived))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::snapshot::tests::{meta, sample};
    use crate::storage::snapshot::{Meta, encode};

    #[test]
    fn publish_then_load_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let first = sample(50);
        publish(dir.path(), &encode(&first, meta()).unwrap()).unwrap();
        let (h, map) = load(dir.path()).unwrap().unwrap();
        assert_eq!((h.seq, map), (42, first));
        let second = sample(5);
        let m = Meta { seq: 43, ..meta() };
        publish(dir.path(), &encode(&second, m).unwrap()).unwrap();
        let (h, map) = load(dir.path()).unwrap().unwrap();
        assert_eq!((h.seq, map), (43, second));
        assert!(!dir.path().join(TEMP_NAME).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn staged_files_stream_what_encode_builds_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let map = sample(3_000);
        let entries = || map.iter().map(|(w, n)| (w.as_str(), *n));
        let base = stage(dir.path(), TEMP_NAME, meta(), None, entries()).unwrap();
        assert_eq!(base.header.kind, Kind::Base);
        assert_eq!(base.header.words, map.len() as u64);
        let path = install(dir.path(), &base, FILE_NAME).unwrap();
        assert!(!dir.path().join(TEMP_NAME).exists());
        let bytes = read_aligned(&path);
        let (h, archived) = validate(&bytes).unwrap();
        assert_eq!(h, base.header);
        assert_eq!(to_word_map(archived), map);
        // A delta on it: the prefix names the base, the archive holds the changes.
        let base_ref = BaseRef {
            checksum: h.checksum,
            seq: h.seq,
            total_words: 3_002,
            digest: 0xfeed,
        };
        let changes = [("w1é", 99u64), ("fresh", 1)];
        let m = Meta { seq: 50, ..meta() };
        let delta = stage(
            dir.path(),
            crate::storage::snapshot::DELTA_TEMP_NAME,
            m,
            Some(base_ref),
            changes.iter().copied(),
        )
        .unwrap();
        let path = install(dir.path(), &delta, crate::storage::snapshot::DELTA_NAME).unwrap();
        let bytes = read_aligned(&path);
        let (h, archived) = validate(&bytes).unwrap();
        assert_eq!(
            (h.kind, h.seq, h.words, h.base),
            (Kind::Delta, 50, 2, Some(base_ref))
        );
        assert_eq!(h.total_words(), 3_002);
        let got = crate::storage::snapshot::hasher::with_key(h.key, || {
            archived.get("w1é").map(|v| v.to_native())
        });
        assert_eq!(got, Some(99));
        // The same bytes as the in-memory encoder under the same key, but for the time
        // written.
        let img = crate::storage::snapshot::write::encode_keyed(
            changes.iter().copied(),
            m,
            Some(base_ref),
            h.key.unwrap(),
        )
        .unwrap();
        assert_eq!(img[HEADER_LEN..], bytes[HEADER_LEN..]);
    }

    fn read_aligned(path: &Path) -> AlignedVec {
        let mut v = AlignedVec::<16>::new();
        v.extend_from_slice(&fs::read(path).unwrap());
        v
    }

    #[test]
    fn a_failed_stage_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = stage(
            &gone,
            TEMP_NAME,
            meta(),
            None,
            std::iter::empty::<(&str, u64)>(),
        )
        .unwrap_err();
        assert!(matches!(err, SnapshotError::Io(_)), "{err}");
        assert!(!gone.join(TEMP_NAME).exists());
    }

    #[test]
    fn load_reports_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = encode(&sample(50), meta()).unwrap();
        fs::write(dir.path().join(FILE_NAME), &img[..img.len() - 3]).unwrap();
        assert!(matches!(
            load(dir.path()).unwrap_err(),
            SnapshotError::LengthMismatch { .. }
        ));
    }
}
