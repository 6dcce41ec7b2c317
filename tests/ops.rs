//! Operations: `/metrics` on every role.

use std::collections::HashMap;

use crate::util::*;

/// Parses the OpenMetrics text format strictly enough to catch malformed lines:
/// `name{labels} value` per sample, HELP/TYPE comments before each family (a
/// counter's samples end in `_total`), `# EOF` last.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("no # EOF at the end of {text:?}"));
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.starts_with("memdb_"),
            "bad name in {line:?}"
        );
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE before {line:?}");
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line:?}");
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(node: &Node) -> HashMap<String, f64> {
    let resp = reqwest::get(format!("{}/metrics", node.url)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    parse(&resp.text().await.unwrap())
}

#[tokio::test]
async fn every_role_exposes_parseable_metrics_with_the_named_series() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &["--snapshot-interval", "20ms", "--fsync", "always"],
    );
    let replica = Node::replica(&leader.url, &[]);
    // Without the poll, and once connected, only the socket can tell it of the posts'
    // snapshots (the watch stands aside while the socket is up): a replica that started
    // late under load would otherwise map seq 5 at start and count no socket load.
    let local = Node::local(dir.path(), &["--poll-interval", "1h"]);
    wait_ready(&replica).await;
    wait_socket_connected(&local).await;
    for i in 0..5 {
        leader
            .client()
            .post_text(&format!("metric {i}"))
            .await
            .unwrap();
    }
    converged(&leader, &replica).await;
    converged(&leader, &local).await;
    for _ in 0..3 {
        counts(&replica, &["metric"]).await;
        counts(&local, &["metric"]).await;
    }
    eventually("snapshot of seq 5", || async {
        (leader.health().await["snapshot"]["seq"] == 5).then_some(())
    })
    .await;

    // Each request is logged at debug level (the tests run nodes with memdb=debug).
    assert!(
        leader
            .log()
            .contains("request method=POST path=\"/post\" status=202"),
        "{}",
        leader.log()
    );
    let m = scrape(&leader).await;
    assert_eq!(m["memdb_seq"], 5.0);
    assert_eq!(m["memdb_words_ingested_total"], 10.0);
    assert_eq!(m["memdb_snapshot_seq"], 5.0);
    assert_eq!(m["memdb_wal_durable_seq"], 5.0);
    assert!(m["memdb_wal_fsyncs_total"] >= 1.0);
    assert!(m["memdb_requests_total{route=\"/post\",status=\"2xx\"}"] >= 5.0);
    assert!(m["memdb_request_duration_seconds_count{route=\"/post\"}"] >= 5.0);
    let lag = format!("memdb_replica_lag_batches{{replica=\"{}\"}}", replica.url);
    assert_eq!(m[&lag], 0.0, "{m:?}");
    for series in [
        "memdb_replica_lag_seconds",
        "memdb_replica_log_pushes_total",
        "memdb_replica_resyncs_total",
    ] {
        let key = format!("{series}{{replica=\"{}\"}}", replica.url);
        assert_eq!(m[&key], 0.0, "{m:?}");
    }

    let m = scrape(&replica).await;
    assert_eq!((m["memdb_seq"], m["memdb_ready"]), (5.0, 1.0));
    assert!(m["memdb_requests_total{route=\"/wordcount\",status=\"2xx\"}"] >= 3.0);
    assert!(m["memdb_updates_applied_total"] >= 1.0);

    let m = scrape(&local).await;
    assert_eq!((m["memdb_seq"], m["memdb_ready"]), (5.0, 1.0));
    assert_eq!(m["memdb_rejected_snapshots_total"], 0.0);
    assert!(m["memdb_snapshot_age_seconds"] >= 0.0);
    assert!(
        m["memdb_snapshot_loads_total{source=\"socket\"}"] >= 1.0,
        "{m:?}\n{}",
        local.log()
    );
}

#[test]
fn readiness_is_announced_to_systemd() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
        .args(["leader", "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = sock.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("a readiness message");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
}

#[tokio::test]
async fn a_config_file_sets_defaults_that_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("memdb.toml");
    std::fs::write(
        &file,
        format!(
            "[leader]\nport = 0\ndata-dir = {:?}\ntokenizer = \"whitespace\"\nmax-body = \"2KiB\"\n\
             replica = [\"http://127.0.0.1:9\"]\n\n[replica]\nleader = \"http://127.0.0.1:1\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // Everything from the file: port, data dir, tokenizer, body limit, a replica list.
    let leader = Node::start(&["leader", "--config", f]);
    let h = leader.health().await;
    assert_eq!(h["tokenizer"], "whitespace");
    assert_eq!(h["replicas"][0]["url"], "http://127.0.0.1:9");
    let big = format!("text={}", "a ".repeat(1500));
    let (status, _) = raw(
        "POST",
        &format!("{}/post", leader.url),
        None,
        big.into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "max-body from the file");
    // The data dir from the file: its first snapshot is published (by the publisher
    // thread, right after start).
    eventually("the first snapshot in the file's data dir", || async {
        data.join("snapshot.memdb").exists().then_some(())
    })
    .await;
    drop(leader);
    // A flag wins over the file.
    let data2 = dir.path().join("data2");
    let leader = Node::start(&[
        "leader",
        "--config",
        f,
        "--tokenizer",
        "unicode",
        "--data-dir",
        data2.to_str().unwrap(),
    ]);
    assert_eq!(leader.health().await["tokenizer"], "unicode");
    drop(leader);
    // A typo is an error, not silently ignored.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[leader]\nsnapshot-intervall = \"1s\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
        .args(["leader", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown setting \"snapshot-intervall\""),
        "{err}"
    );
}

/// The listen backlog is the kernel's maximum (up to 4096), not 128, and the soft
/// open-file limit is raised to the hard one: a client opening a thousand connections
/// at once is neither dropped nor refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_listen_with_a_deep_backlog_and_the_full_fd_limit() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", leader.addr.port())])
        .output()
        .expect("ss (iproute2)");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    // State Recv-Q Send-Q Local Peer: for a listener, Send-Q is the backlog.
    let backlog: u32 = line
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no listener in {line:?}"));
    assert_eq!(backlog, somaxconn.min(4096), "{line}");

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", leader.pid())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = files.split_whitespace().collect();
    assert_eq!(v[3], v[4], "soft limit not raised to the hard one: {files}");
}
