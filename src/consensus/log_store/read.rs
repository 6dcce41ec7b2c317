//! Reading entries back: the newest from the cache, older ones from their segments,
//! outside the log's lock (a segment deleted meanwhile stays readable through its open
//! file), each checked against its record's checksum and id.

use std::fmt::Debug;
use std::fs::File;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::{RaftLogReader, StorageError};

use super::{Loc, LogStore, bounds, read_error, record, segments};
use crate::consensus::types::{Entry, NodeId, TypeConfig};

impl RaftLogReader<TypeConfig> for LogStore {
    /// The newest entries come from the cache; older ones are read back from their
    /// segments, outside the lock (a segment deleted meanwhile stays readable through
    /// its open file).
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
        let wanted: Vec<(Loc, Option<Entry>, Option<Arc<File>>)> = {
            let inner = self.inner.lock();
            inner
                .entries
                .range(first..end)
                .map(|(&i, l)| match inner.cache.get(i) {
                    Some(e) => (*l, Some(e.clone()), None),
                    None => {
                        let file = inner
                            .segments
                            .iter()
                            .find(|s| s.id == l.segment)
                            .map(|s| s.file.clone());
                        (*l, None, file)
                    }
                })
                .collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut run: Option<(Arc<File>, u64, Vec<Loc>)> = None;
        for (loc, cached, file) in wanted {
            if let Some(e) = cached {
                read_run(run.take(), &mut out)?;
                out.push(e);
                continue;
            }
            let file = file.ok_or_else(|| {
                read_error(format!(
                    "raft log entry {} is in segment {}, which is gone",
                    loc.log_id.index, loc.segment
                ))
            })?;
            match &mut run {
                Some((f, end, locs)) if Arc::ptr_eq(f, &file) && *end == loc.at => {
                    *end += loc.len as u64;
                    locs.push(loc);
                }
                _ => {
                    read_run(run.take(), &mut out)?;
                    run = Some((file, loc.at + loc.len as u64, vec![loc]));
                }
            }
        }
        read_run(run, &mut out)?;
        if let Some(w) = out
            .windows(2)
            .find(|w| w[1].log_id.index != w[0].log_id.index + 1)
        {
            return Err(read_error(format!(
                "the raft log has a gap between entries {} and {}",
                w[0].log_id.index, w[1].log_id.index
            )));
        }
        Ok(out)
    }
}

/// Reads back a run of entries that lie one after another in one segment, checking
/// each against its record's checksum and id.
fn read_run(
    run: Option<(Arc<File>, u64, Vec<Loc>)>,
    out: &mut Vec<Entry>,
) -> Result<(), StorageError<NodeId>> {
    let Some((file, end, locs)) = run else {
        return Ok(());
    };
    let start = locs[0].at;
    let bytes = segments::read_at(&file, start, (end - start) as usize)
        .map_err(|e| read_error(format!("reading the raft log: {e}")))?;
    for l in locs {
        let at = (l.at - start) as usize;
        let e = record::entry(&bytes[at..at + l.len as usize])
            .ok()
            .filter(|e| e.log_id == l.log_id)
            .ok_or_else(|| {
                read_error(format!(
                    "raft log entry {} reads back damaged from segment {}",
                    l.log_id.index, l.segment
                ))
            })?;
        out.push(e);
    }
    Ok(())
}
