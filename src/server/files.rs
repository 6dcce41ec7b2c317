//! Serving an immutable file as it is, for a peer to download and map: its checksum is
//! its `ETag`; one `Range` resumes a download; `If-Range` or `If-Match` make a resumed
//! or fresh download fail cleanly (the whole new file, or 412) once the name holds
//! another file. The leader's `GET /files/{name}` and a voter's raft snapshot files
//! (`GET /raft/snapshot/files/{name}`) both serve through [`serve`].

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::ApiError;

/// A byte range of `bytes`, as a body that borrows them (a mapping: no copy).
struct Slice<T> {
    bytes: T,
    range: std::ops::Range<usize>,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Slice<T> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes.as_ref()[self.range.clone()]
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

/// The file `name`, whose bytes are `bytes` and whose checksum is `checksum`, as the
/// request's headers ask for it (see the module's documentation).
pub fn serve<T>(
    name: &str,
    bytes: T,
    checksum: u64,
    headers: &HeaderMap,
) -> Result<Response, ApiError>
where
    T: AsRef<[u8]> + Send + 'static,
{
    let tag = format!("\"{checksum:016x}\"");
    let len = bytes.as_ref().len() as u64;
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
        _ => requested(headers, len).map_err(|()| {
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
            bytes,
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

/// 404 for a file that is not (or no longer) served under `name`.
pub fn gone(name: &str, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no file {name:?} in {what} now: fetch its list again"),
    )
    .with("reason", "gone")
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

    #[test]
    fn a_range_is_served_as_206_and_a_changed_file_is_refused() {
        let bytes = b"0123456789".to_vec();
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=4-"));
        h.insert(
            header::IF_RANGE,
            HeaderValue::from_static("\"000000000000002a\""),
        );
        let r = serve("f", bytes.clone(), 42, &h).unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 4-9/10");
        // If-Range on another checksum: the whole file.
        let r = serve("f", bytes.clone(), 43, &h).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MATCH,
            HeaderValue::from_static("\"000000000000002a\""),
        );
        assert!(serve("f", bytes.clone(), 43, &h).is_err());
        assert_eq!(serve("f", bytes, 42, &h).unwrap().status(), StatusCode::OK);
    }
}
