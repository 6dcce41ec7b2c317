//! What a voter's raft snapshots take of the publisher: the files at the table's seq,
//! linked into a snapshot directory ([`Worker::capture`]), and a received snapshot's
//! files made the table ([`Worker::adopt`]). Both run on the publisher's thread, the
//! only one that renames or removes the files, so a name read here is the file mapped.

use std::fs;
use std::path::Path;

use super::types::Records;
use super::worker::Worker;
use crate::consensus::Captured;
use crate::protocol::Manifest;
use crate::storage::layered::Layered;
use crate::storage::mapped::MappedState;
use crate::storage::snapshot::{self, checked::Checked};

impl Worker {
    /// Publishes what is only in memory, then links the chain into `into`.
    pub(super) fn capture(&mut self, into: &Path) -> Result<Captured, String> {
        self.publish_if_changed().map_err(|e| e.to_string())?;
        let (seq, lower) = {
            let t = self.table.read();
            (t.seq(), t.lower().clone())
        };
        if lower.files.seq() != seq || !lower.sealed.is_empty() {
            return Err(format!(
                "the files are at seq {}, the table at {seq}: the last publication did not \
                 complete",
                lower.files.seq()
            ));
        }
        let checked: Vec<Checked> = std::iter::once(self.records.base)
            .chain(self.records.delta)
            .chain(self.records.recent.iter().copied())
            .collect();
        let named = lower.files.named();
        if checked.len() != named.len()
            || !named
                .iter()
                .zip(&checked)
                .all(|((_, f), c)| c.names(f.header()))
        {
            return Err("the records of the files are not the files mapped".into());
        }
        for (name, f) in &named {
            let to = into.join(name);
            fs::hard_link(self.dir.join(name), &to)
                .map_err(|e| format!("linking {name} into {}: {e}", into.display()))?;
            if crate::client::files::checksum_of(&to) != Some(f.header().checksum) {
                return Err(format!("{name} on disk is not the file mapped"));
            }
        }
        Ok(Captured {
            chain: lower.files.manifest(lower.digest, self.incarnation),
            checked,
        })
    }

    /// Puts the files of `from` (checked whole by the caller: the chain `chain` names,
    /// with records `checked`) in place of the chain on disk, and makes them the table.
    /// Merges under way are dropped: they merge files that go.
    pub(super) fn adopt(
        &mut self,
        from: &Path,
        chain: &Manifest,
        checked: &[Checked],
    ) -> Result<(), String> {
        let seq = self.table.read().seq();
        if seq > chain.seq {
            tracing::warn!(
                seq,
                snapshot = chain.seq,
                "the table is past the snapshot: kept"
            );
            return Ok(());
        }
        self.abandon_merges();
        let dir = self.dir.clone();
        for f in &chain.files {
            let tmp = dir.join(format!(".{}.adopt", f.name));
            let _ = fs::remove_file(&tmp);
            fs::hard_link(from.join(&f.name), &tmp)
                .and_then(|()| fs::rename(&tmp, dir.join(&f.name)))
                .map_err(|e| format!("putting {} in place: {e}", f.name))?;
        }
        let named = |n: &str| chain.files.iter().any(|f| f.name == n);
        if !named(snapshot::DELTA_NAME) {
            let _ = fs::remove_file(dir.join(snapshot::DELTA_NAME));
        }
        for (_, name) in snapshot::recents(&dir).unwrap_or_default() {
            if !named(&name) {
                let _ = fs::remove_file(dir.join(name));
            }
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
        let trusted = |h: &snapshot::Header| checked.iter().any(|c| c.names(h));
        let state = MappedState::open_checked(&dir, u64::MAX, &|| false, &[], &trusted)
            .map_err(|e| e.to_string())?
            .ok_or("no base after putting the snapshot's files in place")?;
        let got: Vec<u64> = state.files().map(|f| f.header().checksum).collect();
        let want: Vec<u64> = checked.iter().rev().map(|c| c.checksum).collect();
        if got != want || state.seq() != chain.seq {
            return Err("the files in place do not map as the snapshot's chain".into());
        }
        let digest = u64::from_str_radix(&chain.digest, 16).map_err(|e| e.to_string())?;
        let has_delta = state.delta.is_some();
        self.records = Records {
            base: checked[0],
            delta: has_delta.then(|| checked[1]),
            recent: checked[1 + usize::from(has_delta)..].to_vec(),
        };
        self.records.store(&dir);
        self.note_files(state.delta.as_deref(), &state.recent);
        let (base_seq, base_words) = (state.base.header().seq, state.base.header().words);
        let table = Layered::new(state, digest);
        *self.table.write() = table;
        self.published = chain.seq;
        self.published_tx.send_replace(chain.seq);
        (self.on_published)(chain.seq);
        let mut st = self.stats.lock();
        st.seq = chain.seq;
        st.base_seq = base_seq;
        st.base_words = base_words;
        drop(st);
        // The words of the table replaced go back.
        crate::heap::trim();
        Ok(())
    }
}
