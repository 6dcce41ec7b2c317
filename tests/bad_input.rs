//! Bad input gets a 4xx with a JSON `{"error": ...}` body and changes nothing.
//!
//! The leader's answers are checked in-process through its router; the replica's
//! through the binary, since it needs a leader to sync from.

use std::time::Duration;

use crate::util::inproc::{App, InLeader};
use crate::util::*;

async fn expect_error(method: &str, url: &str, ct: Option<&str>, body: &[u8], status: u16) {
    let (got, json) = raw(method, url, ct, body.to_vec()).await;
    assert_eq!(got, status, "{method} {url} {body:?}: {json}");
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error body for {method} {url}: {json}"
    );
}

async fn expect_refusal(
    app: &App,
    method: &str,
    uri: &str,
    ct: Option<&str>,
    body: &[u8],
    status: u16,
) {
    let (got, json) = app.call(method, uri, ct, body.to_vec()).await;
    assert_eq!(got, status, "{method} {uri} {body:?}: {json}");
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error body for {method} {uri}: {json}"
    );
}

#[tokio::test]
async fn the_leader_rejects_bad_input_and_changes_nothing() {
    let node = InLeader::open(|c| c.max_body = 1024);
    let app = &node.app;
    app.post_text("baseline").await;
    let before = app.table().await;
    let form = Some("application/x-www-form-urlencoded");
    let json = Some("application/json");
    for (method, uri, ct, body, status) in [
        ("POST", "/post", form, &b""[..], 400),
        ("POST", "/post", form, b"other=1", 400),
        ("POST", "/post", form, b"text=", 400),
        ("POST", "/post", form, b"text=%20%20", 400),
        ("POST", "/post", form, b"text=%FF%FE", 400),
        ("POST", "/post", Some("text/plain"), b"\xff\xfe bad", 400),
        ("POST", "/post", json, b"{\"text\":", 400),
        ("POST", "/post", Some("image/png"), b"text=a", 415),
        ("GET", "/post", None, b"", 405),
        ("GET", "/wordcount", None, b"", 400),
        ("GET", "/wordcount?word=", None, b"", 400),
        ("GET", "/wordcount?word=a+b", None, b"", 400),
        ("GET", "/wordcount?word=a&min_seq=x", None, b"", 400),
        ("GET", "/nope", None, b"", 404),
        ("POST", "/replicas", json, b"{", 400),
        ("POST", "/replicas", json, br#"{"url":"ftp://x"}"#, 400),
        ("POST", "/replicas", json, br#"{"url":"not a url"}"#, 400),
    ] {
        expect_refusal(app, method, uri, ct, body, status).await;
    }
    let big = format!("text={}", "a ".repeat(2048));
    expect_refusal(app, "POST", "/post", form, big.as_bytes(), 413).await;
    let health = app.health().await;
    assert_eq!(health["seq"], 1, "bad input took no seq");
    assert_eq!(app.table().await, before);
    assert!(health["replicas"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn text_without_words_is_accepted_but_takes_no_seq() {
    let node = InLeader::open(|_| {});
    let (status, body) = node
        .app
        .call("POST", "/post", Some("text/plain"), "!!! ... ???")
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
    // Writes wait for an acknowledgement no replica will give: each holds its slot 5 s,
    // a window wide enough for a loaded machine.
    let node = InLeader::open(|c| {
        c.serving.limits.max_concurrent = 2;
        c.min_acks = 1;
        c.ack_timeout = Duration::from_secs(5);
    });
    let app = node.app.clone();
    let spawn_slow = || {
        let app = app.clone();
        tokio::spawn(async move { app.call("POST", "/post", Some("text/plain"), "busy").await })
    };
    // Fill both slots. A health probe can itself take the second slot for a moment and
    // get the second write shed: then send it again.
    let mut slow = vec![spawn_slow(), spawn_slow()];
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        // The cap is for the whole node: with both slots taken even /health is refused.
        if app.get("/health").await.0 == 503 {
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
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = app.call("POST", "/post", Some("text/plain"), "extra").await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("--max-concurrent"), "{body}");
    for s in slow {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 504, "{body}");
    }
    // Once the slow writes are answered, the node serves again; refused writes changed
    // nothing.
    crate::util::inproc::wait_ready(&app).await;
    let posts = app.health().await["posts"].as_u64().unwrap();
    let (_, counts) = app.get("/wordcount?word=busy").await;
    assert_eq!(counts["busy"], posts);
}

#[tokio::test]
async fn a_request_over_the_timeout_gets_503_and_a_write_says_it_was_counted() {
    let node = InLeader::open(|c| {
        c.serving.limits.request_timeout = Duration::from_millis(200);
        c.min_acks = 1;
        c.ack_timeout = Duration::from_secs(10);
        c.max_wait = Duration::from_secs(10);
    });
    // A write waiting for an acknowledgement that does not come: answered at the
    // request's deadline, saying that it was counted (and as which seq), so that no
    // client sends it again.
    let started = std::time::Instant::now();
    let (status, body) = node
        .app
        .call("POST", "/post", Some("text/plain"), "slow")
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["applied"], "yes", "{body}");
    assert_eq!(body["seq"], 1, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A read waiting past the deadline (for a seq that does not come) gets 503.
    let started = std::time::Instant::now();
    let (status, body) = node.app.get("/wordcount?word=slow&min_seq=99").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--request-timeout"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    crate::util::inproc::wait_ready(&node.app).await;
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_429() {
    // One request a second: a burst of ten cannot all pass.
    let node = InLeader::open(|c| c.serving.limits.rate_limit = Some(1));
    let app = &node.app;
    let mut limited = None;
    for _ in 0..10 {
        let (status, body) = app.get("/wordcount?word=a").await;
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
        (app.get("/wordcount?word=a").await.0 == 200).then_some(())
    })
    .await;
}
