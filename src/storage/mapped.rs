//! A snapshot file mapped into memory and read in place. The library's main `unsafe`
//! (the other is `malloc_trim` in `heap.rs`; the binary has one more: setting
//! environment variables from the config file before any thread starts).
//!
//! Soundness rests on one invariant that the leader keeps ([`crate::storage::snapshot::publish`]):
//! **a published snapshot file is never modified or truncated.** New snapshots are
//! written to a temp file and renamed over the old name, so the inode a replica mapped
//! keeps its bytes until the last mapping goes away. (Anyone else writing into the
//! leader's data directory breaks that: a truncated mapping faults with SIGBUS.)
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::storage::filter::{self, Filter};
use crate::storage::snapshot::ArchivedEntry;
use crate::storage::snapshot::{self, ArchivedWordMap, HEADER_LEN, Header, Kind, SnapshotError};

/// A validated, memory-mapped snapshot. Lookups read the mapping directly.
pub struct MappedSnapshot {
    mmap: Mmap,
    header: Header,
    /// (device, inode) of the file mapped: tells whether the published name now points
    /// at another file.
    identity: FileId,
    /// The top list of a file that carries none (versions 1 and 2), ranked once when
    /// it was mapped.
    ranked: Option<Vec<(Box<str>, u64)>>,
    /// A delta's words, for lookups that miss it (see [`crate::storage::filter`]).
    filter: Option<Filter>,
}

impl MappedSnapshot {
    /// Maps `path` and validates it completely (header, length, checksum, archive).
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        Self::open_until(path, u64::MAX, &|| false)
    }

    /// [`MappedSnapshot::open`] for a file of at most `max_bytes` that is regular and
    /// not sparse (checked before anything is read; see [`crate::fs::open_regular`]),
    /// giving up when `stop` says so.
    pub fn open_until(
        path: &Path,
        max_bytes: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<Self, SnapshotError> {
        Self::open_checked(path, max_bytes, stop, &|_| false)
    }

    /// [`MappedSnapshot::open_until`], skipping the archive's structural check when
    /// `checked` says this file passed it before (see
    /// [`crate::storage::snapshot::checked`]); its checksum is verified either way.
    pub fn open_checked(
        path: &Path,
        max_bytes: u64,
        stop: &dyn Fn() -> bool,
        checked: &dyn Fn(&Header) -> bool,
    ) -> Result<Self, SnapshotError> {
        let (file, meta) = crate::fs::open_regular(path, max_bytes)?;
        if meta.len() < HEADER_LEN as u64 {
            return Err(SnapshotError::TooShort {
                len: meta.len() as usize,
            });
        }
        // SAFETY: the leader never modifies or truncates a published snapshot (it
        // replaces the name by rename), so the mapped bytes do not change under us.
        let mmap = unsafe { Mmap::map(&file)? };
        let header = snapshot::check_trusting(&mmap, stop, checked)?;
        // Page-aligned, so the archive at 64 or 96 is 16-aligned (validate checked).
        let mut m = MappedSnapshot {
            mmap,
            header,
            identity: file_id(&meta),
            ranked: None,
            filter: None,
        };
        if header.kind == Kind::Delta {
            let words = m.map().iter().map(|(k, _)| k.as_str());
            m.filter = Some(Filter::of(header.words as usize, words));
        }
        if header.top.is_none() {
            let all = m.map().iter().map(|(k, v)| (k.as_str(), v.to_native()));
            let ranked = crate::storage::top::best_of(all, crate::storage::top::MAX_TOP)
                .into_iter()
                .map(|(w, c)| (w.into(), c))
                .collect();
            m.ranked = Some(ranked);
        }
        Ok(m)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// After the mapped file was renamed to `path` (the leader installing a base it
    /// wrote and mapped under its temp name): take the identity it has there, so that
    /// it is known for the published file. Nothing changes if `path` is another file.
    pub fn follow_rename(&mut self, path: &Path) {
        if let Some(id) = identity_of(path)
            && (id.0, id.1) == (self.identity.0, self.identity.1)
        {
            self.identity = id;
        }
    }

    pub fn identity(&self) -> FileId {
        self.identity
    }

    /// The whole file as mapped (served as it is to a joining replica).
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// The archived table, read in place.
    pub fn map(&self) -> &ArchivedWordMap {
        // SAFETY: `open` validated these exact bytes with rkyv's bytecheck
        // (`snapshot::check_trusting`: now, or when this node wrote or first read a file
        // whose checksum these bytes match), the mapping is read-only and page-aligned (so the
        // payload at offset 64 is 16-aligned), and the file is never modified (module
        // docs), so the archive is still valid: no need to check it per lookup.
        unsafe {
            rkyv::access_unchecked::<ArchivedWordMap>(&self.mmap[self.header.archive_offset()..])
        }
    }

    /// The count of an (already normalised) word: 0 if absent.
    pub fn get(&self, word: &str) -> u64 {
        self.lookup(word).unwrap_or(0)
    }

    /// The file's top list in rank order: its top [`crate::storage::top::MAX_TOP`]
    /// words, or all of them. Read in place.
    pub fn top(&self) -> Box<dyn Iterator<Item = (&str, u64)> + '_> {
        match (&self.ranked, self.header.top) {
            (Some(r), _) => Box::new(r.iter().map(|(w, c)| (&**w, *c))),
            (None, Some(s)) => Box::new(snapshot::toplist::entries(&self.mmap, s)),
            (None, None) => Box::new(std::iter::empty()),
        }
    }

    /// The count of a word, if the file holds it. Looks it up with the file's hash
    /// key (every lookup in an archived table must: see
    /// [`crate::storage::snapshot::hasher`]).
    pub fn lookup(&self, word: &str) -> Option<u64> {
        self.lookup_hashed(word, filter::hash(word))
    }

    /// [`MappedSnapshot::lookup`] with the word's [`filter::hash`] computed once for
    /// every file of a chain.
    pub fn lookup_hashed(&self, word: &str, h: u64) -> Option<u64> {
        if self.filter.as_ref().is_some_and(|f| !f.may_hold(h)) {
            return None;
        }
        snapshot::hasher::with_key(self.header.key, || {
            self.map().get(word).map(|v| v.to_native())
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.mmap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }
}

/// One whole state as readers see it: a base and, when they pair, the delta of the
/// words changed since the base and the recent deltas, each of the words changed since
/// the file under it (version 4: a chain, so that each publication writes only what
/// changed in its interval). Immutable; a newer state is a new value.
#[derive(Clone)]
pub struct MappedState {
    pub base: Arc<MappedSnapshot>,
    pub delta: Option<Arc<MappedSnapshot>>,
    /// On `delta` (never without it), oldest first.
    pub recent: Vec<Arc<MappedSnapshot>>,
}

/// Why a state could not be mapped: which file, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {source}")]
pub struct StateError {
    pub file: &'static str,
    #[source]
    pub source: SnapshotError,
}

/// Whether `delta` completes `base` (a base, or the delta a recent delta is on): it
/// names it (a base by its checksum, a version 4 delta by the digest of the table it
/// completes), at its seq, is not older, and was counted with the same tokenizer.
pub fn pairs(base: &Header, delta: &Header) -> bool {
    delta
        .base
        .is_some_and(|on| Some(on.checksum) == base.chain_name() && on.seq == base.seq)
        && delta.seq >= base.seq
        && delta.tokenizer == base.tokenizer
}

/// Which files a state maps: base, delta, recent deltas.
pub type StateId = (FileId, Option<FileId>, Vec<FileId>);

impl MappedState {
    /// A base alone.
    pub fn base(base: Arc<MappedSnapshot>) -> Self {
        MappedState {
            base,
            delta: None,
            recent: Vec::new(),
        }
    }

    /// The deltas, newest first.
    fn deltas(&self) -> impl Iterator<Item = &MappedSnapshot> + Clone {
        self.recent
            .iter()
            .rev()
            .map(|r| &**r)
            .chain(self.delta.as_deref())
    }

    /// The files, newest first.
    pub fn files(&self) -> impl Iterator<Item = &MappedSnapshot> + Clone {
        self.deltas().chain([&*self.base])
    }

    /// The count of a word, if the state holds it: from the newest file that does.
    pub fn lookup(&self, word: &str) -> Option<u64> {
        self.lookup_hashed(word, filter::hash(word))
    }

    /// [`MappedState::lookup`] with the word's [`filter::hash`].
    pub fn lookup_hashed(&self, word: &str, h: u64) -> Option<u64> {
        self.deltas()
            .find_map(|d| d.lookup_hashed(word, h))
            .or_else(|| self.base.lookup_hashed(word, h))
    }

    /// The count of an (already normalised) word: 0 if absent.
    pub fn get(&self, word: &str) -> u64 {
        self.lookup(word).unwrap_or(0)
    }

    /// The header of the newest file. Its seq, time and incarnation are the state's.
    pub fn header(&self) -> &Header {
        self.deltas().next().unwrap_or(&self.base).header()
    }

    pub fn seq(&self) -> u64 {
        self.header().seq
    }

    /// Distinct words in the state.
    pub fn words(&self) -> u64 {
        self.header().total_words()
    }

    /// Bytes mapped, all files.
    pub fn len(&self) -> usize {
        self.base.len() + self.deltas().map(|d| d.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which files these are.
    pub fn identity(&self) -> StateId {
        (
            self.base.identity(),
            self.delta.as_ref().map(|d| d.identity()),
            self.recent.iter().map(|d| d.identity()).collect(),
        )
    }

    /// The state's top list in rank order (see [`crate::storage::top::merged`]), and
    /// whether it lists every word of the state.
    pub fn top(&self) -> (Box<dyn Iterator<Item = (&str, u64)> + '_>, bool) {
        // Each file's list is whole then too, and the merge keeps all of them.
        let complete = self.words() <= crate::storage::top::MAX_TOP as u64;
        let mut ranked: Box<dyn Iterator<Item = (&str, u64)> + '_> = self.base.top();
        for d in self.deltas().collect::<Vec<_>>().into_iter().rev() {
            ranked = Box::new(crate::storage::top::merged(d.top(), ranked, move |w| {
                d.lookup(w).is_some()
            }));
        }
        (ranked, complete)
    }

    /// The first `n` words in rank order that start with `prefix` (see
    /// [`crate::storage::top::select`]).
    pub fn top_words(&self, n: usize, prefix: &str) -> Vec<(&str, u64)> {
        let (ranked, complete) = self.top();
        crate::storage::top::select(ranked, complete, n, prefix, || self.iter())
    }

    /// Every word once with its count: each file's words that no newer file holds,
    /// newest first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        let files: Vec<&MappedSnapshot> = self.files().collect();
        (0..files.len()).flat_map(move |k| {
            let newer = files[..k].to_vec();
            files[k]
                .map()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_native()))
                .filter(move |(w, _)| newer.iter().all(|n| n.lookup(w).is_none()))
        })
    }

    /// Maps the state published in `dir` (files of at most `max_bytes`), reusing any
    /// mapping in `reuse` that is still a published file (no validation again). A
    /// delta that does not pair with the file under it is left out, with what is
    /// above it: the files under it are then a whole, older state (a merge renamed a
    /// file in after the one above was written; a paired one follows). `Ok(None)` when
    /// no base is published yet.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        stop: &dyn Fn() -> bool,
        reuse: &[Arc<MappedSnapshot>],
    ) -> Result<Option<MappedState>, StateError> {
        Self::open_checked(dir, max_bytes, stop, reuse, &|_| false)
    }

    /// [`MappedState::open`], trusting the structure of files `checked` names (see
    /// [`MappedSnapshot::open_checked`]).
    pub fn open_checked(
        dir: &Path,
        max_bytes: u64,
        stop: &dyn Fn() -> bool,
        reuse: &[Arc<MappedSnapshot>],
        checked: &dyn Fn(&Header) -> bool,
    ) -> Result<Option<MappedState>, StateError> {
        let open = |name: &'static str, kind: Kind| {
            let path = dir.join(name);
            let err = |source| StateError { file: name, source };
            let Some(id) = identity_of(&path) else {
                return Ok(None);
            };
            if let Some(m) = reuse
                .iter()
                .find(|m| m.identity() == id && m.header().kind == kind)
            {
                return Ok(Some(m.clone()));
            }
            let m = match MappedSnapshot::open_checked(&path, max_bytes, stop, checked) {
                Ok(m) => m,
                // Replaced or removed between the two looks: as if never there.
                Err(SnapshotError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(None);
                }
                Err(e) => return Err(err(e)),
            };
            if m.header().kind != kind {
                return Err(err(SnapshotError::WrongKind {
                    expected: kind,
                    found: m.header().kind,
                }));
            }
            Ok(Some(Arc::new(m)))
        };
        // Files read before a merge's renames may name the ones the renames replaced,
        // and a file read before them may be older than the one read after: read from
        // the newest down, and look again, a few times, for a whole chain.
        let mut last: Option<MappedState> = None;
        for _ in 0..3 {
            let listed = snapshot::recents(dir).map_err(|e| StateError {
                file: snapshot::RECENT_PREFIX,
                source: SnapshotError::Io(e),
            })?;
            let mut recents = Vec::new();
            for (seq, name) in &listed {
                if let Some(r) = open_named(dir, name, max_bytes, stop, reuse, checked)? {
                    recents.push((*seq, r));
                }
            }
            let delta = open(snapshot::DELTA_NAME, Kind::Delta)?;
            let Some(base) = open(snapshot::FILE_NAME, Kind::Base)? else {
                return Ok(None);
            };
            let delta = delta.filter(|d| pairs(base.header(), d.header()));
            let mut chain: Vec<Arc<MappedSnapshot>> = Vec::new();
            let mut whole =
                delta.is_some() == identity_of(&dir.join(snapshot::DELTA_NAME)).is_some();
            if let Some(d) = &delta {
                for (seq, r) in recents {
                    let top = chain.last().unwrap_or(d).header();
                    if pairs(top, r.header()) {
                        chain.push(r);
                    } else if seq > top.seq {
                        // Newer, yet not on the chain: a merge's renames under way.
                        whole = false;
                        break;
                    }
                    // Older: a file a merge replaced, not yet removed.
                }
            }
            let state = MappedState {
                base,
                delta,
                recent: chain,
            };
            if whole {
                return Ok(Some(state));
            }
            if last.as_ref().is_none_or(|s| state.seq() >= s.seq()) {
                last = Some(state);
            }
        }
        Ok(last)
    }
}

/// Opens the recent delta `name` in `dir` (a mapping in `reuse` if it is still that
/// file); `None` if it went away meanwhile.
fn open_named(
    dir: &Path,
    name: &str,
    max_bytes: u64,
    stop: &dyn Fn() -> bool,
    reuse: &[Arc<MappedSnapshot>],
    checked: &dyn Fn(&Header) -> bool,
) -> Result<Option<Arc<MappedSnapshot>>, StateError> {
    let path = dir.join(name);
    let Some(id) = identity_of(&path) else {
        return Ok(None);
    };
    if let Some(m) = reuse.iter().find(|m| m.identity() == id) {
        return Ok(Some(m.clone()));
    }
    match MappedSnapshot::open_checked(&path, max_bytes, stop, checked) {
        Ok(m) if m.header().kind == Kind::Delta => Ok(Some(Arc::new(m))),
        Ok(m) => Err(StateError {
            file: snapshot::RECENT_PREFIX,
            source: SnapshotError::WrongKind {
                expected: Kind::Delta,
                found: m.header().kind,
            },
        }),
        Err(SnapshotError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError {
            file: snapshot::RECENT_PREFIX,
            source,
        }),
    }
}

/// A whole table at one seq that can be walked word by word (a mapped state, or a
/// node's layers with its words in memory): what `GET /sync` streams.
pub trait Entries: Send + Sync + 'static {
    /// Every word once with its count.
    fn entries(&self) -> Box<dyn Iterator<Item = (&str, u64)> + '_>;
    /// Distinct words (an estimate is enough: it sizes buffers).
    fn words(&self) -> u64;
}

impl Entries for MappedState {
    fn entries(&self) -> Box<dyn Iterator<Item = (&str, u64)> + '_> {
        Box::new(self.iter())
    }

    fn words(&self) -> u64 {
        MappedState::words(self)
    }
}

/// The entry whose key and value these are. rkyv's map iterator yields the two
/// fields of one entry (`repr(C)`, the key first) as two references; the writer takes
/// the entry as one pointer (see [`crate::storage::snapshot::Pair`]).
///
/// # Panics
/// If `value` is not the field that follows `key` in an entry.
pub fn entry_of<'a>(
    key: &'a rkyv::string::ArchivedString,
    value: &'a rkyv::Archived<u64>,
) -> &'a ArchivedEntry {
    let at = std::ptr::from_ref(key).addr();
    assert_eq!(
        std::ptr::from_ref(value).addr(),
        at + std::mem::offset_of!(ArchivedEntry, value),
        "not the key and value of one entry"
    );
    // SAFETY: `key` and `value` are the two fields of one `ArchivedEntry`, which is
    // `repr(C)` with the key at offset 0 and nothing after the value (checked just
    // above, and by the assertion on its size below), borrowed for 'a together.
    unsafe { &*std::ptr::from_ref(key).cast::<ArchivedEntry>() }
}

const _: () = assert!(std::mem::size_of::<ArchivedEntry>() == 16);

/// The [`FileId`] of the file at `path` now, if any.
pub fn identity_of(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| file_id(&m))
}

/// Which file a name points at: device, inode, and the file's modification time. The
/// time is there because inode numbers are reused: a file created after another was
/// deleted may get its number, and must not be taken for it (a rejected file's
/// successor would otherwise never be looked at); a new file's time differs. Not the
/// change time: a hard link (a voter's raft snapshot links the files) changes that, and
/// every reader would map the same bytes again.
pub type FileId = (u64, u64, i64, i64);

fn file_id(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino(), m.mtime(), m.mtime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Incarnation;
    use crate::storage::snapshot::{Meta, encode, publish};
    use crate::storage::table::WordMap;
    use crate::words::Tokenizer;

    #[test]
    fn maps_and_reads_in_place_and_survives_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = WordMap::default();
        m.insert("hello".into(), 2);
        let meta = Meta {
            tokenizer: Tokenizer::Unicode,
            seq: 1,
            incarnation: Incarnation::from_raw(9).unwrap(),
        };
        let path = publish(dir.path(), &encode(&m, meta).unwrap()).unwrap();
        let first = MappedSnapshot::open(&path).unwrap();
        assert_eq!((first.get("hello"), first.get("nope")), (2, 0));
        assert_eq!(first.header().seq, 1);
        assert_eq!(identity_of(&path), Some(first.identity()));
        // Replacing the published file leaves the old mapping intact.
        m.insert("hello".into(), 5);
        publish(dir.path(), &encode(&m, Meta { seq: 2, ..meta }).unwrap()).unwrap();
        assert_eq!(first.get("hello"), 2);
        let second = MappedSnapshot::open(&path).unwrap();
        assert_eq!(second.get("hello"), 5);
        assert_ne!(second.identity(), first.identity());
    }

    #[test]
    fn an_inode_written_again_is_another_file_and_a_hard_link_is_the_same() {
        // What a reused inode number looks like: the same (device, inode) written at
        // a later time.
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"x").unwrap();
        let before = identity_of(&a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&a, b"y").unwrap();
        let after = identity_of(&a).unwrap();
        assert_eq!((before.0, before.1), (after.0, after.1), "same inode");
        assert_ne!(before, after);
        // A hard link (a raft snapshot's) and a rename leave it the same file.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::hard_link(&a, &b).unwrap();
        assert_eq!(identity_of(&a), Some(after));
        std::fs::rename(&b, dir.path().join("c")).unwrap();
        assert_eq!(identity_of(&dir.path().join("c")), Some(after));
    }

    #[test]
    fn rejects_empty_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            MappedSnapshot::open(&path),
            Err(SnapshotError::TooShort { .. })
        ));
        let img = encode(
            &WordMap::default(),
            Meta {
                tokenizer: Tokenizer::Unicode,
                seq: 1,
                incarnation: Incarnation::from_raw(1).unwrap(),
            },
        )
        .unwrap();
        let mut bad = img.to_vec();
        bad[20] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            MappedSnapshot::open(&path),
            Err(SnapshotError::Checksum { .. })
        ));
    }
}
