//! The byte layout of a snapshot file (drawn in [`super`]'s documentation): every
//! offset as a named constant, each defined from the one before it; the format
//! [`Version`] and what each version has; the header decoded ([`read_header`]) and
//! encoded (`header_fields`, `delta_prefix`, `key_bytes`); and the checksum.

use std::time::{SystemTime, UNIX_EPOCH};

use rkyv::collections::swiss_table::ArchivedHashMap;
use rkyv::string::ArchivedString;
use xxhash_rust::xxh3::Xxh3;

use super::error::SnapshotError;
use super::hasher;
use super::kind::{DELTA_MAGIC, Kind, MAGIC};
use super::toplist;
use crate::protocol::Incarnation;
use crate::words::Tokenizer;

// The header, from the start of the file.
const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const TOKENIZER_OFFSET: usize = VERSION_OFFSET + 4;
const SEQ_OFFSET: usize = TOKENIZER_OFFSET + 4;
const INCARNATION_OFFSET: usize = SEQ_OFFSET + 8;
const PAYLOAD_LEN_OFFSET: usize = INCARNATION_OFFSET + 8;
const WORDS_OFFSET: usize = PAYLOAD_LEN_OFFSET + 8;
const WRITTEN_AT_OFFSET: usize = WORDS_OFFSET + 8;
/// The checksum covers the header before it, then the payload.
pub const CHECKSUM_OFFSET: usize = WRITTEN_AT_OFFSET + 8;
/// The header's length; the payload is everything after it.
pub const HEADER_LEN: usize = CHECKSUM_OFFSET + 8;

// The hash key (version 2 on), right after the header.
const KEY_K0: usize = 0;
const KEY_K1: usize = KEY_K0 + 8;
/// Bytes of the key.
pub const KEY_LEN: usize = KEY_K1 + 8;

// A delta's prefix, right after the key: the base it applies to.
const BASE_CHECKSUM: usize = 0;
const BASE_SEQ: usize = BASE_CHECKSUM + 8;
const TOTAL_WORDS: usize = BASE_SEQ + 8;
const RESERVED: usize = TOTAL_WORDS + 8;
/// Bytes of a delta's payload before its top list.
pub const DELTA_PREFIX_LEN: usize = RESERVED + 8;

// What keeps the archive 16-aligned: every part before it is a multiple of 16 (the
// top list pads itself to one).
const _: () = assert!(HEADER_LEN == 64 && HEADER_LEN.is_multiple_of(16));
const _: () = assert!(KEY_LEN.is_multiple_of(16) && DELTA_PREFIX_LEN.is_multiple_of(16));

/// The format version of a file, and what each version has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u32);

impl Version {
    /// The first: the archive right after the header, hashed with rkyv's FxHash.
    pub const PLAIN: Version = Version(1);
    /// Adds the hash key after the header (the table is hashed with it).
    pub const KEYED: Version = Version(2);
    /// Adds the top list before the archive.
    pub const TOP_LIST: Version = Version(3);
    /// A chain: a delta may be on another delta (a recent delta on the delta, or on
    /// the recent delta before it), naming it by the digest of the table it completes,
    /// which a delta's 8 reserved bytes now hold. A reader of version 3 would take such
    /// a file for a delta that does not pair with its base: written so that such a
    /// reader (an older binary) refuses the files instead of reading part of a chain.
    pub const CHAIN: Version = Version(4);
    /// The version written.
    pub const CURRENT: Version = Version::CHAIN;

    /// A version this build reads.
    pub fn from_number(n: u32) -> Result<Version, SnapshotError> {
        if (Version::PLAIN.0..=Version::CURRENT.0).contains(&n) {
            Ok(Version(n))
        } else {
            Err(SnapshotError::UnsupportedVersion {
                found: n,
                newest: Version::CURRENT.0,
            })
        }
    }

    pub fn number(self) -> u32 {
        self.0
    }

    /// Whether its table is hashed with a key stored after the header.
    pub fn has_key(self) -> bool {
        self >= Version::KEYED
    }

    /// Whether it has a top list.
    pub fn has_top_list(self) -> bool {
        self >= Version::TOP_LIST
    }
}

/// The archived table as it lies in the file.
pub type ArchivedWordMap =
    ArchivedHashMap<ArchivedString, rkyv::Archived<u64>, hasher::ArchiveHasher>;

/// The file a delta applies to, and the table they make together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRef {
    /// Which file: a base by its checksum; a delta (version 4: a recent delta on it) by
    /// the digest of the table it completes, so that any file completing that same
    /// table (a merged delta, a delta written again on a new base) carries the recent
    /// deltas on it without their being written again.
    pub checksum: u64,
    pub seq: u64,
    /// Distinct words in the table this delta completes.
    pub total_words: u64,
    /// The digest of the table this delta completes (version 4, where earlier versions
    /// have 8 zero bytes; 0 in a file of an earlier version). See
    /// [`crate::storage::table::digest_of`].
    pub digest: u64,
}

/// What a snapshot says about itself besides the table.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub tokenizer: Tokenizer,
    pub seq: u64,
    pub incarnation: Incarnation,
}

/// The header fields, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub version: Version,
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
    pub(super) fn prefix_offset(&self) -> usize {
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

    /// What a file written on this one names it by ([`BaseRef::checksum`]): a base
    /// its checksum, a version 4 delta the digest of the table it completes; `None` for
    /// a delta of an earlier version (nothing is written on one).
    pub fn chain_name(&self) -> Option<u64> {
        match self.base {
            None => Some(self.checksum),
            Some(b) if self.version >= Version::CHAIN && b.digest != 0 => Some(b.digest),
            Some(_) => None,
        }
    }

    /// Distinct words in the state this file completes (for a delta, with its base).
    pub fn total_words(&self) -> u64 {
        self.base.map_or(self.words, |b| b.total_words)
    }

    /// Whether a delta's reserved field is zero, as written (`bytes`: the file), in
    /// the versions that reserve it (version 4 holds the digest there).
    pub(super) fn reserved_is_zero(&self, bytes: &[u8]) -> bool {
        self.kind == Kind::Base
            || self.version >= Version::CHAIN
            || le_u64(bytes, self.prefix_offset() + RESERVED) == 0
    }
}

/// Bytes of the file [`read_header`] needs to decode a header of any version and kind
/// (fewer if the file is shorter).
pub const HEAD_READ_LEN: usize = HEADER_LEN + KEY_LEN + DELTA_PREFIX_LEN + toplist::HEAD_LEN;

pub(super) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A checksum in the making: xxh3 of the header fields before it, then the payload,
/// fed in chunks so that a long one can be stopped.
pub struct Checksum(Xxh3);

impl Checksum {
    pub fn new(header_fields: &[u8]) -> Self {
        let mut h = Xxh3::new();
        h.update(&header_fields[..CHECKSUM_OFFSET]);
        Checksum(h)
    }

    pub fn update(&mut self, payload: &[u8]) {
        self.0.update(payload)
    }

    pub fn digest(&self) -> u64 {
        self.0.digest()
    }
}

/// The checksum of a snapshot, giving up (`None`) when `stop` says so.
pub(super) fn checksum(
    header_fields: &[u8],
    payload: &[u8],
    stop: &dyn Fn() -> bool,
) -> Option<u64> {
    const CHUNK: usize = 64 << 20;
    let mut h = Checksum::new(header_fields);
    for chunk in payload.chunks(CHUNK) {
        if stop() {
            return None;
        }
        h.update(chunk);
    }
    Some(h.digest())
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The header of the current version with every field but the checksum.
pub(super) fn header_fields(
    kind: Kind,
    meta: Meta,
    payload_len: u64,
    words: u64,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(MAGIC_OFFSET, &kind.magic());
    put(VERSION_OFFSET, &Version::CURRENT.0.to_le_bytes());
    put(TOKENIZER_OFFSET, &meta.tokenizer.code().to_le_bytes());
    put(SEQ_OFFSET, &meta.seq.to_le_bytes());
    put(INCARNATION_OFFSET, &meta.incarnation.raw().to_le_bytes());
    put(PAYLOAD_LEN_OFFSET, &payload_len.to_le_bytes());
    put(WORDS_OFFSET, &words.to_le_bytes());
    put(WRITTEN_AT_OFFSET, &now_unix_ms().to_le_bytes());
    h
}

/// Sets the checksum of `header` (fields as [`header_fields`] made them).
pub(super) fn set_checksum(header: &mut [u8; HEADER_LEN], sum: u64) {
    header[CHECKSUM_OFFSET..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

pub(super) fn delta_prefix(base: BaseRef) -> [u8; DELTA_PREFIX_LEN] {
    let mut p = [0u8; DELTA_PREFIX_LEN];
    p[BASE_CHECKSUM..BASE_SEQ].copy_from_slice(&base.checksum.to_le_bytes());
    p[BASE_SEQ..TOTAL_WORDS].copy_from_slice(&base.seq.to_le_bytes());
    p[TOTAL_WORDS..RESERVED].copy_from_slice(&base.total_words.to_le_bytes());
    p[RESERVED..DELTA_PREFIX_LEN].copy_from_slice(&base.digest.to_le_bytes());
    p
}

/// A fresh random key for a file's table.
pub(super) fn new_key() -> (u64, u64) {
    rand::random()
}

pub(super) fn key_bytes(key: (u64, u64)) -> [u8; KEY_LEN] {
    let mut b = [0u8; KEY_LEN];
    b[KEY_K0..KEY_K1].copy_from_slice(&key.0.to_le_bytes());
    b[KEY_K1..KEY_LEN].copy_from_slice(&key.1.to_le_bytes());
    b
}

/// Decodes and checks the header (and a delta's prefix): magic, version, tokenizer,
/// exact file length. `bytes` is the file, or at least its first [`HEAD_READ_LEN`]
/// bytes.
pub fn read_header(bytes: &[u8], file_len: u64) -> Result<Header, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::TooShort { len: bytes.len() });
    }
    let magic = <[u8; 8]>::try_from(&bytes[MAGIC_OFFSET..VERSION_OFFSET]).expect("8 bytes");
    let kind = match magic {
        MAGIC => Kind::Base,
        DELTA_MAGIC => Kind::Delta,
        _ => return Err(SnapshotError::BadMagic),
    };
    let version = Version::from_number(le_u32(bytes, VERSION_OFFSET))?;
    let key = if version.has_key() {
        if bytes.len() < HEADER_LEN + KEY_LEN {
            return Err(SnapshotError::TooShort { len: bytes.len() });
        }
        Some((
            le_u64(bytes, HEADER_LEN + KEY_K0),
            le_u64(bytes, HEADER_LEN + KEY_K1),
        ))
    } else {
        None
    };
    let prefix = HEADER_LEN + if key.is_some() { KEY_LEN } else { 0 };
    let code = le_u32(bytes, TOKENIZER_OFFSET);
    let tokenizer = Tokenizer::from_code(code).ok_or(SnapshotError::UnknownTokenizer(code))?;
    let payload_len = le_u64(bytes, PAYLOAD_LEN_OFFSET);
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
            Some(BaseRef {
                checksum: le_u64(bytes, prefix + BASE_CHECKSUM),
                seq: le_u64(bytes, prefix + BASE_SEQ),
                total_words: le_u64(bytes, prefix + TOTAL_WORDS),
                digest: if version >= Version::CHAIN {
                    le_u64(bytes, prefix + RESERVED)
                } else {
                    0
                },
            })
        }
    };
    let mut header = Header {
        kind,
        version,
        tokenizer,
        seq: le_u64(bytes, SEQ_OFFSET),
        incarnation: Incarnation::from_raw(le_u64(bytes, INCARNATION_OFFSET)),
        payload_len,
        words: le_u64(bytes, WORDS_OFFSET),
        written_unix_ms: le_u64(bytes, WRITTEN_AT_OFFSET),
        checksum: le_u64(bytes, CHECKSUM_OFFSET),
        base,
        key,
        top: None,
    };
    if version.has_top_list() {
        header.top = Some(toplist::section_at(bytes, header.top_offset(), file_len)?);
    }
    Ok(header)
}
