//! One body check for both receivers: the portal assembling a request body
//! and `send` receiving a response body.
//!
//! Every chunk's CRC32C is checked as it arrives. The digest of the body is
//! computed on the way while chunks arrive in order; a receiver that takes
//! chunks out of order (the portal, from a spool) digests the body itself at
//! the end and hands the digest to [`BodyCheck::verify_end`]. The end record
//! then has to agree on the length, the number of chunks and the digest.
//! The check says what is wrong; each receiver words it for its reader.

use crate::protocol::digest::{Digest, DigestKind, Hasher};
use crate::protocol::wire::{checksum, ChunkInfo, EndInfo};

/// What the body check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// The chunk's bytes do not match its CRC32C.
    Crc,
    /// The end record counts other bytes or chunks than arrived.
    Length {
        /// Bytes that arrived.
        received: u64,
        /// Chunks that arrived.
        chunks: u32,
    },
    /// The body's digest is not the one the end record carries (or the end
    /// record carries another algorithm's than the job's).
    Digest {
        /// The digest of the bytes that arrived.
        computed: Digest,
    },
}

/// The running check of one body.
#[derive(Debug, Clone)]
pub(crate) struct BodyCheck {
    hasher: Hasher,
    /// Bytes hashed: the body's length so far while chunks come in order.
    hashed: u64,
    out_of_order: bool,
    received: u64,
    chunks: u32,
}

impl BodyCheck {
    /// A check of a body nothing of which has arrived, digested with `digest`.
    pub(crate) fn new(digest: DigestKind) -> Self {
        Self {
            hasher: digest.hasher(),
            hashed: 0,
            out_of_order: false,
            received: 0,
            chunks: 0,
        }
    }

    /// The algorithm the body is digested with.
    pub(crate) fn kind(&self) -> DigestKind {
        self.hasher.kind()
    }

    /// Checks the CRC32C of a chunk at `info.offset`; a chunk that passes is
    /// counted, and hashed when it continues the body in order.
    pub(crate) fn chunk(&mut self, info: &ChunkInfo, payload: &[u8]) -> Result<(), BodyFault> {
        if checksum(payload) != info.crc32c {
            return Err(BodyFault::Crc);
        }
        if !self.out_of_order && info.offset == self.hashed {
            self.hasher.update(payload);
            self.hashed += payload.len() as u64;
        } else {
            self.out_of_order = true;
        }
        self.received = self.received.saturating_add(payload.len() as u64);
        self.chunks = self.chunks.saturating_add(1);
        Ok(())
    }

    /// Whether every chunk so far continued the body where the last ended.
    pub(crate) fn in_order(&self) -> bool {
        !self.out_of_order
    }

    /// Bytes of the chunks that passed.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// The digest of the body, when every chunk came in order; `None` when
    /// the receiver has to digest what it stored.
    pub(crate) fn digest(&mut self) -> Option<Digest> {
        let fresh = self.hasher.kind().hasher();
        self.in_order()
            .then(|| std::mem::replace(&mut self.hasher, fresh).finalize())
    }

    /// Checks the end record's length and chunk count against what arrived:
    /// the part of [`BodyCheck::verify_end`] a receiver that digests what it
    /// stored needs first, to know how much to read back.
    pub(crate) fn verify_length(&self, end: &EndInfo) -> Result<(), BodyFault> {
        if end.total_len != self.received || end.chunks != self.chunks {
            return Err(BodyFault::Length {
                received: self.received,
                chunks: self.chunks,
            });
        }
        Ok(())
    }

    /// Checks the end record against what arrived and the body's `digest`.
    pub(crate) fn verify_end(&self, end: &EndInfo, digest: &Digest) -> Result<(), BodyFault> {
        self.verify_length(end)?;
        if *digest != end.digest {
            return Err(BodyFault::Digest { computed: *digest });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, data: &[u8]) -> ChunkInfo {
        ChunkInfo {
            offset,
            crc32c: checksum(data),
        }
    }

    fn end_of(body: &[u8], chunks: u32) -> EndInfo {
        EndInfo {
            total_len: body.len() as u64,
            chunks,
            digest: DigestKind::Sha256.of(body),
        }
    }

    #[test]
    fn a_body_in_order_is_digested_on_the_way() {
        let mut check = BodyCheck::new(DigestKind::Sha256);
        check.chunk(&chunk(0, b"hello "), b"hello ").unwrap();
        check.chunk(&chunk(6, b"world"), b"world").unwrap();
        assert!(check.in_order());
        let digest = check.digest().unwrap();
        check
            .verify_end(&end_of(b"hello world", 2), &digest)
            .unwrap();
    }

    #[test]
    fn a_chunk_whose_bytes_changed_fails_its_crc() {
        let mut check = BodyCheck::new(DigestKind::Sha256);
        let info = chunk(0, b"hello");
        assert_eq!(check.chunk(&info, b"hellO"), Err(BodyFault::Crc));
        assert_eq!(check.received(), 0);
    }

    #[test]
    fn out_of_order_chunks_leave_the_digest_to_the_receiver() {
        let mut check = BodyCheck::new(DigestKind::Sha256);
        check.chunk(&chunk(6, b"world"), b"world").unwrap();
        check.chunk(&chunk(0, b"hello "), b"hello ").unwrap();
        assert!(!check.in_order());
        assert_eq!(check.digest(), None);
        let stored = DigestKind::Sha256.of(b"hello world");
        check
            .verify_end(&end_of(b"hello world", 2), &stored)
            .unwrap();
    }

    #[test]
    fn the_length_is_checked_without_a_digest() {
        let mut check = BodyCheck::new(DigestKind::Sha256);
        check.chunk(&chunk(6, b"world"), b"world").unwrap();
        check.chunk(&chunk(0, b"hello "), b"hello ").unwrap();
        assert_eq!(check.verify_length(&end_of(b"hello world", 2)), Ok(()));
        assert_eq!(
            check.verify_length(&end_of(b"hello world", 3)),
            Err(BodyFault::Length {
                received: 11,
                chunks: 2
            })
        );
        assert!(check.verify_length(&end_of(b"hello", 2)).is_err());
    }

    #[test]
    fn the_end_record_must_agree_on_length_count_and_digest() {
        let mut check = BodyCheck::new(DigestKind::Sha256);
        check.chunk(&chunk(0, b"abc"), b"abc").unwrap();
        let digest = check.digest().unwrap();
        let longer = end_of(b"abcd", 1);
        assert_eq!(
            check.verify_end(&longer, &digest),
            Err(BodyFault::Length {
                received: 3,
                chunks: 1
            })
        );
        assert!(matches!(
            check.verify_end(&end_of(b"abc", 2), &digest),
            Err(BodyFault::Length { .. })
        ));
        let other = EndInfo {
            digest: DigestKind::Sha256.of(b"abd"),
            ..end_of(b"abc", 1)
        };
        assert_eq!(
            check.verify_end(&other, &digest),
            Err(BodyFault::Digest { computed: digest })
        );
    }

    #[test]
    fn a_blake3_body_is_checked_with_blake3_only() {
        let body = b"hello blake3";
        let mut check = BodyCheck::new(DigestKind::Blake3);
        check.chunk(&chunk(0, body), body).unwrap();
        assert_eq!(check.kind(), DigestKind::Blake3);
        let digest = check.digest().unwrap();
        let end = EndInfo {
            digest: DigestKind::Blake3.of(body),
            ..end_of(body, 1)
        };
        check.verify_end(&end, &digest).unwrap();
        // The right body's SHA-256 is still the wrong digest for this job.
        assert_eq!(
            check.verify_end(&end_of(body, 1), &digest),
            Err(BodyFault::Digest { computed: digest })
        );
    }
}
