//! Faults between the leader and a replica: a proxy that loses requests, loses
//! responses, delivers stale copies late, and even acknowledges pushes it never
//! delivered. The replica must still end up exactly equal to the leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::OnceCell;

use crate::util::*;

/// What the proxy does to the n-th non-empty push.
#[derive(Clone, Copy)]
enum Fault {
    Deliver,
    /// Never forwarded; the leader sees a 502.
    LoseRequest,
    /// Forwarded and applied; the leader sees a 502 instead of the answer.
    LoseResponse,
    /// The leader sees a 502 now; a copy is delivered 30 ms later.
    DeliverLate,
    /// Never forwarded, but the leader is told it was applied.
    FalseAck,
}

struct Proxy {
    target: OnceCell<String>,
    http: reqwest::Client,
    pushes: AtomicU64,
    plan: Box<dyn Fn(u64) -> Fault + Send + Sync>,
}

async fn forward(p: &Proxy, headers: &HeaderMap, body: Bytes) -> Option<(u16, Bytes)> {
    let target = p.target.get()?;
    let mut req = p.http.post(format!("{target}/update")).body(body);
    for (k, v) in headers {
        if k.as_str().starts_with("x-memdb") || k == "content-type" {
            req = req.header(k.as_str(), v.as_bytes());
        }
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.bytes().await.ok()?))
}

async fn update(State(p): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    let to: u64 = headers
        .get("x-memdb-to-seq")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let from: u64 = headers
        .get("x-memdb-from-seq")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let fault = if to > from {
        (p.plan)(p.pushes.fetch_add(1, Ordering::SeqCst))
    } else {
        Fault::Deliver
    };
    let bad_gateway = || (StatusCode::BAD_GATEWAY, "{}").into_response();
    match fault {
        Fault::Deliver => match forward(&p, &headers, body).await {
            Some((status, bytes)) => (StatusCode::from_u16(status).unwrap(), bytes).into_response(),
            None => bad_gateway(),
        },
        Fault::LoseRequest => bad_gateway(),
        Fault::LoseResponse => {
            let _ = forward(&p, &headers, body).await;
            bad_gateway()
        }
        Fault::DeliverLate => {
            let p = p.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = forward(&p, &headers, body).await;
            });
            bad_gateway()
        }
        Fault::FalseAck => axum::Json(serde_json::json!({ "seq": to })).into_response(),
    }
}

async fn start_proxy(plan: impl Fn(u64) -> Fault + Send + Sync + 'static) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy {
        target: OnceCell::new(),
        http: reqwest::Client::new(),
        pushes: AtomicU64::new(0),
        plan: Box::new(plan),
    });
    let app = Router::new()
        .route("/update", axum::routing::post(update))
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (proxy, url)
}

/// A replica of `leader` that the leader reaches only through `proxy` (at `proxy_url`),
/// once it has synced.
async fn replica_behind(proxy: &Proxy, proxy_url: &str, leader: &Node) -> Node {
    let r = Node::replica(&leader.url, &["--advertise", proxy_url]);
    proxy.target.set(r.url.clone()).unwrap();
    wait_ready(&r).await;
    r
}

/// A proxy that delivers the first `delivered` pushes and falsely acknowledges the
/// rest while the returned flag is set.
async fn blocking_proxy(delivered: u64) -> (Arc<AtomicBool>, Arc<Proxy>, String) {
    let blocked = Arc::new(AtomicBool::new(true));
    let b = blocked.clone();
    let (proxy, url) = start_proxy(move |n| {
        if n >= delivered && b.load(Ordering::SeqCst) {
            Fault::FalseAck
        } else {
            Fault::Deliver
        }
    })
    .await;
    (blocked, proxy, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_stale_and_falsely_acknowledged_pushes_are_repaired() {
    let (proxy, proxy_url) = start_proxy(|n| match n % 7 {
        1 => Fault::LoseRequest,
        2 => Fault::LoseResponse,
        3 => Fault::DeliverLate,
        5 => Fault::FalseAck,
        _ => Fault::Deliver,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let r = replica_behind(&proxy, &proxy_url, &leader).await;
    concurrent_posts(&leader, 400, |t, i| format!("w{} common t{t}", i % 17)).await;
    let t = converged(&leader, &r).await;
    assert_eq!(t["common"], 400);
    assert!(
        proxy.pushes.load(Ordering::SeqCst) >= 7,
        "faults were exercised"
    );
    let h = r.health().await;
    assert!(
        h["gaps"].as_u64().unwrap() > 0,
        "a false ack causes a gap: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_beyond_the_backlog_is_repaired_from_the_log() {
    // Pushes 3..=12 are acknowledged but never delivered; the backlog keeps only 2, so
    // the missing batches can only come from the write-ahead log.
    let (proxy, proxy_url) = start_proxy(|n| {
        if (3..=12).contains(&n) {
            Fault::FalseAck
        } else {
            Fault::Deliver
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--backlog", "2"]);
    let r = replica_behind(&proxy, &proxy_url, &leader).await;
    let c = leader.client();
    for i in 0..40 {
        c.post_text(&format!("item {i}")).await.unwrap();
    }
    let t = converged(&leader, &r).await;
    assert_eq!(t["item"], 40);
    // Pushes coalesce under load, so how many there were varies; false acks happened.
    let pushes = proxy.pushes.load(Ordering::SeqCst);
    assert!(pushes >= 4, "faults were exercised: {pushes} pushes");
    let lh = leader.health().await;
    let link = &lh["replicas"][0];
    assert_eq!(link["resyncs"], 0, "no full sync was needed: {lh}");
    assert!(link["log_pushes"].as_u64().unwrap() >= 1, "{lh}");
    let h = r.health().await;
    assert_eq!(h["syncs"], 1, "only the initial sync: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_beyond_the_backlog_and_the_log_is_repaired_by_a_full_sync() {
    // Every push after the second is falsely acknowledged until the log no longer
    // holds what the replica misses: tiny segments, nothing retained, frequent
    // snapshots.
    let (blocked, proxy, proxy_url) = blocking_proxy(2).await;
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &[
            "--backlog",
            "2",
            "--wal-segment-size",
            "1",
            "--wal-retain",
            "0",
            "--snapshot-interval",
            "10ms",
        ],
    );
    let r = replica_behind(&proxy, &proxy_url, &leader).await;
    let c = leader.client();
    for i in 0..40 {
        c.post_text(&format!("item {i}")).await.unwrap();
    }
    let posted = std::sync::atomic::AtomicU64::new(40);
    eventually(
        "the leader to give up on the log and ask for a full sync",
        || async {
            let lh = leader.health().await;
            if lh["replicas"][0]["resyncs"].as_u64().unwrap() >= 1 {
                return Some(());
            }
            // On a loaded machine the posts so far can coalesce into the two pushes
            // that are delivered: post more until some are lost.
            c.post_text("item").await.unwrap();
            posted.fetch_add(1, Ordering::SeqCst);
            None
        },
    )
    .await;
    blocked.store(false, Ordering::SeqCst);
    c.post_text("after").await.unwrap();
    let t = converged(&leader, &r).await;
    assert_eq!((t["item"], t["after"]), (posted.load(Ordering::SeqCst), 1));
    let h = r.health().await;
    assert!(h["syncs"].as_u64().unwrap() >= 2, "re-synced: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_crashed_leader_catches_up_from_its_log_after_restart() {
    // The replica gets only the first push; the rest are falsely acknowledged, so when
    // the leader is SIGKILLed the replica is far behind, and the restarted leader's
    // backlog is empty: only its log holds what the replica misses.
    let (blocked, proxy, proxy_url) = blocking_proxy(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut leader = Node::leader(
        dir.path(),
        &["--fsync", "always", "--snapshot-interval", "1h"],
    );
    let r = replica_behind(&proxy, &proxy_url, &leader).await;
    let c = leader.client();
    c.post_text("first").await.unwrap();
    converged(&leader, &r).await;
    for i in 0..30 {
        c.post_text(&format!("item {i}")).await.unwrap();
    }
    assert_eq!(r.seq().await, 1, "the replica is behind");
    leader.kill();
    blocked.store(false, Ordering::SeqCst);
    leader.restart();
    let t = converged(&leader, &r).await;
    assert_eq!((t["first"], t["item"]), (1, 30));
    let h = r.health().await;
    assert_eq!(
        (h["syncs"].as_u64(), h["continued_across_restarts"].as_u64()),
        (Some(1), Some(1)),
        "followed the restarted leader without a full sync: {h}"
    );
    let lh = leader.health().await;
    let link = &lh["replicas"][0];
    assert_eq!(link["resyncs"], 0, "{lh}");
    assert!(link["log_pushes"].as_u64().unwrap() >= 1, "{lh}");
}

#[tokio::test]
async fn out_of_order_pushes_are_refused_with_the_replicas_seq() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &[]);
    let r = Node::replica(&leader.url, &[]);
    wait_ready(&r).await;
    leader.client().post_text("one").await.unwrap();
    converged(&leader, &r).await;
    let inc = leader.health().await["incarnation"]
        .as_str()
        .unwrap()
        .to_owned();
    // Playing the leader takes its push secret (a replica learns it by registering).
    let (_, reg) = raw(
        "POST",
        &format!("{}/replicas", leader.url),
        Some("application/json"),
        format!(r#"{{"url": "{}"}}"#, r.url).into_bytes(),
    )
    .await;
    let secret = reg["push_secret"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let push = |from: u64, to: u64, inc: &str, body: &'static str| {
        http.post(format!("{}/update", r.url))
            .header("x-memdb-from-seq", from)
            .header("x-memdb-to-seq", to)
            .header("x-memdb-incarnation", inc)
            .header("x-memdb-push-secret", &secret)
            .body(body)
            .send()
    };
    // A batch from the future: refused, with the replica's seq, nothing applied.
    let resp = push(5, 6, &inc, r#"{"one": 100}"#).await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (body["seq"].as_u64(), body["reason"].as_str()),
        (Some(1), Some("gap"))
    );
    // A batch it already has: acknowledged, not applied twice.
    let resp = push(0, 1, &inc, r#"{"one": 1}"#).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(counts(&r, &["one"]).await["one"], 1);
    converged(&leader, &r).await;
}
