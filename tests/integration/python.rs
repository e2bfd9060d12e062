//! Coming from the Python KafkaSend: its environment files and the command
//! lines of its README run against the Rust portal and client, and the API
//! sees the requests the Python tool would have sent.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::support::api::Servers;
use crate::support::broker::Topics;
use crate::support::run::{Portal, SendResult};
use crate::support::{wait_until, WAIT};

/// The values of an env file that must point at this test's own services.
fn overrides(topics: &Topics, api: &str, servers: &Servers) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS", topics.broker().to_string()),
        ("KAFKA_REQUEST_TOPIC", topics.request.clone()),
        ("KAFKA_RESPONSE_TOPIC", topics.response.clone()),
        ("KAFKA_CONSUMER_GROUP", topics.group.clone()),
        ("PORTAL_TARGET_API_URL", api.to_string()),
        ("OAUTH2_TOKEN_URL", servers.token_url.clone()),
        ("OAUTH2_CLIENT_ID", "test-client".into()),
        ("OAUTH2_CLIENT_SECRET", "s3cret/x".into()),
    ]
}

/// The `NAME=value` lines of a Python env file in tests/fixtures, with
/// `overrides` replacing the values they name (and only those).
fn env_file(name: &str, overrides: &[(&'static str, String)]) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/python-kafkasend")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{name}: {l}"));
            let v = overrides
                .iter()
                .find(|(o, _)| *o == k)
                .map_or(v.to_string(), |(_, o)| o.clone());
            (k.to_string(), v)
        })
        .collect()
}

/// `program ARGS` with only `env` (and PATH), run to completion within [`WAIT`].
async fn run(program: &Path, args: &[&str], env: &[(String, String)]) -> SendResult {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish in time", program.display()))
        .unwrap();
    SendResult {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The binary, and links to it named as the Python tool's programs.
struct Programs {
    _dir: tempfile::TempDir,
    kafkasend: PathBuf,
    client: PathBuf,
    portal: PathBuf,
}

impl Programs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kafkasend = PathBuf::from(env!("CARGO_BIN_EXE_kafkasend"));
        let client = dir.path().join("kafkasend-client");
        let portal = dir.path().join("kafkasend-portal");
        std::os::unix::fs::symlink(&kafkasend, &client).unwrap();
        std::os::unix::fs::symlink(&kafkasend, &portal).unwrap();
        Self {
            _dir: dir,
            kafkasend,
            client,
            portal,
        }
    }
}

/// One multipart part as the API parsed it: field, filename, the part's
/// own content type, its bytes.
type Part = (String, Option<String>, Option<String>, Vec<u8>);

/// One request as the recording API saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: hyper::HeaderMap,
    parts: Vec<Part>,
}

/// An API that records each request, its multipart parts parsed by multer
/// with their own content types (which the shared test API does not keep),
/// and answers 404 for `/missing`, 200 otherwise.
async fn recording_api() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let svc = service_fn(move |req| record(Arc::clone(&log), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

async fn record(
    log: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut parts = Vec::new();
    if let Ok(boundary) = multer::parse_boundary(&content_type) {
        let mut form = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
        while let Ok(Some(field)) = form.next_field().await {
            let name = field.name().unwrap_or("").to_string();
            let file_name = field.file_name().map(str::to_string);
            let part_type = field.content_type().map(|m| m.to_string());
            let bytes = field.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            parts.push((name, file_name, part_type, bytes));
        }
    } else {
        let _ = req.into_body().collect().await;
    }
    let status = if path == "/missing" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    log.lock().unwrap().push(Seen {
        method,
        path,
        headers,
        parts,
    });
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"recorded\n")))
        .unwrap())
}

/// The requests to `path` the API has seen, waiting (bounded) for `n`.
async fn seen_at(seen: &Arc<Mutex<Vec<Seen>>>, path: &str, n: usize) -> Vec<Seen> {
    let at = || -> Vec<Seen> {
        let all = seen.lock().unwrap();
        all.iter().filter(|s| s.path == path).cloned().collect()
    };
    wait_until(&format!("{n} requests at {path}"), || at().len() >= n).await;
    at()
}

fn header<'a>(s: &'a Seen, name: &str) -> &'a str {
    s.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} in {:?}", s.headers))
}

#[tokio::test(flavor = "multi_thread")]
async fn python_env_files_and_command_lines_work_unchanged() {
    let servers = Servers::start().await;
    let (api, seen) = recording_api().await;
    let topics = Topics::new("python");
    let programs = Programs::new();
    let fixed = overrides(&topics, &api, &servers);

    // The portal's file: every Python name is read or named.
    let portal_env = env_file("portal.env.example", &fixed);
    let shown = run(
        &programs.kafkasend,
        &["config", "show", "portal"],
        &portal_env,
    )
    .await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let text = shown.stdout_text();
    let row = |name: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name} in:\n{text}"));
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("PORTAL_REQUEST_TIMEOUT_SECS")[1..],
        ["env PORTAL_JOB_TIMEOUT_SECONDS", "300"]
    );
    assert_eq!(
        row("PORTAL_SESSION_TIMEOUT_SECS")[1..],
        ["env KAFKA_SESSION_TIMEOUT_MS", "30"]
    );
    assert_eq!(
        row("PORTAL_START_FROM")[1..],
        ["env KAFKA_AUTO_OFFSET_RESET", "earliest"]
    );
    assert_eq!(row("PORTAL_MAX_CONCURRENT_JOBS")[1..], ["env", "10"]);
    assert!(row("KAFKA_MAX_POLL_RECORDS")[2].contains("PORTAL_MAX_CONCURRENT_JOBS"));

    // The link says what it is, as the Python program did.
    let version = run(&programs.portal, &["--version"], &[]).await;
    assert_eq!(version.code, 0, "{}", version.stderr);
    assert!(
        version.stdout_text().starts_with("kafkasend "),
        "{}",
        version.stdout_text()
    );

    // Started as `kafkasend-portal`, with the file as it is.
    let env: Vec<(&str, String)> = portal_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let mut cmd = Command::new(&programs.portal);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    let portal = Portal::start_as(cmd, &[], &env);
    let log = portal.log();
    let warning = log
        .lines()
        .find(|l| l.contains("KAFKA_MAX_POLL_RECORDS"))
        .unwrap_or_else(|| panic!("no warning about KAFKA_MAX_POLL_RECORDS:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("PORTAL_MAX_CONCURRENT_JOBS"), "{warning}");

    // The client's file, and the README's command line through the
    // `kafkasend-client` link.
    let client_env = env_file("client.env.example", &fixed);
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/hello.txt");
    let hello_bytes = std::fs::read(&hello).unwrap();
    let out = run(
        &programs.client,
        &[
            "send-file",
            hello.to_str().unwrap(),
            "--endpoint",
            "/api/upload",
            "--method",
            "POST",
        ],
        &client_env,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "recorded\n");
    let hint = format!(
        "the same with send: kafkasend send {} --endpoint /api/upload -X POST --multipart",
        hello.display()
    );
    assert!(out.stderr.contains(&hint), "{}", out.stderr);
    // CLIENT_LOG_LEVEL=INFO from the file.
    assert!(out.stderr.contains(" INFO "), "{}", out.stderr);
    let upload = &seen_at(&seen, "/api/upload", 1).await[0];
    assert_eq!(upload.method, "POST");
    assert!(header(upload, "content-type").starts_with("multipart/form-data; boundary="));
    let token = header(upload, "authorization")
        .strip_prefix("Bearer ")
        .expect("a bearer token");
    assert!(servers.state.valid_tokens.lock().unwrap().contains(token));
    assert_eq!(
        upload.parts,
        [(
            "file".to_string(),
            Some("hello.txt".to_string()),
            Some("text/plain".to_string()),
            hello_bytes.clone()
        )]
    );

    // kafkasend send-file with the Python flags: -m, -h (twice the same
    // name: the later one counts; one without ':' is dropped with a
    // warning), -t, no leading '/', --no-wait then --wait.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("report.bin");
    std::fs::write(&data, b"\x00\x01binary\xff").unwrap();
    let out = run(
        &programs.kafkasend,
        &[
            "send-file",
            data.to_str().unwrap(),
            "-e",
            "api/reports",
            "-m",
            "put",
            "-h",
            "X-Request-ID: first",
            "-h",
            "x-request-id: second",
            "-h",
            "NoColonHere",
            "-t",
            "application/x-report",
            "--no-wait",
            "--wait",
        ],
        &client_env,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: not sending NoColonHere: a header must look like 'Name: value'"),
        "{}",
        out.stderr
    );
    let report = &seen_at(&seen, "/api/reports", 1).await[0];
    assert_eq!(report.method, "PUT");
    assert_eq!(header(report, "x-request-id"), "second");
    assert_eq!(report.headers.get_all("x-request-id").iter().count(), 1);
    assert_eq!(
        report.parts,
        [(
            "file".to_string(),
            Some("report.bin".to_string()),
            Some("application/x-report".to_string()),
            b"\x00\x01binary\xff".to_vec()
        )]
    );

    // send-request: an error status exits 0, as it did in Python; `send`
    // says 22 for the same answer.
    let out = run(
        &programs.kafkasend,
        &[
            "send-request",
            "-e",
            "/missing",
            "-m",
            "DELETE",
            "-h",
            "X-Correlation-ID: c-1",
        ],
        &client_env,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("HTTP 404"), "{}", out.stderr);
    let deleted = &seen_at(&seen, "/missing", 1).await[0];
    assert_eq!(deleted.method, "DELETE");
    assert_eq!(header(deleted, "x-correlation-id"), "c-1");
    assert!(deleted.parts.is_empty());
    let out = run(
        &programs.kafkasend,
        &["send", "-X", "DELETE", "--endpoint", "/missing"],
        &client_env,
    )
    .await;
    assert_eq!(out.code, 22, "{}", out.stderr);

    // --no-wait: the job id, and the API gets the request all the same.
    let out = run(
        &programs.client,
        &[
            "--log-level",
            "ERROR",
            "send-request",
            "--endpoint",
            "api/items",
            "--no-wait",
        ],
        &client_env,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job = out.stdout_text();
    assert_eq!(job.trim().len(), 26, "{job}");
    assert!(!out.stderr.contains(" INFO "), "{}", out.stderr);
    let items = &seen_at(&seen, "/api/items", 1).await[0];
    assert_eq!(items.method, "GET");
    assert_eq!(header(items, "idempotency-key"), job.trim());

    // `-h 'Name: value'` in `kafkasend send` is refused, not taken for help.
    let out = run(
        &programs.kafkasend,
        &["send", "--endpoint", "/api/help", "-h", "X-Trace: 1"],
        &client_env,
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("-H 'X-Trace: 1'"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    // Plain -h is still help.
    let out = run(&programs.kafkasend, &["send", "-h"], &client_env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout_text().contains("--endpoint"));

    // Everything above reached the API once, and nothing else did.
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/upload",
            "/api/reports",
            "/missing",
            "/missing",
            "/api/items"
        ]
    );
    drop(portal);
}

/// The development file (`env.example`, OAuth off) serves both sides:
/// config show names CLIENT_LOG_LEVEL for send, and a bad Python value is
/// refused naming it.
#[tokio::test(flavor = "multi_thread")]
async fn the_shared_env_file_and_bad_python_values() {
    let servers = Servers::start().await;
    let topics = Topics::new("pyenv");
    let programs = Programs::new();
    let env = env_file(
        "env.example",
        &overrides(&topics, &servers.api_url, &servers),
    );
    let shown = run(&programs.kafkasend, &["config", "show", "send"], &env).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let text = shown.stdout_text();
    let level = text
        .lines()
        .find(|l| l.starts_with("KAFKASEND_LOG_LEVEL "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(level.contains("env CLIENT_LOG_LEVEL"), "{level}");
    assert!(level.trim_end().ends_with("INFO"), "{level}");

    let mut bad = env.clone();
    bad.push(("KAFKA_AUTO_OFFSET_RESET".into(), "none".into()));
    let out = run(&programs.portal, &[], &bad).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "KAFKA_AUTO_OFFSET_RESET (read as PORTAL_START_FROM) must be earliest or latest, not 'none'"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // The Rust name wins over the Python one.
    let mut both = env.clone();
    both.push(("PORTAL_JOB_TIMEOUT_SECONDS".into(), "5".into()));
    both.push(("PORTAL_REQUEST_TIMEOUT_SECS".into(), "9".into()));
    let shown = run(&programs.kafkasend, &["config", "show", "portal"], &both).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let text = shown.stdout_text();
    let timeout = text
        .lines()
        .find(|l| l.starts_with("PORTAL_REQUEST_TIMEOUT_SECS "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(timeout.trim_end().ends_with(" 9"), "{timeout}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("PORTAL_JOB_TIMEOUT_SECONDS ")
                && l.contains("ignored: PORTAL_REQUEST_TIMEOUT_SECS is set")),
        "{text}"
    );
}
