//! The write-ahead log: every applied batch, in seq order, so that a restart loses
//! nothing that was acknowledged (with `--fsync always`) or at most about a second
//! (`everysec`).
//!
//! Segments are files `wal-<first seq, 20 digits>.log` in the data directory. A record:
//!
//! ```text
//! offset  size  field
//!      0     4  payload length n, u32 LE
//!      4     8  xxh3-64 of the payload
//!     12     n  payload: seq u64 LE, word count u32 LE,
//!               then per word: length u32 LE, UTF-8 bytes, delta u64 LE,
//!               then (optional) the table digest after the batch, u64 LE
//! ```
//!
//! The digest trailer was added later: a record without it (an older log) still reads,
//! its batch then carries no digest.
//!
//! One writer thread takes batches from a channel (pushed under the table lock, so in
//! seq order), writes everything that is queued, and with `always` fsyncs once for the
//! whole group before announcing the new durable seq: concurrent writers share one
//! fsync (group commit). A segment that has grown past `segment_bytes` is fsynced and
//! closed, and the next record starts a new one.
//!
//! After a snapshot is published, the segments it covers are no longer needed for
//! recovery. The newest of them, up to `retain_bytes`, are kept anyway: network
//! replicas that fell behind further than the leader's in-memory backlog (or that
//! followed it before a restart, when the backlog starts empty) catch up from them with
//! a [`LogReader`] instead of a full sync. Older ones are deleted.
//!
//! Replay stops at the first record that is short, fails its checksum, or does not
//! follow the previous seq; the segment is cut there (a torn tail after a crash is
//! normal) and later segments are set aside, never silently applied out of order.
//!
//! Files: [`format`] (records), [`replay`] (recovery at start), [`reader`] (catch-up
//! for replicas), [`handle`] (the [`Wal`] handle the leader holds) and `writer` (the
//! thread behind it).

mod format;
mod handle;
mod reader;
mod replay;
mod writer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use format::encode;
pub use handle::{FsyncStats, LogHealth, Wal, WalError};
pub use reader::LogReader;
pub use replay::{Replayed, replay, replay_observed};

/// How the log is written and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub fsync: FsyncPolicy,
    /// A segment is closed once it holds at least this many bytes. Default 16 MiB.
    pub segment_bytes: u64,
    /// Segments a snapshot covers are kept, newest first, up to this many bytes, for
    /// replicas to catch up from. Default 256 MiB.
    pub retain_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            fsync: FsyncPolicy::default(),
            segment_bytes: 16 << 20,
            retain_bytes: 256 << 20,
        }
    }
}

/// When a write is acknowledged relative to the log reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Acknowledge a write only once its record is fsynced (group commit).
    Always,
    /// fsync once a second; a crash or power loss may lose about the last second.
    #[default]
    EverySec,
    /// Never fsync; the OS writes the log when it wants (a process crash loses
    /// nothing written, a power loss may lose more).
    No,
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            o => Err(format!(
                "unknown fsync policy {o:?}: always, everysec or no"
            )),
        }
    }
}

impl FsyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        }
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

/// The segments in `dir`, sorted by first seq.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            && let Ok(first) = num.parse::<u64>()
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
pub(super) mod testing {
    //! Logs written for the tests of the parts.
    use std::fs::{self, OpenOptions};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::{FsyncPolicy, Wal, WalOptions, segments};
    use crate::storage::batch::Batch;

    pub fn batch(seq: u64, word: &str, n: u64) -> Arc<Batch> {
        Arc::new(Batch {
            seq,
            deltas: vec![(word.to_owned(), n), ("common".into(), 1)],
            digest: Some(seq * 31),
        })
    }

    pub fn write_log(dir: &Path, policy: FsyncPolicy, seqs: std::ops::RangeInclusive<u64>) {
        let wal = Wal::open(
            dir,
            *seqs.start() - 1,
            WalOptions {
                fsync: policy,
                ..WalOptions::default()
            },
        )
        .unwrap();
        for s in seqs {
            wal.append(batch(s, &format!("w{s}"), s));
        }
        assert!(wal.sync().is_ok());
    }

    /// Records 1..=5 with the last 3 bytes of the fifth cut off; the segment's path.
    pub fn torn_log(dir: &Path, policy: FsyncPolicy) -> PathBuf {
        write_log(dir, policy, 1..=5);
        let (_, path) = segments(dir).unwrap().pop().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        path
    }

    pub fn opts(fsync: FsyncPolicy, segment_bytes: u64, retain_bytes: u64) -> WalOptions {
        WalOptions {
            fsync,
            segment_bytes,
            retain_bytes,
        }
    }

    pub fn firsts(dir: &Path) -> Vec<u64> {
        segments(dir).unwrap().iter().map(|s| s.0).collect()
    }
}
