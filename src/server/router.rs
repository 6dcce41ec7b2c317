//! The read side every node shares: `GET /wordcount` (one or many words, optional
//! `min_seq`), `GET /sync`, and the `x-memdb-seq` header on every response.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use super::serving::{Limits, Serving};
use super::source::{CountSource, SyncBody, wait_for_seq};
use crate::protocol::INCARNATION;
use crate::protocol::SEQ;
use crate::protocol::TOKENIZER;
use crate::server::budget::{BodyBudget, BodyBudgetLayer};
use crate::server::error::ApiError;
use crate::server::metrics::{NodeCollector, NodeMetrics};

/// `GET /wordcount?word=a[&word=b...][&min_seq=N]` → `{"a": n, "b": m}`.
#[utoipa::path(
    get,
    path = "/wordcount",
    tag = "reads",
    summary = "Counts of one or more words",
    description = "Words are normalised by the node's tokenizer (the key in the answer is \
                   the word as written). A word never seen counts 0.",
    params(
        ("word" = Vec<String>, Query, description = "A word to look up; repeat for up to \
          1024 words"),
        ("min_seq" = Option<u64>, Query, description = "Answer only once the node has \
          reached this seq (read-your-writes), waiting at most the node's --max-wait"),
    ),
    responses(
        (status = 200, description = "The counts, and the seq they reflect",
         body = inline(crate::server::openapi::WordCounts),
         headers(("x-memdb-seq" = u64, description = "The seq the counts reflect"))),
        (status = 400, description = "No word, too many, or one that is not exactly one word",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token (with --protect-reads)",
         body = crate::server::openapi::ErrorBody),
        (status = 503, description = "No data yet, or min_seq not reached within --max-wait",
         body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn wordcount<S: CountSource>(
    State(node): State<S>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = crate::server::parse::word_query(query.as_deref())?;
    reach(&node, q.min_seq).await?;
    let (body, seq) = node.lookup(&q.words)?;
    Ok(json_at(body, seq))
}

/// Waits for `min_seq` if there is one (a node with no data yet may still answer once
/// the data arrives), then checks the node has data to serve.
async fn reach<S: CountSource>(node: &S, min_seq: Option<u64>) -> Result<(), ApiError> {
    if let Some(min) = min_seq {
        let mut rx = node.seq_watch();
        if *rx.borrow() < min {
            node.want_seq(min);
        }
        if let Err(seq) = wait_for_seq(&mut rx, min, node.max_wait()).await {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this node has not reached seq {min} within {:?}",
                    node.max_wait()
                ),
            )
            .with("seq", seq)
            .with("min_seq", min));
        }
    }
    node.ready()
}

/// `GET /top?n=K[&prefix=P][&min_seq=N]` → `[{"word": "the", "count": 12}, ...]`.
#[utoipa::path(
    get,
    path = "/top",
    tag = "reads",
    summary = "The most frequent words",
    description = "Exact: the first `n` words by count (highest first), ties in byte \
                   order of the word, as of the seq in `x-memdb-seq`. Every node keeps \
                   its top 10,000 words ranked (a local replica reads them from the \
                   snapshot files in place), so the answer costs about `n` entries; a \
                   `prefix` that fewer than `n` of those 10,000 words start with is \
                   answered by a pass over the whole table.",
    params(
        ("n" = Option<usize>, Query, description = "How many words, 1 to 10000 (default 10)"),
        ("prefix" = Option<String>, Query, description = "Only words that start with this \
          (normalised as ingested text is: lowercased by the unicode tokenizer)"),
        ("min_seq" = Option<u64>, Query, description = "Answer only once the node has \
          reached this seq (read-your-writes), waiting at most the node's --max-wait"),
    ),
    responses(
        (status = 200, description = "The words in rank order, and the seq they reflect",
         body = inline(Vec<crate::server::openapi::TopWord>),
         headers(("x-memdb-seq" = u64, description = "The seq the answer reflects"))),
        (status = 400, description = "n out of range, or a bad prefix or min_seq",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token (with --protect-reads)",
         body = crate::server::openapi::ErrorBody),
        (status = 429, description = "The answer needs a pass over the whole table and \
                                      --max-scans passes are running: retry after \
                                      `retry-after` seconds",
         body = crate::server::openapi::ErrorBody),
        (status = 503, description = "No data yet, or min_seq not reached within --max-wait",
         body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn top<S: CountSource>(
    State(node): State<S>,
    axum::Extension(scans): axum::Extension<ScanSlots>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = crate::server::parse::top_query(query.as_deref())?;
    reach(&node, q.min_seq).await?;
    if let Some((body, seq)) = node.top_ranked(&q)? {
        return Ok(json_at(body, seq));
    }
    let Ok(slot) = scans.slots.clone().try_acquire_owned() else {
        SCANS_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "this /top needs a pass over the whole table, and --max-scans such passes \
             are running; retry shortly (or ask for fewer words, or a longer prefix)",
        )
        .with("retry_after", 1)
        .into_response();
        e.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(e);
    };
    // A pass starts no sooner than the last one took after it ended: passes take at
    // most half a core, however many clients ask, and the rest is left to the writers.
    // The one client that holds the slot waits for that; the others were refused.
    let not_before = *scans.not_before.lock();
    tokio::time::sleep_until(not_before).await;
    let started = tokio::time::Instant::now();
    let scanned = node.top_scan(q.into_owned()).await;
    let now = tokio::time::Instant::now();
    *scans.not_before.lock() = now + (now - started);
    drop(slot);
    let (body, seq) = scanned?;
    Ok(json_at(body, seq))
}

/// The passes over the whole table (`/top` of a rare prefix) a node runs at once.
#[derive(Clone)]
pub struct ScanSlots {
    slots: Arc<tokio::sync::Semaphore>,
    /// When the next pass may start.
    not_before: Arc<parking_lot::Mutex<tokio::time::Instant>>,
}

impl ScanSlots {
    pub fn new(max_scans: usize) -> ScanSlots {
        ScanSlots {
            slots: Arc::new(tokio::sync::Semaphore::new(max_scans.max(1))),
            not_before: Arc::new(parking_lot::Mutex::new(tokio::time::Instant::now())),
        }
    }
}

/// `/top` requests refused because `--max-scans` passes were running.
pub static SCANS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A JSON answer with the seq it reflects.
fn json_at(body: Vec<u8>, seq: u64) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (SEQ, crate::protocol::seq_value(seq)),
        ],
        body,
    )
        .into_response()
}

/// `GET /metrics` → the OpenMetrics text format (which Prometheus scrapes).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Series prefixed memdb_, in the OpenMetrics text format 1.0",
         body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "Missing or wrong token (with --protect-reads)",
         body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn metrics(axum::Extension(metrics): axum::Extension<Arc<NodeMetrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::server::metrics::CONTENT_TYPE),
        )],
        metrics.encode(),
    )
        .into_response()
}

/// `GET /sync` → the whole table as `{"word": count, ...}`.
#[utoipa::path(
    get,
    path = "/sync",
    tag = "replication",
    summary = "The whole table",
    responses(
        (status = 200, description = "Every word and its count",
         body = inline(crate::server::openapi::WordCounts),
         headers(
             ("x-memdb-seq" = u64, description = "The seq the table reflects"),
             ("x-memdb-incarnation" = String, description = "The leader history it belongs to (16 hex digits)"),
             ("x-memdb-tokenizer" = String, description = "The tokenizer it was counted with"),
             ("x-memdb-words" = u64, description = "About how many words the body holds \
              (a capacity hint; the body is streamed, without a length)"),
         )),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "No data yet", body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn sync<S: CountSource>(State(node): State<S>) -> Result<Response, ApiError> {
    node.ready()?;
    let SyncBody {
        body,
        seq,
        incarnation,
        tokenizer,
        words,
    } = node.sync_body().await;
    let mut resp = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (SEQ, crate::protocol::seq_value(seq)),
            (TOKENIZER, HeaderValue::from_static(tokenizer.as_str())),
        ],
        body,
    )
        .into_response();
    if let Some(inc) = incarnation {
        resp.headers_mut().insert(INCARNATION, inc.header_value());
    }
    resp.headers_mut()
        .insert(crate::protocol::WORDS, crate::protocol::seq_value(words));
    Ok(resp)
}

impl Serving {
    /// Puts the token check on `guarded` and `peers` (and on `reads` with
    /// `protect_reads`), and with `--tls-client-ca` the client-certificate check on
    /// `peers` and `bulk`; marks those operations in the document, and merges them. `bulk` (the
    /// whole table, `/sync`) is a read a replica joins by: it takes the peer credential
    /// or the client token, which can read every word anyway.
    fn apply<S: Clone + Send + Sync + 'static>(
        &self,
        guarded: OpenApiRouter<S>,
        peers: OpenApiRouter<S>,
        bulk: OpenApiRouter<S>,
        reads: OpenApiRouter<S>,
        open: OpenApiRouter<S>,
    ) -> OpenApiRouter<S> {
        let token = self.auth_token.iter();
        let reads_token = token.clone().filter(|_| self.protect_reads);
        let peer = self.peer_credential().into_iter();
        let mut peers = protect(peers, peer.clone());
        let mut bulk = protect(bulk, peer.chain(token.clone()));
        if self.tls.as_ref().is_some_and(|t| t.requires_client_certs()) {
            // A layer on no route is refused by axum (a role may have no peer routes).
            for routes in [&mut peers, &mut bulk] {
                if !routes.get_openapi().paths.paths.is_empty() {
                    crate::server::openapi::require_client_certificate(routes.get_openapi_mut());
                    *routes = std::mem::take(routes).route_layer(axum::middleware::from_fn(
                        crate::server::auth::require_client_cert,
                    ));
                }
            }
        }
        protect(guarded, token)
            .merge(peers)
            .merge(bulk)
            .merge(protect(reads, reads_token))
            .merge(open)
    }
}

/// Guards `routes` with `tokens` (any one of them); none: open.
fn protect<'a, S: Clone + Send + Sync + 'static>(
    mut routes: OpenApiRouter<S>,
    tokens: impl Iterator<Item = &'a crate::server::auth::Token>,
) -> OpenApiRouter<S> {
    let tokens: Vec<crate::server::auth::Token> = tokens.cloned().collect();
    // A layer on no route is refused by axum (and would guard nothing).
    if routes.get_openapi().paths.paths.is_empty() || tokens.is_empty() {
        return routes;
    }
    crate::server::openapi::require_bearer(routes.get_openapi_mut());
    routes.route_layer(axum::middleware::from_fn_with_state(
        crate::server::auth::Accepted(tokens.into()),
        crate::server::auth::require_token,
    ))
}

async fn limit_error(err: tower::BoxError) -> ApiError {
    if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in progress (--max-concurrent); retry shortly",
        )
        .applied(crate::server::error::Applied::No)
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

/// Builds a node's whole router and its OpenAPI document (served at `/openapi.json`):
/// the role's `guarded` routes (client writes), its `peers` routes (replication, raft,
/// admin: with `--tls-client-ca` they also need a client certificate) and `health`
/// handler, plus the routes every role shares (`/sync`, `/wordcount`, `/top`, the page,
/// `/metrics`), under `serving`'s access rules, with the body limit (if the role takes
/// bodies) and [`finish`].
#[allow(clippy::too_many_arguments)]
pub fn node_router<S: CountSource>(
    node: S,
    role: &str,
    guarded: OpenApiRouter<S>,
    peers: OpenApiRouter<S>,
    health: UtoipaMethodRouter<S>,
    serving: &Serving,
    max_body: Option<usize>,
) -> Router {
    use crate::server::openapi::documented;
    // Every role serves its whole table at /sync (a bulk read: what replicas join by).
    let bulk = OpenApiRouter::new().routes(documented::<__path_sync, _, _, _>(sync::<S>));
    let lookups = OpenApiRouter::new()
        .routes(documented::<__path_wordcount, _, _, _>(wordcount::<S>))
        .routes(documented::<__path_top, _, _, _>(top::<S>))
        .routes(utoipa_axum::routes!(crate::server::ui::ui))
        .routes(utoipa_axum::routes!(crate::server::ui::root))
        .routes(utoipa_axum::routes!(crate::server::history::history))
        .routes(utoipa_axum::routes!(metrics));
    let open = OpenApiRouter::new().routes(health);
    let mut routes = serving.apply(guarded, peers, bulk, lookups, open);
    if let Some(max) = max_body {
        routes = routes.layer(axum::extract::DefaultBodyLimit::max(max));
    }
    let (routes, mut api) = routes.split_for_parts();
    crate::server::openapi::finish_document(&mut api, role, serving.auth_token.is_some());
    let (routes, api) = crate::server::openapi::serve_document(routes, api, max_body);
    // Requests are counted under the routes the document (and so the router) has.
    let budget = BodyBudget::new(serving.limits.max_body_in_flight, max_body);
    let metrics = Arc::new(NodeMetrics::new(
        api.paths.paths.keys().cloned(),
        NodeCollector {
            node: node.clone(),
            budget: budget.clone(),
        },
    ));
    let scans = ScanSlots::new(serving.limits.max_scans);
    finish(
        routes
            .layer(axum::Extension(metrics.clone()))
            .layer(axum::Extension(scans))
            .layer(axum::Extension(crate::server::history::History::start(
                node.clone(),
            ))),
        node,
        metrics,
        budget,
        serving.limits,
    )
}

/// Finishes a node's router the same way for every role: JSON 404/405 fallbacks, the
/// seq header on every response (refusals included), the rate limit, the body-bytes
/// budget, the concurrency cap and request timeout (answered with JSON 429s and 503s,
/// so overload is refused rather than queued without bound), and the node as state.
fn finish<S: CountSource>(
    routes: Router<S>,
    node: S,
    metrics: Arc<NodeMetrics>,
    budget: Arc<BodyBudget>,
    limits: Limits,
) -> Router {
    use tower::ServiceBuilder;
    // Every response carries the node's seq, unless the handler set a more precise
    // one (taken when it read the table).
    let seq = SetResponseHeaderLayer::if_not_present(SEQ, {
        let node = node.clone();
        move |_: &Response| Some(crate::protocol::seq_value(node.seq()))
    });
    let inner = routes
        .fallback(crate::server::error::not_found)
        .method_not_allowed_fallback(crate::server::error::method_not_allowed)
        .with_state(node);
    // Wrapped around the whole router as one service (not with `Router::layer`, which
    // would give every route a cap of its own).
    let limited = ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(limit_error))
        .load_shed()
        .concurrency_limit(limits.max_concurrent.max(1));
    // A zero timeout turns it off (it costs a timer per request).
    // Counted outermost, so refusals for overload and timeouts are counted too.
    let counted = ServiceBuilder::new()
        .layer(seq)
        .layer(crate::server::metrics::CountRequests(metrics))
        .layer(crate::server::ratelimit::RateLimit::new(limits.rate_limit))
        .layer(BodyBudgetLayer(budget));
    if limits.request_timeout.is_zero() {
        Router::new().fallback_service(counted.service(limited.service(inner)))
    } else {
        let deadline = crate::server::deadline::RequestDeadlineLayer(limits.request_timeout);
        Router::new().fallback_service(counted.service(limited.layer(deadline).service(inner)))
    }
}
