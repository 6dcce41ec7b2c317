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
    fn chart_sample(&self) -> crate::server::history::Sample {
        let mut lags = std::collections::BTreeMap::new();
        for r in self.replicas().reports() {
            lags.insert(r.url.clone(), r.lag.unwrap_or(0));
        }
        for r in self.local_reports() {
            let name = match (&r.url, r.pid) {
                (Some(url), _) => format!("local {url}"),
                (None, Some(pid)) => format!("{} {pid}", r.kind),
                (None, None) => continue,
            };
            lags.insert(name, r.lag.unwrap_or(0));
        }
        if let Some(c) = self.consensus() {
            for m in c.status().members {
                lags.insert(format!("raft {}", m.id), m.lag.unwrap_or(0));
            }
        }
        crate::server::history::Sample {
            t: 0,
            seq: self.seq(),
            ingested: Some(self.words_ingested()),
            lags,
        }
    }

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

    /// Over a view of the table's layers at one seq, walked without its lock.
    async fn top_scan(&self, q: TopQuery<'static>) -> Result<(Vec<u8>, u64), ApiError> {
        let state = self.state().clone();
        tokio::task::spawn_blocking(move || {
            let prefix = q.prefix_for(state.tokenizer);
            let view = state.table.read().view();
            let words = crate::storage::top::scanned(view.iter(), q.n, &prefix);
            (crate::server::parse::top_body(&words), view.seq())
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    fn lookup(&self, words: &[Cow<'_, str>]) -> Result<(Vec<u8>, u64), ApiError> {
        let t = self.state().table.read();
        let body = crate::server::parse::lookup_body(self.state().tokenizer, words, |w| t.get(w))?;
        Ok((body, t.seq()))
    }

    /// The table now, streamed from a view of its layers (the mapped files and a copy
    /// of the words changed since the last publication): never the whole body in
    /// memory, and writers wait only for that copy.
    async fn sync_body(&self) -> SyncBody {
        let s = self.state();
        let view = s.table.read().view();
        let seq = view.seq();
        SyncBody::streamed(Arc::new(view), s.tokenizer, seq, s.incarnation)
    }
}
