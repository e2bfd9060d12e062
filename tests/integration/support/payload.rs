//! Deterministic test bodies, so large ones need not be stored to be
//! checked, and their SHA-256 digests.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A deterministic pseudo-random byte stream (xorshift), so large bodies
/// need not be stored to be checked.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `data`, in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// `d` in lowercase hex.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `len` pattern bytes to a new file in `dir`; returns path and digest.
pub fn pattern_file(dir: &Path, name: &str, seed: u64, len: usize) -> (PathBuf, String) {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut block_seed = seed;
    while left > 0 {
        let n = left.min(4 << 20);
        let block = pattern(block_seed, n);
        hasher.update(&block);
        f.write_all(&block).unwrap();
        left -= n;
        block_seed = block_seed.wrapping_add(1);
    }
    (path, hex(&hasher.finalize()))
}

/// Whether `needle` occurs in `hay`, byte for byte.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
