//! What a leader's state does as a voter of a raft group (see [`crate::consensus`]):
//! the raft state machine applies committed entries and installed snapshots to it,
//! and links its files out for snapshots, through [`Applier`].

use std::path::Path;

use super::state::{State, word_hashes};
use crate::consensus::{Applier, Captured};
use crate::protocol::Manifest;
use crate::storage::snapshot::checked::Checked;
use crate::words::{Deltas, Tokenizer};

impl Applier for State {
    fn seq(&self) -> u64 {
        State::seq(self)
    }

    /// A committed raft entry becomes the next seq (the raft log is the write-ahead
    /// log here).
    fn apply(&self, deltas: Deltas) -> u64 {
        let words = deltas.iter().map(|(_, n)| *n).sum();
        let hashes = word_hashes(&deltas);
        let seq = {
            let mut table = self.table.write();
            self.apply_locked(&mut table, deltas, &hashes).seq
        };
        self.advance(seq, words);
        seq
    }

    fn capture(&self, dir: &Path) -> Result<Captured, String> {
        self.publisher.capture(dir)
    }

    /// The files become the table. Their seq may skip ahead of the backlog, which
    /// starts over empty there: the network replicas behind it re-sync.
    fn adopt(&self, dir: &Path, chain: &Manifest, checked: &[Checked]) -> Result<(), String> {
        self.publisher.adopt(dir, chain, checked)?;
        let seq = self.seq();
        self.backlog.lock().skip_to(seq);
        self.advance(seq, 0);
        Ok(())
    }

    /// Now, or from the backlog (if it still holds that batch).
    fn digest_at(&self, seq: u64) -> Option<u64> {
        let t = self.table.read();
        if t.seq() == seq {
            return Some(t.digest());
        }
        drop(t);
        self.backlog.lock().digest_at(seq)
    }

    fn tokenizer(&self) -> Tokenizer {
        self.tokenizer
    }
}
