//! Snapshot cost vs table size: encode (rkyv), publish (write + fsync + rename), and a
//! replica's one-time validation of a new file.
//!
//!     cargo bench --bench snapshot

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use memdb::storage::snapshot::{self, Meta};
use memdb::storage::table::WordMap;
use memdb::words::Tokenizer;

fn table(n: usize) -> WordMap {
    (0..n)
        .map(|i| (format!("word{i:07}"), (i as u64 % 1000) + 1))
        .collect()
}

const META: Meta = Meta {
    tokenizer: Tokenizer::Unicode,
    seq: 1,
    incarnation: memdb::protocol::Incarnation::from_raw(7).unwrap(),
};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    for n in [10_000usize, 100_000, 1_000_000] {
        let map = table(n);
        g.bench_with_input(BenchmarkId::new("encode", n), &map, |b, m| {
            b.iter(|| black_box(snapshot::encode(m, META).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("encode+publish", n), &map, |b, m| {
            b.iter(|| {
                let img = snapshot::encode(m, META).unwrap();
                snapshot::publish(dir.path(), &img).unwrap()
            })
        });
        let img = snapshot::encode(&map, META).unwrap();
        g.bench_with_input(BenchmarkId::new("validate", n), &img, |b, img| {
            b.iter(|| black_box(snapshot::validate(img).unwrap().0))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
