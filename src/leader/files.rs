//! `GET /files` and `GET /files/{name}`: the files the leader's table is made of,
//! served as they are for a joining network replica to map (a binary bootstrap: no
//! JSON, no table built in memory on either side).
//!
//! A file is served from the leader's own mapping of it, so the bytes are the ones the
//! manifest named even if a merge has renamed a newer file over the name since. Its
//! `ETag` is its checksum; `Range` (one range) resumes a download, and `If-Range` or
//! `If-Match` make a resumed or fresh download fail cleanly (a whole new file, or 412)
//! once the name holds another file. A name no longer in the table's chain answers
//! 404: the replica starts over from a new manifest.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::node::Leader;
use crate::protocol::Manifest;
use crate::server::error::ApiError;
use crate::storage::mapped::MappedSnapshot;

#[utoipa::path(
    get,
    path = "/files",
    tag = "replication",
    summary = "The files the leader's table is made of (a replica's binary bootstrap)",
    description = "The base, the delta and the recent deltas the table is mapped from, at \
                   the seq of the newest. A joining network replica downloads each with \
                   GET /files/{name}, maps them and follows pushes from `seq` (a voter \
                   whose backlog no longer reaches back to its files publishes first).",
    responses(
        (status = 200, description = "The manifest", body = Manifest),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "A voter could not publish its files (a full disk)", body = crate::server::openapi::ErrorBody),
    )
)]
async fn manifest_handler(State(leader): State<Leader>) -> Result<Response, ApiError> {
    let mut lower = leader.state().table.read().lower().clone();
    // A replica that maps these files follows pushes from their seq: what follows
    // must still be in the backlog or the log, or it would only be asked to sync again.
    // A voter has no log of its own: if its backlog no longer reaches back to the
    // files, they are published now.
    if !leader.can_push_after(lower.files.seq()) {
        leader.flush_snapshot().await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("the files could not be brought up to date: {e}"),
            )
        })?;
        lower = leader.state().table.read().lower().clone();
    }
    let manifest = lower.files.manifest(lower.digest, leader.incarnation());
    Ok(axum::Json(manifest).into_response())
}

#[utoipa::path(
    get,
    path = "/files/{name}",
    tag = "replication",
    summary = "One file of the leader's table, as it is",
    description = "Served from the leader's mapping, with its checksum as ETag. One \
                   `Range` resumes a download; with `If-Range` on the checksum a changed \
                   file comes whole instead (200), with `If-Match` it is refused (412).",
    params(
        ("name" = String, Path, description = "A name from GET /files"),
        ("range" = Option<String>, Header, description = "bytes=START-[END]"),
        ("if-range" = Option<String>, Header, description = "The quoted checksum the range is of"),
        ("if-match" = Option<String>, Header, description = "The quoted checksum wanted"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream",
         headers(("etag" = String, description = "The file's checksum, quoted"))),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream",
         headers(("content-range" = String, description = "bytes START-END/LEN"))),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 404, description = "No such file in the table's chain now (fetch /files again)",
         body = crate::server::openapi::ErrorBody),
        (status = 412, description = "If-Match names another file", body = crate::server::openapi::ErrorBody),
        (status = 416, description = "The range starts past the end", body = crate::server::openapi::ErrorBody),
    )
)]
async fn file_handler(
    State(leader): State<Leader>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lower = leader.state().table.read().lower().clone();
    let file = lower
        .files
        .named()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f.clone())
        .ok_or_else(|| crate::server::files::gone(&name, "the leader's table"))?;
    let checksum = file.header().checksum;
    crate::server::files::serve(&name, Mapped(file), checksum, &headers)
}

/// A mapped file's bytes, as a body that keeps the mapping alive.
struct Mapped(Arc<MappedSnapshot>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// The routes, for the leader's replication router.
pub(super) fn routes() -> utoipa_axum::router::OpenApiRouter<Leader> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(manifest_handler))
        .routes(utoipa_axum::routes!(file_handler))
}
