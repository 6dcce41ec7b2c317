//! What the shared read routes (`/wordcount`, `/top`, `/sync`, `/metrics`) ask of a
//! leader: the role contract [`CountSource`] on its state.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::watch;

use super::node::Leader;
use crate::server::error::ApiError;
use crate::server::metrics::Series;
use crate::server::parse::TopQuery;
use crate::server::source::{CountSource, SyncBody};

impl CountSource for Leader {
    fn distinct_words(&self) -> u64 {
        self.state().table.read().len() as u64
    }

    fn collect(&self, m: &mut Series<'_>) {
        self.collect_series(m);
    }

    fn seq(&self) -> u64 {
        self.state().seq()
    }

    fn seq_watch(&self) -> watch::Receiver<u64> {
        self.state().seq_tx.subscribe()
    }

    fn max_wait(&self) -> Duration {
        self.config().max_wait
    }

    fn ready(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn top_ranked(&self, q: &TopQuery<'_>) -> Result<Option<(Vec<u8>, u64)>, ApiError> {
        let prefix = q.prefix_for(self.state().tokenizer);
        let t = self.state().table.read();
        let body = t.with_ranked_words(q.n, &prefix, crate::server::parse::top_body);
        Ok(body.map(|b| (b, t.seq())))
    }

    /// Over the published state and the words written since (the table at one seq),
    /// which no writer waits for; the table's read lock only for those words. Should
    /// the published state lag the backlog, under the table's read lock.
    async fn top_scan(&self, q: TopQuery<'static>) -> Result<(Vec<u8>, u64), ApiError> {
        let state = self.state().clone();
        tokio::task::spawn_blocking(move || {
            let prefix = q.prefix_for(state.tokenizer);
            match state.published_now() {
                Ok((state, overlay, seq)) => {
                    let under = state.iter().filter(|(w, _)| overlay.get(w).is_none());
                    let all = overlay.iter().chain(under);
                    let words = crate::storage::top::scanned(all, q.n, &prefix);
                    (crate::server::parse::top_body(&words), seq)
                }
                Err(_) => {
                    let t = state.table.read();
                    let body = t.with_top_words(q.n, &prefix, crate::server::parse::top_body);
                    (body, t.seq())
                }
            }
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let t = self.state().table.read();
        let body = crate::server::parse::lookup_body(self.state().tokenizer, words, |w| t.get(w))?;
        Ok((body, t.seq()))
    }

    /// The table now, streamed: the state on disk from its mappings, under the words
    /// written since it was published (their counts read from the table, under its
    /// read lock for just those words). No whole body in memory, and writers wait only
    /// for the words of the last interval, not for the whole table.
    async fn sync_body(&self) -> SyncBody {
        let s = self.state();
        let state = s.clone();
        let published = tokio::task::spawn_blocking(move || state.published_now())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match published {
            Ok((state, overlay, seq)) => {
                return SyncBody::streamed(Arc::new(state), overlay, seq, s.incarnation);
            }
            Err(e) => {
                tracing::warn!(error = %e, "serving /sync from the table under its lock")
            }
        }
        // The fallback: serialised under the read lock so the body and its seq agree;
        // writers wait for this.
        let t = s.table.read();
        SyncBody::of(
            t.map(),
            t.len() * 16,
            t.seq(),
            Some(s.incarnation),
            s.tokenizer,
        )
    }
}
