//! A thread fed by a channel, owned by a handle: dropping the handle closes the
//! channel (the thread sees it disconnect, finishes its work, and returns) and waits
//! for the thread. The leader's snapshot publisher and the log writer are both one.

use std::io;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// See the module docs.
pub struct Worker<M> {
    tx: Option<Sender<M>>,
    thread: Option<JoinHandle<()>>,
}

impl<M: Send + 'static> Worker<M> {
    /// Starts thread `name` running `run` on the receiving end of a new channel.
    pub fn spawn(name: &str, run: impl FnOnce(Receiver<M>) + Send + 'static) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx))?;
        Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// The sending end (clone it to hand it elsewhere; the thread stops only once every
    /// clone is gone too).
    pub fn sender(&self) -> &Sender<M> {
        self.tx.as_ref().expect("present until drop")
    }

    /// Sends `msg`; false if the thread has stopped.
    pub fn send(&self, msg: M) -> bool {
        self.sender().send(msg).is_ok()
    }
}

impl<M> Drop for Worker<M> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
