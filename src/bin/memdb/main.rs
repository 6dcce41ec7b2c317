//! The `memdb` binary: parses flags, sets up logging, binds, and runs a role.

mod args;
mod config_file;

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use memdb::config::LocalReplicaConfig;
use memdb::config::{LeaderConfig, ReplicaConfig};
use memdb::server::auth::Token;
use memdb::server::shutdown::shutdown_signal;
use tokio::net::TcpListener;

use args::{Cli, Command, Listen, LogFormat, PerfArgs};
use config_file::apply_config_file;

async fn bind(listen: &Listen, role: &str) -> anyhow::Result<TcpListener> {
    let listener = memdb::server::listen::bind(&listen.host, listen.port, listen.listen_backlog)
        .await
        .with_context(|| format!("binding {}:{}", listen.host, listen.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(role, %addr, "listening");
    if let Some(path) = &listen.addr_file {
        // Written aside and renamed, so a reader never sees half an address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n"))
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing the bound address to {}", path.display()))?;
    }
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

async fn run(cli: Cli, fds: std::io::Result<u64>) -> anyhow::Result<()> {
    if let Command::Perf(a) = cli.command {
        return perf(a).await;
    }
    let cli = match cli.command {
        Command::Ingest(a) => return ingest(a).await,
        Command::Top(a) => return top(a).await,
        Command::Count(a) => return count(a).await,
        Command::Status(a) => return status(a).await,
        Command::Certs(a) => {
            let hosts: Vec<&str> = a.hosts.iter().map(String::as_str).collect();
            let w = memdb::tls::certs::write_dir(&a.dir, &a.name, &hosts, a.replace)?;
            println!(
                "{}: {} and {} (for {}), signed by {}",
                if w.new_ca { "new CA" } else { "CA reused" },
                w.cert,
                w.key,
                a.hosts.join(", "),
                w.ca
            );
            return Ok(());
        }
        _ => cli,
    };
    let role_format = match &cli.command {
        Command::Leader(a) => a.server.common.log_format,
        Command::Replica(a) => a.server.common.log_format,
        Command::LocalReplica(a) => a.server.common.log_format,
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
                local_lag_intervals: a.local_lag_intervals,
                local_lag_floor: a.local_lag_floor,
                compact_after: a.compact_after,
                min_acks: a.min_acks,
                ack_timeout: a.ack_timeout,
                tokenizer: a.tokenizer,
                max_body: a.max_body,
                backlog_batches: a.backlog,
                drain_timeout: a.drain_timeout,
                max_wait: a.max_wait,
                socket: a.socket,
                reader_group: a.reader_group,
                replication_linger: a.replication_linger,
                wal: memdb::storage::log::WalOptions {
                    fsync: a.fsync,
                    segment_bytes: a.wal_segment_size as u64,
                    retain_bytes: a.wal_retain as u64,
                },
                serving: a.server.serving()?,
                rescue_dir: a.rescue_dir,
                raft: a.node_id.map(|id| memdb::config::RaftConfig {
                    peers: a.peers.iter().cloned().collect(),
                    cluster: a.cluster.clone(),
                    election_timeout: a.election_timeout,
                    heartbeat: a.raft_heartbeat,
                    snapshot_every: a.raft_snapshot_every.max(1),
                    snapshot_bytes: (a.raft_snapshot_bytes as u64).max(1),
                    log_cache_bytes: a.raft_log_cache,
                    write_timeout: a.write_timeout,
                    key_window: a.idempotency_window,
                    key_bytes: a.idempotency_max_bytes,
                    ..memdb::config::RaftConfig::new(id)
                }),
                ..LeaderConfig::new(a.data_dir)
            };
            if config.raft.as_ref().is_some_and(|r| r.node_id == 0) {
                anyhow::bail!("--node-id must be 1 or more (0 means \"no node\" to raft)");
            }
            if let Some(r) = &config.raft
                && !r.peers.is_empty()
                && !r.peers.contains_key(&r.node_id)
            {
                anyhow::bail!("--peers must include this node's --node-id {}", r.node_id);
            }
            // Open the data directory first: a locked or unreadable one fails before a
            // port is bound, and "listening" means the data is loaded.
            let leader = memdb::leader::Leader::open(config)?;
            let listener = bind(&a.server.listen, "leader").await?;
            leader.start_consensus().await?;
            memdb::leader::serve(listener, leader, shutdown).await?;
        }
        Command::Replica(a) => {
            let serving = a.server.serving()?;
            for url in &a.leader {
                if let Err(why) = serving.client_tls.check_peer(url) {
                    anyhow::bail!("--leader {why}");
                }
            }
            let listener = bind(&a.server.listen, "replica").await?;
            let config = ReplicaConfig {
                advertise: a.advertise,
                data_dir: a.data_dir,
                rebase_words: a.rebase_words,
                heartbeat: a.heartbeat,
                max_body: a.max_body,
                max_wait: a.max_wait,
                serving,
                fallbacks: a.leader[1..].to_vec(),
                ..ReplicaConfig::new(a.leader[0].clone())
            };
            memdb::replica::network::routes::run(listener, config, shutdown).await?;
        }
        Command::Perf(_)
        | Command::Ingest(_)
        | Command::Top(_)
        | Command::Count(_)
        | Command::Status(_)
        | Command::Certs(_) => unreachable!("handled above"),
        Command::Baseline(a) => {
            let listener = bind(&a.listen, "baseline").await?;
            memdb::server::listen::serve(
                listener,
                memdb::server::baseline::baseline_router(),
                shutdown,
                Default::default(),
                None,
            )
            .await?;
        }
        Command::LocalReplica(a) => {
            let listener = bind(&a.server.listen, "local-replica").await?;
            let config = LocalReplicaConfig {
                socket: a.socket,
                poll_interval: a.poll_interval,
                max_wait: a.max_wait,
                serving: a.server.serving()?,
                max_snapshot_bytes: a.max_snapshot_size as u64,
                ..LocalReplicaConfig::new(a.data_dir)
            };
            memdb::replica::local::routes::run(listener, config, shutdown).await?;
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
        write_to: a.write_to,
        retry_with_keys: a.retry_with_keys,
        tls: a.tls.client_tls()?,
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

/// The client of a `memdb top|count|status`.
fn node_client(a: &args::NodeArgs) -> anyhow::Result<memdb::client::Client> {
    Ok(
        memdb::client::Client::with_tls(a.url.trim_end_matches('/'), &a.tls.client_tls()?)
            .with_token(a.auth_token.as_deref().and_then(Token::new)),
    )
}

async fn top(a: args::TopArgs) -> anyhow::Result<()> {
    let c = node_client(&a.node)?;
    let reply = c.top(a.n, &a.prefix, a.min_seq).await?;
    if a.node.json {
        println!("{}", serde_json::to_string_pretty(&reply.words)?);
    } else {
        print!("{}", memdb::cli::top_table(c.base(), &reply));
    }
    Ok(())
}

async fn count(a: args::CountArgs) -> anyhow::Result<()> {
    let c = node_client(&a.node)?;
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    let (seq, counts) = c.wordcount_at(&words, a.min_seq).await?;
    let counts = serde_json::to_value(counts)?;
    if a.node.json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
    } else {
        print!(
            "{}",
            memdb::cli::count_table(c.base(), &a.words, &counts, seq)
        );
    }
    Ok(())
}

async fn status(a: args::NodeArgs) -> anyhow::Result<()> {
    let c = node_client(&a)?;
    let (code, health) = c.health().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&health)?);
    } else {
        print!("{}", memdb::cli::status_text(c.base(), &health));
    }
    if !code.is_success() {
        std::process::exit(1);
    }
    Ok(())
}

async fn ingest(a: args::IngestArgs) -> anyhow::Result<()> {
    // Warnings (a file skipped) on stderr: stdout carries the summary.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("memdb=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cfg = memdb::ingest::IngestConfig {
        leader: a.leader,
        paths: a.paths,
        chunk_size: a.chunk_size,
        concurrency: a.concurrency,
        auth_token: a.auth_token.as_deref().and_then(Token::new),
        progress: !a.json,
        retry_for: a.retry_for,
        tls: a.tls.client_tls()?,
    };
    let (s, failure) = match memdb::ingest::run(cfg).await {
        Ok(s) => (s, None),
        Err(f) => (f.summary, Some(f.error)),
    };
    // What was counted is said first, on stdout, whether the run finished or not.
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        v["ok"] = failure.is_none().into();
        if let Some(e) = &failure {
            v["error"] = e.to_string().into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} {} file(s), {} in {:.1} s: {} words ({:.0} words/s, {}/s), {} chunks \
             acknowledged, {} retries, last seq {}{}",
            if failure.is_none() {
                "ingested"
            } else {
                "stopped after"
            },
            s.files,
            bytesize::ByteSize(s.bytes),
            s.seconds,
            s.words,
            s.words_per_second,
            bytesize::ByteSize(s.bytes_per_second as u64),
            s.chunks,
            s.retries,
            s.seq,
            if s.keyed { " (idempotency keys)" } else { "" }
        );
    }
    if let Some(e) = failure {
        eprintln!("memdb ingest: {e}");
        std::process::exit(1);
    }
    Ok(())
}
