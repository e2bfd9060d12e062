//! What must not leak or slip through: paths that normalise into others,
//! the token endpoint's answers, terminal control sequences in forged
//! replies, and callers' credentials written into Kafka.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use kafkasend::kafka;
use kafkasend::protocol::wire::{self, Body, Frame, JobId};
use kafkasend::protocol::{ErrorCategory, Failure};

use crate::support::api::{json, Servers};
use crate::support::broker::{kafka_settings, records_in, Topics};
use crate::support::oauth::ECHO_MARKER;
use crate::support::pki::sender_key_files;
use crate::support::run::{kafkasend, send, send_with_env, spawn_send, Portal};
use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread")]
async fn look_alike_paths_are_refused_and_the_api_sees_nothing() {
    let servers = Servers::start().await;
    let topics = Topics::new("lookalike");
    let mut env = servers.plain_env();
    env.push(("PORTAL_ALLOWED_ENDPOINTS", "GET /api/*".into()));
    let _portal = Portal::start(&topics, &env);
    // Each is one segment under /api/ as sent, and another path to a
    // server that normalises Unicode (NFKC) before routing.
    let cases = [
        (
            "/api/%EF%B8%B0",
            "U+FE30, which Unicode normalisation (NFKC) turns into '..'",
        ),
        (
            "/api/%EF%B8%99",
            "U+FE19, which Unicode normalisation (NFKC) turns into '...'",
        ),
        (
            "/api/x%E2%84%80admin",
            "U+2100, which Unicode normalisation (NFKC) turns into 'a/c'",
        ),
        (
            "/api/..%C2%A0",
            "U+00A0, which Unicode normalisation (NFKC) turns into ' '",
        ),
        (
            "/api/..%EF%B9%94x",
            "U+FE54, which Unicode normalisation (NFKC) turns into ';'",
        ),
        ("/api/x%E2%88%95admin", "U+2215, which looks like '/'"),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|(path, _)| spawn_send(&topics, &["--endpoint", path]))
        .collect();
    for ((path, why), run) in cases.iter().zip(runs) {
        let out = run.await.unwrap();
        assert_eq!(out.code, 3, "{path}: {}", out.stderr);
        assert!(out.stderr.contains("look-alike"), "{path}: {}", out.stderr);
        assert!(out.stderr.contains(why), "{path}: {}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    }
    let out = send(&topics, &["--endpoint", "/api/plain"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let paths: Vec<String> = servers
        .state
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/api/plain"], "only the plain path reached the API");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_echoing_token_endpoint_leaks_nothing_to_senders_or_the_log() {
    let servers = Servers::start().await;
    let topics = Topics::new("token-echo");
    let portal = Portal::start(&topics, &servers.oauth_env());
    let basic = base64::engine::general_purpose::STANDARD.encode("test-client:s3cret%2Fx");
    // What the endpoint's answers hold that must go nowhere.
    let echoed = [
        basic.as_str(),
        "s3cret",
        ECHO_MARKER,
        "grant_type",
        "\u{1b}",
    ];
    let cases = [
        // JSON with the request in error_description.
        (401, "answered HTTP 401 (OAuth error 'invalid_client')"),
        // JSON whose `error` is the Authorization value itself.
        (400, "answered HTTP 400"),
        // Plain text.
        (403, "answered HTTP 403"),
    ];
    for (i, (status, logged)) in cases.into_iter().enumerate() {
        if i > 0 {
            // The portal reports a failed fetch for 2 s (FAILURE_HOLD)
            // without asking again; this case needs a fresh answer.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        servers.state.echo_refusal.store(status, Ordering::SeqCst);
        let out = send(&topics, &["--endpoint", &format!("/api/echo-{status}")]).await;
        assert_eq!(out.code, 5, "{}", out.stderr);
        let expected = format!(
            "the portal could not get an OAuth2 token (the token endpoint answered HTTP {status})"
        );
        assert!(out.stderr.contains(&expected), "{}", out.stderr);
        for part in echoed.iter().chain(&["invalid_client"]) {
            assert!(
                !out.stderr.contains(part),
                "{part:?} reached the sender: {}",
                out.stderr
            );
        }
        assert_eq!(
            servers.state.token_refusals.lock().unwrap().len(),
            i + 1,
            "the endpoint answered this case itself"
        );
        portal.wait_for_log(logged).await;
    }
    let log = portal.log();
    for part in echoed {
        assert!(!log.contains(part), "{part:?} in the portal log:\n{log}");
    }
    assert!(!log.contains("OAuth error 'Basic"), "{log}");
    assert!(servers.state.requests().is_empty(), "the API was called");
}

/// Creates both topics of `topics` with 3 partitions, as a portal would.
async fn create_topics(topics: &Topics) {
    let client = kafka::connect(&kafka_settings(topics, "it-topics"))
        .await
        .unwrap();
    for topic in [&topics.request, &topics.response] {
        client.ensure_topic(topic, 3, 1).await.unwrap();
    }
}

/// Writes an `Error` record for `job` with `message` to its reply partition,
/// as anyone allowed to write the response topic could.
async fn forge_error(topics: &Topics, job: JobId, reply_partition: i32, message: &str) {
    let client = kafka::connect(&kafka_settings(topics, "it-forger"))
        .await
        .unwrap();
    let pc = client
        .partition(&topics.response, reply_partition)
        .await
        .unwrap();
    let frame = Frame {
        job,
        seq: 0,
        body: Body::Error(Failure {
            category: ErrorCategory::UpstreamUnreachable,
            message: message.into(),
        }),
    };
    pc.produce(kafka::record(&frame, &[], &[])).await.unwrap();
}

/// The first request start on the request topic: its job and reply partition.
async fn first_request(topics: &Topics) -> (JobId, i32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for p in 0..3 {
            for r in records_in(topics, &topics.request, p).await {
                let Some(Ok((frame, _))) = r.value.as_deref().map(wire::decode) else {
                    continue;
                };
                if let Body::RequestStart(start) = frame.body {
                    return (frame.job, start.reply_partition);
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "send never wrote its request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message that would retitle the window, clear the screen, fake a line
/// of output and flip the rest right to left, if printed raw.
const FORGED: &str =
    "refused \u{1b}]0;owned\u{7}\u{1b}[2J\r\nkafkasend send: HTTP 200 OK\n\u{202e}exe.txt\u{9b}0m";

/// How [`FORGED`] must look on the terminal.
const FORGED_SHOWN: &str = "refused \\u{1b}]0;owned\\u{7}\\u{1b}[2J\\r\\nkafkasend send: HTTP 200 OK\\n\\u{202e}exe.txt\\u{9b}0m";

/// Stderr holds one line, with no raw control or bidi character.
fn assert_one_clean_line(stderr: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(
        !stderr
            .trim_end()
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}'),
        "{stderr:?}"
    );
    assert!(stderr.contains(FORGED_SHOWN), "{stderr:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_error_reaches_the_terminal_as_one_escaped_line() {
    let topics = Topics::new("forged-error");
    create_topics(&topics).await;

    // send: no portal runs; the forger answers in its place.
    let run = spawn_send(&topics, &["--endpoint", "/api/x", "--timeout", "120"]);
    let (job, reply_partition) = first_request(&topics).await;
    forge_error(&topics, job, reply_partition, FORGED).await;
    let out = run.await.unwrap();
    assert_eq!(out.code, 5, "{:?}", out.stderr);
    assert_one_clean_line(&out.stderr);

    // wait --json: the same on stderr, and the summary stays valid JSON.
    let queued = send(&topics, &["--endpoint", "/api/later", "--no-wait"]).await;
    assert_eq!(queued.code, 0, "{}", queued.stderr);
    let job: JobId = queued.stdout_text().trim().parse().unwrap();
    let reply_partition = kafkasend::kafka::partitioner::partition_for_key(&job.key(), 3);
    forge_error(&topics, job, reply_partition, FORGED).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("reply.bin");
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.args(["wait", &job.to_string(), "--json", "--timeout", "120", "-o"])
        .arg(&output)
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("wait finished in time")
        .expect("run wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr:?}");
    assert_one_clean_line(&stderr);
    let summary = json(&out.stdout);
    let error = summary["error"].as_str().unwrap();
    assert!(error.contains(FORGED_SHOWN), "{error:?}");
    assert!(!error.chars().any(|c| c.is_control()), "{error:?}");
    assert_eq!(summary["exit_code"], 5);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no output left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_no_portal_forwards_never_reach_kafka() {
    let servers = Servers::start().await;
    let topics = Topics::new("no-creds");
    // Signed requests: the signature must cover the headers actually sent.
    let keys = tempfile::tempdir().unwrap();
    let (_, signing_key, public_key) = sender_key_files(keys.path());
    let mut env = servers.plain_env();
    env.push(("PORTAL_ALLOWED_HEADERS", "Authorization,X-Foo".into()));
    env.push(("PORTAL_TRUSTED_KEYS", public_key.to_str().unwrap().into()));
    let portal = Portal::start(&topics, &env);
    let log = portal.log();
    let warning = log
        .lines()
        .find(|l| l.contains("PORTAL_ALLOWED_HEADERS lists"))
        .unwrap_or_else(|| panic!("no warning about the header list:\n{log}"));
    assert!(warning.contains(" WARN "), "{warning}");
    assert!(
        warning.contains("authorization, which will never be forwarded"),
        "{warning}"
    );
    assert!(!warning.contains("x-foo"), "{warning}");

    let signing = [(
        "KAFKASEND_SIGNING_KEY_FILE",
        signing_key.to_str().unwrap().to_string(),
    )];
    let out = send_with_env(
        &topics,
        &signing,
        &[
            "--endpoint",
            "/api/headers",
            "-H",
            "Authorization: Bearer caller-secret-4d1e",
            "-H",
            "Cookie: session=cookie-secret-9b7f",
            "-H",
            "X-Foo: 1",
        ],
    )
    .await;
    assert_eq!(
        out.code, 0,
        "the portal verified the signature: {}",
        out.stderr
    );
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(
        warnings[0].contains("not sending Authorization, Cookie"),
        "{}",
        warnings[0]
    );
    let secrets = [
        "caller-secret-4d1e",
        "cookie-secret-9b7f",
        "Bearer",
        "session=",
    ];
    for s in secrets {
        assert!(!out.stderr.contains(s), "{s} on stderr: {}", out.stderr);
    }

    // The request record, read back raw: value and Kafka headers.
    let mut starts = Vec::new();
    for p in 0..3 {
        for r in records_in(&topics, &topics.request, p).await {
            let mut raw = r.value.clone().unwrap_or_default();
            for (k, v) in &r.headers {
                raw.extend(k.as_bytes());
                raw.extend(v);
            }
            let raw = String::from_utf8_lossy(&raw);
            for s in secrets {
                assert!(!raw.contains(s), "{s} is in a request record");
            }
            if let Some(Ok((frame, _))) = r.value.as_deref().map(wire::decode) {
                if let Body::RequestStart(start) = frame.body {
                    starts.push(start.headers);
                }
            }
        }
    }
    let agent = format!("kafkasend/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        starts,
        [vec![
            ("X-Foo".to_string(), "1".to_string()),
            ("User-Agent".to_string(), agent)
        ]]
    );
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].headers["x-foo"], "1");
    assert!(reqs[0].headers.get("authorization").is_none());
    assert!(reqs[0].headers.get("cookie").is_none());
}
