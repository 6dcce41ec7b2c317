//! memdb: a replicated in-memory word-count database.
//!
//! A leader ingests text, counts words and hands every applied write batch a sequence
//! number. Network replicas receive those batches over HTTP; local replicas (same host)
//! memory-map the leader's rkyv snapshot file.
//!
//! # Layout
//! - [`words`]: text → words (the Unicode and whitespace tokenizers).
//! - [`table`]: the count table and the seq it reflects.
//! - [`snapshot`]: the snapshot file format; encode, validate, publish, load.
//! - [`wal`]: the write-ahead log; group commit, replay, rotation.
//! - [`history`]: the leader's incarnations, so replicas continue across restarts.
//! - [`backlog`]: the leader's bounded in-memory log of recent batches.
//! - [`replication`]: one ordered sender per network replica; coalescing, retry, resync.
//! - [`api`]: the OpenAPI document (`/openapi.json`), built with the router.
//! - [`http`]: shared HTTP pieces: `ApiError`, strict form and query parsing, headers.
//! - [`reads`]: `/wordcount`, `/sync` and the seq header, shared by every role.
//! - [`publisher`]: the leader's snapshot thread (its own copy of the table).
//! - [`leader`], [`replica`], [`local_replica`]: each role's state, router and `run`.
//! - [`mapped`]: a snapshot memory-mapped and read in place (the only `unsafe`).
//! - [`notifier`]: the leader's Unix socket that tells local replicas a snapshot is ready.
//! - [`metrics`]: `/metrics` (Prometheus text): request counters and latency histograms.
//! - [`ratelimit`]: `--rate-limit`, a node-wide token bucket answering 429.
//! - [`perf`]: the load tool behind `memdb perf`, with its consistency check.
//! - [`client`]: a small typed HTTP client used by replicas, tests and tools.
//! - [`config`]: validated configuration with documented defaults.
//! - [`shutdown`]: the SIGTERM/ctrl-c signal future.

pub mod api;
pub mod backlog;
pub mod budget;
pub mod client;
pub mod config;
pub mod history;
pub mod http;
pub mod leader;
pub mod local_replica;
pub mod mapped;
pub mod metrics;
pub mod notifier;
pub mod perf;
pub mod publisher;
pub mod ratelimit;
pub mod reads;
pub mod replica;
pub mod replication;
pub mod shutdown;
pub mod snapshot;
pub mod table;
pub mod wal;
pub mod words;
