//! `memdb perf` against real clusters: it loads them, checks them word by word, and
//! fails when a replica is wrong.

use std::process::Command;

use axum::Router;
use axum::extract::RawQuery;

use crate::util::*;

fn perf(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memdb"))
        .arg("perf")
        .args(args)
        .output()
        .expect("running memdb perf");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_passes_on_network_and_local_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "1h"]);
    let net = Node::replica(&leader.url, &[]);
    let local = Node::local(dir.path(), &[]);
    wait_ready(&net).await;
    wait_ready(&local).await;
    let (ok, out) = tokio::task::spawn_blocking({
        let (l, n, lo) = (leader.url.clone(), net.url.clone(), local.url.clone());
        move || {
            perf(&[
                &l,
                &n,
                &lo,
                "--requests",
                "300",
                "--concurrency",
                "32",
                "--json",
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["leader"]["succeeded"], 300);
    assert_eq!(report["leader_seq"], 300);
    assert_eq!(report["inconsistencies"], 0);
    assert!(report["words_checked"].as_u64().unwrap() > 10);
    let reads: u64 = report["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!(reads, 300);
    // The counts really landed: each phrase was posted 30 times, and "go" occurs 7
    // times across the ten phrases.
    let go = counts(&leader, &["go"]).await["go"];
    assert_eq!(go, 30 * 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_fails_when_a_replica_is_wrong() {
    // A "replica" that has every word at 0.
    let app = Router::new().route(
        "/wordcount",
        axum::routing::get(|RawQuery(q): RawQuery| async move {
            let mut out = serde_json::Map::new();
            for pair in memdb::server::parse::query_pairs(&q.unwrap_or_default()) {
                let (k, v) = pair.unwrap();
                if k == "word" {
                    out.insert(v.into_owned(), 0.into());
                }
            }
            axum::Json(serde_json::Value::Object(out))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let (ok, out) = tokio::task::spawn_blocking({
        let l = leader.url.clone();
        move || perf(&[&l, &liar, "--requests", "50", "--concurrency", "8"])
    })
    .await
    .unwrap();
    assert!(!ok, "perf must fail: {out}");
    assert!(out.contains("Inconsistency for word"), "{out}");
    assert!(
        out.contains("inconsistencies between leader and replicas"),
        "{out}"
    );
}
