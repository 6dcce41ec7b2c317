//! Embedded readers (`memdb::reader`): the leader's files mapped in the test's own
//! process, followed over the socket, and every error the API documents.

use std::path::Path;
use std::time::Duration;

use memdb::reader::{Error, Follow, Options, Reader};
use memdb::storage::snapshot::{self, Meta};
use memdb::storage::table::WordMap;
use memdb::words::Tokenizer;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(10);

fn sample(value: u64, words: usize) -> WordMap {
    (0..words).map(|i| (format!("w{i}"), value)).collect()
}

fn publish(dir: &Path, value: u64, seq: u64) {
    let meta = Meta {
        tokenizer: Tokenizer::Unicode,
        seq,
        incarnation: memdb::protocol::Incarnation::from_raw(77).unwrap(),
    };
    snapshot::publish(dir, &snapshot::encode(&sample(value, 10), meta).unwrap()).unwrap();
}

/// Waits (with a deadline) until `n` reader threads run: a thread names itself once it
/// runs, a moment after it is spawned, and until then has its parent's name.
fn wait_reader_threads(n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while reader_threads() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} reader threads, not {n}",
            reader_threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The names of this process's threads that a reader starts.
fn reader_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("memdb-reader"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_counts_what_the_leader_counted_and_follows_it_through_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &["--snapshot-interval", "20ms", "--compact-after", "64"],
    );
    leader
        .client()
        .post_text("Hello hello world")
        .await
        .unwrap();
    let seq = leader.seq().await;
    let reader = Reader::open(dir.path()).unwrap();
    assert!(reader.wait_for(seq, WAIT).unwrap() >= seq);
    assert_eq!(
        reader.count("Hello").unwrap(),
        2,
        "normalised as the leader counts"
    );
    assert_eq!(
        reader.count_raw("Hello").unwrap(),
        0,
        "raw: exactly as written"
    );
    assert_eq!(reader.count_raw("hello").unwrap(), 2);
    assert_eq!(reader.counts(&["world", "absent"]).unwrap(), vec![1, 0]);
    assert_eq!(
        reader.top(2, "").unwrap(),
        vec![("hello".to_owned(), 2), ("world".to_owned(), 1)]
    );
    assert_eq!(reader.top(10, "W").unwrap(), vec![("world".to_owned(), 1)]);
    let inc = leader.health().await["incarnation"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reader.incarnation().unwrap().to_string(), inc);

    // Enough distinct words for several compactions while the reader follows.
    concurrent_posts(&leader, 300, |t, i| format!("w{t}x{i} common")).await;
    let seq = leader.seq().await;
    let mapped = tokio::task::block_in_place(|| reader.wait_for(seq, WAIT)).unwrap();
    assert!(mapped >= seq);
    let table = leader.table().await;
    assert!(table.len() > 300, "{} words", table.len());
    let snap = reader.snapshot().unwrap();
    assert_eq!(snap.words(), table.len() as u64);
    for (word, count) in &table {
        assert_eq!(snap.count_raw(word), *count, "{word}");
    }
    let st = reader.status();
    assert!(st.socket_connected, "{st:?}");
    assert!(st.loads.socket > 0, "{st:?}");
    assert_eq!(st.rejected, 0, "{st:?}");
    assert!(
        leader.health().await["snapshot"]["base_seq"]
            .as_u64()
            .unwrap()
            > 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_snapshot_keeps_its_state_while_the_reader_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    leader.client().post_text("kept").await.unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    let seq = leader.seq().await;
    tokio::task::block_in_place(|| reader.wait_for(seq, WAIT)).unwrap();
    let held = reader.snapshot().unwrap();
    for _ in 0..3 {
        leader.client().post_text("kept kept").await.unwrap();
    }
    let seq = leader.seq().await;
    tokio::task::block_in_place(|| reader.wait_for(seq, WAIT)).unwrap();
    assert_eq!(reader.count("kept").unwrap(), 7);
    assert_eq!(
        held.count("kept").unwrap(),
        1,
        "the held state is unchanged"
    );
    assert!(held.seq() < reader.seq());
}

#[test]
fn a_reader_following_by_hand_maps_only_on_refresh_and_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1, 1);
    let reader = Reader::open_with(Options::new(dir.path()), Follow::ByHand).unwrap();
    assert_eq!(reader_threads(), 0, "by hand: no thread");
    assert_eq!(reader.count("w3").unwrap(), 1);
    publish(dir.path(), 2, 2);
    assert_eq!(
        reader.count("w3").unwrap(),
        1,
        "nothing moves without a refresh"
    );
    assert!(reader.refresh().unwrap());
    assert_eq!((reader.count("w3").unwrap(), reader.seq()), (2, 2));
    assert!(!reader.refresh().unwrap(), "the same files: nothing to do");

    // An older state of the same leader renamed into place is refused.
    publish(dir.path(), 1, 1);
    let e = reader.refresh().unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt(m) if m.contains("older")),
        "{e}"
    );
    assert_eq!((reader.count("w3").unwrap(), reader.seq()), (2, 2));

    // A corrupt file is refused; the last good state keeps answering.
    let mut bad = std::fs::read(dir.path().join(snapshot::FILE_NAME)).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    snapshot::publish(dir.path(), &bad).unwrap();
    assert!(matches!(reader.refresh(), Err(Error::Corrupt(_))));
    assert_eq!(reader.count("w3").unwrap(), 2);

    // By hand, wait_for refreshes while it waits: a good state published meanwhile
    // is found; none is a timeout that says what is mapped.
    let e = reader.wait_for(9, Duration::from_millis(50)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                want: 9,
                have: 2,
                ..
            }
        ),
        "{e}"
    );
    let d = dir.path().to_owned();
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        publish(&d, 3, 3);
    });
    assert_eq!(reader.wait_for(3, WAIT).unwrap(), 3);
    publisher.join().unwrap();
    assert_eq!(reader.count("w3").unwrap(), 3);
}

#[test]
fn open_says_what_is_wrong_with_the_directory_and_lookups_with_the_word() {
    let base = tempfile::tempdir().unwrap();
    let missing = base.path().join("nope");
    assert!(matches!(Reader::open(&missing), Err(Error::NotFound(p)) if p == missing));
    let empty = base.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = Reader::open(&empty).err().unwrap();
    assert!(matches!(e, Error::NotMemdb(_)), "{e}");
    assert!(e.to_string().contains("not a memdb data directory"), "{e}");
    let file = base.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(Reader::open(&file), Err(Error::NotMemdb(_))));

    // Only a corrupt base: nothing good to serve, so open fails.
    let corrupt = base.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join(snapshot::FILE_NAME), b"memdb? no").unwrap();
    let e = Reader::open(&corrupt).err().unwrap();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");

    // A leader's directory before its first publication (its history, no base yet):
    // opens, and lookups say it is not ready.
    let early = base.path().join("early");
    std::fs::create_dir(&early).unwrap();
    std::fs::write(early.join(memdb::storage::history::FILE_NAME), b"{}").unwrap();
    let r = Reader::open_with(Options::new(&early), Follow::ByHand).unwrap();
    assert!(matches!(r.count("a"), Err(Error::NotReady(_))));
    assert!(matches!(r.top(1, ""), Err(Error::NotReady(_))));
    assert_eq!(r.seq(), 0);
    assert!(r.incarnation().is_none());

    let good = base.path().join("good");
    std::fs::create_dir(&good).unwrap();
    publish(&good, 4, 1);
    let r = Reader::open_with(Options::new(&good), Follow::ByHand).unwrap();
    for bad in ["", "two words", "!!!"] {
        let e = r.count(bad).unwrap_err();
        assert!(matches!(&e, Error::Word { word, .. } if word == bad), "{e}");
    }
    assert!(matches!(r.counts(&["w1", "a b"]), Err(Error::Word { .. })));
    assert_eq!(r.counts(&["W1", "w2"]).unwrap(), vec![4, 4]);
}

#[test]
fn the_follower_threads_end_with_the_last_clone() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1, 1);
    let reader = Reader::open(dir.path()).unwrap();
    wait_reader_threads(2);
    let clone = reader.clone();
    drop(reader);
    // A clone still follows. (The directory watch's own thread starts with the name of
    // the thread that made it, for a moment: so wait, rather than count once.)
    wait_reader_threads(2);
    assert_eq!(clone.count("w0").unwrap(), 1);
    // The poll finds a new state without the socket (there is no leader here).
    publish(dir.path(), 5, 2);
    let d = Duration::from_secs(10);
    assert_eq!(clone.wait_for(2, d).unwrap(), 2);
    assert_eq!(clone.count("w0").unwrap(), 5);
    drop(clone);
    wait_reader_threads(0);
}

/// The fenced block of `lang` in `docs/readers.md` that contains `marker`.
pub fn doc_block(lang: &str, marker: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/readers.md")).unwrap();
    let open = format!("```{lang}\n");
    doc.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("no ```{lang} block with {marker:?} in docs/readers.md"))
        .to_owned()
        + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_rust_example_is_the_example_file_and_it_runs() {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/embedded_reader.rs"
    ))
    .unwrap();
    assert_eq!(
        doc_block("rust", "fn main"),
        file,
        "docs/readers.md quotes the example"
    );
    let example = example();

    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(dir.path(), &["--snapshot-interval", "20ms"]);
    leader
        .client()
        .post_text("Hello hello world")
        .await
        .unwrap();
    let seq = published(&leader).await;
    let out = std::process::Command::new(&example)
        .arg(dir.path())
        .args(["Hello", "world"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        format!("Hello 2\nworld 1\ntop hello 2\ntop world 1\nseq {seq} of 2 words\n")
    );
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn group(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().gid()
}

/// The example reader run as another user (root only: it sets the uid and gid).
fn run_as(uid: u32, gid: u32, dir: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(example())
        .arg(dir)
        .arg("shared")
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_group_may_map_the_state_and_read_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    {
        // Others may pass through (not list) the temp dir, as /var/lib is.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let dir = tmp.path().join("data");
    let root = nix::unistd::getuid().is_root();
    // As root, a group nobody else is in; otherwise this user's own group.
    let gid = if root {
        4242
    } else {
        nix::unistd::getgid().as_raw()
    };
    let mut leader = Node::leader(
        &dir,
        &[
            "--snapshot-interval",
            "20ms",
            "--reader-group",
            &gid.to_string(),
        ],
    );
    leader.client().post_text("shared shared").await.unwrap();
    published(&leader).await;
    let base = dir.join(snapshot::FILE_NAME);
    let socket = dir.join(memdb::protocol::SOCKET_NAME);
    assert_eq!((mode(&dir), group(&dir)), (0o2750, gid));
    assert_eq!((mode(&base), group(&base)), (0o640, gid));
    assert_eq!(mode(&socket), 0o660);
    // The logs and the lock are the owner's alone.
    let mut private = 0;
    for entry in walk(&dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        let published = name.ends_with(".memdb") || name == "snapshot.checked";
        if entry.is_file() && !published {
            assert_eq!(mode(&entry) & 0o077, 0, "{} is shared", entry.display());
            private += 1;
        }
    }
    assert!(private > 0, "the lock and the log at least");

    if root {
        let ok = run_as(65534, gid, &dir);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(String::from_utf8_lossy(&ok.stdout).starts_with("shared 2\n"));
        let refused = run_as(65534, gid + 1, &dir);
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("ermission denied"), "{err}");
    } else {
        eprintln!("not root: the run as another user is left out (CI runs it as root)");
    }

    // Started again without the flag: owner-only again.
    leader.terminate();
    let idx = leader
        .args
        .iter()
        .position(|a| a == "--reader-group")
        .unwrap();
    leader.args.drain(idx..idx + 2);
    leader.restart();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&base), 0o600);
    assert_eq!(mode(&socket), 0o600);
    if root {
        let refused = run_as(65534, gid, &dir);
        assert!(!refused.status.success());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_while_files_are_replaced_see_whole_states_only() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &["--snapshot-interval", "1ms", "--compact-after", "16"],
    );
    // Every post adds one to each of 50 words (and some new words, so that deltas and
    // compactions come and go): in any whole state the 50 counts are equal.
    let words: Vec<String> = (0..50).map(|i| format!("same{i}")).collect();
    leader.client().post_text(&words.join(" ")).await.unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looker = {
        let (reader, stop, words) = (reader.clone(), stop.clone(), words.clone());
        std::thread::spawn(move || {
            let (mut last, mut looks) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(counts) = reader.counts(&words) else {
                    continue;
                };
                assert!(counts.iter().all(|&c| c == counts[0]), "torn: {counts:?}");
                assert!(counts[0] >= last, "went back from {last} to {}", counts[0]);
                last = counts[0];
                looks += 1;
            }
            (last, looks)
        })
    };
    for i in 0..150 {
        let text = format!("{} new{i}a new{i}b", words.join(" "));
        leader.client().post_text(&text).await.unwrap();
    }
    let seq = leader.seq().await;
    tokio::task::block_in_place(|| reader.wait_for(seq, WAIT)).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (last, looks) = looker.join().unwrap();
    assert!(last <= 151, "{last}");
    assert_eq!(reader.counts(&words).unwrap(), vec![151; 50]);
    assert!(looks > 100, "{looks} looks");
    let st = reader.status();
    assert!(
        st.loads.socket + st.loads.watch + st.loads.poll > 10,
        "{st:?}"
    );
}

/// `examples/embedded_reader`, built beside this test binary.
fn example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/embedded_reader");
    assert!(example.exists(), "{} is not built", example.display());
    example
}

/// Waits until the leader has published what it holds; its seq.
async fn published(leader: &Node) -> u64 {
    let seq = leader.seq().await;
    eventually("published", || async {
        (leader.health().await["snapshot"]["seq"].as_u64() >= Some(seq)).then_some(())
    })
    .await;
    seq
}

/// An application's reader is listed by the leader as `kind: reader`, under this
/// process's pid, with the seq it mapped, and leaves the list when it stops following;
/// one that pauses falls behind past the limit and is still never a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_lists_an_embedded_reader_and_never_counts_it_as_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &[
            "--snapshot-interval",
            "20ms",
            "--local-lag-intervals",
            "1",
            "--local-lag-floor",
            "100ms",
        ],
    );
    let seq = leader.client().post_text("one").await.unwrap().seq;
    let reader = Reader::open(dir.path()).unwrap();
    assert!(reader.wait_for(seq, WAIT).unwrap() >= seq);
    let me = u64::from(std::process::id());
    let listed = |h: &serde_json::Value| {
        h["local_replicas"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["pid"] == me).cloned())
    };
    let r = eventually("the reader to be listed at its seq", || async {
        let r = listed(&leader.health().await)?;
        (r["seq"].as_u64()? >= seq).then_some(r)
    })
    .await;
    assert_eq!(r["kind"], "reader", "{r}");
    assert!(r["url"].is_null(), "{r}");
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
    // It stops following (its connection closes: it leaves the list), and a reader
    // that follows but falls behind stays out of the problems.
    reader.stop();
    eventually("the stopped reader to leave the list", || async {
        listed(&leader.health().await).is_none().then_some(())
    })
    .await;
    // A reader that reports one load and then none (an application that paused) falls
    // behind past the limit: listed with its lag, never a problem.
    let mut paused =
        std::os::unix::net::UnixStream::connect(dir.path().join("memdb.sock")).unwrap();
    std::io::Write::write_all(
        &mut paused,
        format!("hello reader 1 -\nloaded {seq} 10\n").as_bytes(),
    )
    .unwrap();
    for i in 0..3 {
        leader
            .client()
            .post_text(&format!("more{i}"))
            .await
            .unwrap();
    }
    let h = eventually("the paused reader to lag past the limit", || async {
        let h = leader.health().await;
        let r = listed(&h)?;
        (r["lag_ms"].as_u64()? > 300 && r["lag"].as_u64()? >= 1).then_some(h)
    })
    .await;
    let (code, h2) = leader.client().health().await.unwrap();
    assert_eq!(code, 200, "a reader is never a problem: {h} {h2}");
    assert!(h2["problems"].as_array().unwrap().is_empty(), "{h2}");
    drop(paused);
}

/// What a reader sends a leader of each protocol: to one of protocol 1 (which says no
/// `proto` line and cuts off a line over 64 bytes) only `want N`; to one of protocol 2
/// first its `hello`.
#[test]
fn a_reader_says_hello_only_to_a_leader_of_protocol_2() {
    use std::io::{BufRead, BufReader, Write};
    for proto in [None, Some(2)] {
        let dir = tempfile::tempdir().unwrap();
        let listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("memdb.sock")).unwrap();
        let reader = Reader::unchecked(Options::new(dir.path()), Follow::Background).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        if let Some(p) = proto {
            writeln!(conn, "proto {p}").unwrap();
        }
        writeln!(conn, "seq 0").unwrap();
        // A waiter asks for seq 5 (nothing is published: it times out).
        assert!(matches!(
            reader.wait_for(5, Duration::from_millis(300)),
            Err(Error::Timeout { .. })
        ));
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut lines = BufReader::new(conn.try_clone().unwrap());
        let mut got = Vec::new();
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            got.push(line.trim_end().to_owned());
            line.clear();
        }
        match proto {
            None => assert_eq!(got, vec!["want 5".to_owned()], "to a protocol-1 leader"),
            Some(_) => {
                let hello = format!("hello reader {} -", env!("CARGO_PKG_VERSION"));
                assert!(got.contains(&hello), "{got:?}");
                assert!(got.contains(&"want 5".to_owned()), "{got:?}");
                assert!(got.iter().all(|l| l.len() < 512), "{got:?}");
            }
        }
        drop(reader);
    }
}
