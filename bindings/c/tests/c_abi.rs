//! The C ABI: the committed header is what cbindgen makes of the code, and a C program
//! compiled against it (and linked to the cdylib) reads published files correctly and
//! gets the documented status for every bad argument.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use memdb::storage::snapshot::{self, Meta};
use memdb::storage::table::WordMap;
use memdb::words::Tokenizer;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_committed_header_matches_the_code() {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen reads src/lib.rs")
        .write(&mut made);
    let path = dir.join("include/memdb.h");
    if std::env::var_os("MEMDB_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == made,
        "include/memdb.h differs from what cbindgen makes of src/lib.rs; regenerate it \
         with MEMDB_UPDATE_HEADER=1 cargo test -p memdb-c the_committed_header"
    );
}

fn publish(dir: &Path, value: u64, seq: u64) {
    let mut m: WordMap = (0..10).map(|i| (format!("w{i}"), value)).collect();
    m.insert("top".into(), 9);
    m.insert("topper".into(), 7);
    let meta = Meta {
        tokenizer: Tokenizer::Unicode,
        seq,
        incarnation: memdb::protocol::Incarnation::from_raw(5).unwrap(),
    };
    snapshot::publish(dir, &snapshot::encode(&m, meta).unwrap()).unwrap();
}

/// The directory the cdylib was built in: this test binary is in its `deps/`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    assert!(
        dir.join("libmemdb_c.so").exists(),
        "libmemdb_c.so is not in {}",
        dir.display()
    );
    dir
}

/// Compiles the C source `src` into `exe` against the header and the cdylib.
fn compile(src: &Path, exe: &Path) {
    let libs = lib_dir();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(exe)
        .arg(src)
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg("-L")
        .arg(&libs)
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .arg("-lmemdb_c")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
    assert!(built.success(), "{} did not compile", src.display());
}

#[test]
fn the_documented_c_example_compiles_and_runs() {
    let doc = std::fs::read_to_string(crate_dir().join("../../docs/readers.md")).unwrap();
    let block = doc
        .split("```c\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a ```c block in docs/readers.md");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    publish(&data, 4, 1);
    let src = tmp.path().join("example.c");
    std::fs::write(&src, format!("{block}\n")).unwrap();
    let exe = tmp.path().join("example");
    compile(&src, &exe);
    let out = Command::new(&exe)
        .arg(&data)
        .args(["W1", "nothing"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "W1 4\nnothing 0\ntop top 9\ntop topper 7\ntop w0 4\nseq 1\n"
    );
}

#[test]
fn a_c_program_reads_counts_and_gets_a_status_for_every_bad_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&empty).unwrap();
    publish(&data, 4, 1);
    let exe = tmp.path().join("reader_test");
    compile(&crate_dir().join("tests/reader_test.c"), &exe);
    let mut child = Command::new(&exe)
        .arg(&data)
        .arg(tmp.path().join("missing"))
        .arg(&empty)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    if first.as_deref() == Some("wait 2") {
        publish(&data, 5, 2);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(first.as_deref(), Some("wait 2"));
    assert!(
        status.success(),
        "the C test failed ({status}); its stderr is above"
    );
    assert_eq!(rest, ["ok"]);
}
