//! A file's top list (format version 3): its own most frequent words, in rank order,
//! so that `GET /top` on a local replica reads them in place instead of ranking a
//! whole table.
//!
//! ```text
//! offset  size  field
//!      0     8  entries, u64 LE (at most MAX_TOP; all the file's words if fewer)
//!      8     8  section length in bytes, u64 LE (this head included; a multiple of 16)
//!     16     …  per entry: count u64 LE, word length u32 LE, the word's UTF-8 bytes
//!      …     …  zero bytes up to the section's length
//! ```
//!
//! It lies between the key (or a delta's prefix) and the archive, so the archive stays
//! 16-aligned. The file's checksum covers it; [`check`] verifies its structure, its
//! order, and that every listed word has that count in the file's table.

use super::error::SnapshotError;
use crate::storage::top::{MAX_TOP, rank};

const ENTRIES_OFFSET: usize = 0;
const LEN_OFFSET: usize = ENTRIES_OFFSET + 8;
/// Bytes of the section's head.
pub const HEAD_LEN: usize = LEN_OFFSET + 8;

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Where a file's top list lies, from the start of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    pub offset: usize,
    /// The whole section, head and padding included.
    pub len: usize,
    pub entries: u64,
}

/// The section of `list` (in rank order, at most [`MAX_TOP`] entries).
pub fn encode(list: &[(&str, u64)]) -> Vec<u8> {
    let body: usize = list.iter().map(|(w, _)| 12 + w.len()).sum();
    let len = (HEAD_LEN + body).next_multiple_of(16);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(list.len() as u64).to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    for (word, count) in list {
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(word.len() as u32).to_le_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.resize(len, 0);
    out
}

/// Reads the section's head at `offset` of a file of `file_len` bytes (`bytes` holds
/// at least the head).
pub fn section_at(bytes: &[u8], offset: usize, file_len: u64) -> Result<Section, SnapshotError> {
    if bytes.len() < offset + HEAD_LEN {
        return Err(SnapshotError::TooShort { len: bytes.len() });
    }
    let entries = le_u64(bytes, offset + ENTRIES_OFFSET);
    let len = le_u64(bytes, offset + LEN_OFFSET);
    if len < HEAD_LEN as u64
        || !len.is_multiple_of(16)
        || (offset as u64).saturating_add(len) > file_len
        || entries > MAX_TOP as u64
    {
        return Err(SnapshotError::TopList(format!(
            "a section of {len} bytes and {entries} entries at {offset} does not fit"
        )));
    }
    Ok(Section {
        offset,
        len: len as usize,
        entries,
    })
}

/// The list's entries, read in place. Stops at the first malformed entry, which a
/// file that passed [`check`] does not have.
pub fn entries<'a>(bytes: &'a [u8], s: Section) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    let area = bytes
        .get(s.offset + HEAD_LEN..s.offset + s.len)
        .unwrap_or(&[]);
    let mut at = 0usize;
    let mut left = s.entries;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let count = u64::from_le_bytes(area.get(at..at + 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(area.get(at + 8..at + 12)?.try_into().ok()?) as usize;
        let word = std::str::from_utf8(area.get(at + 12..(at + 12).checked_add(len)?)?).ok()?;
        at += 12 + len;
        left -= 1;
        Some((word, count))
    })
}

/// Verifies a list: every entry whole and UTF-8, zero padding after the last, strictly
/// in rank order, no zero count, as many entries as the file's words when fewer than
/// [`MAX_TOP`], and each word's count the one `count_of` finds in the table.
pub fn check(
    bytes: &[u8],
    s: Section,
    words: u64,
    count_of: impl Fn(&str) -> Option<u64>,
) -> Result<(), SnapshotError> {
    let bad = |why: String| Err(SnapshotError::TopList(why));
    if s.entries != words.min(MAX_TOP as u64) {
        return bad(format!(
            "{} entries for a table of {words} words",
            s.entries
        ));
    }
    let mut used = 0usize;
    let mut read = 0u64;
    let mut prev: Option<(&str, u64)> = None;
    for (i, (word, count)) in entries(bytes, s).enumerate() {
        read += 1;
        if count == 0 {
            return bad(format!("entry {i} has a zero count"));
        }
        if let Some(p) = prev
            && rank(p, (word, count)) != std::cmp::Ordering::Less
        {
            return bad(format!("entry {i} ({word:?}) is out of rank order"));
        }
        if count_of(word) != Some(count) {
            return bad(format!("entry {i} ({word:?}, {count}) is not in the table"));
        }
        prev = Some((word, count));
        used += 12 + word.len();
    }
    if read != s.entries {
        return bad(format!("{read} whole entries of {}", s.entries));
    }
    let tail = &bytes[s.offset + HEAD_LEN + used..s.offset + s.len];
    if HEAD_LEN + used + 15 < s.len || tail.iter().any(|&b| b != 0) {
        return bad("the padding after the entries is not zero bytes".into());
    }
    Ok(())
}
