//! Counts from a leader's data directory, mapped in this process:
//! `cargo run --release --example embedded_reader -- DATA_DIR WORD...`
use std::time::Duration;

use memdb::reader::Reader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: embedded_reader DATA_DIR WORD...")?;
    let reader = Reader::open(&dir)?;
    // A leader publishes its first state at start; wait for it at most 5 s.
    reader.wait_for(1, Duration::from_secs(5))?;
    for word in args {
        println!("{word} {}", reader.count(&word)?);
    }
    // One state held: every lookup on it sees the same seq.
    let snapshot = reader.snapshot()?;
    for (word, count) in snapshot.top(3, "") {
        println!("top {word} {count}");
    }
    println!("seq {} of {} words", snapshot.seq(), snapshot.words());
    Ok(())
}
