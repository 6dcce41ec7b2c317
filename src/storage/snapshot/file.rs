//! Snapshot files on disk: opening one safely (regular files only, never blocking,
//! sizes and holes checked first), publishing by atomic rename, and loading one whole
//! (the leader's restore).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::{FILE_NAME, Header, SnapshotError, TEMP_NAME, to_word_map, validate};
use crate::storage::table::WordMap;

/// Opens `path` for reading only if it is a regular file, without ever blocking (a FIFO
/// or device renamed onto the snapshot's name would otherwise hang the reader), and
/// refuses sizes over `max_bytes` and sparse files before anything is read: a header
/// that claims a huge length over a file of holes must cost nothing to refuse.
pub fn open_regular(
    path: &Path,
    max_bytes: u64,
) -> Result<(File, std::fs::Metadata), SnapshotError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(SnapshotError::NotRegularFile(format!(
            "{} is {kind}; it",
            path.display()
        )));
    }
    let len = meta.len();
    if len > max_bytes {
        return Err(SnapshotError::TooLarge {
            len,
            max: max_bytes,
        });
    }
    // Allocated blocks far below the length: holes. (A compressing file system may
    // store a real snapshot in fewer blocks, but not an eighth.)
    let allocated = meta.blocks().saturating_mul(512);
    if len > (1 << 20) && allocated < len / 8 {
        return Err(SnapshotError::Sparse { len, allocated });
    }
    Ok((file, meta))
}

/// Atomically replaces `dir/FILE_NAME` with `image`: temp file, fsync, rename, fsync the
/// directory. The previous file is unlinked by the rename but lives on for any reader
/// that still maps it. Returns the published path.
pub fn publish(dir: &Path, image: &[u8]) -> io::Result<PathBuf> {
    write_atomically(dir, FILE_NAME, TEMP_NAME, image)
}

/// Atomically replaces `dir/name` with `bytes` (owner-only), through `dir/temp_name`:
/// write, fsync, rename, fsync the directory. A crash leaves the old file or the new
/// one, never a torn one.
pub fn write_atomically(
    dir: &Path,
    name: &str,
    temp_name: &str,
    bytes: &[u8],
) -> io::Result<PathBuf> {
    let tmp = dir.join(temp_name);
    let dest = dir.join(name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)
    })();
    if let Err(e) = written {
        // A part-written temp file would only hold on to the space a full disk lacks.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    Ok(dest)
}

/// Reads and validates `dir/FILE_NAME`. `Ok(None)` when there is no snapshot yet.
pub fn load(dir: &Path) -> Result<Option<(Header, WordMap)>, SnapshotError> {
    let path = dir.join(FILE_NAME);
    let (mut file, meta) = match open_regular(&path, u64::MAX) {
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
