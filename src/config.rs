//! Validated configuration for each role, with documented defaults. The binary fills
//! these from flags and environment variables; tests build them directly.

use std::path::PathBuf;
use std::time::Duration;

use crate::words::Tokenizer;

pub use crate::server::serving::{Limits, Serving};

/// A leader's settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Where the snapshot (checkpoint) and lock file live. Created 0700 if missing.
    pub data_dir: PathBuf,
    /// Network replicas named at start (more can register with `POST /replicas`).
    pub replicas: Vec<String>,
    /// At most this many network replicas, named and registered. Default 64.
    pub max_replicas: usize,
    /// A registered replica silent (no heartbeat) for this long is removed. Replicas
    /// named with `--replica` are kept. Default 10s.
    pub replica_timeout: Duration,
    /// How often the table is published as a snapshot when it changed. Default 1s.
    pub snapshot_interval: Duration,
    /// A local replica behind the leader's publications by more than this many
    /// intervals and more than `local_lag_floor` is a `/health` problem. Default 10.
    pub local_lag_intervals: u32,
    /// See `local_lag_intervals`: covers loading a new base of ten million words.
    /// Default 5s.
    pub local_lag_floor: Duration,
    /// Compact (merge the delta into a new base) once the delta holds this many words
    /// or an eighth of the base, whichever is more. Default 65 536.
    pub compact_after: usize,
    /// How many replicas must apply a write before `POST /post` answers. Default 0.
    pub min_acks: usize,
    /// How long a write waits for `min_acks` before answering 504. Default 2s.
    pub ack_timeout: Duration,
    pub tokenizer: Tokenizer,
    /// Largest request body accepted. Default 1 MiB.
    pub max_body: usize,
    /// Recent batches kept for resending to replicas that fell behind. Default 100 000.
    pub backlog_batches: usize,
    /// Byte budget of that backlog. Default 64 MiB.
    pub backlog_bytes: usize,
    /// On shutdown, how long to wait for replicas to receive what they miss. Default 5s.
    pub drain_timeout: Duration,
    /// Longest a `min_seq` read waits. Default 2s.
    pub max_wait: Duration,
    /// The Unix socket that tells local replicas a snapshot is ready; default
    /// `<data_dir>/memdb.sock`.
    pub socket: Option<PathBuf>,
    /// After each push to a network replica, wait this long so that more batches
    /// coalesce into the next push. Trades up to this much replication lag for far
    /// fewer requests under load. Not applied with `min_acks > 0` (writers wait for the
    /// push). Default 1ms.
    pub replication_linger: Duration,
    /// The write-ahead log: when a write is acknowledged relative to its record
    /// reaching the disk (default `everysec`), segment size, and how much history is
    /// kept for replicas to catch up from.
    pub wal: crate::storage::log::WalOptions,
    /// Token, read protection and limits; the token is also sent to replicas with
    /// every push.
    pub serving: Serving,
    /// Where a leader that cannot write its data directory at shutdown saves the
    /// table instead; default the system's temp directory.
    pub rescue_dir: Option<PathBuf>,
    /// Set: this node is a voter of a raft group (see [`crate::consensus`]).
    pub raft: Option<RaftConfig>,
    /// The group (by id) that may read the published state as well as the owner:
    /// local replicas and embedded readers running as other users (see
    /// [`crate::storage::sharing`]). Default none: owner-only.
    pub reader_group: Option<u32>,
}

/// A voter's raft settings.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's id in the group (each voter's differs).
    pub node_id: u64,
    /// The group's voters, id → URL, to form it at first start; empty: wait to be
    /// formed (`POST /raft/init`) or added (`POST /raft/learners` on the leader).
    pub peers: std::collections::BTreeMap<u64, String>,
    /// The group's name: RPCs naming another are refused. Default `memdb`.
    pub cluster: String,
    /// A follower that hears no leader for this long (to 1.5 times it, at random, after
    /// the old leader's lease of 1.5 times it) starts an election. Default 300ms.
    pub election_timeout: Duration,
    /// How often the leader sends heartbeats. Default 100ms.
    pub heartbeat: Duration,
    /// Take a raft snapshot after this many log entries. Default 20 000.
    pub snapshot_every: u64,
    /// Take a raft snapshot once the entries applied since the last one hold this many
    /// bytes, and keep at most this many bytes of the log behind a snapshot (for
    /// followers a little behind). Default 16 MiB.
    pub snapshot_bytes: u64,
    /// The newest raft log entries kept decoded in memory, in bytes; older ones are
    /// read back from the log's files. Default 16 MiB.
    pub log_cache_bytes: usize,
    /// How long a write waits to be committed before answering 503. Default 5s.
    pub write_timeout: Duration,
    /// How long an idempotency key is remembered, by the leader's clock as carried in
    /// the log (never each voter's own). Default 24h.
    pub key_window: Duration,
    /// The most bytes of keys remembered; past it the oldest are forgotten first.
    /// Default 64 MiB.
    pub key_bytes: usize,
}

impl RaftConfig {
    pub fn new(node_id: u64) -> Self {
        RaftConfig {
            node_id,
            peers: Default::default(),
            cluster: "memdb".into(),
            election_timeout: Duration::from_millis(300),
            heartbeat: Duration::from_millis(100),
            snapshot_every: 20_000,
            snapshot_bytes: 16 << 20,
            log_cache_bytes: 16 << 20,
            write_timeout: Duration::from_secs(5),
            key_window: Duration::from_secs(24 * 3600),
            key_bytes: 64 << 20,
        }
    }
}

impl LeaderConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LeaderConfig {
            data_dir: data_dir.into(),
            replicas: Vec::new(),
            max_replicas: 64,
            replica_timeout: Duration::from_secs(10),
            snapshot_interval: Duration::from_secs(1),
            local_lag_intervals: 10,
            local_lag_floor: Duration::from_secs(5),
            compact_after: 65_536,
            min_acks: 0,
            ack_timeout: Duration::from_secs(2),
            tokenizer: Tokenizer::Unicode,
            max_body: 1 << 20,
            backlog_batches: 100_000,
            backlog_bytes: 64 << 20,
            drain_timeout: Duration::from_secs(5),
            max_wait: Duration::from_secs(2),
            socket: None,
            reader_group: None,
            replication_linger: Duration::from_millis(1),
            wal: crate::storage::log::WalOptions::default(),
            serving: Serving::default(),
            rescue_dir: None,
            raft: None,
        }
    }
}

/// A network replica's settings.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The leader's base URL, e.g. `http://127.0.0.1:8080`.
    pub leader: String,
    /// Other voters of the leader's raft group: while the one followed cannot be
    /// reached, the replica registers with the next (every voter pushes the same
    /// batches with the same seqs, so it continues without a full sync).
    pub fallbacks: Vec<String>,
    /// The URL the leader should push to; default `http://<bound address>`.
    pub advertise: Option<String>,
    /// Where the leader's files are kept and mapped (locked, owner-only); `None`: a
    /// private directory under the system's temp directory, removed at stop. A
    /// replica's files are a copy of its leader's: a named directory only saves a
    /// restart the download of what did not change.
    pub data_dir: Option<std::path::PathBuf>,
    /// Words changed in memory (by pushes, over the mapped files) after which the
    /// replica maps the leader's newer files under them and lets go of the words they
    /// hold; 0: never. Default 250,000.
    pub rebase_words: usize,
    /// How often the replica re-registers with the leader, which is also how it notices
    /// a restarted leader. Default 1s.
    pub heartbeat: Duration,
    /// Largest request body accepted (pushed batches). Default 64 MiB.
    pub max_body: usize,
    /// Longest a `min_seq` read waits. Default 2s.
    pub max_wait: Duration,
    /// Token, read protection and limits; the token is also sent to the leader.
    pub serving: Serving,
}

impl ReplicaConfig {
    pub fn new(leader: impl Into<String>) -> Self {
        ReplicaConfig {
            leader: leader.into(),
            fallbacks: Vec::new(),
            advertise: None,
            data_dir: None,
            rebase_words: 250_000,
            heartbeat: Duration::from_secs(1),
            max_body: 64 << 20,
            max_wait: Duration::from_secs(2),
            serving: Serving::default(),
        }
    }
}

/// A local replica's settings.
#[derive(Debug, Clone)]
pub struct LocalReplicaConfig {
    /// The leader's data directory (read only).
    pub data_dir: PathBuf,
    /// The leader's notification socket; default `<data_dir>/memdb.sock`.
    pub socket: Option<PathBuf>,
    /// How often to stat the snapshot file in case both notifications fail. Default 1s.
    pub poll_interval: Duration,
    /// Longest a `min_seq` read waits. Default 2s.
    pub max_wait: Duration,
    /// Token (required on `/sync`, and on lookups with `protect_reads`) and limits.
    pub serving: Serving,
    /// A snapshot file larger than this is refused before it is read. Default 16 GiB.
    pub max_snapshot_bytes: u64,
}

impl LocalReplicaConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalReplicaConfig {
            data_dir: data_dir.into(),
            socket: None,
            poll_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(2),
            serving: Serving::default(),
            max_snapshot_bytes: 16 << 30,
        }
    }

    /// The leader's notification socket: `socket`, or `memdb.sock` in `data_dir`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::protocol::SOCKET_NAME))
    }
}

/// Parses a byte size such as `1MiB`, `512KiB`, `4096`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let b: bytesize::ByteSize = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    usize::try_from(b.as_u64()).map_err(|_| format!("{s:?} is too large"))
}

/// Parses a duration such as `200ms`, `1s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert!(parse_duration("soon").is_err());
    }
}
