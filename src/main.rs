//! The `memdb` binary: parses flags, sets up logging, binds, and runs a role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use memdb::config::LocalReplicaConfig;
use memdb::config::{LeaderConfig, ReplicaConfig, Serving, parse_duration, parse_size};
use memdb::server::auth::Token;
use memdb::server::shutdown::shutdown_signal;
use memdb::words::Tokenizer;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "memdb",
    version,
    about = "A replicated in-memory word-count database"
)]
struct Cli {
    /// A TOML config file (also taken after the server role's name).
    #[arg(long)]
    #[allow(dead_code)] // Read from the raw arguments before parsing (apply_config_file).
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (also taken after the server role's name).
    #[arg(long)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// What every server role takes besides its own flags.
#[derive(Args)]
struct Common {
    /// A TOML config file with [leader], [replica] and [local-replica] tables keyed by
    /// flag name; flags and environment variables override it.
    #[arg(long, env = "MEMDB_CONFIG")]
    #[allow(dead_code)] // Read from the raw arguments before parsing (apply_config_file).
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line) [default: text]. RUST_LOG
    /// sets the filter.
    #[arg(long, env = "MEMDB_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest text, count words, replicate to replicas, publish snapshots.
    Leader(LeaderArgs),
    /// Serve reads from a copy kept in step by the leader over HTTP.
    Replica(ReplicaArgs),
    /// Serve reads straight from the leader's memory-mapped snapshot (same host).
    LocalReplica(LocalReplicaArgs),
    /// Load a running cluster (POSTs to the leader, GETs on the replicas), then check
    /// that every replica holds exactly the leader's counts. Exits 1 if one does not.
    Perf(PerfArgs),
    /// A bare axum server with no work behind its routes: the benchmarks' baseline.
    #[command(hide = true)]
    Baseline(BaselineArgs),
}

#[derive(Args)]
struct BaselineArgs {
    #[command(flatten)]
    listen: Listen,
}

#[derive(Args)]
struct PerfArgs {
    /// The leader's URL, e.g. http://localhost:8080.
    leader: String,
    /// The replicas' URLs (network or local).
    #[arg(required = true)]
    replicas: Vec<String>,
    /// POSTs to send, then as many GETs (ignored with --duration).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Run each phase for this long instead of a fixed number of requests.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Post this many random words from the phrases' vocabulary instead of whole phrases.
    #[arg(long)]
    words_per_post: Option<usize>,
    /// A file of phrases, one per line, instead of the built-in ten.
    #[arg(long)]
    phrases: Option<PathBuf>,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long replicas may take to reach the leader's seq before the check.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    converge_timeout: Duration,
    /// Print one machine-readable JSON report instead of text.
    #[arg(long)]
    json: bool,
    /// Bearer token to send with every request.
    #[arg(long, env = "MEMDB_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
}

#[derive(Args)]
struct Listen {
    /// Address to bind.
    #[arg(long, env = "MEMDB_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 picks a free one; the bound address is logged).
    #[arg(long, env = "MEMDB_PORT")]
    port: u16,
    /// Requests handled at once; beyond it requests are answered 503 at once.
    #[arg(long, env = "MEMDB_MAX_CONCURRENT", default_value_t = 4096)]
    max_concurrent: usize,
    /// Longest a request may take before it is answered 503 (0 = no limit).
    #[arg(long, env = "MEMDB_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Requests per second this node accepts (bursts of as many); beyond it 429.
    #[arg(long, env = "MEMDB_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Close a connection whose request headers take longer than this, counted from
    /// its opening or its previous response (also the keep-alive idle timeout; 0 = never).
    #[arg(long, env = "MEMDB_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections open at once; beyond it new ones are closed and logged [default: the
    /// open-file limit less 256].
    #[arg(
        long,
        env = "MEMDB_MAX_CONNECTIONS",
        default_value_t = 0,
        hide_default_value = true
    )]
    max_connections: usize,
    /// Bytes of request bodies handled at once; beyond it 503 at once.
    #[arg(long, env = "MEMDB_MAX_BODY_IN_FLIGHT", default_value = "256MiB", value_parser = parse_size)]
    max_body_in_flight: usize,
    /// Connections the kernel queues before they are accepted (capped by
    /// net.core.somaxconn).
    #[arg(long, env = "MEMDB_LISTEN_BACKLOG", default_value_t = memdb::server::listen::DEFAULT_LISTEN_BACKLOG)]
    listen_backlog: u32,
}

/// Token, read protection and limits from a serving role's flags.
fn serving(listen: &Listen, auth: &AuthArgs) -> anyhow::Result<Serving> {
    Ok(Serving {
        auth_token: auth.token()?,
        protect_reads: auth.protect_reads,
        limits: memdb::config::Limits {
            max_concurrent: listen.max_concurrent,
            request_timeout: listen.request_timeout,
            rate_limit: listen.rate_limit,
            max_body_in_flight: listen.max_body_in_flight,
            connections: memdb::server::listen::Connections {
                idle_timeout: listen.idle_timeout,
                max_connections: listen.max_connections,
            },
        },
    })
}

#[derive(Args)]
struct AuthArgs {
    /// Bearer token required on writes, replication, /sync and admin routes (and on
    /// reads with --protect-reads); nodes send it to each other.
    #[arg(long, env = "MEMDB_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Read the token from this file instead (first line).
    #[arg(long, env = "MEMDB_AUTH_TOKEN_FILE", conflicts_with = "auth_token")]
    auth_token_file: Option<PathBuf>,
    /// Require the token on GET /wordcount too.
    #[arg(long, env = "MEMDB_PROTECT_READS")]
    protect_reads: bool,
}

impl AuthArgs {
    fn token(&self) -> anyhow::Result<Option<Token>> {
        let raw = match (&self.auth_token, &self.auth_token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
            (None, None) => {
                anyhow::ensure!(!self.protect_reads, "--protect-reads needs --auth-token");
                return Ok(None);
            }
        };
        Token::new(&raw)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("the auth token is empty"))
    }
}

#[derive(Args)]
struct LeaderArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    auth: AuthArgs,
    /// Directory for the snapshot, write-ahead log, history, lock file and
    /// notification socket (created 0700).
    #[arg(long, env = "MEMDB_DATA_DIR")]
    data_dir: PathBuf,
    /// A network replica to push to (repeatable; replicas may also register themselves).
    #[arg(long = "replica", env = "MEMDB_REPLICAS", value_delimiter = ',')]
    replicas: Vec<String>,
    /// At most this many network replicas (named and registered).
    #[arg(long, env = "MEMDB_MAX_REPLICAS", default_value_t = 64)]
    max_replicas: usize,
    /// Remove a registered replica whose heartbeats stop for this long.
    #[arg(long, env = "MEMDB_REPLICA_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    replica_timeout: Duration,
    /// How often to publish a snapshot when the table changed.
    #[arg(long, env = "MEMDB_SNAPSHOT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    snapshot_interval: Duration,
    /// Replicas that must apply a write before POST /post answers (0 = asynchronous).
    #[arg(long, env = "MEMDB_MIN_ACKS", default_value_t = 0)]
    min_acks: usize,
    /// How long a write waits for --min-acks before answering 504.
    #[arg(long, env = "MEMDB_ACK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    ack_timeout: Duration,
    /// unicode (UAX #29 words, lower-cased) or whitespace (the Go original's rule).
    #[arg(long, env = "MEMDB_TOKENIZER", default_value = "unicode")]
    tokenizer: Tokenizer,
    /// Largest request body accepted.
    #[arg(long, env = "MEMDB_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    max_body: usize,
    /// Recent batches kept to resend to replicas that fell behind.
    #[arg(long, env = "MEMDB_BACKLOG", default_value_t = 100_000)]
    backlog: usize,
    /// On shutdown, how long to wait for replicas to catch up.
    #[arg(long, env = "MEMDB_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Longest a read with min_seq waits.
    #[arg(long, env = "MEMDB_MAX_WAIT", default_value = "2s", value_parser = parse_duration)]
    max_wait: Duration,
    /// Unix socket that tells local replicas a snapshot is ready [default: DATA_DIR/memdb.sock].
    #[arg(long, env = "MEMDB_SOCKET")]
    socket: Option<PathBuf>,
    /// Pause after each push to a network replica so more batches coalesce (0 = none;
    /// not applied with --min-acks).
    #[arg(long, env = "MEMDB_REPLICATION_LINGER", default_value = "1ms", value_parser = parse_duration)]
    replication_linger: Duration,
    /// always (acknowledge after the log is fsynced; group commit), everysec, or no.
    #[arg(long, env = "MEMDB_FSYNC", default_value = "everysec")]
    fsync: memdb::storage::log::FsyncPolicy,
    /// Close a log segment and start the next once it holds this much.
    #[arg(long, env = "MEMDB_WAL_SEGMENT_SIZE", default_value = "16MiB", value_parser = parse_size)]
    wal_segment_size: usize,
    /// Log segments a snapshot already covers are kept up to this size, so that
    /// network replicas far behind (or following across a restart) catch up from the
    /// log instead of a full sync. 0 keeps only what recovery needs.
    #[arg(long, env = "MEMDB_WAL_RETAIN", default_value = "256MiB", value_parser = parse_size)]
    wal_retain: usize,
    /// If the data directory cannot be written at shutdown (a full disk), the table is
    /// saved here instead and the leader exits non-zero naming the file [default: the
    /// system temp directory].
    #[arg(long, env = "MEMDB_RESCUE_DIR")]
    rescue_dir: Option<PathBuf>,
}

#[derive(Args)]
struct LocalReplicaArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    auth: AuthArgs,
    /// The leader's data directory (read only).
    #[arg(long, env = "MEMDB_DATA_DIR")]
    data_dir: PathBuf,
    /// The leader's notification socket [default: DATA_DIR/memdb.sock].
    #[arg(long, env = "MEMDB_SOCKET")]
    socket: Option<PathBuf>,
    /// Refuse snapshot files larger than this, before reading them.
    #[arg(long, env = "MEMDB_MAX_SNAPSHOT_SIZE", default_value = "16GiB", value_parser = parse_size)]
    max_snapshot_size: usize,
    /// How often to check the snapshot file if notifications fail.
    #[arg(long, env = "MEMDB_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Longest a read with min_seq waits.
    #[arg(long, env = "MEMDB_MAX_WAIT", default_value = "2s", value_parser = parse_duration)]
    max_wait: Duration,
}

#[derive(Args)]
struct ReplicaArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    auth: AuthArgs,
    /// The leader's URL.
    #[arg(long, env = "MEMDB_LEADER")]
    leader: String,
    /// The URL the leader should push to (default: http://<bound address>).
    #[arg(long, env = "MEMDB_ADVERTISE")]
    advertise: Option<String>,
    /// How often to re-register with the leader (also how a restart is noticed).
    #[arg(long, env = "MEMDB_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Largest request body accepted (pushed batches).
    #[arg(long, env = "MEMDB_MAX_BODY", default_value = "64MiB", value_parser = parse_size)]
    max_body: usize,
    /// Longest a read with min_seq waits.
    #[arg(long, env = "MEMDB_MAX_WAIT", default_value = "2s", value_parser = parse_duration)]
    max_wait: Duration,
}

async fn bind(listen: &Listen, role: &str) -> anyhow::Result<TcpListener> {
    let listener = memdb::server::listen::bind(&listen.host, listen.port, listen.listen_backlog)
        .await
        .with_context(|| format!("binding {}:{}", listen.host, listen.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(role, %addr, "listening");
    // Under systemd with Type=notify: tell it we serve (a no-op elsewhere).
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd of readiness");
    }
    Ok(listener)
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("memdb=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // As Redis and nginx do: every connection a client opens costs a descriptor, and
    // the soft limit (often 1024) is far below what the hard limit allows.
    let fds = rlimit::increase_nofile_limit(u64::MAX);
    // Still single-threaded: the only safe moment to set environment variables.
    apply_config_file(&args)?;
    let cli = Cli::parse_from(args);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli, fds))
}

/// `--config FILE` (or `MEMDB_CONFIG`): a TOML file with a table per role (`[leader]`,
/// `[replica]`, `[local-replica]`) whose keys are the long flag names. Each setting
/// becomes the flag's `MEMDB_*` variable unless that is already set, so the precedence
/// is: command-line flag, then environment variable, then config file, then default.
/// Unknown roles and keys are errors (a typo must not be silently ignored).
fn apply_config_file(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut path = std::env::var_os("MEMDB_CONFIG").map(PathBuf::from);
    let mut role = None;
    let mut it = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--config" {
            path = it.next().map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        } else if role.is_none() && ["leader", "replica", "local-replica"].contains(&a.as_str()) {
            role = Some(a);
        }
    }
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text)
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let cmd = Cli::command();
    for (section, table) in &doc {
        let Some(sub) = cmd.find_subcommand(section) else {
            anyhow::bail!(
                "{}: unknown table [{section}]: expected [leader], [replica] or [local-replica]",
                path.display()
            );
        };
        let table = table
            .as_table()
            .with_context(|| format!("{}: [{section}] must be a table", path.display()))?;
        for (key, value) in table {
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .with_context(|| {
                    format!("{}: unknown setting {key:?} in [{section}]", path.display())
                })?;
            let env = arg.get_env().with_context(|| {
                format!("{}: {key:?} cannot be set from a file", path.display())
            })?;
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        other => Err(anyhow::anyhow!(
                            "{}: {key:?} holds an unsupported value {other:?}",
                            path.display()
                        )),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(","),
                other => anyhow::bail!(
                    "{}: {key:?} has an unsupported value {other:?}",
                    path.display()
                ),
            };
            // Only the running role's table applies; the others are still checked.
            if role.as_deref() == Some(section.as_str()) && std::env::var_os(env).is_none() {
                // SAFETY: called at the top of `main`, before any thread is started.
                #[allow(unsafe_code)]
                unsafe {
                    std::env::set_var(env, value)
                };
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli, fds: std::io::Result<u64>) -> anyhow::Result<()> {
    if let Command::Perf(a) = cli.command {
        return perf(a).await;
    }
    let role_format = match &cli.command {
        Command::Leader(a) => a.common.log_format,
        Command::Replica(a) => a.common.log_format,
        Command::LocalReplica(a) => a.common.log_format,
        _ => None,
    };
    init_tracing(role_format.or(cli.log_format).unwrap_or(LogFormat::Text));
    match fds {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    // Before anything is bound: a SIGTERM from then on always gets a clean shutdown.
    let shutdown = shutdown_signal();
    match cli.command {
        Command::Leader(a) => {
            let config = LeaderConfig {
                replicas: a.replicas,
                max_replicas: a.max_replicas,
                replica_timeout: a.replica_timeout,
                snapshot_interval: a.snapshot_interval,
                min_acks: a.min_acks,
                ack_timeout: a.ack_timeout,
                tokenizer: a.tokenizer,
                max_body: a.max_body,
                backlog_batches: a.backlog,
                drain_timeout: a.drain_timeout,
                max_wait: a.max_wait,
                socket: a.socket,
                replication_linger: a.replication_linger,
                wal: memdb::storage::log::WalOptions {
                    fsync: a.fsync,
                    segment_bytes: a.wal_segment_size as u64,
                    retain_bytes: a.wal_retain as u64,
                },
                serving: serving(&a.listen, &a.auth)?,
                rescue_dir: a.rescue_dir,
                ..LeaderConfig::new(a.data_dir)
            };
            // Open the data directory first: a locked or unreadable one fails before a
            // port is bound, and "listening" means the data is loaded.
            let leader = memdb::leader::Leader::open(config)?;
            let listener = bind(&a.listen, "leader").await?;
            memdb::leader::serve(listener, leader, shutdown).await?;
        }
        Command::Replica(a) => {
            let listener = bind(&a.listen, "replica").await?;
            let config = ReplicaConfig {
                advertise: a.advertise,
                heartbeat: a.heartbeat,
                max_body: a.max_body,
                max_wait: a.max_wait,
                serving: serving(&a.listen, &a.auth)?,
                ..ReplicaConfig::new(a.leader)
            };
            memdb::replica::network::run(listener, config, shutdown).await?;
        }
        Command::Perf(_) => unreachable!("handled above"),
        Command::Baseline(a) => {
            let listener = bind(&a.listen, "baseline").await?;
            memdb::server::listen::serve(
                listener,
                memdb::server::baseline::baseline_router(),
                shutdown,
                Default::default(),
            )
            .await?;
        }
        Command::LocalReplica(a) => {
            let listener = bind(&a.listen, "local-replica").await?;
            let config = LocalReplicaConfig {
                socket: a.socket,
                poll_interval: a.poll_interval,
                max_wait: a.max_wait,
                serving: serving(&a.listen, &a.auth)?,
                max_snapshot_bytes: a.max_snapshot_size as u64,
                ..LocalReplicaConfig::new(a.data_dir)
            };
            memdb::replica::local::run(listener, config, shutdown).await?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn perf(a: PerfArgs) -> anyhow::Result<()> {
    let cfg = memdb::perf::PerfConfig {
        leader: a.leader,
        replicas: a.replicas,
        requests: a.requests,
        concurrency: a.concurrency,
        duration: a.duration,
        words_per_post: a.words_per_post,
        phrases_file: a.phrases,
        seed: a.seed,
        converge_timeout: a.converge_timeout,
        progress: !a.json,
        auth_token: a.auth_token.as_deref().and_then(Token::new),
    };
    let report = memdb::perf::run(cfg).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        memdb::perf::print_report(&report);
    }
    if !report.consistent() {
        std::process::exit(1);
    }
    Ok(())
}
