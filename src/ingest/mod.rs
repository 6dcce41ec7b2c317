//! `memdb ingest`: streams files (or stdin) of any size to the leader in chunks cut at
//! white space ([`chunker`]), several requests in flight.
//!
//! Retries are safe only where a retry cannot count twice. A raft group remembers an
//! `Idempotency-Key` per chunk, so every failure is retried (through the redirect to
//! whoever leads). A single leader does not, so only refusals that applied nothing
//! are retried there (connection refused, `307`, `429`, `507`, a `503` that says
//! `"applied": "no"`); a
//! chunk whose outcome is unknown (the answer lost) stops the run with its offset, so
//! that the operator knows exactly what was and was not counted.

pub mod chunker;
mod sources;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::sync::{Semaphore, mpsc};

use crate::backoff::Backoff;
use crate::client::{Client, ClientError};
use chunker::{ChunkError, Chunker};
use sources::{Source, sources};

/// What to ingest, and how.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub leader: String,
    /// Files, directories (walked), glob patterns, or `-` for stdin; empty: stdin.
    pub paths: Vec<String>,
    /// Largest chunk (request body); must fit the leader's `--max-body`.
    pub chunk_size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    pub auth_token: Option<crate::server::auth::Token>,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
    /// How long one chunk is retried before the run fails.
    pub retry_for: Duration,
    /// What it trusts (and presents) for an `https://` leader.
    pub tls: crate::tls::ClientTls,
}

/// Why the run stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Input(String),
    #[error("{source_name}: chunk {chunk} (bytes {offset}..{end}) was refused: {reason}")]
    Refused {
        source_name: String,
        chunk: u64,
        offset: u64,
        end: u64,
        reason: String,
    },
    #[error(
        "{source_name}: chunk {chunk} (bytes {offset}..{end}): its outcome is unknown \
         ({reason}); the leader does not take Idempotency-Keys, so it was not retried. \
         The chunks before it were counted, and those sent alongside it may have been: \
         check the leader's table before resuming from byte {offset}"
    )]
    Unknown {
        source_name: String,
        chunk: u64,
        offset: u64,
        end: u64,
        reason: String,
    },
    #[error(
        "{source_name}: chunk {chunk} (bytes {offset}..{end}) was counted as seq {seq}, \
         but: {reason}; it was not sent again. Resume from byte {end} once the leader \
         is healthy"
    )]
    Unconfirmed {
        source_name: String,
        chunk: u64,
        offset: u64,
        end: u64,
        seq: u64,
        reason: String,
    },
}

/// A run that stopped: what it had counted by then, and why it stopped.
#[derive(Debug)]
pub struct Failure {
    pub summary: Summary,
    pub error: IngestError,
}

/// The seq a refusal names when it says the write was counted (`"applied": "yes"`: not
/// made durable in time, or not acknowledged by enough replicas).
fn counted_anyway(e: &ClientError) -> Option<u64> {
    let ClientError::Status { body, .. } = e else {
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    (v.get("applied")?.as_str()? == "yes")
        .then(|| v.get("seq")?.as_u64())
        .flatten()
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub files: usize,
    pub bytes: u64,
    pub chunks: u64,
    pub words: u64,
    pub seconds: f64,
    pub words_per_second: f64,
    pub bytes_per_second: f64,
    /// Chunks sent again after a failure.
    pub retries: u64,
    /// The highest seq an answer named.
    pub seq: u64,
    /// Whether chunks carried Idempotency-Keys (the leader is a raft group).
    pub keyed: bool,
}

/// A chunk on its way: where it came from and its text.
struct Piece {
    source: usize,
    chunk: u64,
    offset: u64,
    text: String,
}

/// Reads every source on a blocking thread and hands out chunks.
fn spawn_reader(
    sources: Vec<Source>,
    max: usize,
    hard_max: usize,
    tx: mpsc::Sender<Result<Piece, IngestError>>,
) {
    std::thread::spawn(move || {
        let mut n = 0u64;
        for (i, s) in sources.iter().enumerate() {
            let input = match s.open() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(IngestError::Input(format!("{}: {e}", s.name()))));
                    return;
                }
            };
            for c in Chunker::new(input, max, hard_max) {
                let piece = c
                    .map(|c| {
                        n += 1;
                        Piece {
                            source: i,
                            chunk: n,
                            offset: c.offset,
                            text: c.text,
                        }
                    })
                    .map_err(|e: ChunkError| IngestError::Input(format!("{}: {e}", s.name())));
                let stop = piece.is_err();
                if tx.blocking_send(piece).is_err() || stop {
                    return;
                }
            }
        }
    });
}

/// Counters the senders share.
#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    chunks: AtomicU64,
    words: AtomicU64,
    retries: AtomicU64,
    seq: AtomicU64,
}

/// The largest body a leader takes unless its `/health` says otherwise (the default
/// `--max-body`).
const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Whether the leader takes Idempotency-Keys (a raft voter's `/health` has `raft`), and
/// the largest body it takes, if it says.
async fn leader_terms(leader: &Client) -> Result<(bool, Option<usize>), IngestError> {
    let (_, h) = leader
        .health()
        .await
        .map_err(|e| IngestError::Input(format!("the leader cannot be reached: {e}")))?;
    let keyed = h.get("raft").is_some_and(|r| !r.is_null());
    let max_body = h["max_body"].as_u64().map(|m| m as usize);
    Ok((keyed, max_body))
}

/// Whether an error may be retried: always with a key; without one, only when the
/// leader certainly applied nothing.
fn retryable(e: &ClientError, keyed: bool) -> Result<(), bool> {
    match e {
        ClientError::Http { source, .. } => {
            if keyed || source.is_connect() {
                Ok(())
            } else {
                Err(true) // Sent, and the answer lost: unknown.
            }
        }
        ClientError::Status { status, body, .. } => {
            // A 503 proves nothing was counted only when it says so: a node answers
            // `"applied": "no"` then, and `"yes"` (with the seq) or `"unknown"` when it
            // was or may have been counted (a 503 without it, from a proxy, proves
            // nothing either).
            let says_no = serde_json::from_str::<serde_json::Value>(body)
                .is_ok_and(|v| v.get("applied").and_then(|a| a.as_str()) == Some("no"));
            // A 307 left over after the client's hops: the group is changing leader,
            // and a node that redirects counted nothing.
            let applied_nothing = *status == StatusCode::TOO_MANY_REQUESTS
                || *status == StatusCode::TEMPORARY_REDIRECT
                || *status == StatusCode::INSUFFICIENT_STORAGE
                || (*status == StatusCode::SERVICE_UNAVAILABLE && says_no);
            if applied_nothing || (keyed && status.is_server_error()) {
                Ok(())
            } else {
                Err(*status == StatusCode::SERVICE_UNAVAILABLE
                    || *status == StatusCode::GATEWAY_TIMEOUT)
            }
        }
        ClientError::Protocol { .. } => Err(true),
    }
}

/// Posts one piece until it is acknowledged, or fails the run.
async fn send(
    leader: &Client,
    piece: &Piece,
    key: Option<String>,
    names: &[String],
    retry_for: Duration,
    counters: &Counters,
) -> Result<(u64, u64), IngestError> {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let end = piece.offset + piece.text.len() as u64;
    loop {
        let e = match leader.post_plain(piece.text.clone(), key.as_deref()).await {
            Ok(r) => return Ok((r.seq, r.words)),
            Err(e) => e,
        };
        if let Some(seq) = counted_anyway(&e) {
            return Err(IngestError::Unconfirmed {
                source_name: names[piece.source].clone(),
                chunk: piece.chunk,
                offset: piece.offset,
                end,
                seq,
                reason: e.to_string(),
            });
        }
        let fail = |unknown: bool| {
            let (source_name, chunk, offset, reason) = (
                names[piece.source].clone(),
                piece.chunk,
                piece.offset,
                e.to_string(),
            );
            if unknown {
                IngestError::Unknown {
                    source_name,
                    chunk,
                    offset,
                    end,
                    reason,
                }
            } else {
                IngestError::Refused {
                    source_name,
                    chunk,
                    offset,
                    end,
                    reason,
                }
            }
        };
        match retryable(&e, key.is_some()) {
            Ok(()) if started.elapsed() < retry_for => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Ok(()) => return Err(fail(key.is_none() && matches!(e, ClientError::Http { .. }))),
            Err(unknown) => return Err(fail(unknown)),
        }
    }
}

fn progress_bar(cfg: &IngestConfig, total: Option<u64>) -> indicatif::ProgressBar {
    if !cfg.progress || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} {msg} ETA {eta}"
    } else {
        "{spinner} {bytes} {bytes_per_sec} {msg}"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Runs the ingest. See the module docs.
pub async fn run(cfg: IngestConfig) -> Result<Summary, Failure> {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let mut keyed = false;
    let mut files = 0;
    let outcome = ingest(&cfg, &counters, &mut keyed, &mut files).await;
    let seconds = started.elapsed().as_secs_f64();
    let c = &counters;
    let (bytes, words) = (
        c.bytes.load(Ordering::Relaxed),
        c.words.load(Ordering::Relaxed),
    );
    let summary = Summary {
        files,
        bytes,
        chunks: c.chunks.load(Ordering::Relaxed),
        words,
        seconds,
        words_per_second: words as f64 / seconds.max(1e-9),
        bytes_per_second: bytes as f64 / seconds.max(1e-9),
        retries: c.retries.load(Ordering::Relaxed),
        seq: c.seq.load(Ordering::Relaxed),
        keyed,
    };
    match outcome {
        Ok(()) => Ok(summary),
        Err(error) => Err(Failure { summary, error }),
    }
}

/// The run itself, counting into `counters` as chunks are acknowledged.
async fn ingest(
    cfg: &IngestConfig,
    counters: &Arc<Counters>,
    keyed_out: &mut bool,
    files_out: &mut usize,
) -> Result<(), IngestError> {
    let sources = sources(&cfg.paths).map_err(IngestError::Input)?;
    let names: Arc<Vec<String>> = Arc::new(sources.iter().map(Source::name).collect());
    let total = sources
        .iter()
        .map(Source::len)
        .try_fold(0u64, |acc, l| l.map(|l| acc + l));
    let leader = Client::with_tls(&cfg.leader, &cfg.tls).with_token(cfg.auth_token.clone());
    let (keyed, max_body) = leader_terms(&leader).await?;
    *keyed_out = keyed;
    let run_id = format!("{:016x}", rand::random::<u64>());
    *files_out = sources.len();
    let (tx, mut rx) = mpsc::channel(cfg.concurrency.max(1) * 2);
    // A run without white space may make a chunk larger than --chunk-size, up to what
    // the leader takes (less a little for a form's framing, were it one).
    let limit = max_body.unwrap_or(DEFAULT_MAX_BODY);
    spawn_reader(sources, cfg.chunk_size, limit.saturating_sub(64), tx);
    let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let bar = progress_bar(cfg, total);
    let started = Instant::now();
    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<IngestError>();
    let mut failure = None;
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(piece) = rx.recv().await {
        if let Ok(e) = err_rx.try_recv() {
            failure = Some(e);
            break;
        }
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        // A chunk larger than the leader says it takes is refused here, as the leader
        // would (413): sent, the leader answers before reading it and closes the
        // connection, and a client still sending may see only the reset.
        if let Some(max) = max_body
            && piece.text.len() > max
        {
            failure = Some(IngestError::Refused {
                source_name: names[piece.source].clone(),
                chunk: piece.chunk,
                offset: piece.offset,
                end: piece.offset + piece.text.len() as u64,
                reason: format!(
                    "{} bytes is more than the leader's --max-body ({max} bytes): it \
                     would answer 413 Payload Too Large; use a smaller --chunk-size",
                    piece.text.len()
                ),
            });
            break;
        }
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let (leader, names, counters, err_tx, bar) = (
            leader.clone(),
            names.clone(),
            counters.clone(),
            err_tx.clone(),
            bar.clone(),
        );
        let key = keyed.then(|| format!("ingest-{run_id}-{}", piece.chunk));
        let retry_for = cfg.retry_for;
        tasks.spawn(async move {
            let _permit = permit;
            match send(&leader, &piece, key, &names, retry_for, &counters).await {
                Err(e @ IngestError::Unconfirmed { seq, .. }) => {
                    // Counted, though not as asked: it belongs in what the run counted.
                    counters
                        .bytes
                        .fetch_add(piece.text.len() as u64, Ordering::Relaxed);
                    counters.chunks.fetch_add(1, Ordering::Relaxed);
                    counters.seq.fetch_max(seq, Ordering::Relaxed);
                    let _ = err_tx.send(e);
                }
                Ok((seq, words)) => {
                    let len = piece.text.len() as u64;
                    counters.bytes.fetch_add(len, Ordering::Relaxed);
                    counters.chunks.fetch_add(1, Ordering::Relaxed);
                    let all = counters.words.fetch_add(words, Ordering::Relaxed) + words;
                    counters.seq.fetch_max(seq, Ordering::Relaxed);
                    bar.inc(len);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{:.0} words/s", all as f64 / secs));
                }
                Err(e) => {
                    let _ = err_tx.send(e);
                }
            }
        });
    }
    drop(rx);
    while tasks.join_next().await.is_some() {}
    bar.finish_and_clear();
    match failure.or_else(|| err_rx.try_recv().ok()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, body: &str) -> ClientError {
        ClientError::Status {
            url: "http://127.0.0.1:1/post".to_owned(),
            status: StatusCode::from_u16(code).unwrap(),
            body: body.to_owned(),
        }
    }

    #[test]
    fn refusals_that_applied_nothing_are_retried_with_or_without_a_key() {
        for e in [
            status(307, r#"{"error":"node 2 leads the group","leader_id":2}"#),
            status(429, r#"{"error":"too many requests"}"#),
            status(507, r#"{"error":"disk full"}"#),
            status(
                503,
                r#"{"error":"no leader","reason":"no_leader","applied":"no"}"#,
            ),
        ] {
            assert_eq!(retryable(&e, false), Ok(()), "{e}");
            assert_eq!(retryable(&e, true), Ok(()), "{e}");
        }
    }

    #[test]
    fn an_outcome_that_may_have_counted_is_retried_only_with_a_key() {
        // Applied, not yet durable: a retry without a key would count it twice.
        let applied = status(503, r#"{"error":"not durable","seq":7}"#);
        assert_eq!(retryable(&applied, false), Err(true));
        assert_eq!(retryable(&applied, true), Ok(()));
        let timeout = status(504, r#"{"error":"commit timed out"}"#);
        assert_eq!(retryable(&timeout, false), Err(true));
        assert_eq!(retryable(&timeout, true), Ok(()));
        // A 503 that does not say nothing was counted: unknown, or from a proxy.
        for body in [
            r#"{"error":"not committed","applied":"unknown"}"#,
            r#"{"error":"the request took longer than the node's --request-timeout"}"#,
            "<html>bad gateway</html>",
        ] {
            let e = status(503, body);
            assert_eq!(retryable(&e, false), Err(true), "{body}");
            assert_eq!(retryable(&e, true), Ok(()), "{body}");
        }
    }

    #[test]
    fn bad_input_is_never_retried() {
        for code in [400, 401, 413, 422] {
            let e = status(code, r#"{"error":"bad"}"#);
            assert_eq!(retryable(&e, false), Err(false), "{code}");
            assert_eq!(retryable(&e, true), Err(false), "{code}");
        }
    }
}
