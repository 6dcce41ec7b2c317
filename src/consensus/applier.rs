//! What the raft engine needs of the node it runs on. `consensus` applies committed
//! entries to an [`Applier`] it is given, never to a node type of its own: the node
//! (a leader's counting state) sits above and implements this.

use std::path::Path;

use crate::protocol::Manifest;
use crate::storage::snapshot::checked::Checked;
use crate::words::{Deltas, Tokenizer};

/// The node's files at one seq, linked into a snapshot directory.
pub struct Captured {
    /// The files (base, delta, recent deltas) and the table they make.
    pub chain: Manifest,
    /// Each file's checked record, in the manifest's order.
    pub checked: Vec<Checked>,
}

/// The node's table, as the state machine drives it. Only the state machine applies
/// to it while the engine runs: one entry or snapshot at a time.
pub trait Applier: Send + Sync + 'static {
    /// The seq of the last batch applied.
    fn seq(&self) -> u64;
    /// Applies a committed batch as the next seq; returns that seq.
    fn apply(&self, deltas: Deltas) -> u64;
    /// Hard-links the files the table is made of, at the seq it has now, into `dir`
    /// (writing out first what is only in memory). The caller applies nothing
    /// meanwhile. Blocks: call from a blocking context.
    fn capture(&self, dir: &Path) -> Result<Captured, String>;
    /// The table becomes the files in `dir` (checked whole: the chain `chain` names,
    /// whose records are `checked`) at their seq. Blocks.
    fn adopt(&self, dir: &Path, chain: &Manifest, checked: &[Checked]) -> Result<(), String>;
    /// The table's digest as it was at `seq`, if the node still knows it.
    fn digest_at(&self, seq: u64) -> Option<u64>;
    /// How the node splits text into words (writes are counted before proposing).
    fn tokenizer(&self) -> Tokenizer;
}
