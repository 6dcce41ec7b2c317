//! How a raft snapshot travels: as its files, the way a network replica joins (see
//! [`crate::client::files`]), never as one body in memory or as JSON.
//!
//! 1. The leader's engine decides a voter needs its snapshot and calls
//!    `full_snapshot` ([`super::network`]): a `POST /raft/snapshot` with an
//!    [`Offer`](super::types::Offer): the leader's vote, the snapshot's raft metadata, the record file's
//!    length and checksum, and the leader's URL.
//! 2. The voter ([`receive`]) downloads the record from the leader's
//!    `GET /raft/snapshot/files/raft.meta` ([`serve_file`]), then each file it names
//!    into `raft/.receiving/` (streamed, resumable with `Range` and `If-Range`; a file
//!    its own snapshot already holds is linked, not downloaded), and validates every
//!    file whole against the record.
//! 3. It hands the directory to openraft (`Raft::install_full_snapshot`), which calls
//!    the state machine's `install_snapshot`: the directory becomes the voter's
//!    snapshot and its files the table. Then it answers the leader.
//!
//! A leader that took a newer snapshot meanwhile answers 404 or 412 for the old files:
//! the voter answers an error, and the engine offers the new one. A file that is not
//! what the record names is refused, and the voter keeps serving its last good state.

use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use openraft::Snapshot;
use openraft::raft::SnapshotResponse;

use super::engine::Consensus;
use super::snapshot::{self, RECEIVING, RECORD_NAME, Record};
use super::types::{Answer, Offer, SnapshotFiles, rpc};
use crate::client::Client;
use crate::client::files::{self, FetchError};
use crate::server::error::ApiError;
use crate::storage::mapfile::MappedFile;

fn refused(status: StatusCode, what: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%what, "refused a raft snapshot");
    ApiError::new(status, format!("raft snapshot refused: {what}"))
}

fn fetch_error(e: FetchError) -> ApiError {
    match e {
        FetchError::Client(e) => refused(StatusCode::BAD_GATEWAY, e),
        FetchError::Io(e) => refused(StatusCode::INSUFFICIENT_STORAGE, e),
        other => refused(StatusCode::UNPROCESSABLE_ENTITY, other),
    }
}

/// Takes the snapshot `offer` describes: downloads and checks its files, then installs
/// it through the engine. One at a time. A failure of this voter's own to store it (507:
/// its disk full or failing) is kept for `/health` until a snapshot is received; an
/// offer refused for what it says (forged, stale, from a stranger) is not the voter's
/// failure.
pub async fn receive(c: &Consensus, offer: Offer) -> Result<Answer, ApiError> {
    let answer = take(c, offer).await;
    match &answer {
        Ok(_) => *c.receive_failed.lock() = None,
        Err(e) if e.status == StatusCode::INSUFFICIENT_STORAGE => {
            *c.receive_failed.lock() = Some(format!("{} ({})", e.message, e.status))
        }
        Err(_) => {}
    }
    answer
}

async fn take(c: &Consensus, offer: Offer) -> Result<Answer, ApiError> {
    let mine = c.raft.metrics().borrow().vote;
    if offer.vote < mine {
        // openraft would refuse it too; nothing is downloaded.
        return Ok(Ok(SnapshotResponse::new(mine)));
    }
    c.check_member_url(&offer.from)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, e))?;
    let leader = offer.vote.leader_id.node_id;
    let known = c
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone());
    if let Some(addr) = known
        && addr.trim_end_matches('/') != offer.from.trim_end_matches('/')
    {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            format!("node {leader} is at {addr}, not {}", offer.from),
        ));
    }
    let _one = c.receiving.lock().await;
    let raft_dir = c.state.dir().to_owned();
    let dir = raft_dir.join(RECEIVING);
    crate::fs::create_private_dir(&dir).map_err(|e| {
        refused(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("{}: {e}", dir.display()),
        )
    })?;
    let from = Client::with_tls(&offer.from, c.client_tls()).with_token(c.token().cloned());
    let started = std::time::Instant::now();
    // The offer stands for the leader's heartbeat: a voter refused again and again (its
    // disk full) must not call elections meanwhile.
    let _ = c.raft.append_entries(heartbeat(&offer)).await;
    let record = tokio::select! {
        r = download(&from, &dir, &offer, &raft_dir) => r?,
        never = keep_alive(c, &offer) => match never {},
    };
    let bytes: u64 = record.chain.files.iter().map(|f| f.len).sum();
    tracing::info!(
        seq = record.chain.seq,
        words = record.chain.words,
        bytes,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "raft snapshot downloaded and checked; installing"
    );
    let snapshot = Snapshot {
        meta: offer.meta.clone(),
        snapshot: Box::new(SnapshotFiles { dir: dir.clone() }),
    };
    let answer = c.raft.install_full_snapshot(offer.vote, snapshot).await;
    // Installed, it was renamed into place; declined (the voter moved on), it is of
    // no use.
    if dir.exists() && answer.is_ok() {
        snapshot::remove_dir(&dir);
    }
    Ok(answer)
}

/// Stands in for the leader's heartbeats while its snapshot is downloaded. openraft
/// sends a follower nothing else while a snapshot is on its way to it, and a download
/// of 10M words' files takes seconds: without this, the voter's election timer ran out
/// meanwhile, and its election made the leader step down (on every rejoin of a wiped
/// voter). This is the heartbeat the offer's leader would send: its vote, no entries,
/// and nothing of the log assumed (`prev_log_id` none, which every log matches).
async fn keep_alive(c: &Consensus, offer: &Offer) -> std::convert::Infallible {
    let mut tick = tokio::time::interval(c.config.heartbeat);
    loop {
        tick.tick().await;
        // A newer leader's vote makes this one refused: harmless. A stopped engine
        // fails the download's install anyway.
        let _ = c.raft.append_entries(heartbeat(offer)).await;
    }
}

/// The heartbeat the offer's leader would send.
fn heartbeat(offer: &Offer) -> openraft::raft::AppendEntriesRequest<super::types::TypeConfig> {
    openraft::raft::AppendEntriesRequest {
        vote: offer.vote,
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    }
}

/// Brings the record and the files it names into `dir`, and checks them whole.
async fn download(
    from: &Client,
    dir: &Path,
    offer: &Offer,
    raft_dir: &Path,
) -> Result<Record, ApiError> {
    let changed = || {
        refused(
            StatusCode::CONFLICT,
            "the leader's snapshot changed: offer the new one",
        )
    };
    let _ = std::fs::remove_file(dir.join(RECORD_NAME));
    let got = files::fetch(from, rpc::SNAPSHOT_FILES, dir, &offer.record, &[], false)
        .await
        .map_err(fetch_error)?;
    if got.is_none() {
        return Err(changed());
    }
    let record = Record::read(dir).map_err(|e| refused(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if record.meta != offer.meta {
        return Err(refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the record is not the snapshot offered",
        ));
    }
    files::check(&record.chain).map_err(fetch_error)?;
    files::remove_unnamed(dir, &record.chain).map_err(fetch_error)?;
    let own: Option<PathBuf> = snapshot::newest(raft_dir);
    let elsewhere: Vec<&Path> = own.as_deref().into_iter().collect();
    for f in &record.chain.files {
        let got = files::fetch(from, rpc::SNAPSHOT_FILES, dir, f, &elsewhere, true)
            .await
            .map_err(fetch_error)?;
        if got.is_none() {
            return Err(changed());
        }
    }
    let (at, r) = (dir.to_owned(), record.clone());
    tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
        let checked = files::verify(&at, &r.chain);
        let ok = checked.and_then(|(state, _)| {
            let names = state
                .files()
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .zip(&r.checked)
                .all(|(f, c)| c.names(f.header()));
            // (The record's decoding checked it has one record a file.)
            if names {
                Ok(())
            } else {
                Err(FetchError::Invalid(
                    "the record's checked files are not the files".into(),
                ))
            }
        });
        if ok.is_err() {
            // Downloaded again next time.
            for f in &r.chain.files {
                let _ = std::fs::remove_file(at.join(&f.name));
            }
        }
        ok
    })
    .await
    .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e))?
    .map_err(fetch_error)?;
    Ok(record)
}

/// `GET /raft/snapshot/files/{name}`: a file of this voter's current snapshot.
pub async fn serve_file(
    c: &Consensus,
    name: String,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if name != RECORD_NAME && !files::valid_name(&name) {
        return Err(crate::server::files::gone(
            &name,
            "this voter's raft snapshot",
        ));
    }
    let raft_dir = c.state.dir().to_owned();
    let n = name.clone();
    let opened = tokio::task::spawn_blocking(move || -> Option<(MappedFile, u64)> {
        let dir = snapshot::newest(&raft_dir)?;
        let map = MappedFile::open(&dir.join(&n)).ok()?;
        let bytes = map.as_ref();
        let checksum = if n == RECORD_NAME {
            xxhash_rust::xxh3::xxh3_64(bytes)
        } else {
            crate::storage::snapshot::read_header(bytes, bytes.len() as u64)
                .ok()?
                .checksum
        };
        Some((map, checksum))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (map, checksum) =
        opened.ok_or_else(|| crate::server::files::gone(&name, "this voter's raft snapshot"))?;
    crate::server::files::serve(&name, map, checksum, &headers)
}
