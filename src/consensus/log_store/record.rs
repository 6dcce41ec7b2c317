//! The raft log's records. Each is a [`crate::storage::frame`] (the frame the single
//! leader's log uses too) whose payload starts with a tag:
//!
//! ```text
//! 'E'  u16 LE n, the entry's log id as n bytes of JSON, then the entry as JSON
//! 'M'  a Meta as JSON (the vote, the commit point, a purge, a truncation, or the
//!      whole state, which starts every segment)
//! ```
//!
//! One entry per frame, so that an entry is found, read back and checked by itself;
//! its log id comes first so that a start reads the ids and leaves the entries on disk.
//! [`legacy`] reads the single file of JSON records that earlier releases wrote.

use serde::{Deserialize, Serialize};

use crate::consensus::types::{Entry, NodeId};
use openraft::{LogId, Vote};

use crate::storage::frame;

const ENTRY: u8 = b'E';
const META: u8 = b'M';

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) enum Meta {
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Purged(LogId<NodeId>),
    TruncatedFrom(u64),
    /// What the segments before this one said: written first in every segment, so
    /// that a segment's predecessors can be deleted once their entries are purged.
    State {
        vote: Option<Vote<NodeId>>,
        committed: Option<LogId<NodeId>>,
        purged: Option<LogId<NodeId>>,
    },
}

/// A record read back: an entry's id (the entry itself stays in the bytes), or a meta.
pub(super) enum Read {
    Entry(LogId<NodeId>),
    Meta(Meta),
}

/// Appends `meta` as one frame.
pub(super) fn put_meta(out: &mut Vec<u8>, meta: &Meta) {
    let start = frame::begin(out);
    out.push(META);
    serde_json::to_writer(&mut *out, meta).expect("a meta serializes");
    frame::finish(out, start);
}

/// Appends `entry` as one frame; returns the frame's length.
pub(super) fn put_entry(out: &mut Vec<u8>, entry: &Entry) -> usize {
    let start = frame::begin(out);
    out.push(ENTRY);
    let id = serde_json::to_vec(&entry.log_id).expect("a log id serializes");
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(&id);
    serde_json::to_writer(&mut *out, entry).expect("an entry serializes");
    frame::finish(out, start);
    out.len() - start
}

/// What a whole frame's payload holds, or why it cannot be read.
pub(super) fn read(payload: &[u8]) -> Result<Read, String> {
    match payload.split_first() {
        Some((&ENTRY, rest)) => {
            let (len, rest) = rest
                .split_first_chunk::<2>()
                .ok_or("an entry record without its id")?;
            let id = rest
                .get(..u16::from_le_bytes(*len) as usize)
                .ok_or("an entry record shorter than its id")?;
            serde_json::from_slice(id)
                .map(Read::Entry)
                .map_err(|e| format!("an entry's id: {e}"))
        }
        Some((&META, rest)) => serde_json::from_slice(rest)
            .map(Read::Meta)
            .map_err(|e| format!("a meta record: {e}")),
        _ => Err("a record of an unknown kind".into()),
    }
}

/// The entry in the frame `bytes` (one whole frame, checked again: it was read back
/// from the disk).
pub(super) fn entry(bytes: &[u8]) -> Result<Entry, String> {
    let payload = match frame::split(bytes) {
        frame::Next::Whole(p, used) if used == bytes.len() => p,
        frame::Next::Bad(why) => return Err(why.into()),
        _ => return Err("not one whole record".into()),
    };
    let Some((&ENTRY, rest)) = payload.split_first() else {
        return Err("not an entry record".into());
    };
    let (len, rest) = rest.split_first_chunk::<2>().ok_or("no id")?;
    let body = rest
        .get(u16::from_le_bytes(*len) as usize..)
        .ok_or("shorter than its id")?;
    serde_json::from_slice(body).map_err(|e| format!("an entry: {e}"))
}

/// A record read back, where its frame starts, and the frame's length.
pub(super) type Located = (Read, u64, u32);

/// The records of `bytes` up to the first torn or corrupt one, and where the good
/// bytes end.
pub(super) fn read_all(bytes: &[u8]) -> (Vec<Located>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let frame::Next::Whole(payload, used) = frame::split(&bytes[at..]) {
        let Ok(record) = read(payload) else {
            break;
        };
        out.push((record, at as u64, used as u32));
        at += used;
    }
    (out, at)
}

/// The single `raft.log` of JSON records that releases before segments wrote.
pub(super) mod legacy {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub enum Record {
        Entries(Vec<Entry>),
        Vote(Vote<NodeId>),
        Committed(Option<LogId<NodeId>>),
        Purged(LogId<NodeId>),
        TruncatedFrom(u64),
    }

    /// What the file said: the state and the entries it held (a torn tail ignored).
    pub fn replay(bytes: &[u8]) -> (Meta, Vec<Entry>) {
        let mut entries = std::collections::BTreeMap::<u64, Entry>::new();
        let (mut vote, mut committed, mut purged) = (None, None, None);
        let mut at = 0;
        while let frame::Next::Whole(payload, used) = frame::split(&bytes[at..]) {
            let Ok(record) = serde_json::from_slice::<Record>(payload) else {
                break;
            };
            at += used;
            match record {
                Record::Entries(es) => {
                    if let Some(first) = es.first() {
                        entries.split_off(&first.log_id.index);
                    }
                    entries.extend(es.into_iter().map(|e| (e.log_id.index, e)));
                }
                Record::Vote(v) => vote = Some(v),
                Record::Committed(c) => committed = c,
                Record::Purged(id) => {
                    entries = entries.split_off(&(id.index + 1));
                    purged = purged.max(Some(id));
                }
                Record::TruncatedFrom(i) => {
                    entries.split_off(&i);
                }
            }
        }
        let state = Meta::State {
            vote,
            committed,
            purged,
        };
        (state, entries.into_values().collect())
    }

    #[cfg(test)]
    pub fn encode(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        frame::put(&mut out, &serde_json::to_vec(record).unwrap());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::entry as an_entry;
    use super::*;

    #[test]
    fn an_entry_reads_back_by_its_id_and_whole() {
        let e = an_entry(3, 7);
        let mut out = Vec::new();
        put_meta(&mut out, &Meta::TruncatedFrom(4));
        let at = out.len();
        let len = put_entry(&mut out, &e);
        let (records, good) = read_all(&out);
        assert_eq!(good, out.len());
        assert!(matches!(records[0].0, Read::Meta(Meta::TruncatedFrom(4))));
        assert!(matches!(records[1].0, Read::Entry(id) if id == e.log_id));
        assert_eq!((records[1].1, records[1].2), (at as u64, len as u32));
        assert_eq!(entry(&out[at..]).unwrap().log_id, e.log_id);
        // Damaged, it is refused, not misread.
        let mut bad = out[at..].to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(entry(&bad).is_err());
    }
}
