//! Leader → network replica replication: one ordered sender task per replica.
//!
//! A sender knows the seq its replica has acknowledged and pushes everything after it
//! from the [`Backlog`], coalesced into one `POST /update` (deltas for the same word add
//! up), so a replica that is behind costs one request however many batches it missed,
//! and the leader's write path only ever pushes to the backlog and bumps a watch: it is
//! never blocked or slowed by a slow or dead replica.
//!
//! The replica applies a push only if it starts at its own seq; otherwise it answers with
//! its seq and the sender resends from there (duplicates are acknowledged, not applied).
//! When the backlog no longer reaches back that far, the sender reads the batches
//! from the write-ahead log instead (which keeps more history, on disk); only when the
//! log does not reach back either does it ask the replica to full-sync from the
//! leader's `GET /sync`.

mod link;
mod sender;

pub use link::{Link, LinkReport, LinkStatus, LogSource};
pub use sender::coalesce;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::leader::backlog::Backlog;
use crate::protocol::Incarnation;
use crate::words::Tokenizer;
use link::{Ctx, LinkState};
use sender::run_link;

/// The leader's replicas and their sender tasks.
pub struct ReplicaSet {
    ctx: Arc<Ctx>,
    links: Mutex<Vec<Arc<Link>>>,
    tasks: Mutex<JoinSet<()>>,
    /// At most this many replicas (static ones included).
    max: usize,
    /// Registered replicas silent for longer than this are removed.
    timeout: Duration,
}

/// Why a replica URL is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaUrlError {
    #[error(transparent)]
    Origin(#[from] crate::origin::OriginError),
    #[error("the leader already has its maximum of {0} replicas (--max-replicas)")]
    Full(usize),
    #[error("{0}")]
    Plain(String),
}

impl ReplicaSet {
    /// `seq_rx` follows the leader's latest seq; batches are read from `backlog`, and
    /// from the write-ahead `log` when the backlog no longer has them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backlog: Arc<Mutex<Backlog>>,
        log: Option<LogSource>,
        seq_rx: watch::Receiver<u64>,
        incarnation: Incarnation,
        tokenizer: Tokenizer,
        linger: Duration,
        token: Option<crate::server::auth::Token>,
        secret: String,
        max: usize,
        timeout: Duration,
        tls: &crate::tls::ClientTls,
    ) -> Self {
        let http = tls
            .builder()
            .connect_timeout(Duration::from_secs(1))
            // Below the servers' --idle-timeout (30 s): a pooled connection is dropped
            // here before the server closes it under a request.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .build()
            .expect("an HTTP client with a built TLS config always builds");
        ReplicaSet {
            ctx: Arc::new(Ctx {
                backlog,
                seq_rx,
                incarnation,
                tokenizer,
                http,
                acks: watch::Sender::new(0),
                linger,
                token,
                tls: tls.clone(),
                secret,
                log,
                abort: CancellationToken::new(),
            }),
            links: Mutex::new(Vec::new()),
            tasks: Mutex::new(JoinSet::new()),
            max,
            timeout,
        }
    }

    /// Adds a replica (a plain origin, see [`crate::origin::origin`]) and starts its sender,
    /// unless it is already known, in which case this is its heartbeat. Must be called
    /// within a tokio runtime. Returns whether it was new.
    pub fn add(&self, url: &str, static_: bool) -> Result<bool, ReplicaUrlError> {
        let url = crate::origin::origin(url)?;
        self.ctx
            .tls
            .check_peer(&url)
            .map_err(ReplicaUrlError::Plain)?;
        let mut links = self.links.lock();
        if let Some(l) = links.iter().find(|l| l.url == url) {
            *l.last_seen.lock() = Instant::now();
            return Ok(false);
        }
        if links.len() >= self.max {
            return Err(ReplicaUrlError::Full(self.max));
        }
        let link = Arc::new(Link {
            url,
            static_,
            last_seen: Mutex::new(Instant::now()),
            removed: AtomicBool::new(false),
            state: Mutex::new(LinkState {
                acked: None,
                status: LinkStatus::Connecting,
                last_error: None,
                last_ok: None,
                pushes: 0,
                log_pushes: 0,
                resyncs: 0,
            }),
            wake: tokio::sync::Notify::new(),
        });
        links.push(link.clone());
        tracing::info!(replica = %link.url, static_, "replica added");
        let mut tasks = self.tasks.lock();
        // Reap the tasks of removed links as we go, so the set does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(run_link(link, self.ctx.clone()));
        Ok(true)
    }

    /// Removes a replica and stops its sender. Returns whether it was known.
    pub fn remove(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        let mut links = self.links.lock();
        let Some(i) = links.iter().position(|l| l.url == url) else {
            return false;
        };
        let link = links.swap_remove(i);
        drop(links);
        link.removed.store(true, Ordering::Release);
        link.wake.notify_one();
        tracing::info!(replica = %link.url, "replica removed");
        true
    }

    /// Removes registered replicas whose last heartbeat is older than the timeout.
    /// Returns how many went.
    pub fn expire(&self) -> usize {
        let stale: Vec<String> = self
            .links
            .lock()
            .iter()
            .filter(|l| !l.static_ && l.last_seen.lock().elapsed() > self.timeout)
            .map(|l| l.url.clone())
            .collect();
        for url in &stale {
            tracing::warn!(replica = %url, timeout = ?self.timeout, "replica missed its heartbeats: removed");
            self.remove(url);
        }
        stale.len()
    }

    /// Runs [`ReplicaSet::expire`] every quarter of the timeout until the set shuts down.
    pub fn spawn_expiry(self: &Arc<Self>) {
        let set = Arc::downgrade(self);
        let (every, abort) = (self.timeout / 4, self.ctx.abort.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every.max(Duration::from_millis(10))) => {}
                    _ = abort.cancelled() => return,
                }
                match set.upgrade() {
                    Some(s) => s.expire(),
                    None => return,
                };
            }
        });
    }

    pub fn len(&self) -> usize {
        self.links.lock().len()
    }

    /// A replica's own report of its seq (from its heartbeat). If the sender does not
    /// know it yet (a replica that just adopted this incarnation), it starts from there.
    /// If it is behind what the sender believes, a push was acknowledged without being
    /// applied (or the replica lost it): believe the replica and resend from there.
    pub fn report(&self, url: &str, seq: u64) {
        let url = url.trim_end_matches('/');
        let links = self.links.lock();
        let Some(link) = links.iter().find(|l| l.url == url) else {
            return;
        };
        let mut s = link.state.lock();
        if s.acked.is_none() {
            s.acked = Some(seq);
            drop(s);
            link.wake.notify_one();
        } else if s.acked.is_some_and(|a| seq < a) {
            tracing::warn!(replica = %link.url, reported = seq, believed = ?s.acked, "replica reports an older seq than acknowledged: resending");
            s.acked = Some(seq);
            drop(s);
            link.wake.notify_one();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reports(&self) -> Vec<LinkReport> {
        let latest = *self.ctx.seq_rx.borrow();
        let mut reports: Vec<LinkReport> = self
            .links
            .lock()
            .iter()
            .map(|l| {
                let s = l.state.lock();
                LinkReport {
                    url: l.url.clone(),
                    status: s.status,
                    acked_seq: s.acked,
                    lag: s.acked.map(|a| latest.saturating_sub(a)),
                    lag_ms: None,
                    last_ok_ms_ago: s.last_ok.map(|t| t.elapsed().as_millis() as u64),
                    last_error: s.last_error.clone(),
                    pushes: s.pushes,
                    log_pushes: s.log_pushes,
                    resyncs: s.resyncs,
                }
            })
            .collect();
        // The backlog is locked after the links, never while holding them.
        let backlog = self.ctx.backlog.lock();
        for r in &mut reports {
            r.lag_ms = r.acked_seq.and_then(|a| match backlog.lacking_since(a) {
                None if a >= backlog.last_seq() => Some(0),
                None => None,
                Some(t) => Some(t.elapsed().as_millis() as u64),
            });
        }
        reports
    }

    /// How many replicas have acknowledged `seq`.
    pub fn count_acked(&self, seq: u64) -> usize {
        self.links
            .lock()
            .iter()
            .filter(|l| l.acked().is_some_and(|a| a >= seq))
            .count()
    }

    /// Waits until at least `n` replicas have applied `seq`, for at most `timeout`.
    /// `Err` carries how many had.
    pub async fn wait_acks(&self, seq: u64, n: usize, timeout: Duration) -> Result<(), usize> {
        let mut rx = self.ctx.acks.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if self.count_acked(seq) >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.count_acked(seq)),
        }
    }

    /// Waits until every reachable replica has applied `seq`, for at most `timeout`.
    /// Replicas whose last push failed are not waited for: a dead replica must not
    /// hold a shutdown for the whole timeout. Returns whether they all did.
    pub async fn drain(&self, seq: u64, timeout: Duration) -> bool {
        let n = self
            .links
            .lock()
            .iter()
            .filter(|l| l.state.lock().status == LinkStatus::Ok)
            .count();
        self.wait_acks(seq, n, timeout).await.is_ok()
    }

    /// Stops every sender and waits for the tasks to end.
    pub async fn shutdown(&self) {
        self.ctx.abort.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock());
        while tasks.join_next().await.is_some() {}
    }
}
