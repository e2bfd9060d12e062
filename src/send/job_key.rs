//! The job key file: where a sealed job's secret waits, on the sender's
//! disk, until its answer has been read (`KAFKASEND_JOB_KEY_DIR/<JOB_ID>.secret`).
//! Without it nobody, the sender included, can open the answer; with it
//! anyone can, so it is written for the user alone and removed once used.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::protocol::seal::JobSecret;
use crate::protocol::wire::JobId;
use crate::send::types::SendError;
use crate::util::file_read::Kind;

/// The setting naming the folder of job key files.
pub(crate) const DIR_SETTING: &str = "KAFKASEND_JOB_KEY_DIR";

/// The job key file of `job` in `dir`.
pub(crate) fn path(dir: &Path, job: JobId) -> PathBuf {
    dir.join(format!("{job}.secret"))
}

/// Writes `secret` as `job`'s key file in `dir` (created 0700 if missing),
/// mode 0600. A file there already is an error unless `replace` (a resumed
/// job whose start record never landed gets a new secret). With `durable`
/// (`--no-wait`: the file is then all there is) it is synced to disk,
/// and its name with it, before this returns; otherwise it is synced
/// [`SYNC_DELAY`] later if it is still there (see [`sync_later`]).
pub(crate) fn write(
    dir: &Path,
    job: JobId,
    secret: &JobSecret,
    replace: bool,
    durable: bool,
) -> Result<PathBuf, SendError> {
    let dir_meta = private_dir(dir)?;
    let file = path(dir, job);
    let failed = |e: std::io::Error| {
        SendError::Io(format!(
            "cannot write the job key file {}: {e}",
            file.display()
        ))
    };
    if replace {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SendError::Usage(format!(
                "the job key file {} exists already; a job id is used once: send the request again without --resume, or remove the file if its job is done",
                file.display()
            )),
            _ => failed(e),
        })?;
    // Files this process creates are its own: one owned by anybody else
    // means the folder is not the user's, who would then share the secret.
    let owner = out.metadata().map_err(failed)?.uid();
    if owner != dir_meta.uid() {
        drop(out);
        let _ = std::fs::remove_file(&file);
        return Err(SendError::Usage(format!(
            "{DIR_SETTING} {} belongs to another user; give a folder of your own",
            dir.display()
        )));
    }
    let text = secret.to_text();
    let comment =
        format!("# kafkasend job secret for job {job}: opens its sealed answer; keep private\n");
    let written = out
        .write_all(comment.as_bytes())
        .and_then(|()| out.write_all(text.as_bytes()))
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| if durable { out.sync_all() } else { Ok(()) });
    drop(out);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&file);
        return Err(failed(e));
    }
    if durable {
        sync_folder(&file);
    } else {
        sync_later(file.clone());
    }
    Ok(file)
}

/// How long a job key file may stay unsynced: a job that ends sooner (a
/// small request) never pays for a sync, one that runs longer has its
/// secret on disk within this, long before a crash could make `wait` or
/// `--resume` need it.
pub(crate) const SYNC_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most key files waiting for their delayed sync; past that a file is
/// synced at once.
const SYNC_QUEUE: usize = 1024;

/// Syncs `file` to disk and its name in its folder.
fn sync(file: &Path) {
    if let Ok(f) = std::fs::File::open(file) {
        let _ = f.sync_all();
        sync_folder(file);
    }
}

/// Syncs the folder holding `file`: the new name must survive a crash
/// too, or the answer cannot be opened.
fn sync_folder(file: &Path) {
    if let Some(Ok(d)) = file.parent().map(std::fs::File::open) {
        let _ = d.sync_all();
    }
}

/// Syncs `job`'s key file in `dir` now, if it is there: for a job that
/// ends before its answer was read (interrupted, failed, or told a clear
/// error), whose file `wait` or `--resume` needs later.
pub(crate) fn keep(dir: &Path, job: JobId) {
    sync(&path(dir, job));
}

/// Syncs `file` [`SYNC_DELAY`] from now if it still exists then, on one
/// thread the process starts for this: a sync takes a millisecond or more
/// here, which a small sealed request would otherwise wait for, and it
/// slows the file system's other work even off the request's path. Files
/// come in the order of their deadlines, so the thread takes them in turn.
fn sync_later(file: PathBuf) {
    type Queue = std::sync::mpsc::SyncSender<(PathBuf, std::time::Instant)>;
    static SYNCER: std::sync::OnceLock<Option<Queue>> = std::sync::OnceLock::new();
    let queue = SYNCER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(PathBuf, std::time::Instant)>(SYNC_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("job-key-sync".into())
            .spawn(move || {
                for (file, at) in rx {
                    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
                    sync(&file);
                }
            });
        spawned.ok().map(|_| tx)
    });
    let at = std::time::Instant::now() + SYNC_DELAY;
    match queue {
        Some(q) => {
            if let Err(e) = q.try_send((file, at)) {
                let (std::sync::mpsc::TrySendError::Full((file, _))
                | std::sync::mpsc::TrySendError::Disconnected((file, _))) = e;
                sync(&file);
            }
        }
        None => sync(&file),
    }
}

/// Reads `job`'s secret from its key file in `dir`; `None` when there is
/// no such file. The folder and the file must be the user's alone, the
/// file a regular one (not a link): a secret others could read or swap
/// is refused, naming the fix.
pub(crate) fn read(dir: &Path, job: JobId) -> Result<Option<JobSecret>, SendError> {
    let file = path(dir, job);
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SendError::Io(format!(
                "{DIR_SETTING} {}: {e}",
                dir.display()
            )))
        }
        Ok(meta) => check_dir(dir, &meta)?,
    }
    let meta = match std::fs::symlink_metadata(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SendError::Io(format!(
                "the job key file {}: {e}",
                file.display()
            )))
        }
        Ok(meta) => meta,
    };
    check_file(&file, &meta)?;
    // Opened without following a link, so a file swapped for one since it
    // was looked at is not read either.
    let text = read_private(&file)?;
    let bad = |why: &str| {
        SendError::Integrity(format!(
            "the job key file {} {why}; it cannot open job {job}'s answer",
            file.display()
        ))
    };
    let text = std::str::from_utf8(&text).map_err(|_| bad("is not text"))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| bad("holds no secret"))?;
    JobSecret::from_text(line)
        .map(Some)
        .map_err(|e| bad(&e.to_string()))
}

/// The key file's bytes, opened with `O_NOFOLLOW`, checked again through
/// the open file, and capped as any key file is.
fn read_private(file: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, SendError> {
    let failed =
        |e: std::io::Error| SendError::Io(format!("the job key file {}: {e}", file.display()));
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)
        .map_err(failed)?;
    check_file(file, &f.metadata().map_err(failed)?)?;
    let limit = Kind::Key.limit();
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    (&mut f)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > limit {
        return Err(SendError::Usage(format!(
            "the job key file {} is larger than any job secret; it is not one",
            file.display()
        )));
    }
    Ok(bytes)
}

/// Refuses a key file that is not a regular file of the user's that only
/// they may read.
fn check_file(file: &Path, meta: &std::fs::Metadata) -> Result<(), SendError> {
    let shown = file.display();
    if !meta.file_type().is_file() {
        return Err(SendError::Usage(format!(
            "the job key file {shown} is not a regular file (a link, say); a job secret is only read from a file of its own"
        )));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(SendError::Usage(format!(
            "the job key file {shown} belongs to another user; a job secret is only read from a file of your own"
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SendError::Usage(format!(
            "the job key file {shown} may be read by other users (mode {mode:03o}); make it private: chmod 600 {shown}"
        )));
    }
    Ok(())
}

/// Refuses a key folder that is a link, someone else's, or open to others.
fn check_dir(dir: &Path, meta: &std::fs::Metadata) -> Result<(), SendError> {
    let shown = dir.display();
    if meta.file_type().is_symlink() {
        return Err(SendError::Usage(format!(
            "{DIR_SETTING} {shown} is a link; name the folder it points to, if it is yours"
        )));
    }
    if !meta.is_dir() {
        return Err(SendError::Usage(format!(
            "{DIR_SETTING} {shown} is not a folder"
        )));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(SendError::Usage(format!(
            "{DIR_SETTING} {shown} belongs to another user; give a folder of your own"
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SendError::Usage(format!(
            "{DIR_SETTING} {shown} may be read by other users (mode {mode:03o}); job secrets are kept only in a private folder: chmod 700 {shown}"
        )));
    }
    Ok(())
}

/// Removes `job`'s key file from `dir` once its answer has been read; a
/// failure is only logged, since the answer is in already.
pub(crate) fn remove(dir: &Path, job: JobId) {
    let file = path(dir, job);
    match std::fs::remove_file(&file) {
        Ok(()) => log::debug!("job {job}: removed its job key file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!(
            "job {job}: cannot remove its job key file {}: {e}; remove it by hand",
            file.display()
        ),
    }
}

/// Makes `dir` if missing (0700, with its missing parents), and checks
/// nobody else may look into it.
fn private_dir(dir: &Path) -> Result<std::fs::Metadata, SendError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            SendError::Io(format!(
                "cannot create {DIR_SETTING} {}: {e}",
                dir.display()
            ))
        })?;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| SendError::Io(format!("{DIR_SETTING} {}: {e}", dir.display())))?;
    check_dir(dir, &meta)?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> JobSecret {
        JobSecret::from_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    #[test]
    fn a_key_file_is_private_exclusive_read_back_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/job-keys");
        let job = JobId::new();
        let file = write(&dir, job, &secret(), false, false).unwrap();
        assert_eq!(file, dir.join(format!("{job}.secret")));
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(&format!("# kafkasend job secret for job {job}:")));
        let back = read(&dir, job).unwrap().unwrap();
        assert_eq!(*back.to_text(), *secret().to_text());

        // Written once: a second write for the job is refused, naming the file.
        let again = write(&dir, job, &secret(), false, true).unwrap_err();
        assert!(
            matches!(&again, SendError::Usage(m) if m.contains(&file.display().to_string())),
            "{again}"
        );
        // Unless it replaces it (resume without a start record).
        write(&dir, job, &secret(), true, true).unwrap();

        remove(&dir, job);
        assert!(!file.exists());
        assert!(read(&dir, job).unwrap().is_none());
        // Removing what is gone is quiet.
        remove(&dir, job);
    }

    #[test]
    fn a_folder_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = write(&dir, JobId::new(), &secret(), false, false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("mode 755") && msg.contains("chmod 700"),
            "{msg}"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_damaged_key_file_says_so_without_its_content() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let job = JobId::new();
        let file = path(tmp.path(), job);
        std::fs::write(&file, "# comment\nnot-base64-secret!\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let e = read(tmp.path(), job).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot open job"), "{msg}");
        assert!(!msg.contains("not-base64-secret"), "{msg}");
        std::fs::write(path(tmp.path(), job), "# only a comment\n").unwrap();
        assert!(read(tmp.path(), job)
            .unwrap_err()
            .to_string()
            .contains("holds no secret"));
    }

    #[test]
    fn a_key_file_others_may_read_or_a_link_is_refused_naming_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let job = JobId::new();
        let file = write(&dir, job, &secret(), false, false).unwrap();
        let shown = file.display().to_string();

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = read(&dir, job).unwrap_err().to_string();
        assert!(
            msg.contains(&shown) && msg.contains(&format!("chmod 600 {shown}")),
            "{msg}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&dir, job).unwrap().is_some());

        // A link to a private secret elsewhere is not followed, nor is a
        // link to something that is not there.
        let other = JobId::new();
        let target = write(&dir, other, &secret(), false, false).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        let msg = read(&dir, job).unwrap_err().to_string();
        assert!(
            msg.contains("not a regular file") && msg.contains(&shown),
            "{msg}"
        );
        std::fs::remove_file(path(&dir, job)).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), path(&dir, job)).unwrap();
        assert!(read(&dir, job).is_err());

        // A folder of secrets is one's own: neither open to others on
        // reading, nor a link.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let msg = read(&dir, other).unwrap_err().to_string();
        assert!(
            msg.contains("mode 750") && msg.contains("chmod 700"),
            "{msg}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let msg = read(&link, other).unwrap_err().to_string();
        assert!(msg.contains("is a link"), "{msg}");
        let msg = write(&link, JobId::new(), &secret(), false, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is a link"), "{msg}");
        // A missing folder holds no secret.
        assert!(read(&tmp.path().join("none"), job).unwrap().is_none());
    }
}
