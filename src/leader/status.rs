//! What the leader says about itself: `/health` (with what is failing) and its
//! series for `/metrics`.

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::locals::LocalReport;
use super::node::Leader;
use super::publisher::PublishStats;
use super::replication::LinkReport;
use crate::protocol::Incarnation;
use crate::server::metrics::Series;
use crate::words::Tokenizer;

/// The leader's `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderHealth {
    /// `leader` (a single leader, or the voter that leads its group now), or a voter's
    /// raft state: `follower`, `candidate`, `learner`.
    role: &'static str,
    pid: u32,
    /// `ok`, or `failing` while something in `problems` is.
    status: &'static str,
    /// What is failing now, each with its reason.
    problems: Vec<String>,
    /// The seq of the last write applied.
    seq: u64,
    /// The table's digest at `seq` (16 hex digits); equal tables have equal digests.
    digest: String,
    /// This process's incarnation (16 hex digits).
    #[schema(value_type = String)]
    incarnation: Incarnation,
    /// `unicode` or `whitespace`.
    #[schema(value_type = String)]
    tokenizer: Tokenizer,
    /// Distinct words.
    words: usize,
    /// Words counted since start.
    words_ingested: u64,
    /// Accepted `POST /post` requests since start.
    posts: u64,
    /// The largest `POST /post` body taken (`--max-body`), in bytes.
    max_body: usize,
    backlog: BacklogHealth,
    /// Network replicas that must acknowledge a write before it is answered.
    min_acks: usize,
    replicas: Vec<LinkReport>,
    /// The local replicas and embedded readers mapping this node's files (connected to
    /// its notification socket), with their lag.
    local_replicas: Vec<LocalReport>,
    snapshot: PublishStats,
    /// The single leader's write-ahead log (absent on a raft voter).
    wal: Option<WalHealth>,
    /// The raft group, on a voter.
    raft: Option<crate::consensus::RaftStatus>,
    uptime_s: u64,
    /// The certificate served, when the node serves TLS (null otherwise).
    tls: Option<crate::tls::server::TlsHealth>,
}

/// The batches kept in memory for network replicas that fall behind.
#[derive(Debug, Serialize, ToSchema)]
pub struct BacklogHealth {
    batches: usize,
    /// The oldest seq held, if any.
    first_seq: Option<u64>,
}

/// The write-ahead log.
#[derive(Debug, Serialize, ToSchema)]
pub struct WalHealth {
    /// `always`, `everysec` or `no`.
    fsync: &'static str,
    /// The highest seq on disk (fsynced, or written with `no`).
    durable_seq: u64,
    /// Why the log cannot be written (writes are refused meanwhile), if it cannot.
    failed: Option<String>,
    /// Why a full segment cannot be closed, if it cannot.
    roll_error: Option<String>,
    /// Writes refused because the log failed.
    writes_refused: u64,
}

impl Leader {
    /// What is failing now, each with its reason; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let s = &self.shared;
        let mut out = Vec::new();
        if let Some(wal) = &s.wal {
            if let Some(e) = wal.health().failure() {
                out.push(format!(
                    "write-ahead log cannot be written, writes are refused: {e}"
                ));
            }
            if let Some(e) = wal.health().roll_error() {
                out.push(e);
            }
        }
        if let Some(c) = self.consensus() {
            out.extend(c.problems());
        }
        if let Some(e) = self.consensus().and_then(|c| c.log.failure()) {
            out.push(format!(
                "raft log cannot be written, writes are refused: {e}"
            ));
        }
        if let Some(e) = s.state.publisher.stats().last_error {
            out.push(format!("snapshot cannot be published: {e}"));
        }
        out.extend(s.locals.problems());
        out.extend(
            s.config
                .serving
                .tls
                .as_ref()
                .and_then(|t| t.health().problem()),
        );
        out
    }

    pub(super) fn health(&self) -> (StatusCode, LeaderHealth) {
        let s = &self.shared;
        let problems = self.problems();
        let st = &s.state;
        let (seq, words, digest) = {
            let t = st.table.read();
            (t.seq(), t.len(), t.digest())
        };
        let (backlog_len, backlog_first) = {
            let b = st.backlog.lock();
            (b.len(), b.first_seq())
        };
        let code = if problems.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = LeaderHealth {
            // A voter says what it is now: only one of them leads.
            role: self.consensus().map_or("leader", |c| c.state_name()),
            pid: std::process::id(),
            status: if problems.is_empty() { "ok" } else { "failing" },
            problems,
            seq,
            digest: format!("{digest:016x}"),
            incarnation: st.incarnation,
            tokenizer: st.tokenizer,
            words,
            words_ingested: st.words_ingested.load(Ordering::Relaxed),
            posts: st.posts.load(Ordering::Relaxed),
            max_body: s.config.max_body,
            backlog: BacklogHealth {
                batches: backlog_len,
                first_seq: backlog_first,
            },
            min_acks: s.config.min_acks,
            replicas: s.replicas.reports(),
            local_replicas: s.locals.reports(),
            snapshot: st.publisher.stats(),
            wal: s.wal.as_ref().map(|wal| WalHealth {
                fsync: s.config.wal.fsync.as_str(),
                durable_seq: wal.durable_seq(),
                failed: wal.health().failure(),
                roll_error: wal.health().roll_error(),
                writes_refused: s.refused.load(Ordering::Relaxed),
            }),
            raft: self.consensus().map(|c| c.status()),
            uptime_s: s.started.elapsed().as_secs(),
            tls: s.config.serving.tls.as_ref().map(|t| t.health()),
        };
        (code, body)
    }
}

impl Leader {
    /// The local replicas and readers connected to the notification socket.
    pub fn local_reports(&self) -> Vec<LocalReport> {
        self.shared.locals.reports()
    }

    /// Words counted since start.
    pub fn words_ingested(&self) -> u64 {
        self.shared.state.words_ingested.load(Ordering::Relaxed)
    }

    /// The leader's series for `/metrics`.
    pub(super) fn collect_series(&self, m: &mut Series<'_>) {
        m.counter(
            "memdb_words_ingested_total",
            "Words counted since start.",
            self.words_ingested(),
        );
        self.collect_replicas(m);
        self.shared.locals.collect(m);
        self.collect_snapshot(m);
        self.collect_wal(m);
    }

    fn collect_replicas(&self, m: &mut Series<'_>) {
        let s = &self.shared;
        let reports = s.replicas.reports();
        m.gauges(
            "memdb_replica_lag_batches",
            "Batches a network replica is behind (-1 while unknown).",
            "replica",
            reports
                .iter()
                .map(|r| (r.url.clone(), r.lag.map(|l| l as f64).unwrap_or(-1.0))),
        );
        m.gauges(
            "memdb_replica_lag_seconds",
            "Age of the oldest batch a network replica lacks; 0 when caught up (-1 while unknown).",
            "replica",
            reports
                .iter()
                .map(|r| (r.url.clone(), seconds_or_unknown(r.lag_ms))),
        );
        m.gauges(
            "memdb_replica_last_ack_age_seconds",
            "Seconds since a network replica last acknowledged a push (-1 if never).",
            "replica",
            reports
                .iter()
                .map(|r| (r.url.clone(), seconds_or_unknown(r.last_ok_ms_ago))),
        );
        m.counters(
            "memdb_replica_log_pushes_total",
            "Pushes to a network replica read back from the write-ahead log.",
            "replica",
            reports.iter().map(|r| (r.url.clone(), r.log_pushes as f64)),
        );
        m.counters(
            "memdb_replica_resyncs_total",
            "Full syncs the leader asked a network replica to do.",
            "replica",
            reports.iter().map(|r| (r.url.clone(), r.resyncs as f64)),
        );
    }

    fn collect_snapshot(&self, m: &mut Series<'_>) {
        let s = &self.shared;
        let snap = s.state.publisher.stats();
        m.gauge(
            "memdb_snapshot_seq",
            "Seq of the snapshot on disk.",
            snap.seq,
        );
        m.counter(
            "memdb_snapshot_publishes_total",
            "Snapshots published since start.",
            snap.publishes,
        );
        m.gauge(
            "memdb_snapshot_publish_seconds",
            "Duration of the last snapshot publish.",
            snap.last_duration_ms.unwrap_or(0.0) / 1e3,
        );
        m.gauge(
            "memdb_snapshot_bytes",
            "Size of the last published snapshot.",
            snap.last_bytes.unwrap_or(0),
        );
        m.gauge(
            "memdb_snapshot_failing",
            "1 while the last snapshot publish failed.",
            snap.last_error.is_some(),
        );
        m.gauge(
            "memdb_snapshot_recent_files",
            "Recent deltas on the chain (every read that misses the newer files probes each).",
            snap.recent_files,
        );
        m.counter(
            "memdb_snapshot_merges_total",
            "Merges of recent deltas (into one, or into the delta) since start.",
            snap.merges,
        );
        m.counter(
            "memdb_snapshot_compactions_total",
            "Compactions (the delta into a new base) since start.",
            snap.compactions,
        );
    }

    fn collect_wal(&self, m: &mut Series<'_>) {
        let s = &self.shared;
        if let Some(c) = self.consensus() {
            c.collect(m);
        }
        let Some(wal) = &s.wal else {
            return;
        };
        let f = wal.fsync_stats();
        m.gauge(
            "memdb_wal_durable_seq",
            "Highest seq the write-ahead log has made durable.",
            wal.durable_seq(),
        );
        m.counter(
            "memdb_wal_fsyncs_total",
            "fsyncs of the write-ahead log.",
            f.fsyncs.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_wal_fsync_seconds_total",
            "Time spent in write-ahead log fsyncs.",
            f.total_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        let h = wal.health();
        m.gauge(
            "memdb_wal_failed",
            "1 while the write-ahead log cannot be written (writes are refused).",
            h.is_failed(),
        );
        m.counter(
            "memdb_wal_failures_total",
            "Times the write-ahead log became unwritable.",
            h.failures.load(Ordering::Relaxed),
        );
        m.gauge(
            "memdb_wal_roll_failing",
            "1 while a full log segment cannot be closed (no new one can be created).",
            h.roll_error().is_some(),
        );
        m.counter(
            "memdb_writes_refused_total",
            "Writes refused (not applied) because the write-ahead log failed.",
            s.refused.load(Ordering::Relaxed),
        );
        m.gauge(
            "memdb_wal_last_fsync_seconds",
            "Duration of the last write-ahead log fsync.",
            f.last_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
    }
}

/// Milliseconds as seconds for a metric; -1 when unknown.
fn seconds_or_unknown(ms: Option<u64>) -> f64 {
    ms.map_or(-1.0, |ms| ms as f64 / 1e3)
}
