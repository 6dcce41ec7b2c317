//! Tokens and file permissions.

use std::os::unix::fs::PermissionsExt;

use crate::util::*;

const TOKEN: &str = "s3cret-t0ken-value";

async fn status(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut req = http
        .request(method.parse().unwrap(), url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").is_some();
    let json: serde_json::Value = resp.json().await.unwrap_or_default();
    if code == 401 {
        assert!(www, "401 without WWW-Authenticate from {method} {url}");
        assert!(
            json["error"].is_string(),
            "401 without a JSON error: {json}"
        );
    }
    (code, json)
}

#[tokio::test]
async fn protected_routes_need_the_token_and_replication_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ["--auth-token", TOKEN];
    let leader = Node::leader(dir.path(), &auth);
    let replica = Node::replica(&leader.url, &auth);
    let local = Node::local(dir.path(), &auth);
    let (l, r, lo) = (&leader.url, &replica.url, &local.url);
    let guarded = [
        ("POST", format!("{l}/post"), r#"{"text":"nope"}"#),
        ("GET", format!("{l}/sync"), ""),
        (
            "POST",
            format!("{l}/replicas"),
            r#"{"url":"http://127.0.0.1:9"}"#,
        ),
        ("GET", format!("{l}/replicas"), ""),
        ("POST", format!("{r}/update"), r#"{"nope": 1}"#),
        ("GET", format!("{r}/sync"), ""),
        ("GET", format!("{lo}/sync"), ""),
    ];
    for (method, url, body) in &guarded {
        assert_eq!(
            status(method, url, None, body).await.0,
            401,
            "{method} {url} without a token"
        );
        assert_eq!(
            status(method, url, Some("wrong"), body).await.0,
            401,
            "{method} {url} with a wrong token"
        );
    }
    // Nothing got through.
    assert_eq!(leader.health().await["seq"], 0);
    assert_eq!(
        leader.health().await["replicas"].as_array().unwrap().len(),
        1,
        "only the real replica"
    );
    // With the token, writes work and replication (which sends it) keeps both kinds in step.
    let (code, body) = status(
        "POST",
        &format!("{l}/post"),
        Some(TOKEN),
        r#"{"text":"hello hello"}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_ready(&replica).await;
    for node in [&replica, &local] {
        let url = format!("{}/wordcount?word=hello&min_seq=1", node.url);
        // Reads stay open without --protect-reads.
        let (code, body) = status("GET", &url, None, "").await;
        assert_eq!(
            (code, body["hello"].as_u64()),
            (200, Some(2)),
            "{}",
            node.url
        );
    }
    assert_eq!(status("GET", &format!("{l}/health"), None, "").await.0, 200);
    // The token never reaches a log.
    for node in [&leader, &replica, &local] {
        assert!(
            !node.log().contains(TOKEN),
            "token in the log of {}",
            node.url
        );
    }
}

#[tokio::test]
async fn protect_reads_extends_the_token_to_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let data = dir.path().join("data");
    let leader = Node::leader(
        &data,
        &[
            "--auth-token-file",
            token_file.to_str().unwrap(),
            "--protect-reads",
        ],
    );
    let url = format!("{}/wordcount?word=a", leader.url);
    assert_eq!(status("GET", &url, None, "").await.0, 401);
    assert_eq!(status("GET", &url, Some(TOKEN), "").await.0, 200);
    assert_eq!(
        status("GET", &format!("{}/health", leader.url), None, "")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn data_files_are_owner_only() {
    let node = crate::util::inproc::InLeader::open(|c| {
        c.snapshot_interval = std::time::Duration::from_millis(20);
        c.wal.fsync = memdb::storage::log::FsyncPolicy::Always;
    });
    node.app.post_text("private").await;
    eventually("a snapshot with the write", || async {
        (node.app.health().await["snapshot"]["seq"] == 1).then_some(())
    })
    .await;
    let data = node.data_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for name in ["snapshot.memdb", "memdb.sock", "LOCK", "history.json"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for (_, seg) in memdb::storage::log::segments(&data).unwrap() {
        assert_eq!(mode(&seg), 0o600, "{}", seg.display());
    }
}

/// A push forged at the replica's seq (the attack the field trials found: `/health`
/// gives away seq and incarnation) is refused without the incarnation's secret; and
/// even one forged with the secret cannot make the replica diverge silently: the
/// leader's next push carries its digest, the replica sees the difference and
/// re-syncs, ending exactly equal to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pushes_are_refused_or_caught_by_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let replica = Node::replica(&leader.url, &[]);
    wait_ready(&replica).await;
    leader.client().post_text("first").await.unwrap();
    converged(&leader, &replica).await;
    let h = replica.health().await;
    let (seq, inc) = (h["seq"].as_u64().unwrap(), h["leader_incarnation"].clone());
    let inc = inc.as_str().unwrap().to_owned();
    assert_eq!(h["digest"], leader.health().await["digest"]);

    let forge = |secret: Option<String>, resync: bool| {
        let (url, inc) = (format!("{}/update", replica.url), inc.clone());
        async move {
            let mut req = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("x-memdb-incarnation", inc)
                .header("x-memdb-from-seq", seq)
                .header("x-memdb-to-seq", seq + 1)
                .body(r#"{"evilword": 100}"#);
            if let Some(s) = secret {
                req = req.header("x-memdb-push-secret", s);
            }
            if resync {
                req = req.header("x-memdb-resync", "1");
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(forge(None, false).await, 403);
    assert_eq!(forge(Some("0".repeat(32)), false).await, 403);
    assert_eq!(forge(None, true).await, 403, "a forged resync");
    assert_eq!(counts(&replica, &["evilword"]).await["evilword"], 0);
    assert_eq!(replica.seq().await, seq);
    assert_eq!(replica.health().await["syncs"], 1);

    // An attacker who can reach the leader learns the secret by registering.
    let (status, reg) = raw(
        "POST",
        &format!("{}/replicas", leader.url),
        Some("application/json"),
        br#"{"url": "http://127.0.0.1:9"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let secret = reg["push_secret"].as_str().unwrap().to_owned();
    assert_eq!(forge(Some(secret), false).await, 200);
    assert_eq!(counts(&replica, &["evilword"]).await["evilword"], 100);

    // The leader's real next batch has the same seq: the digest gives it away.
    leader.client().post_text("legitword").await.unwrap();
    // (The forged push already put the replica at the leader's seq: wait for the
    // re-sync itself before comparing.)
    eventually("the mismatch found and re-synced", || async {
        let h = replica.health().await;
        (h["digest_mismatches"] == 1 && h["syncs"] == 2).then_some(())
    })
    .await;
    let table = converged(&leader, &replica).await;
    assert_eq!(table.get("evilword"), None);
    assert_eq!(table["legitword"], 1);
    let h = replica.health().await;
    assert_eq!(h["digest_mismatches"], 1, "{h}");
    assert_eq!(h["forged_pushes_refused"], 3, "{h}");
    assert_eq!(h["digest"], leader.health().await["digest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_token_is_throttled_per_address_and_logged_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--auth-token", TOKEN]);
    let post = format!("{}/post", leader.url);
    // A client without any token is told so, and not throttled for it.
    for _ in 0..40 {
        assert_eq!(status("POST", &post, None, "{}").await.0, 401);
    }
    // Guesses: a burst is answered 401, then 429 with retry-after.
    let started = std::time::Instant::now();
    let mut codes = Vec::new();
    for i in 0..60 {
        codes.push(status("POST", &post, Some(&format!("guess-{i}")), "{}").await);
    }
    let first_429 = codes.iter().position(|(c, _)| *c == 429).expect("no 429");
    assert!(
        first_429 >= 20,
        "the burst of 20 was cut short at {first_429}"
    );
    let (_, body) = &codes[first_429];
    let wait = body["retry_after"].as_u64().unwrap();
    assert!((1..=5).contains(&wait), "{body}");
    // Past the burst, most guesses are refused unread (on a slow machine the allowance
    // refills a little between them).
    let refused = codes[first_429..].iter().filter(|(c, _)| *c == 429).count();
    assert!(refused * 2 >= codes.len() - first_429, "{refused} refused");
    // While throttled, even the right token waits (the address is not believed): right
    // after a refused guess, the right token is refused too.
    let mut right_refused = false;
    for _ in 0..5 {
        let mut guessed = 0;
        while status("POST", &post, Some("guess-again"), "{}").await.0 != 429 {
            guessed += 1;
            assert!(guessed < 100, "guesses are no longer throttled");
        }
        if status("POST", &post, Some(TOKEN), r#"{"text":"ok"}"#)
            .await
            .0
            == 429
        {
            right_refused = true;
            break;
        }
    }
    assert!(
        right_refused,
        "the right token got through a throttled address"
    );
    // Once the allowance returns, the token works again.
    eventually("the address to be let try again", || async {
        let code = status("POST", &post, Some(TOKEN), r#"{"text":"ok"}"#)
            .await
            .0;
        (code == 202).then_some(())
    })
    .await;
    // 40 without a token and at least the burst of 20 guesses.
    assert!(scrape_metric(&leader, "memdb_auth_failures_total").await >= 60.0);
    assert!(scrape_metric(&leader, "memdb_auth_throttled_total").await >= refused as f64);
    // At most one line a second about them.
    let lines = leader
        .log()
        .lines()
        .filter(|l| l.contains("refused a request with a wrong token"))
        .count();
    let most = started.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=most).contains(&lines),
        "{lines} log lines for the guesses in {most} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_again_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("token");
    let (old, new) = ("old-token-0123456789abcdef", "new-token-0123456789abcdef");
    std::fs::write(&file, format!("{old}\n")).unwrap();
    let leader = Node::leader(dir.path(), &["--auth-token-file", file.to_str().unwrap()]);
    let post = format!("{}/post", leader.url);
    let text = r#"{"text":"rotated"}"#;
    assert_eq!(status("POST", &post, Some(old), text).await.0, 202);
    std::fs::write(&file, format!("{new}\n")).unwrap();
    crate::util::signal(&leader, "-HUP");
    eventually("the new token to be in force", || async {
        (status("POST", &post, Some(new), text).await.0 == 202).then_some(())
    })
    .await;
    assert_eq!(status("POST", &post, Some(old), text).await.0, 401);
    // An empty file is refused: the token in force stays.
    std::fs::write(&file, "").unwrap();
    crate::util::signal(&leader, "-HUP");
    eventually("the refusal to be logged", || async {
        leader.log().contains("stays in force").then_some(())
    })
    .await;
    assert_eq!(status("POST", &post, Some(new), text).await.0, 202);
}
