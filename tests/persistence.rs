//! The leader's snapshot as its checkpoint: restores after SIGTERM and SIGKILL, new
//! incarnations, and the data directory's guards.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

#[tokio::test]
async fn sigterm_exits_zero_and_restart_restores_table_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    // A long interval: only the final snapshot on SIGTERM can save these writes.
    let mut leader = Node::leader(dir.path(), &["--snapshot-interval", "1h"]);
    let c = leader.client();
    for i in 0..25 {
        c.post_text(&format!("persist me {i}")).await.unwrap();
    }
    let before = leader.table().await;
    let seq = leader.seq().await;
    assert_eq!(seq, 25);
    let status = leader.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        leader.log()
    );
    assert!(dir.path().join("snapshot.memdb").exists());
    leader.restart();
    assert_eq!(leader.seq().await, seq);
    assert_eq!(leader.table().await, before);
    // Writes continue from the restored seq.
    assert_eq!(c.post_text("more").await.unwrap().seq, seq + 1);
}

#[tokio::test]
async fn sigkill_after_a_snapshot_interval_loses_nothing_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &["--snapshot-interval", "50ms"]);
    let c = leader.client();
    for i in 0..30 {
        c.post_text(&format!("kill test {i}")).await.unwrap();
    }
    let before = leader.table().await;
    eventually("snapshot of seq 30 published", || async {
        (leader.health().await["snapshot"]["seq"] == 30).then_some(())
    })
    .await;
    leader.kill();
    leader.restart();
    assert_eq!(leader.seq().await, 30);
    assert_eq!(leader.table().await, before);
}

#[tokio::test]
async fn replicas_continue_across_a_clean_restart_and_resync_when_the_leader_lost_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &["--snapshot-interval", "1h"]);
    let r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    let c = leader.client();
    c.post_text("kept kept").await.unwrap();
    converged(&leader, &r).await;

    // Clean restart: a new incarnation that continues the old history, so the
    // replica adopts it and follows without a full sync.
    assert!(leader.terminate().success());
    leader.restart();
    let inc = leader.health().await["incarnation"].clone();
    eventually("replica follows the new incarnation", || async {
        (r.health().await["leader_incarnation"] == inc).then_some(())
    })
    .await;
    c.post_text("after restart").await.unwrap();
    let t = converged(&leader, &r).await;
    assert_eq!((t["kept"], t["after"]), (2, 1));
    let h = r.health().await;
    assert_eq!(
        (h["syncs"].as_u64(), h["continued_across_restarts"].as_u64()),
        (Some(1), Some(1)),
        "{h}"
    );

    // A crash that loses these writes (killed before any snapshot of them, and the
    // log lost with the power): the leader comes back without them, and the replica,
    // which had them, must drop them to match exactly.
    c.post_text("doomed doomed doomed").await.unwrap();
    converged(&leader, &r).await;
    assert_eq!(counts(&r, &["doomed"]).await["doomed"], 3);
    leader.kill();
    for (_, seg) in memdb::storage::log::segments(dir.path()).unwrap() {
        std::fs::remove_file(seg).unwrap();
    }
    leader.restart();
    let t = converged(&leader, &r).await;
    assert!(
        !t.contains_key("doomed"),
        "replica kept writes the leader lost"
    );
    assert_eq!(t["kept"], 2);
    let h = r.health().await;
    assert_eq!(h["syncs"], 2, "ahead of the leader: a full sync: {h}");
}

fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memdb"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("memdb {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn a_second_leader_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    leader.client().post_text("mine").await.unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out) = run_to_exit(&["leader", "--port", "0", "--data-dir", d]);
    assert!(!ok);
    assert!(
        out.contains("another leader is using data directory"),
        "{out}"
    );
    // The first leader is unharmed.
    assert_eq!(counts(&leader, &["mine"]).await["mine"], 1);
}

#[tokio::test]
async fn data_counted_with_another_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &["--tokenizer", "whitespace"]);
    leader.client().post_text("Case Kept").await.unwrap();
    assert!(leader.terminate().success());
    let d = dir.path().to_str().unwrap();
    let (ok, out) = run_to_exit(&["leader", "--port", "0", "--data-dir", d]);
    assert!(!ok);
    assert!(out.contains("--tokenizer whitespace"), "{out}");
}

/// A data directory written by a newer memdb (a snapshot format this build does not
/// know) is refused at start with a message that says so, and left as it was; what
/// this build writes (version 4) it reads back.
#[tokio::test]
async fn a_data_directory_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &[]);
    leader.client().post_text("kept").await.unwrap();
    assert!(leader.terminate().success());
    let path = dir.path().join("snapshot.memdb");
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[8..12], &4u32.to_le_bytes(), "written as version 4");
    bytes[8..12].copy_from_slice(&5u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out) = run_to_exit(&["leader", "--port", "0", "--data-dir", d]);
    assert!(!ok);
    assert!(
        out.contains("version 5") && out.contains("newer memdb"),
        "{out}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
    bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    leader.restart();
    assert_eq!(counts(&leader, &["kept"]).await["kept"], 1);
}

#[tokio::test]
async fn a_corrupt_snapshot_stops_the_leader_instead_of_starting_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &[]);
    leader.client().post_text("precious").await.unwrap();
    assert!(leader.terminate().success());
    let path = dir.path().join("snapshot.memdb");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out) = run_to_exit(&["leader", "--port", "0", "--data-dir", d]);
    assert!(!ok);
    assert!(out.contains("checksum mismatch"), "{out}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file was left as it was"
    );
}
