//! Integration tests: the real `memdb` binary on ephemeral ports and temp dirs, and
//! request-level tests through a role's router in-process. One test binary (one link
//! step) with a module per area.

mod layers;
mod util;

mod bad_input;
mod bootstrap;
mod cluster;
mod compaction;
mod diskfull;
mod durability;
mod failover;
mod ingest;
mod limits;
mod local;
mod model;
mod openapi;
mod ops;
mod perf;
mod persistence;
mod raft_attacks;
mod raft_transfer;
mod reader;
mod registry;
mod repair;
mod scripts;
mod security;
mod tls;
mod top;
mod ui;
