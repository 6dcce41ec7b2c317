//! The raft types of memdb: what a log entry holds (a [`Proposal`]), what applying it
//! answers ([`Applied`]), and the names every voter shares.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::words::Deltas;

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// memdb's raft types: a proposal counts words; applying it answers a seq; a
    /// snapshot is a directory of files.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Applied>,
        SnapshotData = SnapshotFiles,
);

/// What the leader offers a voter that needs its snapshot (see [`super::transfer`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    pub vote: openraft::Vote<NodeId>,
    pub meta: openraft::SnapshotMeta<NodeId, openraft::BasicNode>,
    /// The snapshot's record (`raft.meta`): its length and checksum.
    pub record: crate::protocol::ManifestFile,
    /// Where the files are: the leader's URL.
    pub from: String,
}

/// What the voter answers an offer: raft's answer, or the engine's stop.
pub type Answer = Result<openraft::raft::SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>;

/// A raft snapshot as the engine hands it around: the directory of its files and its
/// record (see [`super::snapshot`]). Never the table's bytes.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    pub dir: std::path::PathBuf,
}

pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;

/// The paths of the RPCs between voters: [`super::network`] calls them and
/// [`super::routes`] serves them (a test there checks that it serves each).
pub mod rpc {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    /// Where a voter serves its snapshot's files (`/{name}`), for a voter it offered
    /// the snapshot to.
    pub const SNAPSHOT_FILES: &str = "/raft/snapshot/files";
}

/// The header every raft RPC carries: a node refuses RPCs of another group.
pub const CLUSTER_HEADER: &str = "x-memdb-cluster";

/// The incarnation every voter of group `cluster` serves under.
pub fn group_incarnation(cluster: &str) -> crate::protocol::Incarnation {
    let h = xxhash_rust::xxh3::xxh3_64(format!("memdb raft group {cluster}").as_bytes());
    crate::protocol::Incarnation::from_raw(h | 1).expect("non-zero")
}

/// A write batch as a log entry: the words to count, and the client's idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    /// On the wire and in the log: one string of `word count` lines (words hold no
    /// white space), which is several times faster to write and parse than a JSON array
    /// of pairs, and smaller.
    /// Shared: the engine clones entries for the log and for every follower.
    #[serde(with = "packed")]
    pub deltas: Arc<Deltas>,
    pub key: Option<String>,
    /// A digest of the words and their counts (in any order), so that a key reused
    /// for other words is refused.
    pub fingerprint: u64,
    /// The proposing leader's clock (ms since the epoch): the key window's time, the
    /// same on every voter.
    #[serde(default)]
    pub at_ms: u64,
    /// Other writes proposed in the same entry (see [`super::batcher`]), each with its
    /// own key and answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Proposal>,
}

impl Proposal {
    pub fn new(deltas: Deltas, key: Option<String>) -> Proposal {
        // Order-independent: the tokenizer's order of words is not fixed.
        let fingerprint = deltas.iter().fold(0u64, |acc, (w, n)| {
            acc.wrapping_add(xxhash_rust::xxh3::xxh3_64_with_seed(w.as_bytes(), *n))
        });
        Proposal {
            deltas: Arc::new(deltas),
            key,
            fingerprint,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            more: Vec::new(),
        }
    }
}

/// [`Proposal::deltas`] as one string.
mod packed {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use std::sync::Arc;

    use crate::words::Deltas;

    pub fn serialize<S: Serializer>(deltas: &Arc<Deltas>, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(deltas.iter().map(|(w, _)| w.len() + 4).sum());
        let mut n = itoa::Buffer::new();
        for (w, c) in deltas.iter() {
            out.push_str(w);
            out.push(' ');
            out.push_str(n.format(*c));
            out.push('\n');
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Deltas>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let deltas: Result<Deltas, D::Error> = text
            .lines()
            .map(|line| {
                let (w, c) = line
                    .rsplit_once(' ')
                    .filter(|(w, _)| !w.is_empty() && !w.contains(char::is_whitespace))
                    .ok_or_else(|| D::Error::custom("a delta line is not `word count`"))?;
                let c: u64 = c
                    .parse()
                    .map_err(|_| D::Error::custom("a delta's count is not a number"))?;
                if c == 0 {
                    return Err(D::Error::custom("a delta's count is zero"));
                }
                Ok((w.to_owned(), c))
            })
            .collect();
        deltas.map(Arc::new)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Counted,
    /// The key was seen with the same words: not counted again; `seq` is the first's.
    Duplicate,
    /// The key was seen with other words: refused; `seq` is the first write's.
    KeyReused,
    /// The key was seen longer ago than the window: its write was counted then; not
    /// counted again, and refused.
    KeyExpired,
}

/// What applying a write answers (an entry answers one for each write it holds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub seq: u64,
    pub outcome: Outcome,
}

/// Why a write was not applied here.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// Another node leads (its id and URL, if known).
    NotLeader(Option<(NodeId, String)>),
    /// No leader now (an election), or the engine stopped.
    Unavailable(String),
    /// Not committed within the write timeout: its outcome is unknown.
    Timeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_travel_packed_and_bad_ones_are_refused() {
        let p = Proposal::new(vec![("héllo".into(), 2), ("w".into(), 1)], Some("k".into()));
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""deltas":"héllo 2\nw 1\n""#), "{json}");
        let back: Proposal = serde_json::from_str(&json).unwrap();
        assert_eq!(back.deltas, p.deltas);
        for bad in ["a\n", "a b c\n", "a 0\n", " 1\n", "a x\n"] {
            let j = format!(r#"{{"deltas":"{bad}","key":null,"fingerprint":0}}"#);
            assert!(serde_json::from_str::<Proposal>(&j).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_proposals_fingerprint_ignores_word_order_but_not_counts() {
        let a = Proposal::new(vec![("a".into(), 1), ("b".into(), 2)], None);
        let b = Proposal::new(vec![("b".into(), 2), ("a".into(), 1)], None);
        let c = Proposal::new(vec![("a".into(), 2), ("b".into(), 1)], None);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }
}
