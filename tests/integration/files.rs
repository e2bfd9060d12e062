//! Files on the command line: settings files are read only when they are
//! small regular files, `-o` writes only to a regular file and is checked
//! before the request is sent, and `wait` takes only a real job id.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::api::{bytes_route_body, json, Servers};
use crate::support::broker::Topics;
use crate::support::pki::{ec_key_pair, sender_key_files, TestPki};
use crate::support::run::{kafkasend, Portal, SendResult};
use crate::support::{wait_until, WAIT};

/// The unprivileged user the `-o` tests run as when the tests run as root:
/// root may write where the tests need a refusal, and a regression must not
/// be able to replace `/dev/null` for everyone on the machine.
const NOBODY: u32 = 65534;

/// Runs `kafkasend ARGS` with `env`, to completion within [`WAIT`].
async fn run(topics: &Topics, env: &[(&str, String)], args: &[&str]) -> SendResult {
    run_as(topics, env, args, false).await
}

/// Like [`run`], as `nobody` when the tests run as root.
async fn run_unprivileged(topics: &Topics, env: &[(&str, String)], args: &[&str]) -> SendResult {
    run_as(topics, env, args, true).await
}

async fn run_as(
    topics: &Topics,
    env: &[(&str, String)],
    args: &[&str],
    unprivileged: bool,
) -> SendResult {
    let mut cmd = tokio::process::Command::from(kafkasend(topics));
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unprivileged && unsafe { libc::geteuid() } == 0 {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("kafkasend {args:?} did not finish in time"))
        .expect("run kafkasend");
    SendResult {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts exit code `code` and one line on stderr holding every one of `want`.
fn assert_refused(out: &SendResult, code: i32, want: &[&str], case: &str) {
    assert_eq!(out.code, code, "{case}: {}", out.stderr);
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "{case}: {}",
        out.stderr
    );
    for w in want {
        assert!(out.stderr.contains(w), "{case}: no {w:?} in {}", out.stderr);
    }
}

/// A temp directory anyone may write in, for processes run as `nobody`.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0);
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A file of `len` bytes of base64-looking text, as a bloated PEM would be.
fn big_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![b'A'; len]).unwrap();
    path
}

/// Portal settings that pass, so that the file setting under test decides.
fn portal_env(extra: &[(&'static str, &Path)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PORTAL_TARGET_API_URL", "http://127.0.0.1:9".to_string()),
        ("PORTAL_USE_OAUTH", "false".to_string()),
    ];
    for (k, p) in extra {
        env.push((k, p.to_str().unwrap().to_string()));
    }
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn key_and_certificate_files_must_be_small_regular_files() {
    let topics = Topics::new("files-keys");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("key.fifo");
    mkfifo(&fifo);
    let big_key = big_file(dir.path(), "big.pem", 1024 * 1024 + 1);
    let (_, key, public) = sender_key_files(dir.path());
    let pki = TestPki::new();
    let zero = Path::new("/dev/zero");
    let char_device = "is a character device, not a regular file";

    // The sender's signing key: read at start, before Kafka.
    let send_cases: &[(&Path, &str)] = &[
        (zero, char_device),
        (dir.path(), "is a directory, not a file"),
        (&fifo, "is a FIFO (named pipe), not a regular file"),
        (&big_key, "is larger than 1 MiB"),
        (&dir.path().join("absent.pem"), "does not exist"),
    ];
    for (path, problem) in send_cases {
        let p = path.to_str().unwrap();
        let out = run(
            &topics,
            &[],
            &["send", "--endpoint", "/x", "--signing-key", p],
        )
        .await;
        let setting = format!("KAFKASEND_SIGNING_KEY_FILE: {p} {problem}");
        assert_refused(&out, 2, &[&setting], p);
    }

    // The portal's trusted keys, CA files and client identity.
    let trusted_list = format!("{},/dev/zero", public.display());
    let cases: Vec<(Vec<(&'static str, String)>, String)> = vec![
        (
            vec![("PORTAL_TRUSTED_KEYS", "/dev/zero".into())],
            format!("PORTAL_TRUSTED_KEYS: /dev/zero {char_device}"),
        ),
        (
            vec![("PORTAL_TRUSTED_KEYS", trusted_list)],
            format!("PORTAL_TRUSTED_KEYS: /dev/zero {char_device}"),
        ),
        (
            vec![("PORTAL_TRUSTED_KEYS", dir.path().to_str().unwrap().into())],
            format!(
                "PORTAL_TRUSTED_KEYS: {} is a directory",
                dir.path().display()
            ),
        ),
        (
            vec![("PORTAL_CA_FILE", "/dev/zero".into())],
            format!("PORTAL_CA_FILE: /dev/zero {char_device}"),
        ),
        (
            vec![("PORTAL_CA_FILE", dir.path().to_str().unwrap().into())],
            format!("PORTAL_CA_FILE: {} is a directory", dir.path().display()),
        ),
        (
            vec![
                (
                    "PORTAL_CLIENT_CERT_FILE",
                    pki.client_cert_file.to_str().unwrap().into(),
                ),
                ("PORTAL_CLIENT_KEY_FILE", big_key.to_str().unwrap().into()),
            ],
            format!(
                "PORTAL_CLIENT_KEY_FILE: {} is larger than 1 MiB",
                big_key.display()
            ),
        ),
        (
            vec![
                ("PORTAL_USE_OAUTH", "true".into()),
                ("OAUTH2_TOKEN_URL", "http://127.0.0.1:9/token".into()),
                ("OAUTH2_CLIENT_ID", "c".into()),
                (
                    "OAUTH2_CLIENT_ASSERTION_KEY_FILE",
                    fifo.to_str().unwrap().into(),
                ),
            ],
            format!(
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE: {} is a FIFO",
                fifo.display()
            ),
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "SSL".into()),
                ("KAFKA_SSL_CA_FILE", "/dev/zero".into()),
            ],
            format!("KAFKA_SSL_CA_FILE: /dev/zero {char_device}"),
        ),
    ];
    for (extra, want) in &cases {
        let mut env = portal_env(&[]);
        env.extend(extra.iter().cloned());
        let out = run(&topics, &env, &["portal"]).await;
        assert_refused(&out, 2, &[want], want);
    }
    // Nothing was read from the FIFO, and the sender's key is still usable.
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let out = run(
        &topics,
        &[],
        &[
            "config",
            "show",
            "send",
            "--signing-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_to_a_key_is_followed_and_a_large_ca_bundle_is_read() {
    let topics = Topics::new("files-bundle");
    let dir = tempfile::tempdir().unwrap();
    // Kubernetes mounts secrets as symbolic links.
    let (ec_private, _) = ec_key_pair();
    let key = dir.path().join("sender.pem");
    std::fs::write(&key, &ec_private).unwrap();
    let link = dir.path().join("link.pem");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let out = run(
        &topics,
        &[],
        &[
            "config",
            "show",
            "send",
            "--signing-key",
            link.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A bundle larger than a key may be, within the 4 MiB for certificates.
    let pki = TestPki::new();
    let ca = std::fs::read_to_string(&pki.ca_file).unwrap();
    let copies = 2 * 1024 * 1024 / ca.len() + 1;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.repeat(copies)).unwrap();
    let out = run(
        &topics,
        &portal_env(&[("PORTAL_CA_FILE", &bundle)]),
        &["config", "show", "portal"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let too_big = big_file(dir.path(), "huge.pem", 4 * 1024 * 1024 + 1);
    let out = run(
        &topics,
        &portal_env(&[("PORTAL_CA_FILE", &too_big)]),
        &["config", "show", "portal"],
    )
    .await;
    let want = format!("PORTAL_CA_FILE: {} is larger than 4 MiB", too_big.display());
    assert_refused(&out, 2, &[&want], "4 MiB bundle");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_paths_say_what_they_are() {
    let topics = Topics::new("files-config");
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.toml");
    let cases: &[(&Path, &str)] = &[
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (dir.path(), "is a directory, not a file"),
        (&absent, "does not exist"),
    ];
    let commands: &[&[&str]] = &[
        &["send", "--endpoint", "/x"],
        &["wait", "01JDXK5Q7V8Y0C4J6N2W3R9T1M"],
        &["portal"],
        &["config", "show", "send"],
    ];
    for (path, problem) in cases {
        let p = path.to_str().unwrap();
        let want = format!("--config (KAFKASEND_CONFIG): {p} {problem}");
        for command in commands {
            let mut args = command.to_vec();
            args.extend(["--config", p]);
            let out = run(&topics, &portal_env(&[]), &args).await;
            assert_refused(&out, 2, &[&want], &format!("{args:?}"));
        }
        // The same through the environment.
        let mut env = portal_env(&[]);
        env.push(("KAFKASEND_CONFIG", p.to_string()));
        let out = run(&topics, &env, &["send", "--endpoint", "/x"]).await;
        assert_refused(&out, 2, &[&want], "KAFKASEND_CONFIG");
    }
    // A missing file was not created, as confy::load_path would have.
    assert!(!absent.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn output_goes_only_to_a_regular_file_and_is_checked_before_the_request() {
    let servers = Servers::start().await;
    let topics = Topics::new("files-output");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = open_dir();
    let d = dir.path();

    let target = d.join("target.txt");
    std::fs::write(&target, b"precious").unwrap();
    let link = d.join("link.bin");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = d.join("dangling.bin");
    std::os::unix::fs::symlink(d.join("nowhere.bin"), &dangling).unwrap();
    let fifo = d.join("pipe");
    mkfifo(&fifo);
    let subdir = d.join("sub");
    std::fs::create_dir(&subdir).unwrap();
    std::fs::set_permissions(&subdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let read_only = d.join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = names_in(d);

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(String, i32, Vec<String>)> = vec![
        (
            "/dev/null".into(),
            2,
            vec![
                "-o /dev/null is a character device, not a regular file".into(),
                "`-o - >/dev/null`".into(),
            ],
        ),
        (
            s(&link),
            2,
            vec![format!("-o {} is a symbolic link", link.display())],
        ),
        (
            s(&dangling),
            2,
            vec![format!("-o {} is a symbolic link", dangling.display())],
        ),
        (
            s(&subdir),
            2,
            vec![format!("-o {} is a directory", subdir.display())],
        ),
        (
            format!("{}/", s(&d.join("new-dir"))),
            2,
            vec!["names a directory".into()],
        ),
        (
            s(&fifo),
            2,
            vec![format!("-o {} is a FIFO (named pipe)", fifo.display())],
        ),
        (
            s(&read_only.join("out.bin")),
            1,
            vec![format!(
                "the directory {} is not writable",
                read_only.display()
            )],
        ),
        (
            s(&d.join("absent/out.bin")),
            1,
            vec!["does not exist".into()],
        ),
        (
            String::new(),
            2,
            vec!["a value is required for '--output <FILE>'".into()],
        ),
    ];
    for (output, code, want) in &cases {
        for command in ["send", "wait"] {
            let args: Vec<&str> = match command {
                "send" => vec!["send", "--endpoint", "/api/items", "-o", output],
                _ => vec!["wait", "01JDXK5Q7V8Y0C4J6N2W3R9T1M", "-o", output],
            };
            let out = run_unprivileged(&topics, &[], &args).await;
            let want: Vec<&str> = want.iter().map(String::as_str).collect();
            assert_refused(&out, *code, &want, &format!("{args:?}"));
        }
        // Refused before the request: the API never heard of it.
        assert!(servers.state.requests().is_empty(), "{output}");
    }
    // Nothing replaced, nothing left behind.
    assert_eq!(names_in(d), before);
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&dangling).unwrap().is_symlink());
    assert!(!d.join("nowhere.bin").exists());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(names_in(&subdir).is_empty());
    assert!(names_in(&read_only).is_empty());
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());

    // `-o -` is standard output, and cannot share it with --json.
    let out = run_unprivileged(
        &topics,
        &[],
        &["send", "--endpoint", "/bytes/3000", "-o", "-"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, bytes_route_body(3000, 7));
    let out = run(
        &topics,
        &[],
        &["send", "--endpoint", "/x", "-o", "-", "--json"],
    )
    .await;
    assert_refused(&out, 2, &["--json needs --output FILE"], "-o - --json");

    // A new file, then the same file replaced; a file named "-" by its path.
    let dest = d.join("reply.bin");
    for seed in [1, 2] {
        let endpoint = format!("/bytes/5000?seed={seed}");
        let out = run_unprivileged(
            &topics,
            &[],
            &["send", "--endpoint", &endpoint, "-o", &s(&dest)],
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(std::fs::read(&dest).unwrap(), bytes_route_body(5000, seed));
    }
    let dash = subdir.join("-");
    let out = run_unprivileged(
        &topics,
        &[],
        &["send", "--endpoint", "/api/dash", "-o", &s(&dash)],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&std::fs::read(&dash).unwrap())["path"], "/api/dash");
    let mut expected = before.clone();
    expected.push("reply.bin".into());
    expected.sort();
    assert_eq!(names_in(d), expected);
    assert_eq!(servers.state.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_takes_only_a_job_id() {
    // A broker that is not there: an id that passes reaches for it (exit 7),
    // one that does not is refused before (exit 2).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let topics = Topics::new("files-wait");
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", addr),
        ("KAFKA_TIMEOUT_SECS", "2".to_string()),
    ];
    let bad: &[(&str, &str)] = &[
        ("8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "starts with '8'"),
        ("ZZZZZZZZZZZZZZZZZZZZZZZZZZ", "starts with 'Z'"),
        ("01JDXK5Q7V8Y0C4J6N2W3R9T1", "has 25 characters"),
        ("01JDXK5Q7V8Y0C4J6N2W3R9T1MM", "has 27 characters"),
        ("01JDXK5Q7V8Y0C4J6N2W3R9TUM", "character 25 is not"),
        ("01JDXK5Q7V8Y0C4J6N2W3R9T-M", "character 25 is not"),
        ("01JDXK5Q7V8Y0C4J6N2W3R9T1\u{e9}", "character 26 is not"),
        ("01JDXK5Q7V8Y0C4J6N2W3R9T1M; rm", "has 30 characters"),
        ("", "has 0 characters"),
    ];
    for (id, why) in bad {
        let out = run(&topics, &env, &["wait", id]).await;
        assert_refused(&out, 2, &["is not a job id", why], id);
    }
    for good in [
        "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "01jdxk5q7v8y0c4j6n2w3r9t1m",
        " 01JDXK5Q7V8Y0C4J6N2W3R9T1M\n",
    ] {
        let out = run(&topics, &env, &["wait", good]).await;
        assert_eq!(out.code, 7, "{good:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("cannot reach the Kafka broker"),
            "{}",
            out.stderr
        );
    }
    // The output is checked before Kafka too.
    let out = run_unprivileged(
        &topics,
        &env,
        &["wait", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", "-o", "/dev/null"],
    )
    .await;
    assert_refused(&out, 2, &["`-o - >/dev/null`"], "wait -o /dev/null");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_before_the_request_leaves_no_part_file() {
    // A broker that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let topics = Topics::new("files-ctrlc");
    for (signal, code) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        interrupted_before_the_request(&topics, &addr, signal, code).await;
    }
    drop(silent);
}

async fn interrupted_before_the_request(topics: &Topics, addr: &str, signal: &str, code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.bin");
    let mut cmd = tokio::process::Command::from(kafkasend(topics));
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", addr)
        .env("KAFKA_TIMEOUT_SECS", "120")
        .args(["send", "--endpoint", "/x", "-o", dest.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    wait_until("the part file did not appear", || {
        !names_in(dir.path()).is_empty()
    })
    .await;
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "SIG{signal}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "interrupted by SIG{signal} before the request was completely sent"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("kafkasend wait"), "{stderr}");
    assert!(names_in(dir.path()).is_empty(), "SIG{signal}");
}
