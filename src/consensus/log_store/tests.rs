use super::record::legacy;
use super::*;
use crate::consensus::types::Proposal;
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

pub(super) fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Blank,
    }
}

fn words(term: u64, index: u64, n: usize) -> Entry {
    let deltas = (0..n).map(|i| (format!("w{index}-{i}"), 1)).collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal::new(deltas, None)),
    }
}

fn ids(store: &LogStore) -> Vec<(u64, u64)> {
    store
        .inner
        .lock()
        .entries
        .values()
        .map(|l| (l.log_id.leader_id.term, l.log_id.index))
        .collect()
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(dir, FsyncPolicy::No, 1 << 20).unwrap()
}

/// Appends without the engine (its flush callback cannot be made outside openraft):
/// the same records `append` writes. (Unlike the engine's log, a test's may begin at
/// any index.)
fn put(store: &LogStore, es: &[Entry]) {
    let mut inner = store.inner.lock();
    if !inner.entries.is_empty() {
        inner.check_chain(es).unwrap();
    }
    for e in es {
        let mut bytes = Vec::new();
        let len = record::put_entry(&mut bytes, e) as u32;
        let at = inner.write(&bytes).unwrap();
        let segment = inner.active().id;
        inner.appended(std::slice::from_ref(e), &[len], segment, at);
        inner.maybe_roll();
    }
}

fn meta(store: &LogStore, m: Meta) {
    let mut bytes = Vec::new();
    record::put_meta(&mut bytes, &m);
    let mut inner = store.inner.lock();
    inner.write(&bytes).unwrap();
    inner.apply(m);
    inner.shed();
}

#[tokio::test]
async fn appending_at_an_index_drops_what_followed_it_even_without_a_truncation_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    put(&store, &[entry(1, 1), entry(1, 2), entry(1, 3)]);
    // A new leader's entries from index 2 on: the old 2 and 3 are gone.
    put(&store, &[entry(2, 2)]);
    assert_eq!(ids(&store), vec![(1, 1), (2, 2)]);
    drop(store);
    assert_eq!(ids(&open(dir.path())), vec![(1, 1), (2, 2)]);
}

#[tokio::test]
async fn truncation_purge_vote_and_commit_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new(3, 2);
    {
        let store = open(dir.path());
        put(&store, &(1..=5).map(|i| entry(1, i)).collect::<Vec<_>>());
        meta(&store, Meta::TruncatedFrom(5));
        meta(
            &store,
            Meta::Purged(LogId::new(CommittedLeaderId::new(1, 1), 2)),
        );
        meta(&store, Meta::Vote(vote));
        let c = Some(LogId::new(CommittedLeaderId::new(1, 1), 4));
        meta(&store, Meta::Committed(c));
    }
    let store = open(dir.path());
    assert_eq!(ids(&store), vec![(1, 3), (1, 4)]);
    let inner = store.inner.lock();
    assert_eq!(inner.purged.map(|p| p.index), Some(2));
    assert_eq!(inner.vote, Some(vote));
    assert_eq!(inner.committed.map(|c| c.index), Some(4));
}

#[tokio::test]
async fn entries_are_read_back_from_the_segments_past_the_cache_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let es: Vec<Entry> = (1..=40).map(|i| words(1, i, 50)).collect();
    // A cache of about four entries: most are read back from the file.
    let bound = cache::held_bytes(&es[0]) * 4;
    let mut store = LogStore::open(dir.path(), FsyncPolicy::No, bound).unwrap();
    put(&store, &es);
    assert!(store.held_bytes().0 <= bound);
    let got = store.try_get_log_entries(1..=40).await.unwrap();
    assert_eq!(got.len(), 40);
    for (a, b) in got.iter().zip(&es) {
        assert_eq!(a.log_id, b.log_id);
        let (EntryPayload::Normal(a), EntryPayload::Normal(b)) = (&a.payload, &b.payload) else {
            panic!("not normal entries");
        };
        assert_eq!(a.deltas, b.deltas);
    }
    drop(store);
    // At start only the ids are read; the entries come back from disk when asked for.
    let mut store = LogStore::open(dir.path(), FsyncPolicy::No, bound).unwrap();
    assert_eq!(store.held_bytes().0, 0);
    let got = store.try_get_log_entries(10..13).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
}

#[tokio::test]
async fn a_purge_deletes_whole_segments_and_never_rewrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Entries of some 130 KiB each: a segment holds about 64.
    let es: Vec<Entry> = (1..=200).map(|i| words(1, i, 10_000)).collect();
    put(&store, &es);
    let segs = |d: &Path| segments::list(&segments::dir_in(d)).unwrap();
    let before = segs(dir.path());
    assert!(before.len() >= 3, "{before:?}");
    meta(&store, Meta::Purged(es[150].log_id));
    let after = segs(dir.path());
    assert!(
        after.len() < before.len() && after[0] > before[0],
        "{after:?}"
    );
    // The segments kept are the same files, untouched.
    assert_eq!(*after.last().unwrap(), *before.last().unwrap());
    let last = *after.last().unwrap();
    assert!(
        store
            .inner
            .lock()
            .segments
            .iter()
            .all(|s| s.live > 0 || s.id == last)
    );
    drop(store);
    let store = open(dir.path());
    let held = ids(&store);
    assert_eq!(held.first(), Some(&(1, 152)));
    assert_eq!(held.last(), Some(&(1, 200)));
    assert_eq!(store.inner.lock().purged.map(|p| p.index), Some(151));
}

#[tokio::test]
async fn the_vote_survives_the_deletion_of_the_segment_it_was_written_in() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new(7, 3);
    {
        let store = open(dir.path());
        meta(&store, Meta::Vote(vote));
        let es: Vec<Entry> = (1..=120).map(|i| words(7, i, 10_000)).collect();
        put(&store, &es);
        meta(&store, Meta::Purged(es[110].log_id));
        assert!(
            store.inner.lock().segments[0].id > 1,
            "the first segment is gone"
        );
    }
    assert_eq!(open(dir.path()).inner.lock().vote, Some(vote));
}

#[tokio::test]
async fn an_inverted_range_or_a_gap_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    put(&store, &(0..=5).map(|i| entry(1, i)).collect::<Vec<_>>());
    let got = store.try_get_log_entries(2..4).await.unwrap();
    assert_eq!(got.len(), 2);
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = store.try_get_log_entries(5..2).await;
    assert!(inverted.is_err());
    // A hole can only be made behind the log's back; reading across it fails.
    store.inner.lock().entries.remove(&3);
    let e = store.try_get_log_entries(1..6).await.unwrap_err();
    assert!(e.to_string().contains("gap between entries 2 and 4"), "{e}");
}

#[test]
fn entries_that_do_not_continue_the_log_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    put(&store, &(0..=5).map(|i| entry(1, i)).collect::<Vec<_>>());
    let inner = store.inner.lock();
    // Replacing the tail, or continuing it: fine.
    inner.check_chain(&[entry(2, 3), entry(2, 4)]).unwrap();
    inner.check_chain(&[entry(1, 6)]).unwrap();
    // Past a hole, or not one run.
    assert!(inner.check_chain(&[entry(1, 8)]).is_err());
    assert!(inner.check_chain(&[entry(1, 6), entry(1, 8)]).is_err());
}

#[test]
fn a_torn_or_corrupt_tail_is_cut_at_the_last_whole_record() {
    let mut next = Vec::new();
    record::put_entry(&mut next, &entry(1, 2));
    for tail in [
        next[..next.len() - 1].to_vec(), // torn
        {
            let mut c = next.clone();
            let last = c.len() - 1;
            c[last] ^= 0x40; // a flipped bit
            c
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        drop({
            let store = open(dir.path());
            put(&store, &[entry(1, 1)]);
            store
        });
        let seg = segments::dir_in(dir.path()).join(format!("{:020}.seg", 1));
        let whole = std::fs::metadata(&seg).unwrap().len();
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&tail).unwrap();
        let store = open(dir.path());
        assert_eq!(store.len(), 1);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
    }
}

#[tokio::test]
async fn a_release_s_single_log_file_is_moved_into_segments() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new(4, 1);
    let bytes: Vec<u8> = [
        legacy::Record::Entries((1..=6).map(|i| words(2, i, 3)).collect()),
        legacy::Record::Purged(LogId::new(CommittedLeaderId::new(2, 1), 2)),
        legacy::Record::TruncatedFrom(6),
        legacy::Record::Vote(vote),
        legacy::Record::Committed(Some(LogId::new(CommittedLeaderId::new(2, 1), 5))),
    ]
    .iter()
    .flat_map(legacy::encode)
    .collect();
    std::fs::write(dir.path().join(segments::DIR), bytes).unwrap();
    let mut store = open(dir.path());
    assert!(dir.path().join(segments::DIR).is_dir());
    assert_eq!(ids(&store), vec![(2, 3), (2, 4), (2, 5)]);
    let got = store.try_get_log_entries(3..=5).await.unwrap();
    assert_eq!(got.len(), 3);
    let inner = store.inner.lock();
    assert_eq!(inner.vote, Some(vote));
    assert_eq!(inner.committed.map(|c| c.index), Some(5));
    assert_eq!(inner.purged.map(|p| p.index), Some(2));
}

#[tokio::test]
async fn a_move_into_segments_stopped_half_way_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = legacy::encode(&legacy::Record::Entries(
        (1..=3).map(|i| words(1, i, 2)).collect(),
    ));
    // Stopped after the old file was renamed aside, with a half-written scratch copy.
    std::fs::write(dir.path().join("raft.log.moving"), bytes).unwrap();
    std::fs::create_dir(dir.path().join(".raft.log.new")).unwrap();
    std::fs::write(
        dir.path().join(".raft.log.new/00000000000000000001.seg"),
        b"torn",
    )
    .unwrap();
    let store = open(dir.path());
    assert_eq!(ids(&store), vec![(1, 1), (1, 2), (1, 3)]);
    assert!(!dir.path().join("raft.log.moving").exists());
    assert!(!dir.path().join(".raft.log.new").exists());
}
