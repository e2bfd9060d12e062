//! Cuts a body into chunk frames, with a CRC32C per chunk and a digest over
//! the whole body; used for requests by `send` and for responses by the portal.

use crate::protocol::digest::{DigestKind, Hasher};
use crate::protocol::wire::{Body, ChunkInfo, ChunkValue, EndInfo, Frame, JobId};

/// Default chunk payload size: 900 KiB leaves headroom under the broker's
/// default `message.max.bytes` of 1 MiB for the frame header, record key,
/// headers and batch overhead.
pub const DEFAULT_CHUNK_SIZE: usize = 900 * 1024;

/// Largest chunk size accepted from configuration; a fetch response holding
/// one such record must fit rskafka's response limit (16 MiB, set in
/// `kafka::connect`).
pub(crate) const MAX_CHUNK_SIZE: usize = 8 * 1024 * 1024 - 64 * 1024;

/// Numbers the frames of one body and keeps its running digest.
#[derive(Debug)]
pub struct Chunker {
    job: JobId,
    next_seq: u32,
    offset: u64,
    chunks: u32,
    hasher: Hasher,
}

/// One chunk ready to produce: its frame and payload.
#[derive(Debug)]
pub struct OutChunk {
    /// The frame header.
    pub frame: Frame,
    /// The chunk's bytes.
    pub payload: Vec<u8>,
}

impl Chunker {
    /// Starts numbering at `first_seq` (the record after the start frame),
    /// digesting the body with `digest`.
    pub fn new(job: JobId, first_seq: u32, digest: DigestKind) -> Self {
        Self {
            job,
            next_seq: first_seq,
            offset: 0,
            chunks: 0,
            hasher: digest.hasher(),
        }
    }

    /// Wraps `data` (non-empty) as the next chunk.
    pub fn chunk(&mut self, data: Vec<u8>) -> OutChunk {
        self.hasher.update(&data);
        let frame = Frame {
            job: self.job,
            seq: self.next_seq,
            body: Body::Chunk(ChunkInfo {
                offset: self.offset,
                crc32c: crate::protocol::wire::checksum(&data),
            }),
        };
        self.next_seq += 1;
        self.chunks += 1;
        self.offset += data.len() as u64;
        OutChunk {
            frame,
            payload: data,
        }
    }

    /// An empty record value for the next chunk, with room for `capacity`
    /// payload bytes, to read the payload into ([`Chunker::seal`]).
    pub(crate) fn next_value(&self, capacity: usize) -> ChunkValue {
        ChunkValue::new(
            self.job,
            self.next_seq,
            self.offset,
            capacity,
            self.hasher.kind(),
        )
    }

    /// Takes `value`'s payload (non-empty) as the next chunk: its frame and
    /// its record value, the payload never copied.
    pub(crate) fn seal(&mut self, value: ChunkValue) -> (Frame, Vec<u8>) {
        let payload = value.payload();
        self.hasher.update(payload);
        let crc = crate::protocol::wire::checksum(payload);
        let len = payload.len() as u64;
        self.next_seq += 1;
        self.chunks += 1;
        self.offset += len;
        value.finish(crc)
    }

    /// Takes `payload` (non-empty), read into a record built elsewhere (a
    /// sealed chunk's), as the next chunk: its clear frame.
    pub(crate) fn take(&mut self, payload: &[u8]) -> Frame {
        self.hasher.update(payload);
        let frame = Frame {
            job: self.job,
            seq: self.next_seq,
            body: Body::Chunk(ChunkInfo {
                offset: self.offset,
                crc32c: crate::protocol::wire::checksum(payload),
            }),
        };
        self.next_seq += 1;
        self.chunks += 1;
        self.offset += payload.len() as u64;
        frame
    }

    /// Sequence number the next frame of this body will carry.
    pub(crate) fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Bytes chunked so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.offset
    }

    /// Closes the body with its `End` frame.
    pub fn finish(self) -> Frame {
        Frame {
            job: self.job,
            seq: self.next_seq,
            body: Body::End(EndInfo {
                chunks: self.chunks,
                total_len: self.offset,
                digest: self.hasher.finalize(),
            }),
        }
    }
}
