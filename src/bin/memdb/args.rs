//! The command line: every subcommand and flag (each also read from a `MEMDB_*`
//! variable), and how a serving role's flags become its `Serving`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use memdb::config::{Serving, parse_duration, parse_size};
use memdb::words::Tokenizer;

mod credentials;
pub use credentials::{AuthArgs, ClientTlsArgs, TlsArgs};

#[derive(Parser)]
#[command(
    name = "memdb",
    version,
    about = "A replicated in-memory word-count database"
)]
pub struct Cli {
    /// A TOML config file (also taken after the server role's name).
    #[arg(long)]
    #[allow(dead_code)] // Read from the raw arguments before parsing (apply_config_file).
    pub config: Option<PathBuf>,
    /// Log lines as `text` or `json` (also taken after the server role's name).
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// What every server role takes besides its own flags.
#[derive(Args)]
pub struct Common {
    /// A TOML config file with [leader], [replica] and [local-replica] tables keyed by
    /// flag name; flags and environment variables override it.
    #[arg(long, env = "MEMDB_CONFIG")]
    #[allow(dead_code)] // Read from the raw arguments before parsing (apply_config_file).
    pub config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line) [default: text]. RUST_LOG
    /// sets the filter.
    #[arg(long, env = "MEMDB_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Ingest text, count words, replicate to replicas, publish snapshots.
    Leader(Box<LeaderArgs>),
    /// Serve reads from a copy kept in step by the leader over HTTP.
    Replica(ReplicaArgs),
    /// Serve reads straight from the leader's memory-mapped snapshot (same host).
    LocalReplica(LocalReplicaArgs),
    /// Stream text files (or stdin) of any size to the leader, in chunks cut at white
    /// space; directories are walked, globs expanded, .gz read.
    Ingest(IngestArgs),
    /// Load a running cluster (POSTs to the leader, GETs on the replicas), then check
    /// that every replica holds exactly the leader's counts. Exits 1 if one does not.
    Perf(PerfArgs),
    /// The most frequent words on a node (GET /top).
    Top(TopArgs),
    /// The counts of words on a node (GET /wordcount).
    Count(CountArgs),
    /// A node's state: role, seq, replicas and their lag, raft (GET /health). Exits 1
    /// while the node reports a problem.
    Status(NodeArgs),
    /// Issue a TLS certificate and key for a node or client from a throwaway private CA
    /// in DIR (made on first use): for trials and local clusters, not production.
    Certs(CertsArgs),
    /// A bare axum server with no work behind its routes: the benchmarks' baseline.
    #[command(hide = true)]
    Baseline(BaselineArgs),
}

#[derive(Args)]
pub struct CertsArgs {
    /// The directory: ca.pem and ca-key.pem (reused if there), NAME.pem, NAME-key.pem.
    #[arg(long)]
    pub dir: PathBuf,
    /// The file name of the pair (and the certificate's common name).
    #[arg(long, default_value = "node")]
    pub name: String,
    /// A DNS name or IP address the certificate is valid for (repeatable or
    /// comma-separated).
    #[arg(
        long = "host",
        value_delimiter = ',',
        default_value = "127.0.0.1,localhost"
    )]
    pub hosts: Vec<String>,
    /// Replace an existing NAME.pem (a rotation); without it, an existing pair is an error.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub listen: Listen,
}

#[derive(Args)]
pub struct PerfArgs {
    /// The leader's URL, e.g. http://localhost:8080.
    pub leader: String,
    /// The replicas' URLs (network or local).
    #[arg(required = true)]
    pub replicas: Vec<String>,
    /// POSTs to send, then as many GETs (ignored with --duration).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Run each phase for this long instead of a fixed number of requests.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Post this many random words from the phrases' vocabulary instead of whole phrases.
    #[arg(long)]
    pub words_per_post: Option<usize>,
    /// A file of phrases, one per line, instead of the built-in ten.
    #[arg(long)]
    pub phrases: Option<PathBuf>,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long replicas may take to reach the leader's seq before the check.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub converge_timeout: Duration,
    /// Print one machine-readable JSON report instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bearer token to send with every request.
    #[arg(long, env = "MEMDB_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Send the writes to these nodes in turn instead of the leader (a raft group's
    /// voters; repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub write_to: Vec<String>,
    /// Give every POST an Idempotency-Key and retry it through the next node until it
    /// is acknowledged; fail unless the leader grew by exactly the words acknowledged.
    #[arg(long)]
    pub retry_with_keys: bool,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

#[derive(Args)]
pub struct IngestArgs {
    /// Files, directories (walked, sorted), glob patterns, or - for stdin [default: stdin].
    pub paths: Vec<String>,
    /// The leader's URL (a raft group: any voter; writes follow its redirect).
    #[arg(long, env = "MEMDB_LEADER", default_value = "http://127.0.0.1:8080")]
    pub leader: String,
    /// Largest chunk, one request body: at most the leader's --max-body.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    pub chunk_size: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How long one chunk is retried (where a retry cannot count twice) before the run fails.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub retry_for: Duration,
    /// Print one JSON summary instead of a progress bar and a line.
    #[arg(long)]
    pub json: bool,
    /// Bearer token to send with every request.
    #[arg(long, env = "MEMDB_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// Which node a client command talks to, and how it prints.
#[derive(Args)]
pub struct NodeArgs {
    /// The node's URL (any role).
    #[arg(long, env = "MEMDB_URL", default_value = memdb::cli::DEFAULT_URL)]
    pub url: String,
    /// Bearer token (needed with --protect-reads).
    #[arg(long, env = "MEMDB_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Print the node's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

#[derive(Args)]
pub struct TopArgs {
    /// How many words (1 to 10000).
    #[arg(short, long, default_value_t = 10)]
    pub n: usize,
    /// Only words that start with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Answer only once the node has reached this seq.
    #[arg(long)]
    pub min_seq: Option<u64>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Args)]
pub struct CountArgs {
    /// The words to count.
    #[arg(required = true)]
    pub words: Vec<String>,
    /// Answer only once the node has reached this seq.
    #[arg(long)]
    pub min_seq: Option<u64>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Args)]
pub struct Listen {
    /// Address to bind.
    #[arg(long, env = "MEMDB_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one; the bound address is logged).
    #[arg(long, env = "MEMDB_PORT")]
    pub port: u16,
    /// Requests handled at once; beyond it requests are answered 503 at once.
    #[arg(long, env = "MEMDB_MAX_CONCURRENT", default_value_t = 4096)]
    pub max_concurrent: usize,
    /// Longest a request may take before it is answered 503 (0 = no limit).
    #[arg(long, env = "MEMDB_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Requests per second this node accepts (bursts of as many); beyond it 429.
    #[arg(long, env = "MEMDB_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Close a connection whose request headers take longer than this, counted from
    /// its opening or its previous response (also the keep-alive idle timeout; 0 = never).
    #[arg(long, env = "MEMDB_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it new ones are closed and logged [default: the
    /// open-file limit less 256].
    #[arg(
        long,
        env = "MEMDB_MAX_CONNECTIONS",
        default_value_t = 0,
        hide_default_value = true
    )]
    pub max_connections: usize,
    /// Bytes of request bodies handled at once; beyond it 503 at once.
    #[arg(long, env = "MEMDB_MAX_BODY_IN_FLIGHT", default_value = "256MiB", value_parser = parse_size)]
    pub max_body_in_flight: usize,
    /// `GET /top` requests that need a pass over the whole table (a prefix that few of
    /// the top 10,000 words start with), run at once, each next one no sooner than the
    /// last took after it ended; more are answered 429.
    #[arg(long, env = "MEMDB_MAX_SCANS", default_value_t = 1)]
    pub max_scans: usize,
    /// Connections the kernel queues before they are accepted (capped by
    /// net.core.somaxconn).
    #[arg(long, env = "MEMDB_LISTEN_BACKLOG", default_value_t = memdb::server::listen::DEFAULT_LISTEN_BACKLOG)]
    pub listen_backlog: u32,
    /// Once bound, write the address (`host:port`, one line) to this file: how scripts
    /// and tests learn the port `--port 0` picked, without reading logs.
    #[arg(long, env = "MEMDB_ADDR_FILE")]
    pub addr_file: Option<PathBuf>,
}

/// What every server role takes: the config file and log format, where and how to
/// listen, and authentication.
#[derive(Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ServerArgs {
    /// Token, read protection, limits and TLS from these flags.
    pub fn serving(&self) -> anyhow::Result<Serving> {
        serving(&self.listen, &self.auth, &self.tls)
    }
}

/// Token, read protection, limits and TLS from a serving role's flags.
fn serving(listen: &Listen, auth: &AuthArgs, tls: &TlsArgs) -> anyhow::Result<Serving> {
    let (tls, client_tls) = tls.load()?;
    let client_token = auth.token()?;
    Ok(Serving {
        tls,
        client_tls,
        peer_token: auth.peer_token(client_token.as_ref())?,
        auth_token: client_token,
        protect_reads: auth.protect_reads,
        limits: memdb::config::Limits {
            max_concurrent: listen.max_concurrent,
            request_timeout: listen.request_timeout,
            rate_limit: listen.rate_limit,
            max_body_in_flight: listen.max_body_in_flight,
            max_scans: listen.max_scans,
            connections: memdb::server::listen::Connections {
                client_addresses: false,
                idle_timeout: listen.idle_timeout,
                max_connections: listen.max_connections,
            },
        },
    })
}

#[derive(Args)]
pub struct LeaderArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Directory for the snapshot, write-ahead log, history, lock file and
    /// notification socket (created 0700).
    #[arg(long, env = "MEMDB_DATA_DIR")]
    pub data_dir: PathBuf,
    /// A network replica to push to (repeatable; replicas may also register themselves).
    #[arg(long = "replica", env = "MEMDB_REPLICAS", value_delimiter = ',')]
    pub replicas: Vec<String>,
    /// At most this many network replicas (named and registered).
    #[arg(long, env = "MEMDB_MAX_REPLICAS", default_value_t = 64)]
    pub max_replicas: usize,
    /// Remove a registered replica whose heartbeats stop for this long.
    #[arg(long, env = "MEMDB_REPLICA_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub replica_timeout: Duration,
    /// How often to publish a snapshot when the table changed.
    #[arg(long, env = "MEMDB_SNAPSHOT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// A local replica more than this many snapshot intervals behind (and more than
    /// --local-lag-floor) is a /health problem.
    #[arg(long, env = "MEMDB_LOCAL_LAG_INTERVALS", default_value_t = 10)]
    pub local_lag_intervals: u32,
    /// See --local-lag-intervals: the least lag that is a problem (covers loading a
    /// new base of ten million words).
    #[arg(long, env = "MEMDB_LOCAL_LAG_FLOOR", default_value = "5s", value_parser = parse_duration)]
    pub local_lag_floor: Duration,
    /// Merge the delta into a new base once it holds this many words or an eighth of
    /// the base, whichever is more.
    #[arg(long, env = "MEMDB_COMPACT_AFTER", default_value_t = 65_536)]
    pub compact_after: usize,
    /// Replicas that must apply a write before POST /post answers (0 = asynchronous).
    #[arg(long, env = "MEMDB_MIN_ACKS", default_value_t = 0)]
    pub min_acks: usize,
    /// How long a write waits for --min-acks before answering 504.
    #[arg(long, env = "MEMDB_ACK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// unicode (UAX #29 words, lower-cased) or whitespace (the Go original's rule).
    #[arg(long, env = "MEMDB_TOKENIZER", default_value = "unicode")]
    pub tokenizer: Tokenizer,
    /// Largest request body accepted.
    #[arg(long, env = "MEMDB_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    pub max_body: usize,
    /// Recent batches kept to resend to replicas that fell behind.
    #[arg(long, env = "MEMDB_BACKLOG", default_value_t = 100_000)]
    pub backlog: usize,
    /// On shutdown, how long to wait for replicas to catch up.
    #[arg(long, env = "MEMDB_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Longest a read with min_seq waits.
    #[arg(long, env = "MEMDB_MAX_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Unix socket that tells local replicas a snapshot is ready [default: DATA_DIR/memdb.sock].
    #[arg(long, env = "MEMDB_SOCKET")]
    pub socket: Option<PathBuf>,
    /// A group (name or id) whose members may read the published state too: local
    /// replicas and embedded readers running as other users. The data directory becomes
    /// 2750 with that group, the snapshot files 0640, the socket 0660; the logs stay
    /// owner-only. Without it everything is owner-only (applied at every start).
    #[arg(long, env = "MEMDB_READER_GROUP", value_parser = parse_group)]
    pub reader_group: Option<u32>,
    /// Pause after each push to a network replica so more batches coalesce (0 = none;
    /// not applied with --min-acks).
    #[arg(long, env = "MEMDB_REPLICATION_LINGER", default_value = "1ms", value_parser = parse_duration)]
    pub replication_linger: Duration,
    /// always (acknowledge after the log is fsynced; group commit), everysec, or no.
    #[arg(long, env = "MEMDB_FSYNC", default_value = "everysec")]
    pub fsync: memdb::storage::log::FsyncPolicy,
    /// Close a log segment and start the next once it holds this much.
    #[arg(long, env = "MEMDB_WAL_SEGMENT_SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub wal_segment_size: usize,
    /// Log segments a snapshot already covers are kept up to this size, so that
    /// network replicas far behind (or following across a restart) catch up from the
    /// log instead of a full sync. 0 keeps only what recovery needs.
    #[arg(long, env = "MEMDB_WAL_RETAIN", default_value = "256MiB", value_parser = parse_size)]
    pub wal_retain: usize,
    /// If the data directory cannot be written at shutdown (a full disk), the table is
    /// saved here instead and the leader exits non-zero naming the file [default: the
    /// system temp directory].
    #[arg(long, env = "MEMDB_RESCUE_DIR")]
    pub rescue_dir: Option<PathBuf>,
    /// Run as voter N of a raft group (automatic failover). Without it: a single
    /// leader, no election.
    #[arg(long, env = "MEMDB_NODE_ID", help_heading = "Raft group")]
    pub node_id: Option<u64>,
    /// The group's voters, to form it at first start: id=url,... (the same list on
    /// every voter). Without it the node waits to be formed (POST /raft/init) or added.
    #[arg(long, env = "MEMDB_PEERS", value_delimiter = ',', value_parser = parse_peer,
          requires = "node_id", help_heading = "Raft group")]
    pub peers: Vec<(u64, String)>,
    /// The group's name; RPCs naming another group are refused.
    #[arg(
        long,
        env = "MEMDB_CLUSTER",
        default_value = "memdb",
        help_heading = "Raft group"
    )]
    pub cluster: String,
    /// A follower that hears no leader for this long (up to 1.5 times it, at random,
    /// after the old leader's lease of 1.5 times it) starts an election.
    #[arg(long, env = "MEMDB_ELECTION_TIMEOUT", default_value = "300ms",
          value_parser = parse_duration, help_heading = "Raft group")]
    pub election_timeout: Duration,
    /// How often the raft leader sends heartbeats (well under --election-timeout).
    #[arg(long, env = "MEMDB_RAFT_HEARTBEAT", default_value = "100ms",
          value_parser = parse_duration, help_heading = "Raft group")]
    pub raft_heartbeat: Duration,
    /// Take a raft snapshot (and drop the log before it) every this many entries.
    #[arg(
        long,
        env = "MEMDB_RAFT_SNAPSHOT_EVERY",
        default_value_t = 20_000,
        help_heading = "Raft group"
    )]
    pub raft_snapshot_every: u64,
    /// Take a raft snapshot once the log since the last one holds this many bytes of
    /// entries, and keep at most this much log behind a snapshot: what bounds a
    /// voter's log, in memory and on disk, whatever the size of its writes.
    #[arg(long, env = "MEMDB_RAFT_SNAPSHOT_BYTES", default_value = "16MiB",
          value_parser = parse_size, help_heading = "Raft group")]
    pub raft_snapshot_bytes: usize,
    /// The newest raft log entries kept decoded in memory (what the leader sends to
    /// followers that keep up, and what is applied next); older entries are read back
    /// from the log's files on disk.
    #[arg(long, env = "MEMDB_RAFT_LOG_CACHE", default_value = "16MiB",
          value_parser = parse_size, help_heading = "Raft group")]
    pub raft_log_cache: usize,
    /// How long a write waits to be committed before answering 503 (outcome unknown).
    #[arg(long, env = "MEMDB_WRITE_TIMEOUT", default_value = "5s",
          value_parser = parse_duration, help_heading = "Raft group")]
    pub write_timeout: Duration,
    /// How long an Idempotency-Key is remembered (by the leader's clock, carried in the
    /// log). A retry whose key is older is answered 409, not counted again, while the
    /// key is among the last million forgotten.
    #[arg(long, env = "MEMDB_IDEMPOTENCY_WINDOW", default_value = "24h",
          value_parser = parse_duration, help_heading = "Raft group")]
    pub idempotency_window: Duration,
    /// The most bytes of Idempotency-Keys remembered (the oldest are forgotten first).
    #[arg(long, env = "MEMDB_IDEMPOTENCY_MAX_BYTES", default_value = "64MiB",
          value_parser = parse_size, help_heading = "Raft group")]
    pub idempotency_max_bytes: usize,
}

/// `id=url`.
fn parse_group(s: &str) -> Result<u32, String> {
    memdb::storage::sharing::group_id(s.trim())
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected id=url, e.g. 1=http://127.0.0.1:8080"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: node id: {e}"))?;
    let url = memdb::origin::origin(url.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((id, url))
}

#[derive(Args)]
pub struct LocalReplicaArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The leader's data directory (read only).
    #[arg(long, env = "MEMDB_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The leader's notification socket [default: DATA_DIR/memdb.sock].
    #[arg(long, env = "MEMDB_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Refuse snapshot files larger than this, before reading them.
    #[arg(long, env = "MEMDB_MAX_SNAPSHOT_SIZE", default_value = "16GiB", value_parser = parse_size)]
    pub max_snapshot_size: usize,
    /// How often to check the snapshot file if notifications fail.
    #[arg(long, env = "MEMDB_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Longest a read with min_seq waits.
    #[arg(long, env = "MEMDB_MAX_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub max_wait: Duration,
}

#[derive(Args)]
pub struct ReplicaArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The leader's URL; for a raft group, every voter's, comma-separated: the replica
    /// follows the first it reaches and moves on when that one fails.
    #[arg(long, env = "MEMDB_LEADER", value_delimiter = ',', required = true)]
    pub leader: Vec<String>,
    /// The URL the leader should push to (default: http://<bound address>).
    #[arg(long, env = "MEMDB_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where the replica keeps the leader's files it maps (locked, owner-only). A
    /// restart with the same directory downloads only what changed. Default: a private
    /// directory under $TMPDIR, removed when the replica stops.
    #[arg(long, env = "MEMDB_REPLICA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Words changed in memory by pushes after which the replica maps the leader's
    /// newer files under them and lets go of the words they hold (0: never).
    #[arg(long, env = "MEMDB_REBASE_WORDS", default_value_t = 250_000)]
    pub rebase_words: usize,
    /// How often to re-register with the leader (also how a restart is noticed).
    #[arg(long, env = "MEMDB_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Largest request body accepted (pushed batches).
    #[arg(long, env = "MEMDB_MAX_BODY", default_value = "64MiB", value_parser = parse_size)]
    pub max_body: usize,
    /// Longest a read with min_seq waits.
    #[arg(long, env = "MEMDB_MAX_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub max_wait: Duration,
}
