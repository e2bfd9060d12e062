//! `kafkasend keygen --out PREFIX`: a portal's sealing key pair, the
//! private key for `PORTAL_SEALING_KEY_FILE` and the public one for
//! `send --seal-to` (PROTOCOL.md section 11.2).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::protocol::seal::SecretKey;

/// Flags of `kafkasend keygen`.
#[derive(Debug, Args, Clone)]
pub struct KeygenArgs {
    /// Write PREFIX.key (the private key, mode 0600) and PREFIX.pub (the public key); neither may exist yet
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

/// Why the key pair was not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeygenError {
    /// A file of the pair is there already.
    #[error("{0} exists already; keygen never replaces a key: choose another --out, or remove it if it is no longer used")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl KeygenError {
    /// The process exit code: 2 for a refused overwrite, as for other
    /// usage errors; 1 when the disk failed.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Exists(_) => 2,
            Self::Io(..) => 1,
        }
    }
}

/// The key pair written: its id and the two files.
pub(crate) struct Written {
    pub(crate) id: String,
    pub(crate) private: PathBuf,
    pub(crate) public: PathBuf,
}

/// Writes a new key pair at `prefix`.key and `prefix`.pub.
pub(crate) fn generate(prefix: &Path) -> Result<Written, KeygenError> {
    let with = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    let (private, public) = (with(".key"), with(".pub"));
    // Both are checked first, so a refusal leaves nothing behind; the
    // exclusive creates below still catch one that appears meanwhile.
    for path in [&private, &public] {
        if path.symlink_metadata().is_ok() {
            return Err(KeygenError::Exists(path.clone()));
        }
    }
    let key = SecretKey::generate();
    create(&private, 0o600, key.to_pem().as_bytes())?;
    if let Err(e) = create(&public, 0o644, key.public().to_pem().as_bytes()) {
        let _ = std::fs::remove_file(&private);
        return Err(e);
    }
    Ok(Written {
        id: key.public().id().to_string(),
        private,
        public,
    })
}

/// Creates `path` (never over an existing file) with `mode`, holding `text`, synced.
fn create(path: &Path, mode: u32, text: &[u8]) -> Result<(), KeygenError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeygenError::Exists(path.to_path_buf()),
            _ => KeygenError::Io(path.to_path_buf(), e),
        })?;
    let written = file.write_all(text).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(KeygenError::Io(path.to_path_buf(), e));
    }
    Ok(())
}

/// `kafkasend keygen`: writes the pair, prints its key id and files.
pub(crate) fn run(args: &KeygenArgs) -> ExitCode {
    match generate(&args.out) {
        Ok(w) => {
            println!("key id: {}", w.id);
            println!(
                "private key: {} (for the portal: PORTAL_SEALING_KEY_FILE; keep it private)",
                w.private.display()
            );
            println!(
                "public key: {} (for senders: send --seal-to)",
                w.public.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kafkasend keygen: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::seal::PublicKey;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_pair_is_written_private_and_public_and_never_over_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path().join("portal");
        let w = generate(&prefix).unwrap();
        assert_eq!(w.private, tmp.path().join("portal.key"));
        assert_eq!(w.public, tmp.path().join("portal.pub"));
        assert_eq!(std::fs::metadata(&w.private).unwrap().mode() & 0o777, 0o600);
        let public = PublicKey::from_pem(&std::fs::read(&w.public).unwrap()).unwrap();
        assert_eq!(public.id().to_string(), w.id);
        let keys = SecretKey::all_from_pem(&std::fs::read(&w.private).unwrap()).unwrap();
        assert_eq!(keys[0].public().id(), public.id());

        let before = std::fs::read(&w.private).unwrap();
        match generate(&prefix) {
            Err(KeygenError::Exists(p)) => assert_eq!(p, w.private),
            other => panic!("{:?}", other.map(|w| w.id)),
        }
        assert_eq!(std::fs::read(&w.private).unwrap(), before);

        // Only the .pub there: refused too, naming it, and no .key left.
        let other = tmp.path().join("other");
        std::fs::write(tmp.path().join("other.pub"), "x").unwrap();
        match generate(&other) {
            Err(KeygenError::Exists(p)) => assert_eq!(p, tmp.path().join("other.pub")),
            other => panic!("{:?}", other.map(|w| w.id)),
        }
        assert!(!tmp.path().join("other.key").exists());
    }
}
