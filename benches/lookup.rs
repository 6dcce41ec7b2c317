//! One word's lookup three ways: in the mapped rkyv archive (a local replica), in a std
//! HashMap (a network replica's table), and as an HTTP GET to a network replica on
//! loopback (what a client of a network replica pays).
//!
//!     cargo bench --bench lookup

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use memdb::config::{LeaderConfig, ReplicaConfig};
use memdb::storage::mapped::MappedSnapshot;
use memdb::storage::snapshot::{self, Meta};
use memdb::storage::table::WordMap;
use memdb::words::Tokenizer;

fn table(n: usize) -> WordMap {
    (0..n)
        .map(|i| (format!("word{i:07}"), (i as u64 % 1000) + 1))
        .collect()
}

/// Words to look up: a fixed pseudo-random walk over the table, so lookups are not
/// all served from one cache line.
fn probes(n: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("word{:07}", x % n as u64)
        })
        .collect()
}

fn in_memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    for n in [10_000usize, 100_000, 1_000_000] {
        let map = table(n);
        let meta = Meta {
            tokenizer: Tokenizer::Unicode,
            seq: 1,
            incarnation: memdb::protocol::Incarnation::from_raw(1).unwrap(),
        };
        let path = snapshot::publish(dir.path(), &snapshot::encode(&map, meta).unwrap()).unwrap();
        let mapped = MappedSnapshot::open(&path).unwrap();
        let words = probes(n);
        let mut i = 0;
        g.bench_function(BenchmarkId::new("mmap-archive", n), |b| {
            b.iter(|| {
                i = (i + 1) % words.len();
                black_box(mapped.get(&words[i]))
            })
        });
        g.bench_function(BenchmarkId::new("std-hashmap", n), |b| {
            b.iter(|| {
                i = (i + 1) % words.len();
                black_box(map.get(words[i].as_str()).copied().unwrap_or(0))
            })
        });
    }
    g.finish();
}

fn over_http(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    let url = rt.block_on(async {
        let leader_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let leader_url = format!("http://{}", leader_l.local_addr().unwrap());
        let mut cfg = LeaderConfig::new(dir.path());
        cfg.max_body = 64 << 20;
        tokio::spawn(memdb::leader::run(leader_l, cfg, std::future::pending()));
        let text: Vec<String> = (0..n).map(|i| format!("word{i:07}")).collect();
        let leader = memdb::client::Client::new(&leader_url);
        leader.post_text(&text.join(" ")).await.unwrap();
        let replica_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", replica_l.local_addr().unwrap());
        tokio::spawn(memdb::replica::network::run(
            replica_l,
            ReplicaConfig::new(leader_url),
            std::future::pending(),
        ));
        let client = memdb::client::Client::new(&url);
        while client.wordcount(&["word0000001"], None).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        url
    });
    let client = memdb::client::Client::new(&url);
    let words = probes(n);
    let mut i = 0;
    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function(BenchmarkId::new("http-network-replica", n), |b| {
        b.iter(|| {
            i = (i + 1) % words.len();
            rt.block_on(client.wordcount(&[words[i].as_str()], None))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, in_memory, over_http);
criterion_main!(benches);
