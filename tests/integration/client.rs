//! The `send` experience for scripts: `--json`, `-q`, `--no-wait` and `wait`.

use kafkasend::protocol::wire::JobId;

use crate::support::api::{json, Servers};
use crate::support::broker::Topics;
use crate::support::payload::pattern_file;
use crate::support::run::{kafkasend_cmd, send, Portal};

#[tokio::test(flavor = "multi_thread")]
async fn json_prints_one_summary_line_and_nothing_else() {
    let servers = Servers::start().await;
    let topics = Topics::new("json");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "in.bin", 21, 1_500_000);
    let reply = dir.path().join("reply.json");
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/api/upload",
            "-o",
            reply.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "", "--json keeps stderr quiet on success");
    let text = out.stdout_text();
    assert_eq!(text.lines().count(), 1, "{text}");
    let summary = json(&out.stdout);
    let job: JobId = summary["job"].as_str().unwrap().parse().unwrap();
    assert_eq!(servers.state.idempotency_keys(), vec![job.to_string()]);
    assert_eq!(summary["status"], 200);
    assert_eq!(summary["bytes_sent"], 1_500_000);
    let body = std::fs::read(&reply).unwrap();
    assert_eq!(summary["bytes_received"], body.len() as u64);
    assert_eq!(json(&body)["body_sha256"], digest.as_str());
    assert_eq!(summary["digest_verified"], true);
    assert_eq!(summary["exit_code"], 0);
    assert!(summary["error"].is_null());
    assert!(summary["duration_secs"].as_f64().unwrap() > 0.0);

    // An HTTP error is still a summary, with the status and curl's exit code.
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/missing",
            "-o",
            reply.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 22, "{}", out.stderr);
    let summary = json(&out.stdout);
    assert_eq!(summary["status"], 404);
    assert_eq!(summary["exit_code"], 22);

    // Without --output the body would mix with the summary: refused.
    let out = send(&topics, &["--endpoint", "/api/items", "--json"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--json needs --output"),
        "{}",
        out.stderr
    );
    assert_eq!(json(&out.stdout)["exit_code"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_leaves_stderr_empty_and_the_body_on_stdout() {
    let servers = Servers::start().await;
    let topics = Topics::new("quiet");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let loud = send(&topics, &["--endpoint", "/api/items"]).await;
    assert_eq!(loud.code, 0, "{}", loud.stderr);
    assert!(loud.stderr.contains("HTTP 200 OK"), "{}", loud.stderr);
    let quiet = send(&topics, &["--endpoint", "/api/items", "-q"]).await;
    assert_eq!(quiet.code, 0, "{}", quiet.stderr);
    assert_eq!(quiet.stderr, "");
    assert_eq!(json(&quiet.stdout)["path"], "/api/items");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_wait_then_wait_picks_up_the_answer() {
    let servers = Servers::start().await;
    let topics = Topics::new("nowait");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "in.bin", 22, 2_500_000);
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/api/upload",
            "--no-wait",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job = out.stdout_text().trim().to_string();
    let _: JobId = job.parse().expect("send --no-wait prints the job id");

    // Twice: the answer stays in Kafka, so picking it up is repeatable.
    for round in 0..2 {
        let reply = dir.path().join(format!("reply{round}.json"));
        let out = kafkasend_cmd(
            &topics,
            &["wait", &job, "-o", reply.to_str().unwrap(), "--json"],
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let summary = json(&out.stdout);
        assert_eq!(summary["job"], job.as_str());
        assert_eq!(summary["status"], 200);
        assert_eq!(summary["digest_verified"], true);
        let body = json(&std::fs::read(&reply).unwrap());
        assert_eq!(body["body_sha256"], digest.as_str());
    }
    assert_eq!(servers.state.requests().len(), 1, "waiting calls nothing");

    let out = kafkasend_cmd(&topics, &["wait", "not-a-job"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("is not a job id"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    let unknown = JobId::new().to_string();
    let out = kafkasend_cmd(&topics, &["wait", &unknown, "--timeout", "2"]).await;
    assert_eq!(out.code, 28, "{}", out.stderr);
    assert!(out.stderr.contains(&unknown), "{}", out.stderr);
}
