//! The snapshot format's unit tests: round trips, every kind of damage rejected, both
//! versions read.

use super::layout::{checksum, header_fields};
use super::*;
use crate::protocol::Incarnation;
use crate::storage::table::WordMap;
use crate::words::Tokenizer;
use rkyv::rancor;
use rkyv::util::AlignedVec;

pub(super) fn sample(n: usize) -> WordMap {
    let mut m = WordMap::default();
    for i in 0..n {
        m.insert(format!("w{i}é"), i as u64 * 7 + 1);
    }
    m.insert(String::new() + "hello", 2);
    m
}

pub(super) fn meta() -> Meta {
    Meta {
        tokenizer: Tokenizer::Whitespace,
        seq: 42,
        incarnation: Incarnation::from_raw(0xdead_beef).unwrap(),
    }
}

/// Copies into a 16-aligned buffer, as a mapping or `load` would provide.
fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut v = AlignedVec::<16>::new();
    v.extend_from_slice(bytes);
    v
}

#[test]
fn round_trip_keeps_every_key_and_the_header() {
    let map = sample(10_000);
    let img = encode(&map, meta()).unwrap();
    let (h, archived) = validate(&img).unwrap();
    assert_eq!(h.seq, 42);
    assert_eq!(h.incarnation, Incarnation::from_raw(0xdead_beef));
    assert_eq!(h.tokenizer, Tokenizer::Whitespace);
    assert_eq!(h.words, map.len() as u64);
    assert_eq!(h.payload_len as usize + HEADER_LEN, img.len());
    let get = |w: &str| hasher::with_key(h.key, || archived.get(w).map(|v| v.to_native()));
    for (k, v) in &map {
        assert_eq!(get(k), Some(*v), "{k}");
    }
    assert!(get("absent").is_none());
    // Looked up without the file's key, a word is (almost always) not found.
    let unkeyed = map
        .keys()
        .filter(|k| archived.get(k.as_str()).is_some())
        .count();
    assert!(unkeyed < map.len() / 10, "{unkeyed} found without the key");
    assert_eq!(to_word_map(archived), map);
}

/// A version 1 file, as the previous format wrote it: no key, the archive at 64,
/// laid out by rkyv's own `HashMap` serializer with FxHash.
fn version_1_image(map: &WordMap) -> AlignedVec {
    let mut buf = AlignedVec::<16>::new();
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    let std_map: std::collections::HashMap<String, u64> =
        map.iter().map(|(w, n)| (w.clone(), *n)).collect();
    let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&std_map, buf).unwrap();
    let payload_len = (buf.len() - HEADER_LEN) as u64;
    let mut head = header_fields(Kind::Base, meta(), payload_len, map.len() as u64);
    head[8..12].copy_from_slice(&1u32.to_le_bytes());
    let sum = checksum(&head, &buf[HEADER_LEN..], &|| false).unwrap();
    head[56..64].copy_from_slice(&sum.to_le_bytes());
    buf.as_mut_slice()[..HEADER_LEN].copy_from_slice(&head);
    buf
}

#[test]
fn versions_say_what_they_have_and_unknown_ones_are_refused() {
    assert!(!Version::PLAIN.has_key() && !Version::PLAIN.has_top_list());
    assert!(Version::KEYED.has_key() && !Version::KEYED.has_top_list());
    assert!(Version::CURRENT.has_key() && Version::CURRENT.has_top_list());
    assert_eq!(Version::from_number(3).unwrap(), Version::TOP_LIST);
    assert_eq!(Version::from_number(4).unwrap(), Version::CURRENT);
    for n in [0, 5, u32::MAX] {
        assert!(Version::from_number(n).is_err(), "{n}");
    }
    // The offsets chain to the layout drawn in the module's documentation.
    assert_eq!(
        (CHECKSUM_OFFSET, HEADER_LEN, KEY_LEN, DELTA_PREFIX_LEN),
        (56, 64, 16, 32)
    );
}

#[test]
fn a_version_1_file_is_still_read() {
    let map = sample(500);
    let img = version_1_image(&map);
    let (h, archived) = validate(&img).unwrap();
    assert_eq!(
        (h.version, h.key, h.archive_offset()),
        (Version::PLAIN, None, HEADER_LEN)
    );
    for (k, v) in &map {
        let got = hasher::with_key(h.key, || archived.get(k.as_str()).map(|v| v.to_native()));
        assert_eq!(got, Some(*v), "{k}");
    }
}

#[test]
fn empty_table_round_trips() {
    let img = encode(&WordMap::default(), meta()).unwrap();
    let (h, archived) = validate(&img).unwrap();
    assert_eq!((h.words, archived.len()), (0, 0));
}

#[test]
fn truncated_files_are_rejected() {
    let img = encode(&sample(100), meta()).unwrap();
    for cut in [
        0,
        10,
        HEADER_LEN - 1,
        HEADER_LEN,
        img.len() / 2,
        img.len() - 1,
    ] {
        let err = validate(&aligned(&img[..cut])).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::TooShort { .. } | SnapshotError::LengthMismatch { .. }
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn trailing_garbage_is_rejected() {
    let img = encode(&sample(100), meta()).unwrap();
    let mut longer = img.to_vec();
    longer.extend_from_slice(&encode(&WordMap::default(), meta()).unwrap()[HEADER_LEN..]);
    let err = validate(&aligned(&longer)).unwrap_err();
    assert!(matches!(err, SnapshotError::LengthMismatch { .. }), "{err}");
}

#[test]
fn wrong_magic_and_version_are_rejected() {
    let img = encode(&sample(10), meta()).unwrap();
    let mut bad = img.to_vec();
    bad[0] = b'X';
    assert!(matches!(
        validate(&aligned(&bad)).unwrap_err(),
        SnapshotError::BadMagic
    ));
    let mut bad = img.to_vec();
    bad[8..12].copy_from_slice(&5u32.to_le_bytes());
    assert!(matches!(
        validate(&aligned(&bad)).unwrap_err(),
        SnapshotError::UnsupportedVersion {
            found: 5,
            newest: 4
        }
    ));
    let mut bad = img.to_vec();
    bad[12..16].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        validate(&aligned(&bad)).unwrap_err(),
        SnapshotError::UnknownTokenizer(9)
    ));
}

/// Every position, header included: a flip anywhere must fail validation.
fn assert_every_flip_rejected(img: &[u8]) {
    for i in 0..img.len() {
        let mut bad = img.to_vec();
        bad[i] ^= 0x10;
        assert!(
            validate(&aligned(&bad)).is_err(),
            "flip at byte {i} accepted"
        );
    }
}

#[test]
fn every_flipped_byte_is_rejected() {
    assert_every_flip_rejected(&encode(&sample(20), meta()).unwrap());
}

fn delta_image() -> AlignedVec {
    let base = BaseRef {
        checksum: 0x1234,
        seq: 40,
        total_words: 7,
        digest: 0x5678,
    };
    encode_entries([("a", 3u64), ("bé", 9)].into_iter(), meta(), Some(base)).unwrap()
}

#[test]
fn a_delta_round_trips_and_every_flipped_byte_is_rejected() {
    let img = delta_image();
    let (h, archived) = validate(&img).unwrap();
    assert_eq!((h.kind, h.words, h.total_words()), (Kind::Delta, 2, 7));
    assert_eq!(
        h.base.map(|b| (b.checksum, b.seq, b.digest)),
        Some((0x1234, 40, 0x5678))
    );
    let got = hasher::with_key(h.key, || archived.get("bé").map(|v| v.to_native()));
    assert_eq!(got, Some(9));
    assert_every_flip_rejected(&img);
}

#[test]
fn a_delta_with_a_nonzero_reserved_field_is_rejected_before_version_4() {
    let img = delta_image();
    // Version 4 keeps the digest there.
    assert_eq!(
        &img[HEADER_LEN + KEY_LEN + 24..HEADER_LEN + KEY_LEN + 32],
        &0x5678u64.to_le_bytes()
    );
    // As version 3 (the same layout otherwise), re-signed so that only the reserved
    // field is wrong: refused.
    let mut bad = img.to_vec();
    bad[8..12].copy_from_slice(&3u32.to_le_bytes());
    let sum = checksum(&bad[..HEADER_LEN], &bad[HEADER_LEN..], &|| false).unwrap();
    bad[56..64].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(
        validate(&aligned(&bad)).unwrap_err(),
        SnapshotError::Reserved
    ));
    // With the field zero, the version 3 delta reads, with no digest.
    bad[HEADER_LEN + KEY_LEN + 24..HEADER_LEN + KEY_LEN + 32].fill(0);
    let sum = checksum(&bad[..HEADER_LEN], &bad[HEADER_LEN..], &|| false).unwrap();
    bad[56..64].copy_from_slice(&sum.to_le_bytes());
    let (h, _) = validate(&aligned(&bad)).unwrap();
    assert_eq!((h.version, h.base.unwrap().digest), (Version::TOP_LIST, 0));
    assert_eq!(
        h.chain_name(),
        None,
        "nothing is written on a version 3 delta"
    );
    // A delta cut inside its prefix.
    let mut short = img[..HEADER_LEN + KEY_LEN + 8].to_vec();
    short[32..40].copy_from_slice(&((KEY_LEN + 8) as u64).to_le_bytes());
    assert!(matches!(
        validate(&aligned(&short)).unwrap_err(),
        SnapshotError::TooShort { .. }
    ));
}

#[test]
fn misaligned_payload_is_refused_not_misread() {
    let img = encode(&sample(10), meta()).unwrap();
    let mut shifted = AlignedVec::<16>::new();
    shifted.extend_from_slice(&[0u8]);
    shifted.extend_from_slice(&img);
    assert!(matches!(
        validate(&shifted[1..]).unwrap_err(),
        SnapshotError::Misaligned
    ));
}

/// Re-signs an image after a deliberate change, so that only the change is wrong.
fn resign(bad: &mut [u8]) {
    let sum = checksum(&bad[..HEADER_LEN], &bad[HEADER_LEN..], &|| false).unwrap();
    bad[56..64].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn the_top_list_is_the_files_own_top_in_rank_order() {
    use crate::storage::top::{MAX_TOP, best_of};
    // Fewer words than the list holds: all of them.
    let map = sample(500);
    let img = encode(&map, meta()).unwrap();
    let (h, _) = validate(&img).unwrap();
    let top = h.top.expect("version 3 has a top list");
    let listed: Vec<_> = toplist::entries(&img, top).collect();
    let want = best_of(map.iter().map(|(w, n)| (w.as_str(), *n)), MAX_TOP);
    assert_eq!(listed, want);
    assert_eq!(listed.len(), map.len());
    // More: the top MAX_TOP.
    let map = sample(MAX_TOP + 300);
    let img = encode(&map, meta()).unwrap();
    let (h, _) = validate(&img).unwrap();
    let listed: Vec<_> = toplist::entries(&img, h.top.unwrap()).collect();
    let want = best_of(map.iter().map(|(w, n)| (w.as_str(), *n)), MAX_TOP);
    assert_eq!(listed, want);
    assert_eq!(h.archive_offset() % 16, 0);
}

#[test]
fn a_top_list_that_lies_is_rejected_even_when_signed() {
    let img = encode(&sample(50), meta()).unwrap();
    let (h, _) = validate(&img).unwrap();
    let top = h.top.unwrap();
    let first = top.offset + toplist::HEAD_LEN;
    // A count raised, a count zeroed, two entries swapped out of order, a word not in
    // the table, a padding byte set, a section length past the file.
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut raised = img.to_vec();
    raised[first] ^= 1;
    cases.push(("a wrong count", raised));
    let mut zero = img.to_vec();
    zero[first..first + 8].fill(0);
    cases.push(("a zero count", zero));
    let mut renamed = img.to_vec();
    renamed[first + 12] = b'Z';
    cases.push(("a word not in the table", renamed));
    let mut padded = img.to_vec();
    padded[top.offset + top.len - 1] = 1;
    cases.push(("padding", padded));
    let mut long = img.to_vec();
    long[top.offset + 8..top.offset + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    cases.push(("a section past the file", long));
    let mut fewer = img.to_vec();
    fewer[top.offset..top.offset + 8].copy_from_slice(&3u64.to_le_bytes());
    cases.push(("fewer entries than words", fewer));
    for (what, mut bad) in cases {
        resign(&mut bad);
        let err = validate(&aligned(&bad)).unwrap_err();
        assert!(
            matches!(err, SnapshotError::TopList(_) | SnapshotError::Archive(_)),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_version_2_file_is_still_read() {
    // Version 3 without its top list is version 2.
    let map = sample(300);
    let img = encode(&map, meta()).unwrap();
    let (h, _) = validate(&img).unwrap();
    let top = h.top.unwrap();
    let mut v2 = img[..top.offset].to_vec();
    v2.extend_from_slice(&img[top.offset + top.len..]);
    v2[8..12].copy_from_slice(&2u32.to_le_bytes());
    let payload = (v2.len() - HEADER_LEN) as u64;
    v2[32..40].copy_from_slice(&payload.to_le_bytes());
    resign(&mut v2);
    let v2 = aligned(&v2);
    let (h, archived) = validate(&v2).unwrap();
    assert_eq!((h.version, h.top), (Version::KEYED, None));
    for (k, v) in &map {
        let got = hasher::with_key(h.key, || archived.get(k.as_str()).map(|v| v.to_native()));
        assert_eq!(got, Some(*v), "{k}");
    }
}
