//! `POST /post` on a voter: the words proposed as one raft entry, answered once it is
//! committed and applied here; a follower redirects to the leader.

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::consensus::engine::Consensus;
use crate::consensus::types::{Outcome, Proposal, WriteError};
use crate::protocol::{IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY, SEQ};
use crate::server::deadline::{Deadline, remaining};
use crate::server::error::{ApiError, Applied as Fate};

/// The header's value, if sent: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut all = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::bad_request(
            "Idempotency-Key is given more than once: send one key per write",
        ));
    }
    let ok = (1..=MAX_IDEMPOTENCY_KEY).contains(&v.len())
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(Some(v.to_str().expect("ASCII").to_owned()))
}

#[utoipa::path(
    post,
    path = "/post",
    tag = "writes",
    summary = "Count the words of a text (a voter of a raft group)",
    description = "Proposes the text's words as one raft entry and answers once it is \
                   committed on a majority and applied here. A follower redirects to the \
                   leader. With an Idempotency-Key, a retried write is counted once.",
    params(("Idempotency-Key" = Option<String>, Header,
            description = "1 to 255 visible ASCII characters; a retry with the same key \
                           and words is counted once")),
    request_body(content(
        (inline(crate::server::parse::PostForm) = "application/x-www-form-urlencoded"),
        (String = "text/plain"),
        (inline(crate::server::parse::PostJson) = "application/json"),
    )),
    responses(
        (status = 202, description = "Counted (or, `duplicate: true`, counted before under \
                                      this key)", body = Object,
         headers(("x-memdb-seq" = u64, description = "The batch's seq"))),
        (status = 307, description = "A follower: post to the leader (`Location`, and \
                                      `leader_url` in the body); nothing counted",
         body = crate::server::openapi::ErrorBody),
        (status = 400, description = "No text, empty text, a malformed body or key",
         body = crate::server::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = crate::server::openapi::ErrorBody),
        (status = 409, description = "This Idempotency-Key was used longer ago than the \
                                      group remembers keys; not counted again",
         body = crate::server::openapi::ErrorBody),
        (status = 413, description = "Larger than --max-body", body = crate::server::openapi::ErrorBody),
        (status = 415, description = "Unsupported content type", body = crate::server::openapi::ErrorBody),
        (status = 422, description = "This Idempotency-Key was used for other words; \
                                      nothing counted", body = crate::server::openapi::ErrorBody),
        (status = 503, description = "No leader now, or not committed in time: `applied` \
                                      says `no` or `unknown` (retry with the same key)",
         body = crate::server::openapi::ErrorBody),
        (status = 507, description = "The raft log cannot be written (disk full or \
                                      failed): refused, nothing counted; retry later",
         body = crate::server::openapi::ErrorBody),
    )
)]
pub async fn write(
    State(c): State<Consensus>,
    deadline: Option<axum::Extension<Deadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let deadline = deadline.map(|d| d.0);
    let text = crate::server::parse::post_request(&headers, body)?;
    let key = idempotency_key(&headers).map_err(|e| e.applied(Fate::No))?;
    let (deltas, words) = c.node().tokenizer().count(&text);
    // A keyed post without words is still proposed: its key is kept (and a later use
    // of it for other words refused), though it takes no seq.
    if words == 0 && key.is_none() {
        let seq = c.node().seq();
        return Ok((
            StatusCode::ACCEPTED,
            [(SEQ, crate::protocol::seq_value(seq))],
            axum::Json(json!({ "seq": seq, "words": 0 })),
        )
            .into_response());
    }
    // A raft log that cannot be written (a full disk) refuses at once, before the
    // batch is proposed: it is not in the log, on this node or any other.
    if let Some(e) = c.log.failure() {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the raft log cannot be written ({e}); writes are refused until it can \
                 (this one was not counted)"
            ),
        )
        .with("reason", "log_failed")
        .with("retry_after", 1)
        .applied(Fate::No));
    }
    let applied = remaining(deadline, c.write(Proposal::new(deltas, key)))
        .await
        .unwrap_or(Err(WriteError::Timeout));
    let applied = match applied {
        Ok(a) => a,
        Err(e) => return write_refused(e),
    };
    match applied.outcome {
        Outcome::KeyReused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for a write of other words; nothing was counted",
        )
        .with("seq", applied.seq)
        .applied(Fate::No)),
        Outcome::KeyExpired => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this Idempotency-Key was used longer ago than the group remembers keys \
                 (--idempotency-window {:?}, --idempotency-max-bytes): its write was \
                 counted then, and this one is not counted; use a new key for a new write",
                c.config.key_window
            ),
        )
        .applied(Fate::No)),
        outcome => Ok((
            StatusCode::ACCEPTED,
            [(SEQ, crate::protocol::seq_value(applied.seq))],
            axum::Json(json!({
                "seq": applied.seq,
                "words": words,
                "duplicate": outcome == Outcome::Duplicate,
            })),
        )
            .into_response()),
    }
}

/// The answer to a write the group did not apply here: a redirect to the leader, or a
/// refusal that says whether it may have been counted.
fn write_refused(e: WriteError) -> Result<Response, ApiError> {
    let refused = |why: String, reason, fate| {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)
            .with("reason", reason)
            .with("retry_after", 1)
            .applied(fate))
    };
    match e {
        WriteError::NotLeader(Some((id, url))) => {
            let location = format!("{}/post", url.trim_end_matches('/'));
            let body = ApiError::new(
                StatusCode::TEMPORARY_REDIRECT,
                format!("node {id} leads the group: post to {location}"),
            )
            .with("leader_id", id)
            .with("leader_url", url);
            let mut resp = body.applied(Fate::No).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(axum::http::header::LOCATION, v);
            }
            Ok(resp)
        }
        WriteError::NotLeader(None) => refused(
            "the group cannot take writes now (no leader is elected); nothing was counted".into(),
            "no_leader",
            Fate::No,
        ),
        // The engine failed with the proposal in hand (a log it cannot write, a stop):
        // it may have reached the log, and other voters, first.
        WriteError::Unavailable(why) => refused(
            format!(
                "the group cannot take writes now ({why}); whether this write was \
                 counted is unknown: retry with the same Idempotency-Key"
            ),
            "unavailable",
            Fate::Unknown,
        ),
        WriteError::Timeout => refused(
            "not committed in time (--write-timeout or --request-timeout): the outcome \
             is unknown; retry with the same Idempotency-Key to have it counted exactly \
             once"
                .into(),
            "not_committed",
            Fate::Unknown,
        ),
    }
}
