//! The write-ahead log: nothing acknowledged is lost to a SIGKILL with
//! `--fsync always`, nothing is applied twice, and a damaged log tail is cut, not fatal.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

/// 8 clients post unique words until the leader is SIGKILLed under them; after a
/// restart every acknowledged word must be there exactly once.
async fn kill_under_load(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--fsync", "always"];
    args.extend_from_slice(extra);
    let mut leader = Node::leader(dir.path(), &args);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, acked) = (leader.client(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let word = format!("d{w}x{i}");
                match c.post_text(&word).await {
                    Ok(_) => acked.lock().unwrap().push(word),
                    Err(_) => break, // the leader is gone
                }
            }
        }));
    }
    eventually("writes acknowledged", || async {
        (acked.lock().unwrap().len() >= 400).then_some(())
    })
    .await;
    leader.kill();
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    leader.restart();
    let table = leader.table().await;
    let lost: Vec<&String> = acked.iter().filter(|w| !table.contains_key(*w)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let twice: Vec<(&String, &u64)> = table.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    // At most the 8 requests in flight at the kill were durable without an answer.
    let acked: HashSet<&String> = acked.iter().collect();
    let extra = table.keys().filter(|w| !acked.contains(w)).count();
    assert!(extra <= 8, "{extra} unacknowledged words");
    assert_eq!(
        leader.seq().await as usize,
        table.len(),
        "one seq per write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_fsync_always_loses_no_acknowledged_write() {
    // An hour between snapshots: only the log can save these writes.
    kill_under_load(&["--snapshot-interval", "1h"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_snapshots_and_log_rotations_loses_nothing() {
    kill_under_load(&["--snapshot-interval", "30ms"]).await;
}

async fn ten_writes_then_kill(dir: &std::path::Path) -> Node {
    let mut leader = Node::leader(dir, &["--fsync", "always", "--snapshot-interval", "1h"]);
    for i in 0..10 {
        leader
            .client()
            .post_text(&format!("rec{i} shared"))
            .await
            .unwrap();
    }
    leader.kill();
    leader
}

fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
    memdb::storage::log::segments(dir)
        .unwrap()
        .pop()
        .expect("a log segment")
        .1
}

#[tokio::test]
async fn a_torn_log_tail_is_cut_and_the_leader_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = ten_writes_then_kill(dir.path()).await;
    let seg = last_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    leader.restart();
    assert_eq!(leader.seq().await, 9, "the torn 10th record is dropped");
    assert_eq!(counts(&leader, &["shared", "rec9"]).await["shared"], 9);
    assert!(
        leader.log().contains("cutting the log here"),
        "{}",
        leader.log()
    );
    // Writing continues with the next seq, and survives another restart.
    assert_eq!(leader.client().post_text("after").await.unwrap().seq, 10);
    leader.kill();
    leader.restart();
    assert_eq!(leader.seq().await, 10);
    assert_eq!(counts(&leader, &["after", "shared"]).await["shared"], 9);
}

#[tokio::test]
async fn a_flipped_byte_in_the_log_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = ten_writes_then_kill(dir.path()).await;
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    leader.restart();
    let seq = leader.seq().await;
    assert!(
        (1..10).contains(&seq),
        "replay stopped before the damage: {seq}"
    );
    assert_eq!(counts(&leader, &["shared"]).await["shared"], seq);
    assert_eq!(
        leader.client().post_text("next").await.unwrap().seq,
        seq + 1
    );
}

#[tokio::test]
async fn covered_log_segments_are_deleted_beyond_the_retained_size() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &[
            "--snapshot-interval",
            "20ms",
            "--wal-segment-size",
            "1KiB",
            "--wal-retain",
            "2KiB",
            // Each post waits for its own record on disk, so every segment rolls at
            // about 1 KiB: with everysec a writer starved under load wrote a group of
            // many records into one segment larger than the 2 KiB kept, and kept none.
            "--fsync",
            "always",
        ],
    );
    for round in 0..5 {
        for i in 0..20 {
            leader
                .client()
                .post_text(&format!("round{round} item{i} and some padding words"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // ~100 records of ~100 bytes made many segments; the snapshot covers all but the
    // open one, and only about 2 KiB of those are kept.
    let sizes = || -> (usize, u64, u64) {
        let segs = memdb::storage::log::segments(dir.path()).unwrap();
        let bytes = segs
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        (segs.len(), segs[0].0, bytes)
    };
    let (_, first, bytes) = eventually("old log segments deleted", || async {
        let (n, first, bytes) = sizes();
        (first > 1 && bytes <= 4096).then_some((n, first, bytes))
    })
    .await;
    assert!(
        bytes > 0 && first <= 100,
        "recent history is kept: {first} {bytes}"
    );
    assert_eq!(leader.seq().await, 100);
}
