//! Registered replicas are validated, bounded and expire: registration cannot aim the
//! leader's pushes anywhere, grow its state without bound, or hold its shutdown.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

async fn call(method: &str, leader: &Node, body: Value) -> (u16, Value) {
    raw(
        method,
        &format!("{}/replicas", leader.url),
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await
}

async fn listed(leader: &Node) -> Vec<String> {
    let (_, v) = raw("GET", &format!("{}/replicas", leader.url), None, vec![]).await;
    v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_plain_origins_register_up_to_the_cap_and_can_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--max-replicas", "2"]);
    for bad in [
        "http://127.0.0.1:1/evil/path",
        "http://127.0.0.1:1/?x=1",
        "http://user:secret@127.0.0.1:1",
        "http://127.0.0.1:1/#frag",
        "ftp://127.0.0.1:1",
        "not a url",
    ] {
        let (status, body) = call("POST", &leader, json!({"url": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("origin")
                || bad == "not a url"
                || bad.starts_with("ftp"),
            "{body}"
        );
    }
    assert!(listed(&leader).await.is_empty());
    let (s1, _) = call("POST", &leader, json!({"url": "http://127.0.0.1:1/"})).await;
    let (s2, _) = call("POST", &leader, json!({"url": "http://127.0.0.1:2"})).await;
    // A heartbeat of a known replica is not a new one.
    let (s3, _) = call("POST", &leader, json!({"url": "http://127.0.0.1:2"})).await;
    let (s4, full) = call("POST", &leader, json!({"url": "http://127.0.0.1:3"})).await;
    assert_eq!((s1, s2, s3, s4), (200, 200, 200, 503), "{full}");
    assert_eq!(full["reason"], "max_replicas");
    assert_eq!(listed(&leader).await.len(), 2);

    let (s, _) = call("DELETE", &leader, json!({"url": "http://127.0.0.1:1"})).await;
    assert_eq!(s, 200);
    let (s, _) = call("DELETE", &leader, json!({"url": "http://127.0.0.1:1"})).await;
    assert_eq!(s, 404);
    assert_eq!(listed(&leader).await, ["http://127.0.0.1:2"]);
    let (s, _) = call("DELETE", &leader, json!({"nope": 1})).await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_replicas_expire_and_dead_ones_do_not_hold_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // A static replica that is never there, and a drain timeout far past the test's
    // deadline: a shutdown that waited for it would fail the test.
    let mut leader = Node::leader(
        dir.path(),
        &[
            "--replica-timeout",
            "300ms",
            "--replica",
            "http://127.0.0.1:9",
            "--drain-timeout",
            "1h",
        ],
    );
    for p in 10..20 {
        let (s, _) = call(
            "POST",
            &leader,
            json!({"url": format!("http://127.0.0.1:{p}")}),
        )
        .await;
        assert_eq!(s, 200);
    }
    assert_eq!(listed(&leader).await.len(), 11);
    // Registered replicas that stop their heartbeats go; the static one stays.
    eventually("silent replicas removed", || async {
        (listed(&leader).await == ["http://127.0.0.1:9"]).then_some(())
    })
    .await;
    // A live replica that heartbeats stays registered past the timeout.
    let replica = Node::replica(&leader.url, &[]);
    wait_ready(&replica).await;
    leader.client().post_text("kept").await.unwrap();
    converged(&leader, &replica).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(listed(&leader).await.contains(&replica.url));

    let started = Instant::now();
    let status = leader.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < DEADLINE,
        "shutdown waited for a dead replica"
    );
}
