//! The raft log on disk: segment files of checksummed records (entries, the vote, the
//! commit point, truncations and purges; see [`segments`] and [`record`]). In memory
//! it keeps where each entry is and, within `--raft-log-cache` bytes, the newest
//! entries decoded ([`cache`]); an older entry is read back from its segment. At
//! start the segments are read for the entries' ids only. In a raft group this is the
//! node's write-ahead log: the single-leader log ([`crate::storage::log`]) is not
//! opened.
//!
//! Appending entries at index `i` drops every entry from `i` on (a raft append implies
//! the truncation), so a lost truncation record cannot bring stale entries back. A
//! purge deletes the oldest segments once none of their entries is left: no file is
//! ever rewritten, so a purge costs an unlink, not a copy of the log (a rewrite of the
//! whole file once held the log's lock for 650 ms at 10M words, and a follower that
//! missed its heartbeats for it called an election).
//!
//! Durability follows `--fsync`: `always` reports entries flushed only after an
//! fsync (one fsync covers every append waiting for it); `everysec` reports them at
//! once and fsyncs every second; `no` leaves it to the kernel. A vote is fsynced
//! before it is reported, whatever the policy: raft's safety depends on it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;

use crate::consensus::types::{Entry, NodeId, TypeConfig};
use cache::Cache;
use flush::{Flush, flusher};
use record::{Meta, Read};
use segments::Segment;

mod cache;
mod flush;
mod read;
mod record;
mod segments;
#[cfg(test)]
mod tests;
use crate::storage::log::FsyncPolicy;

pub use segments::DIR;

/// The raft log (cheap to clone: the reader and the writer share it).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

/// Where an entry is.
#[derive(Clone, Copy, Debug)]
struct Loc {
    log_id: LogId<NodeId>,
    segment: u64,
    at: u64,
    len: u32,
}

struct Inner {
    dir: PathBuf,
    /// Oldest first; the last is written to.
    segments: VecDeque<Segment>,
    entries: BTreeMap<u64, Loc>,
    cache: Cache,
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
    /// Opens (or creates) the log in the raft directory `raft`, reading the entries'
    /// ids; a torn tail is cut off. A release's single `raft.log` is moved into
    /// segments first. `cache` bounds the entries kept decoded, in bytes.
    pub fn open(raft: &Path, policy: FsyncPolicy, cache: usize) -> io::Result<LogStore> {
        segments::migrate(raft)?;
        let dir = segments::dir_in(raft);
        let ids = segments::list(&dir)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut inner = Inner {
            dir: dir.clone(),
            segments: VecDeque::new(),
            entries: BTreeMap::new(),
            cache: Cache::new(cache),
            vote: None,
            committed: None,
            purged: None,
            policy,
            flusher: tx,
            failed: None,
        };
        for (n, &id) in ids.iter().enumerate() {
            let (seg, records, damaged) = segments::replay(&dir, id, n + 1 == ids.len())?;
            inner.segments.push_back(seg);
            for (record, at, len) in records {
                inner.replay(record, id, at, len);
            }
            if damaged {
                segments::set_aside(&dir, &ids[n + 1..])?;
                break;
            }
        }
        if inner.segments.is_empty() {
            let state = inner.state();
            inner.segments.push_back(segments::begin(&dir, 1, &state)?);
        }
        inner.shed();
        let sync = inner.active().file.try_clone()?;
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

    /// Bytes of the entries held after `index` up to `to` (their records on disk).
    pub fn bytes_between(&self, index: Option<u64>, to: u64) -> u64 {
        let from = index.map_or(0, |i| i + 1);
        if from > to {
            return 0;
        }
        self.inner
            .lock()
            .entries
            .range(from..=to)
            .map(|(_, l)| l.len as u64)
            .sum()
    }

    /// Where to purge to, keeping about `keep` bytes of log behind `snapshot`: the
    /// highest index below which the entries up to `snapshot` hold `keep` bytes.
    pub fn purge_point(&self, snapshot: u64, keep: u64) -> Option<u64> {
        let inner = self.inner.lock();
        let mut kept = 0;
        for (&i, l) in inner.entries.range(..=snapshot).rev() {
            if kept >= keep {
                return Some(i);
            }
            kept += l.len as u64;
        }
        None
    }

    /// Bytes of entries held decoded in memory, and of the segment files on disk.
    pub fn held_bytes(&self) -> (usize, u64) {
        let inner = self.inner.lock();
        (
            inner.cache.bytes(),
            inner.segments.iter().map(|s| s.len).sum(),
        )
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
            Some(l) => Some(l.log_id),
            None => inner.purged.filter(|p| p.index == index),
        }
    }

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

    /// Appends `meta` until it is written.
    async fn write_meta(&self, meta: Meta, sync: bool) {
        let mut bytes = Vec::new();
        record::put_meta(&mut bytes, &meta);
        self.until_written(|inner| {
            inner.write(&bytes)?;
            if sync {
                inner.active().file.sync_data()?;
            }
            Ok(())
        })
        .await;
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
    fn active(&self) -> &Segment {
        self.segments.back().expect("the log has a segment")
    }

    fn state(&self) -> Meta {
        Meta::State {
            vote: self.vote,
            committed: self.committed,
            purged: self.purged,
        }
    }

    fn replay(&mut self, record: Read, segment: u64, at: u64, len: u32) {
        match record {
            Read::Entry(log_id) => self.add(Loc {
                log_id,
                segment,
                at,
                len,
            }),
            Read::Meta(m) => self.apply(m),
        }
    }

    fn apply(&mut self, meta: Meta) {
        match meta {
            Meta::Vote(v) => self.vote = Some(v),
            Meta::Committed(c) => self.committed = c,
            Meta::Purged(id) => self.drop_until(id),
            Meta::TruncatedFrom(i) => self.drop_from(i),
            Meta::State {
                vote,
                committed,
                purged,
            } => {
                self.vote = vote.or(self.vote);
                self.committed = committed.or(self.committed);
                if let Some(p) = purged {
                    self.drop_until(p);
                }
            }
        }
    }

    fn segment(&mut self, id: u64) -> Option<&mut Segment> {
        self.segments.iter_mut().find(|s| s.id == id)
    }

    fn add(&mut self, loc: Loc) {
        self.drop_from(loc.log_id.index);
        if let Some(s) = self.segment(loc.segment) {
            s.live += 1;
        }
        self.entries.insert(loc.log_id.index, loc);
    }

    fn forget(&mut self, gone: BTreeMap<u64, Loc>) {
        for l in gone.values() {
            if let Some(s) = self.segment(l.segment) {
                s.live -= 1;
            }
        }
    }

    fn drop_from(&mut self, index: u64) {
        let gone = self.entries.split_off(&index);
        self.forget(gone);
        self.cache.drop_from(index);
    }

    fn drop_until(&mut self, id: LogId<NodeId>) {
        let keep = self.entries.split_off(&(id.index + 1));
        let gone = std::mem::replace(&mut self.entries, keep);
        self.forget(gone);
        self.cache.drop_until(id.index);
        if self.purged < Some(id) {
            self.purged = Some(id);
        }
    }

    /// Deletes the oldest segments while none of the log's entries is in them.
    fn shed(&mut self) {
        while self.segments.len() > 1 && self.segments[0].live == 0 {
            let id = self.segments[0].id;
            if let Err(e) = segments::remove(&self.dir, id) {
                tracing::warn!(error = %e, segment = id, "deleting a purged raft log segment");
                return;
            }
            self.segments.pop_front();
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

    /// Appends `bytes` whole to the active segment, or nothing: a write that fails
    /// part way is cut off again (should that fail too, the next write here cuts it
    /// first, or the next start). Returns where they start.
    fn write(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let failed = self.failed.is_some();
        let seg = self.segments.back_mut().expect("the log has a segment");
        let file = &*seg.file;
        if failed {
            // The last write may have left a torn tail this could not cut.
            file.set_len(seg.len)?;
        }
        let mut f = file;
        if let Err(e) = f.write_all(bytes) {
            let _ = file.set_len(seg.len);
            return Err(e);
        }
        let at = seg.len;
        seg.len += bytes.len() as u64;
        Ok(at)
    }

    /// Notes `entries`, written one after another (records of `lens` bytes) from `at`
    /// in `segment`: where each is, and the newest decoded.
    fn appended(&mut self, entries: &[Entry], lens: &[u32], segment: u64, mut at: u64) {
        for (e, &len) in entries.iter().zip(lens) {
            self.add(Loc {
                log_id: e.log_id,
                segment,
                at,
                len,
            });
            self.cache.insert(e);
            at += len as u64;
        }
    }

    /// Begins a new segment once the active one is full. Failing (a full disk), the
    /// active one goes on growing, and this is tried again at the next append.
    fn maybe_roll(&mut self) {
        if self.active().len < segments::SEGMENT_BYTES {
            return;
        }
        let id = self.active().id + 1;
        let state = self.state();
        match segments::begin(&self.dir, id, &state).and_then(|s| {
            let sync = s.file.try_clone()?;
            Ok((s, sync))
        }) {
            Ok((seg, sync)) => {
                let _ = self.flusher.send(Flush::Reopen(sync));
                self.segments.push_back(seg);
            }
            Err(e) => tracing::warn!(error = %e, "beginning a new raft log segment"),
        }
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
            .map(|l| l.log_id)
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
        self.write_meta(Meta::Vote(*vote), true).await;
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
        self.write_meta(Meta::Committed(committed), false).await;
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
        let mut bytes = Vec::new();
        let lens: Vec<u32> = entries
            .iter()
            .map(|e| record::put_entry(&mut bytes, e) as u32)
            .collect();
        let (at, segment) = self
            .until_written(|inner| Ok((inner.write(&bytes)?, inner.active().id)))
            .await;
        let mut inner = self.inner.lock();
        inner.appended(&entries, &lens, segment, at);
        match inner.policy {
            FsyncPolicy::Always => {
                let _ = inner.flusher.send(Flush::Wait(callback));
            }
            _ => callback.log_io_completed(Ok(())),
        }
        inner.maybe_roll();
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(Meta::TruncatedFrom(log_id.index), false)
            .await;
        self.inner.lock().drop_from(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(Meta::Purged(log_id), false).await;
        let mut inner = self.inner.lock();
        inner.drop_until(log_id);
        inner.shed();
        Ok(())
    }
}
