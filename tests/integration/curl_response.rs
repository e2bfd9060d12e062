//! curl's response-side habits in `send` and `wait`: `-i`, `-D`, `-v`, the
//! response headers in `--json`, `--compressed`, and a body written as it
//! arrives.

use std::sync::atomic::Ordering;

use tokio::io::AsyncReadExt;

use crate::support::answers::{
    encoded, plain_text, AnswersApi, DRIP_FIRST, DRIP_LAST, HEAD_BODY, HEAD_HEADERS,
};
use crate::support::api::json;
use crate::support::broker::Topics;
use crate::support::run::{kafkasend, kafkasend_cmd, send, Portal};
use crate::support::WAIT;

/// A head as `-i` and `-D` write it: the status line, the headers, the body.
fn split_head(out: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(out);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let body = out[head.len() + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (n, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a header: {l:?}"));
            (n.to_string(), v.to_string())
        })
        .collect();
    (status, headers, body)
}

/// The values of header `name`, in order.
fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Checks a relayed `/head` answer: every header the API set, repeats in order.
fn assert_head_headers(headers: &[(String, String)]) {
    for name in ["content-type", "set-cookie", "x-multi"] {
        let expected: Vec<&str> = HEAD_HEADERS
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(values(headers, name), expected, "{name} in {headers:?}");
    }
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn include_and_dump_header_write_the_head_where_curl_does() {
    let api = AnswersApi::start().await;
    let topics = Topics::new("include");
    let _portal = Portal::start(&topics, &api.env());
    let dir = tempfile::tempdir().unwrap();

    // -i: the head, a blank line, then the body, all on stdout.
    let out = send(&topics, &["-e", "/head", "-i"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (status, headers, body) = split_head(&out.stdout);
    assert_eq!(status, "HTTP/1.1 201 Created");
    assert_head_headers(&headers);
    assert_eq!(body, HEAD_BODY.as_bytes());

    // -i -o: the head goes into the file, which is still verified whole.
    let reply = dir.path().join("reply.txt");
    let out = send(
        &topics,
        &["-e", "/head", "-i", "-o", reply.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = json(&out.stdout);
    assert_eq!(summary["digest_verified"], true);
    assert_eq!(summary["bytes_received"], HEAD_BODY.len());
    let (status, headers, body) = split_head(&std::fs::read(&reply).unwrap());
    assert_eq!(status, "HTTP/1.1 201 Created");
    assert_head_headers(&headers);
    assert_eq!(body, HEAD_BODY.as_bytes());

    // -D FILE: the head there, only the body on stdout.
    let head = dir.path().join("head.txt");
    let out = send(&topics, &["-e", "/head", "-D", head.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), HEAD_BODY);
    let (status, headers, body) = split_head(&std::fs::read(&head).unwrap());
    assert_eq!(status, "HTTP/1.1 201 Created");
    assert_head_headers(&headers);
    assert!(body.is_empty(), "{body:?}");

    // -D -: the head on stdout, before the body.
    let out = send(&topics, &["-e", "/head", "-D", "-"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (status, _, body) = split_head(&out.stdout);
    assert_eq!(status, "HTTP/1.1 201 Created");
    assert_eq!(body, HEAD_BODY.as_bytes());

    // An HTTP error's head is written too, and the exit code is curl's.
    let out = send(&topics, &["-e", "/nowhere", "-i"]).await;
    assert_eq!(out.code, 22, "{}", out.stderr);
    let (status, _, body) = split_head(&out.stdout);
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(body, b"no such route");

    // -D where it cannot write: refused before anything is sent.
    let requests = api.state.accept_encoding.lock().unwrap().len();
    let out = send(&topics, &["-e", "/head", "-D", "/dev/null"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("-D /dev/null is a character device"),
        "{}",
        out.stderr
    );
    let missing = dir.path().join("absent/head.txt");
    let out = send(&topics, &["-e", "/head", "-D", missing.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("cannot write -D"), "{}", out.stderr);
    let out = send(&topics, &["-e", "/head", "-D", "h.txt", "-o", "h.txt"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("use -i"), "{}", out.stderr);
    let out = send(&topics, &["-e", "/head", "-i", "--no-wait"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("kafkasend wait JOB_ID -i"),
        "{}",
        out.stderr
    );
    assert_eq!(api.state.accept_encoding.lock().unwrap().len(), requests);
    assert_eq!(entries(dir.path()), ["head.txt", "reply.txt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn verbose_and_json_show_both_heads_without_credentials() {
    let api = AnswersApi::start().await;
    let topics = Topics::new("verbose");
    let _portal = Portal::start(&topics, &api.env());
    let dir = tempfile::tempdir().unwrap();
    let reply = dir.path().join("reply.txt");
    let out = send(
        &topics,
        &[
            "-e",
            "/head?x=1",
            "-v",
            "-H",
            "X-Request-ID: r-1",
            "-H",
            "Authorization: Bearer sekrit-123",
            "-o",
            reply.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = json(&out.stdout);
    let job = summary["job"].as_str().unwrap();
    let err = &out.stderr;
    assert!(!err.contains("sekrit-123"), "{err}");
    assert!(err.contains("not sending Authorization"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no line {line:?} in:\n{err}"))
    };
    let first = lines
        .iter()
        .position(|l| l.starts_with(&format!("* job {job}: request partition ")))
        .unwrap_or_else(|| panic!("no job line in:\n{err}"));
    let request = at("> GET /head?x=1 HTTP/1.1");
    assert!(first < request, "{err}");
    assert!(at("> X-Request-ID: r-1") > request);
    let response = at("< HTTP/1.1 201 Created");
    assert!(response > request, "{err}");
    assert!(at("< set-cookie: a=1; Path=/") > response);
    assert!(at("< set-cookie: b=2") > at("< set-cookie: a=1; Path=/"));
    assert!(
        lines.iter().any(|l| l
            .starts_with(&format!("* {} bytes received, BLAKE3 ", HEAD_BODY.len()))
            && l.ends_with(" verified")),
        "{err}"
    );
    // The body went to its file, untouched by -v.
    assert_eq!(std::fs::read_to_string(&reply).unwrap(), HEAD_BODY);

    // --json: the headers as [name, value] pairs, repeats kept in order.
    let pairs: Vec<(String, String)> = summary["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers in {summary}"))
        .iter()
        .map(|p| {
            let p = p.as_array().unwrap();
            assert_eq!(p.len(), 2, "{p:?}");
            (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into())
        })
        .collect();
    assert_head_headers(&pairs);
    assert_eq!(values(&pairs, "content-length"), ["8"]);

    // A failure before any answer: no headers at all.
    let out = send(
        &topics,
        &["-e", "no-slash", "-o", reply.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(json(&out.stdout)["headers"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_asks_for_gzip_deflate_br_and_decodes_what_is_checked_as_sent() {
    let api = AnswersApi::start().await;
    let topics = Topics::new("compressed");
    // The default PORTAL_ALLOWED_HEADERS passes Accept-Encoding on.
    let mut env = api.env();
    // Small chunks: every compressed body spans several records.
    env.push(("KAFKASEND_CHUNK_SIZE", "4096".into()));
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let text = plain_text();

    for kind in ["gzip", "zlib", "raw", "br"] {
        let (_, sent) = encoded(kind);
        assert!(
            sent.len() > 3 * 4096 && sent.len() * 5 < text.len(),
            "{kind}"
        );
        let reply = dir.path().join(format!("{kind}.txt"));
        let route = format!("/encoded/{kind}");
        let out = send(
            &topics,
            &[
                "-e",
                &route,
                "--compressed",
                "-o",
                reply.to_str().unwrap(),
                "--json",
            ],
        )
        .await;
        assert_eq!(out.code, 0, "{kind}: {}", out.stderr);
        assert!(
            std::fs::read(&reply).unwrap() == text,
            "{kind}: decoded body differs"
        );
        // Checked, and counted, as the API sent it.
        let summary = json(&out.stdout);
        assert_eq!(summary["bytes_received"], sent.len(), "{kind}");
        assert_eq!(summary["digest_verified"], true, "{kind}");
    }
    let asked = api.state.accept_encoding.lock().unwrap().clone();
    assert_eq!(asked, vec![Some("gzip, deflate, br".to_string()); 4]);

    // Without --compressed, the bytes as sent; with -i, the head says how.
    let (_, gz) = encoded("gzip");
    let out = send(&topics, &["-e", "/encoded/gzip"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout == gz,
        "the body was changed without --compressed"
    );
    let out = send(&topics, &["-e", "/encoded/gzip", "-i", "--compressed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, headers, body) = split_head(&out.stdout);
    assert_eq!(values(&headers, "content-encoding"), ["gzip"]);
    assert!(body == text, "decoded body after the head differs");

    // Bodies that are not what they claim: exit 61, and no file.
    for (kind, says) in [
        ("gzip-cut", "ends before its gzip stream does"),
        ("gzip-garbage", "cannot decode the response body as gzip"),
        ("zstd", "zstd-encoded, which --compressed does not decode"),
    ] {
        let reply = dir.path().join(format!("{kind}.txt"));
        let route = format!("/encoded/{kind}");
        let out = send(
            &topics,
            &["-e", &route, "--compressed", "-o", reply.to_str().unwrap()],
        )
        .await;
        assert_eq!(out.code, 61, "{kind}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{kind}: {}", out.stderr);
        assert!(!reply.exists(), "{kind}");
    }
    let mut names = entries(dir.path());
    names.retain(|n| n.ends_with(".part"));
    assert!(names.is_empty(), "{names:?}");

    // send --no-wait asks; wait decodes, with the head before the body.
    let out = send(&topics, &["-e", "/encoded/br", "--compressed", "--no-wait"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job = out.stdout_text().trim().to_string();
    let reply = dir.path().join("waited.txt");
    let out = kafkasend_cmd(
        &topics,
        &[
            "wait",
            &job,
            "--compressed",
            "-i",
            "-v",
            "-o",
            reply.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (status, headers, body) = split_head(&std::fs::read(&reply).unwrap());
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(values(&headers, "content-encoding"), ["br"]);
    assert!(body == text, "the body wait decoded differs");
    assert!(
        out.stderr.contains("\n< content-encoding: br\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("* job {job}: reading reply partition")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("* decoding the br body"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_through_a_list_without_accept_encoding_gets_the_plain_body() {
    let api = AnswersApi::start().await;
    let topics = Topics::new("compressed-unlisted");
    let mut env = api.env();
    env.push(("PORTAL_ALLOWED_HEADERS", "Content-Type,Accept".into()));
    let _portal = Portal::start(&topics, &env);
    let out = send(&topics, &["-e", "/negotiated", "--compressed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout == plain_text(), "body differs");
    assert_eq!(*api.state.accept_encoding.lock().unwrap(), [None]);
    // The portal names what it left out.
    assert!(out.stderr.contains("Accept-Encoding"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_body_shows_on_stdout_before_it_ends() {
    let api = AnswersApi::start().await;
    let topics = Topics::new("drip");
    let _portal = Portal::start(&topics, &api.env());
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.args(["send", "-e", "/drip", "-i", "-q"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn kafkasend send");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains(DRIP_FIRST) {
        let n = tokio::time::timeout_at(deadline, stdout.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                let shown = String::from_utf8_lossy(&seen);
                panic!("the first bytes never showed; stdout so far: {shown:?}")
            })
            .unwrap();
        assert!(
            n > 0,
            "stdout closed after {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // The head and the first bytes are out while the API still holds the rest.
    assert!(
        !api.state.drip_last_sent.load(Ordering::SeqCst),
        "the first bytes showed only once the API had sent the last"
    );
    let (status, _, body) = split_head(&seen);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, DRIP_FIRST.as_bytes());

    api.state.release_drip();
    tokio::time::timeout_at(deadline, stdout.read_to_end(&mut seen))
        .await
        .expect("the rest never came")
        .unwrap();
    let status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .expect("send did not exit")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (_, _, body) = split_head(&seen);
    assert_eq!(body, format!("{DRIP_FIRST}{DRIP_LAST}").as_bytes());
}
