//! The C ABI of memdb's embedded reader: `memdb.h` (generated from this file by
//! cbindgen, committed at `include/memdb.h`; a test checks it matches) and
//! `libmemdb_c.so` / `libmemdb_c.a`.
//!
//! Every function checks its pointers and lengths, returns a status (`MEMDB_OK` or a
//! negative `MEMDB_ERR_*`), and says what went wrong in [`memdb_last_error`]. No
//! panic crosses the boundary: one is caught and reported as `MEMDB_ERR_PANIC`. A
//! reader may be used from several threads at once; only `memdb_close` must not race
//! with the other calls on the same reader.
#![allow(unsafe_code, non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use memdb::reader::{Error, Follow, Options, Reader};

/// Success.
pub const MEMDB_OK: i32 = 0;
/// A pointer was null, a length too large, or text was not UTF-8.
pub const MEMDB_ERR_ARGUMENT: i32 = -1;
/// The data directory does not exist.
pub const MEMDB_ERR_NOT_FOUND: i32 = -2;
/// The path is not a memdb data directory.
pub const MEMDB_ERR_NOT_MEMDB: i32 = -3;
/// The published files failed validation (the last good state keeps serving).
pub const MEMDB_ERR_CORRUPT: i32 = -4;
/// Nothing is published in the directory yet.
pub const MEMDB_ERR_NOT_READY: i32 = -5;
/// `memdb_wait_for` timed out.
pub const MEMDB_ERR_TIMEOUT: i32 = -6;
/// The text is not exactly one word under the leader's tokenizer.
pub const MEMDB_ERR_WORD: i32 = -7;
/// The directory could not be read, or the reader's threads could not start.
pub const MEMDB_ERR_IO: i32 = -8;
/// A caller's buffer is too small (the last error says how much is needed).
pub const MEMDB_ERR_BUFFER: i32 = -9;
/// A bug inside memdb (caught; the reader may still be used).
pub const MEMDB_ERR_PANIC: i32 = -10;

/// `memdb_open` flag: no background threads; the caller calls `memdb_refresh`.
pub const MEMDB_OPEN_BY_HAND: u32 = 1;

/// Longest word or prefix accepted (bytes).
pub const MEMDB_MAX_WORD: usize = 1 << 16;

/// An open reader (opaque).
pub struct memdb_reader {
    reader: Reader,
}

/// One word of `memdb_top`: `word` points into the caller's `words` buffer and is
/// NUL-terminated; `len` excludes the NUL.
#[repr(C)]
pub struct memdb_entry {
    pub word: *const c_char,
    pub len: usize,
    pub count: u64,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl Into<String>) {
    let mut msg = msg.into();
    msg.retain(|c| c != '\0');
    let c = CString::new(msg).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn fail(e: &Error) -> i32 {
    set_error(e.to_string());
    match e {
        Error::NotFound(_) => MEMDB_ERR_NOT_FOUND,
        Error::NotMemdb(_) => MEMDB_ERR_NOT_MEMDB,
        Error::Io { .. } => MEMDB_ERR_IO,
        Error::Corrupt(_) => MEMDB_ERR_CORRUPT,
        Error::NotReady(_) => MEMDB_ERR_NOT_READY,
        Error::Timeout { .. } => MEMDB_ERR_TIMEOUT,
        Error::Word { .. } => MEMDB_ERR_WORD,
    }
}

fn argument(msg: &str) -> i32 {
    set_error(msg);
    MEMDB_ERR_ARGUMENT
}

/// Runs `f`, turning a panic into `MEMDB_ERR_PANIC`.
fn guarded(f: impl FnOnce() -> i32) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(code) => code,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_error(format!("internal error (a bug in memdb): {what}"));
            MEMDB_ERR_PANIC
        }
    }
}

/// The text at `ptr` of `len` bytes, checked.
///
/// # Safety
/// `ptr` must be null or point to `len` readable bytes.
unsafe fn text<'a>(ptr: *const c_char, len: usize, what: &str) -> Result<&'a str, i32> {
    if ptr.is_null() {
        return Err(argument(&format!("{what} is NULL")));
    }
    if len > MEMDB_MAX_WORD {
        return Err(argument(&format!(
            "{what} is {len} bytes; at most {MEMDB_MAX_WORD}"
        )));
    }
    // SAFETY: non-null, and the caller promises `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|e| argument(&format!("{what} is not UTF-8: {e}")))
}

/// The reader behind `r`, checked.
///
/// # Safety
/// `r` must be null or a pointer `memdb_open` returned and `memdb_close` did not free.
unsafe fn reader<'a>(r: *const memdb_reader) -> Result<&'a Reader, i32> {
    if r.is_null() {
        return Err(argument("the reader is NULL"));
    }
    // SAFETY: the caller promises a live reader.
    Ok(unsafe { &(*r).reader })
}

/// The message of the last error on this thread ("" if none). Valid until the next
/// call into this library on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn memdb_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Opens the leader's data directory `data_dir` (NUL-terminated): maps the state
/// published there and, unless `flags` has `MEMDB_OPEN_BY_HAND`, follows the leader on
/// two background threads. Returns NULL on error (see `memdb_last_error`; `status`,
/// when not NULL, gets the code). An empty or foreign directory is an error; a
/// leader's directory before its first publication opens (lookups answer
/// `MEMDB_ERR_NOT_READY` until it publishes).
///
/// # Safety
/// `data_dir` must be NULL or a NUL-terminated string; `status` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_open(
    data_dir: *const c_char,
    flags: u32,
    status: *mut i32,
) -> *mut memdb_reader {
    let mut out: *mut memdb_reader = std::ptr::null_mut();
    let code = guarded(|| {
        if data_dir.is_null() {
            return argument("data_dir is NULL");
        }
        if flags & !MEMDB_OPEN_BY_HAND != 0 {
            return argument(&format!("unknown flags {flags:#x}"));
        }
        // SAFETY: non-null and NUL-terminated, as the caller promises.
        let dir = unsafe { CStr::from_ptr(data_dir) };
        let Ok(dir) = dir.to_str() else {
            return argument("data_dir is not UTF-8");
        };
        let follow = if flags & MEMDB_OPEN_BY_HAND != 0 {
            Follow::ByHand
        } else {
            Follow::Background
        };
        match Reader::open_with(Options::new(dir), follow) {
            Ok(reader) => {
                out = Box::into_raw(Box::new(memdb_reader { reader }));
                MEMDB_OK
            }
            Err(e) => fail(&e),
        }
    });
    if !status.is_null() {
        // SAFETY: non-null and writable, as the caller promises.
        unsafe { *status = code };
    }
    out
}

/// Closes a reader: stops its threads and unmaps its files. NULL is ignored.
///
/// # Safety
/// `r` must be NULL or a reader from `memdb_open` not closed before, and no other
/// thread may be using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_close(r: *mut memdb_reader) {
    if !r.is_null() {
        let _ = guarded(|| {
            // SAFETY: from Box::into_raw in memdb_open, freed once.
            drop(unsafe { Box::from_raw(r) });
            MEMDB_OK
        });
    }
}

/// The count of the word at `word` (`len` bytes, UTF-8, no NUL needed), normalised as
/// the leader counts (`Hello` finds `hello`), into `*count`. Text that is not exactly
/// one word is `MEMDB_ERR_WORD`.
///
/// # Safety
/// `r` a live reader; `word` `len` readable bytes; `count` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_count(
    r: *const memdb_reader,
    word: *const c_char,
    len: usize,
    count: *mut u64,
) -> i32 {
    // SAFETY: as the caller promises.
    unsafe { count_with(r, word, len, count, |rd, w| rd.count(w)) }
}

/// As `memdb_count`, with the word exactly as written (no normalisation).
///
/// # Safety
/// As `memdb_count`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_count_raw(
    r: *const memdb_reader,
    word: *const c_char,
    len: usize,
    count: *mut u64,
) -> i32 {
    // SAFETY: as the caller promises.
    unsafe { count_with(r, word, len, count, |rd, w| rd.count_raw(w)) }
}

/// # Safety
/// As `memdb_count`.
unsafe fn count_with(
    r: *const memdb_reader,
    word: *const c_char,
    len: usize,
    count: *mut u64,
    f: impl FnOnce(&Reader, &str) -> Result<u64, Error>,
) -> i32 {
    guarded(|| {
        // SAFETY: as the caller promises.
        let (rd, w) = match unsafe { (reader(r), text(word, len, "word")) } {
            (Ok(rd), Ok(w)) => (rd, w),
            (Err(c), _) | (_, Err(c)) => return c,
        };
        if count.is_null() {
            return argument("count is NULL");
        }
        match f(rd, w) {
            Ok(n) => {
                // SAFETY: non-null and writable, as the caller promises.
                unsafe { *count = n };
                MEMDB_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// The first `n` words by count (ties: the word that sorts first) that start with
/// `prefix` (`prefix_len` bytes; NULL with 0 for every word), written to `entries`
/// (room for `entries_cap`), their text NUL-terminated in `words` (`words_cap` bytes).
/// Returns how many entries were written (at most `n` and `entries_cap`), or a
/// negative status: `MEMDB_ERR_BUFFER` if `words` is too small (nothing usable is
/// written; the last error says how many bytes are needed).
///
/// # Safety
/// `r` a live reader; `prefix` NULL or `prefix_len` readable bytes; `entries`
/// `entries_cap` writable entries; `words` `words_cap` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_top(
    r: *const memdb_reader,
    n: usize,
    prefix: *const c_char,
    prefix_len: usize,
    entries: *mut memdb_entry,
    entries_cap: usize,
    words: *mut c_char,
    words_cap: usize,
) -> i64 {
    i64::from(guarded(|| {
        // SAFETY: as the caller promises.
        let rd = match unsafe { reader(r) } {
            Ok(rd) => rd,
            Err(c) => return c,
        };
        let prefix = if prefix.is_null() && prefix_len == 0 {
            ""
        } else {
            // SAFETY: as the caller promises.
            match unsafe { text(prefix, prefix_len, "prefix") } {
                Ok(p) => p,
                Err(c) => return c,
            }
        };
        if entries_cap > 0 && entries.is_null() {
            return argument("entries is NULL");
        }
        if words_cap > 0 && words.is_null() {
            return argument("words is NULL");
        }
        let want = n.min(entries_cap).min(memdb::storage::top::MAX_TOP);
        let top = match rd.top(want, prefix) {
            Ok(t) => t,
            Err(e) => return fail(&e),
        };
        let needed: usize = top.iter().map(|(w, _)| w.len() + 1).sum();
        if needed > words_cap {
            set_error(format!(
                "the words buffer holds {words_cap} bytes; these {} words need {needed}",
                top.len()
            ));
            return MEMDB_ERR_BUFFER;
        }
        let mut at = 0usize;
        for (i, (w, c)) in top.iter().enumerate() {
            // SAFETY: at + len + 1 <= needed <= words_cap, and i < want <= entries_cap,
            // within the caller's buffers.
            unsafe {
                let dst = words.add(at);
                std::ptr::copy_nonoverlapping(w.as_ptr().cast::<c_char>(), dst, w.len());
                *dst.add(w.len()) = 0;
                *entries.add(i) = memdb_entry {
                    word: dst,
                    len: w.len(),
                    count: *c,
                };
            }
            at += w.len() + 1;
        }
        i32::try_from(top.len()).unwrap_or(i32::MAX)
    }))
}

/// The mapped seq (0 before anything is mapped, or for a NULL reader).
///
/// # Safety
/// `r` NULL or a live reader.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_seq(r: *const memdb_reader) -> u64 {
    let mut seq = 0;
    guarded(|| {
        // SAFETY: as the caller promises.
        if let Ok(rd) = unsafe { reader(r) } {
            seq = rd.seq();
        }
        MEMDB_OK
    });
    seq
}

/// Waits until a state of at least `seq` is mapped, at most `timeout_ms`
/// milliseconds; `*mapped` (if not NULL) gets the seq mapped. `MEMDB_ERR_TIMEOUT` if
/// it is not.
///
/// # Safety
/// `r` a live reader; `mapped` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_wait_for(
    r: *const memdb_reader,
    seq: u64,
    timeout_ms: u64,
    mapped: *mut u64,
) -> i32 {
    guarded(|| {
        // SAFETY: as the caller promises.
        let rd = match unsafe { reader(r) } {
            Ok(rd) => rd,
            Err(c) => return c,
        };
        let result = rd.wait_for(seq, Duration::from_millis(timeout_ms));
        if !mapped.is_null() {
            // SAFETY: non-null and writable, as the caller promises.
            unsafe { *mapped = rd.seq() };
        }
        match result {
            Ok(_) => MEMDB_OK,
            Err(e) => fail(&e),
        }
    })
}

/// Maps the published state now if it changed: 1 if a newer one is mapped, 0 if not,
/// or a negative status (`MEMDB_ERR_CORRUPT`: the files were refused, and the state
/// mapped before keeps answering).
///
/// # Safety
/// `r` a live reader.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memdb_refresh(r: *const memdb_reader) -> i32 {
    guarded(|| {
        // SAFETY: as the caller promises.
        let rd = match unsafe { reader(r) } {
            Ok(rd) => rd,
            Err(c) => return c,
        };
        match rd.refresh() {
            Ok(new) => i32::from(new),
            Err(e) => fail(&e),
        }
    })
}
