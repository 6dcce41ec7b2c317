//! In-process nodes for request-level tests: a role's real router (every layer the
//! server uses), called with `tower::ServiceExt::oneshot`, with no process to start
//! and no socket. The replication, crash and signal tests run the binary instead.

#![allow(dead_code)]

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use memdb::config::{LeaderConfig, LocalReplicaConfig, ReplicaConfig};
use memdb::leader::Leader;
use memdb::replica::local::LocalReplica;
use memdb::replica::network::Replica;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;

/// What a router answered.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A node's router.
#[derive(Clone)]
pub struct App(pub Router);

impl App {
    /// Sends one request through the router.
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        token: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(body.into()).expect("a valid request");
        let resp = self.0.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("the whole body")
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `send` without a token; (status, JSON body).
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> (u16, Value) {
        let r = self.send(method, uri, content_type, None, body).await;
        (r.status, r.json())
    }

    pub async fn get(&self, uri: &str) -> (u16, Value) {
        self.call("GET", uri, None, Body::empty()).await
    }

    pub async fn post_text(&self, text: &str) -> Value {
        let (status, body) = self
            .call("POST", "/post", Some("text/plain"), text.to_owned())
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }

    pub async fn health(&self) -> Value {
        self.get("/health").await.1
    }

    /// The whole table, from `/sync`.
    pub async fn table(&self) -> Value {
        let (status, body) = self.get("/sync").await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A leader opened in this process, on its own temp dir.
pub struct InLeader {
    pub leader: Leader,
    pub app: App,
    pub dir: tempfile::TempDir,
}

impl InLeader {
    /// Opens a leader with the defaults, changed by `configure`.
    pub fn open(configure: impl FnOnce(&mut LeaderConfig)) -> InLeader {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut config = LeaderConfig::new(dir.path().join("data"));
        configure(&mut config);
        let leader = Leader::open(config).expect("the leader opens");
        let app = App(memdb::leader::leader_router(leader.clone()));
        InLeader { leader, app, dir }
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Also serves the leader on an ephemeral port of 127.0.0.1 (for replicas, which
    /// sync over HTTP); its URL.
    pub async fn listen(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(memdb::leader::serve(
            listener,
            self.leader.clone(),
            std::future::pending(),
        ));
        url
    }
}

/// A replica in this process (network or local), following its leader until dropped.
pub struct InReplica {
    pub app: App,
    _stop: DropGuard,
}

impl InReplica {
    /// A network replica of `leader_url`.
    pub fn network(leader_url: &str, configure: impl FnOnce(&mut ReplicaConfig)) -> InReplica {
        let mut config = ReplicaConfig::new(leader_url);
        configure(&mut config);
        // Pushes are not what these tests are about: the leader is told of an address
        // nothing listens on, and the replica syncs by itself.
        let replica = Replica::new(config, "http://127.0.0.1:9".to_owned()).unwrap();
        let stop = CancellationToken::new();
        replica.follow(&stop);
        InReplica {
            app: App(memdb::replica::network::routes::replica_router(replica)),
            _stop: stop.drop_guard(),
        }
    }

    /// A local replica of the leader whose data directory is `data_dir`.
    pub fn local(data_dir: &Path, configure: impl FnOnce(&mut LocalReplicaConfig)) -> InReplica {
        let mut config = LocalReplicaConfig::new(data_dir);
        configure(&mut config);
        let replica = LocalReplica::new(config);
        let stop = CancellationToken::new();
        replica.follow(&stop).expect("the reader's threads start");
        InReplica {
            app: App(memdb::replica::local::routes::local_replica_router(replica)),
            _stop: stop.drop_guard(),
        }
    }
}

/// Polls `app`'s `/health` until it says ready.
pub async fn wait_ready(app: &App) {
    crate::util::eventually("ready", || async {
        (app.get("/health").await.0 == 200).then_some(())
    })
    .await;
}
