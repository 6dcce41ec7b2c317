//! A raft group of the real binary for the tests: voters on ephemeral ports, formed
//! with `POST /raft/init`; writes keyed and retried through any node until
//! acknowledged, so what a table must hold is exact.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::{DEADLINE, Node, eventually};

pub const TOKEN: &str = "group-secret";

/// Voter flags for groups that take snapshots often (every 20 entries) and send
/// appends big enough that a debug build needs more than the default heartbeat for
/// one: the append's timeout is the heartbeat interval.
pub const SNAPSHOTTING: [&str; 6] = [
    "--raft-snapshot-every",
    "20",
    "--election-timeout",
    "500ms",
    "--raft-heartbeat",
    "150ms",
];

/// Voters 1..=n, each with its own data directory, formed into one group.
pub struct Group {
    pub nodes: Vec<Node>,
    /// Whether each node runs (not killed); a paused node still counts as running.
    pub up: Vec<bool>,
    pub dirs: Vec<TempDir>,
    pub http: reqwest::Client,
}

/// `--election-timeout 200ms --raft-heartbeat 50ms` unless `extra` sets them.
pub fn voter_args(id: usize, dir: &TempDir, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--election-timeout".into(),
        "200ms".into(),
        "--raft-heartbeat".into(),
        "50ms".into(),
    ];
    if extra.contains(&"--election-timeout") {
        args.clear();
    }
    let mut head: Vec<String> = [
        "leader",
        "--port",
        "0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--node-id",
        &id.to_string(),
        "--auth-token",
        TOKEN,
        "--snapshot-interval",
        "100ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    head.append(&mut args);
    head.extend(extra.iter().map(|s| s.to_string()));
    head
}

pub fn http() -> reqwest::Client {
    http_with(reqwest::Client::builder())
}

/// The test's client of a group (with its token), built on `builder` (a TLS one).
pub fn http_with(builder: reqwest::ClientBuilder) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    builder
        .default_headers(headers)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

impl Group {
    /// Starts `n` voters and forms the group through voter 1.
    pub async fn start(n: usize, extra: &[&str]) -> Group {
        Group::start_with(n, extra, http()).await
    }

    /// As [`Group::start`], the test talking to the voters through `http`.
    pub async fn start_with(n: usize, extra: &[&str], http: reqwest::Client) -> Group {
        let dirs: Vec<TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes: Vec<Node> = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let args = voter_args(i + 1, d, extra);
                Node::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect();
        let g = Group {
            up: vec![true; n],
            nodes,
            dirs,
            http,
        };
        let members: BTreeMap<String, String> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| ((i + 1).to_string(), n.url.clone()))
            .collect();
        let r = g
            .http
            .post(format!("{}/raft/init", g.nodes[0].url))
            .json(&json!({ "members": members }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        g.leader().await;
        g
    }

    pub async fn raft(&self, i: usize) -> Option<Value> {
        health(&self.http, &self.nodes[i].url).await
    }

    /// The index of the node every running node agrees leads (waits for it).
    pub async fn leader(&self) -> usize {
        eventually("every running voter to agree on a leader", || async {
            let mut agreed = None;
            for i in (0..self.nodes.len()).filter(|i| self.up[*i]) {
                let h = self.raft(i).await?;
                let id = h["raft"]["leader_id"].as_u64()? as usize;
                if agreed.is_some_and(|a| a != id) {
                    return None;
                }
                agreed = Some(id);
            }
            let l = agreed? - 1;
            let h = self.raft(l).await?;
            (self.up[l] && h["raft"]["state"] == "leader").then_some(l)
        })
        .await
    }

    /// A membership change, sent to whoever leads, retried while leadership moves.
    pub async fn admin(&self, path: &str, body: Value) {
        let give_up = Instant::now() + DEADLINE;
        loop {
            let leader = self.leader().await;
            let r = self
                .http
                .post(format!("{}{path}", self.nodes[leader].url))
                .json(&body)
                .timeout(DEADLINE)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            if status == 200 {
                return;
            }
            if status == 202 {
                // A learner added and still catching up: wait until it has.
                let id = body["id"].as_u64().unwrap();
                eventually("the learner to catch up", || async {
                    let h = self.raft(leader).await?;
                    let members = h["raft"]["members"].as_array()?.clone();
                    let m = members.iter().find(|m| m["id"] == id)?;
                    (m["lag"].as_u64()? <= 16 && m["matched"].as_u64()? > 0).then_some(())
                })
                .await;
                return;
            }
            assert!(
                [421, 503].contains(&status.as_u16()) && Instant::now() < give_up,
                "{path} {body}: {status} {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.up[i] = false;
    }

    /// Kills voter `i` and empties its data directory (it stays down).
    pub fn wipe(&mut self, i: usize) {
        self.kill(i);
        let dir = self.dirs[i].path().to_owned();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
    }

    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.up[i] = true;
    }

    /// Waits until every running node has applied the same seq with the same digest
    /// and holds exactly `want`; returns the seq.
    pub async fn converged(&self, want: &HashMap<String, u64>) -> u64 {
        let seq = eventually("every running voter at one seq and digest", || async {
            let mut seen = None;
            for i in (0..self.nodes.len()).filter(|i| self.up[*i]) {
                let h = self.raft(i).await?;
                let at = (h["seq"].as_u64()?, h["digest"].as_str()?.to_owned());
                if seen.as_ref().is_some_and(|s| *s != at) {
                    return None;
                }
                seen = Some(at);
            }
            seen.map(|s| s.0)
        })
        .await;
        for i in (0..self.nodes.len()).filter(|i| self.up[*i]) {
            let got = table(&self.http, &self.nodes[i].url).await;
            assert_eq!(&got, want, "voter {} holds another table", i + 1);
        }
        seq
    }
}

/// `/health` as JSON, if the node answers within half a second.
pub async fn health(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(format!("{url}/health"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

pub async fn table(http: &reqwest::Client, url: &str) -> HashMap<String, u64> {
    http.get(format!("{url}/sync"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Posts `text` with `key` until some node acknowledges it (202), trying the nodes
/// in turn from `from` and following redirects. Returns the seq.
pub async fn post_until_acked(
    http: &reqwest::Client,
    urls: &[String],
    from: usize,
    text: &str,
    key: &str,
    deadline: Duration,
) -> u64 {
    let give_up = Instant::now() + deadline;
    let mut i = from;
    loop {
        let r = http
            .post(format!("{}/post", urls[i % urls.len()]))
            .header("idempotency-key", key)
            .form(&[("text", text)])
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 202
        {
            let v: Value = r.json().await.unwrap();
            return v["seq"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < give_up,
            "write {key} not acknowledged within {deadline:?}"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `writers` clients each writing `per` texts "wW nI shared" with key "W-I", each
/// retried until acknowledged. Returns the table that must result.
pub fn expected(writers: usize, per: usize) -> HashMap<String, u64> {
    let mut want = HashMap::new();
    for w in 0..writers {
        for i in 0..per {
            for word in [format!("w{w}"), format!("n{i}"), "shared".to_string()] {
                *want.entry(word).or_insert(0) += 1;
            }
        }
    }
    want
}

/// Runs the writers; `acked` counts acknowledgements as they come.
pub fn spawn_writers(
    urls: Vec<String>,
    writers: usize,
    per: usize,
    acked: Arc<AtomicU64>,
    last_ack: Arc<parking_lot::Mutex<Option<Instant>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let urls = urls.clone();
            let acked = acked.clone();
            let last_ack = last_ack.clone();
            tokio::spawn(async move {
                let http = http();
                for i in 0..per {
                    let text = format!("w{w} n{i} shared");
                    post_until_acked(
                        &http,
                        &urls,
                        w + i,
                        &text,
                        &format!("{w}-{i}"),
                        DEADLINE * 2,
                    )
                    .await;
                    acked.fetch_add(1, Ordering::Relaxed);
                    *last_ack.lock() = Some(Instant::now());
                }
            })
        })
        .collect()
}
