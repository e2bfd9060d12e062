//! A body's spool file as its readers and writers see it. A sealed job's
//! body never reaches the disk in clear: its file is AES-256-CTR encrypted
//! under a key the portal process draws once and keeps only in memory, with
//! a random IV per file. Every read and write of a spool file (the
//! assembler's writes and digest read-back, the API call's reads, pipelined
//! or not, and its retries) goes through [`BodyFile`]; a clear job's file is
//! read and written as it is, at no cost.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use rand_core::{OsRng, TryRngCore as _};
use zeroize::Zeroizing;

/// Bytes encrypted or decrypted at a time: bounds the copy a write makes.
pub(crate) const CIPHER_STEP: usize = 256 * 1024;

type Aes256Ctr = ctr::Ctr64BE<aes::Aes256>;

/// The key of every encrypted spool file of this process: drawn at the
/// first sealed body to spool, never written anywhere, gone with the
/// process (so are the files, unlinked).
static PROCESS_KEY: OnceLock<Zeroizing<[u8; 32]>> = OnceLock::new();

fn process_key() -> std::io::Result<&'static [u8; 32]> {
    if let Some(k) = PROCESS_KEY.get() {
        return Ok(k);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|e| std::io::Error::other(format!("no random key for the spool: {e}")))?;
    Ok(PROCESS_KEY.get_or_init(|| key))
}

/// A body's spool file, its bytes at their body offsets: in clear, or for a
/// sealed job AES-256-CTR encrypted under the process key, with an IV of a
/// random 64-bit prefix and a 64-bit block counter from 0, so any offset
/// can be read or written on its own.
#[derive(Debug)]
pub(crate) struct BodyFile {
    file: File,
    /// The IV's random prefix, for an encrypted file.
    iv_prefix: Option<[u8; 8]>,
}

impl From<File> for BodyFile {
    fn from(file: File) -> Self {
        Self {
            file,
            iv_prefix: None,
        }
    }
}

impl BodyFile {
    /// `file`, encrypted under the process key with a fresh IV.
    pub(crate) fn encrypted(file: File) -> std::io::Result<Self> {
        process_key()?;
        let mut prefix = [0u8; 8];
        OsRng
            .try_fill_bytes(&mut prefix)
            .map_err(|e| std::io::Error::other(format!("no random IV for the spool: {e}")))?;
        Ok(Self {
            file,
            iv_prefix: Some(prefix),
        })
    }

    /// The keystream positioned at byte `offset`, for an encrypted file.
    fn keystream(&self, offset: u64) -> std::io::Result<Option<Aes256Ctr>> {
        let Some(prefix) = self.iv_prefix else {
            return Ok(None);
        };
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&prefix);
        let mut ctr = Aes256Ctr::new(process_key()?.into(), &iv.into());
        ctr.try_seek(offset)
            .map_err(|_| std::io::Error::other("spool offset past the cipher's range"))?;
        Ok(Some(ctr))
    }

    /// Writes `data` at body offset `offset`.
    pub(crate) fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let Some(mut ctr) = self.keystream(offset)? else {
            return self.file.write_all_at(data, offset);
        };
        let mut buf = Vec::with_capacity(data.len().min(CIPHER_STEP));
        let mut at = offset;
        for piece in data.chunks(CIPHER_STEP) {
            buf.clear();
            buf.extend_from_slice(piece);
            ctr.apply_keystream(&mut buf);
            self.file.write_all_at(&buf, at)?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes from body offset `offset`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)?;
        if let Some(mut ctr) = self.keystream(offset)? {
            ctr.apply_keystream(buf);
        }
        Ok(())
    }

    /// Another descriptor of the same file, with the same key and IV.
    pub(crate) fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            iv_prefix: self.iv_prefix,
        })
    }

    /// The file's metadata (its length is the body's extent so far).
    #[cfg(test)]
    pub(crate) fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }
}

#[cfg(test)]
impl BodyFile {
    /// The file's bytes as they lie on disk.
    pub(crate) fn raw(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.file.metadata().map_or(0, |m| m.len() as usize)];
        self.file
            .read_exact_at(&mut v, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        v
    }
}
