//! `GET /top` on every node kind: exact, in rank order, at the seq it names, past the
//! 10,000 words each node keeps ranked (a local replica from a base and a delta read in
//! place), with prefixes the kept list answers and ones only a scan can; bad queries
//! refused.

use std::collections::HashMap;

use memdb::client::TopWord;

use crate::util::*;

/// What `/top?n&prefix` must answer for `model`: count descending, then word.
fn expected(model: &HashMap<String, u64>, n: usize, prefix: &str) -> Vec<TopWord> {
    let mut all: Vec<TopWord> = model
        .iter()
        .filter(|(w, _)| w.starts_with(prefix))
        .map(|(w, c)| TopWord {
            word: w.clone(),
            count: *c,
        })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    all.truncate(n);
    all
}

/// Posts `words` (space separated, in posts of at most ~200 KB) and adds them to
/// `model`; returns the last seq.
async fn post_words(leader: &Node, words: &[String], model: &mut HashMap<String, u64>) -> u64 {
    let mut seq = 0;
    for chunk in words.chunks(20_000) {
        seq = leader
            .client()
            .post_text(&chunk.join(" "))
            .await
            .unwrap()
            .seq;
        for w in chunk {
            *model.entry(w.clone()).or_insert(0) += 1;
        }
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_kind_answers_the_exact_top_past_the_kept_list() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &[
            "--snapshot-interval",
            "20ms",
            "--compact-after",
            "5000",
            "--max-body",
            "4MiB",
        ],
    );
    let replica = Node::replica(&leader.url, &[]);
    let local = Node::local(dir.path(), &[]);
    let mut model = HashMap::new();
    // 16,000 distinct words with skewed counts and many ties: word i appears
    // 1 + (16000 / (i + 1)) % 7 times, so ties cross the 10,000th place.
    let mut words = Vec::new();
    for i in 0..16_000u32 {
        for _ in 0..(1 + (16_000 / (i + 1)) % 7) {
            words.push(format!("w{i}"));
        }
    }
    post_words(&leader, &words, &mut model).await;
    // A compaction makes them the base; then a delta raises some words (low ones
    // into the top, top ones higher) and adds new ones, including a rare prefix.
    eventually("a compaction to the base", || async {
        let bytes = std::fs::metadata(dir.path().join("snapshot.memdb"))
            .ok()?
            .len();
        (bytes > 100_000).then_some(())
    })
    .await;
    let mut more = Vec::new();
    for i in (0..16_000u32).step_by(7) {
        for _ in 0..(i % 5) {
            more.push(format!("w{i}"));
        }
    }
    more.extend(["zebra", "zebu", "Zebra", "ÉCOLE", "école"].map(String::from));
    let seq = post_words(&leader, &more, &mut model).await;
    let model: HashMap<String, u64> = model.into_iter().fold(HashMap::new(), |mut m, (w, c)| {
        // The unicode tokenizer lowercases what it counts.
        *m.entry(w.to_lowercase()).or_insert(0) += c;
        m
    });
    assert!(model.len() > 10_000 + 5_000);
    for node in [&leader, &replica, &local] {
        let c = node.client();
        eventually(&format!("{} at seq {seq}", node.url), || async {
            let r = c.top(1, "", Some(seq)).await.ok()?;
            (r.seq == Some(seq)).then_some(())
        })
        .await;
        for (n, prefix) in [
            (10, ""),
            (1, ""),
            (100, ""),
            (10_000, ""),
            (25, "w1"),
            (5, "w15999"),
            // Below the kept list: answered by a scan.
            (10, "zeb"),
            (10, "ZEB"),
            (3, "éc"),
            (10, "nothing-starts-so"),
        ] {
            let got = c.top(n, prefix, None).await.unwrap();
            assert_eq!(got.seq, Some(seq), "{} n={n} prefix={prefix:?}", node.url);
            let want = expected(&model, n, &prefix.to_lowercase());
            assert!(
                got.words == want,
                "{} n={n} prefix={prefix:?}: got {} words, first difference at {:?}",
                node.url,
                got.words.len(),
                got.words.iter().zip(&want).position(|(a, b)| a != b)
            );
        }
    }
    assert!(
        dir.path().join("delta.memdb").exists(),
        "the local replica must have read a base and a delta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_waits_for_min_seq_and_refuses_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "1h"]);
    let local = Node::local(dir.path(), &["--max-wait", "5s"]);
    let seq = leader.client().post_text("b a b c").await.unwrap().seq;
    // The local replica asks the leader to publish early for a min_seq read.
    let got = local.client().top(2, "", Some(seq)).await.unwrap();
    assert_eq!(got.seq, Some(seq));
    let pairs: Vec<(&str, u64)> = got
        .words
        .iter()
        .map(|w| (w.word.as_str(), w.count))
        .collect();
    assert_eq!(pairs, [("b", 2), ("a", 1)]);
    for node in [&leader, &local] {
        for q in ["n=0", "n=10001", "n=ten", "min_seq=-1", "prefix=%FF"] {
            let (status, body) = raw("GET", &format!("{}/top?{q}", node.url), None, vec![]).await;
            assert_eq!(status, 400, "{q} on {}", node.url);
            assert!(body["error"].as_str().is_some(), "{q}: {body}");
        }
        // The whole table is smaller than n: all of it.
        let got = node.client().top(10_000, "", None).await.unwrap();
        assert_eq!(got.words.len(), 3);
    }
}

/// Runs `memdb <args>` with `env`; (exit code, stdout).
fn memdb(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
        .args(args)
        .env_remove("MEMDB_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let mut stdout = String::from_utf8(out.stdout).unwrap();
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        stdout.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (code, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_count_and_status_commands_talk_to_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    let replica = Node::replica(&leader.url, &[]);
    wait_ready(&replica).await;
    let seq = leader
        .client()
        .post_text("the cat and the hat and the bat")
        .await
        .unwrap()
        .seq;
    let s = seq.to_string();
    // The URL from the flag, and from MEMDB_URL.
    let (code, out) = memdb(
        &["top", "-n", "2", "--url", &replica.url, "--min-seq", &s],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["1", "the", "3"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["2", "and", "2"]
    );
    assert_eq!(lines[3], format!("at seq {seq} on {}", replica.url));
    let (code, out) = memdb(
        &["top", "--json", "--prefix", "Ha", "--min-seq", &s],
        &[("MEMDB_URL", &replica.url)],
    );
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!([{"word": "hat", "count": 1}]));
    let (code, out) = memdb(
        &["count", "--json", "cat", "dog", "--url", &leader.url],
        &[],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({"cat": 1, "dog": 0}));
    let (code, out) = memdb(&["status", "--url", &leader.url], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("{}: leader ok", leader.url)),
        "{out}"
    );
    assert!(out.contains(&format!("replica {}", replica.url)), "{out}");
    // A node that is not there: a clear failure, not a table.
    drop(replica);
    let (code, _) = memdb(&["top", "--url", "http://127.0.0.1:9"], &[]);
    assert_ne!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_over_the_table_are_bounded_and_writes_go_on_while_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--max-scans", "1"]);
    let mut model = HashMap::new();
    let words: Vec<String> = (0..60_000).map(|i| format!("w{i:05}")).collect();
    post_words(&leader, &words, &mut model).await;
    let url = format!("{}/top?n=5&prefix=zzzz", leader.url);
    // Scans hammer the node from eight clients while a writer posts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanners: Vec<_> = (0..8)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut ok, mut refused) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http.get(&url).send().await.unwrap();
                    match r.status().as_u16() {
                        200 => {
                            let seq = r.headers()["x-memdb-seq"].to_str().unwrap().to_owned();
                            assert!(seq.parse::<u64>().unwrap() > 0);
                            assert_eq!(r.text().await.unwrap(), "[]");
                            ok += 1;
                        }
                        429 => {
                            assert!(r.headers().contains_key("retry-after"));
                            refused += 1;
                        }
                        other => panic!("/top answered {other}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let client = leader.client();
    for i in 0..30 {
        client.post_text(&format!("during{i}")).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for s in scanners {
        let (o, r) = s.await.unwrap();
        ok += o;
        refused += r;
    }
    assert!(ok > 0, "no scan was answered");
    assert!(
        refused > 0,
        "eight clients and one scan slot: some must be refused"
    );
    // A scan answers at the seq it names, with what that seq holds.
    let seq = leader.seq().await;
    let r = reqwest::get(format!(
        "{}/top?n=3&prefix=during&min_seq={seq}",
        leader.url
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["x-memdb-seq"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= seq
    );
    let top: Vec<TopWord> = r.json().await.unwrap();
    assert_eq!(top.len(), 3);
    assert!(
        top.iter()
            .all(|t| t.word.starts_with("during") && t.count == 1)
    );
}
