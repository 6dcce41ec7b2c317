//! Giving freed heap memory back to the system. glibc's allocator keeps what a thread
//! freed in that thread's arena; a leader frees the words of every interval, and its
//! merges free their scratch, on threads of their own, so without this its resident
//! memory stays near its peak. The library's second `unsafe` (see `storage/mapped.rs`).
#![allow(unsafe_code)]

/// Returns the free memory of every arena to the system (glibc's `malloc_trim`).
/// Takes a few milliseconds; call it after freeing much, off any lock.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks;
    // it takes no pointer from us.
    unsafe {
        libc::malloc_trim(0);
    }
}
