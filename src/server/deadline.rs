//! `--request-timeout`: a request that takes longer is answered 503, except a write
//! (`POST /post`). Cut off after it was counted, a write could not say so, and a
//! client would send it again: its handler bounds its own waits by the same deadline
//! (given to it as [`Deadline`], see [`remaining`]) and answers what it knows.
//!
//! A plain tower service (no boxed future, no clone per request): it sits on every
//! request of every node.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, Sleep};

use crate::server::error::ApiError;

/// When a write must be answered by (its `--request-timeout`), if the node has one.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

/// Runs `wait` until the request's deadline (if it has one); `None` if it ran out.
pub async fn remaining<T>(deadline: Option<Deadline>, wait: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(Deadline(at)) => tokio::time::timeout_at(at, wait).await.ok(),
        None => Some(wait.await),
    }
}

/// Puts [`RequestDeadline`] around a service.
#[derive(Clone, Copy, Debug)]
pub struct RequestDeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for RequestDeadlineLayer {
    type Service = RequestDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDeadline {
            inner,
            timeout: self.0,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct RequestDeadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> tower::Service<Request> for RequestDeadline<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let at = Instant::now() + self.timeout;
        let write = req.method() == Method::POST && req.uri().path() == "/post";
        if write {
            req.extensions_mut().insert(Deadline(at));
        }
        DeadlineFuture {
            inner: self.inner.call(req),
            sleep: (!write).then(|| tokio::time::sleep_until(at)),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        let expired = this
            .sleep
            .as_pin_mut()
            .is_some_and(|sleep| sleep.poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        Poll::Ready(Ok(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took longer than the node's --request-timeout",
        )
        .into_response()))
    }
}
