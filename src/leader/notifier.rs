//! "Snapshot N is ready": the leader's Unix-domain socket that local replicas listen on.
//!
//! A line protocol, one message per line:
//! - leader → replica: `seq N` on connect (the snapshot on disk now) and after every
//!   publish;
//! - leader → replica: `proto 2` first, the protocol this leader speaks (protocol 1
//!   leaders say nothing: a peer then sends only `want`);
//! - replica → leader: `want N` when a reader waits for seq N (`min_seq`), so the leader
//!   publishes early instead of at its next interval;
//! - replica → leader, protocol 2 only: `hello <kind> <version> <url or ->` (who it is:
//!   `local-replica` or `reader`), `loaded <seq> <micros>` after every load and
//!   `failed <reason>` when one fails (see [`super::locals`]).
//!
//! Lines are at most 512 bytes, and a peer may send 10,000 a second; one that sends a
//! longer line, more lines, or a line that is not one of these is disconnected (the
//! others are not affected).
//!
//! The socket is created owner-only (0600), or 0660 for the group the state is shared
//! with (`--reader-group`). A socket file left by a crashed leader is
//! detected (nobody answers a connect) and replaced; one that answers belongs to a live
//! leader and makes this one refuse to start.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

use super::locals::Locals;
use crate::protocol::{MAX_SOCKET_LINE, PeerLine, SOCKET_PROTOCOL, socket_line};
use crate::server::ratelimit::Bucket;

pub use crate::protocol::SOCKET_NAME;

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("another leader is listening on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the notification socket at `path`, replacing a stale one.
pub fn bind(path: &Path) -> Result<UnixListener, NotifierError> {
    let io_err = |source| NotifierError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(NotifierError::NotASocket(path.to_owned()));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(NotifierError::InUse(path.to_owned())),
            Err(_) => {
                tracing::info!(path = %path.display(), "removing a stale notification socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(crate::fs::socket_mode()),
    )
    .map_err(io_err)?;
    std_listener.set_nonblocking(true).map_err(io_err)?;
    UnixListener::from_std(std_listener).map_err(io_err)
}

/// Serves local replicas until `cancel`: tells each the published seq, passes their
/// `want N` requests to `want`, and keeps `locals` (who is connected and what each
/// mapped) up to date.
pub async fn serve(
    listener: UnixListener,
    published: watch::Receiver<u64>,
    want: Arc<dyn Fn(u64) + Send + Sync>,
    locals: Locals,
    cancel: CancellationToken,
) {
    tokio::spawn(record_publications(
        published.clone(),
        locals.clone(),
        cancel.clone(),
    ));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the notification socket");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let cred = stream.peer_cred().ok();
        let Some((id, kick)) = locals.connect(cred.and_then(|c| c.pid()), cred.map(|c| c.uid()))
        else {
            tracing::warn!(
                max = super::locals::MAX_PEERS,
                "too many processes on the notification socket; closing a new connection"
            );
            continue;
        };
        let locals = locals.clone();
        let (published, want, cancel) = (published.clone(), want.clone(), cancel.clone());
        tokio::spawn(async move {
            peer(stream, id, &locals, published, want, kick, cancel).await;
            locals.disconnect(id);
        });
    }
}

async fn record_publications(
    mut published: watch::Receiver<u64>,
    locals: Locals,
    cancel: CancellationToken,
) {
    loop {
        locals.published(*published.borrow_and_update());
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            _ = cancel.cancelled() => return,
        }
    }
}

/// Lines a peer may send per second (and twice this at once) before it is cut off: a
/// reader sends a `want` per new seq waited for (at most one per `min_seq` read a local
/// replica serves, some thousands a second) and a `loaded` per load.
const LINES_PER_SECOND: f64 = 10_000.0;

async fn peer(
    stream: UnixStream,
    id: u64,
    locals: &Locals,
    mut published: watch::Receiver<u64>,
    want: Arc<dyn Fn(u64) + Send + Sync>,
    kick: CancellationToken,
    cancel: CancellationToken,
) {
    let (r, mut w) = stream.into_split();
    // A peer may not make us buffer more than a line's worth: an overlong line ends
    // the connection.
    let mut lines = FramedRead::new(r, LinesCodec::new_with_max_length(MAX_SOCKET_LINE));
    let first = *published.borrow_and_update();
    let hello = format!(
        "{}{}",
        socket_line("proto", SOCKET_PROTOCOL),
        socket_line("seq", first)
    );
    if w.write_all(hello.as_bytes()).await.is_err() {
        return;
    }
    let budget = Bucket::new(LINES_PER_SECOND, 2.0 * LINES_PER_SECOND);
    loop {
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    return;
                }
                let seq = *published.borrow_and_update();
                if w.write_all(socket_line("seq", seq).as_bytes()).await.is_err() {
                    return;
                }
            }
            line = lines.next() => {
                let refused = match line {
                    Some(Ok(l)) => take_line(&l, id, locals, &want, &budget).err(),
                    Some(Err(e)) => Some(e.to_string()),
                    None => return,
                };
                if let Some(why) = refused {
                    tracing::warn!(peer = id, why = %why, "disconnecting a notification socket peer");
                    return;
                }
            }
            _ = kick.cancelled() => return,
            _ = cancel.cancelled() => return,
        }
    }
}

/// One line from a peer; why it is cut off, if it is.
fn take_line(
    line: &str,
    id: u64,
    locals: &Locals,
    want: &Arc<dyn Fn(u64) + Send + Sync>,
    budget: &Bucket,
) -> Result<(), String> {
    if !budget.take() {
        return Err(format!("more than {LINES_PER_SECOND} lines a second"));
    }
    match PeerLine::parse(line)? {
        PeerLine::Want(n) => want(n),
        PeerLine::Hello { kind, version, url } => locals.hello(id, kind, version, url)?,
        PeerLine::Loaded { seq, micros } => locals.loaded(id, seq, micros),
        PeerLine::Failed(why) => locals.failed(id, why),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_and_live_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        // A stale socket file: bound, then the listener dropped.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind(&path), Err(NotifierError::InUse(_))));
        drop(live);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(NotifierError::NotASocket(_))));
    }

    fn locals() -> Locals {
        Locals::new(
            super::super::locals::LagLimit {
                intervals: 10,
                floor: std::time::Duration::from_secs(5),
                interval: std::time::Duration::from_millis(100),
            },
            None,
        )
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn peers_hear_every_publish_report_their_loads_and_garbage_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let listener = bind(&path).unwrap();
        let (tx, rx) = watch::channel(5u64);
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let asked2 = asked.clone();
        let cancel = CancellationToken::new();
        let locals = locals();
        tokio::spawn(serve(
            listener,
            rx,
            Arc::new(move |n| asked2.lock().unwrap().push(n)),
            locals.clone(),
            cancel.clone(),
        ));
        let stream = UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "proto 2");
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "seq 5");
        tx.send_replace(9);
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "seq 9");
        w.write_all(b"want 11\n").await.unwrap();
        until("the want", || !asked.lock().unwrap().is_empty()).await;
        assert_eq!(*asked.lock().unwrap(), vec![11]);
        // Who it is comes from the socket, not from what it says.
        let me = std::process::id() as i32;
        w.write_all(b"hello reader 9.9.9 -\nloaded 9 1500\n")
            .await
            .unwrap();
        until("the load report", || {
            locals.reports().first().is_some_and(|r| r.seq == Some(9))
        })
        .await;
        let r = &locals.reports()[0];
        assert_eq!(
            (r.kind, r.pid, r.lag, r.last_load_ms),
            ("reader", Some(me), Some(0), Some(1.5))
        );
        // A second peer that sends garbage is cut off; the first is not.
        let other = UnixStream::connect(&path).await.unwrap();
        let (r2, mut w2) = other.into_split();
        let mut lines2 = BufReader::new(r2).lines();
        assert_eq!(lines2.next_line().await.unwrap().unwrap(), "proto 2");
        until("two peers", || locals.reports().len() == 2).await;
        w2.write_all(b"hello replica x y\n").await.unwrap();
        lines2.next_line().await.unwrap(); // seq 9
        assert!(
            lines2.next_line().await.unwrap().is_none(),
            "garbage was not cut off"
        );
        until("the garbage peer to leave the list", || {
            locals.reports().len() == 1
        })
        .await;
        tx.send_replace(12);
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "seq 12");
        // An endless line is cut off rather than buffered, and the peer leaves the list.
        w.write_all(&[b'x'; 600]).await.unwrap();
        assert!(lines.next_line().await.unwrap().is_none());
        until("the list to empty", || locals.reports().is_empty()).await;
        // A flood of lines too.
        let flood = UnixStream::connect(&path).await.unwrap();
        let (r3, mut w3) = flood.into_split();
        let mut lines3 = BufReader::new(r3).lines();
        let many = "want 1\n".repeat(100_000);
        let _ = w3.write_all(many.as_bytes()).await;
        let mut closed = false;
        for _ in 0..4 {
            if lines3.next_line().await.unwrap_or(None).is_none() {
                closed = true;
                break;
            }
        }
        assert!(closed, "a flood of lines was not cut off");
        cancel.cancel();
    }
}
