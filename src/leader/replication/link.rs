//! One replica the leader pushes to ([`Link`]), what its sender shares with every
//! other ([`Ctx`]), and where senders read the log.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leader::backlog::Backlog;
use crate::protocol::Incarnation;
use crate::words::Tokenizer;

/// At most this many batches are coalesced into one push...
pub(super) const MAX_PUSH_BATCHES: usize = 10_000;
/// ...and pushes stop growing at about this many bytes of deltas (replicas accept 64 MiB).
pub(super) const MAX_PUSH_BYTES: usize = 8 << 20;
/// Retry delays for an unreachable or resyncing replica: from the first to the cap.
pub(super) const BACKOFF_START: Duration = Duration::from_millis(20);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How a link to a replica is doing, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// Not reached yet.
    Connecting,
    /// Reachable and following.
    Ok,
    /// The last push failed to get through; retrying with backoff.
    Down,
    /// Full-syncing from the leader.
    Resyncing,
}

#[derive(Debug)]
pub(super) struct LinkState {
    /// The replica's seq as it last told us; `None` until we know.
    pub(super) acked: Option<u64>,
    pub(super) status: LinkStatus,
    pub(super) last_error: Option<String>,
    pub(super) last_ok: Option<Instant>,
    pub(super) pushes: u64,
    /// Pushes whose batches came from the write-ahead log, not the backlog.
    pub(super) log_pushes: u64,
    pub(super) resyncs: u64,
}

/// One replica the leader pushes to.
#[derive(Debug)]
pub struct Link {
    pub url: String,
    /// Set by `--replica` (kept for the process's life) rather than by registration.
    pub static_: bool,
    /// When the replica last registered (its heartbeat); registered replicas that
    /// stay silent longer than the replica timeout are removed.
    pub(super) last_seen: Mutex<Instant>,
    /// Set once the link is removed: its sender stops.
    pub(super) removed: AtomicBool,
    pub(super) state: Mutex<LinkState>,
    /// Wakes the sender when a heartbeat corrected what it believes.
    pub(super) wake: tokio::sync::Notify,
}

/// A replica's line in the leader's `/health`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LinkReport {
    pub url: String,
    pub status: LinkStatus,
    pub acked_seq: Option<u64>,
    /// Batches the replica is behind the leader (unknown while it is not reachable).
    pub lag: Option<u64>,
    /// How long ago the oldest batch it lacks was applied on the leader: 0 when caught
    /// up (unknown while it is not reachable, or right after a leader restart).
    pub lag_ms: Option<u64>,
    pub last_ok_ms_ago: Option<u64>,
    pub last_error: Option<String>,
    pub pushes: u64,
    /// Pushes read back from the write-ahead log (the backlog no longer held them).
    pub log_pushes: u64,
    pub resyncs: u64,
}

impl Link {
    pub(super) fn acked(&self) -> Option<u64> {
        self.state.lock().acked
    }
}

pub(super) struct Ctx {
    pub(super) backlog: Arc<Mutex<Backlog>>,
    pub(super) seq_rx: watch::Receiver<u64>,
    pub(super) incarnation: Incarnation,
    pub(super) tokenizer: Tokenizer,
    pub(super) http: reqwest::Client,
    /// Bumped whenever any replica acknowledges something (wakes `min_acks` waiters).
    pub(super) acks: watch::Sender<u64>,
    /// Pause after each successful push (see `LeaderConfig::replication_linger`).
    pub(super) linger: Duration,
    /// Sent to replicas with every push.
    pub(super) token: Option<crate::server::auth::Token>,
    /// What the leader's calls trust and present; it vets replicas' URLs.
    pub(super) tls: crate::tls::ClientTls,
    /// This incarnation's push secret, sent with every push.
    pub(super) secret: String,
    /// The write-ahead log that holds what the backlog no longer does.
    pub(super) log: Option<LogSource>,
    pub(super) abort: CancellationToken,
}

/// Where the senders read the write-ahead log.
pub struct LogSource {
    /// The leader's data directory.
    pub dir: PathBuf,
    /// The seq the log writer has written through (batches reach the log a moment
    /// after the backlog).
    pub written: watch::Receiver<u64>,
}
