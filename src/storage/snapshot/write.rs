//! The one writer of the format. A file is written in the same order whether it goes
//! to memory ([`encode_entries`], for raft snapshots and tests) or streams to disk
//! (`file::stage`, the publisher's way, which never holds the archive in memory):
//! [`preamble`] is a zeroed header, the key, a delta's prefix and the top list;
//! [`body`] writes the archive after it; [`seal`] then makes the header, with the
//! checksum over whatever the sink reads back of the payload.

use std::io;

use rkyv::rancor;
use rkyv::ser::Writer;
use rkyv::util::AlignedVec;

use super::archive::{self, Pair};
use super::error::SnapshotError;
use super::kind::Kind;
use super::layout::{
    BaseRef, Checksum, DELTA_PREFIX_LEN, HEADER_LEN, KEY_LEN, Meta, delta_prefix, header_fields,
    key_bytes, new_key, set_checksum,
};
use super::toplist;
use crate::storage::table::WordMap;

/// Everything before the archive: a zeroed header (sealed last), the key, a delta's
/// prefix, the top list.
pub(super) struct Preamble {
    key: [u8; KEY_LEN],
    prefix: Option<[u8; DELTA_PREFIX_LEN]>,
    top: Vec<u8>,
}

impl Preamble {
    /// Hands the parts to `put`, in order.
    pub(super) fn write(&self, mut put: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        put(&[0u8; HEADER_LEN])?;
        put(&self.key)?;
        if let Some(p) = &self.prefix {
            put(p)?;
        }
        put(&self.top)
    }

    /// Its bytes.
    pub(super) fn len(&self) -> usize {
        HEADER_LEN + KEY_LEN + self.prefix.map_or(0, |p| p.len()) + self.top.len()
    }
}

/// The preamble of a file of `entries` (a delta's when `base` is set), and how many
/// entries there are (one pass for both).
pub(super) fn preamble<'a, P: Pair<'a>>(
    base: Option<BaseRef>,
    key: (u64, u64),
    entries: impl Iterator<Item = P>,
) -> (Preamble, usize) {
    let mut len = 0;
    let counted = entries.inspect(|_| len += 1).map(|p| (p.word(), p.count()));
    let list = crate::storage::top::best_of(counted, crate::storage::top::MAX_TOP);
    let pre = Preamble {
        key: key_bytes(key),
        prefix: base.map(delta_prefix),
        top: toplist::encode(&list),
    };
    (pre, len)
}

/// Writes the archive of the `len` entries (counted by [`preamble`]) after the
/// preamble the sink holds: a delta's when `base` is set. Returns the sink and the
/// number of entries.
pub(super) fn body<'a, W, I>(
    sink: W,
    base: Option<BaseRef>,
    key: (u64, u64),
    entries: I,
    len: usize,
) -> Result<(W, usize), SnapshotError>
where
    W: Writer<rancor::Error>,
    I: Iterator + Clone,
    I::Item: Pair<'a>,
{
    // rkyv writes after what the sink holds; its relative pointers do not care where
    // the archive starts, and the 16-multiples before it keep it 16-aligned.
    archive::write_entries(
        sink,
        entries,
        len,
        archive::load_factor(base.is_some()),
        key,
    )
}

/// The header of a written body of `payload_len` bytes: its fields, and the checksum
/// of them and of the payload, which `feed` hands over in pieces.
pub(super) fn seal(
    kind: Kind,
    meta: Meta,
    payload_len: u64,
    words: usize,
    feed: impl FnOnce(&mut Checksum) -> io::Result<()>,
) -> Result<[u8; HEADER_LEN], SnapshotError> {
    let mut head = header_fields(kind, meta, payload_len, words as u64);
    let mut sum = Checksum::new(&head);
    feed(&mut sum)?;
    set_checksum(&mut head, sum.digest());
    Ok(head)
}

/// A complete snapshot image (header + archive) of `entries` in one buffer: a base
/// when `base` is `None`, else a delta on it.
pub fn encode_entries<'a, I>(
    entries: I,
    meta: Meta,
    base: Option<BaseRef>,
) -> Result<AlignedVec, SnapshotError>
where
    I: Iterator + Clone,
    I::Item: Pair<'a>,
{
    encode_keyed(entries, meta, base, new_key())
}

/// [`encode_entries`] with the hash key given.
pub(super) fn encode_keyed<'a, I>(
    entries: I,
    meta: Meta,
    base: Option<BaseRef>,
    key: (u64, u64),
) -> Result<AlignedVec, SnapshotError>
where
    I: Iterator + Clone,
    I::Item: Pair<'a>,
{
    let (pre, len) = preamble(base, key, entries.clone());
    let mut buf = AlignedVec::<16>::with_capacity(pre.len() + 64);
    pre.write(|bytes| {
        buf.extend_from_slice(bytes);
        Ok(())
    })?;
    let (mut buf, words) = body(buf, base, key, entries, len)?;
    let payload_len = (buf.len() - HEADER_LEN) as u64;
    let head = seal(Kind::of(base.is_some()), meta, payload_len, words, |sum| {
        sum.update(&buf[HEADER_LEN..]);
        Ok(())
    })?;
    buf[..HEADER_LEN].copy_from_slice(&head);
    Ok(buf)
}

/// A base snapshot image of the whole `map`.
pub fn encode(map: &WordMap, meta: Meta) -> Result<AlignedVec, SnapshotError> {
    encode_entries(map.iter().map(|(w, n)| (w.as_str(), *n)), meta, None)
}
