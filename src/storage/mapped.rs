//! A snapshot file mapped into memory and read in place. The library's only `unsafe`
//! (the binary has one more: setting environment variables from the config file
//! before any thread starts).
//!
//! Soundness rests on one invariant that the leader keeps ([`crate::storage::snapshot::publish`]):
//! **a published snapshot file is never modified or truncated.** New snapshots are
//! written to a temp file and renamed over the old name, so the inode a replica mapped
//! keeps its bytes until the last mapping goes away. (Anyone else writing into the
//! leader's data directory breaks that: a truncated mapping faults with SIGBUS.)
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memmap2::Mmap;

use crate::storage::snapshot::{self, ArchivedWordMap, HEADER_LEN, Header, SnapshotError};

/// A validated, memory-mapped snapshot. Lookups read the mapping directly.
pub struct MappedSnapshot {
    mmap: Mmap,
    header: Header,
    /// (device, inode) of the file mapped: tells whether the published name now points
    /// at another file.
    identity: (u64, u64),
}

impl MappedSnapshot {
    /// Maps `path` and validates it completely (header, length, checksum, archive).
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        Self::open_until(path, u64::MAX, &|| false)
    }

    /// [`MappedSnapshot::open`] for a file of at most `max_bytes` that is regular and
    /// not sparse (checked before anything is read; see [`snapshot::open_regular`]),
    /// giving up when `stop` says so.
    pub fn open_until(
        path: &Path,
        max_bytes: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<Self, SnapshotError> {
        let (file, meta) = snapshot::open_regular(path, max_bytes)?;
        if meta.len() < HEADER_LEN as u64 {
            return Err(SnapshotError::TooShort {
                len: meta.len() as usize,
            });
        }
        // SAFETY: the leader never modifies or truncates a published snapshot (it
        // replaces the name by rename), so the mapped bytes do not change under us.
        let mmap = unsafe { Mmap::map(&file)? };
        let (header, _) = snapshot::validate_until(&mmap, stop)?;
        Ok(MappedSnapshot {
            mmap,
            header,
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// The archived table, read in place.
    pub fn map(&self) -> &ArchivedWordMap {
        // SAFETY: `open` validated these exact bytes with rkyv's bytecheck
        // (`snapshot::validate`), the mapping is read-only and page-aligned (so the
        // payload at offset 64 is 16-aligned), and the file is never modified (module
        // docs), so the archive is still valid: no need to check it per lookup.
        unsafe { rkyv::access_unchecked::<ArchivedWordMap>(&self.mmap[HEADER_LEN..]) }
    }

    /// The count of an (already normalised) word.
    pub fn get(&self, word: &str) -> u64 {
        self.map().get(word).map(|v| v.to_native()).unwrap_or(0)
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.mmap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }
}

/// (device, inode) of the file at `path` now, if any.
pub fn identity_of(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::snapshot::{Meta, encode, publish};
    use crate::storage::table::WordMap;
    use crate::words::Tokenizer;

    #[test]
    fn maps_and_reads_in_place_and_survives_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = WordMap::default();
        m.insert("hello".into(), 2);
        let meta = Meta {
            tokenizer: Tokenizer::Unicode,
            seq: 1,
            incarnation: 9,
        };
        let path = publish(dir.path(), &encode(&m, meta).unwrap()).unwrap();
        let first = MappedSnapshot::open(&path).unwrap();
        assert_eq!((first.get("hello"), first.get("nope")), (2, 0));
        assert_eq!(first.header().seq, 1);
        assert_eq!(identity_of(&path), Some(first.identity()));
        // Replacing the published file leaves the old mapping intact.
        m.insert("hello".into(), 5);
        publish(dir.path(), &encode(&m, Meta { seq: 2, ..meta }).unwrap()).unwrap();
        assert_eq!(first.get("hello"), 2);
        let second = MappedSnapshot::open(&path).unwrap();
        assert_eq!(second.get("hello"), 5);
        assert_ne!(second.identity(), first.identity());
    }

    #[test]
    fn rejects_empty_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            MappedSnapshot::open(&path),
            Err(SnapshotError::TooShort { .. })
        ));
        let img = encode(
            &WordMap::default(),
            Meta {
                tokenizer: Tokenizer::Unicode,
                seq: 1,
                incarnation: 1,
            },
        )
        .unwrap();
        let mut bad = img.to_vec();
        bad[20] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            MappedSnapshot::open(&path),
            Err(SnapshotError::Checksum { .. })
        ));
    }
}
