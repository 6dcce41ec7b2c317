//! The writer thread: group commit, rolling segments, deleting covered ones, and
//! failing and recovering when the disk does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::watch;

use super::format::encode;
use super::options::{FsyncPolicy, WalOptions};
use super::segments::{segment_name, segments};
use super::shared::{FsyncStats, LogHealth, Msg};
use crate::backoff::Backoff;

/// How often `everysec` syncs.
const EVERYSEC: Duration = Duration::from_secs(1);
/// Retry delays while the log cannot be written: from the first to the cap.
pub(super) const RETRY_START: Duration = Duration::from_millis(50);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a segment that could not be rolled tries again.
const ROLL_RETRY: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub(super) stats: Arc<FsyncStats>,
    pub(super) health: Arc<LogHealth>,
    pub(super) dir: PathBuf,
    /// The open segment, in append mode.
    pub(super) file: Option<File>,
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
    pub(super) policy: FsyncPolicy,
    pub(super) options: WalOptions,
    /// The open segment's length up to which its records are known to be kept: fsynced
    /// (`always`, `everysec`) or written to the OS (`no`).
    pub(super) safe_len: u64,
    /// The encoded records after `safe_len`, not yet known to be kept. The first
    /// `in_file` bytes of it have been written to the file. After a failure the file
    /// is cut back to `safe_len` and this is written again whole: what a failed write
    /// or fsync left in the file (or the page cache) is never trusted.
    pub(super) pending: Vec<u8>,
    pub(super) in_file: usize,
    pub(super) durable: watch::Sender<u64>,
    pub(super) written: watch::Sender<u64>,
    pub(super) failed: watch::Sender<Option<String>>,
    pub(super) dirty: bool,
    pub(super) last_sync: Instant,
    /// Set while the log is failed: nothing new is written until a retry succeeds.
    pub(super) error: Option<String>,
    pub(super) retry: Backoff,
    pub(super) next_retry: Instant,
    /// While a roll fails, when to try the next.
    pub(super) next_roll: Instant,
}

impl Writer {
    pub(super) fn open_segment(&mut self, first_seq: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first_seq));
        let existed = path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let opened = (|| {
            let len = f.seek(SeekFrom::End(0))?;
            File::open(&self.dir)?.sync_all()?;
            Ok(len)
        })();
        let len = match opened {
            Ok(len) => len,
            Err(e) => {
                // An empty segment left behind would hide the records that the open
                // segment goes on to hold (replay skips a segment whose successor
                // starts at or before the seq it needs).
                if !existed {
                    let _ = fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        self.file = Some(f);
        self.safe_len = len;
        self.first_seq = first_seq;
        Ok(())
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = if self.error.is_some() {
                self.next_retry.saturating_duration_since(Instant::now())
            } else {
                match self.policy {
                    FsyncPolicy::EverySec if self.dirty => {
                        EVERYSEC.saturating_sub(self.last_sync.elapsed())
                    }
                    _ => Duration::from_secs(3600),
                }
            };
            // A segment that could not be rolled is retried even with no new writes.
            let wait = if self.health.roll_error.lock().is_some() {
                wait.min(self.next_roll.saturating_duration_since(Instant::now()))
            } else {
                wait
            };
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let result = if self.error.is_some() {
                        self.retry_now()
                    } else {
                        self.flush(true)
                    };
                    if result.is_err() {
                        tracing::error!(
                            first_lost = self.durable.borrow().saturating_add(1),
                            last_lost = self.last_seq,
                            "the write-ahead log is closing without these batches: they \
                             are lost unless a snapshot holds them"
                        );
                    }
                    return;
                }
            };
            // Group commit: take everything already queued, write it, sync once.
            let mut replies = Vec::new();
            for m in first.into_iter().chain(rx.try_iter()) {
                match m {
                    Msg::Batch(b) => {
                        encode(&b, &mut self.pending);
                        self.last_seq = b.seq;
                    }
                    Msg::Sync(r) => replies.push(r),
                    Msg::Checkpoint(s) => {
                        if let Err(e) = self.remove_covered(s) {
                            tracing::error!(error = %e, "deleting old log segments failed; the log keeps growing");
                        }
                    }
                }
            }
            let result = if self.error.is_some() {
                // A sync asks for a retry now; otherwise retry on the backoff.
                if !replies.is_empty() || Instant::now() >= self.next_retry {
                    self.retry_now()
                } else {
                    Err(io::Error::other(self.error.clone().unwrap_or_default()))
                }
            } else {
                let force = !replies.is_empty()
                    || (self.policy == FsyncPolicy::EverySec
                        && self.dirty
                        && self.last_sync.elapsed() >= EVERYSEC);
                self.flush(force || self.policy == FsyncPolicy::Always)
            };
            if result.is_ok()
                && self.segment_len() >= self.options.segment_bytes
                && Instant::now() >= self.next_roll
            {
                self.roll();
            }
            for r in replies {
                let _ = r.send(
                    result
                        .as_ref()
                        .map(|_| self.last_seq)
                        .map_err(|e| io::Error::other(e.to_string())),
                );
            }
        }
    }

    fn segment_len(&self) -> u64 {
        self.safe_len + self.in_file as u64
    }

    /// Writes what is pending; fsyncs if `sync` (always with `always`). Advances the
    /// durable seq: after an fsync with `always`, after the write to the OS otherwise
    /// (that is all those modes promise). A failure fails the log.
    fn flush(&mut self, sync: bool) -> io::Result<()> {
        if let Some(e) = &self.error {
            return Err(io::Error::other(e.clone()));
        }
        let res = self.write_pending(sync);
        if let Err(e) = &res {
            self.fail(e);
        }
        res
    }

    fn write_pending(&mut self, sync: bool) -> io::Result<()> {
        if self.in_file < self.pending.len() {
            let f = self.file.as_mut().expect("a segment is open");
            f.write_all(&self.pending[self.in_file..])?;
            self.in_file = self.pending.len();
            self.written.send_replace(self.last_seq);
            self.dirty = true;
        }
        if self.policy == FsyncPolicy::No {
            // Written to the OS is all `no` promises: nothing to keep for a retry.
            self.settle();
        }
        if sync && self.dirty {
            let started = Instant::now();
            self.file.as_ref().expect("a segment is open").sync_data()?;
            let nanos = started.elapsed().as_nanos() as u64;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.stats.last_nanos.store(nanos, Ordering::Relaxed);
            self.stats.total_nanos.fetch_add(nanos, Ordering::Relaxed);
            self.dirty = false;
            self.last_sync = Instant::now();
            self.settle();
        }
        if self.policy != FsyncPolicy::Always || !self.dirty {
            self.durable.send_replace(self.last_seq);
        }
        Ok(())
    }

    /// What is in the file is kept: it no longer needs its copy in `pending`.
    fn settle(&mut self) {
        self.safe_len += self.in_file as u64;
        self.pending.drain(..self.in_file);
        self.in_file = 0;
    }

    /// The log cannot be written: refuse writes (the leader checks the flag), wake the
    /// waiters, and cut what the failed attempt may have left in the file.
    fn fail(&mut self, e: &io::Error) {
        let reason = format!("{e}");
        if let Some(f) = &self.file {
            let _ = f.set_len(self.safe_len);
        }
        self.in_file = 0;
        self.dirty = true;
        if self.error.is_none() {
            tracing::error!(
                error = %e,
                unwritten_from = self.durable.borrow().saturating_add(1),
                "the write-ahead log cannot be written: refusing writes until it can; \
                 batches already accepted are kept in memory and retried"
            );
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            self.retry.reset();
        }
        self.next_retry = Instant::now() + self.retry.next_delay();
        self.error = Some(reason.clone());
        *self.health.reason.lock() = Some(reason.clone());
        self.health.failed.store(true, Ordering::Release);
        self.failed.send_replace(Some(reason));
    }

    /// On a failed log: cut the segment back to what is known kept, write everything
    /// pending again, fsync. Clears the failure if that worked.
    fn retry_now(&mut self) -> io::Result<()> {
        let res = (|| {
            let f = self.file.as_mut().expect("a segment is open");
            f.set_len(self.safe_len)?;
            self.in_file = 0;
            self.write_pending(true)
        })();
        match &res {
            Ok(()) => {
                self.error = None;
                tracing::info!(
                    seq = self.last_seq,
                    "the write-ahead log is writable again: accepting writes"
                );
                self.retry.reset();
                *self.health.reason.lock() = None;
                self.health.failed.store(false, Ordering::Release);
                self.failed.send_replace(None);
            }
            Err(e) => self.fail(e),
        }
        res
    }

    /// Closes the open segment (fsynced, so no later segment is ever more durable than
    /// an earlier one) and starts the next at the next seq. If the next cannot be
    /// created, the open one goes on (its records are safe) and this is reported and
    /// retried every [`ROLL_RETRY`].
    fn roll(&mut self) {
        if self.flush(true).is_err() || self.first_seq > self.last_seq {
            return;
        }
        match self.open_segment(self.last_seq + 1) {
            Ok(()) => {
                if self.health.roll_error.lock().take().is_some() {
                    tracing::info!("log segments roll again");
                }
            }
            Err(e) => {
                let mut err = self.health.roll_error.lock();
                if err.is_none() {
                    tracing::error!(
                        error = %e,
                        segment_bytes = self.segment_len(),
                        limit = self.options.segment_bytes,
                        "cannot start a new log segment: the open one grows past \
                         --wal-segment-size until one can be created"
                    );
                    self.health.roll_failures.fetch_add(1, Ordering::Relaxed);
                }
                *err = Some(format!("cannot start a new log segment: {e}"));
                self.next_roll = Instant::now() + ROLL_RETRY;
            }
        }
    }

    /// Deletes segments whose every record is at or below `snapshot_seq`, except the
    /// newest of them up to `retain_bytes`. The open segment always stays.
    fn remove_covered(&self, snapshot_seq: u64) -> io::Result<()> {
        let segs = segments(&self.dir)?;
        let mut kept = 0u64;
        let mut dropping = false;
        let mut removed = false;
        for (i, (first, path)) in segs.iter().enumerate().rev() {
            let covered = segs
                .get(i + 1)
                .is_some_and(|(next, _)| next.saturating_sub(1) <= snapshot_seq);
            if !covered || *first == self.first_seq {
                continue;
            }
            let len = fs::metadata(path)?.len();
            if !dropping && kept.saturating_add(len) <= self.options.retain_bytes {
                kept += len;
                continue;
            }
            // Once one is dropped, every older one goes too: what is kept is always
            // one contiguous stretch of history.
            dropping = true;
            fs::remove_file(path)?;
            removed = true;
        }
        if removed {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{batch, firsts, opts};
    use super::super::{FsyncPolicy, Wal, encode, replay};
    use crate::storage::table::Table;

    #[test]
    fn segments_roll_by_size_and_checkpoints_drop_what_is_not_retained() {
        let dir = tempfile::tempdir().unwrap();
        // One-byte segments: every group written closes its segment.
        let wal = Wal::open(dir.path(), 0, opts(FsyncPolicy::Always, 1, 0)).unwrap();
        for s in 1..=3 {
            wal.append(batch(s, "a", 1));
            wal.sync().unwrap();
        }
        assert_eq!(firsts(dir.path()), [1, 2, 3, 4]);
        wal.checkpoint(1); // covers segment 1 only
        wal.sync().unwrap();
        assert_eq!(firsts(dir.path()), [2, 3, 4]);
        wal.checkpoint(3); // covers 2 and 3; 4 is open
        wal.sync().unwrap();
        assert_eq!(firsts(dir.path()), [4]);
        drop(wal);
        let mut t = Table::new();
        t.apply(&vec![("a".into(), 3)], 3);
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, t.seq(), t.get("a")), (0, 3, 3));
    }

    #[test]
    fn covered_segments_are_retained_newest_first_up_to_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let mut b = Vec::new();
            encode(&batch(1, "a", 1), &mut b);
            b.len() as u64
        };
        let wal = Wal::open(dir.path(), 0, opts(FsyncPolicy::Always, 1, 2 * one)).unwrap();
        for s in 1..=6 {
            wal.append(batch(s, "a", 1));
            wal.sync().unwrap();
        }
        wal.checkpoint(6);
        wal.sync().unwrap();
        // 1..=6 are covered; the newest two are kept, and the open segment 7.
        assert_eq!(firsts(dir.path()), [5, 6, 7]);
        drop(wal);
        // Replay from a snapshot at 6 skips the retained segments.
        let mut t = Table::new();
        t.apply(&vec![("a".into(), 6)], 6);
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, r.cut, t.seq()), (0, None, 6));
    }
}
