//! Errors a person can cause get one clear line and a distinct exit code.

use std::sync::atomic::Ordering;

use crate::support::api::Servers;
use crate::support::broker::Topics;
use crate::support::payload::pattern_file;
use crate::support::run::{kafkasend, send, Portal};
use crate::support::{wait_until, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_broker_is_named_with_exit_7() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let topics = Topics::new("nobroker");
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", &addr)
        .env("KAFKA_TIMEOUT_SECS", "2")
        .args(["send", "--endpoint", "/x"]);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("cannot reach the Kafka broker"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_portal_means_a_timeout_with_exit_28() {
    let servers = Servers::start().await;
    let topics = Topics::new("noportal");
    // A portal creates the topics, then goes away.
    drop(Portal::start(&topics, &servers.plain_env()));
    let out = send(&topics, &["--endpoint", "/x", "--timeout", "2"]).await;
    assert_eq!(out.code, 28, "{}", out.stderr);
    assert!(out.stderr.contains("no response for job"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_topics_are_explained() {
    let topics = Topics::new("notopic");
    let out = send(&topics, &["--endpoint", "/x"]).await;
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains(&topics.request), "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_one_line_and_a_usage_code() {
    let topics = Topics::new("usage");
    let cases: &[(&[&str], &str)] = &[
        (&["--endpoint", "api/x"], "must be a path starting with '/'"),
        (
            &["/definitely/not/here.bin", "--endpoint", "/x"],
            "cannot read /definitely/not/here.bin",
        ),
        (
            &["--endpoint", "/x", "-H", "NoColon"],
            "must look like 'Name: value'",
        ),
        (
            &["--endpoint", "/x", "--multipart"],
            "--multipart needs a FILE",
        ),
        (&["--endpoint", "/x", "--timeout", "0"], "--timeout"),
        (
            &["--endpoint", "/x", "--no-wait", "-o", "out.bin"],
            "has no effect with --no-wait",
        ),
    ];
    for (args, expected) in cases {
        let out = send(&topics, args).await;
        assert_ne!(out.code, 0, "{args:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn portal_refuses_to_start_without_oauth_settings() {
    let topics = Topics::new("nooauth");
    let out = kafkasend(&topics)
        .arg("portal")
        .env("PORTAL_TARGET_API_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for var in [
        "OAUTH2_TOKEN_URL",
        "OAUTH2_CLIENT_ID",
        "OAUTH2_CLIENT_SECRET",
        "PORTAL_USE_OAUTH=false",
    ] {
        assert!(stderr.contains(var), "{var} not named: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_the_broker_refuses_names_the_setting() {
    let servers = Servers::start().await;
    let topics = Topics::new("toolarge");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pattern_file(dir.path(), "f.bin", 1, 3_000_000);
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/x",
            "--chunk-size",
            "2000000",
        ],
    )
    .await;
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains("message.max.bytes"), "{}", out.stderr);
    assert!(out.stderr.contains("--chunk-size"), "{}", out.stderr);
    assert!(servers.state.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_while_waiting_leaves_no_partial_output() {
    let servers = Servers::start().await;
    let topics = Topics::new("ctrlc");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.bin");
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.args([
        "send",
        "--endpoint",
        "/trickle",
        "-o",
        dest.to_str().unwrap(),
    ])
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    // The API is answering, slowly: the request was wholly sent and its
    // .part file (made before the request was sent) is there.
    wait_until("the API did not get the request", || {
        servers.state.slow_arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".part")));
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    servers.state.release_slow();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // The request was wholly sent: the portal may still answer it.
    assert!(
        stderr.contains("interrupted by SIGINT during job"),
        "{stderr}"
    );
    assert!(stderr.contains("kafkasend wait"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_bad_command_line_is_one_line_naming_the_help() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["send", "--frob"],
            "unexpected argument '--frob'",
            "kafkasend send --help",
        ),
        (&["send"], "--endpoint", "kafkasend send --help"),
        (&["wait"], "<JOB_ID>", "kafkasend wait --help"),
        (
            &["frob"],
            "unrecognized subcommand 'frob'",
            "kafkasend --help",
        ),
    ];
    for (args, what, help) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kafkasend"))
            .env_clear()
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(what), "{args:?}: {stderr}");
        assert!(stderr.contains(help), "{args:?}: {stderr}");
    }
}
