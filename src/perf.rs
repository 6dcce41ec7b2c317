//! `memdb perf`: the load tool. Writes to the leader, reads from the replicas, then
//! checks that every replica holds exactly the leader's counts.
//!
//! Its defaults reproduce the Go original's `bin/perf` run: 1000 concurrent POSTs of ten
//! phrases to the leader, then 1000 GETs spread over the replicas, then a consistency
//! check (which the Go tool ended, against its local replicas, with 51 differences).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::Client;

/// Phrases in the Go original's vocabulary (the words its load test reported on).
pub const DEFAULT_PHRASES: [&str; 10] = [
    "hello world",
    "go is great",
    "distributed systems in go",
    "high performance go",
    "the concurrency model of go",
    "parallel requests load test",
    "concurrency test",
    "hello distributed world",
    "distributed systems are a great test of performance",
    "go go go concurrency",
];

/// How many words one consistency-check GET asks for (the replicas' limit is 1024).
const CHECK_BATCH: usize = 512;
/// At most this many differences are printed (all are counted).
const MAX_PRINTED_DIFFS: usize = 50;
/// At most this many distinct errors are kept per target.
const MAX_ERRORS_KEPT: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub leader: String,
    pub replicas: Vec<String>,
    /// POSTs to send (and GETs), unless `duration` is set.
    pub requests: usize,
    /// Requests in flight at once, per phase.
    pub concurrency: usize,
    /// Run each phase for this long instead of a fixed number of requests.
    pub duration: Option<Duration>,
    /// Post this many random words from the vocabulary instead of whole phrases.
    pub words_per_post: Option<usize>,
    pub phrases_file: Option<PathBuf>,
    pub seed: u64,
    /// How long replicas may take to reach the leader's seq before the check.
    pub converge_timeout: Duration,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
    /// Sent with every request.
    pub auth_token: Option<crate::server::auth::Token>,
}

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
}

impl Report {
    /// True when every replica converged and matched the leader word for word.
    pub fn consistent(&self) -> bool {
        self.inconsistencies == 0 && self.not_converged.is_empty()
    }
}

/// Latencies and outcomes of one target, shared by its workers.
struct Recorder {
    hist: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Recorder {
    fn new() -> Self {
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

    fn record<E: std::fmt::Display>(&self, started: Instant, result: Result<(), E>) {
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

    fn report(&self, target: &str, role: &'static str, elapsed: Duration) -> TargetReport {
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

/// The load's texts: phrases, or random words from their vocabulary.
struct Workload {
    phrases: Vec<String>,
    vocabulary: Vec<String>,
    words_per_post: Option<usize>,
}

impl Workload {
    fn load(cfg: &PerfConfig) -> anyhow::Result<Self> {
        let phrases: Vec<String> = match &cfg.phrases_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            None => DEFAULT_PHRASES.iter().map(|s| s.to_string()).collect(),
        };
        anyhow::ensure!(!phrases.is_empty(), "no phrases to post");
        let mut vocabulary: Vec<String> = phrases
            .iter()
            .flat_map(|p| p.split_whitespace().map(str::to_owned))
            .collect();
        vocabulary.sort();
        vocabulary.dedup();
        Ok(Workload {
            phrases,
            vocabulary,
            words_per_post: cfg.words_per_post,
        })
    }

    fn text(&self, i: u64, rng: &mut StdRng) -> String {
        match self.words_per_post {
            None => self.phrases[i as usize % self.phrases.len()].clone(),
            Some(n) => (0..n.max(1))
                .map(|_| self.vocabulary[rng.random_range(0..self.vocabulary.len())].as_str())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn word(&self, rng: &mut StdRng) -> &str {
        &self.vocabulary[rng.random_range(0..self.vocabulary.len())]
    }
}

fn progress(cfg: &PerfConfig, label: &str) -> indicatif::ProgressBar {
    if !cfg.progress || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match cfg.duration {
        Some(d) => indicatif::ProgressBar::new(d.as_secs()),
        None => indicatif::ProgressBar::new(cfg.requests as u64),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} {per_sec}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}

/// Runs `op` from `concurrency` workers until `requests` were issued or `duration`
/// passed. `op` gets the request number.
async fn drive<F, Fut>(cfg: &PerfConfig, label: &str, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress(cfg, label);
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let limit = if cfg.duration.is_some() {
        u64::MAX
    } else {
        cfg.requests as u64
    };
    let mut workers = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (op, next, bar) = (op.clone(), next.clone(), bar.clone());
        let duration_mode = deadline.is_some();
        workers.push(tokio::spawn(async move {
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                op(i).await;
                if duration_mode {
                    bar.set_position(started.elapsed().as_secs());
                } else {
                    bar.inc(1);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    bar.finish_and_clear();
    started.elapsed()
}

/// Runs the whole perf test and returns its report.
pub async fn run(cfg: PerfConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(!cfg.replicas.is_empty(), "name at least one replica URL");
    let workload = Arc::new(Workload::load(&cfg)?);
    // One pool for all targets, sized for the concurrency. Host names are resolved once
    // here: otherwise each of a thousand concurrent connections resolves `localhost`
    // on the blocking pool (measured: a fifth of the default run's time).
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.concurrency.max(1))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    for url in std::iter::once(&cfg.leader).chain(&cfg.replicas) {
        let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        if let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default())
            && let Ok(addrs) = tokio::net::lookup_host((host, port)).await
        {
            let addrs: Vec<std::net::SocketAddr> = addrs.collect();
            builder = builder.resolve_to_addrs(host, &addrs);
        }
    }
    let http = builder.build()?;
    let leader = Client::with_http(http.clone(), &cfg.leader).with_token(cfg.auth_token.clone());
    let replicas: Vec<Client> = cfg
        .replicas
        .iter()
        .map(|r| Client::with_http(http.clone(), r).with_token(cfg.auth_token.clone()))
        .collect();
    let started = Instant::now();

    // Phase 1: writes to the leader.
    let post_rec = Arc::new(Recorder::new());
    let post_elapsed = {
        let (rec, leader, workload, seed) =
            (post_rec.clone(), leader.clone(), workload.clone(), cfg.seed);
        drive(&cfg, "POST", move |i| {
            let (rec, leader, workload) = (rec.clone(), leader.clone(), workload.clone());
            async move {
                let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9));
                let text = workload.text(i, &mut rng);
                let t = Instant::now();
                let r = leader.post_text(&text).await.map(|_| ());
                rec.record(t, r);
            }
        })
        .await
    };

    // Phase 2: reads spread over the replicas, round-robin.
    let get_recs: Arc<Vec<Recorder>> = Arc::new(replicas.iter().map(|_| Recorder::new()).collect());
    let get_elapsed = {
        let (recs, reps, workload, seed) = (
            get_recs.clone(),
            Arc::new(replicas.clone()),
            workload.clone(),
            cfg.seed,
        );
        drive(&cfg, "GET", move |i| {
            let (recs, reps, workload) = (recs.clone(), reps.clone(), workload.clone());
            async move {
                let mut rng = StdRng::seed_from_u64(seed ^ !i);
                let k = i as usize % reps.len();
                let word = workload.word(&mut rng).to_owned();
                let t = Instant::now();
                let r = reps[k].wordcount(&[&word], None).await.map(|_| ());
                recs[k].record(t, r);
            }
        })
        .await
    };

    // Phase 3: convergence and the word-by-word comparison.
    let leader_table = leader.sync().await?;
    let seq = leader_table.seq;
    let converge_started = Instant::now();
    let mut not_converged = Vec::new();
    for r in &replicas {
        if !wait_for_seq(r, seq, converge_started + cfg.converge_timeout).await {
            not_converged.push(r.base().to_owned());
        }
    }
    let converge_ms = not_converged
        .is_empty()
        .then(|| converge_started.elapsed().as_secs_f64() * 1e3);
    let mut words: Vec<&String> = leader_table.map.keys().collect();
    words.sort();
    let mut differences = Vec::new();
    let mut inconsistencies = 0;
    for r in &replicas {
        if not_converged.iter().any(|u| u == r.base()) {
            continue;
        }
        for chunk in words.chunks(CHECK_BATCH) {
            let ws: Vec<&str> = chunk.iter().map(|w| w.as_str()).collect();
            let got: Result<HashMap<String, u64>, _> = r.wordcount(&ws, Some(seq)).await;
            for w in chunk {
                let want = leader_table.map[w.as_str()];
                let have = got.as_ref().ok().and_then(|g| g.get(w.as_str()).copied());
                if have != Some(want) {
                    inconsistencies += 1;
                    if differences.len() < MAX_PRINTED_DIFFS {
                        differences.push(Difference {
                            word: (*w).clone(),
                            replica: r.base().to_owned(),
                            leader: want,
                            got: have,
                        });
                    }
                }
            }
        }
    }

    Ok(Report {
        leader: post_rec.report(&cfg.leader, "leader", post_elapsed),
        replicas: replicas
            .iter()
            .zip(get_recs.iter())
            .map(|(r, rec)| rec.report(r.base(), "replica", get_elapsed))
            .collect(),
        duration_s: started.elapsed().as_secs_f64(),
        leader_seq: seq,
        words_checked: words.len(),
        converge_ms,
        not_converged,
        inconsistencies,
        differences,
    })
}

/// Waits until `replica` answers a read at `seq` (a `min_seq` read also makes a local
/// replica's leader publish early).
async fn wait_for_seq(replica: &Client, seq: u64, deadline: Instant) -> bool {
    loop {
        if replica.wordcount(&["memdb"], Some(seq)).await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// A bare axum server with the same routes' shapes and no work behind them: the
/// baseline that memdb's own handlers are measured against (`memdb baseline`).
pub fn baseline_router() -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/wordcount",
            get(|| async { axum::Json(serde_json::json!({"hello": 1})) }),
        )
        .route(
            "/post",
            post(|body: bytes::Bytes| async move {
                (
                    StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({"seq": 1, "words": body.len()})),
                )
            }),
        )
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
}
