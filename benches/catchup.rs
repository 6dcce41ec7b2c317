//! What it costs the leader to resend batches a network replica missed: from the
//! in-memory backlog, and from the write-ahead log on disk (the log is read and checked
//! record by record). Both serve 100 000 batches of 10 words, in the same pushes of at
//! most 10 000 batches / 8 MiB the senders make.
//!
//!     cargo bench --bench catchup

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use memdb::leader::backlog::{Backlog, Since};
use memdb::storage::batch::Batch;
use memdb::storage::log::{FsyncPolicy, LogReader, Wal, WalOptions};

const BATCHES: u64 = 100_000;
const PUSH_BATCHES: usize = 10_000;
const PUSH_BYTES: usize = 8 << 20;

fn batch(seq: u64) -> Arc<Batch> {
    Arc::new(Batch {
        seq,
        deltas: (0..10)
            .map(|i| (format!("word{}", (seq * 7 + i) % 5000), 1 + i))
            .collect(),
        digest: Some(seq),
    })
}

fn catchup(c: &mut Criterion) {
    let batches: Vec<Arc<Batch>> = (1..=BATCHES).map(batch).collect();
    let mut backlog = Backlog::new(0, BATCHES as usize, usize::MAX);
    for b in &batches {
        backlog.push(b.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(
            dir.path(),
            0,
            WalOptions {
                fsync: FsyncPolicy::No,
                ..WalOptions::default()
            },
        )
        .unwrap();
        for b in &batches {
            wal.append(b.clone());
        }
        wal.sync().unwrap();
    }

    let mut g = c.benchmark_group("resend 100k batches");
    g.throughput(Throughput::Elements(BATCHES));
    g.sample_size(10);
    g.bench_function("backlog", |b| {
        b.iter(|| {
            let mut after = 0;
            while after < BATCHES {
                match backlog.since(after, PUSH_BATCHES, PUSH_BYTES) {
                    Since::Batches(v) => after = v.last().unwrap().seq,
                    other => panic!("{other:?}"),
                }
            }
            black_box(after)
        })
    });
    g.bench_function("write-ahead log", |b| {
        b.iter(|| {
            let mut reader = LogReader::new(dir.path());
            let mut after = 0;
            while after < BATCHES {
                let v = reader.read_after(after, PUSH_BATCHES, PUSH_BYTES).unwrap();
                after = v.last().unwrap().seq;
            }
            black_box(after)
        })
    });
    g.finish();
}

criterion_group!(benches, catchup);
criterion_main!(benches);
