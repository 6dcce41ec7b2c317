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
//! Files: `format` (records, each a [`crate::storage::frame`]), [`replay`] (recovery
//! at start), `reader` (catch-up for replicas: [`LogReader`]), `handle` (the [`Wal`] handle the
//! leader holds), `writer` (the thread behind it) and `shared` (what those two share),
//! `options` and `segments` (the files' names).

mod format;
mod handle;
mod options;
mod reader;
mod replay;
mod segments;
mod shared;
mod writer;

pub use format::encode;
pub use handle::{Wal, WalError};
pub use options::{FsyncPolicy, WalOptions};
pub use reader::LogReader;
pub use replay::{Replay, Replayed, replay};
pub use segments::segments;
pub use shared::{FsyncStats, LogHealth};

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
