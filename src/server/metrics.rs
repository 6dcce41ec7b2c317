//! `GET /metrics` in the OpenMetrics text format, through `prometheus-client`.
//!
//! Every node has one [`NodeMetrics`]: a registry with the request counter and latency
//! histogram, which the [`CountRequests`] tower layer records into, and a collector
//! that reads the role's own series at scrape time ([`NodeSeries::node_series`]). Requests
//! are labelled by route; the routes are the node router's own (taken from its OpenAPI
//! document, which is built from the same list as the router), anything else is
//! `other`. The layer does no lookup by label per request: each route's counters
//! and histogram are resolved once. It also logs each request at debug level.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The label of requests to no route of the node.
const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteClass {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// One route's series, resolved from the families once.
struct RouteSeries {
    /// Created on first use, so only the classes a route answered with are exposed.
    by_class: [OnceLock<Counter>; 5],
    duration: Histogram,
}

/// A node's metrics: what `/metrics` encodes.
pub struct NodeMetrics {
    registry: Registry,
    requests: Family<RouteClass, Counter>,
    /// The node's routes, then `other`; a request's route is its index here.
    routes: Vec<String>,
    series: Vec<RouteSeries>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Metrics for a node whose router serves `routes` (paths, as routed) and whose
    /// own series `node` writes at scrape time.
    pub fn new(routes: impl IntoIterator<Item = String>, node: impl Collector) -> Self {
        let mut routes: Vec<String> = routes.into_iter().collect();
        routes.sort();
        routes.dedup();
        routes.retain(|r| r != OTHER);
        routes.push(OTHER.to_owned());
        let requests = Family::<RouteClass, Counter>::default();
        let durations =
            Family::<RouteLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let series = routes
            .iter()
            .map(|r| RouteSeries {
                by_class: Default::default(),
                duration: durations.get_or_create_owned(&RouteLabel { route: r.clone() }),
            })
            .collect();
        let mut registry = Registry::default();
        registry.register(
            "memdb_requests",
            "HTTP requests answered, by route and status class",
            requests.clone(),
        );
        registry.register(
            "memdb_request_duration_seconds",
            "Time to answer a request, by route",
            durations,
        );
        registry.register_collector(Box::new(node));
        NodeMetrics {
            registry,
            requests,
            routes,
            series,
        }
    }

    fn route_index(&self, path: &str) -> usize {
        self.routes
            .iter()
            .position(|r| r == path)
            .unwrap_or(self.routes.len() - 1)
    }

    fn record(&self, route: usize, status: u16, started: Instant) {
        let series = &self.series[route];
        let class = (status / 100).clamp(1, 5) as usize - 1;
        series.by_class[class]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&RouteClass {
                    route: self.routes[route].clone(),
                    status: CLASSES[class],
                })
            })
            .inc();
        series.duration.observe(started.elapsed().as_secs_f64());
    }

    /// The whole exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// What a node tells its scrape (every role's [`crate::server::source::CountSource`]
/// does, through a blanket implementation there).
pub trait NodeSeries: Send + Sync + 'static {
    /// The seq the node's table reflects.
    fn node_seq(&self) -> u64;
    /// Distinct words in the node's table.
    fn node_words(&self) -> u64;
    /// The role's own series.
    fn node_series(&self, m: &mut Series<'_>);
}

/// Reads a node's series at scrape time: those every node has, then the role's own.
pub struct NodeCollector<S> {
    pub node: S,
    /// The node's `--max-body-in-flight` budget.
    pub budget: Arc<crate::server::budget::BodyBudget>,
}

impl<S> std::fmt::Debug for NodeCollector<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl<S: NodeSeries> Collector for NodeCollector<S> {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        use crate::server::{budget, listen};
        let mut m = Series::new(encoder);
        let node = &self.node;
        m.gauge(
            "memdb_seq",
            "Seq the node's table reflects.",
            node.node_seq(),
        );
        m.gauge(
            "memdb_distinct_words",
            "Distinct words in the node's table.",
            node.node_words(),
        );
        m.gauge(
            "memdb_connections_open",
            "Client connections open now.",
            listen::CONNECTIONS_OPEN.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_connections_refused_total",
            "Connections closed at once because the connection cap was reached.",
            listen::CONNECTIONS_REFUSED.load(Ordering::Relaxed),
        );
        m.gauge(
            "memdb_body_bytes_in_flight",
            "Request-body bytes being received now, charged against --max-body-in-flight.",
            self.budget.in_flight_bytes(),
        );
        m.counter(
            "memdb_body_budget_refusals_total",
            "Requests answered 503 because --max-body-in-flight was spent.",
            budget::REFUSED.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_auth_failures_total",
            "Requests refused 401: a wrong or missing token.",
            crate::server::auth::AUTH_FAILURES.load(Ordering::Relaxed),
        );
        m.counter(
            "memdb_auth_throttled_total",
            "Requests refused 429 because their address failed authentication too often.",
            crate::server::auth::AUTH_THROTTLED.load(Ordering::Relaxed),
        );
        tls_series(&mut m);
        node.node_series(&mut m);
        m.result
    }
}

/// The TLS series, on a node that serves TLS.
fn tls_series(m: &mut Series<'_>) {
    use crate::tls::server as tls;
    let not_after = tls::CERT_NOT_AFTER.load(Ordering::Relaxed);
    if not_after == 0 {
        return;
    }
    m.gauge(
        "memdb_tls_cert_not_after_seconds",
        "When the TLS certificate in use expires (Unix seconds).",
        not_after.max(0) as u64,
    );
    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 4] = [
        (
            "memdb_tls_handshake_failures_total",
            "TLS handshakes that failed (bad or missing certificates, wrong protocol, timeouts).",
            &tls::HANDSHAKE_FAILURES,
        ),
        (
            "memdb_tls_plain_http_refused_total",
            "Connections that spoke plain HTTP to the TLS port (answered 400).",
            &tls::PLAIN_HTTP_REFUSED,
        ),
        (
            "memdb_tls_reloads_total",
            "Reloads of the certificate and key (SIGHUP) that took effect.",
            &tls::RELOADS_OK,
        ),
        (
            "memdb_tls_reload_failures_total",
            "Reloads refused (the pair did not load); the old pair kept serving.",
            &tls::RELOADS_FAILED,
        ),
    ];
    for (name, help, value) in counters {
        m.counter(name, help, value.load(Ordering::Relaxed));
    }
}

/// A value a series can take: counts and seqs, or seconds and other measures.
pub trait Value: Copy {
    fn as_f64(self) -> f64;
}

impl Value for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Value for usize {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Value for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}

impl Value for bool {
    fn as_f64(self) -> f64 {
        if self { 1.0 } else { 0.0 }
    }
}

/// Where a role writes its series at scrape time. Names are as scraped (counters end
/// in `_total`). The first encoding error is kept and returned to the registry.
pub struct Series<'a> {
    encoder: DescriptorEncoder<'a>,
    result: std::fmt::Result,
}

impl<'a> Series<'a> {
    fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Series {
            encoder,
            result: Ok(()),
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: impl Value) {
        let metric = ConstGauge::new(value.as_f64());
        self.one(name, help, &metric);
    }

    pub fn counter(&mut self, name: &str, help: &str, value: impl Value) {
        let metric = ConstCounter::new(value.as_f64());
        self.one(counter_family(name), help, &metric);
    }

    /// A gauge with one label, one sample per `(label value, value)`.
    pub fn gauges<V: Value>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (String, V)>,
    ) {
        self.labelled(name, help, label, values, ConstGauge::new);
    }

    /// A counter with one label, one sample per `(label value, value)`.
    pub fn counters<V: Value>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (String, V)>,
    ) {
        self.labelled(counter_family(name), help, label, values, |v| {
            ConstCounter::new(v)
        });
    }

    fn one(&mut self, name: &str, help: &str, metric: &impl EncodeMetric) {
        if self.result.is_ok() {
            self.result = self
                .encoder
                .encode_descriptor(name, help, None, metric.metric_type())
                .and_then(|e| metric.encode(e));
        }
    }

    fn labelled<V: Value, M: EncodeMetric + TypedMetric>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (String, V)>,
        make: impl Fn(f64) -> M,
    ) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            let mut family = self.encoder.encode_descriptor(name, help, None, M::TYPE)?;
            for (l, v) in values {
                let labels = [(label, l.as_str())];
                make(v.as_f64()).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        })();
    }
}

/// A counter's family name: the scraped name without `_total`, which the encoder adds.
fn counter_family(name: &str) -> &str {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    name.strip_suffix("_total").unwrap_or(name)
}

/// The tower layer that counts requests into a node's [`NodeMetrics`].
#[derive(Clone)]
pub struct CountRequests(pub Arc<NodeMetrics>);

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            metrics: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    metrics: Arc<NodeMetrics>,
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
            route: self.metrics.route_index(req.uri().path()),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            log,
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct CountedFuture<F> {
        route: usize,
        metrics: Arc<NodeMetrics>,
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
            this.metrics
                .record(*this.route, resp.status().as_u16(), *this.started);
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

    /// A role's series, as a collector writes them.
    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
            let mut m = Series::new(encoder);
            m.gauge("memdb_seq", "h", 7u64);
            m.counter("memdb_things_total", "h", 3u64);
            m.gauges("memdb_lag", "h", "replica", [("x\ny\"\\".to_owned(), -1.0)]);
            m.counters(
                "memdb_loads_total",
                "h",
                "source",
                [("poll".to_owned(), 2u64)],
            );
            m.result
        }
    }

    fn metrics() -> NodeMetrics {
        NodeMetrics::new(["/wordcount".to_owned(), "/post".to_owned()], Fixed)
    }

    #[test]
    fn label_values_are_escaped() {
        let out = metrics().encode();
        assert!(
            out.contains("memdb_lag{replica=\"x\\ny\\\"\\\\\"} -1"),
            "{out}"
        );
        assert!(!out.contains("x\ny"), "{out}");
    }

    #[test]
    fn a_roles_series_are_typed_and_counters_end_in_total() {
        let out = metrics().encode();
        for line in [
            "# TYPE memdb_seq gauge",
            "memdb_seq 7",
            "# TYPE memdb_things counter",
            "memdb_things_total 3",
            "memdb_loads_total{source=\"poll\"} 2",
        ] {
            assert!(out.lines().any(|l| l.starts_with(line)), "{line} in {out}");
        }
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn requests_are_counted_under_the_routers_routes_or_other() {
        let m = metrics();
        m.record(m.route_index("/wordcount"), 200, Instant::now());
        m.record(m.route_index("/wordcount"), 200, Instant::now());
        m.record(m.route_index("/nope"), 404, Instant::now());
        let out = m.encode();
        for line in [
            "memdb_requests_total{route=\"/wordcount\",status=\"2xx\"} 2",
            "memdb_requests_total{route=\"other\",status=\"4xx\"} 1",
            "memdb_request_duration_seconds_count{route=\"/wordcount\"} 2",
            "memdb_request_duration_seconds_bucket{le=\"+Inf\",route=\"/post\"} 0",
        ] {
            assert!(out.lines().any(|l| l.starts_with(line)), "{line} in {out}");
        }
        // Only the classes a route answered with are exposed.
        assert!(!out.contains("status=\"5xx\""), "{out}");
    }
}
