//! A leader with network replicas: the Go original's system test and the basic
//! lifecycle (late start, SIGKILL, leader down, min-acks).

use crate::util::*;

const GO_PHRASES: [&str; 4] = [
    "hello world",
    "world of go",
    "distributed systems are awesome",
    "hello distributed world",
];

#[tokio::test]
async fn go_original_system_test() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let replicas: Vec<Node> = (0..3).map(|_| Node::replica(&leader.url, &[])).collect();
    for r in &replicas {
        wait_ready(r).await;
    }
    let c = leader.client();
    let mut last = 0;
    for p in GO_PHRASES {
        let reply = c.post_text(p).await.unwrap();
        assert!(reply.seq > last, "seqs increase");
        last = reply.seq;
    }
    assert_eq!(last, 4);
    for r in &replicas {
        converged(&leader, r).await;
        let got = counts(r, &["hello", "world", "distributed", "go", "absent"]).await;
        assert_eq!(got["hello"], 2);
        assert_eq!(got["world"], 3);
        assert_eq!(got["distributed"], 2);
        assert_eq!(got["go"], 1);
        assert_eq!(got["absent"], 0);
    }
    // The leader answers reads too.
    assert_eq!(counts(&leader, &["World"]).await["World"], 3);
}

#[tokio::test]
async fn go_clients_form_post_gets_202() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--tokenizer", "whitespace"]);
    let (status, body) = raw(
        "POST",
        &format!("{}/post", leader.url),
        Some("application/x-www-form-urlencoded"),
        b"text=Hello+hello%2C+world".to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(body["seq"], 1);
    assert_eq!(body["words"], 3);
    // Whitespace mode keeps case and punctuation, like the Go original.
    let got = counts(&leader, &["Hello", "hello,", "hello", "world"]).await;
    assert_eq!(
        (got["Hello"], got["hello,"], got["hello"], got["world"]),
        (1, 1, 0, 1)
    );
}

#[tokio::test]
async fn late_replica_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let c = leader.client();
    for i in 0..50 {
        c.post_text(&format!("early words {i} early"))
            .await
            .unwrap();
    }
    let late = Node::replica(&leader.url, &[]);
    wait_ready(&late).await;
    for i in 0..50 {
        c.post_text(&format!("late words {i}")).await.unwrap();
    }
    let t = converged(&leader, &late).await;
    assert_eq!(t["early"], 100);
    assert_eq!(t["words"], 100);
    assert_eq!(t["late"], 50);
}

#[tokio::test]
async fn sigkilled_replica_restarts_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let mut r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    let c = leader.client();
    for i in 0..20 {
        c.post_text(&format!("before {i}")).await.unwrap();
    }
    converged(&leader, &r).await;
    r.kill();
    for i in 0..30 {
        c.post_text(&format!("while down {i}")).await.unwrap();
    }
    r.restart();
    wait_ready(&r).await;
    for i in 0..10 {
        c.post_text(&format!("after {i}")).await.unwrap();
    }
    let t = converged(&leader, &r).await;
    assert_eq!((t["before"], t["while"], t["after"]), (20, 30, 10));
    // The leader lists the replica once, following.
    let h = leader.health().await;
    let reps = h["replicas"].as_array().unwrap();
    assert_eq!(reps.len(), 1);
    assert_eq!(reps[0]["status"], "ok");
    assert_eq!(reps[0]["lag"], 0);
}

#[tokio::test]
async fn replicas_keep_serving_while_the_leader_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &[]);
    let r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    leader.client().post_text("still here still").await.unwrap();
    converged(&leader, &r).await;
    leader.kill();
    for _ in 0..5 {
        let got = counts(&r, &["still", "here"]).await;
        assert_eq!((got["still"], got["here"]), (2, 1));
        let h = r.health().await;
        assert_eq!(h["ready"], true);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let h = r.health().await;
    assert_eq!(h["leader_reachable"], false, "{h}");
}

#[tokio::test]
async fn replica_started_before_the_leader_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    // Reserve a port for the leader by starting and stopping one.
    let mut leader = Node::leader(dir.path(), &[]);
    leader.kill();
    let r = Node::replica(&leader.url, &[]);
    let (status, body) = raw("GET", &format!("{}/health", r.url), None, vec![]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    let (status, body) = raw("GET", &format!("{}/wordcount?word=a", r.url), None, vec![]).await;
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("not synced"));
    leader.restart();
    wait_ready(&r).await;
    leader.client().post_text("finally").await.unwrap();
    converged(&leader, &r).await;
}

#[tokio::test]
async fn min_acks_confirms_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--min-acks", "1"]);
    let r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    let c = leader.client();
    // Wait until the leader knows the replica (registration is asynchronous).
    eventually("replica registered and following", || async {
        let h = leader.health().await;
        (h["replicas"][0]["status"] == "ok").then_some(())
    })
    .await;
    for i in 1..=20u64 {
        let reply = c.post_text("acked").await.unwrap();
        // No polling: with --min-acks 1 the replica has it when the POST returns.
        let got = r.client().wordcount(&["acked"], None).await.unwrap();
        assert_eq!(got["acked"], i);
        assert!(reply.seq >= i);
    }
}

#[tokio::test]
async fn min_acks_timeout_answers_504_but_keeps_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--min-acks", "2", "--ack-timeout", "200ms"]);
    let r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    let (status, body) = raw(
        "POST",
        &format!("{}/post", leader.url),
        Some("text/plain"),
        b"lonely write".to_vec(),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["seq"], 1);
    assert!(body["confirmed"].as_u64().unwrap() <= 1);
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("applied on the leader"), "{msg}");
    assert_eq!(counts(&leader, &["lonely"]).await["lonely"], 1);
    let t = converged(&leader, &r).await;
    assert_eq!(t["write"], 1);
}

#[tokio::test]
async fn min_seq_reads_wait_for_the_write_or_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let r = Node::replica(&leader.url, &["--max-wait", "300ms"]);
    wait_ready(&r).await;
    let reply = leader.client().post_text("fresh fresh").await.unwrap();
    let got = r
        .client()
        .wordcount(&["fresh"], Some(reply.seq))
        .await
        .unwrap();
    assert_eq!(got["fresh"], 2, "min_seq read sees its own write");
    let url = format!("{}/wordcount?word=fresh&min_seq=999", r.url);
    let started = std::time::Instant::now();
    let (status, body) = raw("GET", &url, None, vec![]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["seq"], reply.seq);
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
        .args([
            "--log-format",
            "json",
            "leader",
            "--port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    while addr.is_none() {
        let line = rx.recv_timeout(DEADLINE).expect("a log line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("each line is JSON");
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        if v["fields"]["message"] == "listening" {
            addr = v["fields"]["addr"].as_str().map(str::to_owned);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(addr.unwrap().starts_with("127.0.0.1:"));
}
