//! The one way settings files are read: keys, certificates and the
//! `--config` file.
//!
//! Each is small, so it is read whole into memory, which is only safe with a
//! cap: a setting pointing at `/dev/zero` or a multi-gigabyte file must fail
//! at once instead of filling memory. Only regular files are read. The path
//! is looked at before it is opened (opening a FIFO waits for a writer, and
//! opening a device can have effects of its own), looked at again through the
//! open file (the path may have been replaced in between), and the cap holds
//! while reading too, since a file can grow and `/proc` files state a size
//! that is not what they hold. Errors name the setting and the file and say
//! what is wrong; they never quote the file's content.
//!
//! The body `send` uploads is not read here: it is streamed chunk by chunk,
//! may be any size and may be a pipe.

use std::fs::{Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a file holds, which decides how large it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A PEM private or public key. Even an RSA 16384-bit private key is
    /// about 12 KiB, so 1 MiB leaves room for comments and never for data.
    Key,
    /// A PEM file of certificates: a CA bundle or a client certificate
    /// chain. A system bundle of some 150 roots is about 220 KiB; 4 MiB holds
    /// over 2000 certificates, more than any trust store lists.
    Certificates,
    /// The TOML settings file: a few KiB at most, all keys set and commented.
    Config,
}

impl Kind {
    /// The most bytes a file of this kind may have.
    pub const fn limit(self) -> u64 {
        match self {
            Self::Key | Self::Config => 1024 * 1024,
            Self::Certificates => 4 * 1024 * 1024,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Key => "a key file",
            Self::Certificates => "a certificate file",
            Self::Config => "a config file",
        }
    }
}

/// What is wrong with a file a setting names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Nothing is at the path.
    #[error("does not exist")]
    Missing,
    /// A directory is at the path.
    #[error("is a directory, not a file")]
    Directory,
    /// A character device (`/dev/zero`, a terminal) is at the path.
    #[error("is a character device, not a regular file")]
    CharDevice,
    /// A block device is at the path.
    #[error("is a block device, not a regular file")]
    BlockDevice,
    /// A named pipe is at the path.
    #[error("is a FIFO (named pipe), not a regular file")]
    Fifo,
    /// A Unix socket is at the path.
    #[error("is a socket, not a regular file")]
    Socket,
    /// Something else that is not a regular file.
    #[error("is not a regular file")]
    NotRegular,
    /// The file holds more than its kind may.
    #[error("is larger than {}, more than {} may have", size_text(*.limit), .noun)]
    TooLarge {
        /// The cap in bytes.
        limit: u64,
        /// What kind of file it was meant to be, e.g. "a key file".
        noun: &'static str,
    },
    /// The operating system refused to open or read it.
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
}

/// A file a setting names that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {} {problem}", path.display())]
pub struct ReadError {
    /// The setting that names the file, e.g. `PORTAL_CA_FILE`.
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

impl ReadError {
    /// The message without the setting's name: the file and what is wrong.
    pub fn detail(&self) -> String {
        format!("{} {}", self.path.display(), self.problem)
    }
}

/// Reads the whole file at `path`, named by `setting`, if it is a regular
/// file of at most `kind.limit()` bytes.
pub fn read(setting: &'static str, path: &Path, kind: Kind) -> Result<Vec<u8>, ReadError> {
    read_capped(path, kind.limit(), kind.noun()).map_err(|problem| ReadError {
        setting,
        path: path.to_path_buf(),
        problem,
    })
}

fn read_capped(path: &Path, limit: u64, noun: &'static str) -> Result<Vec<u8>, Problem> {
    let too_large = Problem::TooLarge { limit, noun };
    let before = std::fs::metadata(path).map_err(io_problem)?;
    check(&before)?;
    if before.len() > limit {
        return Err(too_large);
    }
    // O_NONBLOCK: should a FIFO be swapped in after the first look, the
    // open returns instead of waiting for a writer. O_NOCTTY: a terminal
    // swapped in does not become the controlling one.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_problem)?;
    let opened = file.metadata().map_err(Problem::Unreadable)?;
    check(&opened)?;
    let mut bytes = Vec::with_capacity(opened.len().min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(Problem::Unreadable)?;
    if bytes.len() as u64 > limit {
        return Err(too_large);
    }
    Ok(bytes)
}

fn io_problem(e: std::io::Error) -> Problem {
    match e.kind() {
        std::io::ErrorKind::NotFound => Problem::Missing,
        _ => Problem::Unreadable(e),
    }
}

/// Refuses anything but a regular file, saying what it is instead.
fn check(meta: &Metadata) -> Result<(), Problem> {
    let t = meta.file_type();
    if t.is_file() {
        Ok(())
    } else if t.is_dir() {
        Err(Problem::Directory)
    } else if t.is_char_device() {
        Err(Problem::CharDevice)
    } else if t.is_block_device() {
        Err(Problem::BlockDevice)
    } else if t.is_fifo() {
        Err(Problem::Fifo)
    } else if t.is_socket() {
        Err(Problem::Socket)
    } else {
        Err(Problem::NotRegular)
    }
}

/// `1 MiB`, `512 KiB` or `100 bytes`: a limit as people write it.
fn size_text(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n % KIB == 0 {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_of(path: &Path) -> String {
        let err = read("SOME_FILE", path, Kind::Key).unwrap_err();
        let text = err.to_string();
        let prefix = format!("SOME_FILE: {} ", path.display());
        assert!(text.starts_with(&prefix), "{text}");
        text[prefix.len()..].to_string()
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, b"-----BEGIN PUBLIC KEY-----\n").unwrap();
        assert_eq!(
            read("SOME_FILE", &path, Kind::Key).unwrap(),
            b"-----BEGIN PUBLIC KEY-----\n"
        );
        std::fs::write(&path, b"").unwrap();
        assert!(read("SOME_FILE", &path, Kind::Key).unwrap().is_empty());
    }

    #[test]
    fn a_file_at_the_limit_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pem");
        let limit = Kind::Key.limit() as usize;
        std::fs::write(&path, vec![b'A'; limit]).unwrap();
        assert_eq!(read("SOME_FILE", &path, Kind::Key).unwrap().len(), limit);
        std::fs::write(&path, vec![b'A'; limit + 1]).unwrap();
        assert_eq!(
            problem_of(&path),
            "is larger than 1 MiB, more than a key file may have"
        );
        // A certificate bundle may be larger.
        assert_eq!(
            read("SOME_FILE", &path, Kind::Certificates).unwrap().len(),
            limit + 1
        );
    }

    #[test]
    fn what_is_not_a_regular_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(problem_of(dir.path()), "is a directory, not a file");
        assert_eq!(
            problem_of(Path::new("/dev/zero")),
            "is a character device, not a regular file"
        );
        assert_eq!(
            problem_of(Path::new("/dev/null")),
            "is a character device, not a regular file"
        );
        assert_eq!(problem_of(&dir.path().join("absent")), "does not exist");

        let fifo = dir.path().join("fifo");
        crate::test_support::mkfifo(&fifo);
        // Refused without opening it, which would wait for a writer.
        assert_eq!(
            problem_of(&fifo),
            "is a FIFO (named pipe), not a regular file"
        );

        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(problem_of(&socket), "is a socket, not a regular file");

        // A symbolic link to a key is followed, one to a device is not read.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert_eq!(
            problem_of(&link),
            "is a character device, not a regular file"
        );
    }

    #[test]
    fn a_link_to_a_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("key.pem");
        std::fs::write(&target, b"key").unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read("SOME_FILE", &link, Kind::Key).unwrap(), b"key");
    }

    #[test]
    fn the_cap_holds_while_reading_when_the_size_lies() {
        // /proc files say they are empty and are not.
        let maps = Path::new("/proc/self/maps");
        assert_eq!(std::fs::metadata(maps).unwrap().len(), 0);
        assert!(matches!(
            read_capped(maps, 16, "a key file"),
            Err(Problem::TooLarge { limit: 16, .. })
        ));
        assert!(!read_capped(maps, 1 << 20, "a key file").unwrap().is_empty());
    }

    #[test]
    fn an_unreadable_path_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        // A path through a file: the OS's reason, not "does not exist".
        let text = problem_of(&file.join("key.pem"));
        assert!(text.starts_with("cannot be read: "), "{text}");
    }

    #[test]
    fn limits_read_as_people_write_them() {
        assert_eq!(size_text(1024 * 1024), "1 MiB");
        assert_eq!(size_text(4 * 1024 * 1024), "4 MiB");
        assert_eq!(size_text(512 * 1024), "512 KiB");
        assert_eq!(size_text(1536), "1536 bytes");
        assert_eq!(size_text(16), "16 bytes");
    }
}
