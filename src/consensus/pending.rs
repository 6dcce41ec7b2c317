//! Keyed writes proposed and not yet answered. A client retries a keyed write whose
//! answer timed out; the retry joins the wait for the proposal already in the log
//! instead of proposing the same words again. Under overload, where a commit takes
//! longer than the write timeout, every retry would otherwise add another copy of the
//! batch to the log: each replicated to every voter and made durable, then thrown
//! away as a duplicate when applied. The group would fall further behind with every
//! retry, and the retries would never end.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

/// Where a proposal's outcome appears once it has one.
pub type Done<T> = watch::Receiver<Option<T>>;

/// A proposal in flight: the fingerprint of its words, and where its outcome appears.
type InFlight<T> = (u64, Done<T>);

/// In-flight proposals by idempotency key.
pub struct Pending<T> {
    by_key: Arc<Mutex<HashMap<String, InFlight<T>>>>,
}

impl<T> Clone for Pending<T> {
    fn clone(&self) -> Self {
        Pending {
            by_key: self.by_key.clone(),
        }
    }
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            by_key: Arc::default(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Pending<T> {
    /// The outcome of proposing `key` with `fingerprint`: that of the proposal in
    /// flight with both, or else of `propose()`, started now. It runs in a task of
    /// its own, to its end whoever still waits, but for at most `limit`; `expired` is
    /// its outcome after that. A proposal in flight with the same key and other words
    /// is not joined: the new one goes ahead (the state machine refuses a reused key).
    /// `true` with it: the proposal was already in flight (this call joined it).
    pub fn join_or_start<F>(
        &self,
        key: String,
        fingerprint: u64,
        limit: Duration,
        expired: T,
        propose: impl FnOnce() -> F,
    ) -> (Done<T>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let mut by_key = self.by_key.lock();
        let registered = match by_key.get(&key) {
            Some((fp, done)) if *fp == fingerprint => return (done.clone(), true),
            Some(_) => false,
            None => true,
        };
        let (tx, rx) = watch::channel(None);
        if registered {
            by_key.insert(key.clone(), (fingerprint, rx.clone()));
        }
        drop(by_key);
        let proposal = propose();
        let by_key = self.by_key.clone();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(limit, proposal)
                .await
                .unwrap_or(expired);
            tx.send_replace(Some(outcome));
            if registered {
                by_key.lock().remove(&key);
            }
        });
        (rx, false)
    }

    /// Proposals in flight with a key.
    pub fn len(&self) -> usize {
        self.by_key.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outcome in `done`, if it comes within `timeout` (`None`: still unknown).
pub async fn wait<T: Clone>(mut done: Done<T>, timeout: Duration) -> Option<T> {
    match tokio::time::timeout(timeout, done.wait_for(Option::is_some)).await {
        Ok(Ok(outcome)) => outcome.clone(),
        // Timed out, or the task ended without an outcome (it panicked).
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_retry_with_the_same_key_and_words_joins_the_proposal_in_flight() {
        let pending: Pending<u64> = Pending::default();
        let proposals = Arc::new(AtomicUsize::new(0));
        let start = |key: &str, fp: u64, answer: u64| {
            let proposals = proposals.clone();
            pending.join_or_start(key.to_owned(), fp, LONG, 0, move || {
                proposals.fetch_add(1, Ordering::Relaxed);
                async move {
                    tokio::time::sleep(Duration::from_secs(8)).await;
                    answer
                }
            })
        };
        let (first, joined) = start("k", 1, 7);
        assert!(!joined);
        // The first caller gives up after 5 s (its write timeout); the proposal runs on.
        assert_eq!(wait(first, Duration::from_secs(5)).await, None);
        // A retry joins it rather than proposing again, and gets its outcome.
        let (retry, joined) = start("k", 1, 99);
        assert!(joined);
        assert_eq!(wait(retry, Duration::from_secs(5)).await, Some(7));
        assert_eq!(proposals.load(Ordering::Relaxed), 1);
        // Once answered, it is forgotten: the next use of the key proposes (and the
        // state machine answers it as a duplicate).
        tokio::task::yield_now().await;
        assert!(pending.is_empty());
        let (later, joined) = start("k", 1, 8);
        assert!(!joined);
        assert_eq!(wait(later, LONG).await, Some(8));
        assert_eq!(proposals.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_key_with_other_words_is_proposed_not_joined() {
        let pending: Pending<u64> = Pending::default();
        let slow = |answer: u64| {
            move || async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                answer
            }
        };
        let (a, _) = pending.join_or_start("k".into(), 1, LONG, 0, slow(1));
        let (b, joined) = pending.join_or_start("k".into(), 2, LONG, 0, slow(2));
        assert!(!joined);
        assert_eq!(wait(b, LONG).await, Some(2));
        assert_eq!(wait(a, LONG).await, Some(1));
        tokio::task::yield_now().await;
        assert!(pending.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_proposal_that_never_ends_is_given_up_after_the_limit() {
        let pending: Pending<u64> = Pending::default();
        let (stuck, _) = pending.join_or_start("k".into(), 1, Duration::from_secs(20), 0, || {
            std::future::pending::<u64>()
        });
        assert_eq!(wait(stuck, LONG).await, Some(0));
        tokio::task::yield_now().await;
        assert!(pending.is_empty(), "a retry after the limit proposes anew");
    }
}
