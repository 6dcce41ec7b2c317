//! The write path's parts: tokenizing, applying a batch to the table, and what a write
//! batch costs the leader end to end with no replicas, 3 network replicas (until all
//! three acknowledged it) and 3 local replicas (until a snapshot holding it is
//! published; local replicas themselves cost the leader nothing per batch).
//!
//!     cargo bench --bench ingest

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use memdb::config::{LeaderConfig, ReplicaConfig};
use memdb::leader::Leader;
use memdb::storage::table::{Table, WordMap};
use memdb::words::Tokenizer;

const VOCAB: [&str; 16] = [
    "Hello",
    "world",
    "distributed",
    "systems",
    "are",
    "awesome,",
    "go",
    "rust",
    "memory",
    "mapped",
    "replica",
    "leader",
    "count",
    "words",
    "fast",
    "exact!",
];

fn text(bytes: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(VOCAB[(i * 7) % VOCAB.len()]);
        s.push_str(&(i % 97).to_string());
        s.push(' ');
        i += 1;
    }
    s
}

fn tokenize(c: &mut Criterion) {
    let mut g = c.benchmark_group("tokenize");
    for size in [4 << 10, 1 << 20] {
        let t = text(size);
        g.throughput(Throughput::Bytes(t.len() as u64));
        for tok in [Tokenizer::Unicode, Tokenizer::Whitespace] {
            g.bench_with_input(BenchmarkId::new(tok.as_str(), size), &t, |b, t| {
                b.iter(|| black_box(tok.count(t)))
            });
        }
    }
    g.finish();
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("table-apply");
    let mut table = Table::new();
    let (big, _) = Tokenizer::Unicode.count(&text(200_000));
    table.apply(&big, 1);
    for size in [64usize, 4 << 10] {
        let (deltas, _) = Tokenizer::Unicode.count(&text(size));
        g.throughput(Throughput::Elements(deltas.len() as u64));
        let mut seq = 1;
        g.bench_with_input(
            BenchmarkId::new("distinct-words", deltas.len()),
            &deltas,
            |b, d| {
                b.iter(|| {
                    seq += 1;
                    table.apply(d, seq)
                })
            },
        );
        // What the leader's critical section does: the words' hashes are computed
        // before the lock is taken.
        let hashes: Vec<u64> = deltas
            .iter()
            .map(|(w, _)| memdb::storage::table::word_hash(w))
            .collect();
        g.bench_with_input(
            BenchmarkId::new("distinct-words-prehashed", deltas.len()),
            &deltas,
            |b, d| {
                b.iter(|| {
                    seq += 1;
                    table.apply_hashed(d, &hashes, seq)
                })
            },
        );
        // The same loop without the table digest, side by side: what the digest costs.
        let mut plain = table.map().clone();
        g.bench_with_input(
            BenchmarkId::new("distinct-words-without-digest", deltas.len()),
            &deltas,
            |b, d| {
                b.iter(|| {
                    for (word, n) in d.iter() {
                        plain.add(word, *n);
                    }
                    black_box(&plain);
                })
            },
        );
        // The table's former map (a String per word), side by side: what the compact
        // arena costs or saves on this path.
        let mut plain: WordMap = table.map().iter().map(|(w, n)| (w.to_owned(), n)).collect();
        g.bench_with_input(
            BenchmarkId::new("distinct-words-std-hashmap", deltas.len()),
            &deltas,
            |b, d| {
                b.iter(|| {
                    for (word, n) in d.iter() {
                        match plain.get_mut(word.as_str()) {
                            Some(c) => *c = c.saturating_add(*n),
                            None => {
                                plain.insert(word.clone(), *n);
                            }
                        }
                    }
                    black_box(&plain);
                })
            },
        );
    }
    g.finish();
}

fn replication(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("write-batch-cost");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let body = "the quick brown fox jumps over the lazy dog again";
    for mode in ["alone", "3-network-replicas", "3-local-replicas"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = LeaderConfig::new(dir.path());
        cfg.snapshot_interval = Duration::from_secs(3600);
        let leader = rt.block_on(async {
            let leader = Leader::open(cfg).unwrap();
            if mode == "3-network-replicas" {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let leader_url = format!("http://{}", l.local_addr().unwrap());
                tokio::spawn(memdb::leader::serve(
                    l,
                    leader.clone(),
                    std::future::pending(),
                ));
                for k in 0..3 {
                    let rl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let url = format!("http://{}", rl.local_addr().unwrap());
                    let mut rc = ReplicaConfig::new(leader_url.clone());
                    rc.data_dir = Some(dir.path().join(format!("replica-{k}")));
                    rc.heartbeat = Duration::from_millis(100);
                    tokio::spawn(memdb::replica::network::routes::run(
                        rl,
                        rc,
                        std::future::pending(),
                    ));
                    leader.replicas().add(&url, true).unwrap();
                }
                // Every replica synced and following before measuring.
                while !leader.replicas().drain(0, Duration::from_millis(100)).await {}
            }
            leader
        });
        g.bench_function(mode, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let mut seq = 0;
                    for _ in 0..iters {
                        seq = leader.ingest(body).expect("the log is writable").seq;
                    }
                    match mode {
                        "3-network-replicas" => {
                            assert!(leader.replicas().drain(seq, Duration::from_secs(60)).await)
                        }
                        "3-local-replicas" => {
                            leader.flush_snapshot().await.unwrap();
                        }
                        _ => {}
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, tokenize, apply, replication);
criterion_main!(benches);
