//! Local replicas: reads from the leader's memory-mapped snapshot, notified over the
//! leader's Unix socket, with the file watch and poll as fallbacks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use memdb::storage::snapshot::{self, Meta};
use memdb::storage::table::WordMap;
use memdb::words::Tokenizer;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replicas_follow_a_burst_and_end_exactly_equal() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    let locals: Vec<Node> = (0..3).map(|_| Node::local(dir.path(), &[])).collect();
    leader.client().post_text("first").await.unwrap();
    for l in &locals {
        wait_ready(l).await;
    }
    concurrent_posts(&leader, 400, |t, i| {
        format!("burst w{} t{t} common", i % 23)
    })
    .await;
    for l in &locals {
        let t = converged(&leader, l).await;
        assert_eq!(t["common"], 400);
        let h = l.health().await;
        assert_eq!(h["socket_connected"], true, "{h}");
        assert!(h["loads"]["socket"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(h["rejected_snapshots"], 0);
    }
}

#[tokio::test]
async fn a_replica_started_before_any_snapshot_becomes_ready_when_one_appears() {
    let base = tempfile::tempdir().unwrap();
    // The leader's directory does not even exist yet.
    let dir = base.path().join("leader-data");
    let local = Node::local(&dir, &[]);
    let (status, body) = raw("GET", &format!("{}/health", local.url), None, vec![]).await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    let (status, _) = raw(
        "GET",
        &format!("{}/wordcount?word=a", local.url),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, 503);
    let leader = Node::leader(&dir, &["--snapshot-interval", "20ms"]);
    // A fresh leader publishes its empty table at once, so replicas can serve.
    wait_ready(&local).await;
    assert_eq!(counts(&local, &["arrived"]).await["arrived"], 0);
    leader.client().post_text("arrived arrived").await.unwrap();
    let t = converged(&leader, &local).await;
    assert_eq!(t["arrived"], 2);
}

#[tokio::test]
async fn a_late_replica_maps_the_current_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    leader.client().post_text("already here").await.unwrap();
    eventually("first snapshot", || async {
        (leader.health().await["snapshot"]["seq"] == 1).then_some(())
    })
    .await;
    let local = Node::local(dir.path(), &[]);
    wait_ready(&local).await;
    assert_eq!(local.seq().await, 1);
    assert_eq!(counts(&local, &["already"]).await["already"], 1);
}

#[tokio::test]
async fn replicas_survive_a_leader_sigkill_and_follow_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    let local = Node::local(dir.path(), &[]);
    leader.client().post_text("before crash").await.unwrap();
    converged(&leader, &local).await;
    leader.kill();
    for _ in 0..5 {
        assert_eq!(counts(&local, &["before"]).await["before"], 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leader.restart();
    leader.client().post_text("after crash").await.unwrap();
    let t = converged(&leader, &local).await;
    assert_eq!((t["before"], t["after"]), (1, 1));
    wait_socket_connected(&local).await;
}

fn sample(value: u64, words: usize) -> WordMap {
    (0..words).map(|i| (format!("w{i}"), value)).collect()
}

fn meta(seq: u64) -> Meta {
    Meta {
        tokenizer: Tokenizer::Unicode,
        seq,
        incarnation: memdb::protocol::Incarnation::from_raw(77).unwrap(),
    }
}

/// Publishes `bytes` the way the leader does (temp file, rename), bypassing validation.
fn publish_raw(dir: &Path, bytes: &[u8]) {
    snapshot::publish(dir, bytes).unwrap();
}

#[tokio::test]
async fn corrupt_snapshots_are_rejected_and_the_last_good_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    publish_raw(
        dir.path(),
        &snapshot::encode(&sample(1, 10), meta(1)).unwrap(),
    );
    let local = Node::local(dir.path(), &[]);
    wait_ready(&local).await;
    assert_eq!(counts(&local, &["w3"]).await["w3"], 1);

    let good = snapshot::encode(&sample(2, 10), meta(2)).unwrap().to_vec();
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 7);
    let mut garbage = good.clone();
    garbage.extend_from_slice(&[0u8; 64]);
    let mut magic = good.clone();
    magic[0] = b'X';
    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x04;
    for (i, bad) in [truncated, garbage, magic, flipped].iter().enumerate() {
        publish_raw(dir.path(), bad);
        let want = i as u64 + 1;
        eventually(&format!("corrupt file {i} rejected"), || async {
            (local.health().await["rejected_snapshots"] == want).then_some(())
        })
        .await;
        assert_eq!(
            counts(&local, &["w3"]).await["w3"],
            1,
            "still the last good one"
        );
        assert_eq!(local.seq().await, 1);
    }
    publish_raw(dir.path(), &good);
    eventually("the next good snapshot is mapped", || async {
        (counts(&local, &["w3"]).await["w3"] == 2).then_some(())
    })
    .await;
    let h = local.health().await;
    assert!(
        h["last_rejection"].as_str().unwrap().contains("checksum"),
        "{h}"
    );
}

#[tokio::test]
async fn without_the_socket_the_file_watch_still_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    let nowhere = dir.path().join("no-such.sock");
    // A long poll interval, so that it is the directory watch that delivers.
    let local = Node::start(&[
        "local-replica",
        "--port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--socket",
        nowhere.to_str().unwrap(),
        "--poll-interval",
        "1h",
    ]);
    for i in 0..5 {
        leader
            .client()
            .post_text(&format!("watched {i}"))
            .await
            .unwrap();
        converged(&leader, &local).await;
    }
    let h = local.health().await;
    assert_eq!(h["socket_connected"], false);
    assert_eq!(h["loads"]["socket"], 0);
    assert!(h["loads"]["watch"].as_u64().unwrap() >= 1, "{h}");
}

#[tokio::test]
async fn a_removed_socket_file_falls_back_to_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    leader.client().post_text("one").await.unwrap();
    // Someone deletes the leader's socket file: replicas started now cannot connect.
    std::fs::remove_file(dir.path().join("memdb.sock")).unwrap();
    let local = Node::local(dir.path(), &["--poll-interval", "1h"]);
    wait_ready(&local).await;
    for i in 0..3 {
        leader
            .client()
            .post_text(&format!("two {i}"))
            .await
            .unwrap();
        converged(&leader, &local).await;
    }
    let h = local.health().await;
    assert_eq!(h["socket_connected"], false);
    assert!(h["loads"]["watch"].as_u64().unwrap() >= 1, "{h}");
}

#[tokio::test]
async fn the_slow_poll_is_the_last_resort() {
    // No leader, no socket; snapshots appear in a directory created after the replica
    // started (so it could not watch it at first).
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("late");
    let local = Node::local(&dir, &[]);
    std::fs::create_dir(&dir).unwrap();
    publish_raw(&dir, &snapshot::encode(&sample(5, 3), meta(5)).unwrap());
    wait_ready(&local).await;
    assert_eq!(counts(&local, &["w0"]).await["w0"], 5);
}

#[tokio::test]
async fn min_seq_reads_make_the_leader_publish_early() {
    let dir = tempfile::tempdir().unwrap();
    // An hour between snapshots: only an early publish can answer in time.
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "1h"]);
    let local = Node::local(dir.path(), &["--max-wait", "300ms"]);
    let c = leader.client();
    for i in 1..=5u64 {
        let reply = c.post_text("ryw").await.unwrap();
        let got = local
            .client()
            .wordcount(&["ryw"], Some(reply.seq))
            .await
            .unwrap();
        assert_eq!(got["ryw"], i, "read-your-writes on a local replica");
    }
    let url = format!("{}/wordcount?word=ryw&min_seq=999", local.url);
    let (status, body) = raw("GET", &url, None, vec![]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["seq"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_only_whole_monotonic_states_across_100_publishes() {
    const WORDS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    publish_raw(
        dir.path(),
        &snapshot::encode(&sample(1, WORDS), meta(1)).unwrap(),
    );
    let local = Arc::new(Node::local(dir.path(), &[]));
    wait_ready(&local).await;
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let words: Vec<String> = (0..WORDS).map(|i| format!("w{i}")).collect();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (local, done, reads, words) =
            (local.clone(), done.clone(), reads.clone(), words.clone());
        readers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let q: Vec<String> = words.iter().map(|w| format!("word={w}")).collect();
            let url = format!("{}/wordcount?{}", local.url, q.join("&"));
            let mut last = 0u64;
            let mut states = std::collections::BTreeSet::new();
            while !done.load(Ordering::Acquire) {
                let (seq, body) = counts_with_seq(&http, &url).await;
                let v = body["w0"];
                assert!(body.values().all(|&x| x == v), "a mixed state: {body:?}");
                assert_eq!(v, seq, "counts and seq header from one snapshot");
                assert!(v >= last, "went back from {last} to {v}");
                last = v;
                states.insert(v);
                reads.fetch_add(1, Ordering::Relaxed);
            }
            states.len()
        }));
    }
    for seq in 2..=101u64 {
        publish_raw(
            dir.path(),
            &snapshot::encode(&sample(seq, WORDS), meta(seq)).unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    eventually("the last snapshot mapped", || async {
        (local.seq().await == 101).then_some(())
    })
    .await;
    done.store(true, Ordering::Release);
    let mut seen = 0;
    for r in readers {
        seen = seen.max(r.await.unwrap());
    }
    assert!(reads.load(Ordering::Relaxed) > 100, "readers kept reading");
    assert!(seen > 1, "readers saw the states change");
}

#[tokio::test]
async fn the_leader_removes_its_socket_on_sigterm_and_replaces_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("memdb.sock");
    let mut leader = Node::leader(dir.path(), &[]);
    assert!(sock.exists());
    assert!(leader.terminate().success());
    assert!(!sock.exists());
    // SIGKILL leaves the socket file behind; the next leader replaces it.
    leader.restart();
    leader.kill();
    assert!(sock.exists());
    leader.restart();
    let local = Node::local(dir.path(), &[]);
    leader.client().post_text("fresh socket").await.unwrap();
    wait_socket_connected(&local).await;
}

/// Renames `path` over the published snapshot name, as a careless operator might.
fn rename_in(dir: &Path, path: &Path) {
    std::fs::rename(path, dir.join(snapshot::FILE_NAME)).unwrap();
}

async fn rejected_with(local: &Node, n: u64, what: &str) {
    // A manual deadline rather than `eventually`, so a timeout shows the replica's state.
    let deadline = std::time::Instant::now() + DEADLINE;
    let h = loop {
        let h = local.health().await;
        if h["rejected_snapshots"] == n {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rejection {n} ({what}) never came: {h}\n{}",
            local.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let why = h["last_rejection"].as_str().unwrap();
    assert!(why.contains(what), "{why}");
}

/// A FIFO, a sparse file whose header claims 50 GiB, and an older snapshot renamed
/// into place: each is refused at once (nothing blocks, nothing 50 GiB is read, the
/// seq never goes back), the last good mapping keeps serving, and SIGTERM still stops
/// the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files_are_refused_without_blocking_or_going_back() {
    let dir = tempfile::tempdir().unwrap();
    let good = snapshot::encode(&sample(5, 10), meta(5)).unwrap();
    publish_raw(dir.path(), &good);
    let mut local = Node::local(dir.path(), &[]);
    wait_ready(&local).await;

    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    rename_in(dir.path(), &fifo);
    rejected_with(&local, 1, "FIFO").await;
    assert_eq!(counts(&local, &["w3"]).await["w3"], 5);

    // A valid header whose length field matches a file of holes: 8 GiB (under the
    // size limit, so refused as sparse) and 50 GiB (refused for its size).
    for (n, (big, why)) in [(8u64 << 30, "sparse"), (50 << 30, "limit")]
        .into_iter()
        .enumerate()
    {
        let mut header = good[..snapshot::HEADER_LEN].to_vec();
        header[32..40].copy_from_slice(&(big - snapshot::HEADER_LEN as u64).to_le_bytes());
        let sparse = dir.path().join("sparse");
        std::fs::write(&sparse, &header).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&sparse)
            .unwrap()
            .set_len(big)
            .unwrap();
        rename_in(dir.path(), &sparse);
        rejected_with(&local, 2 + n as u64, why).await;
    }

    let older = snapshot::encode(&sample(3, 10), meta(3)).unwrap();
    publish_raw(dir.path(), &older);
    rejected_with(&local, 4, "older").await;
    assert_eq!(local.seq().await, 5);
    assert_eq!(counts(&local, &["w3"]).await["w3"], 5);

    publish_raw(
        dir.path(),
        &snapshot::encode(&sample(6, 10), meta(6)).unwrap(),
    );
    eventually("a newer snapshot is mapped", || async {
        (local.seq().await == 6).then_some(())
    })
    .await;
    let fifo = dir.path().join("fifo2");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    rename_in(dir.path(), &fifo);
    rejected_with(&local, 5, "FIFO").await;
    assert!(local.terminate().success());
}

/// A leader announces snapshots the replica cannot map (here: over its size limit):
/// `/health` says the mapping is stale, with the reason, instead of "ok".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_when_the_mapping_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    let local = Node::local(dir.path(), &["--max-snapshot-size", "200B"]);
    wait_ready(&local).await;
    let words: Vec<String> = (0..50).map(|i| format!("stale{i}")).collect();
    leader.client().post_text(&words.join(" ")).await.unwrap();
    let (status, h) = eventually("stale reported", || async {
        let (status, h) = local.client().health().await.ok()?;
        (h["status"] == "stale").then_some((status, h))
    })
    .await;
    assert_eq!(status, 503, "{h}");
    let why = h["problem"].as_str().unwrap();
    assert!(
        why.contains("announced seq 1") && why.contains("limit"),
        "{why}"
    );
}

/// The leader's `/health` entry for the local replica at `url`, if it lists one.
async fn listed(leader: &Node, url: &str) -> Option<serde_json::Value> {
    let h = leader.health().await;
    h["local_replicas"]
        .as_array()?
        .iter()
        .find(|r| r["url"] == url)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_lists_its_local_replicas_with_their_lag_and_forgets_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(
        dir.path(),
        &[
            "--snapshot-interval",
            "20ms",
            "--local-lag-intervals",
            "5",
            "--local-lag-floor",
            "400ms",
        ],
    );
    let mut a = Node::local(dir.path(), &[]);
    let b = Node::local(dir.path(), &[]);
    let seq = leader.client().post_text("one two").await.unwrap().seq;
    // Both listed, with the pid the kernel gives, the URL checked, and the new seq.
    for node in [&a, &b] {
        let r = eventually("the local replica to be listed at the new seq", || async {
            let r = listed(&leader, &node.url).await?;
            (r["seq"].as_u64()? >= seq && r["url_verified"] == true).then_some(r)
        })
        .await;
        assert_eq!(r["kind"], "local-replica", "{r}");
        assert_eq!(r["pid"].as_u64(), Some(u64::from(node.pid())), "{r}");
        assert_eq!(
            (r["lag"].as_u64(), r["lag_ms"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
        assert!(r["problem"].is_null(), "{r}");
    }
    let metrics = reqwest::get(format!("{}/metrics", leader.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("memdb_local_replicas{kind=\"local-replica\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "memdb_local_replica_lag_seqs{{replica=\"{}\"}} 0",
            a.url
        )),
        "{metrics}"
    );

    // A stopped replica maps nothing new: its lag grows, and past the limit it is a
    // problem of the leader's /health; the other stays current.
    signal(&a, "-STOP");
    let mut last_ms = 0;
    for i in 0..3 {
        let seq = leader
            .client()
            .post_text(&format!("more{i}"))
            .await
            .unwrap()
            .seq;
        eventually("the running replica to map the write", || async {
            let r = listed(&leader, &b.url).await?;
            (r["seq"].as_u64()? >= seq).then_some(())
        })
        .await;
        let ms = eventually("the stopped replica's lag to grow", || async {
            let r = listed(&leader, &a.url).await?;
            let ms = r["lag_ms"].as_u64()?;
            (r["lag"].as_u64()? >= 1 && ms > last_ms).then_some(ms)
        })
        .await;
        last_ms = ms;
    }
    let (code, h) = eventually("the stopped replica to be a problem", || async {
        let (code, h) = leader.client().health().await.ok()?;
        let problems = h["problems"].as_array()?.clone();
        problems
            .iter()
            .any(|p| p.as_str().unwrap_or("").contains(&a.url))
            .then_some((code, h))
    })
    .await;
    assert_eq!(code, 503, "{h}");
    assert!(
        !h["problems"].to_string().contains(&b.url),
        "the running replica is not a problem: {h}"
    );
    // It resumes and catches up: no longer a problem.
    signal(&a, "-CONT");
    eventually("the resumed replica to catch up", || async {
        let (code, h) = leader.client().health().await.ok()?;
        let r = listed(&leader, &a.url).await?;
        (code == 200 && r["lag"] == 0 && h["problems"].as_array()?.is_empty()).then_some(())
    })
    .await;
    // The leader crashes and restarts: its list starts empty, and both replicas
    // reconnect, introduce themselves again and report their load.
    leader.kill();
    leader.restart();
    let seq = leader
        .client()
        .post_text("after the restart")
        .await
        .unwrap()
        .seq;
    for node in [&a, &b] {
        eventually(
            "the replica to be listed again after the leader's restart",
            || async {
                let r = listed(&leader, &node.url).await?;
                (r["seq"].as_u64()? >= seq && r["url_verified"] == true).then_some(())
            },
        )
        .await;
    }
    // A process that claims to be the running replica is disconnected once the
    // replica's /health names another pid; the list is as before.
    let sock = dir.path().join("memdb.sock");
    let claim = b.url.clone();
    let cut_off = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        writeln!(s, "hello local-replica 0.1.0 {claim}").unwrap();
        let mut lines = std::io::BufReader::new(s).lines();
        // proto, seq, then the end of the connection (not the read timeout).
        loop {
            match lines.next() {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(_)) => {}
            }
        }
    });
    assert!(cut_off.await.unwrap(), "an impostor was not disconnected");
    eventually("the impostor to leave the list", || async {
        let h = leader.health().await;
        (h["local_replicas"].as_array()?.len() == 2).then_some(())
    })
    .await;
    // Killed: its connection closes and it leaves the list.
    a.kill();
    eventually("the killed replica to leave the list", || async {
        let h = leader.health().await;
        let list = h["local_replicas"].as_array()?.clone();
        (list.len() == 1 && list[0]["url"] == b.url.as_str()).then_some(())
    })
    .await;
}
