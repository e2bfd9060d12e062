//! The content type is the job's: it reaches the API whatever
//! `PORTAL_ALLOWED_HEADERS` says, so a multipart form stays readable; the
//! headers the portal does not forward are named back to `send` and `wait`;
//! endpoint patterns the Python tool read differently are warned about or
//! refused.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;

use crate::support::broker::{kafka_settings, Topics};
use crate::support::payload::{pattern, sha256_hex};
use crate::support::run::{kafkasend_cmd, run_with_env, send, Portal};

/// The header list of the issue's env file: no Content-Type in it.
const PYTHON_HEADER_LIST: &str = "X-Request-ID,X-Correlation-ID";

/// One part of a form, as the multipart parser read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    name: Option<String>,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// One request as the form API saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    /// For a multipart body: its parts, or why the parser refused it.
    form: Option<Result<Vec<Part>, String>>,
    /// SHA-256 of a body that is not multipart.
    body_sha256: Option<String>,
}

/// A target API whose handler reads multipart bodies with `multer`, a
/// parser that is not ours, and answers with the digest of what it read.
struct FormApi {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FormApi {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&log), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { url, seen }
    }

    fn env(&self, endpoints: &str) -> Vec<(&'static str, String)> {
        vec![
            ("PORTAL_TARGET_API_URL", self.url.clone()),
            ("PORTAL_USE_OAUTH", "false".into()),
            ("PORTAL_ALLOWED_HEADERS", PYTHON_HEADER_LIST.into()),
            ("PORTAL_ALLOWED_ENDPOINTS", endpoints.into()),
        ]
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn read_form(content_type: &str, body: Incoming) -> Result<Vec<Part>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut parts = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().map(str::to_string);
        let file_name = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(|m| m.to_string());
        let data = field.bytes().await.map_err(|e| e.to_string())?.to_vec();
        parts.push(Part {
            name,
            file_name,
            content_type,
            data,
        });
    }
    Ok(parts)
}

async fn handle(
    log: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = req.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (form, body_sha256, answer) = if content_type.starts_with("multipart/") {
        let form = read_form(&content_type, req.into_body()).await;
        let answer = match &form {
            Ok(parts) => parts
                .iter()
                .map(|p| sha256_hex(&p.data))
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => format!("unreadable form: {e}"),
        };
        (Some(form), None, answer)
    } else {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let digest = sha256_hex(&body);
        (None, Some(digest.clone()), digest)
    };
    log.lock().unwrap().push(Seen {
        headers,
        form,
        body_sha256,
    });
    Ok(Response::new(Full::new(Bytes::from(answer))))
}

/// A file body meant to trip a careless multipart writer or reader: CRLFs,
/// `--` runs, lines that look like a boundary (ours included), NULs, every
/// byte value, then enough pattern bytes to take two chunks.
fn hostile_file_bytes() -> Vec<u8> {
    let mut data = Vec::new();
    data.extend_from_slice(b"\r\n--\r\n----\r\n--kafkasend-01JDXK5Q7V8Y0C4J6N2W3R9T1M\r\n");
    data.extend_from_slice(b"Content-Disposition: form-data; name=\"forged\"\r\n\r\n");
    data.extend_from_slice(b"--kafkasend-\r\n\r\n--\r\n\0\0\r");
    data.extend((0..=255u8).cycle().take(4096));
    data.extend_from_slice(&pattern(31, 1_200_000));
    data.extend_from_slice(b"\r\n--\r\n");
    data
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_reaches_the_api_readable_when_the_header_list_lacks_content_type() {
    let api = FormApi::start().await;
    let topics = Topics::new("ctype-form");
    let _portal = Portal::start(&topics, &api.env("POST /upload/**"));
    let dir = tempfile::tempdir().unwrap();
    let data = hostile_file_bytes();
    let file = dir.path().join("scan report.pdf");
    std::fs::write(&file, &data).unwrap();

    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/upload/forms",
            "--multipart",
            "--field",
            "document",
            "-H",
            "X-Request-ID: r-form",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(!out.stderr.contains("did not forward"), "{}", out.stderr);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    let ct = seen[0].headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    assert_eq!(seen[0].headers["x-request-id"], "r-form");
    let parts = seen[0].form.clone().unwrap().expect("the form parses");
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0].name.as_deref(), Some("document"));
    assert_eq!(parts[0].file_name.as_deref(), Some("scan report.pdf"));
    assert_eq!(parts[0].content_type.as_deref(), Some("application/pdf"));
    assert!(parts[0].data == data, "the file's bytes changed on the way");
    assert_eq!(out.stdout_text(), sha256_hex(&data));

    // A raw upload keeps its declared type under the same header list.
    let csv = b"id,name\r\n1,\"a\r\nb\"\r\n".to_vec();
    let raw = dir.path().join("rows.csv");
    std::fs::write(&raw, &csv).unwrap();
    let out = send(
        &topics,
        &[
            raw.to_str().unwrap(),
            "--endpoint",
            "/upload/rows",
            "--content-type",
            "text/csv; charset=utf-8; header=present",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let seen = api.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].headers["content-type"],
        "text/csv; charset=utf-8; header=present"
    );
    assert_eq!(seen[1].body_sha256.as_deref(), Some(&*sha256_hex(&csv)));
    assert_eq!(out.stdout_text(), sha256_hex(&csv));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_type_that_is_not_one_media_type_is_refused_clearly() {
    let api = FormApi::start().await;
    let topics = Topics::new("ctype-bad");
    let _portal = Portal::start(&topics, &api.env("POST /upload"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.bin");
    std::fs::write(&file, b"payload").unwrap();
    let path = file.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "-H",
                "Content-Type: text/plain",
                "-H",
                "Content-Type: text/html",
            ],
            "2 Content-Type headers",
        ),
        (
            &["--content-type", "text/plain\r\nX-Injected: 1"],
            "control character",
        ),
        (
            &["--content-type", "multipart/form-data"],
            "must name its boundary",
        ),
        (&["--content-type", "pdf"], "type/subtype"),
    ];
    for (extra, want) in cases {
        let mut args = vec![path, "--endpoint", "/upload"];
        args.extend_from_slice(extra);
        let out = send(&topics, &args).await;
        // `send` refuses what a portal would (the portal's own check, for
        // other producers, is unit-tested in `portal::policy`).
        assert_eq!(out.code, 2, "{extra:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{extra:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("Content-Type"),
            "{extra:?}: {}",
            out.stderr
        );
    }
    assert!(api.seen().is_empty(), "{:?}", api.seen());
    // curl's `-H 'Content-Type:'`: the body goes without a type.
    let out = send(
        &topics,
        &[path, "--endpoint", "/upload", "-H", "Content-Type:"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].headers.get("content-type").is_none(),
        "{:?}",
        seen[0].headers
    );
    assert_eq!(out.stdout_text(), sha256_hex(b"payload"));
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_the_portal_drops_are_named_to_send_and_wait() {
    let api = FormApi::start().await;
    let topics = Topics::new("ctype-dropped");
    let mut env = api.env("POST /upload/*, GET /plain");
    env.push(("PORTAL_MAX_HEADER_COUNT", "400".into()));
    let portal = Portal::start(&topics, &env);
    // The pattern the Python tool read as a subtree is warned about at start.
    let log = portal.log();
    let warning = log
        .lines()
        .find(|l| l.contains("entry 'POST /upload/*'"))
        .unwrap_or_else(|| panic!("no warning about /upload/* in:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("write 'POST /upload/*/**'"), "{warning}");
    assert!(!log.contains("entry 'GET /plain'"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let body = pattern(5, 10_000);
    let file = dir.path().join("data.bin");
    std::fs::write(&file, &body).unwrap();
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/upload/x",
            "-H",
            "X-Custom: s3cr3t-value",
            "-H",
            "X-Request-ID: r-1",
            "-H",
            "Accept: text/plain",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stdout_text(), sha256_hex(&body));
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("did not forward"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(warnings[0].contains("X-Custom, Accept"), "{}", warnings[0]);
    assert!(!out.stderr.contains("s3cr3t"), "{}", out.stderr);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("x-custom").is_none());
    assert!(seen[0].headers.get("accept").is_none());
    assert_eq!(seen[0].headers["x-request-id"], "r-1");

    // Picked up later, the answer says the same.
    let out = send(
        &topics,
        &["--endpoint", "/plain", "-H", "X-Other: 1", "--no-wait"],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let job = out.stdout_text().trim().to_string();
    let answer = dir.path().join("answer");
    let waited = kafkasend_cmd(&topics, &["wait", &job, "-o", answer.to_str().unwrap()]).await;
    assert_eq!(waited.code, 0, "stderr: {}", waited.stderr);
    assert!(
        waited
            .stderr
            .contains("the portal did not forward X-Other to the API"),
        "{}",
        waited.stderr
    );
    assert_eq!(std::fs::read(&answer).unwrap(), sha256_hex(b"").as_bytes());
    // A script reads the same from the --json summary.
    let waited = kafkasend_cmd(
        &topics,
        &["wait", &job, "-o", answer.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(waited.code, 0, "stderr: {}", waited.stderr);
    let summary: serde_json::Value = serde_json::from_str(waited.stdout_text().trim()).unwrap();
    assert_eq!(summary["dropped_headers"], "X-Other", "{summary}");

    // Hundreds of dropped names: one warning line, cut, with a count.
    let many: Vec<String> = (0..300).map(|i| format!("X-Extra-{i:03}: v")).collect();
    let mut args = vec!["--endpoint", "/plain"];
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    let out = send(&topics, &args).await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("did not forward"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(warnings[0].len() < 1400, "{}", warnings[0].len());
    assert!(
        warnings[0].contains("X-Extra-000, X-Extra-001"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains(" more to the API"), "{}", warnings[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_patterns_are_refused_by_the_portal_and_config_show() {
    let topics = Topics::new("ctype-patterns");
    let cases = [
        ("/api/[ab]/items", "character classes"),
        ("GET /api/item?", "no one-character wildcard"),
        ("/api/{a,b}", "one entry per alternative"),
        ("*", "write '/**'"),
    ];
    for (spec, want) in cases {
        let env = [
            ("PORTAL_TARGET_API_URL", "http://127.0.0.1:9".to_string()),
            ("PORTAL_USE_OAUTH", "false".into()),
            ("PORTAL_ALLOWED_ENDPOINTS", spec.into()),
        ];
        for command in [&["config", "show", "portal"][..], &["portal"][..]] {
            let out = run_with_env(&topics, &env, command).await;
            assert_eq!(out.code, 2, "{spec} {command:?}: {}", out.stderr);
            assert!(
                out.stderr.contains("PORTAL_ALLOWED_ENDPOINTS"),
                "{spec} {command:?}: {}",
                out.stderr
            );
            assert!(
                out.stderr.contains(want),
                "{spec} {command:?}: {}",
                out.stderr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_dropped_list_is_shown_as_one_bounded_escaped_line() {
    use kafkasend::kafka;
    use kafkasend::protocol::chunker::Chunker;
    use kafkasend::protocol::wire::{self, Body, Frame, JobId, ResponseStart};

    let topics = Topics::new("ctype-forged");
    let client = kafka::connect(&kafka_settings(&topics, "it-forger"))
        .await
        .unwrap();
    for topic in [&topics.request, &topics.response] {
        client.ensure_topic(topic, 3, 1).await.unwrap();
    }
    // No portal: anyone who may write the response topic answers instead.
    let queued = send(&topics, &["--endpoint", "/x", "--no-wait"]).await;
    assert_eq!(queued.code, 0, "{}", queued.stderr);
    let job: JobId = queued.stdout_text().trim().parse().unwrap();
    let partition = kafka::partitioner::partition_for_key(&job.key(), 3);
    let pc = client.partition(&topics.response, partition).await.unwrap();
    let start = Frame {
        job,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status: 200,
            headers: vec![],
            body_len: Some(0),
            digest: kafkasend::protocol::digest::DigestKind::Sha256,
        }),
    };
    let mut forged = b"X-A\r\nkafkasend: HTTP 500\x1b[2J\xe2\x80\xae, ".to_vec();
    forged.extend(std::iter::repeat_n(b'B', 200_000));
    let end = Chunker::new(job, 1, kafkasend::protocol::digest::DigestKind::Sha256).finish();
    pc.produce(kafka::record(
        &start,
        &[],
        &[(wire::DROPPED_HEADERS_HEADER, forged)],
    ))
    .await
    .unwrap();
    pc.produce(kafka::record(&end, &[], &[])).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let answer = dir.path().join("answer");
    let out = kafkasend_cmd(
        &topics,
        &["wait", &job.to_string(), "-o", answer.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{:?}", out.stderr);
    let warning = lines[0];
    assert!(
        warning.starts_with("kafkasend: warning: the portal did not forward X-A\\r\\nkafkasend: HTTP 500\\u{1b}[2J\\u{202e}, BBB"),
        "{warning:?}"
    );
    assert!(!warning.chars().any(|c| c.is_control() || c == '\u{202e}'));
    assert!(warning.len() < 2300, "{}", warning.len());
    assert_eq!(lines[1], "HTTP 200 OK");
    assert_eq!(std::fs::read(&answer).unwrap(), b"");
}
