//! Requests and files relayed end to end through the real broker.

use std::sync::atomic::Ordering;

use crate::support::api::{bytes_route_body, json, Servers};
use crate::support::broker::Topics;
use crate::support::payload::{pattern, pattern_file, sha256_hex};
use crate::support::run::{kafkasend, send, spawn_send, Portal};
use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mb_file_arrives_byte_identical() {
    let servers = Servers::start().await;
    let topics = Topics::new("big");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "big.bin", 50, 50_000_000);

    let out = send(
        &topics,
        &[file.to_str().unwrap(), "--endpoint", "/api/upload"],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("HTTP 200"), "{}", out.stderr);
    let reply = json(&out.stdout);
    assert_eq!(reply["body_bytes"], 50_000_000);
    assert_eq!(reply["body_sha256"], digest.as_str());

    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/api/upload");
    assert_eq!(reqs[0].body_sha256, digest);
    assert_eq!(reqs[0].headers["content-length"], "50000000");
    assert_eq!(reqs[0].headers["content-type"], "application/octet-stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_with_query_and_headers_forwards_only_allowed_headers() {
    let servers = Servers::start().await;
    let topics = Topics::new("get");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/api/items?limit=5&q=a%20b",
            "-H",
            "X-Request-ID: req-42",
            "-H",
            "Accept: application/json",
            "-H",
            "Authorization: Bearer stolen",
            "-H",
            "X-Not-Allowed: 1",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/api/items");
    assert_eq!(r.query.as_deref(), Some("limit=5&q=a%20b"));
    assert_eq!(r.headers["x-request-id"], "req-42");
    assert_eq!(r.headers["accept"], "application/json");
    assert!(r.headers.get("authorization").is_none(), "{:?}", r.headers);
    assert!(r.headers.get("x-not-allowed").is_none(), "{:?}", r.headers);
    assert_eq!(r.body_len, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_mb_response_streams_to_output_and_verifies() {
    let servers = Servers::start().await;
    let topics = Topics::new("download");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("download.bin");
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/bytes/20000000?seed=9",
            "-o",
            dest.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty());
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(got.len(), 20_000_000);
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&bytes_route_body(20_000_000, 9))
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("download.bin")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_404_exits_22_with_the_body() {
    let servers = Servers::start().await;
    let topics = Topics::new("notfound");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let out = send(&topics, &["--endpoint", "/missing"]).await;
    assert_eq!(out.code, 22, "stderr: {}", out.stderr);
    assert_eq!(out.stdout_text(), "no such thing here");
    assert!(out.stderr.contains("HTTP 404"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_come_back_to_the_sender_and_are_not_followed() {
    let servers = Servers::start().await;
    let topics = Topics::new("redirect");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pattern_file(dir.path(), "body.bin", 31, 100_000);
    let reply = dir.path().join("reply.txt");
    let reply_arg = reply.to_str().unwrap();
    let cases: [(&[&str], u16); 2] = [
        (&["--endpoint", "/redirect"], 302),
        // A client following a 307 would send the body on to the new URL.
        (
            &[file.to_str().unwrap(), "--endpoint", "/redirect-absolute"],
            307,
        ),
    ];
    for (args, status) in cases {
        let args = [args, &["--output", reply_arg, "--json"]].concat();
        let out = send(&topics, &args).await;
        // A status below 400 is a success, as the exit code table says.
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        let summary = json(&out.stdout);
        assert_eq!(summary["status"], status, "{args:?}");
        assert_eq!(summary["exit_code"], 0, "{args:?}");
        assert_eq!(
            std::fs::read_to_string(&reply).unwrap(),
            "moved to /elsewhere"
        );
    }
    let paths: Vec<String> = servers
        .state
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/redirect", "/redirect-absolute"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_down_gives_a_clear_error() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let topics = Topics::new("apidown");
    let _portal = Portal::start(
        &topics,
        &[
            ("PORTAL_TARGET_API_URL", format!("http://{addr}")),
            ("PORTAL_USE_OAUTH", "false".into()),
        ],
    );
    let out = send(&topics, &["--endpoint", "/api/ping"]).await;
    assert_eq!(out.code, 5, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("upstream unreachable"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&addr.to_string()), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_sends_of_mixed_sizes_all_arrive() {
    let servers = Servers::start().await;
    let topics = Topics::new("concurrent");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let chunk = 900 * 1024;
    let sizes = [
        0,
        1,
        17,
        4096,
        chunk - 1,
        chunk,
        chunk + 1,
        2 * chunk,
        1_000_000,
        3_000_000,
        123_457,
        5_000_000,
        65_536,
        2_500_001,
        999,
        chunk * 3 + 5,
        10,
        700_000,
        1_048_576,
        4_200_000,
    ];
    let files: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| pattern_file(dir.path(), &format!("f{i}.bin"), 1000 + i as u64, *n))
        .collect();
    let tasks: Vec<_> = files
        .iter()
        .map(|(path, _)| {
            let topics = topics.clone();
            let path = path.to_str().unwrap().to_string();
            tokio::spawn(async move { send(&topics, &[&path, "--endpoint", "/api/upload"]).await })
        })
        .collect();
    for (task, ((_, digest), size)) in tasks.into_iter().zip(files.iter().zip(sizes)) {
        let out = task.await.unwrap();
        assert_eq!(out.code, 0, "size {size}: {}", out.stderr);
        let reply = json(&out.stdout);
        assert_eq!(reply["body_bytes"], size as u64, "size {size}");
        assert_eq!(reply["body_sha256"], digest.as_str(), "size {size}");
    }
    assert_eq!(servers.state.requests().len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_endpoint_does_not_delay_a_fast_request() {
    let servers = Servers::start().await;
    let topics = Topics::new("slow");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let slow = spawn_send(&topics, &["--endpoint", "/slow"]);
    // Wait until the slow call is being served (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while servers.state.slow_arrived.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow request never reached the API"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let fast = send(&topics, &["--endpoint", "/fast"]).await;
    assert_eq!(fast.code, 0, "{}", fast.stderr);
    assert_eq!(json(&fast.stdout)["path"], "/fast");
    // The slow call is still held by the API while the fast one finished.
    assert!(!slow.is_finished());
    assert!(!servers.state.slow_released.load(Ordering::SeqCst));
    servers.state.release_slow();
    let slow = slow.await.unwrap();
    assert_eq!(slow.code, 0, "{}", slow.stderr);
    assert_eq!(slow.stdout_text(), "slow done");
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_upload_is_a_form_with_field_and_file_name() {
    let servers = Servers::start().await;
    let topics = Topics::new("multipart");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "report.csv", 77, 2_000_000);
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/api/form",
            "--multipart",
            "--field",
            "document",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
    assert_eq!(r.parts.len(), 1, "{:?}", r.parts);
    let (field, file_name, len, part_digest) = &r.parts[0];
    assert_eq!(field, "document");
    assert_eq!(file_name.as_deref(), Some("report.csv"));
    assert_eq!(*len, 2_000_000);
    assert_eq!(part_digest, &digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_body_is_sent_without_a_declared_length() {
    let servers = Servers::start().await;
    let topics = Topics::new("stdin");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let body = pattern(5, 1_500_000);
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.args(["send", "-", "--endpoint", "/api/stream", "-X", "PUT"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let body = body.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(&body).await.unwrap();
        })
    };
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = json(&out.stdout);
    assert_eq!(reply["body_sha256"], sha256_hex(&body).as_str());
    assert_eq!(servers.state.requests()[0].method, "PUT");
}
