//! A body's spool file as its readers and writers see it. A sealed job's
//! body never reaches the disk in clear: its file is AES-256-CTR encrypted
//! under a key of its own, drawn when the file is made and kept only in
//! memory with it. Every read and write of a spool file (the assembler's
//! writes and digest read-back, the API call's reads, pipelined or not, and
//! its retries) goes through [`BodyFile`]; a clear job's file is read and
//! written as it is, at no cost.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use rand_core::{OsRng, TryRngCore as _};
use zeroize::Zeroizing;

/// Bytes encrypted or decrypted at a time: bounds the copy a write makes.
pub(crate) const CIPHER_STEP: usize = 256 * 1024;

type Aes256Ctr = ctr::Ctr64BE<aes::Aes256>;

/// A body's spool file, its bytes at their body offsets: in clear, or for a
/// sealed job AES-256-CTR encrypted under the file's own key with an IV of
/// zero (the key is never used for another file, so no keystream repeats)
/// and a block counter from 0, so any offset can be read or written on its
/// own.
pub(crate) struct BodyFile {
    file: File,
    /// The file's key, for an encrypted file: shared only with this file's
    /// other descriptors, never written anywhere, wiped when the last goes
    /// (the file, unlinked, goes with it).
    key: Option<Arc<Zeroizing<[u8; 32]>>>,
}

impl std::fmt::Debug for BodyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyFile")
            .field("file", &self.file)
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

impl From<File> for BodyFile {
    fn from(file: File) -> Self {
        Self { file, key: None }
    }
}

impl BodyFile {
    /// `file`, encrypted under a key drawn for it alone.
    pub(crate) fn encrypted(file: File) -> std::io::Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(&mut key[..])
            .map_err(|e| std::io::Error::other(format!("no random key for the spool: {e}")))?;
        Ok(Self {
            file,
            key: Some(Arc::new(key)),
        })
    }

    /// The keystream positioned at byte `offset`, for an encrypted file.
    fn keystream(&self, offset: u64) -> std::io::Result<Option<Aes256Ctr>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let key: &[u8; 32] = key;
        let mut ctr = Aes256Ctr::new(key.into(), &[0u8; 16].into());
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

    /// Another descriptor of the same file, with the same key.
    pub(crate) fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            key: self.key.clone(),
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

#[cfg(test)]
mod tests {
    use super::BodyFile;

    fn temp() -> std::fs::File {
        tempfile::tempfile().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Each file gets a key of its own; a second descriptor keeps its file's.
    #[test]
    fn each_encrypted_file_has_its_own_key() {
        let a = BodyFile::encrypted(temp()).unwrap_or_else(|e| panic!("{e}"));
        let b = BodyFile::encrypted(temp()).unwrap_or_else(|e| panic!("{e}"));
        let (Some(ka), Some(kb)) = (&a.key, &b.key) else {
            panic!("an encrypted file without a key");
        };
        assert_ne!(ka.as_slice(), kb.as_slice());
        // The same plaintext at the same offset lies differently on disk.
        let data = vec![0u8; 4096];
        a.write_all_at(&data, 100).unwrap_or_else(|e| panic!("{e}"));
        b.write_all_at(&data, 100).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.raw()[100..], b.raw()[100..]);
        assert_ne!(a.raw()[100..], data[..]);
        let c = a.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut back = vec![1u8; 4096];
        c.read_exact_at(&mut back, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, data);
        assert!(!format!("{a:?}").contains(&format!("{:?}", ka.as_slice())));
    }
}
