//! The raft log's record format: `u32` payload length, `u64` xxh3 of the payload, the
//! payload (JSON of a [`Record`]); reading stops at the first torn or corrupt record.

use serde::{Deserialize, Serialize};

use crate::consensus::types::{Entry, NodeId};
use openraft::{LogId, Vote};

pub(super) const RECORD_HEAD: usize = 12;

/// [`Record::Entries`] written from a borrowed slice (the same JSON).
#[derive(Serialize)]
pub(super) enum EntriesRef<'a> {
    Entries(&'a [Entry]),
}

#[derive(Serialize, Deserialize)]
pub(super) enum Record {
    Entries(Vec<Entry>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Purged(LogId<NodeId>),
    TruncatedFrom(u64),
}

pub(super) fn encode(record: &Record) -> Vec<u8> {
    frame(serde_json::to_vec(record).expect("records serialize"))
}

pub(super) fn frame(payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEAD + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The records of `bytes` up to the first torn or corrupt one, and where that is.
pub(super) fn decode_all(bytes: &[u8]) -> (Vec<(Record, u64)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= RECORD_HEAD {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
        let sum = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8"));
        let end = at + RECORD_HEAD + len;
        if end > bytes.len() {
            break;
        }
        let payload = &bytes[at + RECORD_HEAD..end];
        if xxhash_rust::xxh3::xxh3_64(payload) != sum {
            break;
        }
        let Ok(record) = serde_json::from_slice::<Record>(payload) else {
            break;
        };
        out.push((record, (end - at) as u64));
        at = end;
    }
    (out, at)
}

#[cfg(test)]
mod tests {
    use super::super::tests::entry;
    use super::*;

    #[test]
    fn entries_written_borrowed_read_back_as_records() {
        let es = vec![entry(1, 1), entry(1, 2)];
        let borrowed = serde_json::to_vec(&EntriesRef::Entries(&es)).unwrap();
        assert_eq!(borrowed, serde_json::to_vec(&Record::Entries(es)).unwrap());
    }
}
