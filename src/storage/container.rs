//! The container a raft snapshot travels in (and is read from disk into): a record of
//! what the snapshot is (JSON, the raft layer's), then a base snapshot file.
//!
//! ```text
//! offset  size  field
//!      0     8  magic b"MEMDBRS1"
//!      8     8  the record's length n, u64 LE
//!     16     n  the record
//!   16+n     …  a base snapshot file (see [`crate::storage::snapshot`])
//! ```

pub const MAGIC: [u8; 8] = *b"MEMDBRS1";
const MAGIC_OFFSET: usize = 0;
const RECORD_LEN_OFFSET: usize = MAGIC_OFFSET + 8;
/// Bytes before the record.
pub const HEAD_LEN: usize = RECORD_LEN_OFFSET + 8;

/// `record` and `image` in one container.
pub fn pack(record: &[u8], image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + record.len() + image.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(record.len() as u64).to_le_bytes());
    out.extend_from_slice(record);
    out.extend_from_slice(image);
    out
}

/// The record and the image of a container (neither checked: the caller parses the
/// record and validates the image).
pub fn unpack(bytes: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    if bytes.len() < HEAD_LEN || bytes[MAGIC_OFFSET..RECORD_LEN_OFFSET] != MAGIC {
        return Err("not a memdb raft snapshot (bad magic)");
    }
    let len = u64::from_le_bytes(
        bytes[RECORD_LEN_OFFSET..HEAD_LEN]
            .try_into()
            .expect("8 bytes"),
    );
    let end = usize::try_from(len)
        .ok()
        .and_then(|n| HEAD_LEN.checked_add(n))
        .filter(|end| *end <= bytes.len())
        .ok_or("raft snapshot truncated in its record")?;
    Ok((&bytes[HEAD_LEN..end], &bytes[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_unpacks_to_what_was_packed_and_a_short_one_is_refused() {
        let c = pack(b"{}", b"image");
        assert_eq!(unpack(&c).unwrap(), (&b"{}"[..], &b"image"[..]));
        assert!(unpack(&c[..HEAD_LEN + 1]).is_err());
        assert!(unpack(b"MEMDBRS1").is_err());
        let mut huge = c.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(unpack(&huge).is_err());
        assert!(unpack(b"not a snapshot at all").is_err());
    }
}
