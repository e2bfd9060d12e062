//! curl's request-side habits in `kafkasend send`: `-d`, `--data-binary`,
//! `-F`, `-A`, `-u` and a non-ASCII `--endpoint`, each judged by what the
//! API on the far side of a real broker and portal receives.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::support::api::{json, Recorded, Servers};
use crate::support::broker::Topics;
use crate::support::payload::{pattern, pattern_file, sha256_hex};
use crate::support::run::{kafkasend, kafkasend_cmd, send, Portal, SendResult};
use crate::support::WAIT;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs `kafkasend send ARGS` with `input` on its standard input.
async fn send_with_stdin(topics: &Topics, args: &[&str], input: &[u8]) -> SendResult {
    let mut cmd = tokio::process::Command::from(kafkasend(topics));
    cmd.arg("send")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("send did not finish in time")
        .unwrap();
    SendResult {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The one request the API received at `path`.
fn request_at(servers: &Servers, path: &str) -> Recorded {
    let all = servers.state.requests();
    let mut at = all.iter().filter(|r| r.path == path);
    let r = at
        .next()
        .unwrap_or_else(|| panic!("no request at {path}: {all:?}"));
    assert!(at.next().is_none(), "two requests at {path}");
    r.clone()
}

/// The value of header `name`, which must be there exactly once.
fn only_header(r: &Recorded, name: &str) -> String {
    let values: Vec<_> = r.headers.get_all(name).iter().collect();
    assert_eq!(values.len(), 1, "{name} in {:?}", r.headers);
    values[0].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn data_arrives_as_curl_would_send_it() {
    let servers = Servers::start().await;
    let topics = Topics::new("curl-data");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();

    // -d values joined with '&', a file's line breaks dropped.
    let form = dir.path().join("form.txt");
    std::fs::write(&form, "a=1\r\nb=%40x\n").unwrap();
    let form_arg = format!("@{}", form.display());
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/api/login",
            "-d",
            "user=ann",
            "-d",
            &form_arg,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = b"user=ann&a=1b=%40x";
    assert_eq!(json(&out.stdout)["body_sha256"], sha256_hex(want).as_str());
    let r = request_at(&servers, "/api/login");
    assert_eq!(r.method, "POST");
    assert_eq!(
        only_header(&r, "content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(only_header(&r, "content-length"), want.len().to_string());

    // --data-binary: a file of any bytes, line breaks kept, larger than a
    // chunk, then text; a -H Content-Type and -X win.
    let mut blob = pattern(3, 1_000_000);
    blob.extend_from_slice(b"\r\n\n");
    let blob_path = dir.path().join("blob.bin");
    std::fs::write(&blob_path, &blob).unwrap();
    let blob_arg = format!("@{}", blob_path.display());
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/api/blob",
            "-X",
            "PUT",
            "--data-binary",
            &blob_arg,
            "--data-binary",
            "end",
            "-H",
            "Content-Type: application/octet-stream",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    blob.extend_from_slice(b"&end");
    let r = request_at(&servers, "/api/blob");
    assert_eq!(r.method, "PUT");
    assert_eq!(r.body_sha256, sha256_hex(&blob));
    assert_eq!(r.body_len, blob.len() as u64);
    assert_eq!(only_header(&r, "content-type"), "application/octet-stream");

    // An empty -d is a POST with an empty body, as in curl.
    let out = send(&topics, &["--endpoint", "/api/empty", "-d", ""]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = request_at(&servers, "/api/empty");
    assert_eq!((r.method.as_str(), r.body_len), ("POST", 0));
    assert_eq!(only_header(&r, "content-length"), "0");

    // -d @- reads standard input, line breaks dropped too.
    let out = send_with_stdin(
        &topics,
        &["--endpoint", "/api/stdin", "-d", "@-", "-d", "z=9"],
        b"x=1\ny=2\r\n",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = request_at(&servers, "/api/stdin");
    assert_eq!(r.body_sha256, sha256_hex(b"x=1y=2&z=9"));
    assert_eq!(only_header(&r, "content-length"), "10");

    // --data-binary @- streams standard input exactly, with no declared length.
    let raw = pattern(8, 50_000);
    let out = send_with_stdin(
        &topics,
        &["--endpoint", "/api/raw", "--data-binary", "@-"],
        &raw,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        request_at(&servers, "/api/raw").body_sha256,
        sha256_hex(&raw)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_of_fields_and_files_reads_back_with_a_real_parser() {
    let servers = Servers::start().await;
    let topics = Topics::new("curl-form");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    // Larger than a chunk, so the form spans records and part boundaries
    // fall inside them.
    let (report, report_digest) = pattern_file(dir.path(), "report.pdf", 21, 2_000_000);
    let (scan, scan_digest) = pattern_file(dir.path(), "scan.bin", 22, 300_000);
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "line 1\nline 2; with \"quotes\"\n").unwrap();
    let doc = format!("doc=@{}", report.display());
    let scan_part = format!("scan=@{};type=image/png;filename=scan.png", scan.display());
    let summary = format!("summary=<{}", notes.display());
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/api/docs",
            "-F",
            "title=Q3 report: caf\u{e9}",
            "-F",
            r#"note="a;b \"c\"""#,
            "-F",
            &doc,
            "-F",
            &scan_part,
            "-F",
            &summary,
            "-H",
            "X-Request-ID: form-1",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = request_at(&servers, "/api/docs");
    assert_eq!(r.method, "POST");
    assert!(
        only_header(&r, "content-type").starts_with("multipart/form-data; boundary="),
        "{:?}",
        r.headers
    );
    assert_eq!(only_header(&r, "x-request-id"), "form-1");
    let text = |s: &str| (s.len() as u64, sha256_hex(s.as_bytes()));
    let seen: Vec<_> = r
        .parts
        .iter()
        .map(|(name, file, len, digest)| (name.as_str(), file.as_deref(), *len, digest.clone()))
        .collect();
    let (title_len, title_digest) = text("Q3 report: caf\u{e9}");
    let (note_len, note_digest) = text("a;b \"c\"");
    let (notes_len, notes_digest) = text("line 1\nline 2; with \"quotes\"\n");
    assert_eq!(
        seen,
        vec![
            ("title", None, title_len, title_digest),
            ("note", None, note_len, note_digest),
            ("doc", Some("report.pdf"), 2_000_000, report_digest),
            ("scan", Some("scan.png"), 300_000, scan_digest),
            ("summary", None, notes_len, notes_digest),
        ]
    );
    assert_eq!(
        r.part_types,
        vec![
            None,
            None,
            Some("application/pdf".to_string()),
            Some("image/png".to_string()),
            None
        ]
    );

    // A part from standard input: the form has no declared length, and
    // still reads back whole.
    let piped = pattern(23, 1_200_000);
    let out = send_with_stdin(
        &topics,
        &[
            "--endpoint",
            "/api/piped",
            "-F",
            "kind=raw",
            "-F",
            "up=@-;filename=piped.bin",
        ],
        &piped,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = request_at(&servers, "/api/piped");
    assert_eq!(r.parts.len(), 2, "{:?}", r.parts);
    assert_eq!(r.parts[1].0, "up");
    assert_eq!(r.parts[1].1.as_deref(), Some("piped.bin"));
    assert_eq!(
        (r.parts[1].2, &r.parts[1].3),
        (1_200_000, &sha256_hex(&piped))
    );
    assert_eq!(r.part_types[1].as_deref(), Some("application/octet-stream"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_always_sees_a_user_agent() {
    let servers = Servers::start().await;
    let topics = Topics::new("curl-agent");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let agent = |path: &str| only_header(&request_at(&servers, path), "user-agent");

    let out = send(&topics, &["--endpoint", "/ua/default"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(agent("/ua/default"), format!("kafkasend/{VERSION}"));
    let out = send(
        &topics,
        &["--endpoint", "/ua/flag", "-A", "probe/2.0 (test)"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(agent("/ua/flag"), "probe/2.0 (test)");
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/ua/header",
            "-A",
            "probe/2.0",
            "-H",
            "User-Agent: mine/1",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(agent("/ua/header"), "mine/1");
    // None sent: the portal names itself.
    let out = send(&topics, &["--endpoint", "/ua/none", "-A", ""]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(agent("/ua/none"), format!("kafkasend-portal/{VERSION}"));

    // A portal whose list leaves User-Agent out sends its own instead.
    let strict = Topics::new("curl-agent-strict");
    let mut env = servers.plain_env();
    env.push(("PORTAL_ALLOWED_HEADERS", "Content-Type,X-Request-ID".into()));
    let _strict_portal = Portal::start(&strict, &env);
    let out = send(&strict, &["--endpoint", "/ua/strict", "-A", "probe/2.0"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(agent("/ua/strict"), format!("kafkasend-portal/{VERSION}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_ascii_endpoint_is_percent_encoded_and_a_broken_one_refused() {
    let servers = Servers::start().await;
    let topics = Topics::new("curl-endpoint");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/api/caf\u{e9}/\u{65e5}\u{672c}?q=\u{fc}&x=%2A",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = request_at(&servers, "/api/caf%C3%A9/%E6%97%A5%E6%9C%AC");
    assert_eq!(r.query.as_deref(), Some("q=%C3%BC&x=%2A"));
    assert_eq!(
        json(&out.stdout)["path"],
        "/api/caf%C3%A9/%E6%97%A5%E6%9C%AC"
    );

    for (endpoint, said) in [
        ("/api/a b", "%20"),
        ("/api/a\u{7}", "U+0007"),
        ("/api/\u{85}", "U+0085"),
        ("/api/100%", "%25"),
        ("/api/%e9%", "%25"),
    ] {
        let out = send(&topics, &["--endpoint", endpoint]).await;
        assert_eq!(out.code, 2, "{endpoint:?}: {}", out.stderr);
        assert!(out.stderr.contains(said), "{endpoint:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    assert_eq!(servers.state.requests().len(), 1, "refused ones never left");
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_flags_that_cannot_work_here_are_refused_clearly() {
    // Each fails before Kafka is asked anything: no topic or portal exists.
    let topics = Topics::new("curl-refused");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.txt");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["-u", "ann:s3cret-pw", "--endpoint", "/x"],
            2,
            "no portal forwards an Authorization header",
        ),
        (
            &["--endpoint", "/x", "-d", "a", "-F", "b=1"],
            2,
            "cannot be combined",
        ),
        (
            &["--endpoint", "/x", "-d", "a", "--data-binary", "b"],
            2,
            "cannot be mixed",
        ),
        (
            &[file, "--endpoint", "/x", "-d", "a"],
            2,
            "would be a second one",
        ),
        (&[file, "--endpoint", "/x", "-F", "a=1"], 2, "-F file=@"),
        (&["--endpoint", "/x", "-F", "q=a;b"], 2, "double quotes"),
        (&["--endpoint", "/x", "-F", "novalue"], 2, "name=text"),
        (
            &["--endpoint", "/x", "-F", "f=@/definitely/not/here"],
            1,
            "cannot read /definitely/not/here",
        ),
        (
            &["--endpoint", "/x", "-d", "@/definitely/not/here"],
            1,
            "%40",
        ),
        (
            &["--endpoint", "/x", "-A", "two\nlines"],
            2,
            "printable ASCII",
        ),
        (
            &["--endpoint", "/x", "-d", "@-", "-d", "@-"],
            2,
            "only once",
        ),
    ];
    for (args, code, said) in cases {
        let out = send(&topics, args).await;
        assert_eq!(out.code, *code, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(said), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(!out.stderr.contains("s3cret-pw"), "{}", out.stderr);
    }
    let help = kafkasend_cmd(&topics, &["send", "--help"]).await;
    let help = help.stdout_text();
    for said in [
        "Unlike curl",
        "--referer",
        "--json prints a summary",
        "kafkasend/",
    ] {
        assert!(help.contains(said), "{said}: {help}");
    }
}
