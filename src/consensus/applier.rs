//! What the raft engine needs of the node it runs on. `consensus` applies committed
//! entries to an [`Applier`] it is given, never to a node type of its own: the node
//! (a leader's counting state) sits above and implements this.

use crate::storage::counts::CountMap;
use crate::storage::snapshot;
use crate::words::{Deltas, Tokenizer};

/// The node's table, as the state machine drives it. Only the state machine applies
/// to it while the engine runs: one entry or snapshot at a time.
pub trait Applier: Send + Sync + 'static {
    /// The seq of the last batch applied.
    fn seq(&self) -> u64;
    /// Applies a committed batch as the next seq; returns that seq.
    fn apply(&self, deltas: Deltas) -> u64;
    /// Installs a table received in a raft snapshot: it becomes `map` at `seq` (a
    /// table at or past `seq` is left as it is).
    fn install(&self, map: CountMap, seq: u64);
    /// A copy of the table, and what a snapshot of it says about itself (its seq
    /// among it), for a raft snapshot taken off the table's lock.
    fn copy(&self) -> (CountMap, snapshot::Meta);
    /// The table's digest as it was at `seq`, if the node still knows it.
    fn digest_at(&self, seq: u64) -> Option<u64>;
    /// How the node splits text into words (writes are counted before proposing).
    fn tokenizer(&self) -> Tokenizer;
}
