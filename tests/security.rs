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
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let leader = Node::leader(&data, &["--snapshot-interval", "20ms", "--fsync", "always"]);
    leader.client().post_text("private").await.unwrap();
    eventually("a snapshot with the write", || async {
        (leader.health().await["snapshot"]["seq"] == 1).then_some(())
    })
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for name in ["snapshot.memdb", "memdb.sock", "LOCK", "history.json"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for (_, seg) in memdb::wal::segments(&data).unwrap() {
        assert_eq!(mode(&seg), 0o600, "{}", seg.display());
    }
}
