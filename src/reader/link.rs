//! The reader's connection to the leader's notification socket, shared by the socket
//! thread (which owns the reading side), the readers that ask for a seq (`want N`)
//! and every load (which reports to a leader of protocol 2: `hello`, `loaded`,
//! `failed`; see [`crate::leader::notifier`]).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::protocol::{PeerKind, PeerLine};

/// The socket connection, shared with the readers that ask for a seq and with the
/// loads that report to the leader.
pub(super) struct Link {
    pub(super) writer: Mutex<Option<UnixStream>>,
    /// The highest seq asked for on this connection.
    pub(super) asked: Mutex<u64>,
    /// The highest seq any waiter wants.
    wanted: Mutex<u64>,
    /// The protocol the leader said it speaks on this connection (1 until it says).
    pub(super) proto: AtomicU64,
    /// Who this reader says it is (`hello`): a reader, or a local replica and its URL.
    hello: Mutex<PeerLine>,
    /// The last load's outcome, told again on every new connection.
    last: Mutex<Option<PeerLine>>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            writer: Mutex::default(),
            asked: Mutex::default(),
            wanted: Mutex::default(),
            proto: AtomicU64::new(1),
            hello: Mutex::new(PeerLine::Hello {
                kind: PeerKind::Reader,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                url: None,
            }),
            last: Mutex::default(),
        }
    }
}

impl Link {
    /// Asks the leader to publish `seq` now rather than at its interval.
    pub fn want(&self, seq: u64, mapped: u64) {
        {
            let mut w = self.wanted.lock();
            *w = (*w).max(seq);
        }
        if seq > mapped {
            self.send_wanted(mapped);
        }
    }

    pub(super) fn send_wanted(&self, mapped: u64) {
        let wanted = *self.wanted.lock();
        let mut asked = self.asked.lock();
        if wanted <= *asked || wanted <= mapped {
            return;
        }
        if let Some(w) = self.writer.lock().as_mut()
            && w.write_all(PeerLine::Want(wanted).to_line().as_bytes())
                .is_ok()
        {
            *asked = wanted;
        }
    }

    /// Says who this reader is: `kind`, and the URL it serves at, if any.
    pub fn introduce(&self, kind: PeerKind, url: Option<String>) {
        *self.hello.lock() = PeerLine::Hello {
            kind,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            url,
        };
        self.tell(&self.hello.lock().clone());
    }

    /// Tells the leader how a load went (and again after a reconnection).
    pub fn loaded(&self, line: PeerLine) {
        self.tell(&line);
        *self.last.lock() = Some(line);
    }

    /// Sends `line` if the leader speaks protocol 2; dropped if it cannot be written
    /// at once (the next load tells the leader again).
    fn tell(&self, line: &PeerLine) {
        if self.proto.load(Ordering::Acquire) < 2 {
            return;
        }
        if let Some(w) = self.writer.lock().as_mut() {
            let _ = w.write_all(line.to_line().as_bytes());
        }
    }

    /// The leader said it speaks `proto`: introduce this reader and its last load.
    pub(super) fn leader_speaks(&self, proto: u64) {
        self.proto.store(proto, Ordering::Release);
        self.tell(&self.hello.lock().clone());
        if let Some(l) = self.last.lock().clone() {
            self.tell(&l);
        }
    }
}
