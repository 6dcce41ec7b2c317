//! Connections and memory stay bounded by default: idle and half-sent requests time
//! out, connections are capped (and refusals logged), request bodies share a byte
//! budget, an oversized declared body is refused before `100 Continue`, and the rate
//! limit spares health, metrics and replication.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::*;

fn connect(node: &Node) -> TcpStream {
    let s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads until the server closes or `deadline`; what it sent.
fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(dir.path(), &["--idle-timeout", "300ms"]);
    // Half a request's headers, then nothing.
    let mut half = connect(&leader);
    half.write_all(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-")
        .unwrap();
    // A keep-alive connection that goes quiet after one request.
    let mut idle = connect(&leader);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    read_until_closed(&mut half);
    assert!(started.elapsed() < DEADLINE);

    // With no timeout at all, a half-sent request still cannot hold a shutdown for
    // long: in-flight requests get a bounded drain.
    drop(leader);
    let dir = tempfile::tempdir().unwrap();
    let leader2 = Node::leader(dir.path(), &["--idle-timeout", "0"]);
    leader = leader2;
    let mut half = connect(&leader);
    half.write_all(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(leader.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &["--max-connections", "4", "--idle-timeout", "0"],
    );
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&leader)).collect();
    // Each held connection is served: the cap counts them.
    for mut s in held.iter().take(1) {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    let mut extra = connect(&leader);
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = read_until_closed(&mut extra);
    assert!(got.is_empty(), "served past the cap: {got}");
    eventually("the refusal logged", || async {
        leader
            .log()
            .contains("connection limit reached")
            .then_some(())
    })
    .await;
    drop(held);
    // Once they are gone, the node serves again, and counts what it refused.
    let m = eventually("served again", || async {
        let r = reqwest::get(format!("{}/metrics", leader.url)).await.ok()?;
        r.text().await.ok()
    })
    .await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("memdb_connections_refused_total ") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_over_budget_bodies_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &["--max-body", "64KiB", "--max-body-in-flight", "100KiB"],
    );
    // A declared body over --max-body: 413 at once, no 100 Continue.
    let mut s = connect(&leader);
    s.write_all(
        b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-memdb-seq"), "{head}");

    // One 60 KiB body in flight (sent slowly) holds most of the 100 KiB budget...
    let mut slow = connect(&leader);
    slow.write_all(
        b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 61440\r\n\r\nslow ",
    )
    .unwrap();
    eventually("the slow body charged to the budget", || async {
        (scrape_metric(&leader, "memdb_body_bytes_in_flight").await >= 61440.0).then_some(())
    })
    .await;
    // ...so a second one is refused at once, with a JSON 503, before its body is
    // read: it sends only its head (sending the body too would race the server's
    // close against the client's writes).
    let mut second = connect(&leader);
    second
        .write_all(
            b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 61440\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let refused = read_until_closed(&mut second);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("in flight"), "{refused}");
    // The first completes normally; then the budget is back.
    slow.write_all(&vec![b'b'; 61440 - 5]).unwrap();
    let n = slow.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 202"));
    let r = reqwest::Client::new()
        .post(format!("{}/post", leader.url))
        .header("content-type", "text/plain")
        .body(vec![b'a'; 61440])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_flood_under_the_rate_limit_spares_health_and_replication() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let replica = Node::replica(&leader.url, &["--rate-limit", "5"]);
    wait_ready(&replica).await;
    let http = reqwest::Client::new();
    let url = format!("{}/wordcount?word=x", replica.url);
    let mut limited = None;
    for _ in 0..50 {
        let r = http.get(&url).send().await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("no 429 from a flood");
    assert!(
        r.headers().contains_key("x-memdb-seq"),
        "a 429 without the seq header"
    );
    // While the bucket is empty: health answers, and pushes still apply.
    for i in 0..20 {
        let _ = http.get(&url).send().await;
        leader
            .client()
            .post_text(&format!("flood{i}"))
            .await
            .unwrap();
    }
    assert_eq!(replica.client().health().await.unwrap().0, 200);
    converged(&leader, &replica).await;
}
