//! `memdb ingest`: files, directories, globs, gzip and stdin streamed to a leader in
//! chunks smaller than its body limit, counted exactly; refusals stop the run with the
//! chunk and the reason; through a raft follower with idempotency keys.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::util::group::{Group, TOKEN, table};
use crate::util::{Node, counts};

/// Writes `lines` lines of words (ASCII and accented) to `path`; returns their counts.
fn write_text(path: &Path, seed: u64, lines: usize) -> HashMap<String, u64> {
    let vocab: Vec<String> = (0..3000)
        .map(|i| format!("w{i}"))
        .chain(["naïve", "straße", "héllo"].map(String::from))
        .collect();
    let mut counts = HashMap::new();
    let mut text = String::new();
    let mut x = seed | 1;
    for l in 0..lines {
        for _ in 0..(5 + l % 11) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = &vocab[(x % vocab.len() as u64) as usize];
            *counts.entry(w.clone()).or_insert(0) += 1;
            text.push_str(w);
            text.push(' ');
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
    counts
}

fn add(into: &mut HashMap<String, u64>, from: &HashMap<String, u64>) {
    for (w, n) in from {
        *into.entry(w.clone()).or_insert(0) += n;
    }
}

fn ingest(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memdb"))
        .arg("ingest")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_directories_globs_gzip_and_stdin_are_counted_exactly_in_small_chunks() {
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(data.path(), &["--max-body", "64KiB"]);
    let files = tempfile::tempdir().unwrap();
    let f = files.path();
    std::fs::create_dir_all(f.join("dir/nested")).unwrap();
    let mut want = HashMap::new();
    add(&mut want, &write_text(&f.join("a.txt"), 1, 20_000));
    add(&mut want, &write_text(&f.join("dir/b.txt"), 2, 3_000));
    add(
        &mut want,
        &write_text(&f.join("dir/nested/c.txt"), 3, 3_000),
    );
    // A gzip file (two members, as `cat x.gz y.gz` makes).
    let gz_counts = write_text(&f.join("plain-d"), 4, 4_000);
    let plain = std::fs::read(f.join("plain-d")).unwrap();
    let (half1, half2) = plain.split_at(plain.iter().position(|b| *b == b'\n').unwrap() + 1);
    let mut gz = Vec::new();
    for part in [half1, half2] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).unwrap();
        gz.extend(e.finish().unwrap());
    }
    std::fs::write(f.join("d.txt.gz"), gz).unwrap();
    std::fs::remove_file(f.join("plain-d")).unwrap();
    add(&mut want, &gz_counts);
    let stdin_counts = write_text(&f.join("e.in"), 5, 2_000);
    let stdin_text = std::fs::read(f.join("e.in")).unwrap();
    std::fs::remove_file(f.join("e.in")).unwrap();
    add(&mut want, &stdin_counts);
    let glob = format!("{}/*.txt*", f.display());
    let out = ingest(
        &[
            &glob,
            f.join("dir").to_str().unwrap(),
            "-",
            "--leader",
            &leader.url,
            "--chunk-size",
            "60KiB",
            "--concurrency",
            "4",
            "--json",
        ],
        Some(&stdin_text),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["files"], 5, "{summary}");
    assert!(summary["chunks"].as_u64().unwrap() > 20, "{summary}");
    assert_eq!(summary["keyed"], false);
    assert_eq!(
        summary["words"].as_u64().unwrap(),
        want.values().sum::<u64>()
    );
    assert_eq!(leader.table().await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chunk_stops_the_run_naming_it_and_why() {
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(data.path(), &["--max-body", "16KiB", "--auth-token", TOKEN]);
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("t.txt");
    write_text(&path, 7, 2_000);
    let p = path.to_str().unwrap();
    // No token.
    let out = ingest(&[p, "--leader", &leader.url, "--chunk-size", "8KiB"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chunk") && err.contains("401"), "{err}");
    // Chunks larger than the leader's body limit.
    let out = ingest(
        &[
            p,
            "--leader",
            &leader.url,
            "--chunk-size",
            "64KiB",
            "--auth-token",
            TOKEN,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(bytes ") && err.contains("413") && err.contains("--max-body"),
        "{err}"
    );
    // Not text.
    let bin = files.path().join("b.bin");
    std::fs::write(&bin, [b'o', b'k', b' ', 0xff, 0xfe, b'\n']).unwrap();
    let out = ingest(
        &[
            bin.to_str().unwrap(),
            "--leader",
            &leader.url,
            "--auth-token",
            TOKEN,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not UTF-8 text at byte 3"), "{err}");
    // A file that is not there.
    let out = ingest(&["/nonexistent/x.txt", "--leader", &leader.url], None);
    assert_eq!(out.status.code(), Some(1));
    // Every chunk was refused: nothing was counted.
    assert_eq!(leader.seq().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_raft_follower_chunks_carry_keys_and_are_counted_once() {
    let g = Group::start(3, &[]).await;
    let leader = g.leader().await;
    let follower = (leader + 1) % 3;
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("t.txt");
    let want = write_text(&path, 9, 5_000);
    let out = ingest(
        &[
            path.to_str().unwrap(),
            "--leader",
            &g.nodes[follower].url,
            "--chunk-size",
            "32KiB",
            "--auth-token",
            TOKEN,
            "--json",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["keyed"], true, "{summary}");
    g.converged(&want).await;
    assert_eq!(table(&g.http, &g.nodes[follower].url).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_counted_but_not_acknowledged_in_time_is_never_sent_again() {
    // The request timeout ends the wait for the replica's acknowledgement, which never
    // comes (the replica is stopped): the chunk was counted, and the answer says so.
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        data.path(),
        &[
            "--min-acks",
            "1",
            "--ack-timeout",
            "10s",
            "--request-timeout",
            "1s",
        ],
    );
    let replica = Node::replica(&leader.url, &[]);
    crate::util::wait_ready(&replica).await;
    crate::util::signal(&replica, "-STOP");
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("one.txt");
    std::fs::write(&path, "once\n").unwrap();
    let out = ingest(
        &[
            path.to_str().unwrap(),
            "--leader",
            &leader.url,
            "--retry-for",
            "5s",
            "--json",
        ],
        None,
    );
    crate::util::signal(&replica, "-CONT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("was counted as seq 1"), "{err}");
    // What was counted is on stdout even so.
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["ok"], false, "{summary}");
    assert_eq!(summary["chunks"], 1, "{summary}");
    assert_eq!(summary["seq"], 1, "{summary}");
    assert_eq!(summary["retries"], 0, "{summary}");
    assert_eq!(counts(&leader, &["once"]).await["once"], 1);
    assert_eq!(leader.seq().await, 1);
}

/// The counts the leader's tokenizer makes of `text`.
fn counted(text: &str) -> HashMap<String, u64> {
    let (deltas, _) = memdb::words::Tokenizer::Unicode.count(text);
    deltas.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_file_is_read_once_whatever_names_it_and_fifos_in_a_directory_are_skipped() {
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(data.path(), &[]);
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha beta\n").unwrap();
    std::os::unix::fs::symlink(dir.join("a.txt"), dir.join("alias.txt")).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("loop")).unwrap();
    let fifo = dir.join("pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let d = dir.to_str().unwrap();
    let a = format!("{d}/a.txt");
    let glob = format!("{d}/*.txt");
    let out = ingest(&[d, &a, &glob, "--leader", &leader.url, "--json"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("pipe") && err.contains("not a regular file"),
        "{err}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["files"], 1, "{summary}");
    assert_eq!(
        counts(&leader, &["alpha", "beta"]).await,
        counted("alpha beta")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cjk_spaced_with_ideographic_spaces_and_a_long_csv_line_are_counted_exactly() {
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(data.path(), &[]);
    let files = tempfile::tempdir().unwrap();
    let cjk: String = (0..20_000)
        .map(|i| format!("語{}\u{3000}", i % 50))
        .collect();
    // 300 KB in one line without white space.
    let csv: String = (0..70_000).map(|i| format!("f{},", i % 97)).collect();
    assert!(csv.len() > 256 << 10);
    let text = format!("{cjk}\n{csv}\nend\n");
    let path = files.path().join("t.txt");
    std::fs::write(&path, &text).unwrap();
    let out = ingest(
        &[
            path.to_str().unwrap(),
            "--leader",
            &leader.url,
            "--chunk-size",
            "16KiB",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = counted(&text);
    assert_eq!(table(&reqwest::Client::new(), &leader.url).await, want);
}
