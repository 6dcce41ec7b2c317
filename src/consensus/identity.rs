//! Who a voter's data directory belongs to: its node id and raft group, written the
//! first time a voter starts on it (`raft/identity.json`) and checked at every start
//! after. A directory copied to another node, or started under another `--node-id` or
//! `--cluster`, would make one machine count as two voters: it is refused, naming both.
//!
//! The record also holds the group's id once the node knows it (see
//! [`group_id`]): every RPC names it, so a voter never takes raft traffic from another
//! group that happens to share the cluster name and node ids.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::types::NodeId;

pub const IDENTITY_NAME: &str = "identity.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster: String,
    /// The group's id (16 hex digits), once this node formed or joined a group.
    #[serde(default)]
    pub group: Option<String>,
}

/// The id of the group formed with `members` under `cluster`: every voter that forms
/// it from the same list computes the same id, and a node added later learns it from
/// the first RPC it takes.
pub fn group_id<'a>(
    cluster: &str,
    members: impl IntoIterator<Item = (&'a NodeId, &'a String)>,
) -> String {
    let mut text = format!("memdb raft group {cluster}");
    for (id, url) in members {
        text.push_str(&format!("\n{id}={}", url.trim_end_matches('/')));
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Reads the record in `raft_dir`, if one was written.
pub fn read(raft_dir: &Path) -> Result<Option<Identity>, String> {
    let path = raft_dir.join(IDENTITY_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a voter's identity record: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Writes `identity` into `raft_dir` (atomically, 0600).
pub fn write(raft_dir: &Path, identity: &Identity) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(identity).expect("an identity serializes");
    crate::fs::write_atomically(
        raft_dir,
        IDENTITY_NAME,
        &format!(".{IDENTITY_NAME}.tmp"),
        &json,
    )
    .map(|_| ())
    .map_err(|e| format!("writing {}: {e}", raft_dir.join(IDENTITY_NAME).display()))
}

/// Checks that `raft_dir` belongs to node `node_id` of `cluster`, recording it on first
/// use. Returns the record (with the group id, if known).
pub fn check_or_record(
    raft_dir: &Path,
    node_id: NodeId,
    cluster: &str,
) -> Result<Identity, String> {
    if let Some(found) = read(raft_dir)? {
        if found.node_id != node_id || found.cluster != cluster {
            return Err(format!(
                "{} belongs to node {} of raft group {:?}, but this node was started as \
                 --node-id {node_id} --cluster {cluster:?}: one data directory must never \
                 serve as two voters (start it with its own id and group, or give this \
                 node an empty data directory and add it with POST /raft/learners)",
                raft_dir.parent().unwrap_or(raft_dir).display(),
                found.node_id,
                found.cluster,
            ));
        }
        return Ok(found);
    }
    let identity = Identity {
        node_id,
        cluster: cluster.to_owned(),
        group: None,
    };
    write(raft_dir, &identity)?;
    Ok(identity)
}

/// The header every raft RPC names its group's id in (once the sender knows it).
pub const GROUP_HEADER: &str = "x-memdb-group";

/// This voter's record, shared by the routes (which check RPCs against it) and the
/// network (which names the group's id on every RPC).
#[derive(Clone)]
pub struct Group {
    dir: std::path::PathBuf,
    identity: std::sync::Arc<parking_lot::Mutex<Identity>>,
}

impl Group {
    /// The record in `raft_dir` (see [`check_or_record`]).
    pub fn open(raft_dir: &Path, node_id: NodeId, cluster: &str) -> Result<Group, String> {
        Ok(Group {
            dir: raft_dir.to_owned(),
            identity: std::sync::Arc::new(parking_lot::Mutex::new(check_or_record(
                raft_dir, node_id, cluster,
            )?)),
        })
    }

    /// The group's id, once known.
    pub fn id(&self) -> Option<String> {
        self.identity.lock().group.clone()
    }

    /// Records that this node formed the group `id` (it then refuses every other).
    pub fn formed(&self, id: String) -> Result<(), String> {
        let mut identity = self.identity.lock();
        if identity.group.as_ref() == Some(&id) {
            return Ok(());
        }
        let mut next = identity.clone();
        next.group = Some(id);
        write(&self.dir, &next)?;
        *identity = next;
        Ok(())
    }

    /// Whether an RPC naming group `named` may be taken: the same id, or any id while
    /// this node knows none (a node being added learns it from its first RPC and keeps
    /// it). An RPC that names none is taken only by a node that knows none either.
    pub fn admit(&self, named: Option<&str>) -> Result<(), String> {
        let ours = self.id();
        match (ours.as_deref(), named) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (None, None) => Ok(()),
            (None, Some(b)) => {
                tracing::info!(group = b, "joined raft group");
                self.formed(b.to_owned())
            }
            (Some(a), b) => Err(format!(
                "this node belongs to raft group id {a}; the request names {} (header \
                 {GROUP_HEADER}): another group that shares this group's --cluster name, \
                 or a node from before the group was formed",
                b.map_or("none".to_string(), |b| format!("{b:?}"))
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_node_id_and_group_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let first = check_or_record(dir.path(), 1, "memdb").unwrap();
        assert_eq!(first.group, None);
        assert_eq!(check_or_record(dir.path(), 1, "memdb").unwrap(), first);
        let e = check_or_record(dir.path(), 2, "memdb").unwrap_err();
        assert!(e.contains("node 1") && e.contains("--node-id 2"), "{e}");
        let e = check_or_record(dir.path(), 1, "other").unwrap_err();
        assert!(e.contains("\"memdb\"") && e.contains("\"other\""), "{e}");
        std::fs::write(dir.path().join(IDENTITY_NAME), b"{not json").unwrap();
        assert!(check_or_record(dir.path(), 1, "memdb").is_err());
    }

    #[test]
    fn a_node_learns_its_groups_id_once_and_refuses_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let g = Group::open(dir.path(), 3, "memdb").unwrap();
        g.admit(None).unwrap();
        g.admit(Some("aaaa")).unwrap();
        assert_eq!(g.id().as_deref(), Some("aaaa"));
        g.admit(Some("aaaa")).unwrap();
        assert!(g.admit(Some("bbbb")).unwrap_err().contains("aaaa"));
        assert!(g.admit(None).is_err());
        // Kept across a restart.
        let again = Group::open(dir.path(), 3, "memdb").unwrap();
        assert_eq!(again.id().as_deref(), Some("aaaa"));
    }

    #[test]
    fn a_groups_id_depends_on_its_name_and_members() {
        let a: std::collections::BTreeMap<NodeId, String> =
            [(1, "http://a:1".to_string()), (2, "http://b:1".to_string())].into();
        let mut b = a.clone();
        b.insert(2, "http://c:1".into());
        assert_eq!(group_id("memdb", &a), group_id("memdb", &a));
        assert_ne!(group_id("memdb", &a), group_id("memdb", &b));
        assert_ne!(group_id("memdb", &a), group_id("other", &a));
    }
}
