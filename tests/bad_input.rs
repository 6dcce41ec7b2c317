//! Bad input gets a 4xx with a JSON `{"error": ...}` body and changes nothing.

use crate::util::*;

async fn expect_error(method: &str, url: &str, ct: Option<&str>, body: &[u8], status: u16) {
    let (got, json) = raw(method, url, ct, body.to_vec()).await;
    assert_eq!(got, status, "{method} {url} {body:?}: {json}");
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error body for {method} {url}: {json}"
    );
}

#[tokio::test]
async fn the_leader_rejects_bad_input_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--max-body", "1KiB"]);
    let u = &leader.url;
    leader.client().post_text("baseline").await.unwrap();
    let before = leader.table().await;
    let form = Some("application/x-www-form-urlencoded");
    let post = format!("{u}/post");
    expect_error("POST", &post, form, b"", 400).await;
    expect_error("POST", &post, form, b"other=1", 400).await;
    expect_error("POST", &post, form, b"text=", 400).await;
    expect_error("POST", &post, form, b"text=%20%20", 400).await;
    expect_error("POST", &post, form, b"text=%FF%FE", 400).await;
    expect_error("POST", &post, Some("text/plain"), b"\xff\xfe bad", 400).await;
    expect_error("POST", &post, Some("application/json"), b"{\"text\":", 400).await;
    expect_error("POST", &post, Some("image/png"), b"text=a", 415).await;
    let big = format!("text={}", "a ".repeat(2048));
    expect_error("POST", &post, form, big.as_bytes(), 413).await;
    expect_error("GET", &post, None, b"", 405).await;
    expect_error("GET", &format!("{u}/wordcount"), None, b"", 400).await;
    expect_error("GET", &format!("{u}/wordcount?word="), None, b"", 400).await;
    expect_error("GET", &format!("{u}/wordcount?word=a+b"), None, b"", 400).await;
    expect_error(
        "GET",
        &format!("{u}/wordcount?word=a&min_seq=x"),
        None,
        b"",
        400,
    )
    .await;
    expect_error("GET", &format!("{u}/nope"), None, b"", 404).await;
    let reg = format!("{u}/replicas");
    expect_error("POST", &reg, Some("application/json"), b"{", 400).await;
    expect_error(
        "POST",
        &reg,
        Some("application/json"),
        br#"{"url":"ftp://x"}"#,
        400,
    )
    .await;
    expect_error(
        "POST",
        &reg,
        Some("application/json"),
        br#"{"url":"not a url"}"#,
        400,
    )
    .await;
    assert_eq!(leader.seq().await, 1, "bad input took no seq");
    assert_eq!(leader.table().await, before);
    assert!(
        leader.health().await["replicas"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn text_without_words_is_accepted_but_takes_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let (status, body) = raw(
        "POST",
        &format!("{}/post", leader.url),
        Some("text/plain"),
        b"!!! ... ???".to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        (body["seq"].as_u64(), body["words"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn the_replica_rejects_bad_updates_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    leader.client().post_text("stable").await.unwrap();
    let before = converged(&leader, &r).await;
    let upd = format!("{}/update", r.url);
    let json = Some("application/json");
    expect_error("POST", &upd, json, b"not json", 400).await;
    expect_error("POST", &upd, json, b"[1,2]", 400).await;
    expect_error("POST", &upd, json, br#"{"a": "x"}"#, 400).await;
    expect_error("POST", &upd, json, br#"{"a": 1.5}"#, 400).await;
    expect_error("POST", &upd, json, br#"{"stable": -5}"#, 400).await;
    expect_error("POST", &upd, json, br#"{"": 1}"#, 400).await;
    expect_error("GET", &upd, None, b"", 405).await;
    expect_error("GET", &format!("{}/wordcount", r.url), None, b"", 400).await;
    expect_error("GET", &format!("{}/post", r.url), None, b"", 404).await;
    // Headers that do not go together.
    let http = reqwest::Client::new();
    let resp = http
        .post(&upd)
        .header("x-memdb-from-seq", "1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .post(&upd)
        .header("x-memdb-from-seq", "x")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(r.table().await, before);
    assert_eq!(r.seq().await, 1);
}

#[tokio::test]
async fn the_go_leaders_unsequenced_update_is_applied_then_healed() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    leader.client().post_text("hello").await.unwrap();
    converged(&leader, &r).await;
    // The Go original's leader sends bare deltas; a replica applies them...
    let (status, _) = raw(
        "POST",
        &format!("{}/update", r.url),
        Some("application/json"),
        br#"{"hello": 5}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(counts(&r, &["hello"]).await["hello"], 6);
    // ...but it now diverges from its memdb leader, whose next push re-syncs it.
    leader.client().post_text("world").await.unwrap();
    let t = converged(&leader, &r).await;
    assert_eq!((t["hello"], t["world"]), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_503_and_the_node_survives() {
    let dir = tempfile::tempdir().unwrap();
    // Writes wait for an acknowledgement no replica will give: each holds its slot 5 s,
    // a window wide enough for a loaded machine.
    let leader = Node::leader(
        dir.path(),
        &[
            "--max-concurrent",
            "2",
            "--min-acks",
            "1",
            "--ack-timeout",
            "5s",
        ],
    );
    let post = format!("{}/post", leader.url);
    let health = format!("{}/health", leader.url);
    let spawn_slow = || {
        let post = post.clone();
        tokio::spawn(async move { raw("POST", &post, Some("text/plain"), b"busy".to_vec()).await })
    };
    // Fill both slots. A health probe can itself take the second slot for a moment and
    // get the second write shed: then send it again.
    let mut slow = vec![spawn_slow(), spawn_slow()];
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        // The cap is for the whole node: with both slots taken even /health is refused.
        if raw("GET", &health, None, vec![]).await.0 == 503 {
            break;
        }
        for s in slow.iter_mut() {
            if s.is_finished() {
                let (status, body) = std::mem::replace(s, spawn_slow()).await.unwrap();
                assert_eq!(status, 503, "a slow write ended early: {body}");
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw both slots taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, body) = raw("POST", &post, Some("text/plain"), b"extra".to_vec()).await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("--max-concurrent"), "{body}");
    for s in slow {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 504, "{body}");
    }
    // Once the slow writes are answered, the node serves again; refused writes changed
    // nothing.
    wait_ready(&leader).await;
    let posts = leader.health().await["posts"].as_u64().unwrap();
    assert_eq!(counts(&leader, &["busy"]).await["busy"], posts);
}

#[tokio::test]
async fn a_request_over_the_timeout_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &[
            "--request-timeout",
            "200ms",
            "--min-acks",
            "1",
            "--ack-timeout",
            "10s",
        ],
    );
    let started = std::time::Instant::now();
    let (status, body) = raw(
        "POST",
        &format!("{}/post", leader.url),
        Some("text/plain"),
        b"slow".to_vec(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--request-timeout"),
        "{body}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    wait_ready(&leader).await;
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_429() {
    let dir = tempfile::tempdir().unwrap();
    // One request a second: a burst of ten cannot all pass.
    let leader = Node::leader(dir.path(), &["--rate-limit", "1"]);
    let url = format!("{}/wordcount?word=a", leader.url);
    let mut limited = None;
    for _ in 0..10 {
        let (status, body) = raw("GET", &url, None, vec![]).await;
        if status == 429 {
            limited = Some(body);
            break;
        }
        assert_eq!(status, 200);
    }
    let body = limited.expect("a 429 within a burst of 10 at 1 request/s");
    assert!(
        body["error"].as_str().unwrap().contains("--rate-limit"),
        "{body}"
    );
    // The bucket refills: within a few seconds a request passes again.
    eventually("a request passes after the refill", || async {
        (raw("GET", &url, None, vec![]).await.0 == 200).then_some(())
    })
    .await;
}
