//! The whole-body digest: SHA-256 in protocol version 1, BLAKE3 in version 2.
//!
//! Every place that digests a body (the chunker, the body check, the
//! portal's spool, `send`'s signing pass) goes through [`Hasher`], so the
//! algorithm is chosen once per job, from its start record's version.

use sha2::Digest as _;

/// Which algorithm digests a job's bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DigestKind {
    /// SHA-256: what protocol version 1 means.
    #[default]
    Sha256,
    /// BLAKE3 (32-byte output): protocol version 2.
    Blake3,
}

impl DigestKind {
    /// The name in settings, claims and output: `sha256` or `blake3`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake3 => "blake3",
        }
    }

    /// The name in messages: `SHA-256` or `BLAKE3`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA-256",
            Self::Blake3 => "BLAKE3",
        }
    }

    /// The frame version a job with this digest is written in.
    pub(crate) fn version(self) -> u8 {
        match self {
            Self::Sha256 => 1,
            Self::Blake3 => 2,
        }
    }

    /// The digest a job written in frame `version` uses; `None` for a
    /// version this build does not speak.
    pub(crate) fn of_version(version: u8) -> Option<Self> {
        match version {
            1 => Some(Self::Sha256),
            2 | 3 => Some(Self::Blake3),
            _ => None,
        }
    }

    /// A hasher of this kind with nothing hashed yet.
    pub fn hasher(self) -> Hasher {
        match self {
            Self::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Self::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The digest of `data` in one go.
    pub fn of(self, data: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(data);
        h.finalize()
    }
}

impl std::fmt::Display for DigestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DigestKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sha256" | "sha-256" => Ok(Self::Sha256),
            "blake3" => Ok(Self::Blake3),
            _ => Err(format!("unknown digest '{s}'; use blake3 or sha256")),
        }
    }
}

/// A body digest with the algorithm that made it: a SHA-256 value never
/// compares equal to a BLAKE3 one, whatever the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    /// The algorithm.
    pub kind: DigestKind,
    /// The 32 bytes of output.
    pub bytes: [u8; 32],
}

impl Digest {
    /// Lower-case hex of the bytes, without the algorithm.
    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.label(), self.hex())
    }
}

/// Lower-case hex of a digest's bytes, for messages, logs and claims.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running digest of either kind.
#[derive(Debug, Clone)]
pub enum Hasher {
    /// SHA-256 (SHA-NI where the CPU has it).
    Sha256(sha2::Sha256),
    /// BLAKE3; boxed, its state is ~2 KiB against SHA-256's 100 bytes.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// Adds `data` to the digest.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The algorithm of this hasher.
    pub fn kind(&self) -> DigestKind {
        match self {
            Self::Sha256(_) => DigestKind::Sha256,
            Self::Blake3(_) => DigestKind::Blake3,
        }
    }

    /// The digest of everything added.
    pub fn finalize(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest {
                kind: DigestKind::Sha256,
                bytes: h.finalize().into(),
            },
            Self::Blake3(h) => Digest {
                kind: DigestKind::Blake3,
                bytes: *h.finalize().as_bytes(),
            },
        }
    }
}

impl Default for Hasher {
    fn default() -> Self {
        DigestKind::default().hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // The empty string: FIPS 180-4 and the BLAKE3 reference vectors.
        assert_eq!(
            DigestKind::Sha256.of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            DigestKind::Blake3.of(b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn pieces_digest_as_the_whole() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for kind in [DigestKind::Sha256, DigestKind::Blake3] {
            let mut h = kind.hasher();
            for piece in data.chunks(9_999) {
                h.update(piece);
            }
            assert_eq!(h.kind(), kind);
            assert_eq!(h.finalize(), kind.of(&data));
        }
    }

    #[test]
    fn kinds_never_compare_equal_and_names_parse() {
        let a = DigestKind::Sha256.of(b"x");
        let b = Digest {
            kind: DigestKind::Blake3,
            bytes: a.bytes,
        };
        assert_ne!(a, b);
        for kind in [DigestKind::Sha256, DigestKind::Blake3] {
            assert_eq!(kind.name().parse::<DigestKind>(), Ok(kind));
            assert_eq!(DigestKind::of_version(kind.version()), Some(kind));
        }
        assert_eq!(" BLAKE3 ".parse::<DigestKind>(), Ok(DigestKind::Blake3));
        assert!("md5".parse::<DigestKind>().unwrap_err().contains("blake3"));
        // Version 3 (sealed frames) digests with BLAKE3.
        assert_eq!(DigestKind::of_version(3), Some(DigestKind::Blake3));
        assert_eq!(DigestKind::of_version(4), None);
        assert_eq!(DigestKind::of_version(0), None);
    }
}
