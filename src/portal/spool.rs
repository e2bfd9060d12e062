//! Where a request body is kept while it arrives and until the API call
//! is done: a buffer in memory while it arrives without gaps and fits, an
//! unlinked temporary file otherwise. Either way its share of the portal's
//! budget goes when the last reader of the body lets go. A spool file is
//! read and written through [`BodyFile`], which encrypts a sealed job's.

use std::path::PathBuf;
use std::sync::Arc;

use crate::portal::body_file::{BodyFile, CIPHER_STEP};

use crate::portal::budget::{Budget, Lease};
use crate::portal::pipe::Pipe;
use crate::protocol::digest::{Digest, DigestKind};

/// A spool file with its share of the budget: both go when the last reader
/// (a job, or an HTTP body still draining after a timeout) lets go.
#[derive(Debug)]
pub(crate) struct SpoolFile {
    /// The unlinked file.
    pub(crate) file: BodyFile,
    _lease: Lease,
}

/// A request body, complete and verified.
#[derive(Debug)]
pub(crate) enum SpooledBody {
    /// No body.
    Empty,
    /// A small body held in memory; its share of the memory budget is given
    /// back when the last copy of these bytes is dropped.
    Memory(bytes::Bytes),
    /// A large body in an unlinked temporary file.
    File {
        /// The spool file, already unlinked from its directory; shared so
        /// every attempt at the call reads it independently.
        file: Arc<SpoolFile>,
        /// Body length.
        len: u64,
    },
    /// A body still arriving, which the API call streams as it comes
    /// (the pipelined relay).
    Piped(Arc<Pipe>),
}

impl SpooledBody {
    /// Body length in bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Self::Empty => 0,
            Self::Memory(b) => b.len() as u64,
            Self::File { len, .. } => *len,
            Self::Piped(pipe) => pipe.len(),
        }
    }
}

/// Where a body is kept while it arrives.
pub(crate) enum Spool {
    /// The body from byte 0 on, with no gap; `lease` covers the buffer's
    /// capacity, which is what it takes from the allocator, and stops short
    /// of the memory budget's reserve.
    Memory {
        /// The bytes received.
        buf: Vec<u8>,
        /// The buffer's share of the memory budget.
        lease: Lease,
    },
    /// An unlinked temporary file, charged to its job's disk lease.
    File(BodyFile),
}

/// Why a body moves from memory to its spool file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spill {
    /// It would pass the spool threshold.
    Threshold,
    /// A chunk starts past the bytes received so far; memory holds only
    /// bytes received, never the zeros in front of a far-flung chunk.
    Gap,
    /// The memory budget cannot cover it.
    Memory,
    /// The memory budget has no room for the chunk's entry in the chunk
    /// table, which cannot move to disk; the body's memory makes room.
    Books,
}

/// An in-memory body and its share of the memory budget, kept together
/// until the last `Bytes` of the body (perhaps inside an HTTP request still
/// being sent) is dropped.
struct LeasedBody {
    buf: Vec<u8>,
    _lease: Lease,
}

impl AsRef<[u8]> for LeasedBody {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// Disk bytes a write of `len` bytes may take: whole 4 KiB blocks.
pub(crate) fn blocks(len: usize) -> u64 {
    (len as u64).div_ceil(4096) * 4096
}

/// Readies an in-memory body for a chunk covering `offset..end`: grows the
/// buffer, charged to `lease`, so the chunk fits; or says why the body must
/// move to disk instead. The buffer grows by doubling, as `Vec` would, but
/// never past `cap_limit` (the threshold, or the declared length if smaller).
pub(crate) fn make_room(
    buf: &mut Vec<u8>,
    lease: &mut Lease,
    offset: u64,
    end: u64,
    cap_limit: u64,
) -> Option<Spill> {
    if end > cap_limit {
        return Some(Spill::Threshold);
    }
    if offset > buf.len() as u64 {
        return Some(Spill::Gap);
    }
    // `end` is at most the threshold (64 MiB at most), so it fits a usize.
    let end = end as usize;
    if end <= buf.capacity() {
        return None;
    }
    let doubled = (buf.capacity() as u64 * 2).min(cap_limit).max(end as u64);
    let want = if lease.grow_to(doubled) {
        doubled as usize
    } else if lease.grow_to(end as u64) {
        end
    } else {
        return Some(Spill::Memory);
    };
    buf.reserve_exact(want - buf.len());
    None
}

impl Spool {
    /// An empty body in memory, whose buffer leaves `memory`'s reserve free.
    pub(crate) fn in_memory(memory: &Arc<Budget>) -> Self {
        Self::Memory {
            buf: Vec::new(),
            lease: Lease::short_of_reserve(memory),
        }
    }

    /// Whether the body holds memory it could give back by moving to disk.
    pub(crate) fn holds_memory(&self) -> bool {
        matches!(self, Self::Memory { lease, .. } if lease.held() > 0)
    }

    /// Writes `data` at `offset`: into memory, where [`make_room`] made room
    /// for it, or into the file.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Memory { buf, .. } => {
                // make_room saw to it that offset is within what is held.
                let at = offset as usize;
                let overlap = buf.len().saturating_sub(at).min(data.len());
                buf[at..at + overlap].copy_from_slice(&data[..overlap]);
                buf.extend_from_slice(&data[overlap..]);
                Ok(())
            }
            Self::File(file) => file.write_all_at(data, offset),
        }
    }

    /// Moves an in-memory body to a new unlinked file in `dir`, giving its
    /// memory back; the file is encrypted when `encrypt` (a sealed job's).
    pub(crate) fn move_to_disk(
        &mut self,
        dir: &Option<PathBuf>,
        encrypt: bool,
    ) -> std::io::Result<()> {
        if let Self::Memory { buf, .. } = self {
            let file = match dir {
                Some(d) => tempfile::tempfile_in(d)?,
                None => tempfile::tempfile()?,
            };
            let file = match encrypt {
                true => BodyFile::encrypted(file)?,
                false => BodyFile::from(file),
            };
            file.write_all_at(buf, 0)?;
            *self = Self::File(file);
        }
        Ok(())
    }

    /// Another descriptor of the spool file, for a call to read the body
    /// while it is still being written; an error for a body in memory.
    pub(crate) fn share(&self) -> std::io::Result<BodyFile> {
        match self {
            Self::File(file) => file.try_clone(),
            Self::Memory { .. } => Err(std::io::Error::other("the body is not in a spool file")),
        }
    }

    /// The `kind` digest of the body's first `len` bytes, read back from
    /// where they are kept, for a body whose chunks did not all arrive in order.
    pub(crate) fn digest(&mut self, kind: DigestKind, len: u64) -> std::io::Result<Digest> {
        let mut hasher = kind.hasher();
        match self {
            Self::Memory { buf, .. } => hasher.update(&buf[..len as usize]),
            Self::File(file) => {
                let mut buf = vec![0u8; CIPHER_STEP];
                let mut at = 0u64;
                while at < len {
                    let n = (len - at).min(CIPHER_STEP as u64) as usize;
                    file.read_exact_at(&mut buf[..n], at)?;
                    hasher.update(&buf[..n]);
                    at += n as u64;
                }
            }
        }
        Ok(hasher.finalize())
    }

    /// The finished body of `len` bytes; `disk` is its file's share of the
    /// spool budget, which goes with the file.
    pub(crate) fn into_body(self, disk: Lease, len: u64) -> SpooledBody {
        match self {
            Self::Memory { buf, lease } => {
                SpooledBody::Memory(bytes::Bytes::from_owner(LeasedBody { buf, _lease: lease }))
            }
            Self::File(file) => SpooledBody::File {
                file: Arc::new(SpoolFile { file, _lease: disk }),
                len,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn raw(file: &BodyFile) -> Vec<u8> {
        file.raw()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_sealed_body_is_ciphertext_on_disk_and_reads_back_at_any_offset() {
        let plain = body(700_000);
        let mut spool = Spool::Memory {
            buf: plain[..100_000].to_vec(),
            lease: Lease::new(&Budget::new(u64::MAX)),
        };
        spool.move_to_disk(&None, true).unwrap();
        // Written out of order, across cipher steps, at odd offsets.
        spool.write(300_001, &plain[300_001..700_000]).unwrap();
        spool.write(100_000, &plain[100_000..300_001]).unwrap();
        let Spool::File(file) = &spool else {
            panic!("not on disk")
        };
        let on_disk = raw(file);
        assert_eq!(on_disk.len(), plain.len());
        assert_ne!(on_disk, plain);
        for at in [0, 12_345, 299_999, 650_000] {
            assert!(
                !contains(&on_disk, &plain[at..at + 64]),
                "plaintext at {at} on disk"
            );
        }
        for (at, len) in [
            (0, 1),
            (1, 15),
            (17, 40_000),
            (262_143, 3),
            (699_999, 1),
            (5, 699_995),
        ] {
            let mut got = vec![0u8; len];
            file.read_exact_at(&mut got, at as u64).unwrap();
            assert_eq!(got, plain[at..at + len], "read at {at} of {len}");
        }
        // A second descriptor reads the same; the digest reads it back.
        let shared = spool.share().unwrap();
        let mut got = vec![0u8; 10];
        shared.read_exact_at(&mut got, 333_333).unwrap();
        assert_eq!(got, plain[333_333..333_343]);
        let digest = spool
            .digest(DigestKind::Blake3, plain.len() as u64)
            .unwrap();
        assert_eq!(digest, DigestKind::Blake3.of(&plain));
    }

    #[test]
    fn two_sealed_files_of_one_body_differ_and_a_clear_one_is_as_it_is() {
        let plain = body(5000);
        let files: Vec<Vec<u8>> = [true, true, false]
            .into_iter()
            .map(|encrypt| {
                let mut spool = Spool::Memory {
                    buf: plain.clone(),
                    lease: Lease::new(&Budget::new(u64::MAX)),
                };
                spool.move_to_disk(&None, encrypt).unwrap();
                match &spool {
                    Spool::File(f) => raw(f),
                    Spool::Memory { .. } => panic!("not on disk"),
                }
            })
            .collect();
        assert_ne!(files[0], files[1], "a fresh IV per file");
        assert_eq!(files[2], plain);
    }
}
