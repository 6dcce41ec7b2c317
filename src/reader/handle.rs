//! [`Reader`]: the current state of a leader's data directory, mapped in this process
//! and followed as the leader publishes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::protocol::Incarnation;
use crate::storage::mapped::MappedState;
use crate::words::Tokenizer;

use super::follow::Follower;
use super::maps::{LoadsBySource, Maps, Options, Reloaded, Source};

/// What went wrong, for an embedding application to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory does not exist.
    #[error("{0}: no such directory")]
    NotFound(PathBuf),
    /// The path is not a directory, or one without any of memdb's files in it.
    #[error(
        "{0}: not a memdb data directory (it holds none of snapshot.memdb, memdb.sock, \
         history.json)"
    )]
    NotMemdb(PathBuf),
    /// The directory could not be read (permissions, say).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The published files failed validation. A reader that has a state keeps
    /// serving it; this is what `open` and `refresh` say.
    #[error("the published state was refused: {0}")]
    Corrupt(String),
    /// Nothing is published in the directory yet (a leader before its first
    /// publication). `wait_for(1, …)` waits for the first.
    #[error("{0}: no state is published yet")]
    NotReady(PathBuf),
    /// `wait_for` timed out.
    #[error("seq {want} was not mapped within {timeout:?} (seq {have} is)")]
    Timeout {
        want: u64,
        have: u64,
        timeout: Duration,
    },
    /// A word that is not exactly one word under the leader's tokenizer.
    #[error("word {word:?}: {reason} (tokenizer {tokenizer})")]
    Word {
        word: String,
        reason: String,
        tokenizer: Tokenizer,
    },
}

/// How a reader learns of new states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Two threads of its own: the leader's socket, the file watch and a poll.
    Background,
    /// No thread: the application calls [`Reader::refresh`] (and `wait_for` refreshes
    /// while it waits).
    ByHand,
}

/// A reader of a leader's data directory: lookups straight from the leader's mapped
/// files, in this process, with no copy of the table and no lock a lookup waits on.
///
/// Cheap to clone (clones share the mapping and the follower); the follower stops
/// when the last clone is dropped. Every lookup answers from one whole published
/// state, never a torn one, and a reader never goes back to an older state of the
/// same leader. In a process that forks, open readers after the fork: threads do not
/// survive it.
///
/// ```no_run
/// let reader = memdb::reader::Reader::open("/var/lib/memdb")?;
/// println!("hello: {} at seq {}", reader.count("Hello")?, reader.seq());
/// for (word, count) in reader.top(3, "")? {
///     println!("{word} {count}");
/// }
/// # Ok::<(), memdb::reader::Error>(())
/// ```
#[derive(Clone)]
pub struct Reader {
    inner: Arc<Inner>,
}

struct Inner {
    maps: Arc<Maps>,
    follower: Mutex<Option<Follower>>,
}

/// One whole published state, held: lookups on it see the same seq, and its files stay
/// mapped while it is held, whatever the leader publishes meanwhile.
#[derive(Clone)]
pub struct Snapshot(Arc<MappedState>);

/// What a reader has done, for a status line or a health check.
#[derive(Debug, Clone)]
pub struct Status {
    /// The mapped seq (0 before anything is mapped).
    pub seq: u64,
    pub ready: bool,
    pub socket_connected: bool,
    pub loads: LoadsBySource,
    /// Looks at the published files.
    pub checks: u64,
    pub rejected: u64,
    pub last_rejection: Option<String>,
    /// How long the load under way has taken, if one is.
    pub loading: Option<Duration>,
}

impl Reader {
    /// Maps the state published in `data_dir` and follows the leader on two
    /// background threads. An empty or foreign directory is an error; a leader's
    /// directory before its first publication is not: lookups then fail with
    /// [`Error::NotReady`] until it publishes (`wait_for(1, timeout)` waits for that).
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Reader, Error> {
        Self::open_with(Options::new(data_dir.as_ref()), Follow::Background)
    }

    /// [`Reader::open`] with options, following in the background or by hand.
    pub fn open_with(options: Options, follow: Follow) -> Result<Reader, Error> {
        check_dir(&options.data_dir)?;
        let reader = Self::unchecked(options, follow).map_err(|source| Error::Io {
            path: PathBuf::from("(reader threads)"),
            source,
        })?;
        if let Reloaded::Rejected(e) = reader.inner.maps.reload(Source::Start)
            && reader.inner.maps.current().is_none()
        {
            return Err(Error::Corrupt(e));
        }
        Ok(reader)
    }

    /// A reader of a directory that may not exist yet (a server started before its
    /// leader): no check, nothing mapped until the follower finds a state.
    pub fn unchecked(options: Options, follow: Follow) -> std::io::Result<Reader> {
        let reader = Reader {
            inner: Arc::new(Inner {
                maps: Arc::new(Maps::new(options)),
                follower: Mutex::new(None),
            }),
        };
        if follow == Follow::Background {
            reader.follow()?;
        }
        Ok(reader)
    }

    /// Starts following in the background (a reader opened [`Follow::ByHand`]); does
    /// nothing if it already does.
    pub fn follow(&self) -> std::io::Result<()> {
        let mut f = self.inner.follower.lock();
        if f.is_none() {
            *f = Some(Follower::start(
                self.inner.maps.clone(),
                self.inner.maps.link.clone(),
            )?);
        }
        Ok(())
    }

    /// How this reader introduces itself to the leader while it follows (protocol 2
    /// of the socket): an application's reader is `PeerKind::Reader` (the default),
    /// listed in the leader's `/health` and never counted as a problem; a local
    /// replica names the URL it serves at. The leader takes the process id and user
    /// from the socket itself.
    pub fn introduce(&self, kind: crate::protocol::PeerKind, url: Option<String>) {
        self.inner.maps.link.introduce(kind, url);
    }

    /// Stops following (the threads end; lookups go on answering from the state
    /// mapped last). Blocks until a validation under way gives up.
    pub fn stop(&self) {
        let follower = self.inner.follower.lock().take();
        drop(follower);
    }

    /// The state mapped now, held (see [`Snapshot`]).
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        self.state().map(Snapshot).ok_or_else(|| self.not_ready())
    }

    /// The mapped state, if any.
    pub fn state(&self) -> Option<Arc<MappedState>> {
        self.inner.maps.current()
    }

    fn not_ready(&self) -> Error {
        Error::NotReady(self.inner.maps.options.data_dir.clone())
    }

    /// The count of `word`, normalised as the leader's tokenizer counts it (`Hello`
    /// finds `hello` under the Unicode tokenizer). Text that is not exactly one word
    /// is an error, not a guess. 0 for a word never counted.
    pub fn count(&self, word: &str) -> Result<u64, Error> {
        let guard = self.inner.maps.current.load();
        let m = guard.as_deref().ok_or_else(|| self.not_ready())?;
        count_in(m, word)
    }

    /// The count of `word` exactly as written, with no normalisation.
    pub fn count_raw(&self, word: &str) -> Result<u64, Error> {
        let guard = self.inner.maps.current.load();
        let m = guard.as_deref().ok_or_else(|| self.not_ready())?;
        Ok(m.get(word))
    }

    /// The counts of `words`, in order, all from one state.
    pub fn counts<W: AsRef<str>>(&self, words: &[W]) -> Result<Vec<u64>, Error> {
        self.snapshot()?.counts(words)
    }

    /// The first `n` words by count (ties: the word that sorts first), of those that
    /// start with `prefix` (normalised like a word's case).
    pub fn top(&self, n: usize, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        Ok(self.snapshot()?.top(n, prefix))
    }

    /// The mapped seq (0 before anything is mapped).
    pub fn seq(&self) -> u64 {
        self.inner.maps.seq_now()
    }

    /// The incarnation of the leader that published the mapped state: it changes when
    /// the leader starts over on an empty directory, and seqs start over with it.
    pub fn incarnation(&self) -> Option<Incarnation> {
        self.state().and_then(|m| m.header().incarnation)
    }

    /// Waits until a state of at least `seq` is mapped, at most `timeout`, and
    /// returns the seq mapped. Asks the leader (over its socket) to publish at once
    /// rather than at its interval. A reader that follows by hand refreshes while it
    /// waits.
    pub fn wait_for(&self, seq: u64, timeout: Duration) -> Result<u64, Error> {
        let maps = &self.inner.maps;
        let deadline = Instant::now() + timeout;
        self.inner.maps.link.want(seq, maps.seq_now());
        let by_hand = self.inner.follower.lock().is_none();
        let mut mapped = maps.seq.lock();
        while *mapped < seq {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    want: seq,
                    have: *mapped,
                    timeout,
                });
            }
            if by_hand {
                drop(mapped);
                let _ = self.refresh();
                std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
                mapped = maps.seq.lock();
            } else {
                maps.seq_changed.wait_until(&mut mapped, deadline);
            }
        }
        Ok(*mapped)
    }

    /// Maps the published state now if it changed: `true` if a newer one is mapped.
    /// Files that fail validation are an error, and the state mapped before keeps
    /// serving.
    pub fn refresh(&self) -> Result<bool, Error> {
        match self.inner.maps.reload(Source::Refresh) {
            Reloaded::New { .. } => Ok(true),
            Reloaded::Same => Ok(false),
            Reloaded::Rejected(e) => Err(Error::Corrupt(e)),
        }
    }

    /// What the reader has done so far.
    pub fn status(&self) -> Status {
        let maps = &self.inner.maps;
        let st = maps.stats.lock();
        Status {
            seq: maps.seq_now(),
            ready: maps.current.load().is_some(),
            socket_connected: maps
                .socket_connected
                .load(std::sync::atomic::Ordering::Acquire),
            loads: st.loads,
            checks: maps.checks.load(std::sync::atomic::Ordering::Relaxed),
            rejected: st.rejected,
            last_rejection: st.last_rejection.clone(),
            loading: maps.loading_since.lock().map(|t| t.elapsed()),
        }
    }

    /// Why the mapping may be behind the leader, if it may: a file validated for
    /// longer than `after`, or a seq the leader announced longer ago than that and
    /// not mapped.
    pub fn staleness(&self, after: Duration) -> Option<String> {
        self.inner.maps.staleness(after)
    }

    /// The mapped seq, for async waiters.
    pub fn seq_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.maps.seq_tx.subscribe()
    }

    /// Asks the leader to publish `seq` soon (as `wait_for` does), without waiting.
    pub fn want(&self, seq: u64) {
        self.inner.maps.link.want(seq, self.seq());
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.maps.options
    }
}

impl Snapshot {
    /// As [`Reader::count`], on this state.
    pub fn count(&self, word: &str) -> Result<u64, Error> {
        count_in(&self.0, word)
    }

    /// As [`Reader::count_raw`], on this state.
    pub fn count_raw(&self, word: &str) -> u64 {
        self.0.get(word)
    }

    /// As [`Reader::counts`], on this state.
    pub fn counts<W: AsRef<str>>(&self, words: &[W]) -> Result<Vec<u64>, Error> {
        words
            .iter()
            .map(|w| count_in(&self.0, w.as_ref()))
            .collect()
    }

    /// As [`Reader::top`], on this state.
    pub fn top(&self, n: usize, prefix: &str) -> Vec<(String, u64)> {
        let prefix = self.0.header().tokenizer.normalize_prefix(prefix);
        self.0
            .top_words(n, &prefix)
            .into_iter()
            .map(|(w, c)| (w.to_owned(), c))
            .collect()
    }

    pub fn seq(&self) -> u64 {
        self.0.seq()
    }

    pub fn incarnation(&self) -> Option<Incarnation> {
        self.0.header().incarnation
    }

    pub fn tokenizer(&self) -> Tokenizer {
        self.0.header().tokenizer
    }

    /// Distinct words.
    pub fn words(&self) -> u64 {
        self.0.words()
    }
}

fn count_in(m: &MappedState, word: &str) -> Result<u64, Error> {
    let tokenizer = m.header().tokenizer;
    let norm = tokenizer.normalize(word).map_err(|e| Error::Word {
        word: word.to_owned(),
        reason: e.to_string(),
        tokenizer,
    })?;
    Ok(m.get(&norm))
}

/// Whether `dir` is a directory with something of memdb's in it.
fn check_dir(dir: &Path) -> Result<(), Error> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(dir.to_owned()));
        }
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(Error::NotMemdb(dir.to_owned()));
    }
    let marks = [
        crate::storage::snapshot::FILE_NAME,
        crate::protocol::SOCKET_NAME,
        crate::storage::history::FILE_NAME,
    ];
    for name in marks {
        match std::fs::symlink_metadata(dir.join(name)) {
            Ok(_) => return readable(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: dir.join(name),
                    source,
                });
            }
        }
    }
    Err(Error::NotMemdb(dir.to_owned()))
}

/// Whether the published base (if there is one yet) may be read: a reader of another
/// user needs the leader's `--reader-group`, and is told so rather than that the file
/// is corrupt.
fn readable(dir: &Path) -> Result<(), Error> {
    let base = dir.join(crate::storage::snapshot::FILE_NAME);
    match std::fs::File::open(&base) {
        Err(source) if source.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::Io {
            path: base,
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "{source}: the leader shares its state only with the group named by \
                     its --reader-group"
                ),
            ),
        }),
        _ => Ok(()),
    }
}
