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

/// A delta merge starts once this many recent deltas are on the delta: every read
/// that misses the newer files probes each of them.
pub(super) const RECENT_FILES: usize = 4;

/// Whether `recent_files` recent deltas of `recent_words` in all, over a delta of
/// `delta_words` (on a base of `base_words`), should be merged into it: to keep the
/// chain short; and when they and the delta together are due for a compaction, the
/// merge comes first (a compaction merges the delta alone into the base).
pub(super) fn merge_due(
    recent_files: usize,
    recent_words: u64,
    delta_words: u64,
    base_words: u64,
    compact_after: usize,
) -> bool {
    recent_files > 0
        && (recent_files >= RECENT_FILES
            || compaction_due(delta_words + recent_words, base_words, compact_after))
}

/// A merge under way.
pub(super) struct Compaction {
    /// The seq of the file it writes.
    pub seq: u64,
    /// The digest of the table at that seq.
    pub digest: u64,
    pub started: Instant,
    /// The file it merges into (the base, or the delta).
    pub under: Arc<MappedSnapshot>,
    dir: PathBuf,
    temp: &'static str,
    stop: Arc<AtomicBool>,
    done: Receiver<Result<(Staged, MappedSnapshot), String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compaction {
    /// Starts writing the files `over` (newest first) over `under` (the table at `meta.seq`, whose digest is
    /// `digest`) as a new file in `dir` under `temp`: a base when `base` is `None`, else
    /// a delta on it. Checks it whole once written.
    pub fn start(
        dir: PathBuf,
        temp: &'static str,
        meta: Meta,
        base: Option<BaseRef>,
        over: Vec<Arc<MappedSnapshot>>,
        under: Arc<MappedSnapshot>,
        digest: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let stopped = stop.clone();
        let at = dir.clone();
        let (o, u) = (over, under.clone());
        let thread = std::thread::Builder::new()
            .name("memdb-compactor".into())
            .spawn(move || {
                let stop = || stopped.load(Ordering::Acquire);
                let result =
                    snapshot::stage_until(&at, temp, meta, base, files_over_file(&o, &u), &stop)
                        .and_then(|staged| {
                            // Checked whole here, off the publisher's thread, as a replica will.
                            let mapped = MappedSnapshot::open_until(&staged.path, u64::MAX, &stop)?;
                            Ok((staged, mapped))
                        })
                        .map_err(|e| e.to_string());
                if result.is_err() {
                    let _ = std::fs::remove_file(at.join(temp));
                }
                let _ = done_tx.send(result);
            })
            .expect("spawning the compaction thread");
        Compaction {
            seq: meta.seq,
            digest,
            started: Instant::now(),
            under,
            dir,
            temp,
            stop,
            done,
            thread: Some(thread),
        }
    }

    /// The new base, staged and mapped, once the thread is done.
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
    fn a_delta_merge_keeps_the_chain_short_and_comes_before_a_compaction() {
        use super::{RECENT_FILES, merge_due};
        assert!(!merge_due(0, 0, 0, 0, 0), "nothing to merge");
        assert!(!merge_due(
            RECENT_FILES - 1,
            1_000,
            1_000_000,
            10_000_000,
            100
        ));
        assert!(merge_due(RECENT_FILES, 4, 1_000_000, 10_000_000, 100));
        // The delta and the recent deltas together are due for a compaction: merge.
        assert!(merge_due(1, 1, 1_249_999, 10_000_000, 100));
        assert!(merge_due(1, 10, 0, 0, 10));
    }
}
