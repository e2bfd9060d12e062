//! The `send` experience for scripts: `--json`, `-q`, `--no-wait` and `wait`.

use kafkasend::kafka;
use kafkasend::protocol::digest::DigestKind;
use kafkasend::protocol::wire::{self, Body, EndInfo, Frame, JobId, ResponseStart};
use sha2::{Digest, Sha256};

use crate::support::api::{json, Servers};
use crate::support::broker::{chunk_record, kafka_settings, Topics};
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
    let text = out.stdout_text();
    assert_eq!(text.lines().count(), 1, "{text}");
    let summary = json(&out.stdout);
    let job: JobId = summary["job"].as_str().unwrap().parse().unwrap();
    // Only the job id line, as the upload of more than a chunk starts.
    assert_eq!(
        out.stderr,
        format!("kafkasend: job {job}: uploading 1500000 bytes (resume with --resume {job})\n"),
        "--json keeps stderr quiet on success"
    );
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

/// How a forged answer of `abcdefgh` in two chunks differs from an intact one.
#[derive(Default)]
struct Damage {
    /// Bytes of the second chunk, in place of `efgh` (its CRC is of `efgh`).
    second_bytes: Option<&'static [u8]>,
    /// Where the second chunk says it starts, in place of 4.
    second_offset: Option<u64>,
    /// The length the end record claims, in place of 8.
    total_len: Option<u64>,
    /// The digest the end record claims.
    sha256: Option<[u8; 32]>,
}

/// Writes an answer of `abcdefgh` for `job` to partition 0 of the response
/// topic, as anyone allowed to write it could, damaged as `damage` says.
async fn forge_answer(reply: &kafka::Partition, job: JobId, damage: &Damage) {
    let start = Frame {
        job,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status: 200,
            headers: vec![],
            body_len: Some(8),
            digest: DigestKind::Sha256,
        }),
    };
    let end = Frame {
        job,
        seq: 3,
        body: Body::End(EndInfo {
            total_len: damage.total_len.unwrap_or(8),
            chunks: 2,
            digest: kafkasend::protocol::digest::Digest {
                kind: DigestKind::Sha256,
                bytes: damage
                    .sha256
                    .unwrap_or_else(|| Sha256::digest(b"abcdefgh").into()),
            },
        }),
    };
    let records = vec![
        kafka::record(&start, &[], &[]),
        chunk_record(job, 1, 0, b"abcd", wire::checksum(b"abcd")),
        chunk_record(
            job,
            2,
            damage.second_offset.unwrap_or(4),
            damage.second_bytes.unwrap_or(b"efgh"),
            wire::checksum(b"efgh"),
        ),
        kafka::record(&end, &[], &[]),
    ];
    reply.produce_all(records).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_answer_is_refused_with_what_is_wrong_and_leaves_no_output() {
    let topics = Topics::new("damaged-answer");
    let client = kafka::connect(&kafka_settings(&topics, "it-forger"))
        .await
        .unwrap();
    client.ensure_topic(&topics.response, 1, 1).await.unwrap();
    let reply = client.partition(&topics.response, 0).await.unwrap();
    let cases = [
        (
            Damage {
                second_bytes: Some(b"efgH"),
                ..Damage::default()
            },
            "response chunk at byte 4 failed its CRC32C check".to_string(),
        ),
        (
            Damage {
                second_offset: Some(5),
                ..Damage::default()
            },
            "response chunk at byte 5 arrived when 4 bytes were expected".to_string(),
        ),
        (
            Damage {
                total_len: Some(9),
                ..Damage::default()
            },
            "response is 8 bytes in 2 chunks, the portal sent 9 bytes in 2".to_string(),
        ),
        (
            Damage {
                sha256: Some([0xab; 32]),
                ..Damage::default()
            },
            format!(
                "response SHA-256 {} does not match the portal's SHA-256 {}",
                crate::support::payload::hex(&Sha256::digest(b"abcdefgh")),
                "ab".repeat(32)
            ),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("answer.bin");
    let wait = async |job: JobId| {
        let job = job.to_string();
        let args = [
            "wait",
            &job,
            "--timeout",
            "60",
            "-o",
            output.to_str().unwrap(),
        ];
        kafkasend_cmd(&topics, &args).await
    };
    for (damage, why) in &cases {
        let job = JobId::new();
        forge_answer(&reply, job, damage).await;
        let out = wait(job).await;
        assert_eq!(out.code, 4, "{why}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("integrity check failed: {why}")),
            "{}",
            out.stderr
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{why}: no output, not even a part file"
        );
    }

    // The same answer undamaged is taken whole.
    let job = JobId::new();
    forge_answer(&reply, job, &Damage::default()).await;
    let out = wait(job).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&output).unwrap(), b"abcdefgh");
}
