//! `memdb perf`: the load tool. Writes to the leader, reads from the replicas, then
//! checks that every replica holds exactly the leader's counts.
//!
//! Its defaults reproduce the Go original's `bin/perf` run: 1000 concurrent POSTs of ten
//! phrases to the leader, then 1000 GETs spread over the replicas, then a consistency
//! check (which the Go tool ended, against its local replicas, with 51 differences).

mod check;
mod report;

use report::Recorder;
pub use report::{Difference, Latency, Report, TargetReport, print_report};

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    /// Nodes to send the writes to, in turn (default: the leader). For a raft group:
    /// its voters.
    pub write_to: Vec<String>,
    /// Send every POST with an Idempotency-Key and retry it (through the next node of
    /// `write_to`) until it is acknowledged; then check that the leader's table grew
    /// by exactly the words posted: nothing lost, nothing counted twice.
    pub retry_with_keys: bool,
    /// What the load trusts (and presents) for `https://` nodes.
    pub tls: crate::tls::ClientTls,
}

/// How long one keyed POST is retried before it counts as failed.
const RETRY_FOR: Duration = Duration::from_secs(60);

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

/// Runs the load and the check. See the module docs.
pub async fn run(cfg: PerfConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(!cfg.replicas.is_empty(), "name at least one replica URL");
    let workload = Arc::new(Workload::load(&cfg)?);
    let (leader, replicas, writers) = connect(&cfg).await?;
    let baseline = if cfg.retry_with_keys {
        Some(leader.sync().await?)
    } else {
        None
    };
    let started = Instant::now();
    let posted = Arc::new(parking_lot::Mutex::new(HashMap::<String, u64>::new()));
    let retries = Arc::new(AtomicU64::new(0));
    let (posts, post_elapsed) = match &baseline {
        Some(b) => {
            let keyed = Keyed {
                writers: Arc::new(writers),
                tokenizer: b.tokenizer,
                posted: posted.clone(),
                retries: retries.clone(),
            };
            keyed_write_phase(&cfg, keyed, &workload).await
        }
        None => write_phase(&cfg, &leader, &workload).await,
    };
    let (gets, get_elapsed) = read_phase(&cfg, &replicas, &workload).await;
    let check = check::compare(cfg.converge_timeout, &leader, &replicas).await?;
    let exact = match &baseline {
        Some(b) => {
            let posted = std::mem::take(&mut *posted.lock());
            Some(check::exact(&leader, b, &posted, retries.load(Ordering::Relaxed)).await?)
        }
        None => None,
    };
    Ok(Report {
        leader: posts.report(&cfg.leader, "leader", post_elapsed),
        replicas: replicas
            .iter()
            .zip(gets.iter())
            .map(|(r, rec)| rec.report(r.base(), "replica", get_elapsed))
            .collect(),
        duration_s: started.elapsed().as_secs_f64(),
        leader_seq: check.seq,
        words_checked: check.words_checked,
        converge_ms: check.converge_ms,
        not_converged: check.not_converged,
        inconsistencies: check.inconsistencies,
        differences: check.differences,
        exact,
    })
}

/// What the keyed writers share.
#[derive(Clone)]
struct Keyed {
    writers: Arc<Vec<Client>>,
    tokenizer: crate::words::Tokenizer,
    /// The words of every acknowledged POST.
    posted: Arc<parking_lot::Mutex<HashMap<String, u64>>>,
    retries: Arc<AtomicU64>,
}

/// Phase 1 with keys: each POST is retried through the next node until acknowledged.
async fn keyed_write_phase(
    cfg: &PerfConfig,
    keyed: Keyed,
    workload: &Arc<Workload>,
) -> (Arc<Recorder>, Duration) {
    let rec = Arc::new(Recorder::new());
    let (r, workload, seed) = (rec.clone(), workload.clone(), cfg.seed);
    let run = format!("{:08x}", rand::random::<u32>());
    let elapsed = drive(cfg, "POST", move |i| {
        let (rec, workload, k, run) = (r.clone(), workload.clone(), keyed.clone(), run.clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9));
            let text = workload.text(i, &mut rng);
            let key = format!("perf-{run}-{i}");
            let t = Instant::now();
            let mut attempt = 0usize;
            let res = loop {
                let node = &k.writers[(i as usize + attempt) % k.writers.len()];
                match node.post_keyed(&text, &key).await {
                    Ok(_) => break Ok(()),
                    Err(e) if t.elapsed() > RETRY_FOR => break Err(e),
                    Err(_) => {
                        attempt += 1;
                        k.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            if res.is_ok() {
                let (deltas, _) = k.tokenizer.count(&text);
                let mut posted = k.posted.lock();
                for (w, n) in deltas {
                    *posted.entry(w).or_insert(0) += n;
                }
            }
            rec.record(t, res);
        }
    })
    .await;
    (rec, elapsed)
}

/// Clients for the leader and the replicas, sharing one pool sized for the
/// concurrency. Host names are resolved once here: otherwise each of a thousand
/// concurrent connections resolves `localhost` on the blocking pool (measured: a fifth
/// of the default run's time).
async fn connect(cfg: &PerfConfig) -> anyhow::Result<(Client, Vec<Client>, Vec<Client>)> {
    let mut builder = cfg
        .tls
        .builder()
        .pool_max_idle_per_host(cfg.concurrency.max(1))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5));
    for url in std::iter::once(&cfg.leader)
        .chain(&cfg.replicas)
        .chain(&cfg.write_to)
    {
        let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        if let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default())
            && let Ok(addrs) = tokio::net::lookup_host((host, port)).await
        {
            let addrs: Vec<std::net::SocketAddr> = addrs.collect();
            builder = builder.resolve_to_addrs(host, &addrs);
        }
    }
    let http = builder.build()?;
    let client =
        |url: &str| Client::with_http(http.clone(), url).with_token(cfg.auth_token.clone());
    let writers = if cfg.write_to.is_empty() {
        vec![client(&cfg.leader)]
    } else {
        cfg.write_to.iter().map(|w| client(w)).collect()
    };
    Ok((
        client(&cfg.leader),
        cfg.replicas.iter().map(|r| client(r)).collect(),
        writers,
    ))
}

/// Phase 1: writes to the leader.
async fn write_phase(
    cfg: &PerfConfig,
    leader: &Client,
    workload: &Arc<Workload>,
) -> (Arc<Recorder>, Duration) {
    let rec = Arc::new(Recorder::new());
    let (r, leader, workload, seed) = (rec.clone(), leader.clone(), workload.clone(), cfg.seed);
    let elapsed = drive(cfg, "POST", move |i| {
        let (rec, leader, workload) = (r.clone(), leader.clone(), workload.clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9e37_79b9));
            let text = workload.text(i, &mut rng);
            let t = Instant::now();
            let res = leader.post_text(&text).await.map(|_| ());
            rec.record(t, res);
        }
    })
    .await;
    (rec, elapsed)
}

/// Phase 2: reads spread over the replicas, round-robin.
async fn read_phase(
    cfg: &PerfConfig,
    replicas: &[Client],
    workload: &Arc<Workload>,
) -> (Arc<Vec<Recorder>>, Duration) {
    let recs: Arc<Vec<Recorder>> = Arc::new(replicas.iter().map(|_| Recorder::new()).collect());
    let (r, reps, workload, seed) = (
        recs.clone(),
        Arc::new(replicas.to_vec()),
        workload.clone(),
        cfg.seed,
    );
    let elapsed = drive(cfg, "GET", move |i| {
        let (recs, reps, workload) = (r.clone(), reps.clone(), workload.clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed ^ !i);
            let k = i as usize % reps.len();
            let word = workload.word(&mut rng).to_owned();
            let t = Instant::now();
            let res = reps[k].wordcount(&[&word], None).await.map(|_| ());
            recs[k].record(t, res);
        }
    })
    .await;
    (recs, elapsed)
}
