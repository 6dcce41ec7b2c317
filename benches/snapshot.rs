//! Snapshot cost vs table size: encode (rkyv), publish (write + fsync + rename), and a
//! replica's one-time validation of a new file; and what a publication costs now, a
//! delta of changed words over a large base, beside a whole base's rewrite.
//!
//!     cargo bench --bench snapshot
//!     cargo bench --bench snapshot -- delta      # only the delta group (builds a 10M base)

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

/// Publishing `changed` words (half already in the base, half new) over a base of
/// `base` words: what the leader's publisher does every interval; and applying them
/// to the table's live layer, each word's old count read from the mapped base (the
/// leader's first write of a word after each publication).
fn delta(c: &mut Criterion) {
    use criterion::BatchSize;
    use memdb::storage::counts::CountMap;
    use memdb::storage::delta::memory_over_file;
    use memdb::storage::layered::Layered;
    use memdb::storage::mapped::{MappedSnapshot, MappedState};
    use std::sync::Arc;
    let mut g = c.benchmark_group("delta");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (base_words, changed) in [(1_000_000usize, 100_000usize), (10_000_000, 100_000)] {
        let dir = tempfile::tempdir().unwrap();
        let base: CountMap = (0..base_words)
            .map(|i| (format!("word{i:08}"), (i as u64 % 1000) + 1))
            .collect();
        let staged =
            snapshot::stage(dir.path(), snapshot::TEMP_NAME, META, None, base.iter()).unwrap();
        let path = snapshot::install(dir.path(), &staged, snapshot::FILE_NAME).unwrap();
        drop(base);
        let files = MappedState::base(Arc::new(MappedSnapshot::open(&path).unwrap()));
        let deltas: Vec<(String, u64)> = (0..changed)
            .map(|i| {
                // Every other word is new; the rest are spread over the base.
                if i % 2 == 0 {
                    (format!("new{i:08}"), 1)
                } else {
                    (format!("word{:08}", i * (base_words / changed)), 3)
                }
            })
            .collect();
        let mut table = Layered::new(files.clone(), 0);
        table.apply(&deltas, 1);
        let lower = table.seal();
        let sealed = lower.sealed.last().unwrap().clone();
        let head = *files.base.header();
        let id = format!("{changed}-over-{base_words}");
        g.bench_function(BenchmarkId::new("publish", &id), |b| {
            b.iter(|| {
                let base_ref = snapshot::BaseRef {
                    checksum: head.checksum,
                    seq: head.seq,
                    total_words: sealed.words,
                    digest: sealed.digest,
                };
                let staged = snapshot::stage(
                    dir.path(),
                    snapshot::DELTA_TEMP_NAME,
                    META,
                    Some(base_ref),
                    memory_over_file(&sealed.map, None),
                )
                .unwrap();
                snapshot::install(dir.path(), &staged, snapshot::DELTA_NAME).unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("apply", &id), |b| {
            b.iter_batched(
                || Layered::new(files.clone(), 0),
                |mut t| {
                    t.apply(&deltas, 1);
                    t
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench, delta);
criterion_main!(benches);
