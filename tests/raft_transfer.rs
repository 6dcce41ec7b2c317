//! A raft snapshot on its way: a wiped voter killed at seeded moments while it is
//! offered, downloads and installs the leader's snapshot, and the leader killed while it
//! sends one, end with every voter exact.

use std::collections::HashMap;
use std::time::Duration;

use crate::util::group::*;
use crate::util::{DEADLINE, Rng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kills_during_a_snapshot_transfer_leave_every_voter_exact() {
    let mut rng = Rng::seeded(0x7ea_2026);
    // Snapshots are taken and the log purged behind them every few posts, so a wiped
    // voter is always sent a snapshot.
    let mut g = Group::start(3, &["--raft-snapshot-bytes", "256KiB"]).await;
    let urls = g.urls();
    let mut want: HashMap<String, u64> = HashMap::new();
    let post = |g: &Group, i: usize, want: &mut HashMap<String, u64>| {
        let text: Vec<String> = (0..20_000).map(|j| format!("t{i}x{j}")).collect();
        for w in &text {
            *want.entry(w.clone()).or_insert(0) += 1;
        }
        let (http, urls) = (g.http.clone(), urls.clone());
        async move {
            post_until_acked(&http, &urls, i, &text.join(" "), &format!("t{i}"), DEADLINE).await
        }
    };
    for i in 0..10 {
        post(&g, i, &mut want).await;
    }
    g.converged(&want).await;
    let leader = g.leader().await;
    let wiped = (leader + 1) % 3;
    g.wipe(wiped);
    let receiving = g.dirs[wiped].path().join("raft/.receiving");
    let mut caught = 0;
    for round in 0..6 {
        if round % 2 == 0 {
            // Wiped again (it needs the snapshot), and killed while it downloads the
            // snapshot's files: as soon as they start coming, or a seeded few
            // milliseconds later.
            if round > 0 {
                g.wipe(wiped);
            }
            g.restart(wiped);
            let started = std::time::Instant::now();
            while !receiving.exists() && started.elapsed() < DEADLINE {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
        } else {
            // Killed at a seeded moment from its start on: while it is offered the
            // snapshot, downloads its files, installs them, or catches up after.
            g.restart(wiped);
            tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
        }
        let during = receiving.exists();
        g.kill(wiped);
        caught += during as usize;
        eprintln!(
            "round {round}: kill -9 voter {}{}",
            wiped + 1,
            if during {
                " while it received a snapshot"
            } else {
                ""
            }
        );
        if rng.below(2) == 0 {
            eprintln!("round {round}: and its data wiped again");
            g.wipe(wiped);
        }
        // Writes go on meanwhile: the snapshot it is sent next is a newer one.
        post(&g, 100 + round as usize, &mut want).await;
    }
    assert!(caught > 0, "no kill came while a snapshot was received");
    g.restart(wiped);
    g.converged(&want).await;
    // The leader killed while a wiped voter is sent its snapshot: the next leader sends
    // it one of its own.
    g.wipe(wiped);
    g.restart(wiped);
    let after = rng.below(800);
    tokio::time::sleep(Duration::from_millis(after)).await;
    eprintln!(
        "kill -9 the leader, voter {}, {after} ms into the transfer",
        leader + 1
    );
    g.kill(leader);
    post(&g, 200, &mut want).await;
    g.restart(leader);
    g.converged(&want).await;
}
