//! memdb: a replicated in-memory word-count database.
//!
//! A leader ingests text, counts words and hands every applied write batch a sequence
//! number. Network replicas receive those batches over HTTP; local replicas (same host)
//! memory-map the leader's rkyv snapshot file.
//!
//! # Layout
//! The data flow — POST text → [`words`] → the table and its seq → the log, the backlog
//! and the publisher → network and local replicas — in folders:
//! - [`words`]: text → words (the Unicode and whitespace tokenizers).
//! - [`storage`]: the table (a word arena), the write batch, the write-ahead log, the
//!   snapshot format (a base and a delta), the publisher's changes since the base, the
//!   memory-mapped snapshot (the crate's one `unsafe` module besides `main`'s
//!   config-file setup), the incarnation history. Knows nothing of HTTP.
//! - [`leader`]: open and recover, ingest, shutdown, its routes and status; the
//!   publisher thread, the notification socket, the backlog, the replication senders.
//! - [`replica`]: the network replica and the local (memory-mapped) replica.
//! - [`server`]: what every node serves with — errors, auth, request parsing, the
//!   router and its limits, the shared read routes, metrics, OpenAPI, the accept loop,
//!   the shutdown signal.
//! - [`tls`]: TLS on rustls — a node's certificate (reloaded on SIGHUP), the handshake,
//!   mutual TLS on the replication routes, what a client trusts and presents, and
//!   throwaway certificates for `memdb certs`.
//! - [`fs`]: replacing a file atomically; opening a regular file of bounded size.
//! - [`protocol`]: what both ends share — header names, incarnation ids, socket lines.
//! - [`backoff`]: exponential backoff with jitter, for every retry loop.
//! - [`origin`]: the rules for the URLs nodes give each other.
//! - [`throttle`]: at most one log line a second for a kind of event.
//! - [`worker`]: a thread fed by a channel that stops when its handle drops.
//! - [`client`]: the typed HTTP client replicas, `perf` and the tests use.
//! - [`perf`]: the load tool behind `memdb perf`, a client only.
//! - [`ingest`]: `memdb ingest`, streaming files of any size to the leader, a client only.
//! - [`cli`]: `memdb top`, `count` and `status`, what they print; clients only.
//! - [`consensus`]: a raft group of leaders (openraft): the log, the state machine,
//!   the RPCs between voters.
//! - [`config`]: every role's validated configuration, with documented defaults.

pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod consensus;
pub mod fs;
pub mod ingest;
pub mod leader;
pub mod origin;
pub mod perf;
pub mod protocol;
pub mod replica;
pub mod server;
pub mod storage;
pub mod throttle;
pub mod tls;
pub mod words;
pub mod worker;
