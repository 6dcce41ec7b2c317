//! Syncing the raft log: a thread that fsyncs for `--fsync always` (one fsync for every
//! append waiting) and every second for `everysec`.

use std::fs::File;
use std::io;
use std::time::Duration;

use crossbeam_channel::Receiver;
use openraft::storage::LogFlushed;

use crate::consensus::types::TypeConfig;
use crate::storage::log::FsyncPolicy;

/// What the log asks of its sync thread.
pub(super) enum Flush {
    /// fsync, then report these appends done.
    Wait(LogFlushed<TypeConfig>),
    /// A new segment is written from now on: sync the old one (and report the appends
    /// waiting on it), then this one.
    Reopen(File),
}

/// fsyncs for `always` (grouping every waiting append into one fsync) and every
/// second for `everysec`.
pub(super) fn flusher(mut file: File, rx: Receiver<Flush>, policy: FsyncPolicy) {
    let tick = Duration::from_secs(1);
    loop {
        let first = match policy {
            FsyncPolicy::EverySec => match rx.recv_timeout(tick) {
                Ok(f) => Some(f),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(_) => return,
            },
            _ => match rx.recv() {
                Ok(f) => Some(f),
                Err(_) => return,
            },
        };
        let mut waiting = Vec::new();
        for f in first.into_iter().chain(rx.try_iter()) {
            match f {
                Flush::Wait(cb) => waiting.push(cb),
                Flush::Reopen(next) => {
                    sync(&file, std::mem::take(&mut waiting));
                    file = next;
                }
            }
        }
        if policy == FsyncPolicy::No && waiting.is_empty() {
            continue;
        }
        sync(&file, waiting);
    }
}

/// fsyncs `file`, then reports `waiting` done (or failed).
fn sync(file: &File, waiting: Vec<LogFlushed<TypeConfig>>) {
    let result = file.sync_data();
    if let Err(e) = &result {
        tracing::error!(error = %e, "fsync of the raft log failed");
    }
    for cb in waiting {
        cb.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| io::Error::new(e.kind(), e.to_string())),
        );
    }
}
