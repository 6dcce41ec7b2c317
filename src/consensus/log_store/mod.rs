//! The raft log on disk: one append-only file of checksummed records (entries, the
//! vote, the commit point, truncations and purges), replayed into memory at start.
//! In a raft group this is the node's write-ahead log: the single-leader log
//! ([`crate::storage::log`]) is not opened.
//!
//! Record: `u32` payload length, `u64` xxh3 of the payload, the payload (JSON of a
//! [`Record`]). A torn or corrupt tail is cut at the last whole record. Appending
//! entries at index `i` drops every entry from `i` on (a raft append implies the
//! truncation), so a lost truncation record cannot bring stale entries back.
//!
//! Durability follows `--fsync`: `always` reports entries flushed only after an
//! fsync (one fsync covers every append waiting for it); `everysec` reports them at
//! once and fsyncs every second; `no` leaves it to the kernel. A vote is fsynced
//! before it is reported, whatever the policy: raft's safety depends on it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;

use crate::consensus::types::{Entry, NodeId, TypeConfig};
use flush::{Flush, flusher};
use record::{EntriesRef, Record, decode_all, encode, frame};

mod flush;
mod record;
use crate::storage::log::FsyncPolicy;

pub const LOG_NAME: &str = "raft.log";
/// Rewrite the file when it holds this many bytes and four times what is live.
const REWRITE_AT: u64 = 32 << 20;

/// The raft log (cheap to clone: the reader and the writer share it).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Bytes of the records the state below needs (an estimate: entries' records).
    live: u64,
    entries: BTreeMap<u64, Entry>,
    sizes: BTreeMap<u64, u64>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    policy: FsyncPolicy,
    flusher: Sender<Flush>,
    /// The write error while the log cannot be written (a full or failing disk): the
    /// write is retried until it lands, and this is cleared then.
    failed: Option<String>,
}

fn io_error(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying it; a torn tail is cut off.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> io::Result<LogStore> {
        let path = dir.join(LOG_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, good) = decode_all(&bytes);
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() - good,
                "the raft log ends in a torn or corrupt record; cutting it off"
            );
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut inner = Inner {
            path,
            file,
            len: good as u64,
            live: 0,
            entries: BTreeMap::new(),
            sizes: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
            policy,
            flusher: tx,
            failed: None,
        };
        for (record, size) in records {
            inner.replay(record, size);
        }
        let sync = inner.file.try_clone()?;
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || flusher(sync, rx, policy))?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Entries held (after the last purge).
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the entries held after `index` up to `to` (their records' share).
    pub fn bytes_between(&self, index: Option<u64>, to: u64) -> u64 {
        let from = index.map_or(0, |i| i + 1);
        if from > to {
            return 0;
        }
        self.inner
            .lock()
            .sizes
            .range(from..=to)
            .map(|(_, s)| s)
            .sum()
    }

    /// Where to purge to, keeping about `keep` bytes of log behind `snapshot`: the
    /// highest index below which the entries up to `snapshot` hold `keep` bytes.
    pub fn purge_point(&self, snapshot: u64, keep: u64) -> Option<u64> {
        let inner = self.inner.lock();
        let mut kept = 0;
        for (&i, &s) in inner.sizes.range(..=snapshot).rev() {
            if kept >= keep {
                return Some(i);
            }
            kept += s;
        }
        None
    }

    /// The last commit point recorded (what a majority holds, as this node knows).
    pub fn committed_index(&self) -> Option<u64> {
        self.inner.lock().committed.map(|c| c.index)
    }

    /// The write error, while the log cannot be written.
    pub fn failure(&self) -> Option<String> {
        self.inner.lock().failed.clone()
    }

    /// The id of the entry at `index`, if this log holds it (the last purged one's too).
    pub fn log_id_at(&self, index: u64) -> Option<LogId<NodeId>> {
        let inner = self.inner.lock();
        match inner.entries.get(&index) {
            Some(e) => Some(e.log_id),
            None => inner.purged.filter(|p| p.index == index),
        }
    }
}

impl LogStore {
    /// Runs `write` (a record appended, perhaps synced) until it succeeds. A full or
    /// failing disk does not stop the engine (openraft treats every storage error as
    /// fatal, and a stopped engine needs a restart): the write waits, retried with
    /// backoff, while `/health` reports the error, and goes on when space returns.
    /// Writes that wait hold up this node's engine, and so only this node: the others
    /// elect a leader without it, and it catches up when it can write again.
    async fn until_written<T>(&self, mut write: impl FnMut(&mut Inner) -> io::Result<T>) -> T {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        loop {
            let delay = {
                let mut inner = self.inner.lock();
                match write(&mut inner) {
                    Ok(v) => {
                        if inner.failed.take().is_some() {
                            tracing::info!("the raft log can be written again");
                        }
                        return v;
                    }
                    Err(e) => {
                        if inner.failed.is_none() {
                            tracing::error!(error = %e, "writing the raft log failed; retrying until it can be written");
                        }
                        inner.failed = Some(e.to_string());
                        backoff.next_delay()
                    }
                }
            };
            tokio::time::sleep(delay).await;
        }
    }
}

/// `range` as `[first, end)` over a log whose indexes end before `u64::MAX`.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    use std::ops::Bound;
    let first = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (first, end)
}

fn read_error(e: String) -> StorageError<NodeId> {
    StorageIOError::read_logs(&io::Error::other(e)).into()
}

impl Inner {
    fn replay(&mut self, record: Record, size: u64) {
        match record {
            Record::Entries(es) => {
                if let Some(first) = es.first() {
                    self.drop_from(first.log_id.index);
                }
                let each = size / es.len().max(1) as u64;
                for e in es {
                    self.sizes.insert(e.log_id.index, each);
                    self.live += each;
                    self.entries.insert(e.log_id.index, e);
                }
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
            Record::Purged(id) => self.drop_until(id),
            Record::TruncatedFrom(i) => self.drop_from(i),
        }
    }

    fn drop_from(&mut self, index: u64) {
        self.entries.split_off(&index);
        for (_, s) in self.sizes.split_off(&index) {
            self.live -= s;
        }
    }

    fn drop_until(&mut self, id: LogId<NodeId>) {
        let keep = self.entries.split_off(&(id.index + 1));
        self.entries = keep;
        let keep = self.sizes.split_off(&(id.index + 1));
        for (_, s) in std::mem::replace(&mut self.sizes, keep) {
            self.live -= s;
        }
        if self.purged < Some(id) {
            self.purged = Some(id);
        }
    }

    /// Refuses entries that are not one run continuing this log (or replacing its
    /// tail): the log stays contiguous by construction.
    fn check_chain(&self, entries: &[Entry]) -> Result<(), StorageError<NodeId>> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let next = self
            .entries
            .keys()
            .next_back()
            .copied()
            .or(self.purged.map(|p| p.index))
            .map_or(0, |last| last + 1);
        let broken = if first.log_id.index > next {
            Some(format!(
                "entries from index {} would leave a gap after index {}",
                first.log_id.index,
                next.saturating_sub(1)
            ))
        } else {
            entries
                .windows(2)
                .find(|w| w[1].log_id.index != w[0].log_id.index + 1)
                .map(|w| {
                    format!(
                        "entries {} and {} are not consecutive",
                        w[0].log_id.index, w[1].log_id.index
                    )
                })
        };
        match broken {
            Some(why) => Err(io_error(io::Error::other(format!(
                "refusing to append to the raft log: {why}"
            )))),
            None => Ok(()),
        }
    }

    /// Appends `bytes` whole, or nothing: a write that fails part way is cut off again
    /// (should that fail too, the next write here cuts it first, or the next start).
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<u64, io::Error> {
        if self.failed.is_some() {
            // The last write may have left a torn tail this could not cut.
            self.file.set_len(self.len)?;
        }
        if let Err(e) = self.file.write_all(bytes) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(bytes.len() as u64)
    }

    /// Rewrites the file with only what is live, when it has grown well past that.
    fn maybe_rewrite(&mut self) -> io::Result<()> {
        if self.len < REWRITE_AT || self.len < self.live.saturating_mul(4) {
            return Ok(());
        }
        let dir = self.path.parent().expect("in a directory").to_owned();
        let mut out = Vec::new();
        out.extend(encode(&Record::Vote(self.vote.unwrap_or_default())));
        out.extend(encode(&Record::Committed(self.committed)));
        if let Some(p) = self.purged {
            out.extend(encode(&Record::Purged(p)));
        }
        let entries: Vec<Entry> = self.entries.values().cloned().collect();
        for chunk in entries.chunks(1024) {
            out.extend(encode(&Record::Entries(chunk.to_vec())));
        }
        crate::fs::write_atomically(&dir, LOG_NAME, &format!(".{LOG_NAME}.tmp"), &out)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        let _ = self.flusher.send(Flush::Reopen(file.try_clone()?));
        self.file = file;
        tracing::info!(
            before = self.len,
            after = out.len(),
            "rewrote the raft log without its purged entries"
        );
        self.len = out.len() as u64;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        // Checked, not trusted: `BTreeMap::range` panics on an inverted range, and the
        // engine applies what it is given as one run, so a hole must never reach it.
        let (first, end) = bounds(&range);
        if first > end {
            return Err(read_error(format!(
                "asked for raft log entries {range:?}, an inverted range"
            )));
        }
        let inner = self.inner.lock();
        let entries: Vec<Entry> = inner
            .entries
            .range(first..end)
            .map(|(_, e)| e.clone())
            .collect();
        if let Some(w) = entries
            .windows(2)
            .find(|w| w[1].log_id.index != w[0].log_id.index + 1)
        {
            return Err(read_error(format!(
                "the raft log has a gap between entries {} and {}",
                w[0].log_id.index, w[1].log_id.index
            )));
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(&Record::Vote(*vote));
        self.until_written(|inner| {
            inner.write_bytes(&bytes)?;
            inner.file.sync_data()
        })
        .await;
        self.inner.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced: a lost commit point only delays applying at the next start
        // until a leader says what is committed.
        let bytes = encode(&Record::Committed(committed));
        self.until_written(|inner| inner.write_bytes(&bytes)).await;
        self.inner.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.inner.lock().check_chain(&entries)?;
        let bytes =
            frame(serde_json::to_vec(&EntriesRef::Entries(&entries)).expect("entries serialize"));
        let size = self.until_written(|inner| inner.write_bytes(&bytes)).await;
        let mut inner = self.inner.lock();
        inner.replay(Record::Entries(entries), size);
        match inner.policy {
            FsyncPolicy::Always => {
                let _ = inner.flusher.send(Flush::Wait(callback));
            }
            _ => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(&Record::TruncatedFrom(log_id.index));
        self.until_written(|inner| inner.write_bytes(&bytes)).await;
        self.inner.lock().drop_from(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(&Record::Purged(log_id));
        self.until_written(|inner| inner.write_bytes(&bytes)).await;
        let mut inner = self.inner.lock();
        inner.drop_until(log_id);
        if let Err(e) = inner.maybe_rewrite() {
            // The old file is still whole: purging is only an optimisation.
            tracing::warn!(error = %e, "rewriting the raft log failed; keeping the old file");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    pub(super) fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(inner: &Inner) -> Vec<(u64, u64)> {
        inner
            .entries
            .values()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    fn replayed(records: &[Record]) -> Inner {
        let bytes: Vec<u8> = records.iter().flat_map(encode).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_NAME), &bytes).unwrap();
        let store = LogStore::open(dir.path(), FsyncPolicy::No).unwrap();
        Arc::try_unwrap(store.inner).ok().unwrap().into_inner()
    }

    #[test]
    fn appending_at_an_index_drops_what_followed_it_even_without_a_truncation_record() {
        let inner = replayed(&[
            Record::Entries(vec![entry(1, 1), entry(1, 2), entry(1, 3)]),
            // A new leader's entries from index 2 on: the old 2 and 3 are gone.
            Record::Entries(vec![entry(2, 2)]),
        ]);
        assert_eq!(indexes(&inner), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn truncation_purge_vote_and_commit_are_replayed() {
        let vote = Vote::new(3, 2);
        let inner = replayed(&[
            Record::Entries((1..=5).map(|i| entry(1, i)).collect()),
            Record::TruncatedFrom(5),
            Record::Purged(LogId::new(CommittedLeaderId::new(1, 1), 2)),
            Record::Vote(vote),
            Record::Committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 4))),
        ]);
        assert_eq!(indexes(&inner), vec![(1, 3), (1, 4)]);
        assert_eq!(inner.purged.map(|p| p.index), Some(2));
        assert_eq!(inner.vote, Some(vote));
        assert_eq!(inner.committed.map(|c| c.index), Some(4));
    }

    fn store_with(indexes: std::ops::RangeInclusive<u64>) -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), FsyncPolicy::No).unwrap();
        {
            let mut inner = store.inner.lock();
            let es: Vec<Entry> = indexes.map(|i| entry(1, i)).collect();
            inner.check_chain(&es).unwrap();
            inner.replay(Record::Entries(es), 0);
        }
        (dir, store)
    }

    #[tokio::test]
    async fn an_inverted_range_or_a_gap_is_an_error_not_a_panic() {
        let (_dir, mut store) = store_with(0..=5);
        let got = store.try_get_log_entries(2..4).await.unwrap();
        assert_eq!(got.len(), 2);
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = store.try_get_log_entries(5..2).await;
        assert!(inverted.is_err());
        // A hole can only be made behind the log's back; reading across it fails.
        store.inner.lock().entries.remove(&3);
        let e = store.try_get_log_entries(1..6).await.unwrap_err();
        assert!(e.to_string().contains("gap between entries 2 and 4"), "{e}");
    }

    #[test]
    fn entries_that_do_not_continue_the_log_are_refused() {
        let (_dir, store) = store_with(0..=5);
        let inner = store.inner.lock();
        // Replacing the tail, or continuing it: fine.
        inner.check_chain(&[entry(2, 3), entry(2, 4)]).unwrap();
        inner.check_chain(&[entry(1, 6)]).unwrap();
        // Past a hole, or not one run.
        assert!(inner.check_chain(&[entry(1, 8)]).is_err());
        assert!(inner.check_chain(&[entry(1, 6), entry(1, 8)]).is_err());
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_at_the_last_whole_record() {
        let whole = encode(&Record::Entries(vec![entry(1, 1)]));
        let next = encode(&Record::Entries(vec![entry(1, 2)]));
        for tail in [
            next[..next.len() - 1].to_vec(), // torn
            {
                let mut c = next.clone();
                let last = c.len() - 1;
                c[last] ^= 0x40; // a flipped bit
                c
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(LOG_NAME);
            std::fs::write(&path, [whole.clone(), tail].concat()).unwrap();
            let store = LogStore::open(dir.path(), FsyncPolicy::No).unwrap();
            assert_eq!(store.len(), 1);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole.len() as u64);
        }
    }
}
