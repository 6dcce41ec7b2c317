//! `--rate-limit N`: a node-wide token bucket (N requests per second, bursts of up to
//! N). A request that finds the bucket empty is answered `429` with a JSON error at
//! once; it never waits.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use crate::server::error::ApiError;

/// A token bucket: `rate` tokens a second, at most `burst` at once (full at first).
pub struct Bucket {
    rate: f64,
    burst: f64,
    /// (tokens available, when they were counted)
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token now; false when there is none.
    pub fn take(&self) -> bool {
        self.take_at(Instant::now())
    }

    /// Takes a token at `now` (the clock is a parameter so tests need not sleep).
    fn take_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock();
        let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Routes the rate limit never applies to: liveness, metrics and replication must keep
/// working while clients flood the node.
pub fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/metrics" | "/update" | "/replicas" | "/sync" | "/files"
    ) || path.starts_with("/files/")
}

/// The layer; `None` (no `--rate-limit`) lets everything through.
#[derive(Clone, Default)]
pub struct RateLimit(Option<Arc<Bucket>>);

impl RateLimit {
    pub fn new(per_second: Option<u32>) -> Self {
        RateLimit(
            per_second
                .filter(|n| *n > 0)
                .map(|n| Arc::new(Bucket::new(n as f64, n as f64))),
        )
    }
}

impl<S> tower::Layer<S> for RateLimit {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            bucket: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    bucket: Option<Arc<Bucket>>,
}

impl<S> tower::Service<Request> for Limited<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<S::Future, std::future::Ready<Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &self.bucket {
            Some(b) if !exempt(req.uri().path()) && !b.take() => {
                futures_util::future::Either::Right(std::future::ready(Ok(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "request rate above the node's --rate-limit; retry shortly",
                )
                .applied(crate::server::error::Applied::No)
                .into_response())))
            }
            _ => futures_util::future::Either::Left(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_refills() {
        let RateLimit(Some(b)) = RateLimit::new(Some(5)) else {
            panic!("a bucket")
        };
        let t0 = b.state.lock().1;
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        assert_eq!((0..10).filter(|_| b.take_at(at(0))).count(), 5);
        // At 5 per second: 2 tokens back after 450 ms, none more until the next 200 ms.
        assert_eq!((0..10).filter(|_| b.take_at(at(450))).count(), 2);
        assert_eq!((0..10).filter(|_| b.take_at(at(599))).count(), 0);
        assert_eq!((0..10).filter(|_| b.take_at(at(651))).count(), 1);
        // Never more than a burst, however long it was idle.
        assert_eq!((0..10).filter(|_| b.take_at(at(60_000))).count(), 5);
        assert!(RateLimit::new(None).0.is_none());
        assert!(RateLimit::new(Some(0)).0.is_none());
    }
}
