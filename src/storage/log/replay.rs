//! Recovery at start: every valid record after the snapshot's seq, applied in order; a
//! torn or damaged tail cut.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use super::format::{Next, next_record};
use super::segments::segments;
use crate::storage::layered::Layered;
use crate::storage::table::Table;
use crate::words::Deltas;

/// A table the log's records can be applied to, in seq order.
pub trait Replay {
    /// The seq of the last batch applied.
    fn seq(&self) -> u64;
    fn apply(&mut self, deltas: &Deltas, seq: u64);
}

impl Replay for Table {
    fn seq(&self) -> u64 {
        Table::seq(self)
    }

    fn apply(&mut self, deltas: &Deltas, seq: u64) {
        Table::apply(self, deltas, seq)
    }
}

impl Replay for Layered {
    fn seq(&self) -> u64 {
        Layered::seq(self)
    }

    fn apply(&mut self, deltas: &Deltas, seq: u64) {
        Layered::apply(self, deltas, seq)
    }
}

/// What replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Records applied (those past the snapshot's seq).
    pub applied: u64,
    /// Where the log was cut, if it was: the file and the reason.
    pub cut: Option<String>,
}

/// Applies every valid record after `table.seq()` from the segments in `dir`, cutting
/// a torn or corrupt tail.
pub fn replay(dir: &Path, table: &mut impl Replay) -> io::Result<Replayed> {
    let mut out = Replayed::default();
    let segs = segments(dir)?;
    let mut stop = false;
    for (i, (_, path)) in segs.iter().enumerate() {
        // A segment followed by one that starts at or before the next seq we need
        // holds nothing to apply (it was kept for replicas): skip reading it.
        if !stop
            && segs
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= table.seq() + 1)
        {
            continue;
        }
        if stop {
            // Past a cut: these records cannot be applied in order. Keep them aside.
            let aside = path.with_extension("log.corrupt");
            tracing::error!(from = %path.display(), to = %aside.display(), "setting aside a log segment after a cut");
            fs::rename(path, aside)?;
            continue;
        }
        let mut r = io::BufReader::with_capacity(256 << 10, File::open(path)?);
        let mut payload = Vec::new();
        let mut at = 0u64;
        let reason = loop {
            match next_record(&mut r, &mut payload)? {
                Next::End => break None,
                Next::Bad(why) => break Some(why.to_owned()),
                Next::Record(batch, _)
                    if batch.seq != table.seq() + 1 && batch.seq > table.seq() =>
                {
                    break Some(format!(
                        "record seq {} does not follow {}",
                        batch.seq,
                        table.seq()
                    ));
                }
                Next::Record(batch, used) => {
                    if batch.seq > table.seq() {
                        table.apply(&batch.deltas, batch.seq);
                        out.applied += 1;
                    }
                    at += used as u64;
                }
            }
        };
        if let Some(reason) = reason {
            tracing::warn!(segment = %path.display(), offset = at, reason = %reason, "cutting the log here");
            OpenOptions::new().write(true).open(path)?.set_len(at)?;
            out.cut = Some(format!("{} at byte {at}: {reason}", path.display()));
            stop = true;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::storage::log::FsyncPolicy;
    use crate::storage::log::segments;
    use crate::storage::log::testing::{torn_log, write_log};

    #[test]
    fn replay_applies_everything_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), FsyncPolicy::Always, 1..=10);
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, r.cut, t.seq()), (10, None, 10));
        assert_eq!((t.get("common"), t.get("w4")), (10, 4));
        // From a snapshot at seq 6 only 7..=10 are applied.
        let mut t = Table::new();
        t.apply(&vec![("common".into(), 6)], 6);
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, t.seq(), t.get("common")), (4, 10, 10));
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        torn_log(dir.path(), FsyncPolicy::No);
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, t.seq()), (4, 4));
        assert!(r.cut.unwrap().contains("torn"));
        // The next leader appends after the cut; a later replay sees one history.
        write_log(dir.path(), FsyncPolicy::Always, 5..=6);
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, r.cut, t.seq()), (6, None, 6));
    }

    #[test]
    fn a_flipped_byte_stops_replay_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), FsyncPolicy::Always, 1..=5);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert!(r.applied < 5 && r.cut.is_some(), "{r:?}");
        assert_eq!(t.seq(), r.applied);
    }
}
