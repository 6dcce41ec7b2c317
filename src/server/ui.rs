//! The status page every node serves at `/` and `/ui`: one HTML file with its script
//! and styles inline, embedded in the binary (no CDN; it works offline). It holds no
//! data: its script reads the node's own `/health` and `/top` every second and draws
//! the charts from what it has seen, so it is guarded exactly as those reads are.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page.
pub const PAGE: &str = include_str!("ui.html");

/// What the page may load: its own inline script and styles, and fetches to its node.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src \
                      'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /ui` → the status page.
#[utoipa::path(
    get,
    path = "/ui",
    tag = "operations",
    summary = "The status page (HTML)",
    description = "Role, seq, incarnation or raft state, uptime; a leader's replicas with \
                   their lag and last error; the ingest rate and replica lag over the last \
                   five minutes; the top words. Refreshes itself from /health and /top. \
                   With --protect-reads a browser is asked for the token (HTTP Basic: any \
                   user name, the token as password).",
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 401, description = "Missing or wrong token (with --protect-reads)",
         body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn ui() -> Response {
    page()
}

/// `GET /` → the status page.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    summary = "The status page (HTML), as /ui",
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 401, description = "Missing or wrong token (with --protect-reads)",
         body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn root() -> Response {
    page()
}
