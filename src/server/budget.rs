//! `--max-body-in-flight`: a node-wide budget of request-body bytes being handled at
//! once, so that memory stays bounded however many clients post large bodies at the
//! same time (a count of requests alone does not bound bytes).
//!
//! A request declares its size (`Content-Length`) or, sent chunked, is charged the
//! role's body limit. One that declares more than the body limit is answered 413
//! before its body is read (so a client that sent `Expect: 100-continue` is refused
//! before it sends anything); one that finds the budget spent is answered 503 at
//! once. The bytes are returned when the answer is ready (the body has been read).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::server::error::ApiError;

/// Requests refused because the budget was spent, for `/metrics`.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

/// The budget, counted in KiB (a semaphore counts in u32).
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// The role's body limit, if it takes bodies.
    max_body: Option<usize>,
}

impl BodyBudget {
    pub fn new(bytes: usize, max_body: Option<usize>) -> Arc<Self> {
        // Never below one body of the largest size the role accepts.
        let bytes = bytes.max(max_body.unwrap_or(0)).max(1 << 10);
        let total_kib = u32::try_from(bytes.div_ceil(1 << 10)).unwrap_or(u32::MAX >> 3);
        let total_kib = total_kib.min(Semaphore::MAX_PERMITS as u32);
        Arc::new(BodyBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            max_body,
        })
    }
}

impl BodyBudget {
    /// Request-body bytes charged now (in whole KiB).
    pub fn in_flight_bytes(&self) -> u64 {
        let free = self.kib.available_permits() as u64;
        (self.total_kib as u64).saturating_sub(free) << 10
    }
}

/// The layer (see the module docs).
#[derive(Clone)]
pub struct BodyBudgetLayer(pub Arc<BodyBudget>);

impl<S> tower::Layer<S> for BodyBudgetLayer {
    type Service = Charged<S>;
    fn layer(&self, inner: S) -> Charged<S> {
        Charged {
            inner,
            budget: self.0.clone(),
        }
    }
}

/// The service: requests without a body pass straight through (no allocation); a
/// body's bytes are held from the budget until its answer is ready.
#[derive(Clone)]
pub struct Charged<S> {
    inner: S,
    budget: Arc<BodyBudget>,
}

impl<S> tower::Service<Request> for Charged<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        futures_util::future::BoxFuture<'static, Result<Response, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::future::Either;
        let b = &self.budget;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(len), Some(max)) = (declared, b.max_body)
            && len > max as u64
        {
            let refused = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {len} bytes is larger than the node's --max-body ({max})"),
            )
            .into_response();
            return Either::Right(Box::pin(std::future::ready(Ok(refused))));
        }
        let bytes = match declared {
            Some(n) => n,
            None if req.headers().contains_key(header::TRANSFER_ENCODING) => {
                b.max_body.unwrap_or(0) as u64
            }
            None => 0,
        };
        if bytes == 0 {
            return Either::Left(self.inner.call(req));
        }
        let kib = u32::try_from(bytes.div_ceil(1 << 10))
            .unwrap_or(u32::MAX)
            .min(b.total_kib);
        let Ok(held) = b.kib.clone().try_acquire_many_owned(kib) else {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            let refused = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bytes in flight (--max-body-in-flight); retry shortly",
            )
            .with("retry_after", 1)
            .applied(crate::server::error::Applied::No)
            .into_response();
            return Either::Right(Box::pin(std::future::ready(Ok(refused))));
        };
        let answer = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let r = answer.await;
            drop(held);
            r
        }))
    }
}
