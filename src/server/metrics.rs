//! `GET /metrics` in the Prometheus text format.
//!
//! Request counts and latencies are recorded by a small tower layer (two clock reads
//! and a few relaxed atomic adds per request, no allocation) into process-wide
//! counters: a process runs one node. Each role adds its own gauges at scrape time
//! (see `CountSource::write_metrics`). The same layer logs each request at debug level.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;

/// The routes requests are counted under; anything else is `other`.
const ROUTES: [&str; 9] = [
    "/post",
    "/sync",
    "/wordcount",
    "/health",
    "/update",
    "/replicas",
    "/metrics",
    "/openapi.json",
    "other",
];
/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

struct RouteStats {
    by_class: [AtomicU64; 5],
    /// Cumulative counts are computed at scrape time from these per-bucket counts;
    /// the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl RouteStats {
    const fn new() -> Self {
        RouteStats {
            by_class: [const { AtomicU64::new(0) }; 5],
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }
}

static HTTP: [RouteStats; ROUTES.len()] = [const { RouteStats::new() }; ROUTES.len()];

fn route_index(path: &str) -> usize {
    ROUTES
        .iter()
        .position(|r| *r == path)
        .unwrap_or(ROUTES.len() - 1)
}

fn record(route: usize, status: u16, started: Instant) {
    let stats = &HTTP[route];
    let class = (status / 100).clamp(1, 5) as usize - 1;
    stats.by_class[class].fetch_add(1, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let secs = elapsed.as_secs_f64();
    let bucket = BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BUCKETS.len());
    stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    stats
        .sum_nanos
        .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
}

/// Writes the HTTP series.
pub fn write_http(out: &mut String) {
    out.push_str(
        "# HELP memdb_requests_total HTTP requests answered, by route and status class.\n",
    );
    out.push_str("# TYPE memdb_requests_total counter\n");
    for (i, route) in ROUTES.iter().enumerate() {
        for (c, class) in CLASSES.iter().enumerate() {
            let n = HTTP[i].by_class[c].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "memdb_requests_total{{route=\"{route}\",status=\"{class}\"}} {n}"
                );
            }
        }
    }
    out.push_str("# HELP memdb_request_duration_seconds Time to answer a request, by route.\n");
    out.push_str("# TYPE memdb_request_duration_seconds histogram\n");
    for (i, route) in ROUTES.iter().enumerate() {
        let s = &HTTP[i];
        let mut cumulative = 0;
        for (b, le) in BUCKETS.iter().enumerate() {
            cumulative += s.buckets[b].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "memdb_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += s.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "memdb_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = s.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "memdb_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "memdb_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}"
        );
    }
}

/// Appends one gauge or counter with its HELP and TYPE lines.
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Appends a labelled series (HELP/TYPE once, then one line per label value).
pub fn write_labelled(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (l, v) in values {
        let l = escape_label(&l);
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

/// A label value in the exposition format: backslash, double quote and line feed
/// escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The tower layer that counts requests.
#[derive(Clone, Copy, Default)]
pub struct CountRequests;

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
}

impl<S> tower::Service<Request> for Counted<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // Request logs at debug: captured only when that level is on.
        let log = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        CountedFuture {
            route: route_index(req.uri().path()),
            started: Instant::now(),
            log,
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct CountedFuture<F> {
        route: usize,
        started: Instant,
        log: Option<(axum::http::Method, String)>,
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            record(*this.route, resp.status().as_u16(), *this.started);
            if let Some((method, path)) = this.log.take() {
                tracing::debug!(
                    %method,
                    path,
                    status = resp.status().as_u16(),
                    us = this.started.elapsed().as_micros() as u64,
                    "request"
                );
            }
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let mut out = String::new();
        write_labelled(
            &mut out,
            "m",
            "gauge",
            "h",
            "replica",
            [("x\ny".to_owned(), 1.0)],
        );
        assert!(out.contains("m{replica=\"x\\ny\"} 1"), "{out}");
        assert_eq!(out.lines().count(), 3);
    }

    #[test]
    fn recorded_requests_show_in_the_exposition() {
        record(route_index("/wordcount"), 200, Instant::now());
        record(route_index("/nope"), 404, Instant::now());
        let mut out = String::new();
        write_http(&mut out);
        assert!(out.contains("memdb_requests_total{route=\"/wordcount\",status=\"2xx\"}"));
        assert!(out.contains("memdb_requests_total{route=\"other\",status=\"4xx\"}"));
        assert!(
            out.contains("memdb_request_duration_seconds_bucket{route=\"/wordcount\",le=\"+Inf\"}")
        );
        let mut g = String::new();
        write_labelled(
            &mut g,
            "x",
            "gauge",
            "h",
            "replica",
            [("a\"b".to_owned(), 1.0)],
        );
        assert!(g.contains("x{replica=\"a\\\"b\"} 1"));
    }
}
