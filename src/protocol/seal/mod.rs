//! Sealed envelopes: a request only its portal can read, and an answer only
//! its sender can read, whoever runs Kafka.
//!
//! `send --seal-to` draws a fresh secret for each job and encapsulates it to
//! the portal's public key with HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, the export-only AEAD): the start
//! record carries the encapsulated key, and both sides take the job's
//! secret from the HPKE exporter. Two AES-256-GCM keys come from that
//! secret by HKDF, one per direction. Every sealed record's payload is
//! `nonce (12 bytes) | ciphertext | tag (16 bytes)`, with a random nonce,
//! and its associated data is the record value in front of the payload
//! (magic, version and the clear frame header: job id, seq, kind, offset or
//! sizes), followed, for an answer, by its `kafkasend-attempt` value. So a
//! record cannot move to another job (other key), another place in its job
//! (other seq or offset), another attempt, or have its clear fields changed,
//! without failing to open.
//!
//! What each sealed frame seals is in [`RequestHead`], [`ResponseHead`],
//! the chunk bytes, the end record's digest and an error's [`Failure`];
//! PROTOCOL.md section 11.1 lists what stays in clear.
//!
//! Keys are PEM files as `openssl genpkey -algorithm X25519` writes them
//! (PKCS#8 private key, SubjectPublicKeyInfo public key). A key or a job
//! secret never appears in `Debug` output, logs or errors.

use std::fmt;

use hpke::aead::ExportOnlyAead;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use rand_core::{OsRng, TryRngCore as _};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::protocol::digest::{hex, Digest, DigestKind};
use crate::protocol::wire::{
    self, Body, ChunkInfo, EndInfo, Frame, JobId, RequestStart, ResponseStart, SealedStart,
};
use crate::protocol::{ErrorCategory, Failure};

#[cfg(test)]
mod tests;

/// Bytes a sealed payload adds to what it seals: the nonce and the tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Record headers sealed inside a start record, by name.
pub type RecordHeaders = Vec<(String, Vec<u8>)>;

/// Bytes of the nonce in front of a sealed payload: the room
/// [`RecordKey::seal_in_place`] fills in.
pub const NONCE_BYTES: usize = NONCE_LEN;

const TAG_LEN: usize = 16;

/// Length of an X25519 key and of the encapsulated key.
const KEY_LEN: usize = 32;

/// PKCS#8 v1 (RFC 8410) of an X25519 private key, up to the key's bytes.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// SubjectPublicKeyInfo (RFC 8410) of an X25519 public key, up to its bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];

/// Most record headers a sealed head may carry (a signature, trace context,
/// dropped-header names: a handful).
const MAX_RECORD_HEADERS: usize = 16;

/// Why a key file cannot be used, or a sealed record cannot be opened.
/// Messages never hold key or plaintext bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// A key file's text is not what it should be.
    #[error("{0}")]
    Key(String),
    /// The start record is sealed to a key this portal does not hold.
    #[error("the request is sealed to key {found}, which this portal does not hold (it holds {held}); the sender needs the portal's current public key")]
    UnknownKey {
        /// The key id the record names.
        found: KeyId,
        /// The key ids held, comma-separated.
        held: String,
    },
    /// The encapsulated key is not one (wrong length, not a curve point).
    #[error("the sealed start's encapsulated key is malformed ({0})")]
    BadEncapsulation(String),
    /// The AEAD tag did not verify: wrong key, or the record was altered,
    /// moved to another job or place, or truncated.
    #[error("a sealed {0} did not open: it was altered, moved from another job or place, or sealed with another key")]
    Open(&'static str),
    /// Opened, but what it held is not a valid frame of its kind.
    #[error("a sealed {what} opened but is malformed: {why}")]
    Malformed {
        /// The kind of record.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A clear frame where only a sealed one may be.
    #[error("a clear {0} in a sealed job")]
    Clear(&'static str),
}

impl SealError {
    /// The error a portal answers with: `Rejected` when it cannot open the
    /// job at all (no such key), `BadRequest` for malformed records,
    /// `Integrity` when a record does not authenticate.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Self::Key(_) | Self::UnknownKey { .. } => ErrorCategory::Rejected,
            Self::BadEncapsulation(_) | Self::Malformed { .. } | Self::Clear(_) => {
                ErrorCategory::BadRequest
            }
            Self::Open(_) => ErrorCategory::Integrity,
        }
    }
}

/// The first 8 bytes of the SHA-256 of a public key's 32 bytes: names the
/// key a job is sealed to. Shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

type HpkePublic = <X25519HkdfSha256 as hpke::Kem>::PublicKey;
type HpkePrivate = <X25519HkdfSha256 as hpke::Kem>::PrivateKey;
type HpkeEncapped = <X25519HkdfSha256 as hpke::Kem>::EncappedKey;

/// A portal's public sealing key, as `send --seal-to` reads it.
#[derive(Clone)]
pub struct PublicKey {
    key: HpkePublic,
    id: KeyId,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    fn new(key: HpkePublic) -> Self {
        let digest = Sha256::digest(key.to_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self { key, id: KeyId(id) }
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Reads a PEM `PUBLIC KEY` holding an X25519 key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, SealError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|_| {
            SealError::Key(
                "holds no PEM public key (-----BEGIN PUBLIC KEY-----); give the portal's .pub file, as `kafkasend keygen` writes it".into(),
            )
        })?;
        let raw = x25519_bytes(der.as_ref(), &SPKI_PREFIX).ok_or_else(|| {
                SealError::Key(
                    "is not an X25519 public key (a sealing key is X25519: `kafkasend keygen` or `openssl genpkey -algorithm X25519`)".into(),
                )
            })?;
        let key = HpkePublic::from_bytes(raw)
            .map_err(|_| SealError::Key("is not a valid X25519 public key".into()))?;
        Ok(Self::new(key))
    }

    /// The key as a PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.key.to_bytes());
        pem("PUBLIC KEY", &der)
    }
}

/// A portal's private sealing key.
pub struct SecretKey {
    key: HpkePrivate,
    public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public.id)
    }
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Self {
        let (key, public) = X25519HkdfSha256::gen_keypair(&mut OsRng.unwrap_err());
        Self {
            key,
            public: PublicKey::new(public),
        }
    }

    fn from_raw(raw: &[u8]) -> Result<Self, SealError> {
        let key = HpkePrivate::from_bytes(raw)
            .map_err(|_| SealError::Key("is not a valid X25519 private key".into()))?;
        let public = PublicKey::new(X25519HkdfSha256::sk_to_pk(&key));
        Ok(Self { key, public })
    }

    /// Its public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Every PEM `PRIVATE KEY` in `pem`, in order; at least one.
    pub fn all_from_pem(pem: &[u8]) -> Result<Vec<Self>, SealError> {
        let mut keys = Vec::new();
        for item in PrivatePkcs8KeyDer::pem_slice_iter(pem) {
            let der = item.map_err(|_| SealError::Key("holds a malformed PEM block".into()))?;
            let raw = x25519_bytes(der.secret_pkcs8_der(), &PKCS8_PREFIX).ok_or_else(|| {
                    SealError::Key(
                        "holds a private key that is not X25519 (a sealing key is X25519: `kafkasend keygen` or `openssl genpkey -algorithm X25519`)".into(),
                    )
                })?;
            keys.push(Self::from_raw(raw)?);
        }
        if keys.is_empty() {
            return Err(SealError::Key(
                "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into(),
            ));
        }
        Ok(keys)
    }

    /// The key as a PEM `PRIVATE KEY` (PKCS#8), wiped from memory when dropped.
    pub fn to_pem(&self) -> Zeroizing<String> {
        let mut der = Zeroizing::new(PKCS8_PREFIX.to_vec());
        der.extend_from_slice(&self.key.to_bytes());
        Zeroizing::new(pem("PRIVATE KEY", &der))
    }
}

/// The 32 key bytes of an X25519 key's DER, which is `prefix` and them.
fn x25519_bytes<'a>(der: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    der.strip_prefix(prefix).filter(|k| k.len() == KEY_LEN)
}

/// PEM text of `der` under `label`, in lines of 64 characters.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The private keys a portal opens sealed requests with: the first is the
/// one it advertises, the others (older ones, during a rotation) are still
/// accepted.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<SecretKey>,
}

impl Keyring {
    /// A keyring of `keys`, the first advertised; `None` when empty.
    pub fn new(keys: Vec<SecretKey>) -> Option<Self> {
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The advertised key: the one senders should seal to.
    pub fn advertised(&self) -> &PublicKey {
        &self.keys[0].public
    }

    /// The ids of every key held, the advertised one first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.public.id).collect()
    }

    /// Opens a sealed start record read from `partition` of `topic`: the
    /// job's secret, the request it seals, and the record headers sealed
    /// with it. `value` is the whole record value, `frame` and `payload`
    /// its decoding.
    pub fn open_start(
        &self,
        value: &[u8],
        frame: &Frame,
        payload: &[u8],
        topic: &str,
        partition: i32,
    ) -> Result<OpenedStart, SealError> {
        let Body::SealedStart(start) = &frame.body else {
            return Err(SealError::Clear("start record"));
        };
        let found = KeyId(start.key_id);
        let key = self
            .keys
            .iter()
            .find(|k| k.public.id == found)
            .ok_or_else(|| SealError::UnknownKey {
                found,
                held: self
                    .ids()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let encapped = HpkeEncapped::from_bytes(&start.enc).map_err(|_| {
            SealError::BadEncapsulation(format!(
                "{} bytes, an X25519 key has {KEY_LEN}",
                start.enc.len()
            ))
        })?;
        let info = info(frame.job, topic, partition);
        let ctx = hpke::setup_receiver::<ExportOnlyAead, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &key.key,
            &encapped,
            &info,
        )
        .map_err(|e| SealError::BadEncapsulation(e.to_string()))?;
        let mut secret = JobSecret::empty();
        ctx.export(EXPORT_LABEL, &mut secret.0[..])
            .map_err(|e| SealError::BadEncapsulation(e.to_string()))?;
        let keys = secret.keys(frame.job);
        let plain = keys
            .request
            .open(aad_of(value, payload), &[], payload, "start record")?;
        let head: RequestHead = decode_inner(&plain, "start record")?;
        let record_headers = checked_record_headers(head.record_headers, "start record")?;
        Ok(OpenedStart {
            start: RequestStart {
                method: head.method,
                path: head.path,
                headers: head.headers,
                body_len: start.body_len,
                has_body: start.has_body,
                reply_topic: start.reply_topic.clone(),
                reply_partition: start.reply_partition,
                digest: DigestKind::Blake3,
            },
            record_headers,
            key: found,
            secret,
            keys,
        })
    }
}

/// A sealed start record, opened.
#[derive(Debug)]
pub struct OpenedStart {
    /// The request it seals, as a clear start record would say it.
    pub start: RequestStart,
    /// The record headers sealed with it (signature, trace context), as the
    /// clear record would carry them.
    pub record_headers: Vec<(String, Vec<u8>)>,
    /// The portal key it was sealed to.
    pub key: KeyId,
    /// The job's secret.
    pub secret: JobSecret,
    /// The job's record keys.
    pub keys: JobKeys,
}

const EXPORT_LABEL: &[u8] = b"kafkasend/3 job secret";

/// HPKE `info`: binds the encapsulation to the job and to the partition
/// of the request topic its start record is produced to.
fn info(job: JobId, topic: &str, partition: i32) -> Vec<u8> {
    let mut info = b"kafkasend/3 request".to_vec();
    info.extend_from_slice(&job.0);
    info.extend_from_slice(&(topic.len() as u32).to_be_bytes());
    info.extend_from_slice(topic.as_bytes());
    info.extend_from_slice(&partition.to_be_bytes());
    info
}

/// The secret of one sealed job, shared by its sender and the portal that
/// opens it. Both record keys derive from it. Wiped when dropped.
pub struct JobSecret(Zeroizing<[u8; 32]>);

impl fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

impl JobSecret {
    fn empty() -> Self {
        Self(Zeroizing::new([0; 32]))
    }

    /// The secret as text (base64), for the sender's job key file.
    pub fn to_text(&self) -> Zeroizing<String> {
        use base64::Engine as _;
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]))
    }

    /// Reads [`JobSecret::to_text`]'s text back.
    pub fn from_text(text: &str) -> Result<Self, SealError> {
        use base64::Engine as _;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| SealError::Key("is not a job secret (base64)".into()))?,
        );
        let mut secret = Self::empty();
        if bytes.len() != secret.0.len() {
            return Err(SealError::Key(format!(
                "holds {} bytes; a job secret has 32",
                bytes.len()
            )));
        }
        secret.0.copy_from_slice(&bytes);
        Ok(secret)
    }

    /// The record keys of `job`, one per direction.
    pub fn keys(&self, job: JobId) -> JobKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"kafkasend/3").extract(&self.0[..]);
        let key = |label: &[u8], direction| {
            let info = [label];
            let okm = prk
                .expand(&info, &AES_256_GCM)
                .unwrap_or_else(|_| unreachable!("32 bytes is within HKDF-SHA256's output"));
            RecordKey {
                key: LessSafeKey::new(UnboundKey::from(okm)),
                job,
                direction,
            }
        };
        JobKeys {
            request: key(b"request", Direction::Request),
            response: key(b"response", Direction::Response),
        }
    }
}

/// Seals a start record for the portal whose public key is `to`: returns
/// the record value and the job's secret. `record_headers` are the headers
/// a clear start record would carry besides the reply-to header (the
/// signature and the trace context); they travel sealed instead.
/// `partition` is the request partition the record is produced to.
pub fn seal_start(
    to: &PublicKey,
    job: JobId,
    start: &RequestStart,
    record_headers: Vec<(String, Vec<u8>)>,
    topic: &str,
    partition: i32,
) -> Result<(Vec<u8>, JobSecret, JobKeys), SealError> {
    let info = info(job, topic, partition);
    let (encapped, ctx) = hpke::setup_sender::<ExportOnlyAead, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &to.key,
        &info,
        &mut OsRng.unwrap_err(),
    )
    .map_err(|e| SealError::Key(format!("cannot seal to this key: {e}")))?;
    let mut secret = JobSecret::empty();
    ctx.export(EXPORT_LABEL, &mut secret.0[..])
        .map_err(|e| SealError::Key(format!("cannot seal to this key: {e}")))?;
    let keys = secret.keys(job);
    let frame = Frame {
        job,
        seq: 0,
        body: Body::SealedStart(SealedStart {
            key_id: to.id.0,
            enc: encapped.to_bytes().to_vec(),
            body_len: start.body_len,
            has_body: start.has_body,
            reply_topic: start.reply_topic.clone(),
            reply_partition: start.reply_partition,
        }),
    };
    let head = RequestHead {
        method: start.method.clone(),
        path: start.path.clone(),
        headers: start.headers.clone(),
        record_headers,
    };
    let plain = Zeroizing::new(encode_inner(&head));
    let value = keys.request.seal_frame(&frame, &plain, &[]);
    Ok((value, secret, keys))
}

/// What a sealed start record seals.
#[derive(Serialize, Deserialize)]
struct RequestHead {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    record_headers: Vec<(String, Vec<u8>)>,
}

/// What a sealed response start record seals.
#[derive(Serialize, Deserialize)]
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
    record_headers: Vec<(String, Vec<u8>)>,
}

fn encode_inner<T: Serialize>(value: &T) -> Vec<u8> {
    wire::encode_plain(value)
}

fn decode_inner<T: serde::de::DeserializeOwned>(
    plain: &[u8],
    what: &'static str,
) -> Result<T, SealError> {
    wire::decode_plain(plain).map_err(|why| SealError::Malformed { what, why })
}

fn checked_record_headers(
    headers: Vec<(String, Vec<u8>)>,
    what: &'static str,
) -> Result<Vec<(String, Vec<u8>)>, SealError> {
    if headers.len() > MAX_RECORD_HEADERS {
        return Err(SealError::Malformed {
            what,
            why: format!(
                "{} record headers, at most {MAX_RECORD_HEADERS}",
                headers.len()
            ),
        });
    }
    Ok(headers)
}

/// The record value in front of `payload`, a slice at the end of `value`:
/// the associated data of a sealed record.
fn aad_of<'a>(value: &'a [u8], payload: &[u8]) -> &'a [u8] {
    &value[..value.len().saturating_sub(payload.len())]
}

/// Which way a record travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to portal.
    Request,
    /// Portal to client.
    Response,
}

/// A sealed job's two record keys.
#[derive(Debug)]
pub struct JobKeys {
    /// Seals the request's records.
    pub request: RecordKey,
    /// Seals the answer's records.
    pub response: RecordKey,
}

#[cfg(test)]
impl JobKeys {
    /// The keys of a job with a random secret, for tests of code that only
    /// seals or opens its records.
    pub(crate) fn random(job: JobId) -> Self {
        let mut secret = JobSecret::empty();
        OsRng
            .try_fill_bytes(&mut secret.0[..])
            .expect("the operating system's random generator");
        secret.keys(job)
    }
}

/// The AES-256-GCM key of one direction of one job.
pub struct RecordKey {
    key: LessSafeKey,
    job: JobId,
    direction: Direction,
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKey({}, {:?})", self.job, self.direction)
    }
}

/// A clear frame opened from a sealed record, with its payload.
#[derive(Debug)]
pub struct Opened {
    /// The frame as its clear counterpart says it: a `Chunk` (checksum of
    /// the opened bytes), an `End` (BLAKE3), a `ResponseStart` or an `Error`.
    pub frame: Frame,
    /// The chunk's bytes; empty for other frames.
    pub payload: Vec<u8>,
    /// The record headers sealed in a response start record.
    pub record_headers: Vec<(String, Vec<u8>)>,
}

impl RecordKey {
    /// The job this key belongs to.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The record value of the sealed `frame` (one of the sealed variants)
    /// whose payload seals `plain`; `extra` is more associated data (an
    /// answer's attempt value).
    pub fn seal_frame(&self, frame: &Frame, plain: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut value = wire::encode_in(DigestKind::Blake3, frame, &[]);
        let at = value.len();
        value.reserve(OVERHEAD + plain.len());
        value.extend_from_slice(&[0; NONCE_LEN]);
        value.extend_from_slice(plain);
        self.seal_in_place(&mut value, at, extra);
        value
    }

    /// Seals in place a record value built as `header | NONCE_LEN spare
    /// bytes | plaintext`, the header ending at `at`: fills in the nonce,
    /// encrypts the plaintext and appends the tag.
    pub fn seal_in_place(&self, value: &mut Vec<u8>, at: usize, extra: &[u8]) {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .unwrap_or_else(|e| panic!("the operating system's random generator failed: {e}"));
        let (head, rest) = value.split_at_mut(at);
        rest[..NONCE_LEN].copy_from_slice(&nonce);
        let aad = [head, extra].concat();
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut rest[NONCE_LEN..],
            )
            .unwrap_or_else(|_| unreachable!("a record is far below AES-GCM's length limit"));
        value.extend_from_slice(tag.as_ref());
    }

    /// Opens a sealed `payload` whose associated data is `aad` then `extra`.
    fn open(
        &self,
        aad: &[u8],
        extra: &[u8],
        payload: &[u8],
        what: &'static str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if payload.len() < OVERHEAD {
            return Err(SealError::Open(what));
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open(what))?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let aad = [aad, extra].concat();
        let len = self
            .key
            .open_in_place(nonce, Aad::from(&aad[..]), &mut buf[..])
            .map_err(|_| SealError::Open(what))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens a sealed record of this key's job and direction into its clear
    /// frame: `value` is the record value, `frame` and `payload` its
    /// decoding, `extra` the associated data past the value (an answer's
    /// attempt value). A sealed start record is opened by
    /// [`Keyring::open_start`] instead.
    pub fn open_frame(
        &self,
        value: &[u8],
        frame: Frame,
        payload: &[u8],
        extra: &[u8],
    ) -> Result<Opened, SealError> {
        let aad = aad_of(value, payload);
        let job = frame.job;
        let seq = frame.seq;
        let clear = |body| Frame { job, seq, body };
        let (what, allowed) = match (&frame.body, self.direction) {
            (Body::SealedChunk(_), _) => ("chunk", true),
            (Body::SealedEnd(_), _) => ("end record", true),
            (Body::SealedResponseStart(_), d) => ("response start", d == Direction::Response),
            (Body::SealedError, d) => ("error", d == Direction::Response),
            (Body::SealedStart(_), _) => ("start record", false),
            (Body::Chunk(_), _) => return Err(SealError::Clear("chunk")),
            (Body::End(_), _) => return Err(SealError::Clear("end record")),
            (Body::RequestStart(_), _) => return Err(SealError::Clear("start record")),
            (Body::ResponseStart(_), _) => return Err(SealError::Clear("response start")),
            (Body::Error(_), _) => return Err(SealError::Clear("error")),
        };
        if !allowed || job != self.job {
            return Err(SealError::Malformed {
                what,
                why: "not a record of this job's direction".into(),
            });
        }
        let mut plain = self.open(aad, extra, payload, what)?;
        let opened = match frame.body {
            // The chunk's bytes move out as they are (a copy per chunk was
            // a second pass over every byte); they are the job's body,
            // which the caller holds in clear anyway.
            Body::SealedChunk(c) => Opened {
                frame: clear(Body::Chunk(ChunkInfo {
                    offset: c.offset,
                    crc32c: wire::checksum(&plain),
                })),
                payload: std::mem::take(&mut *plain),
                record_headers: Vec::new(),
            },
            Body::SealedEnd(e) => {
                let bytes: [u8; 32] = plain[..].try_into().map_err(|_| SealError::Malformed {
                    what,
                    why: format!("a digest of {} bytes, BLAKE3's has 32", plain.len()),
                })?;
                Opened {
                    frame: clear(Body::End(EndInfo {
                        chunks: e.chunks,
                        total_len: e.total_len,
                        digest: Digest {
                            kind: DigestKind::Blake3,
                            bytes,
                        },
                    })),
                    payload: Vec::new(),
                    record_headers: Vec::new(),
                }
            }
            Body::SealedResponseStart(r) => {
                let head: ResponseHead = decode_inner(&plain, what)?;
                Opened {
                    frame: clear(Body::ResponseStart(ResponseStart {
                        status: head.status,
                        headers: head.headers,
                        body_len: r.body_len,
                        digest: DigestKind::Blake3,
                    })),
                    payload: Vec::new(),
                    record_headers: checked_record_headers(head.record_headers, what)?,
                }
            }
            Body::SealedError => {
                let failure: Failure = decode_inner(&plain, what)?;
                Opened {
                    frame: clear(Body::Error(failure)),
                    payload: Vec::new(),
                    record_headers: Vec::new(),
                }
            }
            _ => unreachable!("only sealed frames of this direction get here"),
        };
        Ok(opened)
    }

    /// Opens with this request key a sealed start record of its job: the
    /// sender reading back what it wrote (a resumed upload). Returns the
    /// request it seals and the record headers sealed with it.
    pub fn open_own_start(
        &self,
        value: &[u8],
        frame: &Frame,
        payload: &[u8],
    ) -> Result<(RequestStart, RecordHeaders), SealError> {
        let what = "start record";
        let Body::SealedStart(start) = &frame.body else {
            return Err(SealError::Clear(what));
        };
        if self.direction != Direction::Request || frame.job != self.job {
            return Err(SealError::Malformed {
                what,
                why: "not a record of this job's direction".into(),
            });
        }
        let plain = self.open(aad_of(value, payload), &[], payload, what)?;
        let head: RequestHead = decode_inner(&plain, what)?;
        let record_headers = checked_record_headers(head.record_headers, what)?;
        let start = RequestStart {
            method: head.method,
            path: head.path,
            headers: head.headers,
            body_len: start.body_len,
            has_body: start.has_body,
            reply_topic: start.reply_topic.clone(),
            reply_partition: start.reply_partition,
            digest: DigestKind::Blake3,
        };
        Ok((start, record_headers))
    }

    /// The sealed record value of a clear response or body frame of this
    /// job: `Chunk` (its bytes in `payload`), `End`, `ResponseStart` (with
    /// the record headers it would carry, sealed with it) or `Error`.
    /// `extra` is the answer's attempt value (empty for a request).
    pub fn seal_clear(
        &self,
        frame: &Frame,
        payload: &[u8],
        record_headers: Vec<(String, Vec<u8>)>,
        extra: &[u8],
    ) -> Vec<u8> {
        let sealed = |body| Frame {
            job: frame.job,
            seq: frame.seq,
            body,
        };
        match &frame.body {
            Body::Chunk(c) => self.seal_frame(
                &sealed(Body::SealedChunk(wire::SealedChunk { offset: c.offset })),
                payload,
                extra,
            ),
            Body::End(e) => self.seal_frame(
                &sealed(Body::SealedEnd(wire::SealedEnd {
                    chunks: e.chunks,
                    total_len: e.total_len,
                })),
                &e.digest.bytes,
                extra,
            ),
            Body::ResponseStart(r) => {
                let head = ResponseHead {
                    status: r.status,
                    headers: r.headers.clone(),
                    record_headers,
                };
                let plain = Zeroizing::new(encode_inner(&head));
                self.seal_frame(
                    &sealed(Body::SealedResponseStart(wire::SealedResponseStart {
                        body_len: r.body_len,
                    })),
                    &plain,
                    extra,
                )
            }
            Body::Error(f) => {
                let plain = Zeroizing::new(encode_inner(f));
                self.seal_frame(&sealed(Body::SealedError), &plain, extra)
            }
            // A start record is sealed by `seal_start`; a sealed frame is
            // sealed already: neither reaches here.
            _ => unreachable!("seal_clear takes a clear body frame of the job"),
        }
    }
}
