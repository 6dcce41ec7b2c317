//! What the leader says about itself: `/health` (with what is failing) and its
//! series for `/metrics`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::leader::backlog::Since;
use crate::leader::publisher::PublishStats;
use crate::leader::replication::LinkReport;
use crate::protocol::Incarnation;
use crate::server::error::ApiError;
use crate::server::metrics::Series;
use crate::server::parse::TopQuery;
use crate::server::router::{CountSource, SyncBody};
use crate::storage::mapped::MappedState;
use crate::storage::table::CountMap;

use crate::words::Tokenizer;

use super::Leader;

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
        if let Some(e) = s.publisher.stats().last_error {
            out.push(format!("snapshot cannot be published: {e}"));
        }
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
        let (seq, words, digest) = {
            let t = s.table.read();
            (t.seq(), t.len(), t.digest())
        };
        let (backlog_len, backlog_first) = {
            let b = s.backlog.lock();
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
            incarnation: s.incarnation,
            tokenizer: s.config.tokenizer,
            words,
            words_ingested: s.words_ingested.load(Ordering::Relaxed),
            posts: s.posts.load(Ordering::Relaxed),
            max_body: s.config.max_body,
            backlog: BacklogHealth {
                batches: backlog_len,
                first_seq: backlog_first,
            },
            min_acks: s.config.min_acks,
            replicas: s.replicas.reports(),
            snapshot: s.publisher.stats(),
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

impl super::Shared {
    /// The published state, the words written since with their counts now, and the
    /// seq that makes. `Err` if the backlog no longer holds every batch since the
    /// published seq.
    fn published_now(&self) -> Result<(MappedState, CountMap, u64), String> {
        let state = self.publisher.published_state()?;
        let published = state.seq();
        let t = self.table.read();
        let seq = t.seq();
        let mut overlay = CountMap::new();
        if seq > published {
            let since = self.backlog.lock().since(published, usize::MAX, usize::MAX);
            let Since::Batches(batches) = since else {
                return Err(format!(
                    "the backlog lacks the batches after seq {published}"
                ));
            };
            if batches.first().map(|b| b.seq) != Some(published + 1)
                || batches.last().map(|b| b.seq) != Some(seq)
            {
                return Err(format!(
                    "the backlog lacks batches between {published} and {seq}"
                ));
            }
            for b in &batches {
                for (w, _) in &b.deltas {
                    overlay.set(w, t.get(w));
                }
            }
        }
        Ok((state, overlay, seq))
    }
}

impl CountSource for Leader {
    fn distinct_words(&self) -> u64 {
        self.shared.table.read().len() as u64
    }

    fn collect(&self, m: &mut Series<'_>) {
        let s = &self.shared;
        m.counter(
            "memdb_words_ingested_total",
            "Words counted since start.",
            s.words_ingested.load(Ordering::Relaxed),
        );
        self.collect_replicas(m);
        self.collect_snapshot(m);
        self.collect_wal(m);
    }

    fn seq(&self) -> u64 {
        self.shared.table.read().seq()
    }

    fn seq_watch(&self) -> watch::Receiver<u64> {
        self.shared.seq_tx.subscribe()
    }

    fn max_wait(&self) -> Duration {
        self.shared.config.max_wait
    }

    fn ready(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn top_ranked(&self, q: &TopQuery<'_>) -> Result<Option<(Vec<u8>, u64)>, ApiError> {
        let prefix = q.prefix_for(self.shared.config.tokenizer);
        let t = self.shared.table.read();
        let body = t.with_ranked_words(q.n, &prefix, crate::server::parse::top_body);
        Ok(body.map(|b| (b, t.seq())))
    }

    /// Over the published state and the words written since (the table at one seq),
    /// which no writer waits for; the table's read lock only for those words. Should
    /// the published state lag the backlog, under the table's read lock.
    async fn top_scan(&self, q: TopQuery<'static>) -> Result<(Vec<u8>, u64), ApiError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let prefix = q.prefix_for(me.shared.config.tokenizer);
            match me.shared.published_now() {
                Ok((state, overlay, seq)) => {
                    let under = state.iter().filter(|(w, _)| overlay.get(w).is_none());
                    let all = overlay.iter().chain(under);
                    let words = crate::storage::top::scanned(all, q.n, &prefix);
                    (crate::server::parse::top_body(&words), seq)
                }
                Err(_) => {
                    let t = me.shared.table.read();
                    let body = t.with_top_words(q.n, &prefix, crate::server::parse::top_body);
                    (body, t.seq())
                }
            }
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let t = self.shared.table.read();
        let body =
            crate::server::parse::lookup_body(self.shared.config.tokenizer, words, |w| t.get(w))?;
        Ok((body, t.seq()))
    }

    /// The table now, streamed: the state on disk from its mappings, under the words
    /// written since it was published (their counts read from the table, under its
    /// read lock for just those words). No whole body in memory, and writers wait only
    /// for the words of the last interval, not for the whole table.
    async fn sync_body(&self) -> SyncBody {
        let s = &self.shared;
        let shared = s.clone();
        let published = tokio::task::spawn_blocking(move || shared.published_now())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match published {
            Ok((state, overlay, seq)) => {
                return SyncBody::streamed(Arc::new(state), overlay, seq, s.incarnation);
            }
            Err(e) => {
                tracing::warn!(error = %e, "serving /sync from the table under its lock")
            }
        }
        // The fallback: serialised under the read lock so the body and its seq agree;
        // writers wait for this.
        let t = self.shared.table.read();
        SyncBody::of(
            t.map(),
            t.len() * 16,
            t.seq(),
            Some(self.shared.incarnation),
            self.shared.config.tokenizer,
        )
    }
}

impl Leader {
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
        let snap = s.publisher.stats();
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
