//! The record frame both logs write (the single leader's write-ahead log and a voter's
//! raft log): a head of the payload's length and checksum, then the payload. Reading
//! stops at the first frame that is short or fails its checksum: a torn tail after a
//! crash is normal, and nothing after it is trusted.
//!
//! ```text
//! offset  size  field
//!      0     4  payload length n, u32 LE
//!      4     8  xxh3-64 of the payload
//!     12     n  payload (what it holds is the log's own: see each log's format)
//! ```

use std::io::{self, Read};

use xxhash_rust::xxh3::xxh3_64;

const LEN_OFFSET: usize = 0;
const CHECKSUM_OFFSET: usize = LEN_OFFSET + 4;
/// Bytes of a frame's head.
pub const HEAD_LEN: usize = CHECKSUM_OFFSET + 8;

/// Starts a frame at the end of `out` (a head to fill in); the payload follows it.
/// Returns where the frame starts, for [`finish`].
pub fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEAD_LEN]);
    start
}

/// Completes the frame [`begin`] started at `start`: its payload is everything after
/// its head.
pub fn finish(out: &mut [u8], start: usize) {
    let payload = &out[start + HEAD_LEN..];
    let len = u32::try_from(payload.len()).expect("a frame's payload fits a u32");
    let sum = xxh3_64(payload);
    out[start + LEN_OFFSET..start + CHECKSUM_OFFSET].copy_from_slice(&len.to_le_bytes());
    out[start + CHECKSUM_OFFSET..start + HEAD_LEN].copy_from_slice(&sum.to_le_bytes());
}

/// `payload` framed, appended to `out`.
pub fn put(out: &mut Vec<u8>, payload: &[u8]) {
    let start = begin(out);
    out.extend_from_slice(payload);
    finish(out, start);
}

/// What the next frame of some bytes is.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// A clean end: no bytes left.
    End,
    /// A whole frame whose payload matches its checksum, and the frame's size.
    Whole(&'a [u8], usize),
    /// A torn or damaged frame (why): the data ends before it.
    Bad(&'static str),
}

fn head(h: &[u8]) -> (usize, u64) {
    let len = u32::from_le_bytes(h[LEN_OFFSET..CHECKSUM_OFFSET].try_into().expect("4 bytes"));
    let sum = u64::from_le_bytes(h[CHECKSUM_OFFSET..HEAD_LEN].try_into().expect("8 bytes"));
    (len as usize, sum)
}

/// The frame at the start of `bytes`.
pub fn split(bytes: &[u8]) -> Next<'_> {
    if bytes.is_empty() {
        return Next::End;
    }
    if bytes.len() < HEAD_LEN {
        return Next::Bad("torn record header");
    }
    let (len, sum) = head(bytes);
    let Some(payload) = bytes.get(HEAD_LEN..HEAD_LEN + len) else {
        return Next::Bad("torn record");
    };
    if xxh3_64(payload) != sum {
        return Next::Bad("checksum mismatch");
    }
    Next::Whole(payload, HEAD_LEN + len)
}

/// Reads the next frame from `r` into `payload` (reused as the buffer); a frame that
/// claims more than `max` bytes is damaged. `Whole` borrows `payload`.
pub fn read<'p>(r: &mut impl Read, payload: &'p mut Vec<u8>, max: usize) -> io::Result<Next<'p>> {
    let mut h = [0u8; HEAD_LEN];
    match fill(r, &mut h)? {
        0 => return Ok(Next::End),
        HEAD_LEN => {}
        _ => return Ok(Next::Bad("torn record header")),
    }
    let (len, sum) = head(&h);
    if len > max {
        return Ok(Next::Bad("record length out of range"));
    }
    payload.resize(len, 0);
    if fill(r, payload)? < len {
        return Ok(Next::Bad("torn record"));
    }
    if xxh3_64(payload) != sum {
        return Ok(Next::Bad("checksum mismatch"));
    }
    Ok(Next::Whole(payload, HEAD_LEN + len))
}

/// Reads into `buf` until it is full or the data ends; how much was read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_from_bytes_and_from_a_reader_and_damage_is_caught() {
        let mut out = Vec::new();
        put(&mut out, b"hello");
        put(&mut out, b"");
        assert_eq!(out.len(), 2 * HEAD_LEN + 5);
        assert_eq!(split(&out), Next::Whole(b"hello", HEAD_LEN + 5));
        assert_eq!(split(&out[HEAD_LEN + 5..]), Next::Whole(b"", HEAD_LEN));
        let mut r = &out[..];
        let mut buf = Vec::new();
        assert_eq!(
            read(&mut r, &mut buf, 16).unwrap(),
            Next::Whole(b"hello", HEAD_LEN + 5)
        );
        assert_eq!(
            read(&mut r, &mut buf, 16).unwrap(),
            Next::Whole(b"", HEAD_LEN)
        );
        assert_eq!(read(&mut r, &mut buf, 16).unwrap(), Next::End);
        assert_eq!(split(&out[..HEAD_LEN + 4]), Next::Bad("torn record"));
        assert_eq!(split(&out[..3]), Next::Bad("torn record header"));
        assert_eq!(
            read(&mut &out[..], &mut buf, 4).unwrap(),
            Next::Bad("record length out of range")
        );
        for i in 0..HEAD_LEN + 5 {
            let mut bad = out.clone();
            bad[i] ^= 0x20;
            assert!(matches!(split(&bad), Next::Bad(_)), "flip at {i} accepted");
        }
    }
}
