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
//!      8     4  format version, u32 LE (1 to 3; 3 is written)
//!     12     4  tokenizer code, u32 LE (0 unicode, 1 whitespace)
//!     16     8  seq: the last batch included, u64 LE
//!     24     8  incarnation of the leader that wrote it, u64 LE
//!     32     8  payload length in bytes, u64 LE (file length = 64 + this, exactly)
//!     40     8  words in the archive, u64 LE
//!     48     8  written at, Unix milliseconds, u64 LE
//!     56     8  checksum: xxh3-64 of bytes 0..56 followed by the payload
//!     64    16  the key its table is hashed with, two u64 LE (see [`hasher`])
//!     80    32  a delta only: the base it applies to
//!                 +0  8  the base's checksum, u64 LE
//!                 +8  8  the base's seq, u64 LE
//!                +16  8  distinct words in base and delta together, u64 LE
//!                +24  8  zero (reserved)
//!      T     L  the top list: the file's most frequent words (see [`toplist`]);
//!               T is 80 for a base, 112 for a delta; L a multiple of 16
//!    T+L     …  rkyv archive of HashMap<String, u64> (an ArchivedHashMap): the
//!               whole table (base) or the changed words' counts (delta)
//! ```
//!
//! What each version has ([`Version`]): version 1 (still read) had no key, no top
//! list, and its archive, hashed with rkyv's FxHash, starts right after the header (or
//! the delta's prefix); version 2 added the key; version 3 the top list; version 4 (written) is the same bytes in a chain (a delta
//! on a delta: see [`crate::storage::mapped::MappedState`]). The
//! payload is everything after byte 64. [`layout`] defines every offset from the one
//! before it.
//!
//! The header is 64 bytes, the key 16, the delta's prefix 32 and the top list a
//! multiple of 16, so an archive
//! that starts page- or 16-aligned stays aligned for rkyv. The checksum covers the
//! header fields too, so a flipped bit in `seq` is caught as surely as one in the
//! payload. rkyv finds its root from the end of the buffer, so trailing garbage could
//! validate as some other map: the exact length check is what rejects it.
//!
//! Publishing never modifies a file a reader may have mapped: write a temp file in the
//! same directory, fsync it, rename it over the published name, fsync the directory.

mod archive;
pub mod checked;
pub mod error;
mod file;
pub mod hasher;
pub mod kind;
pub mod layout;
mod read;
pub mod toplist;
pub(crate) mod write;

pub use archive::{ArchivedEntry, Pair};
pub use error::SnapshotError;
pub use file::{
    DELTA_NAME, DELTA_TEMP_NAME, FILE_NAME, MERGE_TEMP_NAME, RECENT_MERGE_TEMP_NAME, RECENT_PREFIX,
    RECENT_TEMP_NAME, Staged, TEMP_NAME, install, load, publish, recent_name, recents, stage,
    stage_until,
};
pub use kind::{DELTA_MAGIC, Kind, MAGIC};
pub use layout::{
    ArchivedWordMap, BaseRef, CHECKSUM_OFFSET, DELTA_PREFIX_LEN, HEAD_READ_LEN, HEADER_LEN, Header,
    KEY_LEN, Meta, Version, read_header,
};
pub use read::{check_trusting, to_word_map, validate, validate_until};
pub use write::{encode, encode_entries};

#[cfg(test)]
pub(super) mod tests;
