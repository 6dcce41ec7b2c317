//! A whole file mapped read-only, to serve it as it is: a file of a raft snapshot,
//! which is never written once it is in place (a hard link of a published file, or a
//! file checked whole when it was received).
#![allow(unsafe_code)]

use std::path::Path;

pub struct MappedFile(memmap2::Mmap);

impl MappedFile {
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = std::fs::File::open(path)?;
        // SAFETY: see the module's documentation: nothing writes the file, and a
        // newer one takes its name by rename, leaving these bytes as they are.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile(map))
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
