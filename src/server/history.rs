//! The last five minutes of what the status page charts, kept by the node: a small
//! ring sampled every second and served at `GET /history`, so a page opened (or
//! reloaded) shows the past at once instead of starting empty.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

pub use super::source::ChartSample as Sample;
use super::source::CountSource;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How many are kept: five minutes.
pub const KEEP: usize = 300;

/// `GET /history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryBody {
    /// The node's clock now (milliseconds since the Unix epoch), to align the samples
    /// with the reader's clock.
    pub now: u64,
    pub interval_ms: u64,
    /// Oldest first; at most five minutes.
    pub samples: Vec<Sample>,
}

/// The ring (cheap to clone). Its sampler stops once the ring is dropped.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    /// A ring sampled from `node` every [`INTERVAL`] (if a tokio runtime runs here:
    /// a router built outside one keeps an empty ring).
    pub fn start<S: CountSource>(node: S) -> History {
        let h = History::default();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sample(Arc::downgrade(&h.0), node));
        }
        h
    }

    /// Adds a sample, dropping the oldest beyond [`KEEP`].
    pub fn push(&self, s: Sample) {
        let mut ring = self.0.lock();
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.0.lock().iter().cloned().collect()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn sample<S: CountSource>(ring: Weak<Mutex<VecDeque<Sample>>>, node: S) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(ring) = ring.upgrade() else {
            return;
        };
        let mut s = node.chart_sample();
        s.t = now_ms();
        History(ring).push(s);
    }
}

/// `GET /history` → the samples of the last five minutes.
#[utoipa::path(
    get,
    path = "/history",
    tag = "operations",
    summary = "The status page's charts over the last five minutes",
    description = "One sample a second, kept by the node: its seq, words ingested (a \
                   leader) and each replica's lag. The status page draws its charts \
                   from it when it opens.",
    responses(
        (status = 200, description = "The samples, oldest first", body = HistoryBody),
        (status = 401, description = "Missing or wrong token (with --protect-reads)",
         body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn history(Extension(h): Extension<History>) -> Response {
    axum::Json(HistoryBody {
        now: now_ms(),
        interval_ms: INTERVAL.as_millis() as u64,
        samples: h.samples(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_five_minutes() {
        let h = History::default();
        for i in 0..(KEEP as u64 + 10) {
            h.push(Sample {
                t: i,
                seq: i,
                ..Sample::default()
            });
        }
        let s = h.samples();
        assert_eq!(s.len(), KEEP);
        assert_eq!((s[0].seq, s[KEEP - 1].seq), (10, KEEP as u64 + 9));
    }
}
