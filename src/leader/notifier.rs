//! "Snapshot N is ready": the leader's Unix-domain socket that local replicas listen on.
//!
//! A line protocol, one message per line:
//! - leader → replica: `seq N` on connect (the snapshot on disk now) and after every
//!   publish;
//! - replica → leader: `want N` when a reader waits for seq N (`min_seq`), so the leader
//!   publishes early instead of at its next interval.
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

use crate::protocol::{parse_socket_line, socket_line};

pub use crate::protocol::SOCKET_NAME;
/// Longest line accepted from a peer (a `want N` is ~25 bytes).
const MAX_LINE: usize = 64;

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

/// Serves local replicas until `cancel`: tells each the published seq, and passes their
/// `want N` requests to `want`.
pub async fn serve(
    listener: UnixListener,
    published: watch::Receiver<u64>,
    want: Arc<dyn Fn(u64) + Send + Sync>,
    cancel: CancellationToken,
) {
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
        tokio::spawn(peer(
            stream,
            published.clone(),
            want.clone(),
            cancel.clone(),
        ));
    }
}

async fn peer(
    stream: UnixStream,
    mut published: watch::Receiver<u64>,
    want: Arc<dyn Fn(u64) + Send + Sync>,
    cancel: CancellationToken,
) {
    let (r, mut w) = stream.into_split();
    // A peer may not make us buffer more than a line's worth: an overlong line ends
    // the connection.
    let mut lines = FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE));
    let first = *published.borrow_and_update();
    if w.write_all(socket_line("seq", first).as_bytes())
        .await
        .is_err()
    {
        return;
    }
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
            line = lines.next() => match line {
                Some(Ok(l)) => match parse_socket_line(&l, "want") {
                    Some(n) => want(n),
                    None => {
                        tracing::debug!(line = %l, "ignoring an unknown notification message");
                    }
                },
                _ => return,
            },
            _ = cancel.cancelled() => return,
        }
    }
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

    #[tokio::test]
    async fn peers_hear_every_publish_and_can_ask_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let listener = bind(&path).unwrap();
        let (tx, rx) = watch::channel(5u64);
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let asked2 = asked.clone();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            rx,
            Arc::new(move |n| asked2.lock().unwrap().push(n)),
            cancel.clone(),
        ));
        let stream = UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "seq 5");
        tx.send_replace(9);
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "seq 9");
        w.write_all(b"want 11\n").await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while asked.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "want never arrived");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(*asked.lock().unwrap(), vec![11]);
        // A peer that sends an endless line is cut off rather than buffered.
        w.write_all(&[b'x'; 200]).await.unwrap();
        assert!(lines.next_line().await.unwrap().is_none());
        cancel.cancel();
    }
}
