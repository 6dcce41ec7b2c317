//! TLS with generated certificates: clusters of each replica kind over HTTPS, mutual
//! TLS on the replication routes, nodes that must not trust each other, plain HTTP to a
//! TLS port, and certificate rotation on SIGHUP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memdb::tls::ClientTls;
use memdb::tls::certs::{Ca, Issued};
use serde_json::Value;

use crate::util::{Node, converged, eventually, signal, wait_ready};

/// A CA and files issued by it in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new(name).unwrap(),
        };
        std::fs::write(pki.ca_file(), pki.ca.cert_pem()).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}-key.pem"))
    }

    /// Issues `name` for `hosts` into `name.pem` and `name-key.pem`.
    fn issue(&self, name: &str, hosts: &[&str]) -> Issued {
        let issued = self.ca.issue(name, hosts).unwrap();
        issued.write(&self.cert(name), &self.key(name)).unwrap();
        issued
    }

    /// A node's TLS flags: serve `name`'s pair, trust this CA, and with `mutual`
    /// require client certificates from it on the replication routes.
    fn node_flags(&self, name: &str, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            path(&self.cert(name)),
            "--tls-key".to_owned(),
            path(&self.key(name)),
            "--tls-ca".to_owned(),
            path(&self.ca_file()),
        ];
        if mutual {
            flags.extend(["--tls-client-ca".to_owned(), path(&self.ca_file())]);
        }
        flags
    }

    /// A client that trusts this CA and presents `name`'s certificate, if given.
    fn client(&self, name: Option<&str>) -> ClientTls {
        let (cert, key) = (name.map(|n| self.cert(n)), name.map(|n| self.key(n)));
        ClientTls::from_files(Some(&self.ca_file()), cert.as_deref(), key.as_deref()).unwrap()
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// (status, JSON body) of a request through `tls`.
async fn call(
    tls: &ClientTls,
    method: &str,
    url: &str,
    body: &str,
) -> Result<(u16, Value), String> {
    let http = tls.builder().build().unwrap();
    let mut req = http.request(method.parse().unwrap(), url);
    if !body.is_empty() {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
    }
    let resp = req.send().await.map_err(|e| memdb::tls::error_chain(&e))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, json))
}

/// The subject of the certificate `addr` serves now (a fresh handshake).
async fn served_subject(addr: std::net::SocketAddr, ca: &Path) -> String {
    let roots = memdb::tls::read_roots(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(memdb::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = connector.connect(name, tcp).await.unwrap();
    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
    memdb::tls::server::CertInfo::of(cert).unwrap().subject
}

fn words(i: usize) -> String {
    format!("alpha beta w{} w{} gamma{}", i % 97, i % 13, i % 5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_of_each_replica_kind_converges_exactly() {
    let pki = Pki::new("cluster CA");
    pki.issue("node", &["127.0.0.1", "localhost"]);
    pki.issue("client", &["client"]);
    let data = tempfile::tempdir().unwrap();
    let flags = pki.node_flags("node", true);
    let tools = pki.client(Some("client"));
    let leader = Node::leader(data.path(), &refs(&flags)).with_client_tls(tools.clone());
    assert!(leader.url.starts_with("https://"), "{}", leader.url);
    let replica = Node::replica(&leader.url, &refs(&flags)).with_client_tls(tools.clone());
    let local = Node::local(data.path(), &refs(&flags)).with_client_tls(tools.clone());
    wait_ready(&replica).await;

    let mut expected: HashMap<String, u64> = HashMap::new();
    let c = leader.client();
    for i in 0..300 {
        let text = words(i);
        for w in text.split(' ') {
            *expected.entry(w.to_owned()).or_default() += 1;
        }
        c.post_text(&text).await.unwrap();
    }
    let got = converged(&leader, &replica).await;
    assert_eq!(got, expected, "the network replica over TLS");
    assert_eq!(
        converged(&leader, &local).await,
        expected,
        "the local replica"
    );
    // The leader pushed to the replica over HTTPS, presenting its certificate.
    let h = leader.health().await;
    assert!(
        h["replicas"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://"),
        "{h}"
    );
    assert_eq!(h["tls"]["client_certificates_required"], true, "{h}");
    assert_eq!(h["tls"]["subject"], "CN=node", "{h}");

    // Plain HTTP to the TLS port: a 400 that says to use https://, and nothing applied.
    let seq = leader.seq().await;
    let plain = reqwest::Client::new()
        .post(format!("http://{}/post", leader.addr))
        .form(&[("text", "plain text")])
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 400);
    let body: Value = plain.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("https://"),
        "{body}"
    );
    assert_eq!(leader.seq().await, seq, "a plain-HTTP post applied nothing");
    let (_, metrics) = call(&tools, "GET", &format!("{}/metrics", leader.url), "")
        .await
        .unwrap();
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("memdb_tls_plain_http_refused_total 1"),
        "{metrics}"
    );
    assert!(leader.log().contains("plain HTTP on the TLS port"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_asks_replication_routes_for_a_certificate_from_its_ca() {
    let pki = Pki::new("cluster CA");
    pki.issue("node", &["127.0.0.1"]);
    pki.issue("client", &["client"]);
    let other = Pki::new("another CA");
    other.issue("node", &["127.0.0.1"]);
    other.issue("client", &["client"]);
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(data.path(), &refs(&pki.node_flags("node", true)));
    let url = leader.url.clone();

    // No client certificate: reads and writes work, replication routes answer 403.
    let anonymous = pki.client(None);
    let (s, _) = call(&anonymous, "POST", &format!("{url}/post"), "text=one+two")
        .await
        .unwrap();
    assert_eq!(s, 202);
    let (s, b) = call(&anonymous, "GET", &format!("{url}/wordcount?word=one"), "")
        .await
        .unwrap();
    assert_eq!((s, &b["one"]), (200, &Value::from(1)), "{b}");
    for (method, route, body) in [
        ("GET", "/sync", ""),
        ("POST", "/replicas", r#"{"url":"https://127.0.0.1:9"}"#),
    ] {
        let (s, b) = call(&anonymous, method, &format!("{url}{route}"), body)
            .await
            .unwrap();
        assert_eq!(s, 403, "{method} {route}: {b}");
        assert!(
            b["error"].as_str().unwrap().contains("client certificate"),
            "{b}"
        );
    }
    // The node's document says so of exactly those routes.
    let (s, doc) = call(&anonymous, "GET", &format!("{url}/openapi.json"), "")
        .await
        .unwrap();
    assert_eq!(s, 200);
    for (path, method, forbids) in [
        ("/sync", "get", true),
        ("/replicas", "post", true),
        ("/replicas", "delete", true),
        ("/post", "post", false),
        ("/wordcount", "get", false),
    ] {
        let op = &doc["paths"][path][method];
        assert_eq!(
            op["responses"].get("403").is_some(),
            forbids,
            "{method} {path}: {op}"
        );
    }
    // A certificate from another CA: the handshake is refused, nothing is applied.
    // (It trusts the cluster's CA, so it is the leader that refuses the handshake.)
    let foreign = ClientTls::from_files(
        Some(&pki.ca_file()),
        Some(&other.cert("client")),
        Some(&other.key("client")),
    )
    .unwrap();
    let seq = {
        let (_, h) = call(
            &pki.client(Some("client")),
            "GET",
            &format!("{url}/health"),
            "",
        )
        .await
        .unwrap();
        h["seq"].as_u64().unwrap()
    };
    let err = call(&foreign, "POST", &format!("{url}/post"), "text=forged")
        .await
        .expect_err("a client certificate from another CA is refused");
    assert!(!err.is_empty());
    eventually("the refused handshake logged", || async {
        leader.log().contains("TLS handshake failed").then_some(())
    })
    .await;
    assert!(leader.log().contains("UnknownIssuer"), "{}", leader.log());
    // The right certificate: the replication routes answer.
    let ours = pki.client(Some("client"));
    let (s, b) = call(&ours, "GET", &format!("{url}/sync"), "")
        .await
        .unwrap();
    assert_eq!((s, &b), (200, &serde_json::json!({"one": 1, "two": 1})));
    let (_, h) = call(&ours, "GET", &format!("{url}/health"), "")
        .await
        .unwrap();
    assert_eq!(
        h["seq"].as_u64().unwrap(),
        seq,
        "the foreign post applied nothing"
    );
    // A TLS leader will not push the token in clear to a replica on another host.
    let (s, b) = call(
        &ours,
        "POST",
        &format!("{url}/replicas"),
        r#"{"url":"http://10.0.0.2:8081"}"#,
    )
    .await
    .unwrap();
    assert_eq!(s, 400, "{b}");
    assert!(b["error"].as_str().unwrap().contains("in clear"), "{b}");

    // A replica whose certificate another CA signed cannot join, and says why.
    let mut flags = other.node_flags("node", false);
    flags.splice(4..6, ["--tls-ca".to_owned(), path(&pki.ca_file())]);
    let replica = Node::replica(&url, &refs(&flags)).with_client_tls(other.client(None));
    eventually("the replica's refusal logged", || async {
        let log = replica.log();
        (log.contains("BadCertificate") || log.contains("UnknownCA")).then_some(())
    })
    .await;
    let (code, h) = replica.client().health().await.unwrap();
    assert_eq!(code.as_u16(), 503, "{h}");
    assert_eq!(h["ready"], false, "{h}");
    let (_, listed) = call(&ours, "GET", &format!("{url}/replicas"), "")
        .await
        .unwrap();
    assert_eq!(
        listed["replicas"].as_array().map_or(0, Vec::len),
        0,
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_a_leader_it_cannot_verify() {
    let pki = Pki::new("cluster CA");
    pki.issue("node", &["127.0.0.1"]);
    let other = Pki::new("another CA");
    other.issue("node", &["127.0.0.1"]);
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(data.path(), &refs(&pki.node_flags("node", false)))
        .with_client_tls(pki.client(None));
    // Trusting another CA.
    let wrong_ca = Node::replica(&leader.url, &refs(&other.node_flags("node", false)))
        .with_client_tls(other.client(None));
    // The right CA, but a name the leader's certificate does not carry.
    let wrong_host = format!("https://localhost:{}", leader.addr.port());
    let wrong_name = Node::replica(&wrong_host, &refs(&pki.node_flags("node", false)))
        .with_client_tls(pki.client(None));
    for (replica, why) in [
        (&wrong_ca, "UnknownIssuer"),
        (&wrong_name, "certificate not valid for name"),
    ] {
        eventually(&format!("the replica logs {why}"), || async {
            replica.log().contains(why).then_some(())
        })
        .await;
        let (code, h) = replica.client().health().await.unwrap();
        assert_eq!(
            (code.as_u16(), &h["ready"]),
            (503, &Value::Bool(false)),
            "{h}"
        );
        // Its /health says why it has no data, not `null`.
        let err = h["last_sync_error"].as_str().unwrap_or_default();
        assert!(err.contains(why), "{h}");
    }
    let h = leader.health().await;
    assert_eq!(h["replicas"].as_array().unwrap().len(), 0, "{h}");

    // An expired certificate (served by a bare rustls server: memdb refuses to serve
    // one): `memdb status` refuses it and says so.
    let expired = pki.ca.issue_expired("old", &["127.0.0.1"]).unwrap();
    let certs = rustls::pki_types::pem::PemObject::pem_slice_iter(expired.cert_pem().as_bytes())
        .collect::<Result<Vec<rustls::pki_types::CertificateDer>, _>>()
        .unwrap();
    let key: rustls::pki_types::PrivateKeyDer =
        rustls::pki_types::pem::PemObject::from_pem_slice(expired.key_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(memdb::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let ca_file = pki.ca_file();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_memdb"))
            .args(["status", "--url", &format!("https://{addr}"), "--tls-ca"])
            .arg(ca_file)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("expired"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_and_refuses_a_bad_pair_without_dropping_the_cluster() {
    let pki = Pki::new("cluster CA");
    let first = pki.ca.issue("node-1", &["127.0.0.1"]).unwrap();
    first.write(&pki.cert("node"), &pki.key("node")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let flags = pki.node_flags("node", true);
    pki.issue("client", &["client"]);
    let tools = pki.client(Some("client"));
    let leader = Node::leader(data.path(), &refs(&flags)).with_client_tls(tools.clone());
    let replica = Node::replica(&leader.url, &refs(&flags)).with_client_tls(tools.clone());
    wait_ready(&replica).await;
    let c = leader.client();
    for i in 0..50 {
        c.post_text(&words(i)).await.unwrap();
    }
    converged(&leader, &replica).await;
    assert_eq!(
        served_subject(leader.addr, &pki.ca_file()).await,
        "CN=node-1"
    );

    // A new pair from the same CA, then SIGHUP: new connections get it.
    pki.ca
        .issue("node-2", &["127.0.0.1"])
        .unwrap()
        .write(&pki.cert("node"), &pki.key("node"))
        .unwrap();
    signal(&leader, "-HUP");
    eventually("the new certificate served", || async {
        (served_subject(leader.addr, &pki.ca_file()).await == "CN=node-2").then_some(())
    })
    .await;
    let h = leader.health().await;
    assert_eq!(h["tls"]["last_reload"]["ok"], true, "{h}");
    assert!(
        leader
            .log()
            .contains("TLS CA for calls to other nodes reloaded")
    );

    // A bad pair (another certificate with the old key): refused, the pair in use
    // keeps serving, and the node says so.
    let third = pki.ca.issue("node-3", &["127.0.0.1"]).unwrap();
    std::fs::write(pki.cert("node"), third.cert_pem()).unwrap();
    signal(&leader, "-HUP");
    let h = eventually("the refused reload reported", || async {
        let h = leader.health().await;
        (h["tls"]["last_reload"]["ok"] == false).then_some(h)
    })
    .await;
    assert!(
        h["tls"]["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("is not the key of"),
        "{h}"
    );
    assert_eq!(h["tls"]["subject"], "CN=node-2", "{h}");
    assert_eq!(h["status"], "ok", "a refused reload is not an outage: {h}");
    assert!(leader.log().contains("TLS reload refused"));
    assert_eq!(
        served_subject(leader.addr, &pki.ca_file()).await,
        "CN=node-2"
    );

    // The cluster kept going through both: more writes arrive, no resync was needed.
    for i in 50..100 {
        c.post_text(&words(i)).await.unwrap();
    }
    converged(&leader, &replica).await;
    let r = replica.health().await;
    assert_eq!(r["syncs"], 1, "{r}");
    // A node without TLS survives SIGHUP too (it has nothing to reload).
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Node::leader(plain_dir.path(), &[]);
    wait_ready(&plain).await; // It serves, so it listens for SIGHUP.
    signal(&plain, "-HUP");
    eventually("the plain node logs the SIGHUP", || async {
        plain.log().contains("nothing to reload").then_some(())
    })
    .await;
    wait_ready(&plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_group_over_mutual_tls_elects_replicates_and_fails_over() {
    use crate::util::DEADLINE;
    use crate::util::group::{Group, http_with, post_until_acked};
    let pki = Pki::new("group CA");
    pki.issue("node", &["127.0.0.1"]);
    pki.issue("client", &["client"]);
    let flags = pki.node_flags("node", true);
    let tools = pki.client(Some("client"));
    let mut g = Group::start_with(3, &refs(&flags), http_with(tools.builder())).await;
    assert!(g.nodes.iter().all(|n| n.url.starts_with("https://")));
    let mut want: HashMap<String, u64> = HashMap::new();
    for i in 0..40 {
        let text = words(i);
        for w in text.split(' ') {
            *want.entry(w.to_owned()).or_default() += 1;
        }
        let key = format!("k{i}");
        let seq = post_until_acked(&g.http, &g.urls(), 0, &text, &key, DEADLINE).await;
        assert!(seq > 0);
    }
    g.converged(&want).await;
    // The leader killed: the others elect one over TLS and take writes.
    let old = g.leader().await;
    g.kill(old);
    let new = g.leader().await;
    assert_ne!(new, old);
    let text = "after the failover";
    for w in text.split(' ') {
        *want.entry(w.to_owned()).or_default() += 1;
    }
    post_until_acked(&g.http, &g.urls(), new, text, "after", DEADLINE).await;
    g.converged(&want).await;
    // No voter presented anything but its own certificate: no handshake was refused.
    for i in (0..3).filter(|i| *i != old) {
        assert!(
            !g.nodes[i].log().contains("TLS handshake failed"),
            "{}",
            g.nodes[i].log()
        );
    }
}

/// `/health` of `node`, read without verifying its certificate (it may have expired).
async fn health_unverified(node: &Node) -> (u16, Value) {
    let resp = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("{}/health", node.url))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_while_serving_fails_health_until_a_new_pair_is_loaded() {
    let pki = Pki::new("cluster CA");
    // Long enough for the three nodes to start (a node refuses an expired pair at start).
    let short = pki
        .ca
        .issue_expiring("node", &["127.0.0.1"], std::time::Duration::from_secs(12))
        .unwrap();
    short.write(&pki.cert("node"), &pki.key("node")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let flags = pki.node_flags("node", false);
    let leader = Node::leader(data.path(), &refs(&flags));
    let local = Node::local(data.path(), &refs(&flags));
    let replica = Node::replica(&leader.url, &refs(&flags));
    for node in [&leader, &local, &replica] {
        eventually("ok before the expiry", || async {
            let (status, h) = health_unverified(node).await;
            (status == 200 && h["status"] == "ok").then_some(())
        })
        .await;
    }
    for node in [&leader, &local, &replica] {
        // Not "stale" on the local replica: its mapping is fine, the certificate fails.
        let (status, h) = eventually("the expiry reported as failing in /health", || async {
            let (status, h) = health_unverified(node).await;
            (h["status"] == "failing").then_some((status, h))
        })
        .await;
        assert_eq!(status, 503, "{h}");
        let problem = h["problem"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| h["problems"].to_string());
        assert!(problem.contains("expired"), "{h}");
        assert!(h["tls"]["expires_in_s"].as_i64().unwrap() <= 0, "{h}");
    }

    // A fresh pair and SIGHUP: each recovers, with no restart.
    pki.issue("node", &["127.0.0.1"]);
    for node in [&leader, &local, &replica] {
        signal(node, "-HUP");
        // "ok", not just 200: a loaded machine may leave the local replica briefly
        // "stale" (also 200), which passes by itself.
        let h = eventually("ok again after the reload", || async {
            let (status, h) = health_unverified(node).await;
            (status == 200 && h["status"] == "ok").then_some(h)
        })
        .await;
        assert_eq!(h["tls"]["last_reload"]["ok"], true, "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_the_peer_routes_want_a_certificate_from_the_nodes_ca_even_unasked() {
    // --tls-ca but no --tls-client-ca: the CA the node trusts its peers by is the one
    // their client certificates must come from.
    let pki = Pki::new("cluster CA");
    pki.issue("node", &["127.0.0.1"]);
    pki.issue("client", &["client"]);
    let data = tempfile::tempdir().unwrap();
    let leader = Node::leader(data.path(), &refs(&pki.node_flags("node", false)))
        .with_client_tls(pki.client(None));
    let url = leader.url.clone();
    let (s, b) = call(&pki.client(None), "GET", &format!("{url}/sync"), "")
        .await
        .unwrap();
    assert_eq!(s, 403, "{b}");
    let (s, _) = call(
        &pki.client(Some("client")),
        "GET",
        &format!("{url}/sync"),
        "",
    )
    .await
    .unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        leader.health().await["tls"]["client_certificates_required"],
        true
    );
}
