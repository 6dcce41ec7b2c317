//! Following the leader on two threads of the reader's own (no async runtime needed
//! in the host process): one listens on the leader's notification socket and passes
//! `want N` for waiting readers; the other maps what changed, watches the directory
//! while the socket is down, and polls the files' identities as the last resort.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::backoff::Backoff;
use crate::protocol::parse_socket_line;
use crate::storage::snapshot;

use super::link::Link;
use super::maps::{Maps, Source};

/// Reconnect delays to the leader's socket: from the first to the cap.
const RECONNECT_START: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Longest line read from the leader (a `seq N` is ~25 bytes).
const MAX_LINE: u64 = crate::protocol::MAX_SOCKET_LINE as u64;
/// A `want N` that cannot be written this fast is dropped (the leader publishes at its
/// interval anyway).
const WANT_TIMEOUT: Duration = Duration::from_millis(50);

/// The follower threads of one reader. Dropping it stops them and waits for them.
pub(super) struct Follower {
    maps: Arc<Maps>,
    link: Arc<Link>,
    /// Dropped to wake and stop both threads.
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Follower {
    pub fn start(maps: Arc<Maps>, link: Arc<Link>) -> std::io::Result<Follower> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (kick_tx, kick_rx) = crossbeam_channel::bounded::<Source>(64);
        let _ = kick_tx.try_send(Source::Start);
        let socket = {
            let (maps, link, stop, kick) =
                (maps.clone(), link.clone(), stop_rx.clone(), kick_tx.clone());
            std::thread::Builder::new()
                .name("memdb-reader-socket".into())
                .spawn(move || follow_socket(&maps, &link, &stop, &kick))?
        };
        let loader = {
            let maps = maps.clone();
            std::thread::Builder::new()
                .name("memdb-reader-load".into())
                .spawn(move || load_on_cue(&maps, &stop_rx, &kick_rx, kick_tx))?
        };
        Ok(Follower {
            maps,
            link,
            stop: Some(stop_tx),
            threads: vec![socket, loader],
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.maps.stopping.store(true, Ordering::Release);
        self.stop.take();
        // Wakes the socket thread from its blocking read.
        if let Some(w) = self.link.writer.lock().as_ref() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sleeps `d` unless told to stop; false when told.
fn pause(stop: &Receiver<()>, d: Duration) -> bool {
    matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

fn follow_socket(maps: &Maps, link: &Link, stop: &Receiver<()>, kick: &Sender<Source>) {
    let path = maps.options.socket_path();
    let mut backoff = Backoff::new(RECONNECT_START, RECONNECT_MAX);
    while !maps.stopping.load(Ordering::Acquire) {
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(_) => {
                if !pause(stop, backoff.next_delay()) {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let writer = stream.try_clone().ok();
        if let Some(w) = &writer {
            let _ = w.set_write_timeout(Some(WANT_TIMEOUT));
        }
        *link.writer.lock() = writer;
        *link.asked.lock() = 0;
        link.proto.store(1, Ordering::Release);
        if maps.stopping.load(Ordering::Acquire) {
            break;
        }
        maps.socket_connected.store(true, Ordering::Release);
        tracing::debug!(socket = %path.display(), "connected to the leader's notification socket");
        // Whatever happened while disconnected, look at the files now.
        let _ = kick.try_send(Source::Socket);
        link.send_wanted(maps.seq_now());
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::Read::take(&mut lines, MAX_LINE).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    if let Some(seq) = parse_socket_line(line.trim_end(), "seq") {
                        if seq != maps.seq_now() {
                            maps.announce(seq);
                            let _ = kick.try_send(Source::Socket);
                        }
                    } else if let Some(proto) = parse_socket_line(line.trim_end(), "proto") {
                        link.leader_speaks(proto);
                    }
                }
            }
        }
        maps.socket_connected.store(false, Ordering::Release);
        link.writer.lock().take();
        tracing::debug!("the leader's notification socket closed; reconnecting");
        if !pause(stop, RECONNECT_START) {
            return;
        }
    }
}

/// Maps on every cue; between cues, polls the files' identities every poll interval
/// and keeps a directory watch that cues while the socket is down.
fn load_on_cue(
    maps: &Arc<Maps>,
    stop: &Receiver<()>,
    cues: &Receiver<Source>,
    kick: Sender<Source>,
) {
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let poll = maps.options.poll_interval;
    let mut next_poll = std::time::Instant::now();
    loop {
        let wait = next_poll.saturating_duration_since(std::time::Instant::now());
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(cues) -> cue => {
                let Ok(source) = cue else { return };
                while cues.try_recv().is_ok() {}
                maps.reload(source);
            }
            default(wait) => {
                next_poll = std::time::Instant::now() + poll;
                if watcher.is_none() {
                    watcher = start_watcher(maps, kick.clone());
                }
                let now = maps.published_identity();
                if now.is_some() && now != maps.current().map(|m| m.identity()) {
                    maps.reload(Source::Poll);
                }
            }
        }
        if maps.stopping.load(Ordering::Acquire) {
            return;
        }
    }
}

fn start_watcher(maps: &Arc<Maps>, kick: Sender<Source>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = maps.options.data_dir.clone();
    // The watcher lives on the loader thread, which ends when the reader stops.
    let me = maps.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        // The watch only cues while the socket is down: the socket tells first and for
        // sure.
        if me.socket_connected.load(Ordering::Acquire) {
            return;
        }
        if let Ok(ev) = res
            && ev.paths.iter().any(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n == snapshot::FILE_NAME
                        || n == snapshot::DELTA_NAME
                        || (n.starts_with(snapshot::RECENT_PREFIX) && n.ends_with(".memdb"))
                })
            })
        {
            let _ = kick.try_send(Source::Watch);
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a file watcher; polling only");
            return None;
        }
    };
    match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::debug!(error = %e, dir = %dir.display(), "cannot watch the data directory yet");
            None
        }
    }
}
