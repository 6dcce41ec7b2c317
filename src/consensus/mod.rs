//! Failover: leader-capable nodes form an openraft group. A write batch is a raft log
//! entry; `POST /post` answers once the entry is committed on a majority and applied.
//! Every voter applies committed entries to its own table (so every voter numbers the
//! same batches with the same seqs, and publishes snapshots for the local replicas on
//! its host); followers answer writes with a redirect to the leader.
//!
//! - [`applier`]: what the engine needs of the node above it (which implements it).
//! - [`engine`]: the voter's raft handle: start, form the group, propose, who leads.
//! - [`types`]: a log entry (a proposal), what applying it answers.
//! - [`batcher`]: concurrent writes proposed as one entry.
//! - [`crosscheck`]: voters compare their tables' digests at equal seqs.
//! - [`identity`]: which node and group a data directory belongs to.
//! - [`keys`]: the idempotency keys remembered, for a time and within a size.
//! - [`log_store`]: the raft log on disk (the node's write-ahead log in a group).
//! - [`state_machine`]: applying entries to the table, idempotency keys, snapshots.
//! - [`network`]: raft's RPCs over HTTP to the other voters.
//! - [`pending`]: a retried keyed write joins the proposal in flight.
//! - [`routes`]: every raft route: the RPCs, membership, and a voter's `POST /post`;
//!   the node's router merges them.
//! - [`status`]: what a voter's `/health` and `/metrics` say of it.

// openraft's error types are large by design and every storage call returns them.
#![allow(clippy::result_large_err)]

pub mod applier;
pub mod batcher;
pub mod crosscheck;
pub mod engine;
pub mod identity;
pub mod keys;
pub mod log_store;
pub mod network;
pub mod pending;
pub mod routes;
pub mod snapshot;
pub mod state_machine;
pub mod status;
pub mod transfer;
pub mod types;

pub use applier::{Applier, Captured};
pub use engine::{Consensus, MAX_RPC_BODY};
pub use status::{MemberStatus, RaftStatus};
pub use types::{
    Applied, CLUSTER_HEADER, Entry, NodeId, Outcome, Proposal, Raft, TypeConfig, WriteError,
    group_incarnation,
};
