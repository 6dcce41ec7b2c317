//! One replica's sender: what to send next (nothing, a probe, the batches after its
//! seq from the backlog or the log, or a request to full-sync), sending it, and what the
//! answer means for the next step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::link::{
    BACKOFF_MAX, BACKOFF_START, Ctx, Link, LinkStatus, MAX_PUSH_BATCHES, MAX_PUSH_BYTES,
};
use crate::backoff::Backoff;
use crate::client::{Client, ClientError, Update, UpdateOutcome};
use crate::leader::backlog::Since;
use crate::storage::batch::Batch;
use crate::storage::log::LogReader;

/// What a sender does next.
enum Step {
    /// The replica has everything: wait for a new batch (or a heartbeat's correction).
    Wait,
    /// The replica's seq is not known: ask it with an empty push.
    Probe,
    /// Send these batches, which follow the replica's seq.
    Push(u64, Vec<Arc<Batch>>),
    /// Neither the backlog nor the log reaches the replica's seq.
    Resync,
}

/// What to do after an answer.
enum Then {
    /// Go on at once.
    Next,
    /// A push went through: pause `linger` so more batches coalesce.
    Linger,
    /// The replica could not take it now: back off.
    Retry,
}

/// Serialises the deltas of consecutive batches as one JSON object, summing repeats.
pub fn coalesce(batches: &[Arc<Batch>]) -> Vec<u8> {
    if let [one] = batches {
        let map: foldhash::HashMap<&str, u64> =
            one.deltas.iter().map(|(w, n)| (w.as_str(), *n)).collect();
        return serde_json::to_vec(&map).expect("a map of strings to integers serialises");
    }
    let mut map: foldhash::HashMap<&str, u64> = Default::default();
    for b in batches {
        for (w, n) in &b.deltas {
            *map.entry(w.as_str()).or_insert(0) += n;
        }
    }
    serde_json::to_vec(&map).expect("a map of strings to integers serialises")
}

pub(super) async fn run_link(link: Arc<Link>, ctx: Arc<Ctx>) {
    let mut s = Sender {
        client: Client::with_http(ctx.http.clone(), &link.url).with_token(ctx.token.clone()),
        log: ctx.log.as_ref().map(|l| LogReader::new(&l.dir)),
        backoff: Backoff::new(BACKOFF_START, BACKOFF_MAX),
        force_resync: false,
        seq_rx: ctx.seq_rx.clone(),
        link,
        ctx,
    };
    while !s.link.removed.load(Ordering::Acquire) {
        let step = s.next_step().await;
        let answer = tokio::select! {
            r = s.send(step) => r,
            _ = s.ctx.abort.cancelled() => return,
        };
        match answer {
            // Nothing to send: wait for a new batch or a heartbeat's correction.
            None => tokio::select! {
                r = s.seq_rx.changed() => if r.is_err() { return },
                _ = s.link.wake.notified() => {},
                _ = s.ctx.abort.cancelled() => return,
            },
            Some(result) => match s.record(result) {
                Then::Next => {}
                Then::Linger => tokio::select! {
                    _ = tokio::time::sleep(s.ctx.linger) => {},
                    _ = s.ctx.abort.cancelled() => return,
                },
                Then::Retry => tokio::select! {
                    _ = tokio::time::sleep(s.backoff.next_delay()) => {},
                    _ = s.link.wake.notified() => {},
                    _ = s.ctx.abort.cancelled() => return,
                },
            },
        }
    }
}

struct Sender {
    link: Arc<Link>,
    ctx: Arc<Ctx>,
    client: Client,
    seq_rx: watch::Receiver<u64>,
    /// Reads the log for this replica, with its own cursor.
    log: Option<LogReader>,
    backoff: Backoff,
    /// The replica is ahead of the leader in this incarnation: its history diverged.
    force_resync: bool,
}

impl Sender {
    /// What the replica needs now: from what it acknowledged, the backlog, then the log.
    async fn next_step(&mut self) -> Step {
        let latest = *self.seq_rx.borrow_and_update();
        if self.force_resync {
            return Step::Resync;
        }
        let after = match self.link.acked() {
            None => return Step::Probe,
            Some(a) if a >= latest => return Step::Wait,
            Some(a) => a,
        };
        let since = self
            .ctx
            .backlog
            .lock()
            .since(after, MAX_PUSH_BATCHES, MAX_PUSH_BYTES);
        match since {
            Since::UpToDate => Step::Wait,
            Since::Batches(b) => Step::Push(after, b),
            Since::TooOld => match self.read_log(after).await {
                Some(batches) => {
                    tracing::debug!(replica = %self.link.url, after, batches = batches.len(), "resending from the write-ahead log");
                    self.link.state.lock().log_pushes += 1;
                    Step::Push(after, batches)
                }
                None => Step::Resync,
            },
        }
    }

    /// The batches after `after` from the write-ahead log, if it still has the next.
    async fn read_log(&mut self, after: u64) -> Option<Vec<Arc<Batch>>> {
        // A batch just evicted from the backlog may still be on its way to the log file.
        if let Some(l) = &self.ctx.log {
            let mut w = l.written.clone();
            let _ = tokio::time::timeout(Duration::from_secs(1), w.wait_for(|s| *s > after)).await;
        }
        let mut reader = self.log.take()?;
        let (reader, read) = tokio::task::spawn_blocking(move || {
            let read = reader.read_after(after, MAX_PUSH_BATCHES, MAX_PUSH_BYTES);
            (reader, read)
        })
        .await
        .ok()?;
        self.log = Some(reader);
        match read {
            Ok(batches) if !batches.is_empty() => Some(batches.into_iter().map(Arc::new).collect()),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "reading the write-ahead log for a replica failed");
                None
            }
        }
    }

    /// Sends `step`; `None` when there is nothing to send.
    async fn send(&self, step: Step) -> Option<Result<UpdateOutcome, ClientError>> {
        let ctx = &self.ctx;
        let update = |from_seq, to_seq, body, digest| Update {
            incarnation: ctx.incarnation,
            tokenizer: ctx.tokenizer,
            from_seq,
            to_seq,
            body,
            digest,
            secret: &ctx.secret,
        };
        Some(match step {
            Step::Wait => return None,
            Step::Probe => self.client.update(&update(0, 0, b"{}", None)).await,
            Step::Push(from, batches) => {
                let body = coalesce(&batches);
                let last = batches.last().expect("at least one batch");
                self.client
                    .update(&update(from, last.seq, &body, last.digest))
                    .await
            }
            Step::Resync => {
                tracing::info!(replica = %self.link.url, "neither the backlog nor the log reaches the replica's seq: asking it to full-sync");
                self.link.state.lock().resyncs += 1;
                self.client
                    .request_resync(ctx.incarnation, &ctx.secret)
                    .await
            }
        })
    }

    /// Takes in the replica's answer: what it now holds, and how the link is doing.
    fn record(&mut self, result: Result<UpdateOutcome, ClientError>) -> Then {
        self.force_resync = false;
        // The newest seq the leader has applied. Not the seq read for this step: pushes
        // may include batches applied since, and a sync may have given the replica newer.
        let newest = self.ctx.backlog.lock().last_seq();
        let then = {
            let mut s = self.link.state.lock();
            let url = &self.link.url;
            match result {
                Ok(UpdateOutcome::Ok(seq)) if seq <= newest => {
                    if s.status != LinkStatus::Ok {
                        tracing::info!(replica = %url, seq, "replica is following");
                    }
                    s.acked = Some(seq);
                    s.status = LinkStatus::Ok;
                    s.last_ok = Some(Instant::now());
                    s.last_error = None;
                    s.pushes += 1;
                    self.backoff.reset();
                    if self.ctx.linger.is_zero() {
                        Then::Next
                    } else {
                        Then::Linger
                    }
                }
                Ok(UpdateOutcome::Gap(seq)) if seq <= newest => {
                    tracing::debug!(replica = %url, seq, "replica is elsewhere: resending from its seq");
                    s.acked = Some(seq);
                    s.status = LinkStatus::Ok;
                    s.last_ok = Some(Instant::now());
                    Then::Next
                }
                Ok(UpdateOutcome::Ok(seq) | UpdateOutcome::Gap(seq)) => {
                    // Ahead of the leader within one incarnation: its history diverged.
                    tracing::warn!(replica = %url, seq, newest, "replica is ahead of the leader: forcing a full sync");
                    s.acked = None;
                    self.force_resync = true;
                    Then::Next
                }
                Ok(UpdateOutcome::Resyncing) => {
                    s.acked = None;
                    s.status = LinkStatus::Resyncing;
                    Then::Retry
                }
                Err(e) => {
                    if s.status != LinkStatus::Down {
                        tracing::warn!(replica = %url, error = %e, "replica unreachable; retrying with backoff");
                    }
                    s.status = LinkStatus::Down;
                    s.last_error = Some(e.to_string());
                    Then::Retry
                }
            }
        };
        // Wakes `min_acks` waiters and drains.
        self.ctx.acks.send_modify(|n| *n += 1);
        then
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_sums_repeated_words() {
        let b1 = Arc::new(Batch {
            seq: 1,
            deltas: vec![("a".into(), 1), ("b".into(), 2)],
            digest: None,
        });
        let b2 = Arc::new(Batch {
            seq: 2,
            deltas: vec![("a".into(), 3)],
            digest: None,
        });
        let v: std::collections::HashMap<String, u64> =
            serde_json::from_slice(&coalesce(&[b1.clone(), b2])).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v["a"], v["b"]), (4, 2));
        let v: std::collections::HashMap<String, u64> =
            serde_json::from_slice(&coalesce(&[b1])).unwrap();
        assert_eq!((v["a"], v["b"]), (1, 2));
    }
}
