//! The layered table against a plain one, through publications, merges,
//! compactions and signed deltas.

use super::*;
use crate::protocol::Incarnation;
use crate::storage::delta::{file_over_file, files_over_file, memory_over_file, rebased};
use crate::storage::mapped::MappedSnapshot;
use crate::storage::snapshot::{self, BaseRef, Meta};
use crate::storage::table::{Table, WordMap, digest_of};
use crate::storage::top::{MAX_TOP, best_of};
use crate::words::Tokenizer;

fn meta(seq: u64) -> Meta {
    Meta {
        tokenizer: Tokenizer::Unicode,
        seq,
        incarnation: Incarnation::from_raw(7).unwrap(),
    }
}

fn write<'a, P: crate::storage::snapshot::Pair<'a>>(
    dir: &std::path::Path,
    name: &str,
    seq: u64,
    base: Option<BaseRef>,
    entries: impl Iterator<Item = P> + Clone,
) -> Arc<MappedSnapshot> {
    let staged = snapshot::stage(dir, ".tmp", meta(seq), base, entries).unwrap();
    let path = snapshot::install(dir, &staged, name).unwrap();
    Arc::new(MappedSnapshot::open(&path).unwrap())
}

/// What a file on `under` completing a table of `total_words` and `digest` names.
fn base_ref(under: &MappedSnapshot, total_words: u64, digest: u64) -> BaseRef {
    BaseRef {
        checksum: under.header().chain_name().unwrap(),
        seq: under.header().seq,
        total_words,
        digest,
    }
}

/// What the publisher does: seal, write the sealed words as a file on the newest
/// (the delta when the base has none, else the next recent delta), map it, swap it
/// in.
fn publish(dir: &std::path::Path, t: &mut Layered) {
    let lower = t.seal();
    let Some(top) = lower.sealed.last().cloned() else {
        return;
    };
    let over = lower.sealed_words();
    let f = &lower.files;
    let under = f.recent.last().or(f.delta.as_ref()).unwrap_or(&f.base);
    let name = match f.delta {
        None => "delta".to_owned(),
        Some(_) => format!("recent{}", top.seq),
    };
    let bref = base_ref(under, top.words, top.digest);
    let file = write(
        dir,
        &name,
        top.seq,
        Some(bref),
        memory_over_file(&over, None),
    );
    let mut files = f.clone();
    match files.delta {
        None => files.delta = Some(file),
        Some(_) => files.recent.push(file),
    }
    t.replace_lower(|cur| Lower {
        files,
        digest: top.digest,
        sealed: cur.sealed[lower.sealed.len()..].to_vec(),
    });
}

/// What a merge of recent deltas does: all but the newest `keep` into the delta
/// (`into_delta`), or into one recent delta. The ones it leaves name the table the
/// newest merged one completes, which the merged file completes too.
fn merge(dir: &std::path::Path, t: &mut Layered, keep: usize, into_delta: bool) {
    let lower = t.lower().clone();
    let f = &lower.files;
    let Some(delta) = f.delta.clone() else {
        return;
    };
    if f.recent.len() <= keep {
        return;
    }
    let n = f.recent.len() - keep;
    let h = f.recent[n - 1].header();
    let digest = h.base.unwrap().digest;
    let over: Vec<_> = f.recent[..n].iter().rev().cloned().collect();
    let (bref, under, name) = if into_delta {
        let bref = base_ref(&f.base, h.total_words(), digest);
        (bref, Some(&*delta), "delta".to_owned())
    } else {
        let on = f.recent[0].header().base.unwrap();
        let bref = BaseRef {
            total_words: h.total_words(),
            digest,
            ..on
        };
        (bref, None, format!("recent{}", h.seq))
    };
    let merged = write(dir, &name, h.seq, Some(bref), files_over_file(&over, under));
    let mut files = f.clone();
    if into_delta {
        files.delta = Some(merged);
        files.recent.drain(..n);
    } else {
        files.recent.splice(..n, [merged]);
    }
    t.replace_lower(|cur| Lower {
        files,
        digest: cur.digest,
        sealed: cur.sealed.clone(),
    });
}

/// What a compaction does: the delta into a new base, the delta again on it, and
/// the recent deltas again on that.
fn compact(dir: &std::path::Path, t: &mut Layered) {
    let lower = t.lower().clone();
    let f = &lower.files;
    let Some(delta) = f.delta.clone() else {
        return;
    };
    let seq = delta.header().seq;
    let base = write(dir, "base", seq, None, file_over_file(&delta, &f.base));
    let h = delta.header();
    let bref = base_ref(&base, h.total_words(), h.base.unwrap().digest);
    let on_base = MappedState::base(base.clone());
    let again = write(dir, "delta", seq, Some(bref), rebased(&delta, &on_base));
    assert!(again.header().words <= delta.header().words);
    // The recent deltas name the table the delta completes: they stay as they are.
    let recent = f.recent.clone();
    t.replace_lower(|cur| Lower {
        files: MappedState {
            base,
            delta: Some(again),
            recent,
        },
        digest: cur.digest,
        sealed: cur.sealed.clone(),
    });
}

/// Each file of the table's chain pairs with the one under it, as a reader checks.
fn assert_chain(t: &Layered) {
    let f = &t.lower().files;
    let mut under = &f.base;
    for file in f.delta.iter().chain(&f.recent) {
        assert!(
            crate::storage::mapped::pairs(under.header(), file.header()),
            "{:?} on {:?}",
            file.header(),
            under.header()
        );
        under = file;
    }
}

fn whole(t: &Layered) -> WordMap {
    let view = t.view();
    let all: Vec<(&str, u64)> = view.iter().collect();
    let map: WordMap = all.iter().map(|(w, n)| (w.to_string(), *n)).collect();
    assert_eq!(map.len(), all.len(), "each word once");
    map
}

/// A layered table follows a plain one through writes, seals, publications and
/// compactions: the same counts, digest, length, top list and whole walk.
#[test]
fn layers_follow_a_plain_table_through_publications_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = write(d, "base", 0, None, std::iter::empty::<(&str, u64)>());
    let mut t = Layered::new(MappedState::base(empty), 0);
    let mut plain = Table::new();
    let mut batches = crate::storage::table::tests::skewed_batches(MAX_TOP as u64 * 2, 40);
    for seq in 1..=600u64 {
        let deltas = batches();
        t.apply(&deltas, seq);
        plain.apply(&deltas, seq);
        match seq % 50 {
            3 | 7 | 9 | 11 | 19 | 23 | 33 | 35 | 44 | 45 => publish(d, &mut t),
            // A seal whose words are not yet written: reads go through it.
            21 => {
                t.seal();
            }
            13 => merge(d, &mut t, 1, false),
            25 => {
                publish(d, &mut t);
                merge(d, &mut t, 1, true);
            }
            37 => merge(d, &mut t, 0, false),
            47 => merge(d, &mut t, 0, true),
            40 => {
                publish(d, &mut t);
                compact(d, &mut t);
            }
            _ => {}
        }
        assert_chain(&t);
        assert_eq!((t.seq(), t.len()), (plain.seq(), plain.len()), "at {seq}");
        assert_eq!(t.digest(), plain.digest(), "at {seq}");
        if seq % 25 == 0 {
            let want: WordMap = plain.map().iter().map(|(w, n)| (w.into(), n)).collect();
            assert_eq!(whole(&t), want, "at {seq}");
            assert_eq!(digest_of(t.view().iter()), t.digest());
            let top = best_of(plain.map().iter(), MAX_TOP);
            t.with_top(|list, complete| {
                assert!(list.iter().eq(top.iter().copied()), "top at {seq}");
                assert_eq!(complete, plain.len() <= MAX_TOP);
            });
            for (w, n) in plain.map().iter().take(50) {
                assert_eq!(t.get(w), n);
            }
            assert_eq!(t.get("never"), 0);
        }
    }
    // A table opened on the files the last publication left: the same table.
    publish(d, &mut t);
    let files = t.lower().files.clone();
    let reopened = Layered::new(files, t.lower().digest);
    assert_eq!(whole(&reopened), whole(&t));
    assert_eq!((reopened.seq(), reopened.len()), (t.seq(), t.len()));
    reopened.with_top_words(5, "w1", |got| {
        let want = crate::storage::top::scanned(plain.map().iter(), 5, "w1");
        assert_eq!(got, &want[..]);
    });
}

/// A replica's signed deltas over the files: raises, lowerings and words that go
/// (a zero count hides the word in the files), exactly as a plain table.
#[test]
fn signed_deltas_over_files_lower_and_remove_words_as_a_plain_table_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut plain = Table::new();
    let mut batches = crate::storage::table::tests::skewed_batches(MAX_TOP as u64 * 2, 40);
    for seq in 1..=40u64 {
        plain.apply(&batches(), seq);
    }
    let words: Vec<(String, u64)> = plain.map().iter().map(|(w, n)| (w.into(), n)).collect();
    let base = write(d, "base", 40, None, plain.map().iter());
    let mut t = Layered::new(MappedState::base(base), plain.digest());
    // Too low for a word: refused whole, nothing changed.
    let (w0, n0) = words[0].clone();
    let bad = vec![("new".to_owned(), 5), (w0.clone(), -(n0 as i64) - 1)];
    assert!(t.apply_signed(&bad).is_err());
    assert_eq!(
        (t.get("new"), t.len(), t.digest()),
        (0, plain.len(), plain.digest())
    );
    let mut rng = 7u64;
    for step in 0..300usize {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (w, _) = &words[(rng >> 33) as usize % words.len()];
        let have = plain.get(w) as i64;
        let delta = match step % 4 {
            0 => -have,       // the word goes
            1 => -(have / 2), // lowered
            2 => 3,           // raised (back, if it went)
            _ => 1 + (step as i64 % 5),
        };
        let batch = vec![(w.clone(), delta), (format!("fresh{}", step % 7), 1)];
        t.apply_signed(&batch).unwrap();
        plain.apply_signed(&batch).unwrap();
        assert_eq!(t.get(w), plain.get(w), "{w} at step {step}");
        assert_eq!(
            (t.len(), t.digest()),
            (plain.len(), plain.digest()),
            "at {step}"
        );
    }
    let want: WordMap = plain.map().iter().map(|(w, n)| (w.into(), n)).collect();
    assert_eq!(whole(&t), want);
    assert_eq!(digest_of(t.view().iter()), t.digest());
    let top = best_of(plain.map().iter(), MAX_TOP);
    t.with_top(|list, _| assert!(list.iter().eq(top.iter().copied())));
}
