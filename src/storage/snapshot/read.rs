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
    let header = checked_head(bytes, stop)?;
    let map = structure(bytes, &header)?;
    Ok((header, map))
}

/// [`validate_until`] without handing out the archive, skipping its structural check
/// (rkyv bytecheck and the top list's) when `checked` says a file with this header
/// passed it before. The checksum is verified either way, so the bytes are the ones
/// that passed. What makes a restart at 10M words take milliseconds instead of
/// seconds (see [`super::checked`]). The caller reads the archive in place.
pub fn check_trusting(
    bytes: &[u8],
    stop: &dyn Fn() -> bool,
    checked: &dyn Fn(&Header) -> bool,
) -> Result<Header, SnapshotError> {
    let header = checked_head(bytes, stop)?;
    if !checked(&header) {
        structure(bytes, &header)?;
    }
    Ok(header)
}

/// The header, the checksum over the whole file, and where the archive starts.
fn checked_head(bytes: &[u8], stop: &dyn Fn() -> bool) -> Result<Header, SnapshotError> {
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
    if bytes[header.archive_offset()..].as_ptr().align_offset(16) != 0 {
        return Err(SnapshotError::Misaligned);
    }
    Ok(header)
}

/// The archive's structure (rkyv bytecheck), its word count and its top list.
fn structure<'a>(bytes: &'a [u8], header: &Header) -> Result<&'a ArchivedWordMap, SnapshotError> {
    let archive = &bytes[header.archive_offset()..];
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
    Ok(map)
}

/// Copies an archived map into an owned one (the leader's restore path).
pub fn to_word_map(archived: &ArchivedWordMap) -> WordMap {
    let mut map = WordMap::with_capacity_and_hasher(archived.len(), Default::default());
    for (k, v) in archived.iter() {
        map.insert(k.as_str().to_owned(), v.to_native());
    }
    map
}
