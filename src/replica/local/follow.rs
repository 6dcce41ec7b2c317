//! How a local replica learns that a new snapshot is published: the leader's socket,
//! a watch on its directory while the socket is down, and a slow poll as the last
//! resort.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::protocol::{parse_socket_line, socket_line};
use crate::storage::snapshot;

use super::{LocalReplica, RECONNECT_MAX, RECONNECT_START, Source};

impl LocalReplica {
    /// Follows the leader's socket: every `seq N` (and every reconnect) triggers a
    /// check; readers' `min_seq` waits are passed on as `want N`.
    pub(super) async fn socket_follower(self, cancel: CancellationToken) {
        let path = self.shared.config.socket_path();
        let mut backoff = Backoff::new(RECONNECT_START, RECONNECT_MAX);
        let mut want_rx = self.shared.want_tx.subscribe();
        loop {
            let stream = tokio::select! {
                r = UnixStream::connect(&path) => r,
                _ = cancel.cancelled() => return,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = cancel.cancelled() => return,
                    }
                    continue;
                }
            };
            backoff.reset();
            self.shared.socket_connected.store(true, Ordering::Release);
            tracing::info!(socket = %path.display(), "connected to the leader's notification socket");
            // Whatever happened while disconnected, look at the file now.
            self.trigger(Source::Socket);
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut asked = 0u64;
            loop {
                let wanted = *want_rx.borrow_and_update();
                if wanted > asked && wanted > self.seq_now() {
                    asked = wanted;
                    if w.write_all(socket_line("want", wanted).as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(l)) => {
                            if let Some(seq) = parse_socket_line(&l, "seq")
                                && seq != self.seq_now()
                            {
                                self.announce(seq);
                                self.trigger(Source::Socket);
                            }
                        }
                        _ => break,
                    },
                    r = want_rx.changed() => if r.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
            self.shared.socket_connected.store(false, Ordering::Release);
            tracing::info!(
                "the leader's notification socket closed; reconnecting (file watch and poll still on)"
            );
        }
    }

    /// Watches the data directory for the snapshot being renamed into place, and polls
    /// the file's identity every `poll_interval` as the last resort.
    pub(super) async fn watch_and_poll(self, cancel: CancellationToken) {
        let dir = self.shared.config.data_dir.clone();
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        let mut interval = tokio::time::interval(self.shared.config.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = cancel.cancelled() => return,
            }
            if watcher.is_none() {
                watcher = self.start_watcher(&dir);
            }
            let now = self.published_identity();
            let mapped = self.current().map(|m| m.identity());
            if now.is_some() && now != mapped {
                self.trigger(Source::Poll);
            }
        }
    }

    fn start_watcher(&self, dir: &std::path::Path) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let me = self.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            // The fallback: while the socket is up, it tells us first and for sure.
            if me.shared.socket_connected.load(Ordering::Acquire) {
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
                me.trigger(Source::Watch);
            }
        };
        let mut w = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a file watcher; polling only");
                return None;
            }
        };
        match w.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching for new snapshots");
                Some(w)
            }
            Err(e) => {
                tracing::debug!(error = %e, dir = %dir.display(), "cannot watch the data directory yet");
                None
            }
        }
    }
}
