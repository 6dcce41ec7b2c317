//! `scripts/cluster.sh`, which `make start-servers…` and `make stop-servers…` run: each
//! mode starts a cluster that serves and converges, a second start is refused and
//! leaves the running cluster alone, stop ends exactly the recorded processes, a second
//! stop is harmless, and the data stays. Runs in a temp run directory on free ports
//! below the ephemeral range, so it never touches a developer's cluster on :8080.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use memdb::client::Client;
use memdb::server::auth::Token;
use memdb::tls::ClientTls;

use crate::util::eventually;

/// A cluster started by the script. Stopped through the script on drop, so a failing
/// test leaves no process behind.
struct Script {
    run: tempfile::TempDir,
    mode: &'static str,
    ports: Vec<u16>,
    /// What the script runs as `memdb` (`MEMDB_BIN`); the test build's binary unless set.
    bin: PathBuf,
}

impl Script {
    /// `ports`: the leader's then the replicas' (network, local, tls), or the voters'
    /// (ha, each with a local replica one port up).
    fn new(mode: &'static str, ports: Vec<u16>) -> Script {
        Script {
            run: tempfile::tempdir().unwrap(),
            mode,
            ports,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_memdb")),
        }
    }

    fn run(&self, action: &str) -> Output {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let list = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("scripts/cluster.sh"))
            .args([action, self.mode])
            .current_dir(root)
            .env("MEMDB_BIN", &self.bin)
            .env("MEMDB_RUN_DIR", self.run.path())
            .stdin(Stdio::null());
        if self.mode == "ha" {
            cmd.env("MEMDB_VOTER_PORTS", list(&self.ports));
        } else {
            cmd.env("MEMDB_LEADER_PORT", self.ports[0].to_string())
                .env("MEMDB_REPLICA_PORTS", list(&self.ports[1..]));
        }
        cmd.output().expect("running scripts/cluster.sh")
    }

    fn dir(&self) -> PathBuf {
        self.run.path().join(self.mode)
    }

    /// The PIDs the script recorded.
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = std::fs::read_dir(self.dir().join("pids"))
            .unwrap()
            .map(|e| {
                std::fs::read_to_string(e.unwrap().path())
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect();
        pids.sort();
        pids
    }

    fn clients(&self, tls: &ClientTls, token: Option<Token>) -> (Client, Vec<Client>) {
        let scheme = if self.mode == "tls" { "https" } else { "http" };
        let client = |p: u16| {
            Client::with_tls(&format!("{scheme}://127.0.0.1:{p}"), tls).with_token(token.clone())
        };
        if self.mode == "ha" {
            // Writes go to any voter (a follower redirects); reads from the local
            // replica beside each voter and the voters themselves.
            let readers = self
                .ports
                .iter()
                .flat_map(|&p| [client(p), client(p + 1)])
                .collect();
            (client(self.ports[0]), readers)
        } else {
            let readers = self.ports[1..].iter().map(|&p| client(p)).collect();
            (client(self.ports[0]), readers)
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; the script's processes are not our children,
    // so once they exit init reaps them.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `n` free ports (each with the port one up free too when `pairs`), below the
/// ephemeral range where the other tests' port-0 listeners land.
fn free_ports(n: usize, pairs: bool) -> Vec<u16> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut seed = nanos ^ u64::from(std::process::id()) << 32 ^ calls << 48;
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = 20_000 + ((seed >> 33) % 10_000) as u16 * 2;
        let clash = ports.iter().any(|&q| q.abs_diff(p) < 2);
        if !clash && free(p) && (!pairs || free(p + 1)) {
            ports.push(p);
        }
    }
    ports
}

/// Start, serve, refuse a second start, stop, stop again.
async fn lifecycle(script: Script) {
    let started = script.run("start");
    assert!(started.status.success(), "{}", text(&started));
    let out = String::from_utf8_lossy(&started.stdout).into_owned();
    assert!(out.contains("is up"), "{out}");
    let pids = script.pids();
    let expected_processes = if script.mode == "ha" {
        6
    } else {
        script.ports.len()
    };
    assert_eq!(pids.len(), expected_processes, "{out}");
    assert!(pids.iter().all(|&p| alive(p)));

    let (tls, token) = if script.mode == "tls" {
        let certs = script.dir().join("certs");
        // What the script printed is what works: its CA file and its token.
        assert!(out.contains(&format!("--cacert {}", certs.join("ca.pem").display())));
        let secret = std::fs::read_to_string(script.dir().join("token")).unwrap();
        let tls = ClientTls::from_files(Some(&certs.join("ca.pem")), None, None).unwrap();
        (tls, Token::new(secret.trim()))
    } else {
        (ClientTls::default(), None)
    };
    if script.mode == "tls" {
        // The nodes have a peer token of their own: the writers' token (even with a
        // client certificate) does not open the replication routes.
        use std::os::unix::fs::PermissionsExt;
        let peer = script.dir().join("peer-token");
        let mode = std::fs::metadata(&peer).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let certs = script.dir().join("certs");
        let with_cert = ClientTls::from_files(
            Some(&certs.join("ca.pem")),
            Some(&certs.join("client.pem")),
            Some(&certs.join("client-key.pem")),
        )
        .unwrap();
        let (as_client, _) = script.clients(&with_cert, token.clone());
        match as_client.register("https://127.0.0.1:9", None).await {
            Err(memdb::client::ClientError::Status { status, .. }) => assert_eq!(status, 401),
            other => panic!("the client token registered a replica: {other:?}"),
        }
    }
    let token_for_health = token.clone();
    let (writer, readers) = script.clients(&tls, token);
    let words = "scripted cluster scripted";
    let reply = if script.mode == "ha" {
        writer.post_keyed(words, "script-test-1").await.unwrap()
    } else {
        writer.post_text(words).await.unwrap()
    };
    for r in &readers {
        let got = eventually(&format!("{} counts the post", r.base()), || async {
            let c = r
                .wordcount(&["scripted", "cluster"], Some(reply.seq))
                .await
                .ok()?;
            (c.get("scripted") == Some(&2)).then_some(c)
        })
        .await;
        assert_eq!(got.get("cluster"), Some(&1), "{}", r.base());
    }

    if matches!(script.mode, "local" | "ha") {
        // The leader lists the local replicas beside it (a voter, the one beside it),
        // at the post's seq.
        let beside: Vec<(Client, Vec<String>)> = if script.mode == "local" {
            let urls = readers
                .iter()
                .map(|r| r.base().trim_end_matches('/').to_owned());
            vec![(writer.clone(), urls.collect())]
        } else {
            script
                .ports
                .iter()
                .map(|&p| {
                    let c = Client::with_tls(&format!("http://127.0.0.1:{p}"), &tls)
                        .with_token(token_for_health.clone());
                    (c, vec![format!("http://127.0.0.1:{}", p + 1)])
                })
                .collect()
        };
        for (node, urls) in &beside {
            eventually(
                "the local replicas to be listed at the post's seq",
                || async {
                    let (_, h) = node.health().await.ok()?;
                    let listed = h["local_replicas"].as_array()?.clone();
                    urls.iter()
                        .all(|u| {
                            listed.iter().any(|l| {
                                l["kind"] == "local-replica"
                                    && l["url"].as_str() == Some(u.as_str())
                                    && l["seq"].as_u64() >= Some(reply.seq)
                            })
                        })
                        .then_some(())
                },
            )
            .await;
        }
    }

    // A second start: refused, naming how to stop the running one; nothing changed.
    let again = script.run("start");
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already running"), "{}", text(&again));
    assert!(err.contains("make stop-servers"), "{}", text(&again));
    assert_eq!(
        script.pids(),
        pids,
        "the running cluster's PID files are kept"
    );
    assert!(pids.iter().all(|&p| alive(p)));
    for r in &readers {
        let (status, _) = r.health().await.unwrap();
        assert_eq!(status.as_u16(), 200, "{} still serves", r.base());
    }

    // Stop: exactly the recorded processes end, the ports are free, the data stays.
    let stopped = script.run("stop");
    assert!(stopped.status.success(), "{}", text(&stopped));
    eventually("every recorded process has exited", || async {
        pids.iter().all(|&p| !alive(p)).then_some(())
    })
    .await;
    let mut ports = script.ports.clone();
    if script.mode == "ha" {
        ports.extend(script.ports.iter().map(|p| p + 1));
    }
    eventually("the cluster's ports are free", || async {
        ports.iter().all(|&p| free(p)).then_some(())
    })
    .await;
    let data = std::fs::read_dir(script.dir().join("data"))
        .unwrap()
        .count();
    assert!(data > 0, "stop keeps the data directory's contents");

    let twice = script.run("stop");
    assert!(twice.status.success(), "{}", text(&twice));
    assert!(
        String::from_utf8_lossy(&twice.stdout).contains("nothing was running"),
        "{}",
        text(&twice)
    );
}

#[tokio::test]
async fn make_start_servers_runs_a_network_cluster_and_stops_it_by_pid() {
    lifecycle(Script::new("network", free_ports(4, false))).await;
}

#[tokio::test]
async fn make_start_servers_local_replicas_runs_a_mapped_cluster_and_stops_it_by_pid() {
    lifecycle(Script::new("local", free_ports(4, false))).await;
}

#[tokio::test]
async fn make_start_servers_tls_runs_an_https_cluster_with_the_printed_ca_and_token() {
    lifecycle(Script::new("tls", free_ports(4, false))).await;
}

#[tokio::test]
async fn make_start_servers_ha_runs_a_raft_group_and_stops_it_by_pid() {
    lifecycle(Script::new("ha", free_ports(3, true))).await;
}

/// Between fork and exec a started process is still the shell (then nohup), and its
/// /proc cmdline reads empty for a moment during the exec. The script once took that
/// for a process that had died at start (a CI run failed so; 1 start in 190 by hand).
/// A launcher that takes 300 ms to exec memdb makes the window wide every time.
#[tokio::test]
async fn a_process_still_execing_memdb_is_not_taken_for_one_that_died() {
    let mut script = Script::new("network", free_ports(3, false));
    let launcher = script.run.path().join("slow-launcher");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nsleep 0.3\nexec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_memdb")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.bin = launcher;
    lifecycle(script).await;
}

#[tokio::test]
async fn a_start_on_a_port_in_use_starts_nothing_and_says_what_holds_it() {
    let ports = free_ports(4, false);
    let _squatter = TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    let script = Script::new("network", ports);
    let out = script.run("start");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not a cluster this script started; nothing was started"),
        "{}",
        text(&out)
    );
    assert!(script.pids().is_empty(), "no process was started");
}

/// `scripts/benchlib.py`, which every bench script builds on: a node on a port the
/// kernel picks, calls to it, a replica following it, memory read, stopped cleanly by
/// its PID, and the A/B rounds alternating.
#[test]
fn the_bench_library_runs_nodes_on_free_ports_and_stops_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = r#"
import os, sys, tempfile
sys.path.insert(0, "scripts")
import benchlib as b
with tempfile.TemporaryDirectory() as d:
    with b.Node(["leader", "--data-dir", d + "/l"]) as leader:
        r = b.post(leader.url + "/post", "text=hello+hello+world")
        assert r["words"] == 3, r
        with b.Node(["replica", "--leader", leader.url, "--heartbeat", "100ms"]) as rep:
            got = b.get(rep.url + "/wordcount?word=hello&min_seq=%d" % r["seq"])
            assert got == {"hello": 2}, got
        assert b.rss_mib(leader.pid) > 1, b.rss_mib(leader.pid)
        assert b.health(leader.url)[0] == 200
    assert leader.proc.returncode == 0, leader.proc.returncode
    assert not os.path.exists("/proc/%d/status" % leader.pid) or \
        "zombie" in open("/proc/%d/status" % leader.pid).read()
order = []
res = b.ab_rounds(2, "a", "b", lambda x: order.append(x) or x)
assert res == {"a": ["a", "a"], "b": ["b", "b"]}, res
assert order == ["a", "b", "b", "a"], order
print("benchlib ok")
"#;
    let mut child = Command::new("python3")
        .args(["-c", check])
        .current_dir(root)
        .env("MEMDB_BIN", env!("CARGO_BIN_EXE_memdb"))
        .stdin(Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = std::time::Instant::now() + crate::util::DEADLINE * 3;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the benchlib check did not finish in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("benchlib ok"),
        "{text}"
    );
}
