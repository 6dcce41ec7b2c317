//! The raft log's records: each a [`crate::storage::frame`] (the frame the single
//! leader's log uses too) whose payload is the JSON of a [`Record`]; reading stops at
//! the first torn or corrupt record.

use serde::{Deserialize, Serialize};

use crate::consensus::types::{Entry, NodeId};
use openraft::{LogId, Vote};

use crate::storage::frame;

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

/// `payload` (a record's JSON) as one frame.
pub(super) fn frame(payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame::HEAD_LEN + payload.len());
    frame::put(&mut out, &payload);
    out
}

/// The records of `bytes` up to the first torn or corrupt one, and where that is.
pub(super) fn decode_all(bytes: &[u8]) -> (Vec<(Record, u64)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let frame::Next::Whole(payload, used) = frame::split(&bytes[at..]) {
        let Ok(record) = serde_json::from_slice::<Record>(payload) else {
            break;
        };
        out.push((record, used as u64));
        at += used;
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
