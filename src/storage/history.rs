//! Which leader histories a replica's data may continue.
//!
//! Every leader process starts a new *incarnation* (a random id), because a process
//! that crashed may have pushed batches to replicas that its log never made durable:
//! after a restart the same seq can name a different batch. But everything up to the
//! seq the new process recovered (from its snapshot and log) is exactly the previous
//! process's history. So the leader records, in `history.json` in its data directory,
//! each earlier incarnation and the seq up to which it agrees with the current one
//! (like a PostgreSQL timeline history). A replica of an earlier incarnation whose
//! seq is within that prefix holds a prefix of the current history: it adopts the new
//! incarnation and catches up from the log, with no full sync. Only a replica that is
//! *ahead* of what the leader recovered (it received writes the leader lost) must
//! full-sync.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::Incarnation;

/// The file in the data directory.
pub const FILE_NAME: &str = "history.json";
const TEMP_NAME: &str = "history.json.tmp";
/// Earlier incarnations remembered; a replica that slept through more restarts than
/// this full-syncs.
const MAX_ANCESTORS: usize = 32;

/// The current incarnation and the earlier ones it continues.
/// Stored as `history.json`: `{"incarnation": "<hex>", "ancestors":
/// [{"incarnation": "<hex>", "until_seq": N}, ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub incarnation: Incarnation,
    /// Newest first.
    pub ancestors: Vec<Ancestor>,
}

/// An earlier incarnation and the last seq it shares with the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub incarnation: Incarnation,
    pub until_seq: u64,
}

impl History {
    /// Starts a new incarnation for a leader that recovered its table up to `seq` in
    /// `dir`, continuing the history recorded there, and records it durably. Call
    /// before accepting writes. An unreadable file starts a history with no
    /// ancestors (replicas then full-sync; nothing is lost).
    pub fn begin(dir: &Path, seq: u64) -> io::Result<History> {
        let previous = match Self::load(dir) {
            Ok(h) => h,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, "ignoring an unreadable {FILE_NAME}: replicas will full-sync");
                }
                None
            }
        };
        let mut ancestors = Vec::new();
        if let Some(prev) = previous {
            // What the previous process recovered, and everything it had in common
            // with its own ancestors, is shared up to what this process recovered.
            ancestors.push(Ancestor {
                incarnation: prev.incarnation,
                until_seq: seq,
            });
            ancestors.extend(prev.ancestors.into_iter().map(|a| Ancestor {
                until_seq: a.until_seq.min(seq),
                ..a
            }));
            ancestors.truncate(MAX_ANCESTORS);
        }
        let incarnation = loop {
            let i = Incarnation::random();
            if !ancestors.iter().any(|a| a.incarnation == i) {
                break i;
            }
        };
        let h = History {
            incarnation,
            ancestors,
        };
        h.store(dir)?;
        Ok(h)
    }

    /// Whether a replica at `seq` of `incarnation` holds a prefix of this history.
    pub fn continues(&self, incarnation: Incarnation, seq: u64) -> bool {
        incarnation == self.incarnation
            || self
                .ancestors
                .iter()
                .any(|a| a.incarnation == incarnation && seq <= a.until_seq)
    }

    fn load(dir: &Path) -> io::Result<Option<History>> {
        let bytes = fs::read(dir.join(FILE_NAME))?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }

    /// Writes the file durably (it must be on disk before the leader accepts writes).
    fn store(&self, dir: &Path) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        bytes.push(b'\n');
        crate::fs::write_atomically(dir, FILE_NAME, TEMP_NAME, &bytes).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_continues_the_recorded_history_up_to_what_it_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let first = History::begin(dir.path(), 0).unwrap();
        assert!(first.ancestors.is_empty());
        assert!(first.continues(first.incarnation, 1_000));
        // Clean restart at 100: a replica of the first process anywhere up to 100
        // continues; one beyond it (impossible after a clean stop) would not.
        let second = History::begin(dir.path(), 100).unwrap();
        assert_ne!(second.incarnation, first.incarnation);
        assert!(second.continues(first.incarnation, 100));
        assert!(second.continues(first.incarnation, 7));
        assert!(!second.continues(first.incarnation, 101));
        // A crash that lost 61..: the second process's replicas continue up to 60, and
        // the first's too (it agreed with the second up to 100).
        let third = History::begin(dir.path(), 60).unwrap();
        assert!(third.continues(second.incarnation, 60));
        assert!(!third.continues(second.incarnation, 61));
        assert!(third.continues(first.incarnation, 60));
        assert!(!third.continues(first.incarnation, 80));
        let unknown = Incarnation::from_raw(12345).unwrap();
        assert!(!third.continues(unknown, 1), "an unknown history");
        assert_eq!(History::load(dir.path()).unwrap().unwrap(), third);
    }

    #[test]
    fn the_file_format_is_hex_ids_and_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"incarnation": "00000000000000ff",
            "ancestors": [{"incarnation": "0000000000000010", "until_seq": 7}]}"#;
        fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let h = History::load(dir.path()).unwrap().unwrap();
        assert_eq!(h.incarnation.to_string(), "00000000000000ff");
        assert_eq!(h.ancestors[0].incarnation.to_string(), "0000000000000010");
        assert_eq!(h.ancestors[0].until_seq, 7);
        h.store(dir.path()).unwrap();
        let again: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(again["ancestors"][0]["incarnation"], "0000000000000010");
    }

    #[test]
    fn a_damaged_file_starts_a_fresh_history() {
        let dir = tempfile::tempdir().unwrap();
        History::begin(dir.path(), 5).unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let h = History::begin(dir.path(), 5).unwrap();
        assert!(h.ancestors.is_empty());
        assert!(History::begin(dir.path(), 5).unwrap().ancestors.len() == 1);
    }

    #[test]
    fn only_so_many_ancestors_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = History::begin(dir.path(), 0).unwrap();
        let mut h = first.clone();
        for _ in 0..MAX_ANCESTORS + 3 {
            h = History::begin(dir.path(), 0).unwrap();
        }
        assert_eq!(h.ancestors.len(), MAX_ANCESTORS);
        assert!(!h.continues(first.incarnation, 0));
    }
}
