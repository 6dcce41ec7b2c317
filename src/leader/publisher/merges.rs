//! Starting merges of the publisher's files and putting what they wrote in place.

use std::sync::Arc;

use super::worker::Worker;
use crate::leader::compaction::{Compaction, Merge, RECENT_FILES, compaction_due, merge_due};
use crate::storage::counts::CountMap;
use crate::storage::delta::{entries, rebased};
use crate::storage::layered::{Lower, Sealed};
use crate::storage::mapped::{MappedSnapshot, MappedState};
use crate::storage::snapshot::checked::Checked;
use crate::storage::snapshot::{self, BaseRef, Staged};

/// Which merge of recent deltas.
#[derive(Clone, Copy)]
enum Slot {
    Delta,
    Recent,
}

/// A file staged for a merge's install, and the name it takes.
struct Step {
    staged: Staged,
    name: String,
    /// Mapped under its temp name (a rename keeps the inode).
    mapped: Arc<MappedSnapshot>,
    /// The digest of the table it completes.
    digest: u64,
}

impl Worker {
    /// Starts a compaction (the delta into a new base) or a merge of the recent deltas
    /// (into one, or into the delta) when one is due and none of its kind is under way.
    pub(super) fn maybe_merge(&mut self) {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let Some(delta) = files.delta.clone() else {
            return;
        };
        let base = files.base.clone();
        if self.compaction.is_none()
            && compaction_due(
                delta.header().words,
                base.header().words,
                self.compact_after,
            )
        {
            let meta = self.meta(delta.header().seq);
            tracing::debug!(seq = meta.seq, "compaction started");
            self.stats.lock().compacting = true;
            let digest = self.records.delta.map_or(lower.digest, |r| r.digest);
            self.compaction = Some(Compaction::start(
                self.dir.clone(),
                snapshot::TEMP_NAME,
                meta,
                None,
                vec![delta.clone()],
                Some(base.clone()),
                digest,
                meta.seq,
            ));
        }
        if files.recent.is_empty() || delta.header().chain_name().is_none() {
            return;
        }
        let recent_words = files.recent.iter().map(|r| r.header().words).sum();
        let due = merge_due(
            files.recent.len(),
            recent_words,
            delta.header().words,
            base.header().words,
            self.compact_after,
        );
        let digest_at = |r: &MappedSnapshot| r.header().base.map_or(0, |b| b.digest);
        // Not while a compaction runs: it merges the delta it started from, and a delta
        // replaced meanwhile would have to be written again on the new base when it is
        // put in place, on this thread (seconds at 10M words, with nothing published).
        // The merges of recent deltas below keep the chain short meanwhile.
        if due == Merge::Delta && self.merge_delta.is_none() && self.compaction.is_none() {
            // All of them into a new delta on the base.
            let h = files.recent.last().expect("checked above").header();
            let digest = h.base.map_or(0, |b| b.digest);
            let base_ref = BaseRef {
                checksum: base.header().checksum,
                seq: base.header().seq,
                total_words: h.total_words(),
                digest,
            };
            self.merge_delta = Some(Compaction::start(
                self.dir.clone(),
                snapshot::MERGE_TEMP_NAME,
                self.meta(h.seq),
                Some(base_ref),
                files.recent.iter().rev().cloned().collect(),
                Some(delta),
                digest,
                h.seq,
            ));
            return;
        }
        // Those a delta merge does not hold, into one recent delta, on what the oldest
        // is on (until the others are removed the chain on disk may stop under it),
        // while a delta merge runs too: the chain stays short whatever the delta costs.
        let taken = self.merge_delta.as_ref().map_or(0, |m| m.seq);
        let run: Vec<_> = files
            .recent
            .iter()
            .filter(|r| r.header().seq > taken)
            .collect();
        if self.merge_recent.is_some() || run.len() < RECENT_FILES {
            return;
        }
        let (oldest, newest) = (run[0], run[run.len() - 1]);
        let on = oldest.header().base.expect("a recent delta is a delta");
        let h = newest.header();
        let base_ref = BaseRef {
            total_words: h.total_words(),
            digest: digest_at(newest),
            ..on
        };
        self.merge_recent = Some(Compaction::start(
            self.dir.clone(),
            snapshot::RECENT_MERGE_TEMP_NAME,
            self.meta(h.seq),
            Some(base_ref),
            run.iter().rev().map(|r| (*r).clone()).collect(),
            None,
            digest_at(newest),
            on.seq,
        ));
    }

    /// Puts finished merges in place: merges of recent deltas first, and a compaction
    /// only while no delta merge runs (a delta merge writes on the base a compaction
    /// replaces).
    pub(super) fn finish_merges(&mut self) {
        for slot in [Slot::Delta, Slot::Recent] {
            let merge = match slot {
                Slot::Delta => &mut self.merge_delta,
                Slot::Recent => &mut self.merge_recent,
            };
            let Some(result) = merge.as_ref().and_then(|m| m.poll()) else {
                continue;
            };
            let m = merge.take().expect("polled above");
            let done = result.and_then(|(staged, file)| match slot {
                Slot::Delta => self.install_merged_delta(&m, staged, file),
                Slot::Recent => self.install_merged_recent(&m, staged, file),
            });
            self.trimmed = false;
            match done {
                Ok(()) => self.stats.lock().merges += 1,
                Err(e) => {
                    tracing::error!(error = %e, "a merge of recent deltas failed; they stay");
                    self.stats.lock().last_error = Some(format!("merge: {e}"));
                }
            }
        }
        if self.merge_delta.is_some() {
            return;
        }
        let Some(result) = self.compaction.as_ref().and_then(|c| c.poll()) else {
            return;
        };
        let c = self.compaction.take().expect("polled above");
        self.trimmed = false;
        let installed = result.and_then(|(staged, base)| self.install_base(&c, staged, base));
        let mut st = self.stats.lock();
        st.compacting = false;
        match installed {
            Ok(h) => {
                let ms = c.started.elapsed().as_secs_f64() * 1e3;
                st.compactions += 1;
                st.last_compaction_ms = Some(ms);
                st.base_seq = h.seq;
                st.base_words = h.words;
                tracing::info!(
                    seq = h.seq,
                    words = h.words,
                    ms,
                    "compacted into a new base"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "compaction failed; the delta keeps growing on the old base");
                st.last_error = Some(format!("compaction: {e}"));
            }
        }
    }

    /// Records a merge's output as checked before it is renamed into place, beside the
    /// files there now: a local replica that maps it at once then verifies only its
    /// checksum, not its whole structure (seconds for a 10M-word base).
    pub(super) fn pre_record(&self, extra: &[Checked]) {
        let all: Vec<Checked> = std::iter::once(self.records.base)
            .chain(self.records.delta)
            .chain(self.records.recent.iter().copied())
            .chain(extra.iter().copied())
            .collect();
        if let Err(e) = crate::storage::snapshot::checked::store(&self.dir, &all) {
            tracing::warn!(error = %e, "recording the checked snapshot files");
        }
    }

    /// Removes the recent deltas on disk that are not on the chain `recent` (those a
    /// merge took in, or whose renames a merge replaced).
    fn remove_off_chain(&self, recent: &[Arc<MappedSnapshot>]) {
        let keep: Vec<u64> = recent.iter().map(|r| r.header().seq).collect();
        for (seq, name) in snapshot::recents(&self.dir).unwrap_or_default() {
            if !keep.contains(&seq) {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }

    /// A delta merge is done: the merged delta goes in (the recent deltas published
    /// since it started name the table it completes, so they stay on it as they are),
    /// and the merged recent deltas go.
    fn install_merged_delta(
        &mut self,
        m: &Compaction,
        staged: Staged,
        merged: MappedSnapshot,
    ) -> Result<(), String> {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let under = m.under.as_ref().map(|u| u.identity());
        if files.delta.as_ref().map(|d| d.identity()) != under {
            let _ = std::fs::remove_file(&staged.path);
            return Err("the delta changed under the merge".into());
        }
        let since = files
            .recent
            .iter()
            .position(|r| r.header().seq > m.seq)
            .unwrap_or(files.recent.len());
        let step = Step {
            staged,
            name: snapshot::DELTA_NAME.to_owned(),
            mapped: Arc::new(merged),
            digest: m.digest,
        };
        let recent = (
            files.recent[since..].to_vec(),
            self.records.recent[since.min(self.records.recent.len())..].to_vec(),
        );
        self.install_chain(files.base.clone(), step, recent, &lower);
        Ok(())
    }

    /// A merge of recent deltas is done: the merged file takes the newest one's name
    /// (it completes the same table, so the recent deltas published since stay on it as
    /// they are), and the others it merged go.
    fn install_merged_recent(
        &mut self,
        m: &Compaction,
        staged: Staged,
        merged: MappedSnapshot,
    ) -> Result<(), String> {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let ids = |v: &[Arc<MappedSnapshot>]| v.iter().map(|f| f.identity()).collect::<Vec<_>>();
        let n = m.over.len();
        let mut merged_ids = ids(&m.over);
        merged_ids.reverse();
        // Where the run it merged is on the chain now (a delta merge may have taken
        // the ones before it).
        let at = files
            .recent
            .iter()
            .position(|r| Some(r.identity()) == merged_ids.first().copied());
        let Some(at) = at.filter(|&at| {
            files.recent.len() >= at + n && ids(&files.recent[at..at + n]) == merged_ids
        }) else {
            let _ = std::fs::remove_file(&staged.path);
            return Err("the recent deltas changed under the merge".into());
        };
        let name = snapshot::recent_name(m.seq);
        self.pre_record(&[Checked::of(merged.header(), m.digest)]);
        if let Err(e) = snapshot::install(&self.dir, &staged, &name) {
            let _ = std::fs::remove_file(&staged.path);
            return Err(format!("installing {name}: {e}"));
        }
        let merged = Arc::new(merged);
        let mut recent = files.recent[..at].to_vec();
        recent.push(merged.clone());
        recent.extend(files.recent[at + n..].iter().cloned());
        let old = &self.records.recent;
        let mut records = old.get(..at).unwrap_or_default().to_vec();
        records.push(Checked::of(merged.header(), m.digest));
        records.extend(old.get(at + n..).unwrap_or_default().iter().copied());
        self.records.recent = records;
        self.records.store(&self.dir);
        self.remove_off_chain(&recent);
        self.note_files(files.delta.as_deref(), &recent);
        self.table.write().replace_lower(|cur| Lower {
            files: MappedState {
                recent,
                ..cur.files.clone()
            },
            digest: cur.digest,
            sealed: cur.sealed.clone(),
        });
        (self.on_published)(self.durable());
        Ok(())
    }

    /// A compaction is done: the delta on disk is written again on the new base (only
    /// the words it changed since the compaction's seq: the same table at the same
    /// seq, so the recent deltas stay on it as they are), and both go in.
    fn install_base(
        &mut self,
        c: &Compaction,
        staged: Staged,
        base: MappedSnapshot,
    ) -> Result<snapshot::Header, String> {
        let lower = self.table.read().lower().clone();
        let files = &lower.files;
        let discard = |e: String| {
            let _ = std::fs::remove_file(&staged.path);
            e
        };
        let Some(old) = files.delta.clone() else {
            return Err(discard("no delta on disk to move onto the new base".into()));
        };
        let base = Arc::new(base);
        let header = *base.header();
        let on_base = MappedState::base(base.clone());
        let digest = self.records.delta.map_or(lower.digest, |r| r.digest);
        let h = old.header();
        let base_ref = BaseRef {
            checksum: header.checksum,
            seq: header.seq,
            total_words: h.total_words(),
            digest,
        };
        // The delta the compaction merged is in the new base whole: unless a delta merge
        // replaced it since, the delta on the new base is empty, and the seconds it
        // takes to walk millions of words (probing the new base for each) are not spent
        // here, where they would hold up publication.
        let merged_whole = c.over.first().map(|d| d.identity()) == Some(old.identity());
        let changed = rebased(&old, &on_base).take(if merged_whole { 0 } else { usize::MAX });
        let delta = snapshot::stage(
            &self.dir,
            snapshot::DELTA_TEMP_NAME,
            self.meta(h.seq),
            Some(base_ref),
            changed,
        )
        .map_err(|e| discard(format!("writing the delta on the new base: {e}")))?;
        let mapped = MappedSnapshot::open(&delta.path).map_err(|e| {
            let _ = std::fs::remove_file(&delta.path);
            discard(format!("reading back the delta on the new base: {e}"))
        })?;
        self.pre_record(&[
            Checked::of(&header, c.digest),
            Checked::of(mapped.header(), digest),
        ]);
        if let Err(e) = snapshot::install(&self.dir, &staged, snapshot::FILE_NAME) {
            let _ = std::fs::remove_file(&delta.path);
            return Err(discard(e.to_string()));
        }
        self.records.base = Checked::of(&header, c.digest);
        let step = Step {
            staged: delta,
            name: snapshot::DELTA_NAME.to_owned(),
            mapped: Arc::new(mapped),
            digest,
        };
        let recent = (files.recent.clone(), self.records.recent.clone());
        self.install_chain(base, step, recent, &lower);
        Ok(header)
    }

    /// Renames a merge's delta into place over `base` (already in place), with the
    /// recent deltas `recent` on it, removes the recent deltas off the chain, and swaps
    /// the chain into the table. Should the rename fail, the delta's words and the
    /// recent deltas' go back into memory, sealed over the base, and the next
    /// publication writes them again: the table is the same either way.
    fn install_chain(
        &mut self,
        base: Arc<MappedSnapshot>,
        step: Step,
        recent: (Vec<Arc<MappedSnapshot>>, Vec<Checked>),
        lower: &Lower,
    ) {
        let (recent, records) = recent;
        self.pre_record(&[Checked::of(step.mapped.header(), step.digest)]);
        let placed = match snapshot::install(&self.dir, &step.staged, &step.name) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, file = %step.name, "renaming a merged file into place");
                self.stats.lock().last_error = Some(format!("installing {}: {e}", step.name));
                let _ = std::fs::remove_file(&step.staged.path);
                false
            }
        };
        let (files, back) = if placed {
            self.records.delta = Some(Checked::of(step.mapped.header(), step.digest));
            self.records.recent = records;
            let files = MappedState {
                base,
                delta: Some(step.mapped),
                recent,
            };
            (files, None)
        } else {
            // Each word once, with its count in the newest file that holds it.
            let mut words = CountMap::new();
            let newest = recent.last().unwrap_or(&step.mapped).clone();
            for f in recent.iter().rev().chain([&step.mapped]) {
                for (w, n) in entries(f) {
                    if words.get(w).is_none() {
                        words.insert_new(w, n);
                    }
                }
            }
            let h = newest.header();
            let digest = records.last().map_or(step.digest, |r| r.digest);
            let sealed = Sealed {
                map: words,
                seq: h.seq,
                digest,
                words: h.total_words(),
            };
            self.records.delta = None;
            self.records.recent.clear();
            (MappedState::base(base), Some(Arc::new(sealed)))
        };
        self.records.store(&self.dir);
        self.remove_off_chain(&files.recent);
        self.note_files(files.delta.as_deref(), &files.recent);
        if back.is_some() {
            // The chain on disk is older than the table's files were: publish again.
            self.published = self.published.min(files.seq());
        }
        debug_assert!(lower.files.seq() >= files.seq());
        let digest = self.records.top().digest;
        self.table.write().replace_lower(|cur| Lower {
            files,
            digest,
            sealed: back.into_iter().chain(cur.sealed.iter().cloned()).collect(),
        });
        (self.on_published)(self.durable());
    }

    /// Stops the merges under way (at shutdown): the files stay as they are.
    pub(super) fn abandon_merges(&mut self) {
        for c in [
            self.compaction.take(),
            self.merge_delta.take(),
            self.merge_recent.take(),
        ]
        .into_iter()
        .flatten()
        {
            c.abandon();
        }
        self.stats.lock().compacting = false;
    }
}
