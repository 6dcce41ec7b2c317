//! The end of a run: wait until every replica reaches the leader's seq, then compare
//! every word of the leader's table with every replica.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::report::Difference;
use crate::client::Client;

/// How many words one consistency-check GET asks for (the replicas' limit is 1024).
const CHECK_BATCH: usize = 512;
/// At most this many differences are printed (all are counted).
const MAX_PRINTED_DIFFS: usize = 50;

/// What the comparison found.
pub(super) struct Check {
    pub seq: u64,
    pub words_checked: usize,
    pub converge_ms: Option<f64>,
    pub not_converged: Vec<String>,
    pub inconsistencies: usize,
    pub differences: Vec<Difference>,
}

/// Waits for every replica to reach the leader's seq (up to `converge_timeout`), then
/// compares the converged ones word by word.
pub(super) async fn compare(
    converge_timeout: Duration,
    leader: &Client,
    replicas: &[Client],
) -> anyhow::Result<Check> {
    let leader_table = leader.sync().await?;
    let seq = leader_table.seq;
    let converge_started = Instant::now();
    let mut not_converged = Vec::new();
    for r in replicas {
        if !wait_for_seq(r, seq, converge_started + converge_timeout).await {
            not_converged.push(r.base().to_owned());
        }
    }
    let converge_ms = not_converged
        .is_empty()
        .then(|| converge_started.elapsed().as_secs_f64() * 1e3);
    let mut words: Vec<(&str, u64)> = leader_table.map.iter().collect();
    words.sort();
    let mut differences = Vec::new();
    let mut inconsistencies = 0;
    for r in replicas {
        if not_converged.iter().any(|u| u == r.base()) {
            continue;
        }
        for chunk in words.chunks(CHECK_BATCH) {
            let ws: Vec<&str> = chunk.iter().map(|(w, _)| *w).collect();
            let got: Result<HashMap<String, u64>, _> = r.wordcount(&ws, Some(seq)).await;
            for &(w, want) in chunk {
                let have = got.as_ref().ok().and_then(|g| g.get(w).copied());
                if have != Some(want) {
                    inconsistencies += 1;
                    if differences.len() < MAX_PRINTED_DIFFS {
                        differences.push(Difference {
                            word: w.to_owned(),
                            replica: r.base().to_owned(),
                            leader: want,
                            got: have,
                        });
                    }
                }
            }
        }
    }
    Ok(Check {
        seq,
        words_checked: words.len(),
        converge_ms,
        not_converged,
        inconsistencies,
        differences,
    })
}

/// Waits until `replica` answers a read at `seq` (a `min_seq` read also makes a local
/// replica's leader publish early).
async fn wait_for_seq(replica: &Client, seq: u64, deadline: Instant) -> bool {
    loop {
        if replica.wordcount(&["memdb"], Some(seq)).await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With keys: how the leader's table grew since `before`, against `posted`.
pub(super) async fn exact(
    leader: &Client,
    before: &crate::client::SyncReply,
    posted: &HashMap<String, u64>,
    retries: u64,
) -> anyhow::Result<super::report::Exact> {
    let after = leader.sync().await?;
    let mut mismatched = 0;
    let mut examples = Vec::new();
    let mut words: Vec<&str> = after.map.iter().map(|(w, _)| w).collect();
    words.extend(posted.keys().map(String::as_str));
    words.sort_unstable();
    words.dedup();
    for w in words {
        let grown = after.map.get(w).unwrap_or(0) as i64 - before.map.get(w).unwrap_or(0) as i64;
        let want = posted.get(w).copied().unwrap_or(0);
        if grown != want as i64 {
            mismatched += 1;
            if examples.len() < MAX_PRINTED_DIFFS {
                examples.push((w.to_owned(), want, grown));
            }
        }
    }
    Ok(super::report::Exact {
        words_expected: posted.len(),
        mismatched,
        examples,
        retries,
    })
}
