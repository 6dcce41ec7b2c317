//! memdb: a replicated in-memory word-count database.
//!
//! A leader ingests text, counts words and hands every applied write batch a sequence
//! number. Network replicas receive those batches over HTTP; local replicas (same host)
//! memory-map the leader's rkyv snapshot file.
//!
//! # Layout
//! In layers, the top first; a module uses only the layers below its own (the order,
//! and the test that keeps it, are in `docs/architecture.md`):
//! - [`cli`], [`perf`], [`ingest`]: clients of a running node (`memdb top`, `count`,
//!   `status`; the load tool; streaming files of any size to the leader).
//! - [`leader`]: the leader node: open and recover, ingest, shutdown, its routes and
//!   status; the publisher thread, the notification socket, the backlog, the
//!   replication senders; on a voter, its state is what the raft engine applies to.
//! - [`replica`]: the network replica and the local (memory-mapped) replica.
//! - [`reader`]: embedded readers: a data directory mapped and followed in-process
//!   (the local replica serves HTTP from one; applications and the C and Python
//!   bindings use one directly).
//! - [`consensus`]: a raft group of leaders (openraft) below the leader: the trait it
//!   needs of the node ([`consensus::Applier`]), the log, the state machine, every raft
//!   route.
//! - [`client`]: the typed HTTP client replicas, `perf` and the tests use.
//! - [`config`]: every role's validated configuration, with documented defaults.
//! - [`server`]: what every node serves with: the role contract, errors, auth, request
//!   parsing, the router and its limits, the shared read routes, metrics, OpenAPI, the
//!   accept loop, the shutdown signal.
//! - [`tls`]: TLS on rustls: a node's certificate (reloaded on SIGHUP), the handshake,
//!   what a client trusts and presents, throwaway certificates for `memdb certs`.
//! - [`storage`]: the table (a word arena), the write batch, the record frame, the
//!   write-ahead log, the snapshot format (a base and a delta), the memory-mapped
//!   snapshot (the crate's one `unsafe` module besides `main`'s config-file setup), the
//!   incarnation history: every byte layout on disk. Knows nothing of HTTP.
//! - At the bottom, used by any: [`words`] (text → words), [`protocol`] (header names,
//!   incarnation ids, socket lines), [`fs`] (atomic file replacement, bounded reads),
//!   [`origin`] (the rules for peer URLs), [`backoff`], [`throttle`], [`worker`].

pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod consensus;
pub mod fs;
pub mod heap;
pub mod ingest;
pub mod leader;
pub mod origin;
pub mod perf;
pub mod protocol;
pub mod reader;
pub mod replica;
pub mod server;
pub mod storage;
pub mod throttle;
pub mod tls;
pub mod words;
pub mod worker;
