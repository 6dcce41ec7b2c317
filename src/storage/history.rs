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

use crate::protocol::incarnation_string;
use crate::protocol::parse_incarnation;

/// The file in the data directory.
pub const FILE_NAME: &str = "history.json";
const TEMP_NAME: &str = "history.json.tmp";
/// Earlier incarnations remembered; a replica that slept through more restarts than
/// this full-syncs.
const MAX_ANCESTORS: usize = 32;

/// The current incarnation and the earlier ones it continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub incarnation: u64,
    /// (incarnation, the last seq it shares with the current one), newest first.
    pub ancestors: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    incarnation: String,
    ancestors: Vec<Ancestor>,
}

#[derive(Serialize, Deserialize)]
struct Ancestor {
    incarnation: String,
    until_seq: u64,
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
            ancestors.push((prev.incarnation, seq));
            ancestors.extend(prev.ancestors.into_iter().map(|(i, u)| (i, u.min(seq))));
            ancestors.truncate(MAX_ANCESTORS);
        }
        let incarnation = loop {
            let i: u64 = rand::random();
            if i != 0 && !ancestors.iter().any(|(a, _)| *a == i) {
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
    pub fn continues(&self, incarnation: u64, seq: u64) -> bool {
        incarnation == self.incarnation
            || self
                .ancestors
                .iter()
                .any(|(i, until)| *i == incarnation && seq <= *until)
    }

    fn load(dir: &Path) -> io::Result<Option<History>> {
        let bytes = fs::read(dir.join(FILE_NAME))?;
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        let parse = |s: &str| {
            parse_incarnation(s)
                .ok_or_else(|| io::Error::other(format!("bad incarnation {s:?} in {FILE_NAME}")))
        };
        let mut ancestors = Vec::new();
        for a in &disk.ancestors {
            ancestors.push((parse(&a.incarnation)?, a.until_seq));
        }
        Ok(Some(History {
            incarnation: parse(&disk.incarnation)?,
            ancestors,
        }))
    }

    /// Writes the file durably (it must be on disk before the leader accepts writes).
    fn store(&self, dir: &Path) -> io::Result<()> {
        let disk = OnDisk {
            incarnation: incarnation_string(self.incarnation),
            ancestors: self
                .ancestors
                .iter()
                .map(|(i, u)| Ancestor {
                    incarnation: incarnation_string(*i),
                    until_seq: *u,
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&disk).map_err(io::Error::other)?;
        bytes.push(b'\n');
        crate::storage::snapshot::write_atomically(dir, FILE_NAME, TEMP_NAME, &bytes).map(|_| ())
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
        assert!(!third.continues(12345, 1), "an unknown history");
        assert_eq!(History::load(dir.path()).unwrap().unwrap(), third);
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
