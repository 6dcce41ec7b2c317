//! Cuts a stream of text into chunks of about a given size at white space (any Unicode
//! white space: CJK text is spaced with U+3000), so that no word, and no UTF-8
//! sequence, is ever split between two requests. A run without white space longer
//! than the size (a long CSV line) is taken whole, up to a hard limit (the leader's
//! largest body). The chunks, concatenated, are the input byte for byte.

use std::io::{self, Read};

/// Why a stream could not be cut.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    #[error(
        "a run of {len} bytes without white space at byte {offset}: longer than the \
         leader takes in one request (its --max-body)"
    )]
    NoBoundary { offset: u64, len: usize },
    #[error("not UTF-8 text at byte {offset}")]
    NotUtf8 { offset: u64 },
}

/// One piece of the stream, ending at white space (or at the end).
#[derive(Debug)]
pub struct Chunk {
    /// Where it starts in the stream.
    pub offset: u64,
    pub text: String,
}

/// Reads `input` and yields chunks of at most `max` bytes, or up to `hard_max` for a
/// run without white space.
pub struct Chunker<R> {
    input: R,
    max: usize,
    hard_max: usize,
    /// Read but not yet yielded.
    pending: Vec<u8>,
    offset: u64,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(input: R, max: usize, hard_max: usize) -> Self {
        let max = max.max(16);
        Chunker {
            input,
            max,
            hard_max: hard_max.max(max),
            pending: Vec::new(),
            offset: 0,
            eof: false,
        }
    }

    /// Fills `pending` up to `want` bytes (less only at the end of the input).
    fn fill(&mut self, want: usize) -> io::Result<()> {
        while !self.eof && self.pending.len() < want {
            let have = self.pending.len();
            self.pending.resize(want, 0);
            match self.input.read(&mut self.pending[have..]) {
                Ok(0) => {
                    self.pending.truncate(have);
                    self.eof = true;
                }
                Ok(n) => self.pending.truncate(have + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.pending.truncate(have),
                Err(e) => {
                    self.pending.truncate(have);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The next chunk, `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, ChunkError> {
        self.fill(self.max)?;
        if self.pending.is_empty() {
            return Ok(None);
        }
        let cut = if self.eof && self.pending.len() <= self.max {
            self.pending.len()
        } else {
            match last_white_space_end(&self.pending[..self.max.min(self.pending.len())]) {
                Some(i) => i,
                // A run without white space: read on, up to the hard limit, for the
                // first white space after it.
                None => {
                    self.fill(self.hard_max)?;
                    let first = first_white_space_end(&self.pending);
                    match first {
                        Some(i) => i,
                        None if self.eof => self.pending.len(),
                        None => {
                            return Err(ChunkError::NoBoundary {
                                offset: self.offset,
                                len: self.pending.len(),
                            });
                        }
                    }
                }
            }
        };
        let rest = self.pending.split_off(cut);
        let bytes = std::mem::replace(&mut self.pending, rest);
        let offset = self.offset;
        self.offset += bytes.len() as u64;
        let text = String::from_utf8(bytes).map_err(|e| ChunkError::NotUtf8 {
            offset: offset + e.utf8_error().valid_up_to() as u64,
        })?;
        Ok(Some(Chunk { offset, text }))
    }
}

/// Where the white space character ending last in `bytes` ends (ASCII, or any Unicode
/// white space whose UTF-8 sequence lies wholly in `bytes`).
fn last_white_space_end(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    while end > 0 {
        let b = bytes[end - 1];
        if b.is_ascii_whitespace() {
            return Some(end);
        }
        if b >= 0x80
            && let Some(c) = char_ending_at(bytes, end)
            && c.is_whitespace()
        {
            return Some(end);
        }
        end -= 1;
    }
    None
}

/// Where the first white space character in `bytes` ends.
fn first_white_space_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            return Some(i + 1);
        }
        if b >= 0xC0 {
            let len = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            if let Some(seq) = bytes.get(i..i + len)
                && let Ok(s) = std::str::from_utf8(seq)
                && s.chars().next().is_some_and(char::is_whitespace)
            {
                return Some(i + len);
            }
        }
        i += 1;
    }
    None
}

/// The character whose UTF-8 sequence ends just before `end`, if it is whole.
fn char_ending_at(bytes: &[u8], end: usize) -> Option<char> {
    (2..=4usize.min(end)).find_map(|len| {
        std::str::from_utf8(&bytes[end - len..end])
            .ok()
            .and_then(|s| s.chars().next())
    })
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Chunk, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes a call.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn chunks(text: &str, max: usize, step: usize) -> Vec<Chunk> {
        Chunker::new(Trickle(text.as_bytes(), step), max, max)
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn chunks_are_bounded_end_at_white_space_and_rebuild_the_input() {
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(["héllo", "wörld", "日本語", "a", "naïve"][i % 5]);
            text.push_str(if i % 7 == 0 { "\n" } else { " " });
        }
        for (max, step) in [(16, 3), (64, 1000), (1000, 7), (1 << 20, 4096)] {
            let cs = chunks(&text, max, step);
            let mut rebuilt = String::new();
            for (i, c) in cs.iter().enumerate() {
                assert!(c.text.len() <= max, "chunk {i} is {} bytes", c.text.len());
                assert_eq!(c.offset as usize, rebuilt.len());
                if i + 1 < cs.len() {
                    assert!(c.text.ends_with([' ', '\n']), "chunk {i} splits a word");
                }
                rebuilt.push_str(&c.text);
            }
            assert_eq!(rebuilt, text);
        }
    }

    #[test]
    fn an_overlong_word_and_bad_utf8_are_errors_with_their_offset() {
        let long = format!("ok {} tail", "x".repeat(100));
        let err = Chunker::new(long.as_bytes(), 32, 64)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert!(
            matches!(err, ChunkError::NoBoundary { offset: 3, .. }),
            "{err}"
        );
        let mut bad = b"fine words ".to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        bad.extend_from_slice(b" more");
        let err = Chunker::new(&bad[..], 1024, 1024)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert!(matches!(err, ChunkError::NotUtf8 { offset: 11 }), "{err}");
        assert!(chunks("", 64, 8).is_empty());
    }

    fn rebuilt(cs: &[Chunk]) -> String {
        cs.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn cjk_spaced_with_ideographic_spaces_is_cut_at_them() {
        let text = "日本語\u{3000}".repeat(400);
        let cs: Vec<Chunk> = Chunker::new(Trickle(text.as_bytes(), 5), 64, 64)
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(cs.len() > 10);
        for c in &cs[..cs.len() - 1] {
            assert!(
                c.text.len() <= 64 && c.text.ends_with('\u{3000}'),
                "{:?}",
                c.text
            );
        }
        assert_eq!(rebuilt(&cs), text);
    }

    #[test]
    fn a_run_longer_than_a_chunk_is_taken_whole_up_to_the_hard_limit() {
        let line = "a,b,".repeat(100); // 400 bytes, no white space
        let text = format!("head {line}\nnext words here\n{line}");
        let cs: Vec<Chunk> = Chunker::new(Trickle(text.as_bytes(), 7), 64, 512)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rebuilt(&cs), text);
        assert!(cs.iter().all(|c| c.text.len() <= 512));
        assert!(cs.iter().any(|c| c.text.contains(&line)));
        let err = Chunker::new(text.as_bytes(), 64, 256)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert!(matches!(err, ChunkError::NoBoundary { .. }), "{err}");
    }
}
