//! A raft group against forged and careless traffic: an append that would rewrite
//! committed entries, a voter whose data directory was wiped, a data directory started
//! under another node id.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::failover::{Group, health, post_until_acked, table, voter_args};
use crate::util::{DEADLINE, eventually};

fn log_id(term: u64, node: u64, index: u64) -> Value {
    json!({"leader_id": {"term": term, "node_id": node}, "index": index})
}

/// Words `w0`..`w{n-1}`, one each.
fn words(n: usize) -> HashMap<String, u64> {
    (0..n).map(|i| (format!("w{i}"), 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_that_would_rewrite_committed_entries_is_refused_and_the_group_keeps_writing() {
    let g = Group::start(3, &[]).await;
    let urls = g.urls();
    for i in 0..20 {
        post_until_acked(
            &g.http,
            &urls,
            i,
            &format!("w{i}"),
            &format!("k{i}"),
            DEADLINE,
        )
        .await;
    }
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
    let r = g
        .http
        .post(format!("{}/raft/append", urls[target]))
        .header("x-memdb-cluster", "memdb")
        .json(&forged)
        .send()
        .await
        .unwrap();
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
    for (i, url) in urls.iter().enumerate() {
        let h = health(&g.http, url).await.unwrap();
        assert_eq!(h["status"], "ok", "voter {}: {h}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_voter_rejoins_from_the_leaders_snapshot_and_becomes_exact() {
    let slow = [
        "--raft-snapshot-every",
        "20",
        "--election-timeout",
        "500ms",
        "--raft-heartbeat",
        "150ms",
    ];
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
    for i in 0..60 {
        post_until_acked(
            &g.http,
            &urls,
            leader,
            &format!("w{i}"),
            &format!("w{i}"),
            DEADLINE,
        )
        .await;
        want.insert(format!("w{i}"), 1);
    }
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
    for i in 60..80 {
        post_until_acked(
            &g.http,
            &urls,
            leader,
            &format!("w{i}"),
            &format!("w{i}"),
            DEADLINE,
        )
        .await;
        want.insert(format!("w{i}"), 1);
    }
    g.converged(&want).await;
    let log = g.nodes[wiped].log();
    assert!(
        !log.contains("panicked"),
        "the wiped voter panicked:\n{log}"
    );
    for (i, url) in urls.iter().enumerate() {
        let h = health(&g.http, url).await.unwrap();
        assert_eq!(h["status"], "ok", "voter {}: {h}", i + 1);
    }
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
