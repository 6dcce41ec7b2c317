//! A merge of one of a leader's files into the one under it, on a thread of its own:
//! a compaction (the delta into the base: a new base) or a delta merge (the recent
//! delta into the delta: a new delta on the same base). `publisher.rs` starts them and
//! puts what they wrote in place.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::storage::delta::files_over_file;
use crate::storage::mapped::MappedSnapshot;
use crate::storage::snapshot::{self, BaseRef, Meta, Staged};

/// A compaction starts once the delta holds an eighth of the base's words (or the
/// configured minimum, if that is more).
const COMPACT_FRACTION: u64 = 8;

/// Recent deltas are merged once this many are on the chain: every read that misses
/// the newer files probes each of them.
pub(super) const RECENT_FILES: usize = 4;

/// What a merge of recent deltas writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Merge {
    /// Nothing is due.
    None,
    /// The recent deltas into one recent delta (it costs their words).
    Recent,
    /// The recent deltas into the delta (it costs the delta's words too).
    Delta,
}

/// What to do with `recent_files` recent deltas of `recent_words` in all, over a delta
/// of `delta_words` on a base of `base_words`: keep the chain short by merging them
/// into one, and into the delta once they hold a quarter of its words (or when they
/// and the delta together are due for a compaction, which merges the delta alone into
/// the base). Each merge then costs at most a quarter more than what it writes.
pub(super) fn merge_due(
    recent_files: usize,
    recent_words: u64,
    delta_words: u64,
    base_words: u64,
    compact_after: usize,
) -> Merge {
    if recent_files == 0 {
        Merge::None
    } else if recent_words >= delta_words / 4
        || compaction_due(delta_words + recent_words, base_words, compact_after)
    {
        Merge::Delta
    } else if recent_files >= RECENT_FILES {
        Merge::Recent
    } else {
        Merge::None
    }
}

/// A merge under way.
pub(super) struct Compaction {
    /// The seq of the file it writes.
    pub seq: u64,
    /// How far the chain on disk may fall back while its files are renamed in: the
    /// log must keep what follows.
    pub fallback: u64,
    /// The digest of the table at `seq`.
    pub digest: u64,
    pub started: Instant,
    /// The file it merges into (the base, or the delta), if any.
    pub under: Option<Arc<MappedSnapshot>>,
    /// The files it merges over it, newest first.
    pub over: Vec<Arc<MappedSnapshot>>,
    dir: PathBuf,
    temp: &'static str,
    stop: Arc<AtomicBool>,
    done: Receiver<Result<(Staged, MappedSnapshot), String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compaction {
    /// Starts writing the files `over` (newest first) over `under` (the table at
    /// `meta.seq`, whose digest is `digest`) as a new file in `dir` under `temp`: a base
    /// when `base` is `None`, else a delta on it. Checks it whole once written.
    /// `fallback`: see [`Compaction::fallback`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: PathBuf,
        temp: &'static str,
        meta: Meta,
        base: Option<BaseRef>,
        over: Vec<Arc<MappedSnapshot>>,
        under: Option<Arc<MappedSnapshot>>,
        digest: u64,
        fallback: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let stopped = stop.clone();
        let at = dir.clone();
        let (o, u) = (over.clone(), under.clone());
        let thread = std::thread::Builder::new()
            .name("memdb-compactor".into())
            .spawn(move || {
                let stop = || stopped.load(Ordering::Acquire);
                // Each word once, from the newest file holding it, streamed from the
                // mapped files (nothing of them copied into memory).
                let result = snapshot::stage_until(
                    &at,
                    temp,
                    meta,
                    base,
                    files_over_file(&o, u.as_deref()),
                    &stop,
                );
                let result = result
                    .and_then(|staged| {
                        // Checked whole here, off the publisher's thread, as a replica will.
                        let mapped = MappedSnapshot::open_until(&staged.path, u64::MAX, &stop)?;
                        Ok((staged, mapped))
                    })
                    .map_err(|e| e.to_string());
                if result.is_err() {
                    let _ = std::fs::remove_file(at.join(temp));
                }
                // The writer's scratch was freed into this thread's arena, which glibc
                // keeps: given back here, off the publisher's thread, or the next
                // merge's scratch comes on top of it.
                crate::heap::trim();
                let _ = done_tx.send(result);
            })
            .expect("spawning the compaction thread");
        Compaction {
            seq: meta.seq,
            fallback,
            digest,
            started: Instant::now(),
            under,
            over,
            dir,
            temp,
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// The new file, staged and mapped, once the thread is done.
    pub fn poll(&self) -> Option<Result<(Staged, MappedSnapshot), String>> {
        match self.done.try_recv() {
            Ok(r) => Some(r),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                Some(Err("the compaction thread died".to_owned()))
            }
        }
    }

    /// Stops the thread and removes what it wrote.
    pub fn abandon(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A file it finished but nobody installed.
        let _ = std::fs::remove_file(self.dir.join(self.temp));
    }
}

impl Drop for Compaction {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a delta of `delta_words` over a base of `base_words` should be merged into
/// a new base: once it holds an eighth of the base or `compact_after` words, whichever
/// is more. An empty delta never is (a `compact_after` of 0 must not rewrite the base
/// every interval).
pub(super) fn compaction_due(delta_words: u64, base_words: u64, compact_after: usize) -> bool {
    let limit = (compact_after as u64)
        .max(base_words / COMPACT_FRACTION)
        .max(1);
    delta_words >= limit
}

#[cfg(test)]
mod tests {
    use super::compaction_due;

    #[test]
    fn a_compaction_is_due_at_an_eighth_of_the_base_or_the_minimum_never_when_empty() {
        assert!(
            !compaction_due(0, 0, 0),
            "an empty delta over an empty base"
        );
        assert!(!compaction_due(0, 1_000, 0), "an empty delta");
        assert!(compaction_due(1, 0, 0));
        assert!(!compaction_due(99, 0, 100));
        assert!(compaction_due(100, 0, 100));
        assert!(!compaction_due(124_999, 1_000_000, 100), "under an eighth");
        assert!(compaction_due(125_000, 1_000_000, 100));
    }

    #[test]
    fn recent_deltas_are_merged_into_one_then_into_the_delta() {
        use super::{Merge, RECENT_FILES, merge_due};
        assert_eq!(merge_due(0, 0, 0, 0, 0), Merge::None, "nothing to merge");
        let few = RECENT_FILES - 1;
        assert_eq!(
            merge_due(few, 1_000, 1_000_000, 10_000_000, 100),
            Merge::None
        );
        assert_eq!(
            merge_due(RECENT_FILES, 4, 1_000_000, 10_000_000, 100),
            Merge::Recent
        );
        // A quarter of the delta: into the delta.
        assert_eq!(
            merge_due(2, 250_000, 1_000_000, 10_000_000, 100),
            Merge::Delta
        );
        // They and the delta together are due for a compaction: into the delta first.
        assert_eq!(merge_due(1, 1, 1_249_999, 10_000_000, 100), Merge::Delta);
        assert_eq!(merge_due(1, 10, 0, 0, 10), Merge::Delta);
    }
}
