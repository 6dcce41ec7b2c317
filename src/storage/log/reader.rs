//! Catch-up: the batches after a given seq read back from the log for a replica the
//! in-memory backlog no longer reaches.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::{Next, next_record};
use super::segments::segments;
use crate::storage::batch::Batch;

/// Reads the batches after a given seq back from the log, for a replica that needs
/// them. Remembers where the last read stopped, so a replica catching up through many
/// pushes does not rescan its segment each time.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    /// The segment, offset and seq of the record the last read stopped before.
    cursor: Option<(PathBuf, u64, u64)>,
}

impl LogReader {
    pub fn new(dir: &Path) -> Self {
        LogReader {
            dir: dir.to_owned(),
            cursor: None,
        }
    }

    /// The consecutive batches from `after + 1`, at most `max_batches` and stopping
    /// once `max_bytes` of records were read (always at least one if any). Empty if the
    /// log no longer (or does not yet) hold `after + 1`. Blocking.
    ///
    /// Safe against the writer: a record still being written reads as torn and ends
    /// the read; a segment deleted meanwhile reads as absent.
    pub fn read_after(
        &mut self,
        after: u64,
        max_batches: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<Batch>> {
        let want = after + 1;
        let segs = segments(&self.dir)?;
        let Some(mut idx) = segs.iter().rposition(|(first, _)| *first <= want) else {
            return Ok(Vec::new());
        };
        let mut offset = match &self.cursor {
            Some((path, off, next)) if *next == want && *path == segs[idx].1 => *off,
            _ => 0,
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let path = &segs[idx].1;
            let mut file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            file.seek(SeekFrom::Start(offset))?;
            let mut r = io::BufReader::with_capacity(256 << 10, file);
            let mut payload = Vec::new();
            let full = loop {
                if out.len() >= max_batches || bytes >= max_bytes {
                    break true;
                }
                let Next::Record(batch, used) = next_record(&mut r, &mut payload)? else {
                    break false;
                };
                let next = out.last().map_or(want, |b: &Batch| b.seq + 1);
                if batch.seq < next {
                    offset += used as u64;
                    continue;
                }
                if batch.seq != next {
                    break false;
                }
                offset += used as u64;
                bytes += used;
                out.push(batch);
            };
            let next = out.last().map_or(want, |b| b.seq + 1);
            self.cursor = Some((path.clone(), offset, next));
            // At the end of a closed segment the history goes on in the next one.
            match segs.get(idx + 1) {
                Some((first, _)) if !full && *first == next => {
                    idx += 1;
                    offset = 0;
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::storage::log::testing::{batch, opts, torn_log};
    use crate::storage::log::{FsyncPolicy, Wal};

    #[test]
    fn the_reader_returns_consecutive_batches_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 0, opts(FsyncPolicy::No, 200, u64::MAX)).unwrap();
        for s in 1..=50 {
            wal.append(batch(s, &format!("w{s}"), s));
            if s % 3 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        assert!(segments(dir.path()).unwrap().len() > 5, "several segments");
        let mut r = LogReader::new(dir.path());
        let all = r.read_after(0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|b| b.seq).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
        assert_eq!(all[9], *batch(10, "w10", 10));
        // In steps, resuming where the last read stopped.
        let mut next = 17;
        while next < 50 {
            let got = r.read_after(next, 4, usize::MAX).unwrap();
            assert_eq!(got.first().unwrap().seq, next + 1);
            assert!(got.len() <= 4);
            next = got.last().unwrap().seq;
        }
        assert!(
            r.read_after(50, 10, 10).unwrap().is_empty(),
            "nothing newer"
        );
        // A byte budget still returns at least one batch.
        assert_eq!(r.read_after(3, 100, 1).unwrap().len(), 1);
        // Once the segments holding 1..=20 are gone, those seqs are unavailable.
        wal.checkpoint(30);
        drop(wal);
        for (first, path) in segments(dir.path()).unwrap() {
            if first <= 20 {
                fs::remove_file(path).unwrap();
            }
        }
        let first_kept = segments(dir.path()).unwrap()[0].0;
        assert!(r.read_after(0, 10, usize::MAX).unwrap().is_empty());
        let got = r.read_after(first_kept - 1, 10, usize::MAX).unwrap();
        assert_eq!(got[0].seq, first_kept);
    }

    #[test]
    fn the_reader_stops_at_a_torn_or_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = torn_log(dir.path(), FsyncPolicy::Always);
        let mut r = LogReader::new(dir.path());
        let got = r.read_after(0, 100, usize::MAX).unwrap();
        assert_eq!(got.len(), 4, "the torn fifth record is not returned");
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1; // inside the first record's payload
        fs::write(&path, &bytes).unwrap();
        let mut r = LogReader::new(dir.path());
        assert!(r.read_after(0, 100, usize::MAX).unwrap().is_empty());
    }
}
