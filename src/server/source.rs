//! The role contract: what the shared read routes, `/sync` and `/metrics` need of a
//! node ([`CountSource`], which the leader and both replicas implement), and the
//! whole-table body `/sync` answers with ([`SyncBody`]).

use std::borrow::Cow;
use std::time::Duration;

use tokio::sync::watch;

use super::error::ApiError;
use super::metrics::Series;
use super::parse::TopQuery;
use crate::protocol::Incarnation;
use crate::words::Tokenizer;

/// A node whose counts can be read.
pub trait CountSource: Clone + Send + Sync + 'static {
    /// The seq the node's table reflects now.
    fn seq(&self) -> u64;
    /// Follows the node's seq (for `min_seq` waits).
    fn seq_watch(&self) -> watch::Receiver<u64>;
    /// The longest a `min_seq` read may wait.
    fn max_wait(&self) -> Duration;
    /// `Err` while the node has no data it may serve (a replica before its first sync).
    fn ready(&self) -> Result<(), ApiError>;
    /// A reader waits for `seq`, which this node has not reached: a hint to fetch it
    /// sooner (local replicas ask the leader to publish early).
    fn want_seq(&self, _seq: u64) {}
    /// The JSON answer for `words` (as the client wrote them) and the seq it reflects.
    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError>;
    /// The JSON answer of `GET /top` (see [`crate::server::parse::top_body`]) and the
    /// seq it reflects, from the node's ranked top list, if that holds it; `None` when
    /// only a pass over the whole table can answer ([`CountSource::top_scan`]).
    fn top_ranked(&self, q: &TopQuery<'_>) -> Result<Option<(Vec<u8>, u64)>, ApiError>;
    /// `GET /top` by a pass over the whole table: off the async threads, holding no
    /// lock that writers wait on (or, where the node has no other view, only while it
    /// scans); at most `--max-scans` run at once.
    fn top_scan(
        &self,
        q: TopQuery<'static>,
    ) -> impl std::future::Future<Output = Result<(Vec<u8>, u64), ApiError>> + Send;
    /// The whole table as a JSON object, with its seq, incarnation and tokenizer.
    fn sync_body(&self) -> impl std::future::Future<Output = SyncBody> + Send;
    /// Distinct words in the table the node serves.
    fn distinct_words(&self) -> u64;
    /// Writes the role's own series (beyond seq and distinct words) at scrape time.
    fn collect(&self, m: &mut Series<'_>);
    /// What the status page charts now (see [`super::history`]; the caller sets `t`):
    /// the seq, and a leader's words ingested and replicas' lags.
    fn chart_sample(&self) -> ChartSample {
        ChartSample {
            seq: self.seq(),
            ..Default::default()
        }
    }
}

/// Waits until `rx` reaches `min`, for at most `max_wait`; `Err` holds the seq reached.
pub async fn wait_for_seq(
    rx: &mut watch::Receiver<u64>,
    min: u64,
    max_wait: Duration,
) -> Result<(), u64> {
    let reached = matches!(
        tokio::time::timeout(max_wait, rx.wait_for(|s| *s >= min)).await,
        Ok(Ok(_))
    );
    if reached { Ok(()) } else { Err(*rx.borrow()) }
}

/// The whole table as `GET /sync` answers it: the JSON object (built, or streamed) and
/// what it belongs to.
pub struct SyncBody {
    pub body: axum::body::Body,
    pub seq: u64,
    /// `None` only for a local replica's snapshot whose header names none.
    pub incarnation: Option<Incarnation>,
    pub tokenizer: Tokenizer,
    /// About how many words the body holds (sent as a capacity hint).
    pub words: u64,
}

impl SyncBody {
    /// Serialises `table` (anything that serialises as a JSON object of word → count;
    /// `size_hint` presizes the buffer: 16 bytes a word) with what it belongs to.
    pub fn of(
        table: &impl serde::Serialize,
        size_hint: usize,
        seq: u64,
        incarnation: Option<Incarnation>,
        tokenizer: Tokenizer,
    ) -> Self {
        let mut json = Vec::with_capacity(size_hint + 2);
        serde_json::to_writer(&mut json, table).expect("serialising to a Vec cannot fail");
        SyncBody {
            body: json.into(),
            seq,
            incarnation,
            tokenizer,
            words: (size_hint / 16) as u64,
        }
    }

    /// Streams a whole table (the table at `seq`) as the JSON object, in chunks
    /// written by a blocking thread: never the whole body in memory, and no lock held.
    pub fn streamed(
        state: std::sync::Arc<dyn crate::storage::mapped::Entries>,
        tokenizer: Tokenizer,
        seq: u64,
        incarnation: impl Into<Option<Incarnation>>,
    ) -> Self {
        const CHUNK: usize = 256 << 10;
        let words = state.words();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(CHUNK + 4096);
            buf.push(b'{');
            let mut n = itoa::Buffer::new();
            for (i, (word, count)) in state.entries().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                serde_json::to_writer(&mut buf, word).expect("a str serialises");
                buf.push(b':');
                buf.extend_from_slice(n.format(count).as_bytes());
                if buf.len() >= CHUNK {
                    let chunk = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                    if tx.blocking_send(Ok(chunk.into())).is_err() {
                        return; // The client went away.
                    }
                }
            }
            buf.push(b'}');
            let _ = tx.blocking_send(Ok(buf.into()));
        });
        let chunks =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        SyncBody {
            body: axum::body::Body::from_stream(chunks),
            seq,
            incarnation: incarnation.into(),
            tokenizer,
            words,
        }
    }
}

impl<S: CountSource> super::metrics::NodeSeries for S {
    fn node_seq(&self) -> u64 {
        self.seq()
    }

    fn node_words(&self) -> u64 {
        self.distinct_words()
    }

    fn node_series(&self, m: &mut Series<'_>) {
        self.collect(m)
    }
}

/// One second of the status page's charts (kept by [`super::history`]).
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ChartSample {
    /// When, in milliseconds since the Unix epoch (the node's clock).
    pub t: u64,
    /// The node's seq.
    pub seq: u64,
    /// Words counted since start (a leader; `null` on a replica).
    pub ingested: Option<u64>,
    /// Each replica's lag by name: a network replica's URL (batches), `local <URL>` or
    /// `reader <pid>` (seqs), `raft <id>` (entries).
    pub lags: std::collections::BTreeMap<String, u64>,
}
