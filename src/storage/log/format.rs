//! The record format (drawn in the module docs of [`super`]) and the one reader of
//! records that replay and catch-up share.

use std::io::{self, Read};

use crate::storage::batch::Batch;
use crate::storage::frame;

/// A record larger than this is corrupt (bodies are capped far below it).
const MAX_RECORD: usize = 256 << 20;

/// Encodes one batch as a record (a [`frame`] of the batch).
pub fn encode(batch: &Batch, out: &mut Vec<u8>) {
    let start = frame::begin(out);
    out.extend_from_slice(&batch.seq.to_le_bytes());
    out.extend_from_slice(&(batch.deltas.len() as u32).to_le_bytes());
    for (w, n) in &batch.deltas {
        out.extend_from_slice(&(w.len() as u32).to_le_bytes());
        out.extend_from_slice(w.as_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    if let Some(d) = batch.digest {
        out.extend_from_slice(&d.to_le_bytes());
    }
    frame::finish(out, start);
}

fn decode_payload(p: &[u8]) -> Option<Batch> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = p.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut deltas = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let word = std::str::from_utf8(take(len)?).ok()?.to_owned();
        let n = u64::from_le_bytes(take(8)?.try_into().ok()?);
        deltas.push((word, n));
    }
    let digest = match p.len() - at {
        0 => None,
        8 => Some(u64::from_le_bytes(p[at..].try_into().ok()?)),
        _ => return None,
    };
    Some(Batch {
        seq,
        deltas,
        digest,
    })
}

/// What [`next_record`] found.
#[derive(Debug)]
pub(super) enum Next {
    /// A clean end of the data.
    End,
    /// A whole, valid record, and its size in bytes.
    Record(Batch, usize),
    /// A torn or damaged record: the log ends here.
    Bad(&'static str),
}

/// Reads the next record from `r` (reusing `payload` as its buffer).
pub(super) fn next_record(r: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Next> {
    Ok(match frame::read(r, payload, MAX_RECORD)? {
        frame::Next::End => Next::End,
        frame::Next::Bad(why) => Next::Bad(why),
        frame::Next::Whole(p, used) => match decode_payload(p) {
            Some(batch) => Next::Record(batch, used),
            None => Next::Bad("malformed record"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::log::testing::batch;

    fn parse_record(b: &[u8]) -> Result<(Batch, usize), &'static str> {
        match next_record(&mut &b[..], &mut Vec::new()).unwrap() {
            Next::Record(batch, used) => Ok((batch, used)),
            Next::End => Err("empty"),
            Next::Bad(why) => Err(why),
        }
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let b = batch(7, "héllo", 3);
        let mut buf = Vec::new();
        encode(&b, &mut buf);
        let (got, used) = parse_record(&buf).unwrap();
        assert_eq!((got, used), ((*b).clone(), buf.len()));
        assert!(parse_record(&buf[..buf.len() - 1]).is_err());
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(parse_record(&bad).is_err(), "flip at {i} accepted");
        }
        // A record written before digests were recorded reads as a batch without one.
        let old = Batch {
            digest: None,
            ..(*b).clone()
        };
        let mut buf = Vec::new();
        encode(&old, &mut buf);
        assert_eq!(parse_record(&buf).unwrap().0, old);
        assert_eq!(buf.len() + 8, {
            let mut with = Vec::new();
            encode(&b, &mut with);
            with.len()
        });
    }
}
