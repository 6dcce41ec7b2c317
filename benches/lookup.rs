//! One word's lookup three ways: in the mapped rkyv archive (a local replica), in a std
//! HashMap (a network replica's table), and as an HTTP GET to a network replica on
//! loopback (what a client of a network replica pays); and `/top?n=100` beside a
//! one-word `/wordcount` on each node kind's data at 10M words.
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
        let mut rc = ReplicaConfig::new(leader_url);
        rc.data_dir = Some(dir.path().join("replica"));
        tokio::spawn(memdb::replica::network::routes::run(
            replica_l,
            rc,
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

/// What a local replica does now: a probe in the mapped delta, then in the mapped base,
/// over a 10M-word base with a 100k-word delta; beside the base alone at the same size.
fn base_and_delta(c: &mut Criterion) {
    use memdb::storage::counts::CountMap;
    use memdb::storage::mapped::MappedState;
    use std::sync::Arc;
    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000_000;
    let meta = Meta {
        tokenizer: Tokenizer::Unicode,
        seq: 1,
        incarnation: memdb::protocol::Incarnation::from_raw(1).unwrap(),
    };
    let base: CountMap = (0..n)
        .map(|i| (format!("word{i:07}"), (i as u64 % 1000) + 1))
        .collect();
    let staged = snapshot::stage(dir.path(), snapshot::TEMP_NAME, meta, None, base.iter()).unwrap();
    snapshot::install(dir.path(), &staged, snapshot::FILE_NAME).unwrap();
    // Every hundredth word changed, and as many new ones.
    let changed: Vec<(String, u64)> = (0..n / 100)
        .map(|i| (format!("word{:07}", i * 100), 5))
        .chain((0..n / 200).map(|i| (format!("new{i:07}"), 1)))
        .collect();
    let base_ref = snapshot::BaseRef {
        checksum: staged.header.checksum,
        seq: 1,
        total_words: (n + n / 200) as u64,
        digest: 0,
    };
    let dmeta = Meta { seq: 2, ..meta };
    let delta = snapshot::stage(
        dir.path(),
        snapshot::DELTA_TEMP_NAME,
        dmeta,
        Some(base_ref),
        changed.iter().map(|(w, c)| (w.as_str(), *c)),
    )
    .unwrap();
    snapshot::install(dir.path(), &delta, snapshot::DELTA_NAME).unwrap();
    let state = Arc::new(
        MappedState::open(dir.path(), u64::MAX, &|| false, &[])
            .unwrap()
            .unwrap(),
    );
    assert!(state.delta.is_some(), "the delta pairs with its base");
    let words = probes(n);
    let mut i = 0;
    g.bench_function(BenchmarkId::new("mmap-base+delta", n), |b| {
        b.iter(|| {
            i = (i + 1) % words.len();
            black_box(state.get(&words[i]))
        })
    });
    g.bench_function(BenchmarkId::new("mmap-archive", n), |b| {
        b.iter(|| {
            i = (i + 1) % words.len();
            black_box(state.base.get(&words[i]))
        })
    });
    // The leader's in-memory table at the same size: what a DRAM-bound probe costs.
    g.bench_function(BenchmarkId::new("count-map", n), |b| {
        b.iter(|| {
            i = (i + 1) % words.len();
            black_box(base.get(&words[i]))
        })
    });
    g.finish();

    // GET /top?n=100 beside a one-word GET /wordcount, the answer's JSON included
    // (the HTTP around both is the same): a local replica's mapped base and delta, and
    // the table a leader or network replica keeps, at rest and right after a 4 KiB
    // write (whose raises the next /top settles).
    use memdb::server::parse::{lookup_body, top_body};
    let mut g = c.benchmark_group("top-vs-wordcount");
    g.measurement_time(Duration::from_secs(3));
    let tok = Tokenizer::Unicode;
    g.bench_function(BenchmarkId::new("wordcount-1/mmap-base+delta", n), |b| {
        b.iter(|| {
            i = (i + 1) % words.len();
            black_box(lookup_body(tok, &[&words[i]], |w| state.get(w)).unwrap())
        })
    });
    g.bench_function(BenchmarkId::new("top-100/mmap-base+delta", n), |b| {
        b.iter(|| black_box(top_body(&state.top_words(100, ""))))
    });
    let mut table = memdb::storage::table::Table::from_parts(base, 1);
    g.bench_function(BenchmarkId::new("wordcount-1/table", n), |b| {
        b.iter(|| {
            i = (i + 1) % words.len();
            black_box(lookup_body(tok, &[&words[i]], |w| table.get(w)).unwrap())
        })
    });
    g.bench_function(BenchmarkId::new("top-100/table", n), |b| {
        b.iter(|| black_box(table.with_top_words(100, "", top_body)))
    });
    // A batch of 400 words, a quarter of them raised into the top list.
    let batch: Vec<(String, u64)> = (0..400)
        .map(|j| {
            (
                format!("word{:07}", (j * 24_989) % n),
                if j % 4 == 0 { 2000 } else { 1 },
            )
        })
        .collect();
    let mut seq = 1;
    g.bench_function(BenchmarkId::new("write-then-wordcount-1/table", n), |b| {
        b.iter(|| {
            seq += 1;
            table.apply(&batch, seq);
            i = (i + 1) % words.len();
            black_box(lookup_body(tok, &[&words[i]], |w| table.get(w)).unwrap())
        })
    });
    g.bench_function(BenchmarkId::new("write-then-top-100/table", n), |b| {
        b.iter(|| {
            seq += 1;
            table.apply(&batch, seq);
            black_box(table.with_top_words(100, "", top_body))
        })
    });
    g.finish();
}

criterion_group!(benches, in_memory, base_and_delta, over_http);
criterion_main!(benches);
