//! The write-ahead log: every applied batch, in seq order, so that a restart loses
//! nothing that was acknowledged (with `--fsync always`) or at most about a second
//! (`everysec`).
//!
//! Segments are files `wal-<first seq, 20 digits>.log` in the data directory. A record:
//!
//! ```text
//! offset  size  field
//!      0     4  payload length n, u32 LE
//!      4     8  xxh3-64 of the payload
//!     12     n  payload: seq u64 LE, word count u32 LE,
//!               then per word: length u32 LE, UTF-8 bytes, delta u64 LE,
//!               then (optional) the table digest after the batch, u64 LE
//! ```
//!
//! The digest trailer was added later: a record without it (an older log) still reads,
//! its batch then carries no digest.
//!
//! One writer thread takes batches from a channel (pushed under the table lock, so in
//! seq order), writes everything that is queued, and with `always` fsyncs once for the
//! whole group before announcing the new durable seq: concurrent writers share one
//! fsync (group commit). A segment that has grown past `segment_bytes` is fsynced and
//! closed, and the next record starts a new one.
//!
//! After a snapshot is published, the segments it covers are no longer needed for
//! recovery. The newest of them, up to `retain_bytes`, are kept anyway: network
//! replicas that fell behind further than the leader's in-memory backlog (or that
//! followed it before a restart, when the backlog starts empty) catch up from them with
//! a [`LogReader`] instead of a full sync. Older ones are deleted.
//!
//! Replay stops at the first record that is short, fails its checksum, or does not
//! follow the previous seq; the segment is cut there (a torn tail after a crash is
//! normal) and later segments are set aside, never silently applied out of order.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use tokio::sync::watch;
use xxhash_rust::xxh3::xxh3_64;

use crate::storage::batch::Batch;
use crate::storage::table::Table;

const RECORD_HEADER: usize = 12;
/// A record larger than this is corrupt (bodies are capped far below it).
const MAX_RECORD: usize = 256 << 20;
/// How often `everysec` syncs.
const EVERYSEC: Duration = Duration::from_secs(1);

/// How the log is written and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub fsync: FsyncPolicy,
    /// A segment is closed once it holds at least this many bytes. Default 16 MiB.
    pub segment_bytes: u64,
    /// Segments a snapshot covers are kept, newest first, up to this many bytes, for
    /// replicas to catch up from. Default 256 MiB.
    pub retain_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            fsync: FsyncPolicy::default(),
            segment_bytes: 16 << 20,
            retain_bytes: 256 << 20,
        }
    }
}

/// When a write is acknowledged relative to the log reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Acknowledge a write only once its record is fsynced (group commit).
    Always,
    /// fsync once a second; a crash or power loss may lose about the last second.
    #[default]
    EverySec,
    /// Never fsync; the OS writes the log when it wants (a process crash loses
    /// nothing written, a power loss may lose more).
    No,
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            o => Err(format!(
                "unknown fsync policy {o:?}: always, everysec or no"
            )),
        }
    }
}

impl FsyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        }
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

/// The segments in `dir`, sorted by first seq.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            && let Ok(first) = num.parse::<u64>()
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Encodes one batch as a record.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.extend_from_slice(&batch.seq.to_le_bytes());
    out.extend_from_slice(&(batch.deltas.len() as u32).to_le_bytes());
    for (w, n) in &batch.deltas {
        out.extend_from_slice(&(w.len() as u32).to_le_bytes());
        out.extend_from_slice(w.as_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    if let Some(d) = batch.digest {
        out.extend_from_slice(&d.to_le_bytes());
    }
    let payload_len = out.len() - start - RECORD_HEADER;
    let sum = xxh3_64(&out[start + RECORD_HEADER..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
}

fn decode_payload(p: &[u8]) -> Option<Batch> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = p.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut deltas = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let word = std::str::from_utf8(take(len)?).ok()?.to_owned();
        let n = u64::from_le_bytes(take(8)?.try_into().ok()?);
        deltas.push((word, n));
    }
    let digest = match p.len() - at {
        0 => None,
        8 => Some(u64::from_le_bytes(p[at..].try_into().ok()?)),
        _ => return None,
    };
    Some(Batch {
        seq,
        deltas,
        digest,
    })
}

/// What replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Records applied (those past the snapshot's seq).
    pub applied: u64,
    /// Where the log was cut, if it was: the file and the reason.
    pub cut: Option<String>,
}

/// Applies every valid record after `table.seq()` from the segments in `dir`, cutting
/// a torn or corrupt tail.
pub fn replay(dir: &Path, table: &mut Table) -> io::Result<Replayed> {
    let mut out = Replayed::default();
    let segs = segments(dir)?;
    let mut stop = false;
    for (i, (_, path)) in segs.iter().enumerate() {
        // A segment followed by one that starts at or before the next seq we need
        // holds nothing to apply (it was kept for replicas): skip reading it.
        if !stop
            && segs
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= table.seq() + 1)
        {
            continue;
        }
        if stop {
            // Past a cut: these records cannot be applied in order. Keep them aside.
            let aside = path.with_extension("log.corrupt");
            tracing::error!(from = %path.display(), to = %aside.display(), "setting aside a log segment after a cut");
            fs::rename(path, aside)?;
            continue;
        }
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let mut at = 0;
        while at < bytes.len() {
            let reason = match parse_record(&bytes[at..]) {
                Ok((batch, used)) => {
                    if batch.seq <= table.seq() {
                        at += used;
                        continue;
                    }
                    if batch.seq != table.seq() + 1 {
                        Some(format!(
                            "record seq {} does not follow {}",
                            batch.seq,
                            table.seq()
                        ))
                    } else {
                        table.apply(&batch.deltas, batch.seq);
                        out.applied += 1;
                        at += used;
                        None
                    }
                }
                Err(why) => Some(why.to_owned()),
            };
            if let Some(reason) = reason {
                tracing::warn!(segment = %path.display(), offset = at, reason = %reason, "cutting the log here");
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(at as u64)?;
                out.cut = Some(format!("{} at byte {at}: {reason}", path.display()));
                stop = true;
                break;
            }
        }
    }
    Ok(out)
}

fn parse_record(b: &[u8]) -> Result<(Batch, usize), &'static str> {
    if b.len() < RECORD_HEADER {
        return Err("torn record header");
    }
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_RECORD {
        return Err("record length out of range");
    }
    let Some(payload) = b.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Err("torn record");
    };
    let sum = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes"));
    if xxh3_64(payload) != sum {
        return Err("checksum mismatch");
    }
    let batch = decode_payload(payload).ok_or("malformed record")?;
    Ok((batch, RECORD_HEADER + len))
}

/// Reads the batches after a given seq back from the log, for a replica that needs
/// them. Remembers where the last read stopped, so a replica catching up through many
/// pushes does not rescan its segment each time.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    /// The segment, offset and seq of the record the last read stopped before.
    cursor: Option<(PathBuf, u64, u64)>,
}

impl LogReader {
    pub fn new(dir: &Path) -> Self {
        LogReader {
            dir: dir.to_owned(),
            cursor: None,
        }
    }

    /// The consecutive batches from `after + 1`, at most `max_batches` and stopping
    /// once `max_bytes` of records were read (always at least one if any). Empty if the
    /// log no longer (or does not yet) hold `after + 1`. Blocking.
    ///
    /// Safe against the writer: a record still being written reads as torn and ends
    /// the read; a segment deleted meanwhile reads as absent.
    pub fn read_after(
        &mut self,
        after: u64,
        max_batches: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<Batch>> {
        let want = after + 1;
        let segs = segments(&self.dir)?;
        let Some(mut idx) = segs.iter().rposition(|(first, _)| *first <= want) else {
            return Ok(Vec::new());
        };
        let mut offset = match &self.cursor {
            Some((path, off, next)) if *next == want && *path == segs[idx].1 => *off,
            _ => 0,
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let path = &segs[idx].1;
            let mut file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            file.seek(SeekFrom::Start(offset))?;
            let mut r = io::BufReader::with_capacity(256 << 10, file);
            let mut header = [0u8; RECORD_HEADER];
            let mut payload = Vec::new();
            let full = loop {
                if out.len() >= max_batches || bytes >= max_bytes {
                    break true;
                }
                if !read_full(&mut r, &mut header)? {
                    break false;
                }
                let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_RECORD {
                    break false;
                }
                payload.resize(len, 0);
                if !read_full(&mut r, &mut payload)? {
                    break false;
                }
                let sum = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
                let Some(batch) = (xxh3_64(&payload) == sum)
                    .then(|| decode_payload(&payload))
                    .flatten()
                else {
                    break false;
                };
                let next = out.last().map_or(want, |b: &Batch| b.seq + 1);
                if batch.seq < next {
                    offset += (RECORD_HEADER + len) as u64;
                    continue;
                }
                if batch.seq != next {
                    break false;
                }
                offset += (RECORD_HEADER + len) as u64;
                bytes += RECORD_HEADER + len;
                out.push(batch);
            };
            let next = out.last().map_or(want, |b| b.seq + 1);
            self.cursor = Some((path.clone(), offset, next));
            // At the end of a closed segment the history goes on in the next one.
            match segs.get(idx + 1) {
                Some((first, _)) if !full && *first == next => {
                    idx += 1;
                    offset = 0;
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Fills `buf` from `r`; false at a clean or torn end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

enum Msg {
    Batch(Arc<Batch>),
    /// Write and fsync everything queued, then answer.
    Sync(Sender<io::Result<u64>>),
    /// A snapshot of this seq is durable: segments it covers may go.
    Checkpoint(u64),
}

/// The log writer's handle. Dropping it flushes, fsyncs and stops the thread.
pub struct Wal {
    tx: Option<Sender<Msg>>,
    stats: Arc<FsyncStats>,
    health: Arc<LogHealth>,
    thread: Option<JoinHandle<()>>,
    durable: watch::Receiver<u64>,
    written: watch::Receiver<u64>,
    /// `Some(reason)` while the log cannot be written.
    failed: watch::Receiver<Option<String>>,
    policy: FsyncPolicy,
}

/// How the log's fsyncs are going, for `/metrics`.
#[derive(Debug, Default)]
pub struct FsyncStats {
    pub fsyncs: AtomicU64,
    pub last_nanos: AtomicU64,
    pub total_nanos: AtomicU64,
}

/// What is wrong with the log, shared by the writer thread and the leader. Read on
/// every write (one atomic load), so a failed log refuses writes at once.
#[derive(Debug, Default)]
pub struct LogHealth {
    failed: AtomicBool,
    /// Why the log cannot be written, while it cannot.
    reason: Mutex<Option<String>>,
    /// Why a full segment could not be closed (its successor could not be created),
    /// while that lasts: the open segment keeps growing past `--wal-segment-size`.
    roll_error: Mutex<Option<String>>,
    /// Times the log went from writable to failed.
    pub failures: AtomicU64,
    /// Times a segment could not be rolled.
    pub roll_failures: AtomicU64,
}

impl LogHealth {
    /// Whether the log is failed (writes must be refused).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the log is failed, if it is.
    pub fn failure(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    /// Why the open segment could not be rolled, if it could not.
    pub fn roll_error(&self) -> Option<String> {
        self.roll_error.lock().clone()
    }
}

/// Why a write could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("the write-ahead log failed: {0}")]
pub struct WalError(pub String);

impl Wal {
    /// Opens the log for appending after `seq` (everything up to it is in the table).
    pub fn open(dir: &Path, seq: u64, options: WalOptions) -> io::Result<Wal> {
        let policy = options.fsync;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (durable_tx, durable) = watch::channel(seq);
        let (written_tx, written) = watch::channel(seq);
        let (failed_tx, failed) = watch::channel(None);
        let stats = Arc::new(FsyncStats::default());
        let health = Arc::new(LogHealth::default());
        let mut writer = Writer {
            stats: stats.clone(),
            health: health.clone(),
            dir: dir.to_owned(),
            file: None,
            first_seq: seq + 1,
            last_seq: seq,
            policy,
            options,
            safe_len: 0,
            pending: Vec::with_capacity(64 << 10),
            in_file: 0,
            durable: durable_tx,
            written: written_tx,
            failed: failed_tx,
            dirty: false,
            last_sync: Instant::now(),
            error: None,
            retry: RETRY_START,
            next_retry: Instant::now(),
            next_roll: Instant::now(),
        };
        writer.open_segment(seq + 1)?;
        let thread = std::thread::Builder::new()
            .name("memdb-wal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Wal {
            tx: Some(tx),
            stats,
            health,
            thread: Some(thread),
            durable,
            written,
            failed,
            policy,
        })
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    pub fn fsync_stats(&self) -> &FsyncStats {
        &self.stats
    }

    /// Whether the log can be written, and why not.
    pub fn health(&self) -> &LogHealth {
        &self.health
    }

    /// Queues the next batch. Call in seq order (under the table lock), and only while
    /// [`LogHealth::is_failed`] is false: a write the log cannot hold must not be
    /// applied. Never blocks. A batch queued just as the log fails is kept in memory
    /// and written once the log recovers.
    pub fn append(&self, batch: Arc<Batch>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Batch(batch));
        }
    }

    /// Waits until `seq` is durable (with `always`) or at least written to the OS.
    /// Fails at once if the log fails first: the batch is then kept in memory and
    /// written when the log recovers, but it cannot be promised now.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        let mut durable = self.durable.clone();
        let mut failed = self.failed.clone();
        loop {
            if *durable.borrow_and_update() >= seq {
                return Ok(());
            }
            if let Some(why) = failed.borrow_and_update().clone() {
                return Err(WalError(why));
            }
            let stopped = tokio::select! {
                r = durable.changed() => r.is_err(),
                r = failed.changed() => r.is_err(),
            };
            if stopped {
                return Err(WalError("the log writer stopped".into()));
            }
        }
    }

    /// Follows the seq written through to the log file (readable by a [`LogReader`],
    /// not necessarily fsynced).
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    /// The highest seq known durable.
    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Writes and fsyncs everything queued (on a failed log: tries once more now).
    /// Blocking.
    pub fn sync(&self) -> io::Result<u64> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("log closed"))?;
        tx.send(Msg::Sync(reply_tx))
            .map_err(|_| io::Error::other("log writer stopped"))?;
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("log writer stopped"))?
    }

    /// A snapshot of `seq` is on disk: segments it covers, beyond the retained
    /// bytes, can go.
    pub fn checkpoint(&self, seq: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Checkpoint(seq));
        }
    }

    /// A handle that calls [`Wal::checkpoint`] from elsewhere (the publisher thread).
    /// Drop it before the `Wal`: the writer stops only when every handle is gone.
    pub fn checkpointer(&self) -> impl Fn(u64) + Send + 'static {
        let tx = self.tx.clone();
        move |seq| {
            if let Some(tx) = &tx {
                let _ = tx.send(Msg::Checkpoint(seq));
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Retry delays while the log cannot be written: from the first to the cap.
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a segment that could not be rolled tries again.
const ROLL_RETRY: Duration = Duration::from_secs(1);

struct Writer {
    stats: Arc<FsyncStats>,
    health: Arc<LogHealth>,
    dir: PathBuf,
    /// The open segment, in append mode.
    file: Option<File>,
    first_seq: u64,
    last_seq: u64,
    policy: FsyncPolicy,
    options: WalOptions,
    /// The open segment's length up to which its records are known to be kept: fsynced
    /// (`always`, `everysec`) or written to the OS (`no`).
    safe_len: u64,
    /// The encoded records after `safe_len`, not yet known to be kept. The first
    /// `in_file` bytes of it have been written to the file. After a failure the file
    /// is cut back to `safe_len` and this is written again whole: what a failed write
    /// or fsync left in the file (or the page cache) is never trusted.
    pending: Vec<u8>,
    in_file: usize,
    durable: watch::Sender<u64>,
    written: watch::Sender<u64>,
    failed: watch::Sender<Option<String>>,
    dirty: bool,
    last_sync: Instant,
    /// Set while the log is failed: nothing new is written until a retry succeeds.
    error: Option<String>,
    retry: Duration,
    next_retry: Instant,
    /// While a roll fails, when to try the next.
    next_roll: Instant,
}

impl Writer {
    fn open_segment(&mut self, first_seq: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first_seq));
        let existed = path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let opened = (|| {
            let len = f.seek(SeekFrom::End(0))?;
            File::open(&self.dir)?.sync_all()?;
            Ok(len)
        })();
        let len = match opened {
            Ok(len) => len,
            Err(e) => {
                // An empty segment left behind would hide the records that the open
                // segment goes on to hold (replay skips a segment whose successor
                // starts at or before the seq it needs).
                if !existed {
                    let _ = fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        self.file = Some(f);
        self.safe_len = len;
        self.first_seq = first_seq;
        Ok(())
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = if self.error.is_some() {
                self.next_retry.saturating_duration_since(Instant::now())
            } else {
                match self.policy {
                    FsyncPolicy::EverySec if self.dirty => {
                        EVERYSEC.saturating_sub(self.last_sync.elapsed())
                    }
                    _ => Duration::from_secs(3600),
                }
            };
            // A segment that could not be rolled is retried even with no new writes.
            let wait = if self.health.roll_error.lock().is_some() {
                wait.min(self.next_roll.saturating_duration_since(Instant::now()))
            } else {
                wait
            };
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let result = if self.error.is_some() {
                        self.retry_now()
                    } else {
                        self.flush(true)
                    };
                    if result.is_err() {
                        tracing::error!(
                            first_lost = self.durable.borrow().saturating_add(1),
                            last_lost = self.last_seq,
                            "the write-ahead log is closing without these batches: they \
                             are lost unless a snapshot holds them"
                        );
                    }
                    return;
                }
            };
            // Group commit: take everything already queued, write it, sync once.
            let mut replies = Vec::new();
            for m in first.into_iter().chain(rx.try_iter()) {
                match m {
                    Msg::Batch(b) => {
                        encode(&b, &mut self.pending);
                        self.last_seq = b.seq;
                    }
                    Msg::Sync(r) => replies.push(r),
                    Msg::Checkpoint(s) => {
                        if let Err(e) = self.remove_covered(s) {
                            tracing::error!(error = %e, "deleting old log segments failed; the log keeps growing");
                        }
                    }
                }
            }
            let result = if self.error.is_some() {
                // A sync asks for a retry now; otherwise retry on the backoff.
                if !replies.is_empty() || Instant::now() >= self.next_retry {
                    self.retry_now()
                } else {
                    Err(io::Error::other(self.error.clone().unwrap_or_default()))
                }
            } else {
                let force = !replies.is_empty()
                    || (self.policy == FsyncPolicy::EverySec
                        && self.dirty
                        && self.last_sync.elapsed() >= EVERYSEC);
                self.flush(force || self.policy == FsyncPolicy::Always)
            };
            if result.is_ok()
                && self.segment_len() >= self.options.segment_bytes
                && Instant::now() >= self.next_roll
            {
                self.roll();
            }
            for r in replies {
                let _ = r.send(
                    result
                        .as_ref()
                        .map(|_| self.last_seq)
                        .map_err(|e| io::Error::other(e.to_string())),
                );
            }
        }
    }

    fn segment_len(&self) -> u64 {
        self.safe_len + self.in_file as u64
    }

    /// Writes what is pending; fsyncs if `sync` (always with `always`). Advances the
    /// durable seq: after an fsync with `always`, after the write to the OS otherwise
    /// (that is all those modes promise). A failure fails the log.
    fn flush(&mut self, sync: bool) -> io::Result<()> {
        if let Some(e) = &self.error {
            return Err(io::Error::other(e.clone()));
        }
        let res = self.write_pending(sync);
        if let Err(e) = &res {
            self.fail(e);
        }
        res
    }

    fn write_pending(&mut self, sync: bool) -> io::Result<()> {
        if self.in_file < self.pending.len() {
            let f = self.file.as_mut().expect("a segment is open");
            f.write_all(&self.pending[self.in_file..])?;
            self.in_file = self.pending.len();
            self.written.send_replace(self.last_seq);
            self.dirty = true;
        }
        if self.policy == FsyncPolicy::No {
            // Written to the OS is all `no` promises: nothing to keep for a retry.
            self.settle();
        }
        if sync && self.dirty {
            let started = Instant::now();
            self.file.as_ref().expect("a segment is open").sync_data()?;
            let nanos = started.elapsed().as_nanos() as u64;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.stats.last_nanos.store(nanos, Ordering::Relaxed);
            self.stats.total_nanos.fetch_add(nanos, Ordering::Relaxed);
            self.dirty = false;
            self.last_sync = Instant::now();
            self.settle();
        }
        if self.policy != FsyncPolicy::Always || !self.dirty {
            self.durable.send_replace(self.last_seq);
        }
        Ok(())
    }

    /// What is in the file is kept: it no longer needs its copy in `pending`.
    fn settle(&mut self) {
        self.safe_len += self.in_file as u64;
        self.pending.drain(..self.in_file);
        self.in_file = 0;
    }

    /// The log cannot be written: refuse writes (the leader checks the flag), wake the
    /// waiters, and cut what the failed attempt may have left in the file.
    fn fail(&mut self, e: &io::Error) {
        let reason = format!("{e}");
        if let Some(f) = &self.file {
            let _ = f.set_len(self.safe_len);
        }
        self.in_file = 0;
        self.dirty = true;
        if self.error.is_none() {
            tracing::error!(
                error = %e,
                unwritten_from = self.durable.borrow().saturating_add(1),
                "the write-ahead log cannot be written: refusing writes until it can; \
                 batches already accepted are kept in memory and retried"
            );
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            self.retry = RETRY_START;
        }
        self.next_retry = Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(RETRY_MAX);
        self.error = Some(reason.clone());
        *self.health.reason.lock() = Some(reason.clone());
        self.health.failed.store(true, Ordering::Release);
        self.failed.send_replace(Some(reason));
    }

    /// On a failed log: cut the segment back to what is known kept, write everything
    /// pending again, fsync. Clears the failure if that worked.
    fn retry_now(&mut self) -> io::Result<()> {
        let res = (|| {
            let f = self.file.as_mut().expect("a segment is open");
            f.set_len(self.safe_len)?;
            self.in_file = 0;
            self.write_pending(true)
        })();
        match &res {
            Ok(()) => {
                self.error = None;
                tracing::info!(
                    seq = self.last_seq,
                    "the write-ahead log is writable again: accepting writes"
                );
                self.retry = RETRY_START;
                *self.health.reason.lock() = None;
                self.health.failed.store(false, Ordering::Release);
                self.failed.send_replace(None);
            }
            Err(e) => self.fail(e),
        }
        res
    }

    /// Closes the open segment (fsynced, so no later segment is ever more durable than
    /// an earlier one) and starts the next at the next seq. If the next cannot be
    /// created, the open one goes on (its records are safe) and this is reported and
    /// retried every [`ROLL_RETRY`].
    fn roll(&mut self) {
        if self.flush(true).is_err() || self.first_seq > self.last_seq {
            return;
        }
        match self.open_segment(self.last_seq + 1) {
            Ok(()) => {
                if self.health.roll_error.lock().take().is_some() {
                    tracing::info!("log segments roll again");
                }
            }
            Err(e) => {
                let mut err = self.health.roll_error.lock();
                if err.is_none() {
                    tracing::error!(
                        error = %e,
                        segment_bytes = self.segment_len(),
                        limit = self.options.segment_bytes,
                        "cannot start a new log segment: the open one grows past \
                         --wal-segment-size until one can be created"
                    );
                    self.health.roll_failures.fetch_add(1, Ordering::Relaxed);
                }
                *err = Some(format!("cannot start a new log segment: {e}"));
                self.next_roll = Instant::now() + ROLL_RETRY;
            }
        }
    }

    /// Deletes segments whose every record is at or below `snapshot_seq`, except the
    /// newest of them up to `retain_bytes`. The open segment always stays.
    fn remove_covered(&self, snapshot_seq: u64) -> io::Result<()> {
        let segs = segments(&self.dir)?;
        let mut kept = 0u64;
        let mut dropping = false;
        let mut removed = false;
        for (i, (first, path)) in segs.iter().enumerate().rev() {
            let covered = segs
                .get(i + 1)
                .is_some_and(|(next, _)| next.saturating_sub(1) <= snapshot_seq);
            if !covered || *first == self.first_seq {
                continue;
            }
            let len = fs::metadata(path)?.len();
            if !dropping && kept.saturating_add(len) <= self.options.retain_bytes {
                kept += len;
                continue;
            }
            // Once one is dropped, every older one goes too: what is kept is always
            // one contiguous stretch of history.
            dropping = true;
            fs::remove_file(path)?;
            removed = true;
        }
        if removed {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, word: &str, n: u64) -> Arc<Batch> {
        Arc::new(Batch {
            seq,
            deltas: vec![(word.to_owned(), n), ("common".into(), 1)],
            digest: Some(seq * 31),
        })
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let b = batch(7, "héllo", 3);
        let mut buf = Vec::new();
        encode(&b, &mut buf);
        let (got, used) = parse_record(&buf).unwrap();
        assert_eq!((got, used), ((*b).clone(), buf.len()));
        assert!(parse_record(&buf[..buf.len() - 1]).is_err());
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(parse_record(&bad).is_err(), "flip at {i} accepted");
        }
        // A record written before digests were recorded reads as a batch without one.
        let old = Batch {
            digest: None,
            ..(*b).clone()
        };
        let mut buf = Vec::new();
        encode(&old, &mut buf);
        assert_eq!(parse_record(&buf).unwrap().0, old);
        assert_eq!(buf.len() + 8, {
            let mut with = Vec::new();
            encode(&b, &mut with);
            with.len()
        });
    }

    fn write_log(dir: &Path, policy: FsyncPolicy, seqs: std::ops::RangeInclusive<u64>) {
        let wal = Wal::open(
            dir,
            *seqs.start() - 1,
            WalOptions {
                fsync: policy,
                ..WalOptions::default()
            },
        )
        .unwrap();
        for s in seqs {
            wal.append(batch(s, &format!("w{s}"), s));
        }
        assert!(wal.sync().is_ok());
    }

    /// Records 1..=5 with the last 3 bytes of the fifth cut off; the segment's path.
    fn torn_log(dir: &Path, policy: FsyncPolicy) -> PathBuf {
        write_log(dir, policy, 1..=5);
        let (_, path) = segments(dir).unwrap().pop().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        path
    }

    #[test]
    fn replay_applies_everything_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), FsyncPolicy::Always, 1..=10);
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, r.cut, t.seq()), (10, None, 10));
        assert_eq!((t.get("common"), t.get("w4")), (10, 4));
        // From a snapshot at seq 6 only 7..=10 are applied.
        let mut t = Table::new();
        t.apply(&vec![("common".into(), 6)], 6);
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, t.seq(), t.get("common")), (4, 10, 10));
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        torn_log(dir.path(), FsyncPolicy::No);
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, t.seq()), (4, 4));
        assert!(r.cut.unwrap().contains("torn"));
        // The next leader appends after the cut; a later replay sees one history.
        write_log(dir.path(), FsyncPolicy::Always, 5..=6);
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, r.cut, t.seq()), (6, None, 6));
    }

    #[test]
    fn a_flipped_byte_stops_replay_at_that_record() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), FsyncPolicy::Always, 1..=5);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut t = Table::new();
        let r = replay(dir.path(), &mut t).unwrap();
        assert!(r.applied < 5 && r.cut.is_some(), "{r:?}");
        assert_eq!(t.seq(), r.applied);
    }

    fn opts(fsync: FsyncPolicy, segment_bytes: u64, retain_bytes: u64) -> WalOptions {
        WalOptions {
            fsync,
            segment_bytes,
            retain_bytes,
        }
    }

    fn firsts(dir: &Path) -> Vec<u64> {
        segments(dir).unwrap().iter().map(|s| s.0).collect()
    }

    #[test]
    fn segments_roll_by_size_and_checkpoints_drop_what_is_not_retained() {
        let dir = tempfile::tempdir().unwrap();
        // One-byte segments: every group written closes its segment.
        let wal = Wal::open(dir.path(), 0, opts(FsyncPolicy::Always, 1, 0)).unwrap();
        for s in 1..=3 {
            wal.append(batch(s, "a", 1));
            wal.sync().unwrap();
        }
        assert_eq!(firsts(dir.path()), [1, 2, 3, 4]);
        wal.checkpoint(1); // covers segment 1 only
        wal.sync().unwrap();
        assert_eq!(firsts(dir.path()), [2, 3, 4]);
        wal.checkpoint(3); // covers 2 and 3; 4 is open
        wal.sync().unwrap();
        assert_eq!(firsts(dir.path()), [4]);
        drop(wal);
        let mut t = Table::new();
        t.apply(&vec![("a".into(), 3)], 3);
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, t.seq(), t.get("a")), (0, 3, 3));
    }

    #[test]
    fn covered_segments_are_retained_newest_first_up_to_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let mut b = Vec::new();
            encode(&batch(1, "a", 1), &mut b);
            b.len() as u64
        };
        let wal = Wal::open(dir.path(), 0, opts(FsyncPolicy::Always, 1, 2 * one)).unwrap();
        for s in 1..=6 {
            wal.append(batch(s, "a", 1));
            wal.sync().unwrap();
        }
        wal.checkpoint(6);
        wal.sync().unwrap();
        // 1..=6 are covered; the newest two are kept, and the open segment 7.
        assert_eq!(firsts(dir.path()), [5, 6, 7]);
        drop(wal);
        // Replay from a snapshot at 6 skips the retained segments.
        let mut t = Table::new();
        t.apply(&vec![("a".into(), 6)], 6);
        let r = replay(dir.path(), &mut t).unwrap();
        assert_eq!((r.applied, r.cut, t.seq()), (0, None, 6));
    }

    #[test]
    fn the_reader_returns_consecutive_batches_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 0, opts(FsyncPolicy::No, 200, u64::MAX)).unwrap();
        for s in 1..=50 {
            wal.append(batch(s, &format!("w{s}"), s));
            if s % 3 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        assert!(segments(dir.path()).unwrap().len() > 5, "several segments");
        let mut r = LogReader::new(dir.path());
        let all = r.read_after(0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|b| b.seq).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
        assert_eq!(all[9], *batch(10, "w10", 10));
        // In steps, resuming where the last read stopped.
        let mut next = 17;
        while next < 50 {
            let got = r.read_after(next, 4, usize::MAX).unwrap();
            assert_eq!(got.first().unwrap().seq, next + 1);
            assert!(got.len() <= 4);
            next = got.last().unwrap().seq;
        }
        assert!(
            r.read_after(50, 10, 10).unwrap().is_empty(),
            "nothing newer"
        );
        // A byte budget still returns at least one batch.
        assert_eq!(r.read_after(3, 100, 1).unwrap().len(), 1);
        // Once the segments holding 1..=20 are gone, those seqs are unavailable.
        wal.checkpoint(30);
        drop(wal);
        for (first, path) in segments(dir.path()).unwrap() {
            if first <= 20 {
                fs::remove_file(path).unwrap();
            }
        }
        let first_kept = segments(dir.path()).unwrap()[0].0;
        assert!(r.read_after(0, 10, usize::MAX).unwrap().is_empty());
        let got = r.read_after(first_kept - 1, 10, usize::MAX).unwrap();
        assert_eq!(got[0].seq, first_kept);
    }

    #[test]
    fn the_reader_stops_at_a_torn_or_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = torn_log(dir.path(), FsyncPolicy::Always);
        let mut r = LogReader::new(dir.path());
        let got = r.read_after(0, 100, usize::MAX).unwrap();
        assert_eq!(got.len(), 4, "the torn fifth record is not returned");
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1; // inside the first record's payload
        fs::write(&path, &bytes).unwrap();
        let mut r = LogReader::new(dir.path());
        assert!(r.read_after(0, 100, usize::MAX).unwrap().is_empty());
    }
}
