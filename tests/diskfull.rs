//! A full or failing disk under the leader: writes the log cannot hold are refused at
//! once and not applied, nothing acknowledged is lost, the failure shows in `/health`
//! and `/metrics`, and the leader recovers by itself when space returns.
//!
//! These run the leader on a small tmpfs, which needs root (as CI has); elsewhere they
//! say so and pass without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memdb::client::ClientError;

use crate::util::*;

/// A tmpfs mounted on a temp dir for the test's life.
struct TmpMount {
    dir: tempfile::TempDir,
}

impl TmpMount {
    /// `None` (with a note) where the test cannot mount.
    fn new(options: &str) -> Option<TmpMount> {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(ok.success(), "mount -t tmpfs failed as root");
        Some(TmpMount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A leader with its data on a 16 MiB tmpfs and a rescue directory elsewhere: the
/// mount, the data directory, the rescue directory and the leader. `None` where the
/// test cannot mount.
fn leader_on_tmpfs(extra: &[&str]) -> Option<(TmpMount, PathBuf, tempfile::TempDir, Node)> {
    let mnt = TmpMount::new("size=16m")?;
    let data = mnt.path().join("data");
    let rescue = tempfile::tempdir().unwrap();
    let mut args = extra.to_vec();
    args.extend(["--rescue-dir", rescue.path().to_str().unwrap()]);
    let leader = Node::leader(&data, &args);
    Some((mnt, data, rescue, leader))
}

/// Fills the file system at `dir` to the last byte; returns the filler's path.
fn fill_bytes(dir: &Path) -> PathBuf {
    let path = dir.join(format!(
        "filler-{}",
        std::fs::read_dir(dir).unwrap().count()
    ));
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if f.write_all(&chunk).and_then(|_| f.flush()).is_err() {
            break;
        }
    }
    path
}

/// Keeps a file system full: appends to `filler` whatever space appears (the leader
/// itself frees some while the disk is full: a merge that takes recent deltas in
/// removes them), until stopped. The disk stays full for as long as the test says.
struct KeepFull {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepFull {
    fn start(filler: &Path) -> KeepFull {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(filler)
            .unwrap();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let chunk = vec![0u8; 4096];
            while !stopped.load(Ordering::Acquire) {
                while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        KeepFull {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for KeepFull {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Uses up every inode of the file system at `dir`; returns the files made.
fn fill_inodes(dir: &Path) -> Vec<PathBuf> {
    let fill = dir.join("inodes");
    std::fs::create_dir(&fill).unwrap();
    let mut made = Vec::new();
    for i in 0.. {
        let p = fill.join(i.to_string());
        if std::fs::File::create(&p).is_err() {
            break;
        }
        made.push(p);
    }
    made
}

/// What the writers saw.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    /// (status, body, how long the answer took)
    refused: Vec<(u16, String, Duration)>,
}

/// 4 clients post unique words until each has been refused `refusals` times.
fn spawn_writers(
    leader: &Node,
    refusals: usize,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let (c, seen) = (leader.client(), seen.clone());
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0.. {
                    let word = format!("full{w}x{i}");
                    let started = Instant::now();
                    match c.post_text(&word).await {
                        Ok(_) => seen.lock().unwrap().acked.push(word),
                        Err(ClientError::Status { status, body, .. }) => {
                            seen.lock().unwrap().refused.push((
                                status.as_u16(),
                                body,
                                started.elapsed(),
                            ));
                            refused += 1;
                            if refused >= refusals {
                                return;
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect()
}

/// Writers post until `acked` writes are acknowledged; then the disk at `mnt` is
/// filled under them (and kept full: stop the guard before removing the filler), and
/// they go on until each was refused `refusals` times. What they saw, the filler file
/// and the guard.
async fn fill_under_writers(
    leader: &Node,
    mnt: &Path,
    acked: usize,
    refusals: usize,
) -> (Arc<Mutex<Seen>>, PathBuf, KeepFull) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writers = spawn_writers(leader, refusals, seen.clone());
    eventually("writes acknowledged", || async {
        (seen.lock().unwrap().acked.len() >= acked).then_some(())
    })
    .await;
    let filler = fill_bytes(mnt);
    let full = KeepFull::start(&filler);
    for w in writers {
        w.await.unwrap();
    }
    (seen, filler, full)
}

/// Every acknowledged word is in `leader`'s table exactly once.
async fn all_kept(leader: &Node, acked: &[String]) {
    let table = leader.table().await;
    let lost: Vec<&String> = acked.iter().filter(|w| !table.contains_key(*w)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let twice: Vec<_> = table.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "counted twice: {twice:?}");
}

async fn full_disk_refuses_then_recovers(fsync: &str) {
    let Some((mnt, _data, _rescue, mut leader)) = leader_on_tmpfs(&[
        "--fsync",
        fsync,
        "--snapshot-interval",
        "100ms",
        "--wal-segment-size",
        "64KiB",
    ]) else {
        return;
    };
    let (seen, filler, full) = fill_under_writers(&leader, mnt.path(), 300, 25).await;
    let refused = std::mem::take(&mut seen.lock().unwrap().refused);
    let acked_before = seen.lock().unwrap().acked.len();
    assert!(refused.len() >= 100, "{} refusals", refused.len());
    for (status, body, took) in &refused {
        // A write already waiting on its fsync (`always`) when the log failed answers
        // 503: applied in memory, not durable. A new one is refused with 507.
        assert!(
            *status == 507 || (fsync == "always" && *status == 503),
            "{status} {body}"
        );
        assert!(body.contains("log"), "{body}");
        assert!(*took < Duration::from_secs(1), "a refusal took {took:?}");
    }
    assert!(refused.iter().any(|r| r.0 == 507));

    // Refused means not applied: the word is nowhere.
    let c = leader.client();
    let err = c.post_text("refusedword").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status, .. } if status == 507),
        "{err}"
    );
    assert_eq!(counts(&leader, &["refusedword"]).await["refusedword"], 0);
    let (status, health) = c.health().await.unwrap();
    assert_eq!(status, 503, "{health}");
    assert!(
        health["problems"].to_string().contains("write-ahead log"),
        "{health}"
    );
    assert_eq!(scrape_metric(&leader, "memdb_wal_failed").await, 1.0);
    assert!(scrape_metric(&leader, "memdb_writes_refused_total").await >= 1.0);

    // Space returns: the leader resumes by itself.
    full.stop();
    std::fs::remove_file(&filler).unwrap();
    eventually("writes accepted again", || async {
        c.post_text("afterword").await.ok()
    })
    .await;
    seen.lock().unwrap().acked.push("afterword".into());
    eventually("healthy again", || async {
        (c.health().await.ok()?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(scrape_metric(&leader, "memdb_wal_failed").await, 0.0);
    // One failure, counted once; and none more once space is back.
    let failures = scrape_metric(&leader, "memdb_wal_failures_total").await;
    assert_eq!(failures, 1.0);
    for i in 0..20 {
        let w = format!("later{i}");
        c.post_text(&w).await.unwrap();
        seen.lock().unwrap().acked.push(w);
    }
    assert_eq!(
        scrape_metric(&leader, "memdb_wal_failures_total").await,
        failures
    );

    let status = leader.terminate();
    assert!(status.success(), "{status:?}\n{}", leader.log());
    leader.restart();
    let acked = seen.lock().unwrap().acked.clone();
    assert!(acked.len() > acked_before);
    all_kept(&leader, &acked).await;
    assert_eq!(counts(&leader, &["refusedword"]).await["refusedword"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_at_once_and_recovers_with_fsync_everysec() {
    full_disk_refuses_then_recovers("everysec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_at_once_and_recovers_with_fsync_always() {
    full_disk_refuses_then_recovers("always").await;
}

/// SIGTERM while the disk is still full: the writes acknowledged but not in the log
/// are saved to the rescue directory, and the exit is loud and non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_full_disk_saves_the_table_elsewhere_and_exits_non_zero() {
    let Some((mnt, data, rescue, mut leader)) = leader_on_tmpfs(&["--snapshot-interval", "1h"])
    else {
        return;
    };
    let (seen, filler, full) = fill_under_writers(&leader, mnt.path(), 200, 5).await;
    // The log cut its failed write back, freeing a little: take that too, so the
    // final snapshot cannot be written either.
    let filler2 = fill_bytes(&mnt.path().join("data"));
    let status = leader.terminate();
    let log = leader.log();
    assert!(!status.success(), "exit 0 on a full disk\n{log}");
    let saved: Vec<_> = std::fs::read_dir(rescue.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}\n{log}");
    assert!(log.contains(saved[0].to_str().unwrap()), "{log}");
    // What the operator is told to do: free space, put the rescue snapshot in place.
    full.stop();
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler2).unwrap();
    std::fs::copy(&saved[0], data.join("snapshot.memdb")).unwrap();
    leader.restart();
    let acked = seen.lock().unwrap().acked.clone();
    all_kept(&leader, &acked).await;
}

/// A data directory that cannot take new files (no inodes left): the log cannot start
/// a new segment and no snapshot can be published. Writes are still safe in the open
/// segment, so they go on, but both failures are reported at once, and both recover
/// by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_takes_no_new_files_is_reported_and_recovers() {
    let Some(mnt) = TmpMount::new("size=64m,nr_inodes=64") else {
        return;
    };
    let data = mnt.path().join("data");
    let mut leader = Node::leader(
        &data,
        &["--snapshot-interval", "50ms", "--wal-segment-size", "4KiB"],
    );
    let c = leader.client();
    c.post_text("first").await.unwrap();
    let fillers = fill_inodes(mnt.path());
    let acked = Arc::new(Mutex::new(vec!["first".to_string()]));
    // Writes go on (the open segment holds them) until a roll has failed too: an inode
    // freed by a failed snapshot's temp file may let one roll through first.
    let health = eventually("both failures reported", || async {
        for _ in 0..20 {
            let w = format!("noinode{}", acked.lock().unwrap().len());
            c.post_text(&w).await.unwrap();
            acked.lock().unwrap().push(w);
        }
        let (status, h) = c.health().await.ok()?;
        let p = h["problems"].to_string();
        (status == 503 && p.contains("new log segment") && p.contains("snapshot")).then_some(h)
    })
    .await;
    let mut acked = acked.lock().unwrap().clone();
    assert_eq!(health["status"], "failing");
    assert!(leader.log().contains("cannot start a new log segment"));
    assert_eq!(scrape_metric(&leader, "memdb_wal_roll_failing").await, 1.0);
    assert_eq!(scrape_metric(&leader, "memdb_snapshot_failing").await, 1.0);
    let segments = || {
        std::fs::read_dir(&data)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("wal-")
            })
            .count()
    };
    let stuck = segments();

    for f in fillers {
        std::fs::remove_file(f).unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, h) = c.health().await.unwrap();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still failing: {h}\n{}",
            leader.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.post_text("later").await.unwrap();
    acked.push("later".into());
    assert_eq!(scrape_metric(&leader, "memdb_wal_roll_failing").await, 0.0);
    assert!(segments() > stuck || leader.health().await["snapshot"]["seq"].as_u64() > Some(1));
    let status = leader.terminate();
    assert!(status.success());
    leader.restart();
    all_kept(&leader, &acked).await;
}

/// `POST /post` of `text` with `key` to `url`: the status and the JSON body.
async fn post_keyed(
    http: &reqwest::Client,
    url: &str,
    text: &str,
    key: &str,
) -> (u16, serde_json::Value) {
    match http
        .post(format!("{url}/post"))
        .header("idempotency-key", key)
        .form(&[("text", text)])
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// Three voters on `dirs` (with `extra` flags and the group's token), formed with
/// `POST /raft/init`; their URLs.
async fn voters_on(dirs: &[PathBuf], extra: &[&str]) -> (Vec<Node>, Vec<String>) {
    let nodes: Vec<Node> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let id = (i + 1).to_string();
            let mut args = vec![
                "leader",
                "--port",
                "0",
                "--data-dir",
                d.to_str().unwrap(),
                "--node-id",
                &id,
                "--auth-token",
                crate::util::group::TOKEN,
            ];
            args.extend(extra);
            Node::start(&args)
        })
        .collect();
    let members: std::collections::BTreeMap<String, String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| ((i + 1).to_string(), n.url.clone()))
        .collect();
    let r = crate::util::group::http()
        .post(format!("{}/raft/init", nodes[0].url))
        .json(&serde_json::json!({ "members": members }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let urls = nodes.iter().map(|n| n.url.clone()).collect();
    (nodes, urls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_voters_on_a_full_disk_refuse_truthfully_and_the_group_recovers_by_itself() {
    let Some(mnt) = TmpMount::new("size=16m") else {
        return;
    };
    let other = tempfile::tempdir().unwrap();
    let dirs = [
        mnt.path().join("v1"),
        mnt.path().join("v2"),
        other.path().join("v3"),
    ];
    let (nodes, urls) = voters_on(
        &dirs,
        &[
            "--election-timeout",
            "300ms",
            "--raft-heartbeat",
            "75ms",
            "--write-timeout",
            "1s",
        ],
    )
    .await;
    let http = crate::util::group::http();
    crate::util::group::post_until_acked(&http, &urls, 0, "before", "before", DEADLINE).await;
    // Voters 1 and 2 share the full disk: no majority can write.
    let filler = fill_bytes(mnt.path());
    let mut outcomes = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    // Redirects are answers here too (they say "applied": "no").
    let direct = crate::util::group::http_with(
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()),
    );
    while started.elapsed() < Duration::from_secs(3) {
        let word = format!("full{i}");
        let (status, body) = post_keyed(&direct, &urls[i % 3], &word, &word).await;
        outcomes.push((word, status, body));
        i += 1;
    }
    // A full voter says why.
    let h = crate::util::group::health(&http, &urls[0]).await.unwrap();
    assert!(
        h["problems"]
            .to_string()
            .contains("raft log cannot be written"),
        "{h}"
    );
    std::fs::remove_file(&filler).unwrap();
    // Space is back: the group takes writes again, with no restart.
    crate::util::group::post_until_acked(&http, &urls, 0, "after", "after", DEADLINE).await;
    for u in &urls {
        eventually("every voter healthy and at the same seq", || async {
            let h = crate::util::group::health(&http, u).await?;
            (h["status"] == "ok").then_some(())
        })
        .await;
    }
    // Every answer told the truth: "no" was counted nowhere, 202 exactly once.
    let leader_url = eventually("a leader", || async {
        for u in &urls {
            let h = crate::util::group::health(&http, u).await?;
            if h["role"] == "leader" {
                return Some(u.clone());
            }
        }
        None
    })
    .await;
    let seq = crate::util::group::health(&http, &leader_url)
        .await
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let mut refused = 0;
    for (word, status, body) in &outcomes {
        let (_, counts) = crate::util::counts_with_seq(
            &http,
            &format!("{leader_url}/wordcount?word={word}&min_seq={seq}"),
        )
        .await;
        let n = counts[word.as_str()];
        match (*status, body["applied"].as_str()) {
            (202, _) => assert_eq!(n, 1, "{word}: acknowledged"),
            (_, Some("no")) => {
                assert_eq!(n, 0, "{word}: {status} {body}");
                refused += 1;
            }
            (0, _) | (_, Some("unknown")) => assert!(n <= 1, "{word}"),
            other => panic!("{word}: an answer that does not say what happened: {other:?} {body}"),
        }
    }
    assert!(refused > 0, "no write was refused while the disk was full");
    drop(nodes);
}

/// A wiped voter whose disk has no room for the leader's snapshot says so in `/health`
/// (the download fails with 507 and is offered again), and takes the snapshot by
/// itself once there is room, ending exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_with_no_room_for_the_snapshot_says_so_and_takes_it_once_there_is_room() {
    let Some(mnt) = TmpMount::new("size=16m") else {
        return;
    };
    let other = tempfile::tempdir().unwrap();
    let dirs = [
        other.path().join("v1"),
        other.path().join("v2"),
        mnt.path().join("v3"),
    ];
    let (mut nodes, urls) = voters_on(&dirs, &["--raft-snapshot-bytes", "64KiB"]).await;
    let http = crate::util::group::http();
    for i in 0..10 {
        let text: Vec<String> = (0..5_000).map(|j| format!("room{i}x{j}")).collect();
        crate::util::group::post_until_acked(
            &http,
            &urls[..2],
            i,
            &text.join(" "),
            &format!("room{i}"),
            DEADLINE,
        )
        .await;
    }
    // The log before the last snapshot is gone, so a wiped voter can only catch up
    // from a snapshot (under load the purge may come later than the posts' answers:
    // a voter restarted before it catches up from the log and is offered none).
    eventually(
        "the leader to purge the log before its snapshot",
        || async {
            for u in &urls[..2] {
                let h = crate::util::group::health(&http, u).await?;
                if h["raft"]["state"] == "leader" && h["raft"]["purged_index"].as_u64()? > 0 {
                    return Some(());
                }
            }
            None
        },
    )
    .await;
    // Voter 3 wiped, and its disk left with room to start but not for the snapshot.
    nodes[2].kill();
    std::fs::remove_dir_all(&dirs[2]).unwrap();
    std::fs::create_dir(&dirs[2]).unwrap();
    let filler = fill_bytes(mnt.path());
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(256 << 10)).unwrap();
    }
    nodes[2].restart();
    let h = eventually("voter 3 says it cannot receive the snapshot", || async {
        let h = crate::util::group::health(&http, &urls[2]).await?;
        h["problems"]
            .to_string()
            .contains("could not receive")
            .then_some(h)
    })
    .await;
    assert!(
        h["raft"]["snapshot_receive_failed"]
            .as_str()
            .is_some_and(|e| e.contains("507")),
        "{h}"
    );
    // Room again: it takes the snapshot by itself and ends where the others are.
    std::fs::remove_file(&filler).unwrap();
    crate::util::group::post_until_acked(&http, &urls[..2], 0, "later", "later", DEADLINE).await;
    eventually("voter 3 exact and healthy again", || async {
        let mut at = Vec::new();
        for u in &urls {
            let h = crate::util::group::health(&http, u).await?;
            at.push((h["seq"].as_u64()?, h["digest"].as_str()?.to_owned()));
            if u == &urls[2] && h["status"] != "ok" {
                return None;
            }
        }
        (at[0] == at[1] && at[1] == at[2]).then_some(())
    })
    .await;
    let h = crate::util::group::health(&http, &urls[2]).await.unwrap();
    assert!(h["raft"]["snapshot_receive_failed"].is_null(), "{h}");
}
