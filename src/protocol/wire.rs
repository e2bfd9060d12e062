//! The framing: how one KafkaSend record value is laid out in bytes.
//!
//! Only this module knows the byte layout. Every record value is
//!
//! ```text
//! "KSND" | version (1 byte) | header (bincode 2, standard config) | payload
//! ```
//!
//! The payload is non-empty only for [`Body::Chunk`] frames; it is the raw
//! body bytes, never passed through serde. PROTOCOL.md describes the layout
//! precisely enough to write another implementation.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::protocol::digest::{Digest, DigestKind};
use crate::protocol::Failure;

/// First four bytes of every KafkaSend record value.
pub(crate) const MAGIC: [u8; 4] = *b"KSND";

/// The oldest protocol version this build writes and reads: a job whose
/// bodies are digested with SHA-256.
pub(crate) const VERSION: u8 = 1;

/// The newest protocol version this build writes and reads: version 1 plus
/// the BLAKE3 end record (version 2), plus the sealed frames (version 3). A job is written wholly in the version of its
/// digest ([`DigestKind::version`]), so a portal that speaks only version 1
/// refuses it at its first record rather than at its last.
pub(crate) const MAX_VERSION: u8 = 3;

/// The version of every sealed frame: version 2 with the sealed variants.
/// A sealed job's bodies are digested with BLAKE3.
pub(crate) const SEALED_VERSION: u8 = 3;

/// Kafka record header on a start record naming where replies go, as
/// `PARTITION/TOPIC`. It is kept outside the versioned frame so that a portal
/// can answer a request whose frame version it does not understand.
pub const REPLY_TO_HEADER: &str = "kafkasend-reply-to";

/// Kafka record header on a start record carrying the sender's signature
/// (see `signing`); like the reply-to header, it is outside the versioned frame.
pub const SIGNATURE_HEADER: &str = "kafkasend-signature";

/// Kafka record header on a `ResponseStart` record naming the request
/// headers the portal did not forward, as `A, B`; like the reply-to header it
/// is outside the versioned frame, so older clients ignore it.
pub const DROPPED_HEADERS_HEADER: &str = "kafkasend-dropped-headers";

/// Kafka record header on every response record naming the attempt that
/// wrote it: one value per run of a job, so a client can tell two portals'
/// answers to one job apart. Outside the versioned frame, like the others.
pub const ATTEMPT_HEADER: &str = "kafkasend-attempt";

/// A fresh `kafkasend-attempt` value: 16 lower-case hex digits, random, so
/// two runs of a job (on two portals, or one portal twice) never share one.
pub fn new_attempt() -> Vec<u8> {
    // The 80 random bits of a fresh ULID; 64 of them are plenty to tell a
    // job's few runs apart, and no second source of randomness is needed.
    let bits = Ulid::new().random() as u64;
    format!("{bits:016x}").into_bytes()
}

/// Most bytes of a `kafkasend-dropped-headers` value a client shows; a
/// portal writes less (`policy::MAX_DROPPED_NAMES_BYTES` and a count).
pub(crate) const MAX_DROPPED_HEADERS_BYTES: usize = 2048;

/// Most HTTP headers a request may carry and always decode: the largest
/// `PORTAL_MAX_HEADER_COUNT`.
pub(crate) const MAX_HEADERS: usize = 10_000;

/// Most bytes of header names and values a request may carry and always
/// decode: the largest `PORTAL_MAX_HEADER_BYTES`.
pub(crate) const MAX_HEADER_TEXT: usize = 128 * 1024;

/// Decoding budget of one frame header, counted as bincode counts it: each
/// string or list length as 8 bytes, each string's bytes, each number at
/// its size. A frame header needing more is refused, which bounds the
/// memory one decode takes whatever the bytes say. [`MAX_HEADERS`] headers
/// of [`MAX_HEADER_TEXT`] bytes with an 8 KiB path need about 300 KiB; the
/// rest is headroom, so a request somewhat over the portal's header settings
/// still decodes and gets the policy's refusal, which names the setting.
pub(crate) const MAX_HEADER_BYTES: usize = 512 * 1024;

const PREFIX_LEN: usize = MAGIC.len() + 1;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_HEADER_BYTES>()
}

/// Identifier of one job: a ULID, so it sorts by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    /// A fresh job id for a job created now.
    pub fn new() -> Self {
        Self(Ulid::new().to_bytes())
    }

    /// The Kafka record key for this job: the ULID in its 26-character text form.
    pub fn key(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Milliseconds since the Unix epoch at which the job was created.
    pub(crate) fn timestamp_ms(&self) -> u64 {
        Ulid::from_bytes(self.0).timestamp_ms()
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", Ulid::from_bytes(self.0))
    }
}

/// Why a text is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobIdError {
    /// Not 26 characters long.
    #[error("it has {0} characters; a job id has 26")]
    Length(usize),
    /// A character outside Crockford's base32 alphabet.
    #[error("character {position} is not one of 0-9 and A-Z without I, L, O and U")]
    Digit {
        /// 1-based position of the first bad character.
        position: usize,
    },
    /// 26 digits that hold more than 128 bits.
    #[error("it starts with '{0}', and a job id starts with 0 to 7 (a larger first digit overflows 128 bits)")]
    Overflow(char),
}

impl std::str::FromStr for JobId {
    type Err = JobIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let count = s.chars().count();
        if count != 26 {
            return Err(JobIdError::Length(count));
        }
        let alphabet = |c: char| c.is_ascii_alphanumeric() && !"IiLlOoUu".contains(c);
        if let Some(i) = s.chars().position(|c| !alphabet(c)) {
            return Err(JobIdError::Digit { position: i + 1 });
        }
        // 26 digits of 5 bits are 130 bits; the `ulid` decoder shifts the
        // two extra bits out, so `8ZZ…` would read as another job's id.
        let first = s.chars().next().unwrap_or('0');
        if first > '7' {
            return Err(JobIdError::Overflow(first));
        }
        Ulid::from_string(s)
            .map(|u| Self(u.to_bytes()))
            .map_err(|_| JobIdError::Digit { position: 1 })
    }
}

/// The header of every frame: which job, which record of it, and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The job this record belongs to; equals the record key.
    pub job: JobId,
    /// Position of this record among the job's records in one direction,
    /// starting at 0 with the start frame.
    pub seq: u32,
    /// What the record says.
    pub body: Body,
}

/// The kinds of frame. Requests are `RequestStart`, `Chunk`..., `End`;
/// responses are `ResponseStart`, `Chunk`..., `End`, or a single `Error`.
///
/// On the wire an `End` is variant 2 (SHA-256) or variant 5 (BLAKE3,
/// version 2 only); [`WireBody`] lays them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireBody", into = "WireBody")]
pub enum Body {
    /// First record of a request.
    RequestStart(RequestStart),
    /// A slice of a body; the bytes are the frame's payload.
    Chunk(ChunkInfo),
    /// Last record of a body, with what the receiver must verify.
    End(EndInfo),
    /// First record of a response.
    ResponseStart(ResponseStart),
    /// The request failed; no other response record follows.
    Error(Failure),
    /// First record of a sealed request (version 3): what routing needs in
    /// clear, the method, path and headers sealed in the payload.
    SealedStart(SealedStart),
    /// A slice of a sealed body; the payload is the sealed bytes.
    SealedChunk(SealedChunk),
    /// Last record of a sealed body; the payload seals its digest.
    SealedEnd(SealedEnd),
    /// First record of a sealed response; the payload seals the status and
    /// headers.
    SealedResponseStart(SealedResponseStart),
    /// A sealed job failed; the payload seals the category and message.
    SealedError,
}

/// The clear part of a sealed request's first record. The payload seals
/// the rest (`protocol::seal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedStart {
    /// Which of the portal's keys the job is sealed to.
    pub key_id: [u8; 8],
    /// The HPKE encapsulated key (32 bytes for X25519).
    pub enc: Vec<u8>,
    /// Body length when known in advance; as in [`RequestStart`].
    pub body_len: Option<u64>,
    /// Whether a body follows.
    pub has_body: bool,
    /// Topic where the response goes.
    pub reply_topic: String,
    /// Partition of `reply_topic` where the response goes.
    pub reply_partition: i32,
}

/// The clear part of a sealed chunk: where its bytes go in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedChunk {
    /// Byte offset of this chunk within the body.
    pub offset: u64,
}

/// The clear part of a sealed end record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEnd {
    /// Number of chunks that make up the body.
    pub chunks: u32,
    /// Total body length in bytes.
    pub total_len: u64,
}

/// The clear part of a sealed response's first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedResponseStart {
    /// Body length when the API declared one.
    pub body_len: Option<u64>,
}

impl Body {
    /// Whether this is one of the sealed frames of version 3.
    pub fn is_sealed(&self) -> bool {
        matches!(
            self,
            Self::SealedStart(_)
                | Self::SealedChunk(_)
                | Self::SealedEnd(_)
                | Self::SealedResponseStart(_)
                | Self::SealedError
        )
    }
}

/// What a portal needs to know before the body arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestStart {
    /// HTTP method, upper case.
    pub method: String,
    /// Path and query, starting with `/`, relative to the portal's target API.
    pub path: String,
    /// Request headers, in order, names as given.
    pub headers: Vec<(String, String)>,
    /// Body length when known in advance (a file); `None` for a stream.
    pub body_len: Option<u64>,
    /// Whether a body follows (`Chunk`s and an `End`).
    pub has_body: bool,
    /// Topic where the response goes.
    pub reply_topic: String,
    /// Partition of `reply_topic` where the response goes.
    pub reply_partition: i32,
    /// The digest of the job's bodies, both ways. Not a field on the wire:
    /// it is the frame's version (SHA-256 in 1, BLAKE3 in 2).
    #[serde(skip)]
    pub digest: DigestKind,
}

/// Metadata of one body chunk; the data is the frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Byte offset of this chunk within the body.
    pub offset: u64,
    /// CRC32C (Castagnoli) of the payload.
    pub crc32c: u32,
}

/// Closes a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndInfo {
    /// Number of chunks that make up the body.
    pub chunks: u32,
    /// Total body length in bytes.
    pub total_len: u64,
    /// Digest of the whole body, with its algorithm.
    pub digest: Digest,
}

/// [`Body`] as laid out on the wire: the variant index says the digest of
/// an end record, so each variant holds plain bytes.
#[derive(Serialize, Deserialize)]
enum WireBody {
    RequestStart(RequestStart),
    Chunk(ChunkInfo),
    End(WireEnd),
    ResponseStart(ResponseStart),
    Error(Failure),
    EndBlake3(WireEnd),
    SealedStart(SealedStart),
    SealedChunk(SealedChunk),
    SealedEnd(SealedEnd),
    SealedResponseStart(SealedResponseStart),
    SealedError,
}

#[derive(Serialize, Deserialize)]
struct WireEnd {
    chunks: u32,
    total_len: u64,
    digest: [u8; 32],
}

impl From<Body> for WireBody {
    fn from(body: Body) -> Self {
        match body {
            Body::RequestStart(s) => Self::RequestStart(s),
            Body::Chunk(c) => Self::Chunk(c),
            Body::End(e) => {
                let end = WireEnd {
                    chunks: e.chunks,
                    total_len: e.total_len,
                    digest: e.digest.bytes,
                };
                match e.digest.kind {
                    DigestKind::Sha256 => Self::End(end),
                    DigestKind::Blake3 => Self::EndBlake3(end),
                }
            }
            Body::ResponseStart(r) => Self::ResponseStart(r),
            Body::Error(f) => Self::Error(f),
            Body::SealedStart(s) => Self::SealedStart(s),
            Body::SealedChunk(c) => Self::SealedChunk(c),
            Body::SealedEnd(e) => Self::SealedEnd(e),
            Body::SealedResponseStart(r) => Self::SealedResponseStart(r),
            Body::SealedError => Self::SealedError,
        }
    }
}

impl From<WireBody> for Body {
    fn from(body: WireBody) -> Self {
        let end = |e: WireEnd, kind| {
            Self::End(EndInfo {
                chunks: e.chunks,
                total_len: e.total_len,
                digest: Digest {
                    kind,
                    bytes: e.digest,
                },
            })
        };
        match body {
            WireBody::RequestStart(s) => Self::RequestStart(s),
            WireBody::Chunk(c) => Self::Chunk(c),
            WireBody::End(e) => end(e, DigestKind::Sha256),
            WireBody::ResponseStart(r) => Self::ResponseStart(r),
            WireBody::Error(f) => Self::Error(f),
            WireBody::EndBlake3(e) => end(e, DigestKind::Blake3),
            WireBody::SealedStart(s) => Self::SealedStart(s),
            WireBody::SealedChunk(c) => Self::SealedChunk(c),
            WireBody::SealedEnd(e) => Self::SealedEnd(e),
            WireBody::SealedResponseStart(r) => Self::SealedResponseStart(r),
            WireBody::SealedError => Self::SealedError,
        }
    }
}

/// The version `frame` needs at least: 2 for a BLAKE3 start or end record,
/// 3 for a sealed frame.
fn needed_version(frame: &Frame) -> u8 {
    match &frame.body {
        b if b.is_sealed() => SEALED_VERSION,
        Body::RequestStart(s) => s.digest.version(),
        Body::ResponseStart(s) => s.digest.version(),
        Body::End(e) => e.digest.kind.version(),
        _ => VERSION,
    }
}

/// The API's answer, before its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStart {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body length when the API declared one.
    pub body_len: Option<u64>,
    /// The digest of the response body: the request's. Not a field on the
    /// wire: it is the frame's version, as for [`RequestStart::digest`].
    #[serde(skip)]
    pub digest: DigestKind,
}

/// Why a record value could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than magic and version.
    #[error("record is too short to be a KafkaSend frame ({0} bytes)")]
    TooShort(usize),
    /// Not a KafkaSend record at all.
    #[error("record is not a KafkaSend frame (bad magic)")]
    BadMagic,
    /// Written by a KafkaSend speaking another protocol version.
    #[error("protocol version {found} is not supported (this build speaks versions {VERSION} to {MAX_VERSION}); upgrade the older side")]
    UnsupportedVersion {
        /// Version byte found in the record.
        found: u8,
    },
    /// The header did not decode.
    #[error("malformed frame header: {0}")]
    Malformed(String),
    /// The header needs more than [`MAX_HEADER_BYTES`] to decode.
    #[error("frame header is too large: it needs more than {MAX_HEADER_BYTES} bytes once decoded (a request may carry at most {MAX_HEADERS} headers of {MAX_HEADER_TEXT} bytes in all)")]
    TooLarge,
    /// A frame other than a chunk carried payload bytes.
    #[error("frame carries {0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

/// Encodes a frame and its payload (empty unless it is a chunk) into one
/// record value, in the oldest version that can hold it.
pub fn encode(frame: &Frame, payload: &[u8]) -> Vec<u8> {
    encode_in(DigestKind::Sha256, frame, payload)
}

/// Encodes a frame of a job whose bodies have `digest`, in that digest's
/// version (or a newer one when the frame needs it).
pub fn encode_in(digest: DigestKind, frame: &Frame, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + 64 + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(digest.version().max(needed_version(frame)));
    // Encoding into a Vec cannot fail for these plain types; the size limit
    // only binds on headers far beyond anything we build.
    if let Err(e) = bincode::serde::encode_into_std_write(frame, &mut out, bincode_config()) {
        unreachable_encode(e);
    }
    out.extend_from_slice(payload);
    out
}

/// The magic, version and frame header of a record value.
fn header(digest: DigestKind, frame: &Frame) -> Vec<u8> {
    encode_in(digest, frame, &[])
}

/// A chunk record's value built where it is sent from: room for the frame
/// header first, the payload read straight in after it, and the header
/// written once the payload's checksum is known. Copying each payload into
/// its record was one of the copies every uploaded byte went through.
#[derive(Debug)]
pub(crate) struct ChunkValue {
    buf: Vec<u8>,
    room: usize,
    job: JobId,
    seq: u32,
    offset: u64,
    digest: DigestKind,
}

/// Spare capacity past a chunk's payload, so that a reader's last probe
/// for more (the end of input) does not make the buffer grow.
const PROBE_ROOM: usize = 64;

impl ChunkValue {
    /// An empty chunk `seq` of `job` starting at body byte `offset`, with
    /// room for `capacity` payload bytes, in the version of `digest`.
    pub(crate) fn new(
        job: JobId,
        seq: u32,
        offset: u64,
        capacity: usize,
        digest: DigestKind,
    ) -> Self {
        // The largest checksum takes the most room (bincode's varints);
        // a smaller one is rare (below 2^16: one chunk in 65536).
        let room = header(digest, &chunk_frame(job, seq, offset, u32::MAX)).len();
        let mut buf = Vec::with_capacity(room + capacity + PROBE_ROOM);
        buf.resize(room, 0);
        Self {
            buf,
            room,
            job,
            seq,
            offset,
            digest,
        }
    }

    /// The value so far; the payload is read by appending to it.
    pub(crate) fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The payload read so far.
    pub(crate) fn payload(&self) -> &[u8] {
        self.buf.get(self.room..).unwrap_or_default()
    }

    /// Writes the header for the payload's checksum; returns the frame and
    /// the record value, laid out as [`encode`] lays it out.
    pub(crate) fn finish(mut self, crc32c: u32) -> (Frame, Vec<u8>) {
        let frame = chunk_frame(self.job, self.seq, self.offset, crc32c);
        let head = header(self.digest, &frame);
        if head.len() == self.room {
            self.buf[..self.room].copy_from_slice(&head);
            return (frame, self.buf);
        }
        let value = encode_in(self.digest, &frame, self.payload());
        (frame, value)
    }
}

fn chunk_frame(job: JobId, seq: u32, offset: u64, crc32c: u32) -> Frame {
    Frame {
        job,
        seq,
        body: Body::Chunk(ChunkInfo { offset, crc32c }),
    }
}

#[cold]
fn unreachable_encode(e: bincode::error::EncodeError) -> ! {
    panic!("encoding a frame header into memory failed: {e}")
}

/// Decodes a record value into its frame and payload. A start record's
/// (request or response) `digest` is its version's.
pub fn decode(value: &[u8]) -> Result<(Frame, &[u8]), WireError> {
    let version = peek_version(value)?;
    let Some(digest) = DigestKind::of_version(version) else {
        return Err(WireError::UnsupportedVersion { found: version });
    };
    let rest = &value[PREFIX_LEN..];
    let (mut frame, used): (Frame, usize) =
        bincode::serde::decode_from_slice(rest, bincode_config()).map_err(|e| match e {
            bincode::error::DecodeError::LimitExceeded => WireError::TooLarge,
            e => WireError::Malformed(e.to_string()),
        })?;
    if needed_version(&frame) > version {
        let what = if frame.body.is_sealed() {
            "a sealed frame"
        } else {
            "a BLAKE3 end record (variant 5)"
        };
        return Err(WireError::Malformed(format!(
            "{what} in a version {version} frame"
        )));
    }
    match &mut frame.body {
        Body::RequestStart(start) => start.digest = digest,
        Body::ResponseStart(start) => start.digest = digest,
        _ => {}
    }
    let payload = &rest[used..];
    let carries = matches!(frame.body, Body::Chunk(_)) || frame.body.is_sealed();
    if !carries && !payload.is_empty() {
        return Err(WireError::TrailingBytes(payload.len()));
    }
    Ok((frame, payload))
}

/// A value sealed inside a record (`protocol::seal`), laid out as frame
/// headers are: bincode 2, standard configuration.
pub(crate) fn encode_plain<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode_config()).unwrap_or_else(|e| unreachable_encode(e))
}

/// Reads back [`encode_plain`]'s bytes, all of them, within the frame
/// header's decode limit; the error says what is wrong.
pub(crate) fn decode_plain<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(value)
}

/// Checks magic and returns the version byte, without decoding further.
pub(crate) fn peek_version(value: &[u8]) -> Result<u8, WireError> {
    if value.len() < PREFIX_LEN {
        return Err(WireError::TooShort(value.len()));
    }
    if value[..MAGIC.len()] != MAGIC {
        return Err(WireError::BadMagic);
    }
    Ok(value[MAGIC.len()])
}

/// Formats the `kafkasend-reply-to` header value.
pub fn reply_to_header(topic: &str, partition: i32) -> Vec<u8> {
    format!("{partition}/{topic}").into_bytes()
}

/// Parses the `kafkasend-reply-to` header value.
pub(crate) fn parse_reply_to(value: &[u8]) -> Option<(String, i32)> {
    let s = std::str::from_utf8(value).ok()?;
    let (p, t) = s.split_once('/')?;
    let p: i32 = p.parse().ok()?;
    (p >= 0 && !t.is_empty()).then(|| (t.to_string(), p))
}

/// Reads a `kafkasend-dropped-headers` value as text, cut to
/// [`MAX_DROPPED_HEADERS_BYTES`]; `None` when it says nothing. The text is
/// still the network's: a caller shows it only through a one-line filter.
pub(crate) fn parse_dropped_headers(value: &[u8]) -> Option<String> {
    let cut = &value[..value.len().min(MAX_DROPPED_HEADERS_BYTES)];
    let text = String::from_utf8_lossy(cut);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// CRC32C of a chunk payload.
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(crc: u32, payload: &[u8]) -> (Frame, Vec<u8>) {
        let job = JobId::new();
        let mut v = ChunkValue::new(job, 7, 1 << 40, payload.len(), DigestKind::Sha256);
        v.buf_mut().extend_from_slice(payload);
        assert_eq!(v.payload(), payload);
        v.finish(crc)
    }

    #[test]
    fn a_value_built_in_place_is_what_encode_lays_out() {
        // Checksums of every varint size: 1, 3 and 5 bytes.
        for crc in [0, 250, 251, 65535, 65536, u32::MAX] {
            let payload = b"some chunk bytes".repeat(100);
            let (frame, value) = built(crc, &payload);
            assert_eq!(value, encode(&frame, &payload), "crc {crc}");
            let (decoded, data) = decode(&value).unwrap();
            assert_eq!(decoded, frame);
            assert_eq!(data, &payload[..]);
        }
    }

    #[test]
    fn an_empty_payload_still_decodes() {
        let (frame, value) = built(12345678, &[]);
        let (decoded, data) = decode(&value).unwrap();
        assert_eq!(decoded, frame);
        assert!(data.is_empty());
    }

    #[test]
    fn attempts_are_16_hex_digits_and_differ() {
        let a = new_attempt();
        assert_eq!(a.len(), 16);
        assert!(a
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let many: std::collections::HashSet<Vec<u8>> = (0..1000).map(|_| new_attempt()).collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn a_dropped_headers_value_is_cut_and_read_as_text() {
        assert_eq!(parse_dropped_headers(b""), None);
        assert_eq!(parse_dropped_headers(b"  "), None);
        assert_eq!(
            parse_dropped_headers(b"X-Foo, X-Bar").as_deref(),
            Some("X-Foo, X-Bar")
        );
        // Not UTF-8, or far too long: still one bounded string, never a panic.
        assert_eq!(
            parse_dropped_headers(b"X-\xff\xfe").as_deref(),
            Some("X-\u{fffd}\u{fffd}")
        );
        let huge = vec![b'A'; 1 << 20];
        let shown = parse_dropped_headers(&huge).unwrap();
        assert_eq!(shown.len(), MAX_DROPPED_HEADERS_BYTES);
    }
    use crate::protocol::ErrorCategory;
    use proptest::prelude::*;

    fn arb_category() -> impl Strategy<Value = ErrorCategory> {
        prop_oneof![
            Just(ErrorCategory::Rejected),
            Just(ErrorCategory::BadRequest),
            Just(ErrorCategory::Integrity),
            Just(ErrorCategory::UpstreamUnreachable),
            Just(ErrorCategory::UpstreamTimeout),
            Just(ErrorCategory::Auth),
            Just(ErrorCategory::Internal),
        ]
    }

    fn arb_kind() -> impl Strategy<Value = DigestKind> {
        prop_oneof![Just(DigestKind::Sha256), Just(DigestKind::Blake3)]
    }

    fn arb_headers() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((".{0,20}", ".{0,40}"), 0..6)
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (
                "[A-Z]{1,7}",
                ".{0,80}",
                arb_headers(),
                any::<Option<u64>>(),
                any::<bool>(),
                ".{1,30}",
                any::<i32>(),
                arb_kind(),
            )
                .prop_map(
                    |(method, path, headers, body_len, has_body, t, p, digest)| {
                        Body::RequestStart(RequestStart {
                            method,
                            path,
                            headers,
                            body_len,
                            has_body,
                            reply_topic: t,
                            reply_partition: p,
                            digest,
                        })
                    }
                ),
            (any::<u64>(), any::<u32>())
                .prop_map(|(offset, crc32c)| Body::Chunk(ChunkInfo { offset, crc32c })),
            (any::<u32>(), any::<u64>(), any::<[u8; 32]>(), arb_kind()).prop_map(
                |(chunks, total_len, bytes, kind)| Body::End(EndInfo {
                    chunks,
                    total_len,
                    digest: Digest { kind, bytes },
                })
            ),
            (
                any::<u16>(),
                arb_headers(),
                any::<Option<u64>>(),
                arb_kind()
            )
                .prop_map(|(status, headers, body_len, digest)| Body::ResponseStart(
                    ResponseStart {
                        status,
                        headers,
                        body_len,
                        digest,
                    }
                )),
            (arb_category(), ".{0,100}")
                .prop_map(|(category, message)| Body::Error(Failure { category, message })),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(job in any::<[u8; 16]>(), seq in any::<u32>(), body in arb_body(),
                             payload in prop::collection::vec(any::<u8>(), 0..2048)) {
            let frame = Frame { job: JobId(job), seq, body };
            let payload: &[u8] = if matches!(frame.body, Body::Chunk(_)) { &payload } else { &[] };
            let bytes = encode(&frame, payload);
            let (back, back_payload) = decode(&bytes).unwrap();
            prop_assert_eq!(back, frame);
            prop_assert_eq!(back_payload, payload);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn frames_of_a_job_are_in_its_digest_version(body in arb_body(), kind in arb_kind()) {
            let frame = Frame { job: JobId::new(), seq: 1, body };
            let payload: &[u8] = if matches!(frame.body, Body::Chunk(_)) { b"x" } else { &[] };
            let bytes = encode_in(kind, &frame, payload);
            prop_assert_eq!(bytes[4], kind.version().max(needed_version(&frame)));
            // A start read back says the digest of the version it came in.
            let mut want = frame;
            let written = DigestKind::of_version(bytes[4]).unwrap();
            match &mut want.body {
                Body::RequestStart(s) => s.digest = written,
                Body::ResponseStart(s) => s.digest = written,
                _ => {}
            }
            prop_assert_eq!(decode(&bytes).unwrap().0, want);
        }

        #[test]
        fn truncated_v2_frames_are_errors(cut in 0usize..60) {
            let frame = Frame { job: JobId::new(), seq: 3, body: Body::End(EndInfo {
                chunks: 2, total_len: 1 << 33, digest: DigestKind::Blake3.of(b"x") }) };
            let bytes = encode(&frame, &[]);
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_headers_after_valid_prefix_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), version in VERSION..=MAX_VERSION) {
            let mut value = MAGIC.to_vec();
            value.push(version);
            value.extend_from_slice(&bytes);
            let _ = decode(&value);
        }

        #[test]
        fn truncated_frames_are_errors(cut in 0usize..40) {
            let frame = Frame { job: JobId::new(), seq: 0, body: Body::ResponseStart(ResponseStart {
                status: 200, headers: vec![("content-type".into(), "text/plain".into())], body_len: Some(5),
                digest: DigestKind::Sha256 }) };
            let bytes = encode(&frame, &[]);
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }

    /// A start record with `count` headers whose names and values take
    /// `text` bytes together, with the longest path the policy takes and
    /// the longest topic name Kafka allows.
    fn start_with_headers(count: usize, text: usize) -> Frame {
        let headers = (0..count)
            .map(|i| {
                let name = format!("x-{i}");
                let share = text / count + usize::from(i < text % count);
                let value = "v".repeat(share.saturating_sub(name.len()));
                (name, value)
            })
            .collect();
        Frame {
            job: JobId::new(),
            seq: 0,
            body: Body::RequestStart(RequestStart {
                method: "POST".into(),
                path: format!(
                    "/{}",
                    "p".repeat(crate::protocol::request::MAX_PATH_BYTES - 1)
                ),
                headers,
                body_len: Some(u64::MAX),
                has_body: true,
                reply_topic: "t".repeat(249),
                reply_partition: i32::MAX,
                digest: DigestKind::Sha256,
            }),
        }
    }

    #[test]
    fn the_largest_headers_the_settings_allow_decode() {
        let frame = start_with_headers(MAX_HEADERS, MAX_HEADER_TEXT);
        let Body::RequestStart(s) = &frame.body else {
            unreachable!()
        };
        let text: usize = s.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert_eq!((s.headers.len(), text), (MAX_HEADERS, MAX_HEADER_TEXT));
        let bytes = encode(&frame, &[]);
        assert_eq!(decode(&bytes).unwrap().0, frame);
        // Twice as many short headers still reach the policy.
        let many = start_with_headers(2 * MAX_HEADERS, 2 * MAX_HEADERS * 8);
        assert_eq!(decode(&encode(&many, &[])).unwrap().0, many);
    }

    #[test]
    fn a_header_past_the_decoding_budget_is_named_too_large() {
        let huge = start_with_headers(MAX_HEADERS, MAX_HEADER_BYTES);
        let err = decode(&encode(&huge, &[])).unwrap_err();
        assert_eq!(err, WireError::TooLarge);
        assert!(err.to_string().contains("too large"), "{err}");
        // Counted as decoded, not as encoded: many empty headers take 2
        // bytes each on the wire but 16 bytes of lengths in the budget.
        let empty = Frame {
            job: JobId::new(),
            seq: 0,
            body: Body::RequestStart(RequestStart {
                method: "GET".into(),
                path: "/".into(),
                headers: vec![(String::new(), String::new()); MAX_HEADER_BYTES / 16],
                body_len: None,
                has_body: false,
                reply_topic: "t".into(),
                reply_partition: 0,
                digest: DigestKind::Sha256,
            }),
        };
        let bytes = encode(&empty, &[]);
        assert!(bytes.len() < MAX_HEADER_BYTES / 4);
        assert_eq!(decode(&bytes).unwrap_err(), WireError::TooLarge);
    }

    fn end(kind: DigestKind) -> Frame {
        Frame {
            job: JobId([1; 16]),
            seq: 2,
            body: Body::End(EndInfo {
                chunks: 1,
                total_len: 3,
                digest: kind.of(b"abc"),
            }),
        }
    }

    #[test]
    fn future_version_is_recognised() {
        let mut bytes = encode(&end(DigestKind::Sha256), &[]);
        for version in [0, 4, 255] {
            bytes[4] = version;
            let err = decode(&bytes).unwrap_err();
            assert_eq!(err, WireError::UnsupportedVersion { found: version });
            assert!(err.to_string().contains(&format!("version {version} ")));
            assert!(err.to_string().contains("versions 1 to 3"), "{err}");
        }
    }

    #[test]
    fn sealed_frames_are_variants_6_to_10_of_version_3_and_carry_payload() {
        let job = JobId::new();
        let bodies = [
            Body::SealedStart(SealedStart {
                key_id: [1; 8],
                enc: vec![2; 32],
                body_len: Some(9),
                has_body: true,
                reply_topic: "r".into(),
                reply_partition: 4,
            }),
            Body::SealedChunk(SealedChunk { offset: 7 }),
            Body::SealedEnd(SealedEnd {
                chunks: 1,
                total_len: 9,
            }),
            Body::SealedResponseStart(SealedResponseStart { body_len: None }),
            Body::SealedError,
        ];
        for (index, body) in (6u8..).zip(bodies) {
            let frame = Frame { job, seq: 1, body };
            let bytes = encode(&frame, b"sealed bytes");
            assert_eq!(bytes[4], 3);
            // Magic, version, 16 job bytes, seq: then the variant index.
            assert_eq!(bytes[22], index);
            let (back, payload) = decode(&bytes).unwrap();
            assert_eq!((back, payload), (frame, &b"sealed bytes"[..]));
            // The same bytes in version 2 are malformed.
            let mut old = bytes.clone();
            old[4] = 2;
            let err = decode(&old).unwrap_err();
            assert!(
                err.to_string().contains("a sealed frame in a version 2"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_blake3_end_is_variant_5_of_version_2() {
        let sha = encode(&end(DigestKind::Sha256), &[]);
        let b3 = encode(&end(DigestKind::Blake3), &[]);
        assert_eq!((sha[4], b3[4]), (1, 2));
        // Magic, version, 16 job bytes, seq: then the variant index.
        assert_eq!((sha[22], b3[22]), (2, 5));
        // The same layout after the index: chunks, length, 32 digest bytes.
        assert_eq!(sha.len(), b3.len());
        assert_eq!(&b3[25..], DigestKind::Blake3.of(b"abc").bytes);
        assert_eq!(decode(&b3).unwrap().0, end(DigestKind::Blake3));
        // A SHA-256 end may travel in version 2 (written so, it reads back the same).
        let sha_v2 = encode_in(DigestKind::Blake3, &end(DigestKind::Sha256), &[]);
        assert_eq!(sha_v2[4], 2);
        assert_eq!(decode(&sha_v2).unwrap().0, end(DigestKind::Sha256));
    }

    #[test]
    fn the_worked_example_of_protocol_md_encodes_as_shown() {
        let job: JobId = "01JDXK5Q7V8Y0C4J6N2W3R9T1M".parse().unwrap();
        let end = |kind: DigestKind| Frame {
            job,
            seq: 2,
            body: Body::End(EndInfo {
                chunks: 1,
                total_len: 5,
                digest: kind.of(b"hello"),
            }),
        };
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let prefix = "4b534e44";
        let job = "01937b32dcfb4780c248d5170784e834";
        assert_eq!(
            hex(encode(&end(DigestKind::Sha256), &[])),
            format!(
                "{prefix}01{job}02020105{}",
                DigestKind::Sha256.of(b"hello").hex()
            )
        );
        assert_eq!(
            hex(encode(&end(DigestKind::Blake3), &[])),
            format!("{prefix}02{job}02050105ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f")
        );
    }

    #[test]
    fn version_1_has_no_blake3_end() {
        let mut bytes = encode(&end(DigestKind::Blake3), &[]);
        bytes[4] = 1;
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("variant 5"), "{err}");
        // Past variant 5 there is none, in either version.
        for version in [1, 2] {
            let mut bytes = encode(&end(DigestKind::Sha256), &[]);
            bytes[4] = version;
            bytes[22] = 6;
            assert!(matches!(decode(&bytes), Err(WireError::Malformed(_))));
        }
    }

    #[test]
    fn a_start_takes_its_digest_from_its_version() {
        let mut frame = start_with_headers(1, 10);
        let Body::RequestStart(s) = &mut frame.body else {
            unreachable!()
        };
        s.digest = DigestKind::Blake3;
        let v2 = encode(&frame, &[]);
        assert_eq!(v2[4], 2);
        assert_eq!(decode(&v2).unwrap().0, frame);
        // The same bytes as version 1 are a SHA-256 job's start.
        let mut v1 = v2.clone();
        v1[4] = 1;
        let Body::RequestStart(back) = decode(&v1).unwrap().0.body else {
            unreachable!()
        };
        assert_eq!(back.digest, DigestKind::Sha256);
        // A chunk of a BLAKE3 job is version 2, its bytes otherwise the same.
        let (_, c1) = built(5, b"abc");
        let mut c2 = ChunkValue::new(JobId::new(), 7, 1 << 40, 3, DigestKind::Blake3);
        c2.buf_mut().extend_from_slice(b"abc");
        let (_, c2) = c2.finish(5);
        assert_eq!((c1[4], c2[4]), (1, 2));
        assert_eq!(c1[21..], c2[21..]);
    }

    #[test]
    fn foreign_records_are_named() {
        assert_eq!(decode(b"{\"json\":1}").unwrap_err(), WireError::BadMagic);
        assert_eq!(decode(b"KS").unwrap_err(), WireError::TooShort(2));
    }

    #[test]
    fn payload_on_a_non_chunk_frame_is_refused() {
        let frame = Frame {
            job: JobId::new(),
            seq: 1,
            body: Body::Error(Failure {
                category: ErrorCategory::Internal,
                message: "x".into(),
            }),
        };
        let bytes = encode(&frame, b"junk");
        assert_eq!(decode(&bytes).unwrap_err(), WireError::TrailingBytes(4));
    }

    #[test]
    fn reply_to_header_round_trips() {
        let v = reply_to_header("api-responses", 7);
        assert_eq!(parse_reply_to(&v), Some(("api-responses".into(), 7)));
        assert_eq!(parse_reply_to(b"-1/x"), None);
        assert_eq!(parse_reply_to(b"3/"), None);
        assert_eq!(parse_reply_to(b"\xff/x"), None);
    }

    #[test]
    fn job_id_text_round_trips() {
        let id = JobId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<JobId>().unwrap(), id);
        assert_eq!(text.to_lowercase().parse::<JobId>().unwrap(), id);
        assert_eq!(id.key(), text.into_bytes());
        let max = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<JobId>().unwrap();
        assert_eq!(max, JobId([0xff; 16]));
        assert_eq!("00000000000000000000000000".parse(), Ok(JobId([0; 16])));
    }

    #[test]
    fn job_id_text_that_is_no_ulid_is_refused() {
        let cases = [
            ("8ZZZZZZZZZZZZZZZZZZZZZZZZZ", JobIdError::Overflow('8')),
            ("ZZZZZZZZZZZZZZZZZZZZZZZZZZ", JobIdError::Overflow('Z')),
            ("z0000000000000000000000000", JobIdError::Overflow('z')),
            ("01JDXK5Q7V8Y0C4J6N2W3R9T1", JobIdError::Length(25)),
            ("01JDXK5Q7V8Y0C4J6N2W3R9T1MM", JobIdError::Length(27)),
            ("", JobIdError::Length(0)),
            (
                "01JDXK5Q7V8Y0C4J6N2W3R9TIM",
                JobIdError::Digit { position: 25 },
            ),
            (
                "01JDXK5Q7V8Y0C4J6N2W3R9T-M",
                JobIdError::Digit { position: 25 },
            ),
            (
                "U1JDXK5Q7V8Y0C4J6N2W3R9T1M",
                JobIdError::Digit { position: 1 },
            ),
            // 26 characters, more bytes: no panic on a char boundary.
            (
                "é1JDXK5Q7V8Y0C4J6N2W3R9T1M",
                JobIdError::Digit { position: 1 },
            ),
            (
                "01JDXK5Q7V8Y0C4J6N2W3R9T1é",
                JobIdError::Digit { position: 26 },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<JobId>(), Err(want.clone()), "{text}");
        }
    }
}
