//! The processes that map this leader's published files, as the leader sees them:
//! local replicas and embedded readers, each connected to the notification socket.
//!
//! The socket says who is connected (the kernel's `SO_PEERCRED`: process id and user);
//! a peer of protocol 2 says what it is (`hello`: a local replica with the URL it
//! serves at, or a reader) and, after every load, the seq it mapped (`loaded`) or why
//! it could not (`failed`). From the times of its own publications the leader works out
//! each one's lag: in seqs, and in milliseconds since it published the first state the
//! peer has not mapped. A local replica too far behind, or whose last load failed, is
//! a `/health` problem; a reader is listed but never a problem (it may refresh by
//! hand, or pause). A peer is forgotten when its connection closes, and a local
//! replica's URL is checked against the pid its `/health` gives: a peer that claims a
//! URL served by another process is disconnected.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::protocol::PeerKind;
use crate::server::metrics::Series;

/// The most peers listed at once; a connection beyond it is closed at once.
pub const MAX_PEERS: usize = 256;
/// Publications remembered for the lag in milliseconds (older ones: the oldest kept).
const PUBLICATIONS: usize = 4096;
/// How long the leader tries a local replica's URL before it leaves it unverified.
const VERIFY_FOR: Duration = Duration::from_secs(30);

/// When a local replica's lag is a problem: more than `intervals` publish intervals
/// behind, and more than `floor` (`--local-lag-intervals`, `--local-lag-floor`).
#[derive(Debug, Clone, Copy)]
pub struct LagLimit {
    pub intervals: u32,
    pub floor: Duration,
    pub interval: Duration,
}

impl LagLimit {
    pub fn limit(&self) -> Duration {
        (self.interval * self.intervals).max(self.floor)
    }
}

/// One connected peer.
struct Peer {
    pid: Option<i32>,
    uid: Option<u32>,
    /// `None` until it says `hello` (a peer of protocol 1 never does).
    kind: Option<PeerKind>,
    version: Option<String>,
    url: Option<String>,
    /// Whether the URL's `/health` named this peer's pid (`None`: not checked yet).
    url_verified: Option<bool>,
    since: SystemTime,
    since_at: Instant,
    /// The seq it mapped last, and how long that load took.
    seq: Option<u64>,
    load_micros: Option<u64>,
    loads: u64,
    last_error: Option<String>,
    /// Whether its last load failed.
    failing: bool,
    /// Cancelled to disconnect it.
    kick: CancellationToken,
}

/// A peer as `/health` lists it (`local_replicas`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LocalReport {
    /// `local-replica`, `reader`, or `unknown` (a peer of protocol 1: an older memdb).
    pub kind: &'static str,
    /// From the socket (`SO_PEERCRED`), not from the peer's word.
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    /// The URL a local replica serves at.
    pub url: Option<String>,
    /// Whether that URL's `/health` named this pid (`null` while not checked).
    pub url_verified: Option<bool>,
    /// The memdb version it says it runs.
    pub version: Option<String>,
    /// The seq it mapped last (`null` before its first load).
    pub seq: Option<u64>,
    /// Seqs it is behind this leader's last publication.
    pub lag: Option<u64>,
    /// Milliseconds since this leader published the first state it has not mapped; 0
    /// when it has mapped the last.
    pub lag_ms: Option<u64>,
    /// How long its last load took.
    pub last_load_ms: Option<f64>,
    /// Loads it reported since it connected.
    pub loads: u64,
    /// Why a load failed, the last time one did.
    pub last_error: Option<String>,
    /// Whether its last load failed (it serves the state before).
    pub failing: bool,
    /// When it connected, in milliseconds since the Unix epoch.
    pub connected_since_ms: u64,
    /// Why it is a problem, if it is one.
    pub problem: Option<String>,
}

/// The peers of this leader's socket (cheap to clone).
#[derive(Clone)]
pub struct Locals(Arc<Inner>);

struct Inner {
    peers: Mutex<BTreeMap<u64, Peer>>,
    /// Never reused: a finished peer's check of its URL cannot touch a newer peer.
    next_id: AtomicU64,
    /// This leader's recent publications: (seq, when), oldest first.
    published: Mutex<VecDeque<(u64, Instant)>>,
    limit: LagLimit,
    /// Checks the URLs local replicas claim.
    http: Option<reqwest::Client>,
}

impl Locals {
    /// `http`: the client the claimed URLs are checked with (`None`: not checked).
    pub fn new(limit: LagLimit, http: Option<reqwest::Client>) -> Locals {
        Locals(Arc::new(Inner {
            peers: Mutex::default(),
            next_id: AtomicU64::new(0),
            published: Mutex::default(),
            limit,
            http,
        }))
    }

    /// A new connection from `pid`/`uid`; `None` when [`MAX_PEERS`] are listed.
    pub fn connect(&self, pid: Option<i32>, uid: Option<u32>) -> Option<(u64, CancellationToken)> {
        let mut peers = self.0.peers.lock();
        if peers.len() >= MAX_PEERS {
            return None;
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let kick = CancellationToken::new();
        peers.insert(
            id,
            Peer {
                pid,
                uid,
                kind: None,
                version: None,
                url: None,
                url_verified: None,
                since: SystemTime::now(),
                since_at: Instant::now(),
                seq: None,
                load_micros: None,
                loads: 0,
                last_error: None,
                failing: false,
                kick: kick.clone(),
            },
        );
        Some((id, kick))
    }

    /// The connection closed: the peer leaves the list.
    pub fn disconnect(&self, id: u64) {
        self.0.peers.lock().remove(&id);
    }

    /// Its `hello`. A peer may say it again (a URL known later) but not change kind,
    /// and a local replica names its URL.
    pub fn hello(
        &self,
        id: u64,
        kind: PeerKind,
        version: String,
        url: Option<String>,
    ) -> Result<(), String> {
        let check = {
            let mut peers = self.0.peers.lock();
            let Some(p) = peers.get_mut(&id) else {
                return Ok(());
            };
            if p.kind.is_some_and(|k| k != kind) {
                return Err(format!(
                    "said it was a {}, now a {}",
                    p.kind.unwrap().as_str(),
                    kind.as_str()
                ));
            }
            if kind == PeerKind::LocalReplica && url.is_none() {
                return Err("a local replica names the URL it serves at".to_owned());
            }
            let changed = p.url != url;
            p.kind = Some(kind);
            p.version = Some(version);
            if changed {
                p.url = url.clone();
                p.url_verified = None;
            }
            (changed && kind == PeerKind::LocalReplica)
                .then(|| (url.unwrap_or_default(), p.pid, p.kick.clone()))
        };
        if let (Some((url, Some(pid), kick)), Some(http)) = (check, self.0.http.clone()) {
            tokio::spawn(verify(self.clone(), id, url, pid, kick, http));
        }
        Ok(())
    }

    /// It mapped `seq`, in `micros`.
    pub fn loaded(&self, id: u64, seq: u64, micros: u64) {
        if let Some(p) = self.0.peers.lock().get_mut(&id) {
            p.seq = Some(seq);
            p.load_micros = Some(micros);
            p.loads += 1;
            p.failing = false;
        }
    }

    /// A load failed.
    pub fn failed(&self, id: u64, why: String) {
        if let Some(p) = self.0.peers.lock().get_mut(&id) {
            p.last_error = Some(why);
            p.failing = true;
        }
    }

    /// This leader published `seq`.
    pub fn published(&self, seq: u64) {
        let mut p = self.0.published.lock();
        if p.back().is_some_and(|(s, _)| *s >= seq) {
            return;
        }
        if p.len() == PUBLICATIONS {
            p.pop_front();
        }
        p.push_back((seq, Instant::now()));
    }

    /// Every peer, local replicas first, oldest connection first within a kind.
    pub fn reports(&self) -> Vec<LocalReport> {
        let published = self.0.published.lock().clone();
        let now = Instant::now();
        let limit = self.0.limit.limit();
        let peers = self.0.peers.lock();
        let mut out: Vec<LocalReport> = peers
            .values()
            .map(|p| report(p, &published, now, limit))
            .collect();
        out.sort_by_key(|r| r.kind != PeerKind::LocalReplica.as_str());
        out
    }

    /// The local replicas that are problems, each with why.
    pub fn problems(&self) -> Vec<String> {
        self.reports()
            .into_iter()
            .filter_map(|r| r.problem)
            .collect()
    }

    /// `/metrics`: how many are connected, by kind; each local replica's lag.
    pub fn collect(&self, m: &mut Series<'_>) {
        let reports = self.reports();
        m.gauges(
            "memdb_local_replicas",
            "Processes connected to the notification socket, by kind.",
            "kind",
            ["local-replica", "reader", "unknown"].into_iter().map(|k| {
                (
                    k.to_owned(),
                    reports.iter().filter(|r| r.kind == k).count() as f64,
                )
            }),
        );
        let locals: Vec<&LocalReport> = reports
            .iter()
            .filter(|r| r.kind == "local-replica")
            .collect();
        let name = |r: &LocalReport| r.url.clone().unwrap_or_default();
        m.gauges(
            "memdb_local_replica_lag_seqs",
            "Seqs a local replica is behind the last publication (-1 before its first load).",
            "replica",
            locals
                .iter()
                .map(|r| (name(r), r.lag.map_or(-1.0, |l| l as f64))),
        );
        m.gauges(
            "memdb_local_replica_lag_seconds",
            "Seconds since the first publication a local replica has not mapped; 0 when current.",
            "replica",
            locals
                .iter()
                .map(|r| (name(r), r.lag_ms.map_or(-1.0, |l| l as f64 / 1e3))),
        );
        m.gauges(
            "memdb_local_replica_failing",
            "1 while a local replica's last load failed.",
            "replica",
            locals
                .iter()
                .map(|r| (name(r), f64::from(u8::from(r.failing)))),
        );
    }

    /// How the leader's check of a claimed URL ended.
    fn verified(&self, id: u64, ok: bool) {
        if let Some(p) = self.0.peers.lock().get_mut(&id) {
            p.url_verified = Some(ok);
        }
    }
}

fn report(
    p: &Peer,
    published: &VecDeque<(u64, Instant)>,
    now: Instant,
    limit: Duration,
) -> LocalReport {
    let last = published.back().map_or(0, |(s, _)| *s);
    let mapped = p.seq.unwrap_or(0);
    // Behind since the first publication it lacks, and not before it connected.
    let behind_since = (mapped < last).then(|| {
        let first = published
            .iter()
            .find(|(s, _)| *s > mapped)
            .or(published.front())
            .map_or(now, |(_, t)| *t);
        first.max(p.since_at)
    });
    let lag_ms = p
        .kind
        .map(|_| behind_since.map_or(0, |t| now.duration_since(t).as_millis() as u64));
    let kind = p.kind.map_or("unknown", PeerKind::as_str);
    let who = || {
        format!(
            "local replica {} (pid {})",
            p.url.as_deref().unwrap_or("?"),
            p.pid.map_or("?".to_owned(), |x| x.to_string())
        )
    };
    let problem = if p.kind != Some(PeerKind::LocalReplica) {
        None
    } else if p.failing {
        Some(format!(
            "{}: its last load failed, it serves seq {mapped}: {}",
            who(),
            p.last_error.as_deref().unwrap_or("")
        ))
    } else if lag_ms.is_some_and(|l| l > limit.as_millis() as u64) {
        Some(format!(
            "{} is {} ms behind (seq {mapped} mapped, {last} published; the limit is {} ms)",
            who(),
            lag_ms.unwrap_or(0),
            limit.as_millis()
        ))
    } else {
        None
    };
    LocalReport {
        kind,
        pid: p.pid,
        uid: p.uid,
        url: p.url.clone(),
        url_verified: p.url_verified,
        version: p.version.clone(),
        seq: p.seq,
        lag: p.kind.map(|_| last.saturating_sub(mapped)),
        lag_ms,
        last_load_ms: p.load_micros.map(|m| m as f64 / 1e3),
        loads: p.loads,
        last_error: p.last_error.clone(),
        failing: p.failing,
        connected_since_ms: p
            .since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        problem,
    }
}

/// Asks `url`'s `/health` whose it is: the peer's own pid confirms the claim; another
/// pid refutes it, and the peer is disconnected. No answer within [`VERIFY_FOR`] leaves
/// it unverified.
async fn verify(
    locals: Locals,
    id: u64,
    url: String,
    pid: i32,
    kick: CancellationToken,
    http: reqwest::Client,
) {
    let give_up = Instant::now() + VERIFY_FOR;
    while Instant::now() < give_up && !kick.is_cancelled() {
        let answer = http
            .get(format!("{}/health", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(r) = answer
            && let Ok(body) = r.json::<serde_json::Value>().await
            && let Some(theirs) = body["pid"].as_i64()
        {
            let ok = theirs == i64::from(pid) && body["role"] == "local-replica";
            locals.verified(id, ok);
            if !ok {
                tracing::warn!(%url, pid, served_by = theirs, role = %body["role"],
                    "a socket peer claimed a local replica's URL that another process serves; disconnecting it");
                kick.cancel();
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locals() -> Locals {
        Locals::new(
            LagLimit {
                intervals: 10,
                floor: Duration::from_millis(50),
                interval: Duration::from_millis(1),
            },
            None,
        )
    }

    #[test]
    fn lag_counts_from_the_first_publication_a_peer_lacks() {
        let l = locals();
        let (a, _) = l.connect(Some(10), Some(0)).unwrap();
        let (b, _) = l.connect(Some(11), Some(0)).unwrap();
        l.hello(
            a,
            PeerKind::LocalReplica,
            "1".into(),
            Some("http://x:1".into()),
        )
        .unwrap();
        l.hello(b, PeerKind::Reader, "1".into(), None).unwrap();
        l.published(5);
        l.loaded(a, 5, 100);
        l.loaded(b, 5, 100);
        let r = l.reports();
        assert_eq!(
            (r[0].kind, r[0].lag, r[0].lag_ms),
            ("local-replica", Some(0), Some(0))
        );
        assert!(l.problems().is_empty());
        std::thread::sleep(Duration::from_millis(5));
        l.published(7);
        l.published(9);
        std::thread::sleep(Duration::from_millis(60));
        let r = l.reports();
        assert_eq!(r[0].lag, Some(4));
        assert!(r[0].lag_ms.unwrap() >= 60, "{:?}", r[0]);
        // Both are behind; only the local replica is a problem.
        assert_eq!(r[1].lag, Some(4));
        let problems = l.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("pid 10"), "{problems:?}");
        l.loaded(a, 9, 100);
        assert!(l.problems().is_empty());
        l.failed(a, "checksum differs".into());
        assert!(l.problems()[0].contains("checksum differs"));
        l.disconnect(a);
        l.disconnect(b);
        assert!(l.reports().is_empty());
    }

    #[test]
    fn a_peer_cannot_change_kind_and_the_list_is_bounded() {
        let l = locals();
        let (a, _) = l.connect(None, None).unwrap();
        assert_eq!(l.reports()[0].kind, "unknown");
        assert!(
            l.hello(a, PeerKind::LocalReplica, "1".into(), None)
                .is_err()
        );
        l.hello(a, PeerKind::Reader, "1".into(), None).unwrap();
        assert!(
            l.hello(a, PeerKind::LocalReplica, "1".into(), Some("u".into()))
                .is_err()
        );
        for _ in 1..MAX_PEERS {
            l.connect(None, None).unwrap();
        }
        assert!(l.connect(None, None).is_none());
        l.disconnect(a);
        assert!(l.connect(None, None).is_some());
    }
}
