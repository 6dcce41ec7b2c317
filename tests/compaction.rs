//! Publication by base and delta: local replicas see whole, monotone states across
//! delta publications and compactions; a crash mid-compaction loses nothing; corrupt
//! files are rejected while the last good pair keeps serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memdb::protocol::Incarnation;
use memdb::storage::snapshot::{self, BaseRef, Meta};
use memdb::words::Tokenizer;

use crate::util::*;

/// Probe words every post carries once: each count equals the post's seq.
const PROBES: [&str; 6] = ["pa", "pb", "pc", "pd", "pe", "pf"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_whole_monotone_states_across_deltas_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &["--snapshot-interval", "2ms", "--compact-after", "40"],
    );
    let local = Arc::new(Node::local(dir.path(), &[]));
    leader.client().post_text(&PROBES.join(" ")).await.unwrap();
    wait_ready(&local).await;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (local, done) = (local.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let q: Vec<String> = PROBES.iter().map(|w| format!("word={w}")).collect();
            let url = format!("{}/wordcount?{}", local.url, q.join("&"));
            let (mut last, mut reads) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                let (seq, body) = counts_with_seq(&http, &url).await;
                let v = body["pa"];
                assert!(body.values().all(|&x| x == v), "a torn state: {body:?}");
                assert_eq!(v, seq, "counts and seq from one state");
                assert!(v >= last, "went back from {last} to {v}");
                last = v;
                reads += 1;
            }
            reads
        }));
    }
    // Every post adds new words too, so the delta keeps outgrowing its share of the
    // base and compactions follow one another.
    let c = leader.client();
    for i in 1..300u64 {
        let fresh: Vec<String> = (0..8).map(|j| format!("n{i}x{j}")).collect();
        c.post_text(&format!("{} {}", PROBES.join(" "), fresh.join(" ")))
            .await
            .unwrap();
    }
    let t = converged(&leader, &local).await;
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.await.unwrap() > 10, "readers kept reading");
    }
    assert_eq!(t["pa"], 300);
    assert_eq!(t.len(), PROBES.len() + 299 * 8);
    let h = leader.health().await;
    let compactions = h["snapshot"]["compactions"].as_u64().unwrap();
    assert!(compactions >= 5, "only {compactions} compactions: {h}");
    let merges = h["snapshot"]["merges"].as_u64().unwrap();
    assert!(merges >= 5, "only {merges} delta merges: {h}");
    // /metrics says the same (counters only grow: at least what /health said).
    let merged = scrape_metric(&leader, "memdb_snapshot_merges_total").await;
    let compacted = scrape_metric(&leader, "memdb_snapshot_compactions_total").await;
    assert!(merged >= merges as f64 && compacted >= compactions as f64);
    // At rest the merges bring the chain under 4 recent deltas.
    eventually("a short chain at rest", || async {
        (scrape_metric(&leader, "memdb_snapshot_recent_files").await < 4.0).then_some(())
    })
    .await;
    let lh = local.health().await;
    assert_eq!(lh["rejected_snapshots"], 0, "{lh}");
    assert_eq!(lh["words"], t.len() as u64, "{lh}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_compaction_loses_nothing_and_replicas_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(
        dir.path(),
        &[
            "--snapshot-interval",
            "5ms",
            "--compact-after",
            "1000",
            "--fsync",
            "always",
            "--max-body",
            "4MiB",
        ],
    );
    let local = Node::local(dir.path(), &[]);
    let c = leader.client();
    let mut model: HashMap<String, u64> = HashMap::new();
    // Caught under way: compactions (a new base) and delta merges (a new delta).
    let (mut bases, mut merges) = (0, 0);
    let mut round = 0u64;
    // Big enough posts that a merge takes a while; kill the leader while one is under
    // way (its temp file on disk), a few times of each kind. The restart maps the
    // files it finds and replays the log past them.
    while (bases < 2 || merges < 1) && round < 60 {
        round += 1;
        let words: Vec<String> = (0..30_000).map(|j| format!("r{round}w{j}")).collect();
        let text = format!("{} common", words.join(" "));
        c.post_text(&text).await.unwrap();
        for w in words {
            *model.entry(w).or_default() += 1;
        }
        *model.entry("common".into()).or_default() += 1;
        let base = dir.path().join(snapshot::TEMP_NAME);
        let merges_to = [
            dir.path().join(snapshot::MERGE_TEMP_NAME),
            dir.path().join(snapshot::RECENT_MERGE_TEMP_NAME),
        ];
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let (mut in_base, mut in_merge) = (false, false);
        while std::time::Instant::now() < deadline && !(in_base || in_merge) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            (in_base, in_merge) = (base.exists(), merges_to.iter().any(|m| m.exists()));
        }
        if in_base || in_merge {
            leader.kill();
            bases += in_base as u32;
            merges += in_merge as u32;
            // The local replica goes on serving its last state while the leader is down.
            let (status, body) = raw(
                "GET",
                &format!("{}/wordcount?word=common", local.url),
                None,
                vec![],
            )
            .await;
            assert_eq!(status, 200, "{body}");
            leader.restart();
            assert_eq!(
                leader.table().await,
                model,
                "the leader restarted after round {round} lost writes"
            );
        }
    }
    assert!(
        bases > 0 && merges > 0,
        "caught {bases} compactions and {merges} delta merges under way in {round} rounds"
    );
    assert_eq!(
        leader.table().await,
        model,
        "the restarted leader lost writes"
    );
    assert_eq!(converged(&leader, &local).await, model);
    eprintln!("killed mid-compaction {bases} times, mid-merge {merges} times, in {round} rounds");
}

fn meta(seq: u64) -> Meta {
    Meta {
        tokenizer: Tokenizer::Unicode,
        seq,
        incarnation: Incarnation::from_raw(77).unwrap(),
    }
}

/// Writes a base of `words` (each `w{i}` counted `n`) and returns its reference.
fn write_base(dir: &Path, seq: u64, words: usize, n: u64) -> snapshot::Header {
    let owned: Vec<(String, u64)> = (0..words).map(|i| (format!("w{i}"), n)).collect();
    let img =
        snapshot::encode_entries(owned.iter().map(|(w, n)| (w.as_str(), *n)), meta(seq), None)
            .unwrap();
    snapshot::publish(dir, &img).unwrap();
    snapshot::validate(&img).unwrap().0
}

fn delta_image(base: &snapshot::Header, seq: u64, changes: &[(&str, u64)]) -> Vec<u8> {
    let r = BaseRef {
        checksum: base.checksum,
        seq: base.seq,
        total_words: base.words,
        digest: 0,
    };
    snapshot::encode_entries(changes.iter().copied(), meta(seq), Some(r))
        .unwrap()
        .to_vec()
}

fn put_delta(dir: &Path, bytes: &[u8]) {
    memdb::fs::write_atomically(dir, snapshot::DELTA_NAME, snapshot::DELTA_TEMP_NAME, bytes)
        .unwrap();
}

/// A local replica skips rkyv's structural check of a file the leader recorded as
/// checked (`snapshot.checked`), never its checksum: a file whose bytes changed under a
/// record naming its header is still rejected.
#[tokio::test]
async fn a_file_the_leader_recorded_is_still_checksummed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_base(dir.path(), 10, 20, 1);
    put_delta(dir.path(), &delta_image(&base, 12, &[("w1", 5)]));
    let local = Node::local(dir.path(), &["--poll-interval", "20ms"]);
    wait_ready(&local).await;
    assert_eq!(local.seq().await, 12);
    let mut bad = delta_image(&base, 13, &[("w1", 6)]);
    let header = snapshot::read_header(&bad, bad.len() as u64).unwrap();
    let at = bad.len() - 20;
    bad[at] ^= 1;
    // The record names the file by its header's checksum and length, which the flip
    // left as they were.
    let record = snapshot::checked::Checked::of(&header, 0);
    snapshot::checked::store(dir.path(), &[record]).unwrap();
    put_delta(dir.path(), &bad);
    eventually("the recorded but damaged delta rejected", || async {
        (local.health().await["rejected_snapshots"] == 1).then_some(())
    })
    .await;
    assert_eq!(local.seq().await, 12);
    // Recorded and whole: mapped.
    let good = delta_image(&base, 14, &[("w1", 7)]);
    let header = snapshot::read_header(&good, good.len() as u64).unwrap();
    snapshot::checked::store(dir.path(), &[snapshot::checked::Checked::of(&header, 0)]).unwrap();
    put_delta(dir.path(), &good);
    eventually("the recorded delta mapped", || async {
        (local.seq().await == 14).then_some(())
    })
    .await;
    assert_eq!(counts(&local, &["w1"]).await["w1"], 7);
}

#[tokio::test]
async fn corrupt_deltas_and_bases_are_rejected_while_the_last_good_pair_serves() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_base(dir.path(), 10, 20, 1);
    put_delta(dir.path(), &delta_image(&base, 12, &[("w1", 5)]));
    let local = Node::local(dir.path(), &["--poll-interval", "20ms"]);
    wait_ready(&local).await;
    let good = HashMap::from([("w1".to_owned(), 5u64), ("w2".to_owned(), 1)]);
    assert_eq!(counts(&local, &["w1", "w2"]).await, good);
    assert_eq!(local.seq().await, 12);

    // A delta with one flipped byte.
    let mut bad = delta_image(&base, 13, &[("w1", 6)]);
    let at = bad.len() - 20;
    bad[at] ^= 1;
    put_delta(dir.path(), &bad);
    eventually("the bad delta rejected", || async {
        (local.health().await["rejected_snapshots"] == 1).then_some(())
    })
    .await;
    assert_eq!(counts(&local, &["w1", "w2"]).await, good);
    assert_eq!(local.seq().await, 12);

    // A good delta on the same base, then a corrupt base under it.
    put_delta(dir.path(), &delta_image(&base, 13, &[("w1", 6)]));
    eventually("the good delta mapped", || async {
        (local.seq().await == 13).then_some(())
    })
    .await;
    let good = HashMap::from([("w1".to_owned(), 6u64), ("w2".to_owned(), 1)]);
    assert_eq!(counts(&local, &["w1", "w2"]).await, good);
    let mut img = std::fs::read(dir.path().join(snapshot::FILE_NAME)).unwrap();
    img[snapshot::HEADER_LEN + 3] ^= 0x40;
    snapshot::publish(dir.path(), &img).unwrap();
    eventually("the bad base rejected", || async {
        (local.health().await["rejected_snapshots"] == 2).then_some(())
    })
    .await;
    let h = local.health().await;
    let why = h["last_rejection"].as_str().unwrap();
    assert!(why.starts_with(snapshot::FILE_NAME), "{why}");
    assert_eq!(counts(&local, &["w1", "w2"]).await, good);

    // A good pair again: served.
    let base = write_base(dir.path(), 20, 20, 3);
    put_delta(dir.path(), &delta_image(&base, 21, &[("w2", 9)]));
    eventually("the new pair mapped", || async {
        (local.seq().await == 21).then_some(())
    })
    .await;
    let got = counts(&local, &["w1", "w2", "w3"]).await;
    assert_eq!((got["w1"], got["w2"], got["w3"]), (3, 9, 3));
    // A delta naming another base is not paired: the base alone serves, and the
    // replica never goes back in time to get there.
    let other = snapshot::Header {
        checksum: 1,
        ..base
    };
    put_delta(dir.path(), &delta_image(&other, 22, &[("w2", 100)]));
    let before = local.health().await["checks"].as_u64().unwrap();
    eventually("the unpaired delta looked at", || async {
        (local.health().await["checks"].as_u64().unwrap() > before + 2).then_some(())
    })
    .await;
    assert_eq!(local.seq().await, 21, "kept the newer pair");
    assert_eq!(counts(&local, &["w2"]).await["w2"], 9);
}

#[tokio::test]
async fn sync_streams_the_table_from_its_files_and_the_words_written_since() {
    let dir = tempfile::tempdir().unwrap();
    // No publication during the test but the one a local replica asks for: until
    // then every word is in the table's live layer over an empty base, and a 2-batch
    // backlog holds no more than the last two posts (the stream needs none of it).
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "1h", "--backlog", "2"]);
    let c = leader.client();
    let mut model = HashMap::new();
    let streamed = |resp: &reqwest::Response| {
        assert!(
            resp.headers().get("content-length").is_none(),
            "streamed, not built whole: {:?}",
            resp.headers()
        );
    };
    for (i, text) in ["a b", "b c", "c d", "d e e"].iter().enumerate() {
        c.post_text(text).await.unwrap();
        for w in text.split(' ') {
            *model.entry(w.to_owned()).or_insert(0u64) += 1;
        }
        assert_eq!(leader.table().await, model, "after post {i}");
    }
    let resp = reqwest::get(format!("{}/sync", leader.url)).await.unwrap();
    assert_eq!(resp.headers()["x-memdb-seq"], "4");
    streamed(&resp);
    let got: HashMap<String, u64> = resp.json().await.unwrap();
    assert_eq!(got, model, "all in memory, none on disk yet");
    // A reader on a local replica waiting for seq 5 makes the leader publish it: the
    // words move from memory to the delta file.
    c.post_text("f").await.unwrap();
    *model.entry("f".into()).or_insert(0) += 1;
    let local = Node::local(dir.path(), &[]);
    wait_ready(&local).await;
    local.client().wordcount(&["f"], Some(5)).await.unwrap();
    // And one more word over the file, in memory only.
    c.post_text("a g").await.unwrap();
    for w in ["a", "g"] {
        *model.entry(w.into()).or_insert(0) += 1;
    }
    let resp = reqwest::get(format!("{}/sync", leader.url)).await.unwrap();
    assert_eq!(resp.headers()["x-memdb-seq"], "6");
    streamed(&resp);
    let got: HashMap<String, u64> = resp.json().await.unwrap();
    assert_eq!(got, model, "the delta file under the words written since");
}
