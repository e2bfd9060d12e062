//! Signed requests: `send` signs each start record with a private key, and a
//! portal configured with trusted public keys refuses requests that are not
//! signed by one of them, do not match their signature, have expired, or
//! were seen before.
//!
//! The signature is a compact JWS (a JWT) in the [`SIGNATURE_HEADER`] record
//! header of the start record, outside the versioned frame. Its claims cover
//! every field of the start record, where the request goes, and the SHA-256
//! of the whole body; the portal checks the body against that digest once
//! assembled. PROTOCOL.md section 1.3 specifies the claims and the canonical
//! encoding of the headers.
//!
//! Keys are PEM files: Ed25519 (EdDSA) or EC P-256 (ES256), PKCS#8 as
//! `openssl genpkey` writes them. A private key's bytes never appear in
//! `Debug` output, logs or errors.
//!
//! [`SIGNATURE_HEADER`]: crate::protocol::wire::SIGNATURE_HEADER

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocol::digest::hex;
use crate::protocol::digest::{self, DigestKind};
use crate::protocol::wire::{JobId, RequestStart};
use crate::util::file_read::{self, Kind};

/// Clock difference tolerated between sender and portal, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 30;

/// Most signed requests remembered at once for replay detection; when full,
/// new signed requests are refused as busy instead of the memory growing.
pub(crate) const REPLAY_CACHE_CAPACITY: usize = 100_000;

/// Largest signature lifetime either side may configure: a day.
pub(crate) const MAX_SIGNATURE_TTL_SECS: u64 = 24 * 3600;

/// Longest signature header accepted; a real one is well under 1 KiB.
const MAX_SIGNATURE_BYTES: usize = 8 * 1024;

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A key file that cannot be used; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct KeyError(String);

/// The two signature algorithms KafkaSend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Ed25519,
    P256,
}

impl KeyType {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::Ed25519 => Algorithm::EdDSA,
            Self::P256 => Algorithm::ES256,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ed25519 => "Ed25519",
            Self::P256 => "EC P-256",
        }
    }
}

/// Why a PEM text is not a usable key, in words for the user; never
/// includes the text itself.
fn pem_hint(pem: &[u8], want_private: bool) -> &'static str {
    let text = String::from_utf8_lossy(pem);
    if text.contains("ENCRYPTED PRIVATE KEY") {
        "is an encrypted private key; store it unencrypted (openssl pkey -in KEY -out PLAIN)"
    } else if text.contains("BEGIN EC PRIVATE KEY") {
        "is an EC key in SEC1 form; convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)"
    } else if text.contains("RSA")
        || EncodingKey::from_rsa_pem(pem).is_ok()
        || DecodingKey::from_rsa_pem(pem).is_ok()
    {
        "is an RSA key; use an Ed25519 or EC P-256 key"
    } else if want_private && text.contains("PUBLIC KEY") {
        "is a public key; give the private key"
    } else if !want_private && text.contains("PRIVATE KEY") {
        "is a private key; give its public key (openssl pkey -pubout)"
    } else if want_private {
        "is not a PEM private key of a supported type (Ed25519 or EC P-256, PKCS#8)"
    } else {
        "is not a PEM public key of a supported type (Ed25519 or EC P-256)"
    }
}

/// Signs start records (the `send` side).
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    kind: KeyType,
    ttl: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field(
                "key",
                &format_args!("<{} private key, redacted>", self.kind.name()),
            )
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Signer {
    /// Loads the private key in `path` (setting `KAFKASEND_SIGNING_KEY_FILE`);
    /// signatures will be valid for `ttl`.
    pub(crate) fn from_pem_file(path: &Path, ttl: Duration) -> Result<Self, KeyError> {
        let pem = file_read::read("KAFKASEND_SIGNING_KEY_FILE", path, Kind::Key)
            .map_err(|e| KeyError(e.to_string()))?;
        Self::from_pem(&pem, ttl).map_err(|why| {
            KeyError(format!(
                "KAFKASEND_SIGNING_KEY_FILE: {} {why}",
                path.display()
            ))
        })
    }

    /// Loads a private key from PEM text; the error says what is wrong with it.
    fn from_pem(pem: &[u8], ttl: Duration) -> Result<Self, &'static str> {
        let candidates = [
            (KeyType::Ed25519, EncodingKey::from_ed_pem(pem)),
            (KeyType::P256, EncodingKey::from_ec_pem(pem)),
        ];
        for (kind, key) in candidates {
            let Ok(key) = key else { continue };
            // Parsing checks only the container; a trial signature proves
            // the key itself (and, for EC, that the curve is P-256).
            if jsonwebtoken::crypto::sign(b"probe", &key, kind.algorithm()).is_err() {
                return Err(match kind {
                    KeyType::Ed25519 => "is not a valid Ed25519 private key",
                    KeyType::P256 => {
                        "is an EC key on a curve other than P-256; use P-256 (prime256v1)"
                    }
                });
            }
            return Ok(Self { key, kind, ttl });
        }
        Err(pem_hint(pem, true))
    }

    /// Signs the start record of `job`, bound for `request_topic` partition
    /// `request_partition`; `body_digest` is the digest of the whole body (of
    /// the start's digest kind), or `None` when the request has none. `now`
    /// is Unix seconds.
    pub(crate) fn sign(
        &self,
        job: JobId,
        request_topic: &str,
        request_partition: i32,
        start: &RequestStart,
        body_digest: Option<digest::Digest>,
        now: u64,
    ) -> Result<String, KeyError> {
        if let Some(d) = body_digest.filter(|d| d.kind != start.digest) {
            return Err(KeyError(format!(
                "the body digest is {} but the request uses {}",
                d.kind, start.digest
            )));
        }
        let claims = Claims::of(job, request_topic, request_partition, start, body_digest)
            .timed(now, self.ttl.as_secs());
        jsonwebtoken::encode(&Header::new(self.kind.algorithm()), &claims, &self.key)
            .map_err(|e| KeyError(format!("signing the request failed: {e}")))
    }
}

/// One public key the portal trusts, with the file it came from.
#[derive(Clone)]
struct TrustedKey {
    name: String,
    kind: KeyType,
    key: DecodingKey,
}

/// The portal's signature settings: trusted keys and the longest lifetime
/// a signature may have.
#[derive(Clone)]
pub struct TrustedKeys {
    keys: Arc<Vec<TrustedKey>>,
    max_ttl: Duration,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKeys")
            .field("keys", &self.names())
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

impl TrustedKeys {
    /// Loads the comma-separated PEM public key files of `PORTAL_TRUSTED_KEYS`.
    pub(crate) fn load(list: &str, max_ttl: Duration) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for file in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let pem = file_read::read("PORTAL_TRUSTED_KEYS", Path::new(file), Kind::Key)
                .map_err(|e| KeyError(e.to_string()))?;
            let (kind, key) = public_key(&pem)
                .map_err(|why| KeyError(format!("PORTAL_TRUSTED_KEYS: {file} {why}")))?;
            let name = Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.to_string());
            keys.push(TrustedKey { name, kind, key });
        }
        if keys.is_empty() {
            return Err(KeyError(
                "PORTAL_TRUSTED_KEYS names no key file; list PEM public key files, comma-separated, or leave it unset".into(),
            ));
        }
        Ok(Self {
            keys: Arc::new(keys),
            max_ttl,
        })
    }

    /// The file names of the trusted keys, for logs.
    pub(crate) fn names(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{} ({})", k.name, k.kind.name()))
            .collect()
    }
}

fn public_key(pem: &[u8]) -> Result<(KeyType, DecodingKey), &'static str> {
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return match key.as_bytes().len() {
            32 => Ok((KeyType::Ed25519, key)),
            _ => Err("is not a valid Ed25519 public key"),
        };
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // A P-256 point is 65 bytes uncompressed, 33 compressed; other
        // curves have other sizes.
        return match key.as_bytes() {
            [4, rest @ ..] if rest.len() == 64 => Ok((KeyType::P256, key)),
            [2 | 3, rest @ ..] if rest.len() == 32 => Ok((KeyType::P256, key)),
            _ => Err("is an EC key on a curve other than P-256; use P-256 (prime256v1)"),
        };
    }
    Err(pem_hint(pem, false))
}

/// What a signature says. Short names keep the header small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    /// Job id, ULID text.
    jti: String,
    /// Request topic.
    aud: String,
    /// Request partition.
    k: i32,
    /// Method.
    m: String,
    /// Path and query.
    p: String,
    /// Hex SHA-256 of the canonical header encoding.
    h: String,
    /// Declared body length.
    n: Option<u64>,
    /// Hex digest of the body; `None` when there is no body.
    b: Option<String>,
    /// The job's digest algorithm, `blake3`; absent for SHA-256, so a
    /// version 1 signature is what it always was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    /// Reply address, as in the `kafkasend-reply-to` header.
    r: String,
    /// Issued at, Unix seconds.
    iat: u64,
    /// Expires at, Unix seconds.
    exp: u64,
}

impl Claims {
    fn of(
        job: JobId,
        request_topic: &str,
        request_partition: i32,
        start: &RequestStart,
        body_digest: Option<digest::Digest>,
    ) -> Self {
        Self {
            jti: job.to_string(),
            aud: request_topic.to_string(),
            k: request_partition,
            m: start.method.clone(),
            p: start.path.clone(),
            h: hex(&headers_sha256(&start.headers)),
            n: start.body_len,
            b: body_digest.map(|d| d.hex()),
            d: (start.digest != DigestKind::Sha256).then(|| start.digest.name().to_string()),
            r: reply_to(start),
            iat: 0,
            exp: 0,
        }
    }

    fn timed(self, iat: u64, ttl: u64) -> Self {
        Self {
            iat,
            exp: iat.saturating_add(ttl),
            ..self
        }
    }
}

fn reply_to(start: &RequestStart) -> String {
    format!("{}/{}", start.reply_partition, start.reply_topic)
}

/// SHA-256 of the request headers in their canonical encoding: for each
/// header in order, the name's byte length as a big-endian u64, the name,
/// the value's byte length as a big-endian u64, the value. Length prefixes
/// make the encoding unambiguous whatever bytes names and values hold.
pub(crate) fn headers_sha256(headers: &[(String, String)]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, value) in headers {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value.as_bytes());
    }
    h.finalize().into()
}

/// Why the portal refuses a start record; each message is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Rejection {
    /// No signature header.
    #[error("the request is not signed, and this portal accepts only signed requests (PORTAL_TRUSTED_KEYS); sign it with --signing-key (KAFKASEND_SIGNING_KEY_FILE)")]
    Unsigned,
    /// The header is not a well-formed signature.
    #[error("the request's signature is malformed: {0}")]
    Malformed(String),
    /// No trusted key verifies the signature.
    #[error("the request's signature is not valid for any key this portal trusts: the request was altered, or signed by a key the portal does not trust (PORTAL_TRUSTED_KEYS)")]
    Untrusted,
    /// The signature is valid but the start record says something else.
    #[error("the request does not match its signature: its {0} differs from the signed one")]
    Mismatch(&'static str),
    /// The signature's lifetime is over.
    #[error("the request's signature expired {0} s ago; send the request again (and check that sender and portal clocks agree)")]
    Expired(u64),
    /// Signed in the future.
    #[error("the request's signature is dated {0} s in the future; check that sender and portal clocks agree")]
    NotYetValid(u64),
    /// The signature is valid for longer than the portal allows.
    #[error("the request's signature is valid for {secs} s, longer than the portal allows ({max} s, PORTAL_SIGNATURE_MAX_TTL_SECS); lower KAFKASEND_SIGNATURE_TTL_SECS")]
    TooLong {
        /// Lifetime signed.
        secs: u64,
        /// Lifetime allowed.
        max: u64,
    },
    /// The same signed request was read before at another place.
    #[error("replayed request: this signed request was already received at partition {partition} offset {offset}; it is not run again")]
    Replayed {
        /// Partition of the first sighting.
        partition: i32,
        /// Offset of the first sighting.
        offset: i64,
    },
    /// The replay cache is full.
    #[error("the portal is busy: it already tracks {0} signed requests against replay and takes more once their signatures expire; retry later")]
    Busy(usize),
}

/// A start record whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The signed digest of the body; `None` for a request without one.
    pub body_digest: Option<digest::Digest>,
    /// File name of the key that verified it.
    pub key: String,
}

/// Checks signatures of start records (the portal side); one per portal,
/// shared by every partition reader.
pub(crate) struct Verifier {
    trusted: TrustedKeys,
    request_topic: String,
    /// Signed requests accepted and not yet expired, with where each was
    /// read, so a copy at another place is recognised as a replay. Shared
    /// by all partition readers (a replay may target another partition's
    /// reader or a later generation's); entries leave when their signature
    /// expires, and a fixed capacity bounds memory.
    seen: Mutex<ReplayCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("trusted", &self.trusted)
            .field("request_topic", &self.request_topic)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for start records read from `request_topic`.
    pub(crate) fn new(trusted: TrustedKeys, request_topic: &str) -> Self {
        Self::with_capacity(trusted, request_topic, REPLAY_CACHE_CAPACITY)
    }

    fn with_capacity(trusted: TrustedKeys, request_topic: &str, capacity: usize) -> Self {
        Self {
            trusted,
            request_topic: request_topic.to_string(),
            seen: Mutex::new(ReplayCache::new(capacity)),
        }
    }

    /// Whether a signed request of `job` was accepted and has not expired:
    /// any other start record claiming that job is a forgery or a copy.
    pub(crate) fn has_seen(&self, job: JobId) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .contains_key(&job)
    }

    /// Checks the `signature` header of the start record of `job`, read at
    /// `partition`/`offset` of the request topic, at Unix time `now`.
    pub(crate) fn verify(
        &self,
        job: JobId,
        start: &RequestStart,
        signature: Option<&[u8]>,
        partition: i32,
        offset: i64,
        now: u64,
    ) -> Result<Verified, Rejection> {
        let token = signature.ok_or(Rejection::Unsigned)?;
        if token.len() > MAX_SIGNATURE_BYTES {
            return Err(Rejection::Malformed(format!(
                "{} bytes, more than {MAX_SIGNATURE_BYTES}",
                token.len()
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Rejection::Malformed(format!("not a compact JWS ({e})")))?;
        if !matches!(header.alg, Algorithm::EdDSA | Algorithm::ES256) {
            return Err(Rejection::Malformed(format!(
                "algorithm {:?} is not accepted (EdDSA or ES256)",
                header.alg
            )));
        }
        let (claims, key) = self.check_signature(token, header.alg)?;
        let expected = Claims::of(job, &self.request_topic, partition, start, None);
        let mismatch = [
            (claims.jti != expected.jti, "job id"),
            (claims.aud != expected.aud, "request topic"),
            (claims.k != expected.k, "request partition"),
            (claims.m != expected.m, "method"),
            (claims.p != expected.p, "path"),
            (claims.h != expected.h, "header list"),
            (claims.n != expected.n, "declared body length"),
            (claims.b.is_some() != start.has_body, "body presence"),
            (claims.d != expected.d, "body digest algorithm"),
            (claims.r != expected.r, "reply address"),
        ];
        if let Some((_, field)) = mismatch.iter().find(|(differs, _)| *differs) {
            return Err(Rejection::Mismatch(field));
        }
        let body_digest = match &claims.b {
            None => None,
            Some(b) => Some(digest::Digest {
                kind: start.digest,
                bytes: parse_digest(b).ok_or_else(|| {
                    Rejection::Malformed("body digest is not 64 hex digits".into())
                })?,
            }),
        };
        if claims.exp < claims.iat {
            return Err(Rejection::Malformed(
                "it expires before it was issued".into(),
            ));
        }
        let max = self.trusted.max_ttl.as_secs();
        if claims.exp - claims.iat > max {
            return Err(Rejection::TooLong {
                secs: claims.exp - claims.iat,
                max,
            });
        }
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(Rejection::NotYetValid(claims.iat - now));
        }
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(Rejection::Expired(now - claims.exp));
        }
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).admit(
            job,
            partition,
            offset,
            claims.exp.saturating_add(LEEWAY_SECS),
            now,
        )?;
        Ok(Verified { body_digest, key })
    }

    /// The claims of a token verified by one of the trusted keys, and that key's name.
    fn check_signature(&self, token: &[u8], alg: Algorithm) -> Result<(Claims, String), Rejection> {
        let mut validation = Validation::new(alg);
        // Times, audience and the rest are checked against the start record
        // and `now` by the caller, with the portal's own rules.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        for k in self
            .trusted
            .keys
            .iter()
            .filter(|k| k.kind.algorithm() == alg)
        {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return Ok((data.claims, k.name.clone())),
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature
                    | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                    | jsonwebtoken::errors::ErrorKind::InvalidEddsaKey => continue,
                    jsonwebtoken::errors::ErrorKind::Json(_) => {
                        return Err(Rejection::Malformed(
                            "its claims are not those of a KafkaSend request".into(),
                        ))
                    }
                    _ => return Err(Rejection::Malformed(e.to_string())),
                },
            }
        }
        Err(Rejection::Untrusted)
    }
}

fn parse_digest(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Where a signed request was first read.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    partition: i32,
    offset: i64,
}

/// Job ids of accepted signed requests until their signatures expire.
#[derive(Debug)]
struct ReplayCache {
    seen: HashMap<JobId, Sighting>,
    /// The same entries ordered by expiry, so expired ones leave cheaply.
    by_expiry: BTreeSet<(u64, JobId)>,
    capacity: usize,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity,
        }
    }

    /// Records `job` read at `partition`/`offset`; the same place again is
    /// a re-read (after a rebalance), another place a replay.
    fn admit(
        &mut self,
        job: JobId,
        partition: i32,
        offset: i64,
        keep_until: u64,
        now: u64,
    ) -> Result<(), Rejection> {
        while let Some(&(until, old)) = self.by_expiry.first() {
            if until >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&old);
        }
        if let Some(s) = self.seen.get(&job) {
            if (s.partition, s.offset) == (partition, offset) {
                return Ok(());
            }
            return Err(Rejection::Replayed {
                partition: s.partition,
                offset: s.offset,
            });
        }
        if self.seen.len() >= self.capacity {
            return Err(Rejection::Busy(self.capacity));
        }
        self.seen.insert(job, Sighting { partition, offset });
        self.by_expiry.insert((keep_until, job));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
