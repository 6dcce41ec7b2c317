//! Applying a push from the leader: the push secret, the seq protocol (apply at
//! `from`, acknowledge duplicates, refuse gaps), the digest check, and the Go
//! original's unsequenced form.

use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::protocol::DIGEST;
use crate::protocol::FROM_SEQ;
use crate::protocol::INCARNATION;
use crate::protocol::Incarnation;
use crate::protocol::PUSH_SECRET;
use crate::protocol::RESYNC;
use crate::protocol::TO_SEQ;
use crate::server::error::ApiError;

use super::Replica;

/// A sequenced push: the batch taking the replica from `from` to `to` in `inc`.
struct Range {
    from: u64,
    to: u64,
    inc: Incarnation,
}

impl Replica {
    /// Applies a pushed batch. See the module docs of `replication` for the protocol.
    pub(super) fn apply_update(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let inc = parse_incarnation(headers)?;
        let known = self.shared.leader_secret.lock().clone();
        self.check_secret(headers, inc, known.as_ref())?;
        let digest = parse_digest(headers)?;
        if headers.contains_key(RESYNC) {
            return Ok(self.resync_asked(inc, known.as_ref()));
        }
        let range = parse_range(headers, inc)?;
        let deltas = parse_deltas(body)?;
        match range {
            None => self.apply_unsequenced(&deltas),
            Some(range) => self.apply_sequenced(range, &deltas, digest),
        }
    }

    /// A push that claims the incarnation we know the secret of must carry it.
    fn check_secret(
        &self,
        headers: &HeaderMap,
        inc: Option<Incarnation>,
        known: Option<&(Incarnation, String)>,
    ) -> Result<(), ApiError> {
        if let Some((ki, secret)) = known
            && inc == Some(*ki)
            && !crate::server::parse::header_str(headers, &PUSH_SECRET)
                .is_some_and(|p| crate::server::auth::secrets_match(p, secret))
        {
            self.shared.forged_pushes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("refused a push without the leader's secret");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this push was not sent by the replica's leader: x-memdb-push-secret is \
                 missing or wrong",
            )
            .with("reason", "secret"));
        }
        Ok(())
    }

    /// The leader says it cannot resend what we missed.
    fn resync_asked(
        &self,
        inc: Option<Incarnation>,
        known: Option<&(Incarnation, String)>,
    ) -> Response {
        match (known, inc) {
            // From our leader (its secret was checked), or we know none yet.
            (Some((ki, _)), Some(i)) if i == *ki => self.request_resync(),
            (None, _) => self.request_resync(),
            // Another incarnation, or none: ask the leader rather than obey.
            _ => self.shared.wake.notify_one(),
        }
        let seq = self.shared.data.read().table.seq();
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"seq": seq, "resyncing": true})),
        )
            .into_response()
    }

    /// Applies a batch at `from`, acknowledges one already applied, refuses a gap or
    /// another incarnation, and checks the digest at `to`.
    fn apply_sequenced(
        &self,
        Range { from, to, inc }: Range,
        deltas: &[(String, i64)],
        digest: Option<u64>,
    ) -> Result<Response, ApiError> {
        let s = &self.shared;
        if !self.is_ready() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica has not synced yet",
            )
            .with("seq", 0));
        }
        let mut d = s.data.write();
        let seq = d.table.seq();
        if d.incarnation != Some(inc) {
            drop(d);
            // Ask the leader at once whether our data continues its history (then we
            // adopt its incarnation) or not (then we full-sync).
            s.wake.notify_one();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "batch is from another leader incarnation; checking with the leader",
            )
            .with("reason", "incarnation")
            .with("seq", seq));
        }
        if seq >= to {
            // At exactly `to`, the digests must agree: a push forged at our seq makes
            // the leader's real batch look like a duplicate, and this is where it shows.
            if seq == to
                && let Some(want) = digest
                && want != d.table.digest()
            {
                let got = d.table.digest();
                drop(d);
                return Err(self.diverged(seq, want, got));
            }
            return Ok(axum::Json(json!({"seq": seq, "duplicate": true})).into_response());
        }
        if seq != from {
            drop(d);
            s.gaps.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("batch starts at seq {from} but this replica is at {seq}"),
            )
            .with("reason", "gap")
            .with("seq", seq));
        }
        if let Err(e) = d.table.apply_signed(deltas) {
            drop(d);
            // The leader only sends what it applied: our state cannot be trusted.
            self.distrust();
            return Err(ApiError::bad_request(e.to_string()).with("seq", seq));
        }
        d.table.set_seq(to);
        let got = d.table.digest();
        drop(d);
        self.set_seq(to);
        s.updates.fetch_add(1, Ordering::Relaxed);
        if let Some(want) = digest
            && want != got
        {
            return Err(self.diverged(to, want, got));
        }
        Ok(axum::Json(json!({"seq": to})).into_response())
    }

    /// Our table does not match the leader's at `seq`: count it, full-sync, and answer
    /// so the leader waits for the sync.
    fn diverged(&self, seq: u64, want: u64, got: u64) -> ApiError {
        self.shared
            .digest_mismatches
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            seq,
            leader = format!("{want:016x}"),
            ours = format!("{got:016x}"),
            "our table's digest differs from the leader's at the same seq: re-syncing"
        );
        self.distrust();
        ApiError::new(
            StatusCode::CONFLICT,
            format!("table digest differs from the leader's at seq {seq}: re-syncing"),
        )
        .with("reason", "digest")
        .with("seq", seq)
    }

    /// The Go original's `/update`: deltas without seq headers. Applied as a write of
    /// its own; this replica's history then no longer matches any leader's, so the next
    /// push from a memdb leader makes it re-sync (which undoes this write).
    fn apply_unsequenced(&self, deltas: &[(String, i64)]) -> Result<Response, ApiError> {
        let s = &self.shared;
        if !self.is_ready() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica has not synced yet",
            ));
        }
        let mut d = s.data.write();
        d.table
            .apply_signed(deltas)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let seq = d.table.seq() + 1;
        d.table.set_seq(seq);
        d.incarnation = None;
        drop(d);
        self.set_seq(seq);
        tracing::warn!(
            seq,
            "applied an unsequenced /update: this replica now diverges from its leader until the next re-sync"
        );
        Ok(axum::Json(json!({"seq": seq})).into_response())
    }
}

fn parse_incarnation(headers: &HeaderMap) -> Result<Option<Incarnation>, ApiError> {
    crate::server::parse::header_str(headers, &INCARNATION)
        .map(|v| {
            v.parse::<Incarnation>().map_err(|_| {
                ApiError::bad_request("header x-memdb-incarnation must be 16 hex digits")
            })
        })
        .transpose()
}

fn parse_digest(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    crate::server::parse::header_str(headers, &DIGEST)
        .map(|v| {
            (v.len() == 16)
                .then(|| u64::from_str_radix(v, 16).ok())
                .flatten()
                .ok_or_else(|| ApiError::bad_request("header x-memdb-digest must be 16 hex digits"))
        })
        .transpose()
}

/// The batch's range, or `None` for the Go original's unsequenced form (no seq
/// headers at all).
fn parse_range(headers: &HeaderMap, inc: Option<Incarnation>) -> Result<Option<Range>, ApiError> {
    let from = crate::server::parse::header_u64(headers, &FROM_SEQ)?;
    let to = crate::server::parse::header_u64(headers, &TO_SEQ)?;
    match (from, to, inc) {
        (Some(from), Some(to), Some(inc)) if from <= to => Ok(Some(Range { from, to, inc })),
        (Some(_), Some(_), Some(_)) => Err(ApiError::bad_request(
            "x-memdb-from-seq is greater than x-memdb-to-seq",
        )),
        (None, None, None) => Ok(None),
        _ => Err(ApiError::bad_request(
            "x-memdb-from-seq, x-memdb-to-seq and x-memdb-incarnation go together",
        )),
    }
}

fn parse_deltas(body: &[u8]) -> Result<Vec<(String, i64)>, ApiError> {
    let map: std::collections::HashMap<String, i64> = crate::server::parse::json_body(body)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "expected a JSON object of word deltas like {{\"hello\": 5}}: {e}"
            ))
        })?;
    Ok(map.into_iter().collect())
}
