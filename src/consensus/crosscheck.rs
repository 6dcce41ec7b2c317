//! Voters check each other's tables: every voter applies the same entries in the same
//! order, so at any seq they both reached, their tables' digests must be equal. Each
//! voter reads its members' `/health` (seq and digest) every `interval` and compares at
//! the seq the member reports, with its own digest at that seq (now, or from its
//! backlog). A difference means one of them applied something the other did not (a
//! forged entry, a bug): it is a `/health` problem on the voter that sees it, as a
//! digest mismatch is on a network replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use super::applier::Applier;
use super::types::{NodeId, Raft};

/// A member whose table differs from this voter's at the same seq.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Divergence {
    pub node_id: NodeId,
    pub seq: u64,
    /// This voter's digest at `seq` and the member's (16 hex digits each).
    pub ours: String,
    pub theirs: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "voter {} holds another table at seq {} (digest {} here, {} there): one of \
             the two applied an entry the other did not",
            self.node_id, self.seq, self.ours, self.theirs
        )
    }
}

/// The divergences seen, by member (cheap to clone).
#[derive(Clone, Default)]
pub struct Divergences(Arc<Mutex<BTreeMap<NodeId, Divergence>>>);

impl Divergences {
    pub fn list(&self) -> Vec<Divergence> {
        self.0.lock().values().cloned().collect()
    }

    /// Records what one comparison with `node` found: a match clears what it showed.
    fn record(&self, node: NodeId, found: Option<Divergence>) {
        let mut m = self.0.lock();
        match found {
            Some(d) => {
                if m.get(&node).map(|o| o.seq) != Some(d.seq) {
                    tracing::error!(%d, "raft voters diverged");
                }
                m.insert(node, d);
            }
            None => {
                m.remove(&node);
            }
        }
    }

    /// Forgets members no longer in the group.
    fn retain(&self, members: &[NodeId]) {
        self.0.lock().retain(|id, _| members.contains(id));
    }
}

/// Compares `theirs` (a member's seq and digest) with this voter's digest at that seq;
/// `None` if equal, or if this voter cannot tell (not there yet, or no longer holds it).
pub fn compare(
    node_id: NodeId,
    seq: u64,
    theirs: u64,
    ours_at: impl Fn(u64) -> Option<u64>,
) -> Option<Divergence> {
    let ours = ours_at(seq)?;
    (ours != theirs).then(|| Divergence {
        node_id,
        seq,
        ours: format!("{ours:016x}"),
        theirs: format!("{theirs:016x}"),
    })
}

/// Runs the check every `interval` until the engine stops.
pub fn spawn(
    raft: Raft,
    me: NodeId,
    node: Arc<dyn Applier>,
    http: reqwest::Client,
    interval: Duration,
    found: Divergences,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let rx = raft.metrics();
            if rx.has_changed().is_err() {
                return;
            }
            let members: Vec<(NodeId, String)> = rx
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != me)
                .map(|(id, n)| (*id, n.addr.trim_end_matches('/').to_owned()))
                .collect();
            found.retain(&members.iter().map(|(id, _)| *id).collect::<Vec<_>>());
            for (id, url) in members {
                let Some((seq, digest)) = read_health(&http, &url, interval).await else {
                    continue;
                };
                found.record(id, compare(id, seq, digest, |s| node.digest_at(s)));
            }
        }
    });
}

/// A member's seq and digest, from its `/health` (which needs no token).
async fn read_health(http: &reqwest::Client, url: &str, timeout: Duration) -> Option<(u64, u64)> {
    let v: serde_json::Value = http
        .get(format!("{url}/health"))
        .timeout(timeout)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let seq = v["seq"].as_u64()?;
    let digest = u64::from_str_radix(v["digest"].as_str()?, 16).ok()?;
    Some((seq, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_compared_at_the_members_seq_and_a_match_clears_a_divergence() {
        let ours = |s: u64| (s <= 10).then_some(s * 7);
        assert!(compare(2, 5, 35, ours).is_none());
        // Ahead of us, or too far behind: we cannot tell.
        assert!(compare(2, 11, 1, ours).is_none());
        let d = compare(2, 5, 36, ours).unwrap();
        assert_eq!((d.seq, d.ours.as_str()), (5, "0000000000000023"));
        assert!(d.to_string().contains("voter 2"), "{d}");
        let found = Divergences::default();
        found.record(2, Some(d));
        assert_eq!(found.list().len(), 1);
        found.record(2, None);
        assert!(found.list().is_empty());
        found.record(3, compare(3, 5, 0, ours));
        found.retain(&[2]);
        assert!(found.list().is_empty());
    }
}
