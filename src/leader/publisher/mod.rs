//! The leader's snapshot publisher: a thread that, every interval when the table
//! changed, seals the table's live words (see [`crate::storage::layered`]) and writes
//! them over the delta on disk as the next delta, then maps it and swaps it in for the
//! sealed words; and that compacts the base and the delta into a new base in the
//! background when the delta grows.
//!
//! The files are the table: memory holds only the words changed since the last
//! publication. Publishing takes the table's write lock twice, each time for a pointer
//! swap (the seal, and the mapped delta in place of the sealed words), and writes the
//! file with no lock held. A publication costs what changed since the last
//! compaction, whatever the table's size.
//!
//! A compaction reads the mapped base and the mapped delta as they are at its start
//! (immutable files: nothing is copied or frozen in memory) and streams them into a
//! new base on a second thread, while this thread goes on publishing deltas on the old
//! base. When the new base is written and checked, this thread writes the newest delta
//! again on the new base (only the words it changed since the compaction's seq),
//! renames the base, then that delta, into place, and swaps both into the table. The
//! log's checkpoint stays at the compaction's seq until then: a crash between the two
//! renames leaves the new base and a delta on the old one, which does not pair with
//! it, and recovery replays the log from the new base's seq.
//!
//! - `types.rs`: what the handle and the thread share (messages, stats, setup, the
//!   checked-file records);
//! - `handle.rs`: [`Publisher`], the handle the leader holds;
//! - `worker.rs`: the thread's loop and a publication;
//! - `merges.rs`: starting merges and putting what they wrote in place (the threads
//!   themselves are `leader/compaction.rs`);
//! - `raft.rs`: a voter's raft snapshot: the files linked out, a received one put in.

mod handle;
mod merges;
mod raft;
mod types;
mod worker;

pub use handle::Publisher;
pub use types::{PublishError, PublishStats, Records, Setup};
