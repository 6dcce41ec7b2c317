//! A chain of mapped files by name: the names they are published, served and stored
//! under, the manifest a peer downloads them by, and the disk that mappings of
//! replaced files still hold.

use std::path::Path;
use std::sync::Arc;

use super::mapped::{MappedSnapshot, MappedState, identity_of};

impl MappedState {
    /// Each file with the name it is published (and served, and stored) under: the
    /// base, the delta, the recent deltas oldest first.
    pub fn named(&self) -> Vec<(String, &Arc<MappedSnapshot>)> {
        std::iter::once((crate::storage::snapshot::FILE_NAME.to_owned(), &self.base))
            .chain(
                self.delta
                    .iter()
                    .map(|d| (crate::storage::snapshot::DELTA_NAME.to_owned(), d)),
            )
            .chain(
                self.recent
                    .iter()
                    .map(|r| (crate::storage::snapshot::recent_name(r.header().seq), r)),
            )
            .collect()
    }

    /// The manifest of these files, whose table has `digest`, of a node of
    /// `incarnation`.
    pub fn manifest(
        &self,
        digest: u64,
        incarnation: crate::protocol::Incarnation,
    ) -> crate::protocol::Manifest {
        crate::protocol::Manifest {
            seq: self.seq(),
            incarnation,
            tokenizer: self.header().tokenizer,
            digest: format!("{digest:016x}"),
            words: self.words(),
            files: self
                .named()
                .into_iter()
                .map(|(name, f)| crate::protocol::ManifestFile {
                    name,
                    len: f.len() as u64,
                    checksum: format!("{:016x}", f.header().checksum),
                })
                .collect(),
        }
    }

    /// Bytes of the files this state maps that `dir` no longer holds under their
    /// names (replaced by a merge, a compaction or a snapshot): disk the mapping keeps
    /// allocated until it is dropped.
    pub fn held_bytes(&self, dir: &Path) -> u64 {
        self.named()
            .into_iter()
            .filter(|(name, f)| identity_of(&dir.join(name)) != Some(f.identity()))
            .map(|(_, f)| f.len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Incarnation;
    use crate::storage::snapshot::{Meta, encode, publish};
    use crate::storage::table::WordMap;
    use crate::words::Tokenizer;

    #[test]
    fn a_mapping_of_a_replaced_file_holds_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = WordMap::default();
        m.insert("hello".into(), 2);
        let meta = Meta {
            tokenizer: Tokenizer::Unicode,
            seq: 1,
            incarnation: Incarnation::from_raw(9).unwrap(),
        };
        publish(dir.path(), &encode(&m, meta).unwrap()).unwrap();
        let first = MappedState::open(dir.path(), u64::MAX, &|| false, &[])
            .unwrap()
            .unwrap();
        assert_eq!(first.held_bytes(dir.path()), 0);
        assert_eq!(first.named()[0].0, "snapshot.memdb");
        assert_eq!(first.manifest(7, meta.incarnation).files.len(), 1);
        m.insert("world".into(), 1);
        publish(dir.path(), &encode(&m, Meta { seq: 2, ..meta }).unwrap()).unwrap();
        assert_eq!(first.held_bytes(dir.path()), first.base.len() as u64);
    }
}
