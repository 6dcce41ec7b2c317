//! A network replica's binary bootstrap: it downloads the leader's files (`GET /files`)
//! into its data directory as they are, maps them, and follows pushes from their seq;
//! a restart or a killed download downloads only what it lacks; a corrupt file is
//! refused and fetched again.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::util::*;

/// A text of `n` distinct words starting at `from`.
fn words(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("w{i:06}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn manifest(leader: &Node) -> Value {
    let (status, m) = raw("GET", &format!("{}/files", leader.url), None, vec![]).await;
    assert_eq!(status, 200, "{m}");
    m
}

/// Waits until the leader's files hold every write it took (its table is its files).
async fn published(leader: &Node) -> Value {
    let seq = leader.seq().await;
    eventually("the leader to publish its table", || async {
        let m = manifest(leader).await;
        (m["seq"] == seq).then_some(m)
    })
    .await
}

fn total_len(m: &Value) -> u64 {
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["len"].as_u64().unwrap())
        .sum()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request")
}

#[tokio::test]
async fn a_replica_joins_from_the_leaders_files_and_a_restart_downloads_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "100ms"]);
    let c = leader.client();
    for k in 0..20 {
        c.post_text(&words(k * 100, 300)).await.unwrap();
    }
    let m = published(&leader).await;
    let rdir = dir.path().join("replica");
    let rdir_s = rdir.to_str().unwrap();
    let mut r = Node::replica(&leader.url, &["--data-dir", rdir_s]);
    wait_ready(&r).await;
    let h = r.health().await;
    assert_eq!(h["last_sync_kind"], "files", "{h}");
    assert_eq!(h["last_sync_downloaded_bytes"], total_len(&m), "{h}");
    assert_eq!(h["words"], 2_200, "{h}");
    assert_eq!(
        h["words_in_memory"], 0,
        "every word is in the mapped files: {h}"
    );
    assert_eq!(h["mapped_bytes"], total_len(&m), "{h}");
    assert_eq!(h["data_dir"], rdir_s);
    let mode = std::fs::metadata(&rdir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory is the owner's only");
    assert!(rdir.join("snapshot.memdb").exists());
    converged(&leader, &r).await;

    // Pushes from the files' seq on: they land in memory over the mapping.
    c.post_text(&words(5_000, 50)).await.unwrap();
    c.post_text("w000001 w000001").await.unwrap();
    converged(&leader, &r).await;
    assert_eq!(counts(&r, &["w000001"]).await["w000001"], 3);
    let h = r.health().await;
    assert_eq!(h["words_in_memory"], 51, "{h}");

    // A second replica on the same directory is refused: it is locked.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
        .args(["replica", "--port", "0", "--leader", &leader.url])
        .args(["--data-dir", rdir_s])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by another process"), "{err}");

    // Stopped, the leader moves on; restarted, it downloads only the new files.
    assert!(r.terminate().success());
    for k in 0..5 {
        c.post_text(&words(10_000 + k * 10, 10)).await.unwrap();
    }
    let m2 = published(&leader).await;
    let base = |m: &Value| m["files"][0].clone();
    assert_eq!(
        base(&m),
        base(&m2),
        "no compaction in between (a test premise)"
    );
    r.restart();
    wait_ready(&r).await;
    let h = r.health().await;
    let downloaded = h["last_sync_downloaded_bytes"].as_u64().unwrap();
    let base_len = base(&m2)["len"].as_u64().unwrap();
    assert!(
        downloaded <= total_len(&m2) - base_len,
        "the base was in the directory already: {h}"
    );
    converged(&leader, &r).await;
}

#[tokio::test]
async fn a_killed_download_resumes_and_a_corrupt_file_is_refused_then_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "100ms"]);
    let c = leader.client();
    for k in 0..10 {
        c.post_text(&words(k * 500, 500)).await.unwrap();
    }
    let m = published(&leader).await;
    // The largest file (the base may be the empty one a new leader starts with).
    let big = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|f| f["len"].as_u64())
        .unwrap();
    let (name, sum) = (
        big["name"].as_str().unwrap(),
        big["checksum"].as_str().unwrap(),
    );
    let len = big["len"].as_u64().unwrap();
    assert!(len > 10_000, "{m}");

    // What a replica killed mid-download leaves: the first half of the file.
    let rdir = dir.path().join("replica");
    std::fs::create_dir(&rdir).unwrap();
    std::fs::set_permissions(&rdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let half = len / 2;
    let resp = get(
        &format!("{}/files/{name}", leader.url),
        &[("range", &format!("bytes=0-{}", half - 1))],
    )
    .await;
    assert_eq!(resp.status(), 206);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, half);
    std::fs::write(rdir.join(format!(".{name}.{sum}.part")), &bytes).unwrap();

    let mut r = Node::replica(&leader.url, &["--data-dir", rdir.to_str().unwrap()]);
    wait_ready(&r).await;
    let h = r.health().await;
    assert_eq!(
        h["last_sync_downloaded_bytes"],
        total_len(&m) - half,
        "the half already there is not downloaded again: {h}"
    );
    converged(&leader, &r).await;

    // A file whose header is right but whose body is not (a bit flipped on disk):
    // refused by the checksum, removed, downloaded again.
    r.kill();
    corrupt_middle(&rdir.join(name));
    r.restart();
    wait_ready(&r).await;
    converged(&leader, &r).await;
    eventually("the refusal in the log", || async {
        r.log()
            .contains("do not make the table named")
            .then_some(())
    })
    .await;
    let h = r.health().await;
    assert_eq!(h["last_sync_kind"], "files", "{h}");
    assert!(h["syncs"].as_u64().unwrap() >= 1);
}

fn corrupt_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn the_files_are_served_with_ranges_and_refused_once_changed() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "100ms"]);
    leader.client().post_text(&words(0, 100)).await.unwrap();
    let m = published(&leader).await;
    let f = &m["files"][0];
    let url = format!("{}/files/{}", leader.url, f["name"].as_str().unwrap());
    let len = f["len"].as_u64().unwrap();
    let tag = format!("\"{}\"", f["checksum"].as_str().unwrap());

    let whole = get(&url, &[]).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["etag"], tag.as_str());
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    let whole = whole.bytes().await.unwrap();
    assert_eq!(whole.len() as u64, len);

    let part = get(&url, &[("range", "bytes=10-19"), ("if-range", &tag)]).await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{len}").as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), whole.slice(10..20));

    // If-Range on another file: the whole file, not a range of it.
    let other = get(
        &url,
        &[
            ("range", "bytes=10-19"),
            ("if-range", "\"0000000000000001\""),
        ],
    )
    .await;
    assert_eq!(other.status(), 200);
    // If-Match on another file: refused.
    let refused = get(&url, &[("if-match", "\"0000000000000001\"")]).await;
    assert_eq!(refused.status(), 412);
    let past = get(&url, &[("range", &format!("bytes={len}-"))]).await;
    assert_eq!(past.status(), 416);

    for bad in ["nope.memdb", "..%2Fleader.toml", "LOCK", "recent-1.memdb"] {
        let (status, body) = raw("GET", &format!("{}/files/{bad}", leader.url), None, vec![]).await;
        assert_eq!(status, 404, "{bad}: {body}");
        assert_eq!(body["reason"], "gone", "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_replica_maps_the_leaders_newer_files_under_its_words_and_lets_them_go() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "50ms"]);
    let c = leader.client();
    c.post_text(&words(0, 100)).await.unwrap();
    published(&leader).await;
    let r = Node::replica(&leader.url, &["--rebase-words", "200"]);
    wait_ready(&r).await;
    // New words and old ones raised: well past 200 in the replica's memory.
    for k in 0..20 {
        c.post_text(&format!("{} w000007", words(1_000 + k * 50, 50)))
            .await
            .unwrap();
    }
    let h = eventually("a rebase that let words go", || async {
        let h = r.health().await;
        (h["rebases"].as_u64() >= Some(1) && h["words_in_memory"].as_u64() < Some(200)).then_some(h)
    })
    .await;
    assert_eq!(h["words"], 1_100, "{h}");
    converged(&leader, &r).await;
    assert_eq!(counts(&r, &["w000007"]).await["w000007"], 21);
    // And it keeps following, exactly.
    c.post_text("w000007 after").await.unwrap();
    converged(&leader, &r).await;
    assert!(scrape_metric(&r, "memdb_rebases_total").await >= 1.0);
}
