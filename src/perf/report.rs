//! What `memdb perf` reports: per-target latency and outcomes, and the consistency
//! check's result; recorded by the workers and printed for a person.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// At most this many distinct errors are kept per target.
const MAX_ERRORS_KEPT: usize = 5;

/// One target's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub role: &'static str,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub first_errors: Vec<String>,
    pub throughput_per_s: f64,
    pub latency_us: Latency,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub word: String,
    pub replica: String,
    pub leader: u64,
    pub got: Option<u64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub leader: TargetReport,
    pub replicas: Vec<TargetReport>,
    pub duration_s: f64,
    pub leader_seq: u64,
    pub words_checked: usize,
    pub converge_ms: Option<f64>,
    pub not_converged: Vec<String>,
    pub inconsistencies: usize,
    pub differences: Vec<Difference>,
    /// With `--retry-with-keys`: the leader's growth against what was acknowledged.
    pub exact: Option<Exact>,
}

/// The leader's table after a keyed run, minus the one before, against the words of
/// every acknowledged POST: words lost or counted twice.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exact {
    pub words_expected: usize,
    /// Words whose growth differs from what was acknowledged.
    pub mismatched: usize,
    /// Examples: (word, acknowledged, grown by).
    pub examples: Vec<(String, u64, i64)>,
    /// POSTs sent again (to the next node) after a failure or an unknown outcome.
    pub retries: u64,
}

impl Report {
    /// True when every replica converged and matched the leader word for word (and,
    /// with keys, the leader grew by exactly what was acknowledged).
    pub fn consistent(&self) -> bool {
        self.inconsistencies == 0
            && self.not_converged.is_empty()
            && self.exact.as_ref().is_none_or(|e| e.mismatched == 0)
    }
}

/// Latencies and outcomes of one target, shared by its workers.
pub(super) struct Recorder {
    hist: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Recorder {
    pub(super) fn new() -> Self {
        Recorder {
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
            ),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn record<E: std::fmt::Display>(&self, started: Instant, result: Result<(), E>) {
        let us = started.elapsed().as_micros().max(1) as u64;
        self.sent.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let _ = self.hist.lock().record(us.min(120_000_000));
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut errs = self.errors.lock();
                let e = e.to_string();
                if errs.len() < MAX_ERRORS_KEPT && !errs.contains(&e) {
                    errs.push(e);
                }
            }
        }
    }

    pub(super) fn report(
        &self,
        target: &str,
        role: &'static str,
        elapsed: Duration,
    ) -> TargetReport {
        let h = self.hist.lock();
        let ok = self.ok.load(Ordering::Relaxed);
        let latency = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                min: h.min(),
                p50: h.value_at_quantile(0.50),
                p90: h.value_at_quantile(0.90),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
                mean: h.mean(),
            }
        };
        TargetReport {
            target: target.to_owned(),
            role,
            sent: self.sent.load(Ordering::Relaxed),
            succeeded: ok,
            failed: self.failed.load(Ordering::Relaxed),
            first_errors: self.errors.lock().clone(),
            throughput_per_s: ok as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_us: latency,
        }
    }
}

fn print_target(t: &TargetReport) {
    let l = &t.latency_us;
    println!(
        "{:<8} {:<28} sent {:>7}  ok {:>7}  failed {:>5}  {:>9.0}/s  latency µs min {} p50 {} p90 {} p99 {} p99.9 {} max {}",
        t.role,
        t.target,
        t.sent,
        t.succeeded,
        t.failed,
        t.throughput_per_s,
        l.min,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max
    );
    for e in &t.first_errors {
        println!("         error: {e}");
    }
}

/// Prints the report for a person.
pub fn print_report(r: &Report) {
    println!("=== Leader (POST /post) ===");
    print_target(&r.leader);
    println!("=== Replicas (GET /wordcount) ===");
    for t in &r.replicas {
        print_target(t);
    }
    println!("Total test duration: {:.3}s", r.duration_s);
    match r.converge_ms {
        Some(ms) => println!(
            "All replicas reached the leader's seq {} within {ms:.1} ms",
            r.leader_seq
        ),
        None => println!(
            "Replicas that did not reach seq {} in time: {}",
            r.leader_seq,
            r.not_converged.join(", ")
        ),
    }
    for d in &r.differences {
        println!(
            "Inconsistency for word {:?}: leader = {}, replica {} = {}",
            d.word,
            d.leader,
            d.replica,
            d.got
                .map(|g| g.to_string())
                .unwrap_or_else(|| "no answer".into())
        );
    }
    if let Some(e) = &r.exact {
        println!(
            "Exactly once: {} words acknowledged, {} counted otherwise, {} retries.",
            e.words_expected, e.mismatched, e.retries
        );
        for (w, want, got) in &e.examples {
            println!("  {w:?}: acknowledged {want}, counted {got}");
        }
    }
    if r.consistent() {
        println!(
            "All replicas are consistent with the leader: {} words checked on each, 0 inconsistencies.",
            r.words_checked
        );
    } else {
        println!(
            "Found {} inconsistencies between leader and replicas.",
            r.inconsistencies
        );
    }
}
