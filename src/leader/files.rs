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
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::node::Leader;
use crate::protocol::{Manifest, ManifestFile};
use crate::server::error::ApiError;
use crate::storage::mapped::{MappedSnapshot, MappedState};
use crate::storage::snapshot;

/// Each file of `files` with the name it is published (and served) under: the base,
/// the delta, the recent deltas oldest first.
fn named(files: &MappedState) -> Vec<(String, &Arc<MappedSnapshot>)> {
    std::iter::once((snapshot::FILE_NAME.to_owned(), &files.base))
        .chain(
            files
                .delta
                .iter()
                .map(|d| (snapshot::DELTA_NAME.to_owned(), d)),
        )
        .chain(
            files
                .recent
                .iter()
                .map(|r| (snapshot::recent_name(r.header().seq), r)),
        )
        .collect()
}

fn etag(file: &MappedSnapshot) -> String {
    format!("\"{:016x}\"", file.header().checksum)
}

#[utoipa::path(
    get,
    path = "/files",
    tag = "replication",
    summary = "The files the leader's table is made of (a replica's binary bootstrap)",
    description = "The base, the delta and the recent deltas the table is mapped from, at \
                   the seq of the newest. A joining network replica downloads each with \
                   GET /files/{name}, maps them and follows pushes from `seq`. Only a \
                   single leader serves them; a voter answers 404 and its replicas sync \
                   by GET /sync.",
    responses(
        (status = 200, description = "The manifest", body = Manifest),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
    )
)]
async fn manifest_handler(State(leader): State<Leader>) -> Response {
    let lower = leader.state().table.read().lower().clone();
    let files = &lower.files;
    let manifest = Manifest {
        seq: files.seq(),
        incarnation: leader.incarnation(),
        tokenizer: leader.state().tokenizer,
        digest: format!("{:016x}", lower.digest),
        words: files.words(),
        files: named(files)
            .into_iter()
            .map(|(name, f)| ManifestFile {
                name,
                len: f.len() as u64,
                checksum: format!("{:016x}", f.header().checksum),
            })
            .collect(),
    };
    axum::Json(manifest).into_response()
}

/// A byte range of a mapped file, as a body that borrows the mapping (no copy).
struct Slice {
    file: Arc<MappedSnapshot>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.file.bytes()[self.range.clone()]
    }
}

/// What a `Range` header asks of a file of `len` bytes: `None` for the whole file (no
/// header, or one this server does not split: several ranges, another unit);
/// `Err` when it starts past the end.
fn requested(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => (start, end.min(len.saturating_sub(1))),
        (Ok(start), Err(_)) if b.is_empty() => (start, len.saturating_sub(1)),
        (Err(_), Ok(suffix)) if a.is_empty() && suffix > 0 => {
            (len.saturating_sub(suffix), len.saturating_sub(1))
        }
        _ => return Ok(None),
    };
    if range.0 >= len {
        return Err(());
    }
    Ok(Some(range))
}

/// Whether an `If-Match` or `If-Range` value names `tag` (or is `*`, for If-Match).
fn names(value: Option<&HeaderValue>, tag: &str, star: bool) -> Option<bool> {
    let v = value?.to_str().ok()?;
    Some(
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == tag || (star && t == "*")),
    )
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
    let file = named(&lower.files)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no file {name:?} in the leader's table now: fetch /files again"),
            )
            .with("reason", "gone")
        })?;
    let tag = etag(&file);
    let len = file.len() as u64;
    if names(headers.get(header::IF_MATCH), &tag, true) == Some(false) {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("{name} is now {tag}, not the file asked for"),
        )
        .with("reason", "changed"));
    }
    // If-Range on another file: the whole (new) file, as if no range were asked.
    let range = match names(headers.get(header::IF_RANGE), &tag, false) {
        Some(false) => None,
        _ => requested(&headers, len).map_err(|()| {
            ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("{name} has {len} bytes"),
            )
            .with("len", len)
        })?,
    };
    let (status, (start, end)) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r),
        None => (StatusCode::OK, (0, len.saturating_sub(1))),
    };
    let body = if len == 0 {
        Bytes::new()
    } else {
        Bytes::from_owner(Slice {
            file,
            range: start as usize..end as usize + 1,
        })
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("hex is a header value"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {start}-{end}/{len}");
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).expect("digits are a header value"),
        );
    }
    Ok(resp)
}

/// The routes, for the leader's replication router.
pub(super) fn routes() -> utoipa_axum::router::OpenApiRouter<Leader> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(manifest_handler))
        .routes(utoipa_axum::routes!(file_handler))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        requested(&h, len)
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=90-500", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=100-", 100), Err(()));
        // What this server does not split is served whole.
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(range("bytes=9-3", 100), Ok(None));
        assert_eq!(range("bytes=x-", 100), Ok(None));
        assert_eq!(requested(&HeaderMap::new(), 100), Ok(None));
    }

    #[test]
    fn preconditions_name_the_checksum() {
        let v = HeaderValue::from_static("\"00000000000000ab\"");
        assert_eq!(names(Some(&v), "\"00000000000000ab\"", false), Some(true));
        assert_eq!(names(Some(&v), "\"00000000000000ac\"", false), Some(false));
        let star = HeaderValue::from_static("*");
        assert_eq!(names(Some(&star), "\"1\"", true), Some(true));
        assert_eq!(names(Some(&star), "\"1\"", false), Some(false));
        assert_eq!(names(None, "\"1\"", true), None);
    }
}
