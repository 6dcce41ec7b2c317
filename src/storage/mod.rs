//! Storage: the count table and everything that keeps it on disk or in memory beyond
//! one process — the write batch, the write-ahead log, the snapshot file format, the
//! memory-mapped snapshot local replicas read, and the leader's incarnation history.
//! Every on-disk byte layout of memdb is defined here: [`frame`] (the record frame of
//! both logs), [`log`] (the single leader's records), [`snapshot`] (base and delta
//! files), [`history`]; all but the record of a raft snapshot, which is raft's own
//! (`consensus/snapshot.rs`). Nothing here knows about HTTP.

pub mod batch;
pub mod chain;
pub mod counts;
pub mod delta;
pub mod filter;
pub mod frame;
pub mod history;
pub mod layered;
pub mod log;
pub mod mapfile;
pub mod mapped;
pub mod ranking;
pub mod sharing;
pub mod snapshot;
pub mod table;
pub mod top;
