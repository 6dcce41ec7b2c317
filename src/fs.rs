//! File helpers every room that writes files uses: replacing a file atomically (temp
//! file, fsync, rename, fsync the directory), and opening a file to read only if it is
//! a regular file of a bounded size, and locking a node's data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why [`open_regular`] refused a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0} is not a regular file")]
    NotRegularFile(String),
    #[error("file is {len} bytes, over the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    #[error(
        "file is {len} bytes but only {allocated} are allocated on disk: a sparse file, \
         which memdb never writes"
    )]
    Sparse { len: u64, allocated: u64 },
}

/// Opens `path` for reading only if it is a regular file, without ever blocking (a FIFO
/// or device renamed onto the snapshot's name would otherwise hang the reader), and
/// refuses sizes over `max_bytes` and sparse files before anything is read: a header
/// that claims a huge length over a file of holes must cost nothing to refuse.
pub fn open_regular(path: &Path, max_bytes: u64) -> Result<(File, std::fs::Metadata), OpenError> {
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
        return Err(OpenError::NotRegularFile(format!(
            "{} is {kind}; it",
            path.display()
        )));
    }
    let len = meta.len();
    if len > max_bytes {
        return Err(OpenError::TooLarge {
            len,
            max: max_bytes,
        });
    }
    // Allocated blocks far below the length: holes. (A compressing file system may
    // store a real snapshot in fewer blocks, but not an eighth.)
    let allocated = meta.blocks().saturating_mul(512);
    if len > (1 << 20) && allocated < len / 8 {
        return Err(OpenError::Sparse { len, allocated });
    }
    Ok((file, meta))
}

/// Whether this process publishes its snapshot files for a group as well as its owner
/// (set once, at a leader's start: see [`crate::storage::sharing`]).
static GROUP_READ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Publishes files for a group from now on (`true`), or for the owner only.
pub fn share_with_group(on: bool) {
    GROUP_READ.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The mode of a published file: `0640` shared with a group, else `0600`.
pub fn published_mode() -> u32 {
    if GROUP_READ.load(std::sync::atomic::Ordering::Relaxed) {
        0o640
    } else {
        0o600
    }
}

/// The mode of the notification socket: `0660` shared with a group, else `0600`.
pub fn socket_mode() -> u32 {
    if GROUP_READ.load(std::sync::atomic::Ordering::Relaxed) {
        0o660
    } else {
        0o600
    }
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
    write_atomically_mode(dir, name, temp_name, bytes, 0o600)
}

/// [`write_atomically`], creating the file with `mode` (e.g. 0644 for a certificate
/// others may read).
pub fn write_atomically_mode(
    dir: &Path,
    name: &str,
    temp_name: &str,
    bytes: &[u8],
    mode: u32,
) -> io::Result<PathBuf> {
    let tmp = dir.join(temp_name);
    let dest = dir.join(name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // Exactly `mode`, whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)
    })();
    if let Err(e) = written {
        // A part-written temp file would only hold on to the space a full disk lacks.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(dest)
}

/// fsyncs the directory `dir`: the names created, renamed or removed in it last.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why [`lock_dir`] could not lock a directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is locked by another process: another node uses this data directory",
        .0.display()
    )]
    Locked(PathBuf),
}

/// Creates `dir` and its parents (owner-only, 0700) if needed.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `dir` (owner-only, 0700) if needed and takes an exclusive lock on the file
/// `name` in it (flock, held as long as the returned file is open), writing this
/// process's id into it for operators and scripts to find the owner by.
pub fn lock_dir(dir: &Path, name: &str) -> Result<File, LockError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| LockError::Io { what, path, source }
    };
    create_private_dir(dir).map_err(io("creating data directory", dir))?;
    let path = dir.join(name);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening", &path))?;
    lock.try_lock()
        .map_err(|_| LockError::Locked(dir.to_owned()))?;
    lock.set_len(0).map_err(io("writing", &path))?;
    writeln!(lock, "{}", std::process::id()).map_err(io("writing", &path))?;
    Ok(lock)
}
