//! A spool file on disk: unlinked from the start, and written and read
//! around the page cache (`O_DIRECT`) where its file system allows.
//!
//! Why around the page cache: a spool file lives seconds, so every page the
//! kernel caches for it is a fresh one, and a fresh page costs far more than
//! the copy into it (on a virtual machine whose host takes freed guest
//! memory back, about 0.9 CPU seconds per GiB, against 0.1 for writing the
//! same bytes directly). Direct I/O moves whole 4 KiB blocks between
//! aligned buffers and the disk: a write that starts or ends inside a block
//! reads that block back first, so bytes already written stay as they were.
//! Where the file system refuses `O_DIRECT` (or the portal is told not to
//! use it), the file is an ordinary one.

use std::fs::File;
use std::io::{ErrorKind, Result};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use bytes::Bytes;

/// The unit of direct I/O: offsets, lengths and buffer addresses are
/// multiples of it (4 KiB covers devices of 512-byte and 4 KiB sectors).
pub(crate) const BLOCK: usize = 4096;

/// Most bytes one direct write moves: the aligned copy it makes is at most
/// this and two blocks.
const WRITE_PIECE: usize = 256 * BLOCK;

/// An unlinked spool file.
#[derive(Debug)]
pub(crate) struct DiskFile {
    file: File,
    /// Written and read with `O_DIRECT`, in whole aligned blocks.
    direct: bool,
}

impl DiskFile {
    /// A new unlinked file in `dir` (the system temporary directory when
    /// `None`); with `O_DIRECT` when `direct` and the file system allows it.
    pub(crate) fn create(dir: Option<&Path>, direct: bool) -> Result<Self> {
        if direct {
            let at = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE | libc::O_DIRECT)
                .open(&at);
            match opened {
                Ok(file) => return Ok(Self { file, direct: true }),
                Err(e) => log::debug!(
                    "spool files in {}: no direct I/O ({e}); using the page cache",
                    at.display()
                ),
            }
        }
        let file = match dir {
            Some(d) => tempfile::tempfile_in(d)?,
            None => tempfile::tempfile()?,
        };
        Ok(Self {
            file,
            direct: false,
        })
    }

    /// Whether the file bypasses the page cache.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    /// The file's length: whole blocks, with direct I/O.
    #[cfg(test)]
    pub(crate) fn file_len(&self) -> Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Another descriptor of the same file (the same open file, so the same
    /// mode), for a reader beside the writer.
    pub(crate) fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            direct: self.direct,
        })
    }

    /// Writes all of `data` at `offset`. Bytes of the file outside
    /// `offset..offset + data.len()` keep their values, so a reader may read
    /// them while the write runs.
    pub(crate) fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        if !self.direct {
            return self.file.write_all_at(data, offset);
        }
        // In pieces, so the aligned copy stays small; every piece after
        // the first starts on a block boundary.
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let n = (WRITE_PIECE - (at % BLOCK as u64) as usize).min(data.len() - done);
            self.write_piece(&data[done..done + n], at)?;
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` with direct I/O: the whole blocks it
    /// touches, edges read back first.
    fn write_piece(&self, data: &[u8], offset: u64) -> Result<()> {
        let block = BLOCK as u64;
        let start = offset / block * block;
        let end = offset + data.len() as u64;
        let stop = end.div_ceil(block) * block;
        let head = (offset - start) as usize;
        let tail = (stop - end) as usize;
        let mut buf = Aligned::with_capacity((stop - start) as usize);
        let mut edge = Aligned::zeroed(BLOCK);
        if head > 0 {
            self.read_block(edge.as_mut(), start)?;
            buf.extend(&edge.as_ref()[..head]);
        }
        buf.extend(data);
        if tail > 0 {
            let last = stop - block;
            // The first block, read above, when the write sits inside one.
            if last != start || head == 0 {
                self.read_block(edge.as_mut(), last)?;
            }
            buf.extend(&edge.as_ref()[BLOCK - tail..]);
        }
        self.file.write_all_at(buf.as_ref(), start)
    }

    /// Reads the block at `at` into `block`; zeros where the file ends first.
    fn read_block(&self, block: &mut [u8], at: u64) -> Result<()> {
        let mut filled = 0;
        while filled < block.len() {
            match self.file.read_at(&mut block[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        block[filled..].fill(0);
        Ok(())
    }

    /// Reads exactly `len` bytes at `pos`.
    pub(crate) fn read_at(&self, pos: u64, len: usize) -> Result<Bytes> {
        if !self.direct {
            let mut buf = vec![0u8; len];
            self.file.read_exact_at(&mut buf, pos)?;
            return Ok(Bytes::from(buf));
        }
        let block = BLOCK as u64;
        let start = pos / block * block;
        let stop = (pos + len as u64).div_ceil(block) * block;
        let mut buf = Aligned::zeroed((stop - start) as usize);
        let want = (pos - start) as usize + len;
        let mut filled = 0;
        while filled < want {
            // Direct reads stay whole blocks: from a block boundary, to
            // the end of the buffer; the file's end makes one short.
            let at = filled / BLOCK * BLOCK;
            match self
                .file
                .read_at(&mut buf.as_mut()[at..], start + at as u64)
            {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the spool file ended before the bytes asked for",
                    ))
                }
                // A short read inside the file (never seen for direct
                // I/O) is read again from its block; one that brings
                // nothing new ends the read rather than repeat forever.
                Ok(n) if at + n <= filled => {
                    return Err(std::io::Error::other(
                        "the spool file's reads stopped making progress",
                    ))
                }
                Ok(n) => filled = at + n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let from = (pos - start) as usize;
        Ok(buf.into_bytes().slice(from..from + len))
    }
}

/// A buffer whose contents start on a [`BLOCK`] boundary: a `Vec` with a
/// block to spare, used from its first aligned byte on.
struct Aligned {
    vec: Vec<u8>,
    /// Where the aligned contents start in `vec`.
    at: usize,
}

impl Aligned {
    /// Empty, with room for `len` bytes.
    fn with_capacity(len: usize) -> Self {
        let mut vec = Vec::with_capacity(len + BLOCK);
        let at = (BLOCK - vec.as_ptr() as usize % BLOCK) % BLOCK;
        vec.resize(at, 0);
        Self { vec, at }
    }

    /// `len` zero bytes.
    fn zeroed(len: usize) -> Self {
        let mut buf = Self::with_capacity(len);
        buf.vec.resize(buf.at + len, 0);
        buf
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.vec.extend_from_slice(bytes);
    }

    fn as_ref(&self) -> &[u8] {
        &self.vec[self.at..]
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.at..]
    }

    fn into_bytes(self) -> Bytes {
        Bytes::from(self.vec).slice(self.at..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> [DiskFile; 2] {
        let direct = DiskFile::create(None, true).unwrap();
        let buffered = DiskFile::create(None, false).unwrap();
        assert!(!buffered.is_direct());
        [direct, buffered]
    }

    /// A pattern no two nearby bytes share, so a byte in the wrong place shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    #[test]
    fn the_temp_dir_takes_direct_io() {
        // The machines this runs on keep the temporary directory on a file
        // system with O_DIRECT (ext4, xfs, btrfs); the tests below then cover it.
        assert!(DiskFile::create(None, true).unwrap().is_direct());
    }

    #[test]
    fn unaligned_writes_in_any_order_keep_every_other_byte() {
        for file in both() {
            let body = pattern(3 * BLOCK + 1234, 7);
            assert!(body.len() < WRITE_PIECE);
            // Pieces that start and end inside blocks, some within one
            // block, written out of order.
            let cuts = [0, 100, 4000, 4100, 5000, 9000, 9001, 12000, body.len()];
            let order = [3, 0, 6, 1, 7, 4, 2, 5];
            for &i in &order {
                file.write_at(&body[cuts[i]..cuts[i + 1]], cuts[i] as u64)
                    .unwrap();
            }
            assert_eq!(file.read_at(0, body.len()).unwrap(), &body[..]);
            for (pos, len) in [(0, 1), (1, 4095), (4095, 2), (4096, 4096), (5000, 7000)] {
                assert_eq!(
                    file.read_at(pos as u64, len).unwrap(),
                    &body[pos..pos + len],
                    "direct {}: {len} at {pos}",
                    file.is_direct()
                );
            }
            // Rewriting a piece with the same bytes changes nothing.
            file.write_at(&body[4100..5000], 4100).unwrap();
            assert_eq!(file.read_at(0, body.len()).unwrap(), &body[..]);
        }
    }

    #[test]
    fn a_write_larger_than_a_piece_lands_whole() {
        for file in both() {
            let body = pattern(2 * WRITE_PIECE + 777, 11);
            file.write_at(&body[..10], 0).unwrap();
            file.write_at(&body[10..], 10).unwrap();
            assert_eq!(file.read_at(0, body.len()).unwrap(), &body[..]);
        }
    }

    #[test]
    fn a_read_past_what_was_written_is_an_error_not_zeros() {
        for file in both() {
            file.write_at(b"hello", 0).unwrap();
            assert_eq!(file.read_at(0, 5).unwrap(), &b"hello"[..]);
            // With direct I/O the file holds a whole block of which five
            // bytes were written; what lies past the block is missing.
            let err = file.read_at(0, BLOCK + 1).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
        }
    }

    #[test]
    fn a_clone_reads_what_the_original_wrote() {
        for file in both() {
            let reader = file.try_clone().unwrap();
            assert_eq!(reader.is_direct(), file.is_direct());
            let body = pattern(2 * BLOCK + 10, 3);
            file.write_at(&body, 0).unwrap();
            assert_eq!(reader.read_at(3, body.len() - 3).unwrap(), &body[3..]);
        }
    }

    #[test]
    fn a_missing_directory_is_an_error_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        assert!(DiskFile::create(Some(&gone), true).is_err());
        assert!(DiskFile::create(Some(&gone), false).is_err());
    }
}
