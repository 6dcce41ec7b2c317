//! What `memdb ingest` reads: files named, matched by globs or found in directories,
//! each once (by device and inode), or stdin; gzip by its name.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// One input: a file or stdin.
#[derive(Debug, Clone)]
pub(super) enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    pub(super) fn name(&self) -> String {
        match self {
            Source::Stdin => "<stdin>".into(),
            Source::File(p) => p.display().to_string(),
        }
    }

    pub(super) fn open(&self) -> std::io::Result<Box<dyn Read + Send>> {
        let raw: Box<dyn Read + Send> = match self {
            Source::Stdin => Box::new(std::io::stdin()),
            Source::File(p) => Box::new(File::open(p)?),
        };
        let gz = matches!(self, Source::File(p) if p.extension().is_some_and(|e| e == "gz"));
        let buffered = BufReader::with_capacity(1 << 20, raw);
        Ok(if gz {
            Box::new(flate2::read::MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        })
    }

    /// Bytes of text it holds, if known before reading (not for stdin or gzip).
    pub(super) fn len(&self) -> Option<u64> {
        match self {
            Source::File(p) if p.extension().is_none_or(|e| e != "gz") => {
                std::fs::metadata(p).ok().map(|m| m.len())
            }
            _ => None,
        }
    }
}

/// Files named by `paths`, in order: directories walked (sorted), glob patterns
/// expanded, `-` for stdin.
pub(super) fn sources(paths: &[String]) -> Result<Vec<Source>, String> {
    if paths.is_empty() {
        return Ok(vec![Source::Stdin]);
    }
    let mut out = Walk::default();
    for p in paths {
        if p == "-" {
            out.sources.push(Source::Stdin);
            continue;
        }
        let path = Path::new(p);
        let matches: Vec<PathBuf> = if !path.exists() && p.contains(['*', '?', '[']) {
            let found: Vec<PathBuf> = glob::glob(p)
                .map_err(|e| format!("{p}: {e}"))?
                .filter_map(Result::ok)
                .collect();
            if found.is_empty() {
                return Err(format!("{p}: no file matches"));
            }
            found
        } else {
            vec![path.to_owned()]
        };
        for m in matches {
            out.walk(&m, true)?;
        }
    }
    Ok(out.sources)
}

/// The files found so far, and every file and directory visited (by device and inode:
/// a file named as a path, matched by a glob and found in a directory, or reached
/// through a symlink, is read once; a symlink back up the tree ends there).
#[derive(Default)]
struct Walk {
    sources: Vec<Source>,
    seen: std::collections::HashSet<(u64, u64)>,
}

impl Walk {
    /// `named`: the user named this path (a FIFO or device named so is read as a
    /// stream; one found inside a directory is skipped, with a warning).
    fn walk(&mut self, path: &Path, named: bool) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !self.seen.insert((meta.dev(), meta.ino())) {
            tracing::info!(path = %path.display(), "already read (the same file by another name)");
            return Ok(());
        }
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                self.walk(&e, false)?;
            }
        } else if meta.is_file() || named {
            self.sources.push(Source::File(path.to_owned()));
        } else {
            tracing::warn!(
                path = %path.display(),
                "skipped: not a regular file (a FIFO, socket or device); name it on the \
                 command line to read it as a stream"
            );
        }
        Ok(())
    }
}
