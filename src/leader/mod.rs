//! The leader: ingests text, assigns every write batch the next seq, pushes batches to
//! network replicas and publishes snapshots.
//!
//! - [`node`]: the [`Leader`] handle: open, the single leader's write path, the raft
//!   engine on a voter, shutdown, and the methods handlers use.
//! - [`state`]: the table and its seq, and what follows every applied batch; a
//!   voter's raft state machine applies to it (`voter.rs`).
//! - `open.rs`: locking the data directory and recovering the table.
//! - [`routes`]: the HTTP routes (a voter's raft routes come from
//!   [`crate::consensus::routes`]); `reads.rs` and `status.rs`: what the shared read
//!   routes, `/health` and `/metrics` ask of a leader.
//! - [`publisher`] (and `compaction.rs`), [`notifier`]: snapshots for local replicas
//!   and the socket that announces them; [`locals`]: the local replicas and readers
//!   connected to it, with their lag; [`backlog`], [`replication`]: batches for network replicas.
//! - `files.rs`: `GET /files`, the files the table is made of, served as they are
//!   for a joining network replica (a binary bootstrap).
//! - [`error`]: why a leader could not open, shut down or take a write.

pub mod backlog;
mod compaction;
pub mod error;
mod files;
pub mod locals;
pub mod node;
pub mod notifier;
mod open;
pub mod publisher;
mod reads;
pub mod replication;
pub mod routes;
pub mod state;
mod status;
mod voter;

pub use error::{IngestError, LeaderError, ShutdownError};
pub use node::{Ingested, Leader};
pub use open::LOCK_FILE;
pub use routes::{leader_router, run, serve};
