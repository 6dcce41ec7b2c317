//! Cuts a stream of text into chunks of at most a given size at white space, so that
//! no word (and so no UTF-8 sequence: white space is ASCII) is ever split between two
//! requests. The chunks, concatenated, are the input byte for byte.

use std::io::{self, Read};

/// Why a stream could not be cut.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    #[error(
        "a run of {len} bytes without white space at byte {offset}: longer than a chunk \
         (--chunk-size); no word can be that long"
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

/// Reads `input` and yields chunks of at most `max` bytes.
pub struct Chunker<R> {
    input: R,
    max: usize,
    /// Read but not yet yielded.
    pending: Vec<u8>,
    offset: u64,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(input: R, max: usize) -> Self {
        Chunker {
            input,
            max: max.max(16),
            pending: Vec::new(),
            offset: 0,
            eof: false,
        }
    }

    /// Fills `pending` up to `max` bytes (less only at the end of the input).
    fn fill(&mut self) -> io::Result<()> {
        while !self.eof && self.pending.len() < self.max {
            let have = self.pending.len();
            self.pending.resize(self.max, 0);
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
        self.fill()?;
        if self.pending.is_empty() {
            return Ok(None);
        }
        let cut = if self.eof {
            self.pending.len()
        } else {
            // After the last white space byte: the next chunk starts a word.
            match self.pending.iter().rposition(|b| b.is_ascii_whitespace()) {
                Some(i) => i + 1,
                None => {
                    return Err(ChunkError::NoBoundary {
                        offset: self.offset,
                        len: self.pending.len(),
                    });
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
        Chunker::new(Trickle(text.as_bytes(), step), max)
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
        let err = Chunker::new(long.as_bytes(), 32)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert!(
            matches!(err, ChunkError::NoBoundary { offset: 3, .. }),
            "{err}"
        );
        let mut bad = b"fine words ".to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        bad.extend_from_slice(b" more");
        let err = Chunker::new(&bad[..], 1024)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert!(matches!(err, ChunkError::NotUtf8 { offset: 11 }), "{err}");
        assert!(chunks("", 64, 8).is_empty());
    }
}
