//! The data directory's record of the snapshot files whose structure this node knows
//! to be sound (`snapshot.checked`), and the digest of the state each one completes.
//!
//! Checking a 10M-word base whole (rkyv's bytecheck of every entry, the top list
//! against the table) takes seconds; its checksum takes tens of milliseconds. A file
//! is recorded when this node has checked it whole (a merge's output, a file read at
//! start) or wrote it with its own serializer from words it holds (a publication,
//! whose checksum the writer computed reading the file back); the record keeps its
//! checksum and length. At the next start a
//! file whose checksum matches its header (verified over every byte, as always) and a
//! record is those same bytes, so the structural check is skipped. We chose this over
//! size-and-mtime: a flipped bit on disk still fails the checksum, and a file copied
//! in from elsewhere (a backup, another node) is checked whole, since no record names
//! it yet.
//!
//! Each record also keeps the table digest of the state the file completes (see
//! [`crate::storage::table::digest_of`]), so a restart need not visit every word to
//! compute it.
//!
//! The record is a small text file, replaced by rename and not synced: losing it costs
//! one slow start, never a wrong answer (a file it does not name is checked whole).

use std::io;
use std::path::Path;

use super::layout::Header;

/// The record's name in a data directory.
pub const CHECKED_NAME: &str = "snapshot.checked";
const TEMP_NAME: &str = ".snapshot.checked.tmp";
/// The first line, naming the record's format.
const FIRST_LINE: &str = "memdb snapshot.checked 1";

/// One file checked whole: its checksum and payload length (from its header), and
/// the digest of the state it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub checksum: u64,
    pub payload_len: u64,
    pub digest: u64,
}

impl Checked {
    /// The record of a file with `header`, whose state has `digest`.
    pub fn of(header: &Header, digest: u64) -> Self {
        Checked {
            checksum: header.checksum,
            payload_len: header.payload_len,
            digest,
        }
    }

    /// Whether this records the file with `header`.
    pub fn names(&self, header: &Header) -> bool {
        self.checksum == header.checksum && self.payload_len == header.payload_len
    }
}

/// The records in `dir`; none if the file is missing or not one this build wrote.
pub fn load(dir: &Path) -> Vec<Checked> {
    let Ok(text) = std::fs::read_to_string(dir.join(CHECKED_NAME)) else {
        return Vec::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(FIRST_LINE) {
        return Vec::new();
    }
    lines
        .map_while(|line| {
            let mut f = line.split(' ');
            let mut hex = || u64::from_str_radix(f.next()?, 16).ok();
            Some(Checked {
                checksum: hex()?,
                payload_len: hex()?,
                digest: hex()?,
            })
        })
        .collect()
}

/// Replaces the records in `dir` with `records` (the files on disk now).
pub fn store(dir: &Path, records: &[Checked]) -> io::Result<()> {
    let mut text = format!("{FIRST_LINE}\n");
    for r in records {
        text.push_str(&format!(
            "{:016x} {:x} {:016x}\n",
            r.checksum, r.payload_len, r.digest
        ));
    }
    let tmp = dir.join(TEMP_NAME);
    std::fs::write(&tmp, text)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(crate::fs::published_mode());
        std::fs::set_permissions(&tmp, mode)?;
    }
    std::fs::rename(&tmp, dir.join(CHECKED_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty(), "no file");
        let records = [
            Checked {
                checksum: u64::MAX,
                payload_len: 96,
                digest: 0,
            },
            Checked {
                checksum: 1,
                payload_len: 1 << 40,
                digest: 0xdead_beef,
            },
        ];
        store(dir.path(), &records).unwrap();
        assert_eq!(load(dir.path()), records);
        std::fs::write(dir.path().join(CHECKED_NAME), "something else\n1 2 3\n").unwrap();
        assert!(load(dir.path()).is_empty(), "another format");
        std::fs::write(
            dir.path().join(CHECKED_NAME),
            format!("{FIRST_LINE}\n1 2 3\nzz\n4 5 6\n"),
        )
        .unwrap();
        assert_eq!(load(dir.path()).len(), 1, "records up to a garbled line");
    }
}
