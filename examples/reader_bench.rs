//! The embedded reader's lookup against an HTTP GET on a local replica, from Rust
//! (`scripts/bench_readers.py` runs it): `reader_bench DATA_DIR WORDS_FILE LOOKUPS
//! [REPLICA_URL]`. Prints one JSON line per way: the median of single lookups timed
//! one by one, and lookups per second on one thread (one core).
use std::time::Instant;

use memdb::reader::Reader;

fn report(how: &str, mut each_ns: Vec<u64>, per_sec: f64) {
    each_ns.sort_unstable();
    let p50 = each_ns[each_ns.len() / 2];
    let p99 = each_ns[each_ns.len() * 99 / 100];
    println!(
        "{{\"lang\":\"rust\",\"how\":\"{how}\",\"p50_ns\":{p50},\"p99_ns\":{p99},\"per_sec\":{per_sec:.0}}}"
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, words, n, rest @ ..] = &args[..] else {
        return Err("usage: reader_bench DATA_DIR WORDS_FILE LOOKUPS [REPLICA_URL]".into());
    };
    let words: Vec<String> = std::fs::read_to_string(words)?
        .lines()
        .map(str::to_owned)
        .collect();
    let n: usize = n.parse()?;
    let reader = Reader::open(dir)?;
    let mut sum = 0u64;
    // Warm the pages the words are on, as a serving process would have.
    for w in &words {
        sum += reader.count(w)?;
    }
    let mut each = Vec::with_capacity(n);
    for i in 0..n {
        let w = &words[i % words.len()];
        let t = Instant::now();
        sum += reader.count(w)?;
        each.push(t.elapsed().as_nanos() as u64);
    }
    let t = Instant::now();
    for i in 0..n {
        sum += reader.count(&words[i % words.len()])?;
    }
    let per_sec = n as f64 / t.elapsed().as_secs_f64();
    report("in-process", each, per_sec);

    if let Some(url) = rest.first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let m = (n / 20).max(1000);
        let (each, per_sec) = rt.block_on(async {
            let mut each = Vec::with_capacity(m);
            let start = Instant::now();
            for i in 0..m {
                let w = &words[i % words.len()];
                let t = Instant::now();
                let body = http
                    .get(format!("{url}/wordcount?word={w}"))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                sum += body.len() as u64;
                each.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, reqwest::Error>((each, m as f64 / start.elapsed().as_secs_f64()))
        })?;
        report("http-get", each, per_sec);
    }
    eprintln!("checksum {sum}");
    Ok(())
}
