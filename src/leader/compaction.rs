//! A compaction of a leader's base and delta into a new base, on a thread of its own
//! (see `publisher.rs`, which starts it and puts its base in place).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::storage::delta::file_over_file;
use crate::storage::mapped::MappedSnapshot;
use crate::storage::snapshot::{self, Meta, Staged};

/// A compaction starts once the delta holds an eighth of the base's words (or the
/// configured minimum, if that is more).
const COMPACT_FRACTION: u64 = 8;

/// A compaction under way.
pub(super) struct Compaction {
    /// The seq of the base it writes.
    pub seq: u64,
    /// The digest of the table at that seq.
    pub digest: u64,
    pub started: Instant,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    done: Receiver<Result<(Staged, MappedSnapshot), String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compaction {
    /// Starts writing `delta` over `base` (the table at `meta.seq`, whose digest is
    /// `digest`) as a new base in `dir`, under its temp name, and checking it whole.
    pub fn start(
        dir: PathBuf,
        meta: Meta,
        base: Arc<MappedSnapshot>,
        delta: Arc<MappedSnapshot>,
        digest: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let stopped = stop.clone();
        let at = dir.clone();
        let thread = std::thread::Builder::new()
            .name("memdb-compactor".into())
            .spawn(move || {
                let stop = || stopped.load(Ordering::Acquire);
                let result = snapshot::stage_until(
                    &at,
                    snapshot::TEMP_NAME,
                    meta,
                    None,
                    file_over_file(&delta, &base),
                    &stop,
                )
                .and_then(|staged| {
                    // Checked whole here, off the publisher's thread, as a replica will.
                    let mapped = MappedSnapshot::open_until(&staged.path, u64::MAX, &stop)?;
                    Ok((staged, mapped))
                })
                .map_err(|e| e.to_string());
                if result.is_err() {
                    let _ = std::fs::remove_file(at.join(snapshot::TEMP_NAME));
                }
                let _ = done_tx.send(result);
            })
            .expect("spawning the compaction thread");
        Compaction {
            seq: meta.seq,
            digest,
            started: Instant::now(),
            dir,
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
        // A base it finished but nobody installed.
        let _ = std::fs::remove_file(self.dir.join(snapshot::TEMP_NAME));
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
}
