//! Validating a snapshot image before anything reads it in place, and copying one out.

use rkyv::rancor;

use super::error::SnapshotError;
use super::hasher;
use super::layout::{ArchivedWordMap, HEADER_LEN, Header, checksum, read_header};
use super::toplist;
use crate::storage::table::WordMap;

/// Fully validates a snapshot image of either kind: header, exact length, checksum,
/// and the archive itself (rkyv bytecheck). Once this has passed for a buffer that is
/// never modified, reading the archive needs no further checks.
pub fn validate(bytes: &[u8]) -> Result<(Header, &ArchivedWordMap), SnapshotError> {
    validate_until(bytes, &|| false)
}

/// [`validate`], checking `stop` between chunks of the checksum: a large file's
/// validation does not hold up a shutdown.
pub fn validate_until<'a>(
    bytes: &'a [u8],
    stop: &dyn Fn() -> bool,
) -> Result<(Header, &'a ArchivedWordMap), SnapshotError> {
    let header = read_header(bytes, bytes.len() as u64)?;
    let (head, payload) = bytes.split_at(HEADER_LEN);
    let actual = checksum(head, payload, stop).ok_or(SnapshotError::Cancelled)?;
    if actual != header.checksum {
        return Err(SnapshotError::Checksum {
            expected: header.checksum,
            actual,
        });
    }
    if !header.reserved_is_zero(bytes) {
        return Err(SnapshotError::Reserved);
    }
    let archive = &bytes[header.archive_offset()..];
    if archive.as_ptr().align_offset(16) != 0 {
        return Err(SnapshotError::Misaligned);
    }
    let map = rkyv::access::<ArchivedWordMap, rancor::Error>(archive)
        .map_err(|e| SnapshotError::Archive(e.to_string()))?;
    if map.len() as u64 != header.words {
        return Err(SnapshotError::WordCount {
            expected: header.words,
            actual: map.len() as u64,
        });
    }
    if let Some(top) = header.top {
        toplist::check(bytes, top, header.words, |w| {
            hasher::with_key(header.key, || map.get(w).map(|v| v.to_native()))
        })?;
    }
    Ok((header, map))
}

/// Copies an archived map into an owned one (the leader's restore path).
pub fn to_word_map(archived: &ArchivedWordMap) -> WordMap {
    let mut map = WordMap::with_capacity_and_hasher(archived.len(), Default::default());
    for (k, v) in archived.iter() {
        map.insert(k.as_str().to_owned(), v.to_native());
    }
    map
}
