//! Model-based test: random write batches through the real leader and replication,
//! with replicas joining late and crashing, a local replica following deltas across
//! many compactions, and the leader restarting, compared after each phase with a
//! plain HashMap that saw the same batches.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::util::*;

const VOCABULARY: usize = 60;

fn random_batch(rng: &mut StdRng) -> Vec<String> {
    let n = rng.random_range(1..=20);
    (0..n)
        .map(|_| {
            let w = rng.random_range(0..VOCABULARY);
            // Mixed case and punctuation: the whitespace tokenizer keeps both.
            match rng.random_range(0..4) {
                0 => format!("Word{w}"),
                1 => format!("word{w},"),
                _ => format!("word{w}"),
            }
        })
        .collect()
}

/// Posts `batches` with 4 concurrent clients and adds them to `model`.
async fn apply(leader: &Node, batches: Vec<Vec<String>>, model: &mut HashMap<String, u64>) {
    for b in &batches {
        for w in b {
            *model.entry(w.clone()).or_insert(0) += 1;
        }
    }
    let queue = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = leader.client();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(b) = queue.lock().unwrap().pop() else {
                    break;
                };
                let reply = c.post_text(&b.join(" ")).await.unwrap();
                assert_eq!(reply.words as usize, b.len());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_batches_leave_every_replica_equal_to_the_model() {
    let seed: u64 = std::env::var("MEMDB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("model test seed: {seed} (rerun with MEMDB_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // A small compaction threshold: the delta is merged into a new base again and
    // again while the phases run.
    let mut leader = Node::leader(
        dir.path(),
        &[
            "--tokenizer",
            "whitespace",
            "--compact-after",
            "30",
            "--snapshot-interval",
            "5ms",
        ],
    );
    let local = Node::local(dir.path(), &[]);
    let mut model = HashMap::new();
    let batches = |rng: &mut StdRng, n| (0..n).map(|_| random_batch(rng)).collect::<Vec<_>>();

    let mut r1 = Node::replica(&leader.url, &[]);
    wait_ready(&r1).await;
    apply(&leader, batches(&mut rng, 100), &mut model).await;
    assert_eq!(leader.table().await, model, "leader vs model (seed {seed})");
    assert_eq!(converged(&leader, &r1).await, model);
    assert_eq!(
        converged(&leader, &local).await,
        model,
        "local (seed {seed})"
    );

    // A replica joins while writes continue.
    let r2 = Node::replica(&leader.url, &[]);
    apply(&leader, batches(&mut rng, 100), &mut model).await;
    wait_ready(&r2).await;
    for r in [&r1, &r2] {
        assert_eq!(converged(&leader, r).await, model, "seed {seed}");
    }

    // One crashes mid-stream and comes back.
    r1.kill();
    apply(&leader, batches(&mut rng, 100), &mut model).await;
    r1.restart();
    apply(&leader, batches(&mut rng, 100), &mut model).await;
    wait_ready(&r1).await;
    for r in [&r1, &r2, &local] {
        assert_eq!(converged(&leader, r).await, model, "seed {seed}");
    }
    assert_eq!(leader.seq().await, 400);
    let compactions = leader.health().await["snapshot"]["compactions"]
        .as_u64()
        .unwrap();
    assert!(compactions >= 3, "only {compactions} compactions");
    // Nothing was lost on the way, so nothing should have needed a full sync: every
    // replica followed through pushes alone.
    let h = leader.health().await;
    for rep in h["replicas"].as_array().unwrap() {
        assert_eq!(rep["resyncs"], 0, "needless full sync: {rep}");
    }
    // The leader restarts from its base, delta and log, exactly.
    assert!(leader.terminate().success());
    leader.restart();
    assert_eq!(
        leader.table().await,
        model,
        "restarted leader (seed {seed})"
    );
    apply(&leader, batches(&mut rng, 50), &mut model).await;
    assert_eq!(converged(&leader, &local).await, model, "seed {seed}");
}
