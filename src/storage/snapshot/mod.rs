//! Snapshot files: the leader's table as rkyv archives behind a fixed header, in two
//! kinds that together make one state.
//!
//! - The **base** (`snapshot.memdb`) is a whole table at its seq. It is rewritten only
//!   by a compaction, in the background.
//! - The **delta** (`delta.memdb`) holds the current count of every word changed since
//!   the base, and names that base by its checksum. It is what every interval
//!   republishes: its cost follows the words changed, not the table's size.
//!
//! A reader looks a word up in the delta, then in the base (two probes at most). A
//! delta whose base is not the one on disk (a compaction renamed a new base in
//! between) is not paired with it: the base alone is then a whole, newer state.
//!
//! The same files are the leader's checkpoint (restored at start) and what local
//! replicas memory-map and read in place, so their layout is a contract:
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"MEMDBSNP" (base) or b"MEMDBDLT" (delta)
//!      8     4  format version, u32 LE (currently 1)
//!     12     4  tokenizer code, u32 LE (0 unicode, 1 whitespace)
//!     16     8  seq: the last batch included, u64 LE
//!     24     8  incarnation of the leader that wrote it, u64 LE
//!     32     8  payload length in bytes, u64 LE (file length = 64 + this, exactly)
//!     40     8  words in the archive, u64 LE
//!     48     8  written at, Unix milliseconds, u64 LE
//!     56     8  checksum: xxh3-64 of bytes 0..56 followed by the payload
//!     64    16  version 2: the key its table is hashed with (see [`hasher`])
//!     80     …  rkyv archive of HashMap<String, u64> (an ArchivedHashMap)
//!
//! a delta's payload has 32 more bytes before its archive:
//!     80     8  the base's checksum, u64 LE
//!     88     8  the base's seq, u64 LE
//!     96     8  distinct words in base and delta together, u64 LE
//!    104     8  zero (reserved)
//!    112     …  rkyv archive of the changed words' counts
//! ```
//!
//! Version 1 (still read) had no key: its archive starts at 64 and is hashed with
//! rkyv's FxHash. The payload is everything after byte 64.
//!
//! The header is 64 bytes, the key 16 and the delta's prefix 32, multiples of 16, so an archive
//! that starts page- or 16-aligned stays aligned for rkyv. The checksum covers the
//! header fields too, so a flipped bit in `seq` is caught as surely as one in the
//! payload. rkyv finds its root from the end of the buffer, so trailing garbage could
//! validate as some other map: the exact length check is what rejects it.
//!
//! Publishing never modifies a file a reader may have mapped: write a temp file in the
//! same directory, fsync it, rename it over the published name, fsync the directory.

mod encode;
mod file;
pub mod hasher;
pub mod toplist;

use std::io;

pub use file::{Staged, install, load, publish, stage, stage_until};
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
pub const DELTA_MAGIC: [u8; 8] = *b"MEMDBDLT";
/// The version written; versions 1 and 2 are read too.
pub const VERSION: u32 = 3;
pub const HEADER_LEN: usize = 64;
/// A version 2 file's hash key, after the header.
pub const KEY_LEN: usize = 16;
/// Bytes of a delta's payload before its archive.
pub const DELTA_PREFIX_LEN: usize = 32;
/// The published base in a data directory.
pub const FILE_NAME: &str = "snapshot.memdb";
/// Where the next base is written before it is renamed over [`FILE_NAME`].
pub const TEMP_NAME: &str = ".snapshot.memdb.tmp";
/// The published delta in a data directory.
pub const DELTA_NAME: &str = "delta.memdb";
/// Where the next delta is written before it is renamed over [`DELTA_NAME`].
pub const DELTA_TEMP_NAME: &str = ".delta.memdb.tmp";
const CHECKSUM_OFFSET: usize = 56;

/// The archived table as it lies in the file.
pub type ArchivedWordMap =
    ArchivedHashMap<ArchivedString, rkyv::Archived<u64>, hasher::ArchiveHasher>;

/// Which of the two files a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole table.
    Base,
    /// The words changed since a base.
    Delta,
}

impl Kind {
    fn magic(self) -> [u8; 8] {
        match self {
            Kind::Base => MAGIC,
            Kind::Delta => DELTA_MAGIC,
        }
    }
}

/// The base a delta applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRef {
    pub checksum: u64,
    pub seq: u64,
    /// Distinct words in the base and the delta together.
    pub total_words: u64,
}

/// The header fields, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub version: u32,
    pub tokenizer: Tokenizer,
    pub seq: u64,
    /// The leader incarnation that wrote it; `None` for a zero field.
    pub incarnation: Option<Incarnation>,
    pub payload_len: u64,
    /// Words in this file's archive.
    pub words: u64,
    pub written_unix_ms: u64,
    pub checksum: u64,
    /// A delta's base (`None` for a base).
    pub base: Option<BaseRef>,
    /// The key the table is hashed with (`None`: version 1, FxHash).
    pub key: Option<(u64, u64)>,
    /// The file's top list (`None`: versions 1 and 2, which have none).
    pub top: Option<toplist::Section>,
}

impl Header {
    /// Where a delta's prefix starts (after the header and the key).
    fn prefix_offset(&self) -> usize {
        HEADER_LEN + if self.key.is_some() { KEY_LEN } else { 0 }
    }

    /// Where the top list (version 3) starts, from the start of the file.
    fn top_offset(&self) -> usize {
        self.prefix_offset()
            + match self.kind {
                Kind::Base => 0,
                Kind::Delta => DELTA_PREFIX_LEN,
            }
    }

    /// Where the archive starts, from the start of the file.
    pub fn archive_offset(&self) -> usize {
        self.top_offset() + self.top.map_or(0, |t| t.len)
    }

    /// Distinct words in the state this file completes (for a delta, with its base).
    pub fn total_words(&self) -> u64 {
        self.base.map_or(self.words, |b| b.total_words)
    }
}

/// Why a snapshot could not be written or was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("file is {len} bytes, shorter than its header")]
    TooShort { len: usize },
    #[error("not a memdb snapshot (bad magic)")]
    BadMagic,
    #[error("a {found:?} file where a {expected:?} was expected")]
    WrongKind { expected: Kind, found: Kind },
    #[error(
        "snapshot format version {0} is not supported (this build reads versions 1 to {VERSION})"
    )]
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
    #[error("the delta's reserved field is not zero")]
    Reserved,
    #[error("the top list is damaged: {0}")]
    TopList(String),
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

impl From<crate::fs::OpenError> for SnapshotError {
    fn from(e: crate::fs::OpenError) -> Self {
        use crate::fs::OpenError;
        match e {
            OpenError::Io(e) => SnapshotError::Io(e),
            OpenError::NotRegularFile(what) => SnapshotError::NotRegularFile(what),
            OpenError::TooLarge { len, max } => SnapshotError::TooLarge { len, max },
            OpenError::Sparse { len, allocated } => SnapshotError::Sparse { len, allocated },
        }
    }
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

/// A checksum in the making: xxh3 of the header fields before it, then the payload,
/// fed in chunks so that a long one can be stopped.
struct Checksum(Xxh3);

impl Checksum {
    fn new(header_fields: &[u8]) -> Self {
        let mut h = Xxh3::new();
        h.update(&header_fields[..CHECKSUM_OFFSET]);
        Checksum(h)
    }
}

/// The checksum of a snapshot, giving up (`None`) when `stop` says so.
fn checksum(header_fields: &[u8], payload: &[u8], stop: &dyn Fn() -> bool) -> Option<u64> {
    const CHUNK: usize = 64 << 20;
    let mut h = Checksum::new(header_fields);
    for chunk in payload.chunks(CHUNK) {
        if stop() {
            return None;
        }
        h.0.update(chunk);
    }
    Some(h.0.digest())
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The header's fields before the checksum.
fn header_fields(kind: Kind, meta: Meta, payload_len: u64, words: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&kind.magic());
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&meta.tokenizer.code().to_le_bytes());
    h[16..24].copy_from_slice(&meta.seq.to_le_bytes());
    h[24..32].copy_from_slice(&meta.incarnation.raw().to_le_bytes());
    h[32..40].copy_from_slice(&payload_len.to_le_bytes());
    h[40..48].copy_from_slice(&words.to_le_bytes());
    h[48..56].copy_from_slice(&now_unix_ms().to_le_bytes());
    h
}

fn delta_prefix(base: BaseRef) -> [u8; DELTA_PREFIX_LEN] {
    let mut p = [0u8; DELTA_PREFIX_LEN];
    p[0..8].copy_from_slice(&base.checksum.to_le_bytes());
    p[8..16].copy_from_slice(&base.seq.to_le_bytes());
    p[16..24].copy_from_slice(&base.total_words.to_le_bytes());
    p
}

/// A complete snapshot image (header + archive) of `entries` in one buffer: a base
/// when `base` is `None`, else a delta on it.
pub fn encode_entries<'a, I>(
    entries: I,
    meta: Meta,
    base: Option<BaseRef>,
) -> Result<AlignedVec, SnapshotError>
where
    I: Iterator<Item = (&'a str, u64)> + Clone,
{
    encode_keyed(entries, meta, base, new_key())
}

/// A fresh random key for a file's table.
fn new_key() -> (u64, u64) {
    rand::random()
}

fn key_bytes(key: (u64, u64)) -> [u8; KEY_LEN] {
    let mut b = [0u8; KEY_LEN];
    b[0..8].copy_from_slice(&key.0.to_le_bytes());
    b[8..16].copy_from_slice(&key.1.to_le_bytes());
    b
}

/// [`encode_entries`] with the hash key given.
fn encode_keyed<'a, I>(
    entries: I,
    meta: Meta,
    base: Option<BaseRef>,
    key: (u64, u64),
) -> Result<AlignedVec, SnapshotError>
where
    I: Iterator<Item = (&'a str, u64)> + Clone,
{
    let kind = if base.is_some() {
        Kind::Delta
    } else {
        Kind::Base
    };
    let mut buf = AlignedVec::<16>::with_capacity(HEADER_LEN + KEY_LEN + DELTA_PREFIX_LEN + 64);
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    buf.extend_from_slice(&key_bytes(key));
    if let Some(b) = base {
        buf.extend_from_slice(&delta_prefix(b));
    }
    let (top, len) = top_section(entries.clone());
    buf.extend_from_slice(&top);
    // rkyv writes after what the buffer holds; its relative pointers do not care where
    // the archive starts, and the 16-multiples before it keep it 16-aligned.
    let (mut buf, words) =
        encode::write_entries(buf, entries, len, encode::load_factor(base.is_some()), key)?;
    let payload_len = (buf.len() - HEADER_LEN) as u64;
    let h = buf.as_mut_slice();
    h[..HEADER_LEN].copy_from_slice(&header_fields(kind, meta, payload_len, words as u64));
    let sum = {
        let (head, payload) = h.split_at(HEADER_LEN);
        checksum(head, payload, &|| false).expect("never stopped")
    };
    h[56..64].copy_from_slice(&sum.to_le_bytes());
    Ok(buf)
}

/// The top list section of a file of `entries`, and how many entries there are (one
/// pass for both).
fn top_section<'a>(entries: impl Iterator<Item = (&'a str, u64)>) -> (Vec<u8>, usize) {
    let mut len = 0;
    let counted = entries.inspect(|_| len += 1);
    let list = crate::storage::top::best_of(counted, crate::storage::top::MAX_TOP);
    (toplist::encode(&list), len)
}

/// A base snapshot image of the whole `map`.
pub fn encode(map: &WordMap, meta: Meta) -> Result<AlignedVec, SnapshotError> {
    encode_entries(map.iter().map(|(w, n)| (w.as_str(), *n)), meta, None)
}

/// Decodes and checks the header (and a delta's prefix): magic, version, tokenizer,
/// exact file length. `bytes` is the whole file.
pub fn read_header(bytes: &[u8], file_len: u64) -> Result<Header, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::TooShort { len: bytes.len() });
    }
    let kind = match <[u8; 8]>::try_from(&bytes[0..8]).expect("8 bytes") {
        MAGIC => Kind::Base,
        DELTA_MAGIC => Kind::Delta,
        _ => return Err(SnapshotError::BadMagic),
    };
    let version = le_u32(bytes, 8);
    if !(1..=VERSION).contains(&version) {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let key = if version >= 2 {
        if bytes.len() < HEADER_LEN + KEY_LEN {
            return Err(SnapshotError::TooShort { len: bytes.len() });
        }
        Some((le_u64(bytes, HEADER_LEN), le_u64(bytes, HEADER_LEN + 8)))
    } else {
        None
    };
    let prefix = HEADER_LEN + if key.is_some() { KEY_LEN } else { 0 };
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
    let base = match kind {
        Kind::Base => None,
        Kind::Delta => {
            if bytes.len() < prefix + DELTA_PREFIX_LEN {
                return Err(SnapshotError::TooShort { len: bytes.len() });
            }
            let p = prefix;
            Some(BaseRef {
                checksum: le_u64(bytes, p),
                seq: le_u64(bytes, p + 8),
                total_words: le_u64(bytes, p + 16),
            })
        }
    };
    let mut header = Header {
        kind,
        version,
        tokenizer,
        seq: le_u64(bytes, 16),
        incarnation: Incarnation::from_raw(le_u64(bytes, 24)),
        payload_len,
        words: le_u64(bytes, 40),
        written_unix_ms: le_u64(bytes, 48),
        checksum: le_u64(bytes, 56),
        base,
        key,
        top: None,
    };
    if version >= 3 {
        header.top = Some(toplist::section_at(bytes, header.top_offset(), file_len)?);
    }
    Ok(header)
}

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
    if header.kind == Kind::Delta && le_u64(bytes, header.prefix_offset() + 24) != 0 {
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

#[cfg(test)]
pub(super) mod tests;
