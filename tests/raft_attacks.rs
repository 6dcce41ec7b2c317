//! A raft group against forged and careless traffic: an append that would rewrite
//! committed entries, a voter whose data directory was wiped, a data directory started
//! under another node id.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::util::group::{Group, SNAPSHOTTING, health, post_until_acked, table, voter_args};
use crate::util::{DEADLINE, Node, eventually};

fn log_id(term: u64, node: u64, index: u64) -> Value {
    json!({"leader_id": {"term": term, "node_id": node}, "index": index})
}

/// The group id voter `i` names its RPCs with (what a forger holding the peer
/// credential would also know).
async fn group_of(g: &Group, i: usize) -> String {
    g.raft(i).await.unwrap()["raft"]["group"]
        .as_str()
        .expect("a formed group has an id")
        .to_owned()
}

/// Sends `body` as an append to voter `target`, naming its group as a member would.
async fn append_as_member(g: &Group, target: usize, body: &Value) -> reqwest::Response {
    g.http
        .post(format!("{}/raft/append", g.nodes[target].url))
        .header("x-memdb-cluster", "memdb")
        .header("x-memdb-group", group_of(g, target).await)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Posts `w{i}` with key `k{i}` for each `i` of `range`, through any voter, each until
/// acknowledged.
async fn post_words(g: &Group, range: std::ops::Range<usize>) {
    let urls = g.urls();
    for i in range {
        let (word, key) = (format!("w{i}"), format!("k{i}"));
        post_until_acked(&g.http, &urls, i, &word, &key, DEADLINE).await;
    }
}

/// Voter `i`'s term, the leader it follows and its last log index: the log id of its
/// last entry, while the group has had one leader since it was formed.
async fn last_entry(g: &Group, i: usize) -> (u64, u64, u64) {
    let h = g.raft(i).await.unwrap();
    (
        h["raft"]["term"].as_u64().unwrap(),
        h["raft"]["leader_id"].as_u64().unwrap(),
        h["raft"]["last_log_index"].as_u64().unwrap(),
    )
}

/// Posts `w{i}` (key `w{i}`) for each `i` of `range`, starting with voter `from`, and
/// records each in `want`.
async fn post_small(
    g: &Group,
    from: usize,
    range: std::ops::Range<usize>,
    want: &mut HashMap<String, u64>,
) {
    let urls = g.urls();
    for i in range {
        let word = format!("w{i}");
        post_until_acked(&g.http, &urls, from, &word, &word, DEADLINE).await;
        want.insert(word, 1);
    }
}

/// Asserts that every voter's `/health` says ok.
async fn all_ok(g: &Group) {
    for (i, url) in g.urls().iter().enumerate() {
        let h = health(&g.http, url).await.unwrap();
        assert_eq!(h["status"], "ok", "voter {}: {h}", i + 1);
    }
}

/// Words `w0`..`w{n-1}`, one each.
fn words(n: usize) -> HashMap<String, u64> {
    (0..n).map(|i| (format!("w{i}"), 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_that_would_rewrite_committed_entries_is_refused_and_the_group_keeps_writing() {
    let g = Group::start(3, &[]).await;
    let urls = g.urls();
    post_words(&g, 0..20).await;
    let leader = g.leader().await;
    let target = (leader + 1) % 3;
    let claimed = leader as u64 + 1;
    // A newer term, no previous entry, and two blank entries at 0 and 1: accepted, it
    // would replace the committed log from its start.
    let forged = json!({
        "vote": {"leader_id": {"term": 7, "node_id": claimed}, "committed": true},
        "prev_log_id": null,
        "entries": [
            {"log_id": log_id(7, claimed, 0), "payload": "Blank"},
            {"log_id": log_id(7, claimed, 1), "payload": "Blank"},
        ],
        "leader_commit": log_id(7, claimed, 1),
    });
    let before = g.raft(target).await.unwrap();
    // Another group's id (a second group sharing the cluster name), or none: refused.
    for group in [Some("00000000000000aa"), None] {
        let mut req = g
            .http
            .post(format!("{}/raft/append", urls[target]))
            .header("x-memdb-cluster", "memdb");
        if let Some(id) = group {
            req = req.header("x-memdb-group", id);
        }
        let r = req.json(&stale_heartbeat()).send().await.unwrap();
        assert_eq!(r.status(), 403, "{group:?}: {}", r.text().await.unwrap());
    }
    let r = append_as_member(&g, target, &forged).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("committed"),
        "{body}"
    );
    // Nothing changed on the target, not even its term.
    let after = g.raft(target).await.unwrap();
    assert_eq!(before["raft"]["term"], after["raft"]["term"]);
    assert_eq!(before["digest"], after["digest"]);
    // The group keeps committing, and every voter stays healthy.
    post_until_acked(&g.http, &urls, target, "w20", "k20", DEADLINE).await;
    g.converged(&words(21)).await;
    all_ok(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_voter_rejoins_from_the_leaders_snapshot_and_becomes_exact() {
    let slow = SNAPSHOTTING;
    let mut g = Group::start(3, &slow).await;
    let urls = g.urls();
    // Big posts, then many small ones: several snapshots, the log purged behind them.
    let mut want: HashMap<String, u64> = HashMap::new();
    for i in 0..10 {
        let text: Vec<String> = (0..2000).map(|j| format!("b{i}x{j}")).collect();
        for w in &text {
            *want.entry(w.clone()).or_default() += 1;
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
    let leader = g.leader().await;
    let wiped = (leader + 1) % 3;
    post_small(&g, leader, 0..60, &mut want).await;
    g.converged(&want).await;
    g.kill(wiped);
    let dir = g.dirs[wiped].path().to_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    // Started as an operator would, with the group's --peers: a pristine node with it
    // forms a group of its own unless it learns better.
    let peers: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{}={u}", i + 1))
        .collect();
    g.nodes[wiped]
        .args
        .extend(["--peers".to_string(), peers.join(",")]);
    g.restart(wiped);
    post_small(&g, leader, 60..80, &mut want).await;
    g.converged(&want).await;
    let log = g.nodes[wiped].log();
    assert!(
        !log.contains("panicked"),
        "the wiped voter panicked:\n{log}"
    );
    all_ok(&g).await;
    // The leader did not panic either, and still leads a group that takes writes.
    post_until_acked(&g.http, &urls, leader, "late", "late", DEADLINE).await;
    want.insert("late".into(), 1);
    g.converged(&want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_is_refused_under_another_node_id_or_group() {
    let mut g = Group::start(1, &[]).await;
    post_until_acked(&g.http, &g.urls(), 0, "kept", "kept", DEADLINE).await;
    g.kill(0);
    let dir = &g.dirs[0];
    // Refused: it exits at once, with the reason on stderr. One that starts is killed
    // at the deadline.
    let run = |args: Vec<String>| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let give_up = std::time::Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > give_up {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let mut as_node_2 = voter_args(1, dir, &[]);
    let at = as_node_2.iter().position(|a| a == "--node-id").unwrap();
    as_node_2[at + 1] = "2".into();
    let in_other_group = voter_args(1, dir, &["--cluster", "other"]);
    for (args, named) in [(as_node_2, "node 1"), (in_other_group, "\"memdb\"")] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started:\n{err}");
        assert!(err.contains(named), "{err}");
    }
    // Started as itself, it still holds its write.
    g.restart(0);
    eventually("the voter to lead again and hold its write", || async {
        let t = table(&g.http, &g.nodes[0].url).await;
        (t.get("kept") == Some(&1)).then_some(())
    })
    .await;
}

const PEER: &str = "peer-secret-of-the-voters";

/// A client that presents `token`.
fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .unwrap()
}

/// A heartbeat of a stale term: well-formed, and harmless if taken.
fn stale_heartbeat() -> Value {
    json!({
        "vote": {"leader_id": {"term": 0, "node_id": 1}, "committed": true},
        "prev_log_id": null, "leader_commit": null, "entries": [],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_peer_token_a_client_token_cannot_reach_the_peer_routes() {
    // The group's own calls (and the test's admin calls) carry the peer token.
    let g = Group::start_with(3, &["--peer-token", PEER], client_with(PEER)).await;
    let urls = g.urls();
    let writer = client_with(crate::util::group::TOKEN);
    post_until_acked(&writer, &urls, 0, "counted", "c1", DEADLINE).await;
    let leader = g.leader().await;
    let url = |p: &str| format!("{}{p}", urls[leader]);
    let as_client = |req: reqwest::RequestBuilder| req.header("x-memdb-cluster", "memdb");
    for (req, route) in [
        (
            as_client(writer.post(url("/raft/append"))).json(&stale_heartbeat()),
            "append",
        ),
        (
            as_client(writer.post(url("/raft/vote"))).json(&json!({})),
            "vote",
        ),
        (
            as_client(writer.post(url("/raft/snapshot"))).json(&json!({})),
            "snapshot",
        ),
        (
            writer.get(url("/raft/snapshot/files/raft.meta")),
            "snapshot files",
        ),
        (
            writer
                .post(url("/raft/membership"))
                .json(&json!({"voters": [1]})),
            "membership",
        ),
        (
            writer
                .post(url("/raft/learners"))
                .json(&json!({"id": 9, "url": "http://127.0.0.1:9"})),
            "learners",
        ),
        (
            writer
                .post(url("/replicas"))
                .json(&json!({"url": "http://127.0.0.1:9"})),
            "replicas",
        ),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{route} with the client token");
    }
    // The peer token reaches them, and cannot write.
    let r = as_client(g.http.post(url("/raft/append")))
        .header("x-memdb-group", group_of(&g, leader).await)
        .json(&stale_heartbeat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = g
        .http
        .post(url("/post"))
        .form(&[("text", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a post with the peer token");
    // /sync is a read: either token.
    for c in [&writer, &g.http] {
        assert_eq!(c.get(url("/sync")).send().await.unwrap().status(), 200);
    }
    // A network replica joins with the peer token, and follows.
    let replica = Node::replica(
        &urls.join(","),
        &[
            "--peer-token",
            PEER,
            "--auth-token",
            crate::util::group::TOKEN,
        ],
    );
    post_until_acked(&writer, &urls, 0, "counted", "c2", DEADLINE).await;
    eventually("the replica to follow the group", || async {
        let r = g
            .http
            .get(format!("{}/wordcount?word=counted", replica.url))
            .send()
            .await
            .ok()?;
        let c: HashMap<String, u64> = r.json().await.ok()?;
        (c.get("counted") == Some(&2)).then_some(())
    })
    .await;
    // A node refuses one token for both roles.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
        .args([
            "leader",
            "--port",
            "0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .args(["--auth-token", PEER, "--peer-token", PEER])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must differ"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vote_requests_from_a_node_outside_the_group_are_refused_and_writes_go_on() {
    let g = Group::start(3, &[]).await;
    let urls = g.urls();
    post_words(&g, 0..1).await;
    let term = |h: &Value| h["raft"]["term"].as_u64().unwrap();
    let before: Vec<u64> = futures_term(&g, term).await;
    // Node 9, a stranger, asks every voter for its vote with rising terms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let group = group_of(&g, 0).await;
    let flood = {
        let (http, urls, stop) = (g.http.clone(), urls.clone(), stop.clone());
        tokio::spawn(async move {
            let mut refused = 0;
            for t in 100u64.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for u in &urls {
                    let r = http
                        .post(format!("{u}/raft/vote"))
                        .header("x-memdb-cluster", "memdb")
                        .header("x-memdb-group", &group)
                        .json(&json!({"vote": {"leader_id": {"term": t, "node_id": 9},
                                               "committed": false},
                                      "last_log_id": log_id(t, 9, 1_000_000)}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
                    refused += 1;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            refused
        })
    };
    post_words(&g, 1..21).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(flood.await.unwrap() > 0);
    g.converged(&words(21)).await;
    assert_eq!(
        futures_term(&g, term).await,
        before,
        "the stranger moved a term"
    );
}

/// Every voter's `/health` through `f`.
async fn futures_term<T>(g: &Group, f: impl Fn(&Value) -> T) -> Vec<T> {
    let mut out = Vec::new();
    for i in 0..g.nodes.len() {
        out.push(f(&g.raft(i).await.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_that_applied_a_forged_entry_is_reported_as_diverged() {
    let g = Group::start(3, &[]).await;
    let urls = g.urls();
    post_words(&g, 0..5).await;
    g.converged(&words(5)).await;
    let leader = g.leader().await;
    let target = (leader + 1) % 3;
    let (term, lead, last) = last_entry(&g, target).await;
    // Holding the peer credential, a forger appends the next entry as the leader would,
    // with words of its own, and commits it.
    let forged = json!({
        "vote": {"leader_id": {"term": term, "node_id": lead}, "committed": true},
        "prev_log_id": log_id(term, lead, last),
        "entries": [{"log_id": log_id(term, lead, last + 1),
                     "payload": {"Normal": {"deltas": "pwned 1000\n", "key": null, "fingerprint": 0}}}],
        "leader_commit": log_id(term, lead, last + 1),
    });
    let r = append_as_member(&g, target, &forged).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The leader's own next entry takes the same index.
    post_until_acked(&g.http, &urls, leader, "w5", "k5", DEADLINE).await;
    for watcher in [target, leader] {
        eventually("the divergence to show in /health", || async {
            let h = health(&g.http, &urls[watcher]).await?;
            let problems = h["problems"].as_array()?;
            problems
                .iter()
                .any(|p| {
                    p.as_str()
                        .is_some_and(|p| p.contains("holds another table"))
                })
                .then_some(())
        })
        .await;
    }
    let h = health(&g.http, &urls[leader]).await.unwrap();
    assert_eq!(h["status"], "failing", "{h}");
    assert!(!h["raft"]["diverged"].as_array().unwrap().is_empty(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_one_per_write_and_kept_for_a_post_without_words() {
    let g = Group::start(1, &[]).await;
    let url = format!("{}/post", g.nodes[0].url);
    post_until_acked(&g.http, &g.urls(), 0, "first", "k0", DEADLINE).await;
    let seq = g.raft(0).await.unwrap()["seq"].as_u64().unwrap();
    let post = |key: Vec<&'static str>, text: &'static str| {
        let mut req = g.http.post(&url).form(&[("text", text)]);
        for k in key {
            req = req.header("idempotency-key", k);
        }
        req.send()
    };
    let r = post(vec!["a", "b"], "twice").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("more than once"),
        "{body}"
    );
    // No words: accepted at the same seq, and the key is kept.
    let r = post(vec!["empty"], "!!! ... ???").await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["seq"], seq);
    let r = post(vec!["empty"], "now words").await.unwrap();
    assert_eq!(r.status(), 422, "the key was used for a post without words");
    let r = post(vec!["empty"], "!!! ... ???").await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], true);
    let h = g.raft(0).await.unwrap();
    assert_eq!(h["seq"].as_u64().unwrap(), seq, "{h}");
    assert_eq!(table(&g.http, &g.nodes[0].url).await, words_of(&["first"]));
}

fn words_of(ws: &[&str]) -> HashMap<String, u64> {
    ws.iter().map(|w| (w.to_string(), 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_key_left_the_window_is_refused_not_counted_again() {
    let g = Group::start(
        1,
        &[
            "--idempotency-window",
            "1s",
            "--idempotency-max-bytes",
            "4KiB",
        ],
    )
    .await;
    let urls = g.urls();
    let post = |key: String, text: &'static str| {
        g.http
            .post(format!("{}/post", urls[0]))
            .header("idempotency-key", key)
            .form(&[("text", text)])
            .send()
    };
    assert_eq!(post("early".into(), "once").await.unwrap().status(), 202);
    assert_eq!(post("early".into(), "once").await.unwrap().status(), 202);
    // Past the window by the leader's clock.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let r = post("early".into(), "once").await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("counted then"),
        "{body}"
    );
    // Long keys: the byte bound forgets the oldest first.
    for i in 0..40 {
        let key = format!("{i:03}{}", "k".repeat(200));
        assert_eq!(post(key, "bulk").await.unwrap().status(), 202);
    }
    let h = g.raft(0).await.unwrap();
    let held = h["raft"]["keys"].as_u64().unwrap();
    assert!(
        (1..40).contains(&held),
        "{held} keys held of 40 within 4 KiB"
    );
    let r = post(format!("000{}", "k".repeat(200)), "bulk")
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let want: HashMap<String, u64> = [("once".to_string(), 1), ("bulk".to_string(), 40)].into();
    assert_eq!(table(&g.http, &urls[0]).await, want);
}

/// Waits until voter `i`'s `/health` answers 503 with a problem containing `says`.
async fn reports(g: &Group, i: usize, says: &str) -> Value {
    eventually(&format!("voter {} to report {says:?}", i + 1), || async {
        let r = g
            .http
            .get(format!("{}/health", g.nodes[i].url))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        let h: Value = r.json().await.ok()?;
        let found = h["problems"]
            .as_array()?
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains(says)));
        (code == 503 && found && h["status"] == "failing").then_some(h)
    })
    .await
}

/// Waits until voter `i`'s `/health` is 200 "ok".
async fn healthy(g: &Group, i: usize) {
    eventually(&format!("voter {} to be ok", i + 1), || async {
        let h = health(&g.http, &g.nodes[i].url).await?;
        (h["status"] == "ok").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_followers_says_so_and_recovers() {
    let g = Group::start(3, &[]).await;
    post_words(&g, 0..1).await;
    let leader = g.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for f in &followers {
        let h = g.raft(*f).await.unwrap();
        assert_eq!(h["role"], "follower", "{h}");
    }
    assert_eq!(g.raft(leader).await.unwrap()["role"], "leader");
    for f in &followers {
        crate::util::signal(&g.nodes[*f], "-STOP");
    }
    let h = reports(&g, leader, "heard from no majority").await;
    assert!(
        h["raft"]["state"] == "leader" || h["role"] != "leader",
        "{h}"
    );
    for f in &followers {
        crate::util::signal(&g.nodes[*f], "-CONT");
    }
    let leader = g.leader().await;
    healthy(&g, leader).await;
    post_words(&g, 1..2).await;
    g.converged(&words(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_voter_and_a_moved_one_are_reported_and_a_move_is_readdressed() {
    let mut g = Group::start(3, &[]).await;
    let urls = g.urls();
    post_words(&g, 0..1).await;
    let leader = g.leader().await;
    let (gone, moved) = ((leader + 1) % 3, (leader + 2) % 3);
    let voters: Vec<u64> = (0..3)
        .filter(|i| *i != gone)
        .map(|i| i as u64 + 1)
        .collect();
    g.admin("/raft/membership", json!({ "voters": voters }))
        .await;
    // Removed: it never hears of its removal (the group no longer talks to it), so it
    // campaigns, refused by the others; it says it has no leader.
    reports(&g, gone, "no leader known").await;
    g.up[gone] = false; // Running, but no longer of the group.
    // Moved: restarted on another port, with --peers naming the new address.
    g.kill(moved);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let new_url = format!("http://127.0.0.1:{port}");
    let mut peers: Vec<String> = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        let u = if i == moved {
            new_url.clone()
        } else {
            u.clone()
        };
        peers.push(format!("{}={u}", i + 1));
    }
    let mut args = g.nodes[moved].args.clone();
    let at = args.iter().position(|a| a == "--port").unwrap();
    args[at + 1] = port.to_string();
    args.extend(["--peers".to_string(), peers.join(",")]);
    g.nodes[moved] = Node::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    g.up[moved] = true;
    let h = reports(&g, moved, "re-address it").await;
    assert!(h["problems"].to_string().contains(&urls[moved]), "{h}");
    // The leader re-addresses it: the problem clears and it follows again.
    g.admin(
        "/raft/addresses",
        json!({ "nodes": { (moved + 1).to_string(): new_url } }),
    )
    .await;
    healthy(&g, moved).await;
    let mut urls_now = urls.clone();
    urls_now[moved] = g.nodes[moved].url.clone();
    post_until_acked(&g.http, &urls_now, leader, "w1", "k1", DEADLINE).await;
    eventually("the moved voter to apply the write", || async {
        let t = table(&g.http, &g.nodes[moved].url).await;
        (t.get("w1") == Some(&1)).then_some(())
    })
    .await;
    // Re-addressing a node that is not a member is refused: a conflict with the
    // membership (409), not a malformed request.
    let r = g
        .http
        .post(format!("{}/raft/addresses", g.nodes[leader].url))
        .json(&json!({ "nodes": { "9": "http://127.0.0.1:1" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("node 9 is not a member"),
        "{body}"
    );
    // And so is a membership naming one.
    let r = g
        .http
        .post(format!("{}/raft/membership", g.nodes[leader].url))
        .json(&json!({ "voters": [1, 9] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // A malformed URL is still a 400.
    let r = g
        .http
        .post(format!("{}/raft/addresses", g.nodes[leader].url))
        .json(&json!({ "nodes": { (moved + 1).to_string(): "http://127.0.0.1:1/path" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// With the peer credential, snapshot offers no leader of this group makes: not an
/// offer, files from another URL than the leader's, a record that is not the leader's.
/// Each is refused with a clear error before anything is installed, and the voter
/// keeps its state and its engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_snapshot_offer_is_refused_and_the_voter_keeps_its_state() {
    let g = Group::start(3, &[]).await;
    post_words(&g, 0..3).await;
    g.converged(&words(3)).await;
    let leader = g.leader().await;
    let target = (leader + 1) % 3;
    let (term, lead, last) = last_entry(&g, target).await;
    let before = g.raft(target).await.unwrap();
    let offer = |from: &str, checksum: &str| {
        json!({
            "vote": {"leader_id": {"term": term, "node_id": lead}, "committed": true},
            "meta": {
                "last_log_id": log_id(term, lead, last + 100),
                "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
                "snapshot_id": "forged",
            },
            "record": {"name": "raft.meta", "len": 100, "checksum": checksum},
            "from": from,
        })
    };
    // The chunked form of earlier versions: not an offer.
    let chunk = json!({
        "vote": {"leader_id": {"term": term, "node_id": lead}, "committed": true},
        "meta": {"last_log_id": log_id(term, lead, last + 100),
                 "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
                 "snapshot_id": "forged"},
        "offset": 0, "data": [1, 2, 3], "done": true,
    });
    let cases = [
        (chunk, 400, "not a raft request"),
        (
            offer("http://127.0.0.1:9", "0000000000000001"),
            400,
            "not http://127.0.0.1:9",
        ),
        (
            offer(&g.nodes[leader].url, "0000000000000001"),
            409,
            "changed",
        ),
    ];
    for (body, status, says) in cases {
        let r = g
            .http
            .post(format!("{}/raft/snapshot", g.nodes[target].url))
            .header("x-memdb-cluster", "memdb")
            .header("x-memdb-group", group_of(&g, target).await)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        let err: Value = r.json().await.unwrap();
        assert!(err["error"].as_str().unwrap().contains(says), "{err}");
        let now = g.raft(target).await.unwrap();
        for k in ["seq", "digest"] {
            assert_eq!(before[k], now[k], "{k} changed");
        }
        let h = health(&g.http, &g.nodes[target].url).await.unwrap();
        assert_eq!(h["status"], "ok", "{h}");
    }
    post_until_acked(&g.http, &g.urls(), 0, "after", "after", DEADLINE).await;
    let mut want = words(3);
    want.insert("after".into(), 1);
    g.converged(&want).await;
}

/// A snapshot that cannot be put in place (an operator left a file where its
/// directory goes) stops the voter's engine, as any storage failure does: `/health`
/// says so, instead of ok, and the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_whose_engine_stopped_says_so_instead_of_ok() {
    let slow = SNAPSHOTTING;
    let mut g = Group::start(3, &slow).await;
    let urls = g.urls();
    // Enough entries that the leader's log is purged behind its snapshots: a wiped
    // voter can only catch up from a snapshot.
    for i in 0..80 {
        post_until_acked(
            &g.http,
            &urls,
            i,
            &format!("s{i}"),
            &format!("s{i}"),
            DEADLINE,
        )
        .await;
    }
    let leader = g.leader().await;
    // The snapshot the leader will offer: its last, once no write follows.
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut prev = None;
    let index = loop {
        let now = g
            .raft(leader)
            .await
            .and_then(|r| r["raft"]["snapshot_index"].as_u64());
        if let Some(i) = now.filter(|_| now == prev) {
            break i;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leader's snapshot did not settle"
        );
        prev = now;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let target = (leader + 1) % 3;
    g.kill(target);
    let dir = g.dirs[target].path().to_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(dir.join("raft")).unwrap();
    std::fs::write(
        dir.join("raft").join(format!("snapshot-{index:020}")),
        "in the way",
    )
    .unwrap();
    let peers: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{}={u}", i + 1))
        .collect();
    g.nodes[target]
        .args
        .extend(["--peers".to_string(), peers.join(",")]);
    g.restart(target);
    // It no longer applies anything: /health says so, and why, and not "ok".
    let h = reports(&g, target, "raft engine").await;
    assert!(
        h.to_string().contains("placing the snapshot"),
        "{h}\n{}",
        g.nodes[target].log()
    );
    let h = health(&g.http, &g.nodes[target].url).await.unwrap();
    assert_eq!(h["status"], "failing", "{h}");
    // The other two go on.
    let urls: Vec<String> = (0..3)
        .filter(|i| *i != target)
        .map(|i| g.nodes[i].url.clone())
        .collect();
    post_until_acked(&g.http, &urls, 0, "after", "after", DEADLINE).await;
}

/// A voter's own routes keep `--max-body`: a client's post and a membership change
/// larger than it are refused 413 and change nothing, on the leader and on a follower,
/// while the RPCs between voters (whole batches of entries) take the larger RPC limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voters_posts_and_membership_changes_are_held_to_max_body() {
    let g = Group::start(3, &["--max-body", "64KiB"]).await;
    let l = g.leader().await;
    let big = format!("text={}", "oversized ".repeat(15_000));
    for i in [l, (l + 1) % 3] {
        let r = g
            .http
            .post(format!("{}/post", g.nodes[i].url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", format!("big{i}"))
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "voter {}", i + 1);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["applied"], "no", "{body}");
    }
    let padded = format!(
        r#"{{"voters": [1, 2, 3], "pad": "{}"}}"#,
        "x".repeat(100_000)
    );
    let r = g
        .http
        .post(format!("{}/raft/membership", g.nodes[l].url))
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Writes under the limit still commit.
    let mut want = HashMap::new();
    post_small(&g, l, 0..200, &mut want).await;
    let urls = g.urls();
    for u in &urls {
        let t = table(&g.http, u).await;
        assert!(!t.contains_key("oversized"), "{u} counted a refused post");
    }
    eventually("every voter to hold the small writes", || async {
        for u in &urls {
            let t = table(&g.http, u).await;
            if want.iter().any(|(w, n)| t.get(w) != Some(n)) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promoting_a_learner_that_does_not_answer_is_refused_and_writes_go_on() {
    let g = Group::start(1, &[]).await;
    let urls = g.urls();
    post_until_acked(&g.http, &urls, 0, "before", "p0", DEADLINE).await;
    let dir = tempfile::tempdir().unwrap();
    let args = voter_args(2, &dir, &[]);
    let mut learner = Node::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    g.admin("/raft/learners", json!({ "id": 2, "url": learner.url }))
        .await;
    learner.kill();
    // Within the answer window (2 s) the leader still counts it as answering, and
    // promoting it would stall this one-voter group until it returned: wait it out.
    eventually("the leader to see the learner silent for 2 s", || async {
        let h = health(&g.http, &urls[0]).await?;
        let members = h["raft"]["members"].as_array()?.clone();
        let m = members.iter().find(|m| m["id"] == 2)?;
        (m["answered_ms_ago"].as_u64()? > 2_100).then_some(())
    })
    .await;
    let refused = eventually("the promotion of a dead learner to be refused", || async {
        let r = g
            .http
            .post(format!("{}/raft/membership", urls[0]))
            .json(&json!({ "voters": [1, 2] }))
            .timeout(DEADLINE)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_ne!(status, 200, "a dead learner was promoted: {body}");
        (status == 409).then_some(body)
    })
    .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("learner 2 does not answer"),
        "{refused}"
    );
    // The group still commits: the voters are still {1}.
    let seq = post_until_acked(&g.http, &urls, 1, "after", "p1", DEADLINE).await;
    let h = health(&g.http, &urls[0]).await.unwrap();
    assert!(h["seq"].as_u64().unwrap() >= seq, "{h}");
    let voters: Vec<u64> = h["raft"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters, vec![1], "{h}");
    assert_eq!(table(&g.http, &urls[0]).await["after"], 1);
}
