//! Where `send` and `wait` write a response body: standard output, or a
//! regular file that is replaced only once the body is complete and verified.
//!
//! A file destination is checked, and its part file `FILE.<id>.part` created
//! next to it, before the request is sent: a destination that is not a
//! regular file (a device such as `/dev/null`, a FIFO, a socket, a directory,
//! a symbolic link) is refused, and a directory that cannot be written fails,
//! before the API is called and its answer would have nowhere to go. The body
//! is written to the part file as it arrives, and the part file is renamed
//! over the destination at the end. A rename replaces a directory entry and
//! never writes through it, so it cannot end up in a link's target or a device.

use std::ffi::OsString;
use std::fs::Metadata;
use std::io::{ErrorKind, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::protocol::wire::JobId;

/// Why the response body cannot go where the command line says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OutputError {
    /// The destination is not something `-o` writes to (a usage mistake).
    #[error("{0}")]
    Refused(String),
    /// Creating, writing or renaming the file failed.
    #[error("{0}")]
    Io(String),
}

/// `true` when the body goes to standard output: no `-o`, or `-o -`.
pub(crate) fn is_stdout(output: Option<&Path>) -> bool {
    output.is_none_or(|p| p.as_os_str() == "-")
}

/// The open destination of one response body.
pub(crate) struct Sink {
    out: Out,
    /// The part file and the destination it is renamed to, until committed.
    part: Option<(PathBuf, PathBuf)>,
    /// Bytes written to `out` so far.
    written: u64,
    /// The option that named the destination, for messages.
    flag: &'static str,
}

enum Out {
    /// Unbuffered: each piece is flushed as it is written, so a body that
    /// trickles in shows as it arrives.
    Stdout(tokio::io::Stdout),
    File(BufWriter<tokio::fs::File>),
}

impl Out {
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            Self::Stdout(w) => w,
            Self::File(w) => w,
        }
    }
}

impl Sink {
    /// Opens the destination `output` names (`None` or `-`: standard
    /// output): checks that a file destination is absent or a regular file,
    /// and creates its part file in the same directory.
    pub(crate) fn open(output: Option<&Path>) -> Result<Self, OutputError> {
        Self::open_for("-o", output)
    }

    /// Like [`Sink::open`], for the option `flag` (`-o`, `-D`), which
    /// messages name.
    pub(crate) fn open_for(flag: &'static str, output: Option<&Path>) -> Result<Self, OutputError> {
        let path = match output {
            Some(p) if !is_stdout(output) => p,
            _ => {
                return Ok(Self {
                    out: Out::Stdout(tokio::io::stdout()),
                    part: None,
                    written: 0,
                    flag,
                })
            }
        };
        check_destination(flag, path)?;
        // A fresh name nobody else uses, created exclusively: never
        // truncates an existing file or follows a planted symlink.
        let mut part = OsString::from(path.as_os_str());
        part.push(format!(".{}.part", JobId::new()));
        let part = PathBuf::from(part);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .map_err(|e| cannot_create(flag, path, &part, e))?;
        Ok(Self {
            out: Out::File(BufWriter::new(tokio::fs::File::from_std(file))),
            part: Some((part, path.to_path_buf())),
            written: 0,
            flag,
        })
    }

    /// `true` when the body goes to a file rather than standard output.
    pub(crate) fn is_file(&self) -> bool {
        matches!(self.out, Out::File(_))
    }

    /// Appends body bytes; on standard output they are flushed at once.
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), OutputError> {
        self.written += data.len() as u64;
        let failed =
            |e: std::io::Error| OutputError::Io(format!("writing the response failed: {e}"));
        self.out.writer().write_all(data).await.map_err(failed)?;
        if let Out::Stdout(out) = &mut self.out {
            out.flush().await.map_err(failed)?;
        }
        Ok(())
    }

    /// Whether [`Sink::restart`] would succeed: a file can always be
    /// emptied, standard output only before anything went to it.
    pub(crate) fn can_restart(&self) -> bool {
        self.is_file() || self.written == 0
    }

    /// Empties the output to take a response from the start again; `false`
    /// when that is impossible (body bytes already went to standard output).
    pub(crate) async fn restart(&mut self) -> Result<bool, OutputError> {
        let Out::File(w) = &mut self.out else {
            return Ok(self.written == 0);
        };
        // Through the file we created, not its name: whatever may sit at
        // that name by now is not ours to truncate.
        let cant =
            |e: std::io::Error| OutputError::Io(format!("cannot start the output over: {e}"));
        w.flush().await.map_err(cant)?;
        let file = w.get_mut();
        file.set_len(0).await.map_err(cant)?;
        file.seek(SeekFrom::Start(0)).await.map_err(cant)?;
        self.written = 0;
        Ok(true)
    }

    /// Flushes, and renames the part file over the destination.
    pub(crate) async fn commit(mut self) -> Result<(), OutputError> {
        self.out
            .writer()
            .flush()
            .await
            .map_err(|e| OutputError::Io(format!("writing the response failed: {e}")))?;
        let Some((part, dest)) = self.part.take() else {
            return Ok(());
        };
        // Checked again: something else may have taken the name while the
        // response arrived. The verified body then stays in the part file.
        if let Err(e) = check_destination(self.flag, &dest) {
            return Err(OutputError::Io(format!(
                "{e}; the verified response body is kept in {}",
                part.display()
            )));
        }
        tokio::fs::rename(&part, &dest).await.map_err(|e| {
            OutputError::Io(format!(
                "cannot move {} to {}: {e}; the verified response body is kept in {}",
                part.display(),
                dest.display(),
                part.display()
            ))
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Not committed: a partial or unverified body must not look complete.
        if let Some((part, _)) = self.part.take() {
            let _ = std::fs::remove_file(part);
        }
    }
}

/// Refuses a destination of the option `flag` that is there and is not a
/// regular file; a symbolic link is refused, not followed.
fn check_destination(flag: &str, path: &Path) -> Result<(), OutputError> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(OutputError::Refused(format!(
            "{flag} needs a file name, or - for standard output"
        )));
    }
    if path.as_os_str().as_bytes().ends_with(b"/") || path.file_name().is_none() {
        return Err(OutputError::Refused(format!(
            "{flag} {shown} names a directory; give the name of a file to write"
        )));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(OutputError::Io(format!(
                "cannot look at {flag} {shown}: {e}"
            )))
        }
    };
    let t = meta.file_type();
    let redirect = format!("to write there, use `{flag} - >{shown}`");
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_symlink() {
        format!("is a symbolic link; {flag} does not write through links: name the file itself, or remove the link")
    } else if t.is_dir() {
        "is a directory; give the name of a file to write".to_string()
    } else if t.is_char_device() && is_dev_null(&meta) {
        format!(
            "is a character device, not a regular file; to discard it, use `{flag} - >/dev/null`"
        )
    } else if t.is_char_device() {
        format!("is a character device, not a regular file; {redirect}")
    } else if t.is_block_device() {
        format!("is a block device, not a regular file; {redirect}")
    } else if t.is_fifo() {
        format!("is a FIFO (named pipe), not a regular file; {redirect}")
    } else if t.is_socket() {
        "is a socket, not a regular file".to_string()
    } else {
        "is not a regular file".to_string()
    };
    Err(OutputError::Refused(format!("{flag} {shown} {what}")))
}

/// `/dev/null` under any name (a copy made with mknod, a bind mount).
fn is_dev_null(meta: &Metadata) -> bool {
    std::fs::metadata("/dev/null")
        .is_ok_and(|null| null.file_type().is_char_device() && null.rdev() == meta.rdev())
}

/// Why the part file next to `dest` could not be created.
fn cannot_create(flag: &str, dest: &Path, part: &Path, e: std::io::Error) -> OutputError {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
        _ => ".".to_string(),
    };
    OutputError::Io(match e.kind() {
        ErrorKind::NotFound => {
            format!(
                "cannot write {flag} {}: the directory {dir} does not exist",
                dest.display()
            )
        }
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => format!(
            "cannot write {flag} {}: the directory {dir} is not writable ({e})",
            dest.display()
        ),
        _ => format!("cannot create {}: {e}", part.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &Path) -> String {
        match Sink::open(Some(path)) {
            Err(OutputError::Refused(why)) => why,
            Err(other) => panic!("{}: not refused but {other:?}", path.display()),
            Ok(_) => panic!("{}: accepted", path.display()),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn standard_output_is_none_or_a_dash() {
        assert!(is_stdout(None));
        assert!(is_stdout(Some(Path::new("-"))));
        assert!(!is_stdout(Some(Path::new("./-"))));
        assert!(!is_stdout(Some(Path::new("out.bin"))));
    }

    #[tokio::test]
    async fn a_new_file_appears_only_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let mut sink = Sink::open(Some(&dest)).unwrap();
        assert!(sink.is_file());
        // The part file exists before anything was asked for.
        let names = entries(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("out.bin.") && names[0].ends_with(".part"));
        sink.write(b"hello").await.unwrap();
        assert!(!dest.exists());
        sink.commit().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert_eq!(entries(dir.path()), ["out.bin"]);
    }

    #[tokio::test]
    async fn an_existing_file_is_replaced_and_an_abandoned_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").unwrap();
        let mut sink = Sink::open(Some(&dest)).unwrap();
        sink.write(b"partial").await.unwrap();
        drop(sink);
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["out.bin"]);

        let mut sink = Sink::open(Some(&dest)).unwrap();
        sink.write(b"first try").await.unwrap();
        assert!(sink.restart().await.unwrap());
        sink.write(b"new").await.unwrap();
        sink.commit().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let null = refusal(Path::new("/dev/null"));
        assert!(null.contains("character device"), "{null}");
        assert!(null.contains("`-o - >/dev/null`"), "{null}");
        let zero = refusal(Path::new("/dev/zero"));
        assert!(zero.contains("is a character device"), "{zero}");
        assert!(zero.contains("`-o - >/dev/zero`"), "{zero}");

        assert!(refusal(dir.path()).contains("is a directory"));
        let slash = dir.path().join("new/");
        assert!(refusal(&slash).contains("names a directory"));
        assert!(refusal(Path::new("")).contains("needs a file name"));

        let target = dir.path().join("target.txt");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(refusal(&link).contains("is a symbolic link"));
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(refusal(&dangling).contains("is a symbolic link"));

        let fifo = dir.path().join("fifo");
        crate::test_support::mkfifo(&fifo);
        assert!(refusal(&fifo).contains("is a FIFO"));

        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(refusal(&socket).contains("is a socket"));

        // Nothing created or changed: no part file, the link and its target intact.
        assert_eq!(
            entries(dir.path()),
            ["dangling", "fifo", "link", "socket", "target.txt"]
        );
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn a_missing_directory_fails_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("absent/out.bin");
        let Err(OutputError::Io(why)) = Sink::open(Some(&dest)) else {
            panic!("not an I/O error");
        };
        assert!(why.contains("does not exist"), "{why}");
    }

    #[tokio::test]
    async fn a_destination_replaced_while_waiting_keeps_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let mut sink = Sink::open(Some(&dest)).unwrap();
        sink.write(b"verified").await.unwrap();
        std::os::unix::fs::symlink("/dev/null", &dest).unwrap();
        let Err(OutputError::Io(why)) = sink.commit().await else {
            panic!("committed over a symbolic link");
        };
        assert!(why.contains("is a symbolic link"), "{why}");
        assert!(std::fs::symlink_metadata(&dest).unwrap().is_symlink());
        let part = entries(dir.path())
            .into_iter()
            .find(|n| n.ends_with(".part"))
            .expect("the part file is kept");
        assert!(why.contains(&part), "{why}");
        assert_eq!(std::fs::read(dir.path().join(part)).unwrap(), b"verified");
    }
}
