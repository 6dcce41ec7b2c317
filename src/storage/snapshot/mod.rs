//! The snapshot file: the leader's whole table as an rkyv archive behind a fixed header.
//!
//! The same file is the leader's checkpoint (restored at start) and what local replicas
//! memory-map and read in place, so its layout is a contract:
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"MEMDBSNP"
//!      8     4  format version, u32 LE (currently 1)
//!     12     4  tokenizer code, u32 LE (0 unicode, 1 whitespace)
//!     16     8  seq: the last batch included, u64 LE
//!     24     8  incarnation of the leader that wrote it, u64 LE
//!     32     8  payload length in bytes, u64 LE (file length = 64 + this, exactly)
//!     40     8  distinct words, u64 LE
//!     48     8  written at, Unix milliseconds, u64 LE
//!     56     8  checksum: xxh3-64 of bytes 0..56 followed by the payload
//!     64     …  payload: rkyv archive of HashMap<String, u64> (an ArchivedHashMap)
//! ```
//!
//! The header is 64 bytes, a multiple of 16, so a payload that starts page- or
//! 16-aligned stays aligned for rkyv. The checksum covers the header fields too, so a
//! flipped bit in `seq` is caught as surely as one in the payload. rkyv finds its root
//! from the end of the buffer, so trailing garbage could validate as some other map: the
//! exact length check is what rejects it.
//!
//! Publishing never modifies a file a reader may have mapped: write a temp file in the
//! same directory, fsync it, rename it over [`FILE_NAME`], fsync the directory.

mod file;

use std::io;

pub use file::{load, open_regular, publish, write_atomically};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::Incarnation;
use rkyv::collections::swiss_table::ArchivedHashMap;
use rkyv::rancor;
use rkyv::string::ArchivedString;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::Xxh3;

use crate::storage::table::WordMap;
use crate::words::Tokenizer;

pub const MAGIC: [u8; 8] = *b"MEMDBSNP";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
/// The published snapshot in a data directory.
pub const FILE_NAME: &str = "snapshot.memdb";
/// Where the next snapshot is written before it is renamed over [`FILE_NAME`].
pub const TEMP_NAME: &str = ".snapshot.memdb.tmp";
const CHECKSUM_OFFSET: usize = 56;

/// The archived table as it lies in the file.
pub type ArchivedWordMap = ArchivedHashMap<ArchivedString, rkyv::Archived<u64>>;

/// The header fields, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub tokenizer: Tokenizer,
    pub seq: u64,
    /// The leader incarnation that wrote it; `None` for a zero field.
    pub incarnation: Option<Incarnation>,
    pub payload_len: u64,
    pub words: u64,
    pub written_unix_ms: u64,
    pub checksum: u64,
}

/// Why a snapshot could not be written or was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("file is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("not a memdb snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot format version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u32),
    #[error("unknown tokenizer code {0} in snapshot header")]
    UnknownTokenizer(u32),
    #[error("file is {actual} bytes but its header says {expected}")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("checksum mismatch: header says {expected:016x}, content hashes to {actual:016x}")]
    Checksum { expected: u64, actual: u64 },
    #[error("payload is not 16-byte aligned in memory")]
    Misaligned,
    #[error("archive failed validation: {0}")]
    Archive(String),
    #[error("header says {expected} words, archive holds {actual}")]
    WordCount { expected: u64, actual: u64 },
    #[error("serializing the table failed: {0}")]
    Serialize(String),
    #[error("{0} is not a regular file")]
    NotRegularFile(String),
    #[error("file is {len} bytes, over the {max}-byte limit for a snapshot")]
    TooLarge { len: u64, max: u64 },
    #[error(
        "file is {len} bytes but only {allocated} are allocated on disk: a sparse file, \
         which the leader never writes"
    )]
    Sparse { len: u64, allocated: u64 },
    #[error("validation stopped: shutting down")]
    Cancelled,
}

/// What a snapshot says about itself besides the table.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub tokenizer: Tokenizer,
    pub seq: u64,
    pub incarnation: Incarnation,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The checksum of a snapshot: xxh3 of the header fields before it, then the payload,
/// fed in chunks so that `stop` can end a long one (`None` then).
fn checksum(header_fields: &[u8], payload: &[u8], stop: &dyn Fn() -> bool) -> Option<u64> {
    const CHUNK: usize = 64 << 20;
    let mut h = Xxh3::new();
    h.update(&header_fields[..CHECKSUM_OFFSET]);
    for chunk in payload.chunks(CHUNK) {
        if stop() {
            return None;
        }
        h.update(chunk);
    }
    Some(h.digest())
}

/// Serializes `map` into a complete snapshot image (header + archive) in one buffer.
pub fn encode(map: &WordMap, meta: Meta) -> Result<AlignedVec, SnapshotError> {
    let mut buf = AlignedVec::<16>::with_capacity(HEADER_LEN + map.len() * 48 + 64);
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    // rkyv writes after what the buffer holds; its relative pointers do not care where
    // the archive starts, and 64 keeps it 16-aligned.
    let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(map, buf)
        .map_err(|e| SnapshotError::Serialize(e.to_string()))?;
    let payload_len = (buf.len() - HEADER_LEN) as u64;
    let written = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let h = buf.as_mut_slice();
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&meta.tokenizer.code().to_le_bytes());
    h[16..24].copy_from_slice(&meta.seq.to_le_bytes());
    h[24..32].copy_from_slice(&meta.incarnation.raw().to_le_bytes());
    h[32..40].copy_from_slice(&payload_len.to_le_bytes());
    h[40..48].copy_from_slice(&(map.len() as u64).to_le_bytes());
    h[48..56].copy_from_slice(&written.to_le_bytes());
    let sum = {
        let (head, payload) = h.split_at(HEADER_LEN);
        checksum(head, payload, &|| false).expect("never stopped")
    };
    h[56..64].copy_from_slice(&sum.to_le_bytes());
    Ok(buf)
}

/// Decodes and checks the header alone (magic, version, tokenizer, exact file length).
/// Cheap: a replica may poll this to see whether a newer snapshot exists.
pub fn read_header(bytes: &[u8], file_len: u64) -> Result<Header, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::TooShort { len: bytes.len() });
    }
    if bytes[0..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = le_u32(bytes, 8);
    if version != VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let code = le_u32(bytes, 12);
    let tokenizer = Tokenizer::from_code(code).ok_or(SnapshotError::UnknownTokenizer(code))?;
    let payload_len = le_u64(bytes, 32);
    let expected = payload_len.saturating_add(HEADER_LEN as u64);
    if expected != file_len {
        return Err(SnapshotError::LengthMismatch {
            expected,
            actual: file_len,
        });
    }
    Ok(Header {
        version,
        tokenizer,
        seq: le_u64(bytes, 16),
        incarnation: Incarnation::from_raw(le_u64(bytes, 24)),
        payload_len,
        words: le_u64(bytes, 40),
        written_unix_ms: le_u64(bytes, 48),
        checksum: le_u64(bytes, 56),
    })
}

/// Fully validates a snapshot image: header, exact length, checksum, and the archive
/// itself (rkyv bytecheck). Once this has passed for a buffer that is never modified,
/// reading the archive needs no further checks.
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
    if payload.as_ptr().align_offset(16) != 0 {
        return Err(SnapshotError::Misaligned);
    }
    let map = rkyv::access::<ArchivedWordMap, rancor::Error>(payload)
        .map_err(|e| SnapshotError::Archive(e.to_string()))?;
    if map.len() as u64 != header.words {
        return Err(SnapshotError::WordCount {
            expected: header.words,
            actual: map.len() as u64,
        });
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn sample(n: usize) -> WordMap {
        let mut m = WordMap::default();
        for i in 0..n {
            m.insert(format!("w{i}é"), i as u64 * 7 + 1);
        }
        m.insert(String::new() + "hello", 2);
        m
    }

    pub(super) fn meta() -> Meta {
        Meta {
            tokenizer: Tokenizer::Whitespace,
            seq: 42,
            incarnation: Incarnation::from_raw(0xdead_beef).unwrap(),
        }
    }

    /// Copies into a 16-aligned buffer, as a mapping or `load` would provide.
    fn aligned(bytes: &[u8]) -> AlignedVec {
        let mut v = AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn round_trip_keeps_every_key_and_the_header() {
        let map = sample(10_000);
        let img = encode(&map, meta()).unwrap();
        let (h, archived) = validate(&img).unwrap();
        assert_eq!(h.seq, 42);
        assert_eq!(h.incarnation, Incarnation::from_raw(0xdead_beef));
        assert_eq!(h.tokenizer, Tokenizer::Whitespace);
        assert_eq!(h.words, map.len() as u64);
        assert_eq!(h.payload_len as usize + HEADER_LEN, img.len());
        for (k, v) in &map {
            assert_eq!(
                archived.get(k.as_str()).map(|v| v.to_native()),
                Some(*v),
                "{k}"
            );
        }
        assert!(archived.get("absent").is_none());
        assert_eq!(to_word_map(archived), map);
    }

    #[test]
    fn empty_table_round_trips() {
        let img = encode(&WordMap::default(), meta()).unwrap();
        let (h, archived) = validate(&img).unwrap();
        assert_eq!((h.words, archived.len()), (0, 0));
    }

    #[test]
    fn truncated_files_are_rejected() {
        let img = encode(&sample(100), meta()).unwrap();
        for cut in [
            0,
            10,
            HEADER_LEN - 1,
            HEADER_LEN,
            img.len() / 2,
            img.len() - 1,
        ] {
            let err = validate(&aligned(&img[..cut])).unwrap_err();
            assert!(
                matches!(
                    err,
                    SnapshotError::TooShort { .. } | SnapshotError::LengthMismatch { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let img = encode(&sample(100), meta()).unwrap();
        let mut longer = img.to_vec();
        longer.extend_from_slice(&encode(&WordMap::default(), meta()).unwrap()[HEADER_LEN..]);
        let err = validate(&aligned(&longer)).unwrap_err();
        assert!(matches!(err, SnapshotError::LengthMismatch { .. }), "{err}");
    }

    #[test]
    fn wrong_magic_and_version_are_rejected() {
        let img = encode(&sample(10), meta()).unwrap();
        let mut bad = img.to_vec();
        bad[0] = b'X';
        assert!(matches!(
            validate(&aligned(&bad)).unwrap_err(),
            SnapshotError::BadMagic
        ));
        let mut bad = img.to_vec();
        bad[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            validate(&aligned(&bad)).unwrap_err(),
            SnapshotError::UnsupportedVersion(2)
        ));
        let mut bad = img.to_vec();
        bad[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            validate(&aligned(&bad)).unwrap_err(),
            SnapshotError::UnknownTokenizer(9)
        ));
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let img = encode(&sample(20), meta()).unwrap();
        // Every position, header included: a flip anywhere must fail validation.
        for i in 0..img.len() {
            let mut bad = img.to_vec();
            bad[i] ^= 0x10;
            assert!(
                validate(&aligned(&bad)).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn misaligned_payload_is_refused_not_misread() {
        let img = encode(&sample(10), meta()).unwrap();
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0u8]);
        shifted.extend_from_slice(&img);
        assert!(matches!(
            validate(&shifted[1..]).unwrap_err(),
            SnapshotError::Misaligned
        ));
    }
}
