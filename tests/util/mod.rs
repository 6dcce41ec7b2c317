//! Test support, the one module every test file takes helpers from: run the real
//! `memdb` binary on ephemeral ports, poll with deadlines, and always clean up the
//! processes. [`group`]: a raft group of such processes; [`inproc`]: a role's router
//! in-process, for request-level tests.

#![allow(dead_code)]

pub mod group;
pub mod inproc;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memdb::client::Client;
use serde_json::Value;

/// How long anything in a test may take to happen before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `memdb` process. Killed (SIGKILL) and reaped on drop.
pub struct Node {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub url: String,
    pub args: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// What the test's clients trust (and present) for a node serving TLS.
    pub client_tls: Option<memdb::tls::ClientTls>,
    /// The node's $TMPDIR (a network replica's default data directory is made there):
    /// removed with the node, so a killed one leaves nothing behind.
    _tmp: tempfile::TempDir,
}

impl Node {
    /// Starts `memdb <args>` and waits until it has bound (it writes the address to
    /// the file given with `--addr-file`).
    pub fn start(args: &[&str]) -> Node {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let addr_dir = tempfile::tempdir().expect("a temp dir for the address file");
        let addr_file = addr_dir.path().join("addr");
        let tmp = tempfile::tempdir().expect("a temp dir for the node");
        let mut child = Command::new(env!("CARGO_BIN_EXE_memdb"))
            .args(&args)
            .arg("--addr-file")
            .arg(&addr_file)
            .env("TMPDIR", tmp.path())
            .env("RUST_LOG", "memdb=debug")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning memdb");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + DEADLINE;
        let addr: SocketAddr = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                break text
                    .trim()
                    .parse()
                    .expect("a socket address in the address file");
            }
            let exited = child.try_wait().expect("try_wait");
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait();
                // Let the log readers catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "memdb {args:?} did not start ({status:?}); log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let scheme = if args.iter().any(|a| a == "--tls-cert") {
            "https"
        } else {
            "http"
        };
        Node {
            child: Some(child),
            url: format!("{scheme}://{addr}"),
            addr,
            args,
            log,
            client_tls: None,
            _tmp: tmp,
        }
    }

    /// A leader on an ephemeral port with its data in `dir`.
    pub fn leader(dir: &Path, extra: &[&str]) -> Node {
        let mut args = vec!["leader", "--port", "0", "--data-dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        Node::start(&args)
    }

    /// A network replica of `leader_url` on an ephemeral port.
    pub fn replica(leader_url: &str, extra: &[&str]) -> Node {
        let mut args = vec![
            "replica",
            "--port",
            "0",
            "--leader",
            leader_url,
            "--heartbeat",
            "100ms",
        ];
        args.extend_from_slice(extra);
        Node::start(&args)
    }

    /// A local replica reading the leader's data directory `dir`.
    pub fn local(dir: &Path, extra: &[&str]) -> Node {
        let mut args = vec![
            "local-replica",
            "--port",
            "0",
            "--data-dir",
            dir.to_str().unwrap(),
        ];
        if !extra.contains(&"--poll-interval") {
            args.extend_from_slice(&["--poll-interval", "100ms"]);
        }
        args.extend_from_slice(extra);
        Node::start(&args)
    }

    /// Starts the same command again on the same port (after a kill or a stop).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node before restarting it");
        let port = self.addr.port().to_string();
        let mut args = self.args.clone();
        let i = args.iter().position(|a| a == "--port").expect("--port");
        args[i + 1] = port;
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + DEADLINE;
        // The port was just freed; binding it again can race a lingering socket.
        let fresh = loop {
            let r = std::panic::catch_unwind(|| Node::start(&refs));
            match r {
                Ok(n) => break n,
                Err(e) if Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let mut fresh = fresh;
        fresh.args = self.args.clone();
        fresh.client_tls = self.client_tls.clone();
        std::mem::swap(self, &mut fresh);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn client(&self) -> Client {
        match &self.client_tls {
            Some(tls) => Client::with_tls(&self.url, tls),
            None => Client::new(&self.url),
        }
    }

    /// The test's clients of this node trust (and present) `tls`.
    pub fn with_client_tls(mut self, tls: memdb::tls::ClientTls) -> Node {
        self.client_tls = Some(tls);
        self
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = c.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("node did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `GET /health` as JSON (panics if unreachable).
    pub async fn health(&self) -> Value {
        self.client().health().await.expect("health").1
    }

    pub async fn seq(&self) -> u64 {
        self.health().await["seq"].as_u64().expect("seq in health")
    }

    /// `GET /sync` as a plain map.
    pub async fn table(&self) -> HashMap<String, u64> {
        self.client()
            .sync()
            .await
            .expect("sync")
            .map
            .iter()
            .map(|(w, n)| (w.to_owned(), n))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it returns `Some`, failing the test with `what` after the
/// deadline.
/// `GET url` as JSON, if it answers with JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` answers `/health` with 200.
pub async fn wait_ready(node: &Node) {
    let c = node.client();
    eventually(&format!("{} ready", node.url), || {
        let c = c.clone();
        async move {
            match c.health().await {
                Ok((s, _)) if s.is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await
}

/// Waits until `replica` follows the leader's incarnation at the leader's seq, then
/// asserts it holds exactly the leader's table.
pub async fn converged(leader: &Node, replica: &Node) -> HashMap<String, u64> {
    let want = leader.client().sync().await.expect("leader sync");
    let (seq, inc) = (want.seq, want.incarnation);
    eventually(
        &format!("{} to converge to seq {seq}", replica.url),
        || async {
            let s = replica.client().sync().await.ok()?;
            (s.seq == seq && s.incarnation == inc).then_some(())
        },
    )
    .await;
    let got = replica.table().await;
    let want: HashMap<String, u64> = want.map.iter().map(|(w, n)| (w.to_owned(), n)).collect();
    assert_eq!(got, want, "replica {} differs from the leader", replica.url);
    got
}

/// `GET /wordcount` for several words on `node`.
pub async fn counts(node: &Node, words: &[&str]) -> HashMap<String, u64> {
    node.client()
        .wordcount(words, None)
        .await
        .expect("wordcount")
}

/// A raw HTTP request for the bad-input tests: (status, JSON body).
pub async fn raw(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method.parse().unwrap(), url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("body of {method} {url} is not JSON: {text:?}"));
    (status, json)
}

/// Posts `n` texts to `leader` from 4 concurrent clients; `text(t, i)` makes client t's
/// i-th text.
pub async fn concurrent_posts(leader: &Node, n: usize, text: fn(usize, usize) -> String) {
    let mut tasks = Vec::new();
    for t in 0..4 {
        let c = leader.client();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                c.post_text(&text(t, i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits until the local replica `local` is connected to its leader's socket.
pub async fn wait_socket_connected(local: &Node) {
    eventually(
        &format!("{} connected to the leader's socket", local.url),
        || async { (local.health().await["socket_connected"] == true).then_some(()) },
    )
    .await
}

/// The value of the unlabelled series `name` in `node`'s `/metrics`.
pub async fn scrape_metric(node: &Node, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", node.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// A `GET /wordcount` that must succeed: the seq header and the counts.
pub async fn counts_with_seq(http: &reqwest::Client, url: &str) -> (u64, HashMap<String, u64>) {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seq: u64 = resp.headers()["x-memdb-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (seq, resp.json().await.unwrap())
}

/// Sends `sig` (`-STOP`, `-CONT`, `-HUP`, …) to a node's process.
pub fn signal(node: &Node, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &node.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// A small xorshift generator: a seed reproduces the faults.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `MEMDB_FAULT_SEED`, or else `default`; the seed is printed so that a
    /// failing run can be repeated.
    pub fn seeded(default: u64) -> Rng {
        let seed = std::env::var("MEMDB_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        eprintln!("fault seed {seed} (MEMDB_FAULT_SEED={seed} reproduces this run)");
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
