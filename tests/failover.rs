//! Raft groups: three (or four) voters of the real binary on ephemeral ports, formed
//! with `POST /raft/init`, under kills, pauses and membership changes. Every write
//! carries an Idempotency-Key and is retried through any node until acknowledged, so
//! the expected table is exact: every acknowledged write counted once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::group::*;
use crate::util::{DEADLINE, Node, Rng, eventually, scrape_metric, signal};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_writers_loses_and_doubles_nothing() {
    let mut g = Group::start(3, &[]).await;
    let leader = g.leader().await;
    // A local replica beside the leader (to be killed) and beside a follower.
    let follower = (leader + 1) % 3;
    let local_leader = Node::local(g.dirs[leader].path(), &[]);
    let local_follower = Node::local(g.dirs[follower].path(), &[]);
    let (writers, per) = (8, 40);
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(parking_lot::Mutex::new(None));
    let tasks = spawn_writers(g.urls(), writers, per, acked.clone(), last_ack.clone());
    eventually("a third of the writes acknowledged", || async {
        (acked.load(Ordering::Relaxed) >= (writers * per / 3) as u64).then_some(())
    })
    .await;
    g.kill(leader);
    let killed = Instant::now();
    let new_leader = g.leader().await;
    assert_ne!(new_leader, leader);
    let first_after = eventually("a write acknowledged after the kill", || async {
        last_ack.lock().filter(|t| *t > killed)
    })
    .await;
    let failover = first_after - killed;
    eprintln!("failover: first acknowledged write {failover:?} after the kill");
    assert!(
        failover < Duration::from_secs(2),
        "a new leader took {failover:?} to acknowledge a write (election timeout 200ms)"
    );
    for t in tasks {
        t.await.unwrap();
    }
    let want = expected(writers, per);
    g.converged(&want).await;
    // The old leader comes back as a follower and catches up exactly.
    g.restart(leader);
    g.converged(&want).await;
    assert_eq!(g.raft(leader).await.unwrap()["raft"]["state"], "follower");
    for local in [&local_leader, &local_follower] {
        eventually("the local replica to hold the whole table", || async {
            let got = table(&g.http, &local.url).await;
            (got == want).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_steps_down_and_its_unacknowledged_write_is_applied_nowhere() {
    let mut g = Group::start(3, &[]).await;
    let urls = g.urls();
    post_until_acked(&g.http, &urls, 0, "before", "b", DEADLINE).await;
    let old = g.leader().await;
    signal(&g.nodes[old], "-STOP");
    // A write sent to the paused leader waits in its socket until it resumes.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {TOKEN}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let paused_write = {
        let url = format!("{}/post", urls[old]);
        tokio::spawn(async move {
            no_redirects
                .post(url)
                .form(&[("text", "stranded")])
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    g.up[old] = false; // Not counted while it cannot answer.
    let new = g.leader().await;
    assert_ne!(new, old);
    post_until_acked(&g.http, &urls, new, "after", "a", DEADLINE).await;
    signal(&g.nodes[old], "-CONT");
    g.up[old] = true;
    let status = tokio::time::timeout(DEADLINE, paused_write)
        .await
        .expect("the paused write is answered once the node resumes")
        .unwrap();
    assert!(
        !matches!(status, Ok(202)),
        "the deposed leader acknowledged a write it could not commit"
    );
    assert_eq!(g.leader().await, new, "the old leader stepped down");
    let want: HashMap<String, u64> = [("before", 1), ("after", 1)]
        .into_iter()
        .map(|(w, n)| (w.to_string(), n))
        .collect();
    g.converged(&want).await;
}

/// A leader whose followers are paused cannot commit. The retries of a keyed write
/// that timed out join the proposal already in its log instead of adding copies; once
/// the followers resume, the retry is acknowledged and the words count once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_of_a_keyed_write_that_cannot_commit_add_no_copies_to_the_log() {
    let mut g = Group::start(3, &["--write-timeout", "300ms"]).await;
    let urls = g.urls();
    post_until_acked(&g.http, &urls, 0, "before", "b", DEADLINE).await;
    let leader = g.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let last_index = |h: Value| h["raft"]["last_log_index"].as_u64().unwrap();
    let before = last_index(g.raft(leader).await.unwrap());
    for &f in &followers {
        signal(&g.nodes[f], "-STOP");
    }
    let keyed = || {
        g.http
            .post(format!("{}/post", urls[leader]))
            .header("idempotency-key", "stuck-1")
            .form(&[("text", "stuck write")])
            .send()
    };
    for attempt in 0..4 {
        let r = keyed().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 503, "attempt {attempt}: {body}");
        assert_eq!(body["reason"], "not_committed", "attempt {attempt}: {body}");
    }
    let h = g.raft(leader).await.unwrap();
    assert_eq!(
        last_index(h.clone()),
        before + 1,
        "four attempts of one keyed write put one entry in the log: {h}"
    );
    assert_eq!(
        scrape_metric(&g.nodes[leader], "memdb_raft_keyed_writes_in_flight").await,
        1.0
    );
    for &f in &followers {
        signal(&g.nodes[f], "-CONT");
    }
    // Whoever leads now, the retry is acknowledged and the words count once.
    post_until_acked(&g.http, &urls, leader, "stuck write", "stuck-1", DEADLINE).await;
    let want: HashMap<String, u64> = [("before", 1), ("stuck", 1), ("write", 1)]
        .into_iter()
        .map(|(w, n)| (w.to_string(), n))
        .collect();
    g.up = vec![true; 3];
    g.converged(&want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kills_pauses_and_restarts_converge_exactly() {
    let mut rng = Rng::seeded(0x5eed_2026);
    let mut g = Group::start(3, &["--raft-snapshot-every", "100"]).await;
    let (writers, per) = (4, 60);
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(parking_lot::Mutex::new(None));
    let tasks = spawn_writers(g.urls(), writers, per, acked.clone(), last_ack);
    for round in 0..6 {
        let before = acked.load(Ordering::Relaxed);
        let victim = rng.below(3) as usize;
        match rng.below(3) {
            0 => {
                eprintln!("round {round}: kill -9 and restart voter {}", victim + 1);
                g.kill(victim);
                tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
                g.restart(victim);
            }
            1 => {
                eprintln!("round {round}: pause voter {}", victim + 1);
                signal(&g.nodes[victim], "-STOP");
                tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
                signal(&g.nodes[victim], "-CONT");
            }
            _ => {
                let other = (victim + 1 + rng.below(2) as usize) % 3;
                eprintln!(
                    "round {round}: kill voters {} and {} (no majority), then restart both",
                    victim + 1,
                    other + 1
                );
                g.kill(victim);
                g.kill(other);
                tokio::time::sleep(Duration::from_millis(200 + rng.below(400))).await;
                g.restart(victim);
                g.restart(other);
            }
        }
        // Each round lets some writes through before the next fault.
        eventually("writes to go on after the fault", || async {
            (acked.load(Ordering::Relaxed) >= before + 5
                || acked.load(Ordering::Relaxed) == (writers * per) as u64)
                .then_some(())
        })
        .await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    g.converged(&expected(writers, per)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_added_at_run_time_catches_up_from_a_snapshot_and_a_removed_one_gets_no_writes() {
    // A debug build takes tens of milliseconds for an append of 16 such entries: the
    // append's timeout (the heartbeat interval) must allow it.
    let slow = SNAPSHOTTING;
    let g = Group::start(3, &slow).await;
    let urls = g.urls();
    // 60,000 distinct words: the snapshot (a 1 MiB file, 4 MiB as JSON) is far larger
    // than the 1 MiB --max-body of client posts.
    for i in 0..60 {
        let text: Vec<String> = (0..1000).map(|j| format!("e{i}x{j}")).collect();
        post_until_acked(
            &g.http,
            &urls,
            i,
            &format!("{} shared", text.join(" ")),
            &format!("e{i}"),
            DEADLINE,
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = voter_args(4, &dir, &slow);
    let fourth = Node::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let leader = g.leader().await;
    g.admin("/raft/learners", json!({ "id": 4, "url": fourth.url }))
        .await;
    g.admin("/raft/membership", json!({ "voters": [1, 2, 3, 4] }))
        .await;
    let want_early = table(&g.http, &urls[leader]).await;
    eventually("the new voter to hold the whole table", || async {
        (table(&g.http, &fourth.url).await == want_early).then_some(())
    })
    .await;
    let log = fourth.log();
    assert!(
        log.contains("installed a raft snapshot from the leader"),
        "the new voter should have caught up from a snapshot (the log before it was purged)"
    );
    // The snapshot came as files: a directory of them with its binary record, the
    // files hard-linked into the data directory as the table (no copy, no JSON).
    let raft = dir.path().join("raft");
    let snap = std::fs::read_dir(&raft)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("snapshot-")
        })
        .unwrap_or_else(|| panic!("no snapshot directory in {}", raft.display()));
    // No JSON record: snapshot.json holds only the marker an earlier version refuses.
    let marker: Value =
        serde_json::from_slice(&std::fs::read(raft.join("snapshot.json")).unwrap()).unwrap();
    assert!(marker.as_str().unwrap().contains("newer memdb"), "{marker}");
    assert!(snap.join("raft.meta").is_file());
    use std::os::unix::fs::MetadataExt;
    let base = std::fs::metadata(snap.join("snapshot.memdb")).unwrap();
    let mapped = std::fs::metadata(dir.path().join("snapshot.memdb")).unwrap();
    assert_eq!(
        (base.ino(), base.nlink()),
        (mapped.ino(), 2),
        "the snapshot's base is the table's base, linked"
    );
    // Remove voter 1 (or, if it leads, voter 2): it no longer receives writes.
    let gone = if leader == 0 { 1 } else { 0 };
    let voters: Vec<u64> = (1..=4).filter(|id| *id != gone as u64 + 1).collect();
    g.admin("/raft/membership", json!({ "voters": voters }))
        .await;
    let gone_seq = g.raft(gone).await.unwrap()["seq"].as_u64().unwrap();
    let mut all = urls.clone();
    all.push(fourth.url.clone());
    let remaining: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, u)| u.clone())
        .collect();
    let mut last = 0;
    for i in 0..10 {
        last = post_until_acked(&g.http, &remaining, i, "late", &format!("l{i}"), DEADLINE).await;
    }
    eventually("the new voter to apply the late writes", || async {
        let h = health(&g.http, &fourth.url).await?;
        (h["seq"].as_u64()? >= last).then_some(())
    })
    .await;
    assert_eq!(
        g.raft(gone).await.unwrap()["seq"].as_u64().unwrap(),
        gone_seq,
        "a removed voter still receives writes"
    );
    assert_eq!(table(&g.http, &fourth.url).await["late"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_raft_requests_change_nothing() {
    let g = Group::start(3, &[]).await;
    let urls = g.urls();
    post_until_acked(&g.http, &urls, 0, "kept", "k", DEADLINE).await;
    let leader = g.leader().await;
    let target = (leader + 1) % 3;
    let before = g.raft(target).await.unwrap();
    let anon = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", urls[target]);
    // A stale-term append carrying a write, with every credential.
    let forged = json!({
        "vote": {"leader_id": {"term": 0, "node_id": 9}, "committed": true},
        "prev_log_id": null,
        "leader_commit": null,
        "entries": [{"log_id": {"leader_id": {"term": 0, "node_id": 9}, "index": 1},
                     "payload": {"Normal": {"deltas": "forged 1000\n", "key": null, "fingerprint": 0}}}],
    });
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        // No token.
        (
            anon.post(url("/raft/append"))
                .header("x-memdb-cluster", "memdb")
                .json(&forged),
            401,
        ),
        (
            anon.post(url("/raft/vote"))
                .header("x-memdb-cluster", "memdb")
                .json(&json!({})),
            401,
        ),
        (
            anon.post(url("/raft/init"))
                .json(&json!({"members": {"9": "http://127.0.0.1:1"}})),
            401,
        ),
        // Another group.
        (
            g.http
                .post(url("/raft/append"))
                .header("x-memdb-cluster", "other")
                .json(&forged),
            403,
        ),
        (g.http.post(url("/raft/vote")).json(&json!({})), 403),
        // Not a raft request.
        (
            g.http
                .post(url("/raft/append"))
                .header("x-memdb-cluster", "memdb")
                .body("{nonsense"),
            400,
        ),
        (
            g.http
                .post(url("/raft/snapshot"))
                .header("x-memdb-cluster", "memdb")
                .json(&json!({"x": 1})),
            400,
        ),
        // A learner without its URL.
        (
            g.http.post(url("/raft/learners")).json(&json!({"id": 9})),
            400,
        ),
    ];
    for (req, want) in cases {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{body}");
        assert!(body["error"].is_string(), "a JSON error: {body}");
    }
    // Authenticated, the forged append is refused before the engine sees it: its entry
    // at index 1 follows no previous entry.
    let group = before["raft"]["group"].as_str().unwrap().to_owned();
    let r = g
        .http
        .post(url("/raft/append"))
        .header("x-memdb-cluster", "memdb")
        .header("x-memdb-group", &group)
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // A well-formed append of a stale term (a heartbeat): the engine refuses it.
    let stale = json!({
        "vote": {"leader_id": {"term": 0, "node_id": 9}, "committed": true},
        "prev_log_id": null,
        "leader_commit": null,
        "entries": [],
    });
    let r = g
        .http
        .post(url("/raft/append"))
        .header("x-memdb-cluster", "memdb")
        .header("x-memdb-group", &group)
        .json(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer
            .get("Ok")
            .is_some_and(|ok| ok.get("HigherVote").is_some()),
        "{answer}"
    );
    let r = g
        .http
        .post(url("/raft/init"))
        .json(&json!({"members": {(target + 1).to_string(): urls[target]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["formed"], false);
    let after = g.raft(target).await.unwrap();
    for k in ["seq", "digest"] {
        assert_eq!(before[k], after[k], "{k} changed");
    }
    assert_eq!(before["raft"]["term"], after["raft"]["term"]);
    assert_eq!(g.leader().await, leader);
    let want: HashMap<String, u64> = [("kept".to_string(), 1)].into_iter().collect();
    g.converged(&want).await;
    // The raft log and snapshots are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(g.dirs[target].path().join("raft")).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{:?} is {mode:o}", e.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_replica_follows_the_next_voter_without_a_full_sync() {
    let mut g = Group::start(3, &[]).await;
    let leader = g.leader().await;
    // The replica follows the leader first, then the others.
    let mut order = vec![g.nodes[leader].url.clone()];
    order.extend(
        (0..3)
            .filter(|i| *i != leader)
            .map(|i| g.nodes[i].url.clone()),
    );
    let replica = Node::replica(&order.join(","), &["--auth-token", TOKEN]);
    let urls = g.urls();
    for i in 0..20 {
        post_until_acked(
            &g.http,
            &urls,
            i,
            "before shared",
            &format!("b{i}"),
            DEADLINE,
        )
        .await;
    }
    g.kill(leader);
    let alive: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| g.nodes[i].url.clone())
        .collect();
    for i in 0..20 {
        post_until_acked(
            &g.http,
            &alive,
            i,
            "after shared",
            &format!("a{i}"),
            DEADLINE,
        )
        .await;
    }
    let want: HashMap<String, u64> = [("before", 20), ("after", 20), ("shared", 40)]
        .into_iter()
        .map(|(w, n)| (w.to_string(), n))
        .collect();
    let seq = g.converged(&want).await;
    let h = eventually("the replica to reach the group's seq", || async {
        let h = health(&g.http, &replica.url).await?;
        (h["seq"].as_u64()? == seq).then_some(h)
    })
    .await;
    assert_eq!(table(&g.http, &replica.url).await, want);
    assert_ne!(
        h["leader"], g.nodes[leader].url,
        "it moved to another voter"
    );
    assert_eq!(h["syncs"], 1, "only the first sync was a full one: {h}");
    assert_eq!(
        h["last_sync_kind"], "files",
        "it joined from the voter's files: {h}"
    );
    // min_seq means the same on every node: a write acknowledged at seq s is read at s
    // on any voter or replica.
    let s = post_until_acked(&g.http, &alive, 0, "fresh", "f", DEADLINE).await;
    for url in alive.iter().chain([&replica.url]) {
        let got: HashMap<String, u64> = g
            .http
            .get(format!("{url}/wordcount?word=fresh&min_seq={s}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["fresh"], 1, "{url} at min_seq {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_refuses_a_single_leaders_data_directory_and_a_peer_list_without_itself() {
    let dir = tempfile::tempdir().unwrap();
    let single = Node::leader(dir.path(), &["--fsync", "always"]);
    single.client().post_text("kept").await.unwrap();
    drop(single); // SIGKILL: the write is only in the log (fsynced before the answer).
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
            .args(args)
            .output()
            .unwrap()
    };
    let d = dir.path().to_str().unwrap();
    let out = run(&["leader", "--port", "0", "--data-dir", d, "--node-id", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("single leader's write-ahead log"), "{err}");
    let other = tempfile::tempdir().unwrap();
    let out = run(&[
        "leader",
        "--port",
        "0",
        "--data-dir",
        other.path().to_str().unwrap(),
        "--node-id",
        "1",
        "--peers",
        "2=http://127.0.0.1:1,3=http://127.0.0.1:2",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must include this node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The single leader's data is untouched: it starts again with its write.
    let single = Node::leader(dir.path(), &[]);
    assert_eq!(crate::util::counts(&single, &["kept"]).await["kept"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_group_killed_under_writers_with_fsync_always_keeps_every_acknowledged_write() {
    let mut g = Group::start(3, &["--fsync", "always"]).await;
    let (writers, per) = (4, 40);
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(parking_lot::Mutex::new(None));
    let tasks = spawn_writers(g.urls(), writers, per, acked.clone(), last_ack);
    eventually("some writes acknowledged", || async {
        (acked.load(Ordering::Relaxed) >= 40).then_some(())
    })
    .await;
    for i in 0..3 {
        g.kill(i);
    }
    let at_crash = acked.load(Ordering::Relaxed);
    for i in 0..3 {
        g.restart(i);
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(at_crash < (writers * per) as u64, "the crash came mid-run");
    g.converged(&expected(writers, per)).await;
}

/// The log is bounded by bytes, whatever the count of entries: with a snapshot due only
/// every million entries, a few big posts past `--raft-snapshot-bytes` make every
/// voter take one and drop the log behind it; the files only a snapshot holds (the
/// table compacted past them, often here) are let go once writes stop; and a wiped
/// voter still becomes exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_is_bounded_by_bytes_whatever_the_count_of_entries() {
    let extra = [
        "--raft-snapshot-every",
        "1000000",
        "--raft-snapshot-bytes",
        "64KiB",
        "--compact-after",
        "4000",
    ];
    let mut g = Group::start(3, &extra).await;
    let urls = g.urls();
    let mut want: HashMap<String, u64> = HashMap::new();
    for i in 0..24 {
        let text: Vec<String> = (0..2000).map(|j| format!("b{i}x{j}")).collect();
        for w in &text {
            want.insert(w.clone(), 1);
        }
        post_until_acked(
            &g.http,
            &urls,
            i,
            &text.join(" "),
            &format!("b{i}"),
            DEADLINE,
        )
        .await;
    }
    g.converged(&want).await;
    for i in 0..3 {
        let r = eventually("a snapshot taken and the log behind it dropped", || async {
            let r = g.raft(i).await?["raft"].clone();
            (r["snapshot_index"].as_u64().is_some() && r["purged_index"].as_u64().is_some())
                .then_some(r)
        })
        .await;
        // What is left: about the bound behind the snapshot, and what came since.
        assert!(r["log_bytes"].as_u64().unwrap() < 4 * 64 * 1024, "{r}");
        eventually("no old files held by the snapshot alone", || async {
            let held = scrape_metric(&g.nodes[i], "memdb_raft_snapshot_held_bytes").await;
            (held < 64.0 * 1024.0).then_some(())
        })
        .await;
    }
    let leader = g.leader().await;
    let wiped = (leader + 1) % 3;
    g.wipe(wiped);
    g.restart(wiped);
    post_until_acked(&g.http, &urls, leader, "late", "late", DEADLINE).await;
    want.insert("late".into(), 1);
    g.converged(&want).await;
}

/// Concurrent writes share raft entries (each keeps its key and answer): 32 writers'
/// keyed posts end exact on every voter, and the voters proposed fewer entries than
/// writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_entries_and_each_is_counted_once() {
    let g = Group::start(3, &[]).await;
    g.leader().await;
    let (writers, per) = (32, 20);
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(parking_lot::Mutex::new(None));
    for t in spawn_writers(g.urls(), writers, per, acked, last_ack) {
        t.await.unwrap();
    }
    g.converged(&expected(writers, per)).await;
    let (mut writes, mut entries) = (0, 0);
    for i in 0..3 {
        let r = g.raft(i).await.unwrap()["raft"].clone();
        writes += r["proposed_writes"].as_u64().unwrap();
        entries += r["proposed_entries"].as_u64().unwrap();
    }
    assert!(writes >= (writers * per) as u64, "{writes} writes proposed");
    assert!(
        entries < writes,
        "{writes} concurrent writes went in {entries} entries: none shared one"
    );
    eprintln!("{writes} writes in {entries} entries");
}
