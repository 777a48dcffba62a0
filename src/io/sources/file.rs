//! Cutting a JSON Lines file into chunks of whole lines that workers read independently.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

/// A file cut into byte ranges; chunk `k` holds the lines that *start* in its range.
#[derive(Debug)]
pub struct ChunkedFile {
    file: File,
    len: u64,
    chunk_bytes: u64,
}

/// One chunk's bytes and the lines in them.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Bytes read (may begin with part of the previous chunk's last line).
    pub bytes: Vec<u8>,
    /// The chunk's lines, as ranges of `bytes`, without line terminators; blank lines skipped.
    pub lines: Vec<Range<usize>>,
}

impl Chunk {
    /// The bytes of line `i`.
    pub fn line(&self, i: usize) -> &[u8] {
        &self.bytes[self.lines[i].clone()]
    }
}

impl ChunkedFile {
    /// Opens `path` for reading in chunks of about `chunk_bytes`.
    pub fn open(path: &Path, chunk_bytes: u64) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            chunk_bytes: chunk_bytes.max(1),
        })
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.len.div_ceil(self.chunk_bytes)
    }

    /// Reads chunk `k` into `chunk`, reusing its memory.
    pub fn read_into(&mut self, k: u64, chunk: &mut Chunk) -> std::io::Result<()> {
        let start = k * self.chunk_bytes;
        let end = (start + self.chunk_bytes).min(self.len);
        // One byte before the range tells whether a line starts exactly at `start`.
        let read_from = start.saturating_sub(1);
        let bytes = &mut chunk.bytes;
        bytes.clear();
        bytes.resize((end - read_from) as usize, 0);
        self.file.seek(SeekFrom::Start(read_from))?;
        self.file.read_exact(bytes)?;
        // Extend past `end` until the line that started before `end` is complete.
        let mut pos = end;
        while pos < self.len && bytes.last() != Some(&b'\n') {
            let mut more = vec![0; 64 * 1024.min((self.len - pos) as usize)];
            let n = self.file.read(&mut more)?;
            if n == 0 {
                break;
            }
            match memchr::memchr(b'\n', &more[..n]) {
                Some(i) => {
                    bytes.extend_from_slice(&more[..=i]);
                    break;
                }
                None => bytes.extend_from_slice(&more[..n]),
            }
            pos += n as u64;
        }
        let first = if k == 0 {
            0
        } else {
            match memchr::memchr(b'\n', bytes) {
                Some(i) => i + 1,
                None => bytes.len(),
            }
        };
        // Lines starting at or beyond `end` belong to the next chunk.
        let limit = (end - read_from) as usize;
        let lines = &mut chunk.lines;
        lines.clear();
        let mut line_start = first;
        while line_start < bytes.len() && line_start < limit {
            let line_end =
                memchr::memchr(b'\n', &bytes[line_start..]).map_or(bytes.len(), |i| line_start + i);
            let mut trimmed = line_end;
            if trimmed > line_start && bytes[trimmed - 1] == b'\r' {
                trimmed -= 1;
            }
            if !bytes[line_start..trimmed]
                .iter()
                .all(u8::is_ascii_whitespace)
            {
                lines.push(line_start..trimmed);
            }
            line_start = line_end + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_line_lands_in_exactly_one_chunk() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let lines: Vec<String> = (0..500)
            .map(|i| format!("{{\"n\":{}}}", "x".repeat(i % 37) + &i.to_string()))
            .collect();
        write!(file, "{}\n\n", lines.join("\n")).unwrap();
        for chunk_bytes in [1, 7, 64, 1000, 1 << 20] {
            let mut chunked = ChunkedFile::open(file.path(), chunk_bytes).unwrap();
            let mut seen = Vec::new();
            let mut chunk = Chunk::default();
            for k in 0..chunked.chunk_count() {
                chunked.read_into(k, &mut chunk).unwrap();
                for i in 0..chunk.lines.len() {
                    seen.push(String::from_utf8(chunk.line(i).to_vec()).unwrap());
                }
            }
            assert_eq!(seen, lines, "chunk_bytes {chunk_bytes}");
        }
    }
}
