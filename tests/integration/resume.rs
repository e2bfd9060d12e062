//! Resumable uploads: `send --resume JOB_ID FILE` after a `send` killed
//! mid-upload produces only the chunks missing from the request topic,
//! refuses a body or a request that differs from the job's, tells a job the
//! portal already dropped, and `send` resumes by itself when its broker
//! goes away mid-upload.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafkasend::kafka::partitioner::partition_for_key;
use kafkasend::kafka::{self, Partition};
use kafkasend::protocol::wire::{self, JobId};

use crate::support::api::{json, Servers};
use crate::support::broker::{
    chunk_record, error_replies, kafka_settings, post_start, PrivateBroker, Topics,
};
use crate::support::payload::pattern_file;
use crate::support::pki::sender_key_files;
use crate::support::run::{kafkasend, send, Portal};
use crate::support::{wait_until, WAIT};

/// Partitions of the topics the tests' portals create.
const PARTITIONS: i32 = 3;

/// The request partition of `job`, opened (topics created if needed).
async fn request_partition(topics: &Topics, job: JobId) -> Partition {
    let cluster = kafka::connect(&kafka_settings(topics, "it-resume"))
        .await
        .unwrap();
    cluster
        .ensure_topic(&topics.request, PARTITIONS, 1)
        .await
        .unwrap();
    cluster
        .ensure_topic(&topics.response, PARTITIONS, 1)
        .await
        .unwrap();
    let p = partition_for_key(&job.key(), PARTITIONS);
    cluster.partition(&topics.request, p).await.unwrap()
}

/// Writes the start record and the chunks numbered `seqs` of a POST of
/// `body` to `path` in chunks of `chunk` bytes, as a send killed part-way
/// would have left them; returns the request partition.
async fn partial_job(
    topics: &Topics,
    job: JobId,
    path: &str,
    body: &[u8],
    chunk: usize,
    seqs: &[u32],
) -> Partition {
    let pc = request_partition(topics, job).await;
    let start = post_start(job, path, Some(body.len() as u64), vec![], &topics.response);
    let reply_to = wire::reply_to_header(&topics.response, 0);
    let mut records = vec![kafka::record(
        &start,
        &[],
        &[(wire::REPLY_TO_HEADER, reply_to)],
    )];
    for &seq in seqs {
        let at = (seq as usize - 1) * chunk;
        let data = &body[at..(at + chunk).min(body.len())];
        records.push(chunk_record(
            job,
            seq,
            at as u64,
            data,
            wire::checksum(data),
        ));
    }
    for r in records {
        pc.produce(r).await.unwrap();
    }
    pc
}

/// Starts `send FILE --endpoint /api/upload --chunk-size CHUNK EXTRA`,
/// takes the job id from the line it prints as the upload starts, and kills
/// it (SIGKILL) once the job's request partition holds `records`; checks
/// the upload had not finished. Returns the job.
async fn killed_upload(
    topics: &Topics,
    file: &Path,
    size: u64,
    chunk: usize,
    extra: &[&str],
    records: i64,
) -> JobId {
    let mut child = kafkasend(topics)
        .args(["send", file.to_str().unwrap(), "--endpoint", "/api/upload"])
        .args(["--chunk-size", &chunk.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.lock().unwrap().push(line);
        }
    });
    wait_until("send printed its job id", || {
        !lines.lock().unwrap().is_empty()
    })
    .await;
    let line = lines.lock().unwrap()[0].clone();
    let job: JobId = line
        .strip_prefix("kafkasend: job ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("not a job line: {line:?}"))
        .parse()
        .unwrap();
    assert_eq!(
        line,
        format!("kafkasend: job {job}: uploading {size} bytes (resume with --resume {job})")
    );
    let pc = request_partition(topics, job).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while pc.end_offset().await.unwrap() < records {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload did not go on"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = pc.end_offset().await.unwrap();
    let chunks = size.div_ceil(chunk as u64) as i64;
    assert!(
        left < 1 + chunks,
        "the upload finished before it was killed ({left} records)"
    );
    job
}

/// `out` failed with exit `code` and one line of stderr saying each of `wants`.
fn assert_refused(out: &crate::support::run::SendResult, code: i32, wants: &[&str]) {
    assert_eq!(out.code, code, "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    for want in wants {
        assert!(out.stderr.contains(want), "no {want:?} in {}", out.stderr);
    }
}

/// `send FILE --endpoint ENDPOINT --resume JOB`, then `more` arguments.
async fn resume(
    topics: &Topics,
    file: &str,
    endpoint: &str,
    job: &str,
    more: &[&str],
) -> crate::support::run::SendResult {
    let mut args = vec![file, "--endpoint", endpoint, "--resume", job];
    args.extend_from_slice(more);
    send(topics, &args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_upload_resumes_with_only_the_missing_chunks() {
    let servers = Servers::start().await;
    let topics = Topics::new("resume-kill");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let size = 30_000_000u64;
    let (file, digest) = pattern_file(dir.path(), "big.bin", 41, size as usize);
    let chunk = 16 * 1024;
    // Killed once a few hundred of its 1,832 chunks are in.
    let job = killed_upload(&topics, &file, size, chunk, &[], 300).await;
    assert!(
        servers.state.requests().is_empty(),
        "nothing reached the API"
    );

    // Resumed with the default chunk size: the chunks found decide.
    let reply = dir.path().join("reply.json");
    let out = resume(
        &topics,
        file.to_str().unwrap(),
        "/api/upload",
        &job.to_string(),
        &["-o", reply.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = json(&out.stdout);
    assert_eq!(summary["job"], job.to_string());
    let found = summary["bytes_found"].as_u64().unwrap();
    let sent = summary["bytes_sent"].as_u64().unwrap();
    assert!(found > 0 && sent < size, "{summary}");
    assert!(found + sent >= size, "{summary}");
    assert!(sent <= size - found + 4 * chunk as u64, "{summary}");
    assert_eq!(summary["resumed"], 1);
    assert!(
        out.stderr.contains(&format!(
            "kafkasend: job {job}: {found} of {size} body bytes are in the request topic already"
        )),
        "{}",
        out.stderr
    );
    let answer = json(&std::fs::read(&reply).unwrap());
    assert_eq!(answer["body_sha256"], digest.as_str());
    assert_eq!(servers.state.idempotency_keys(), vec![job.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_upload_resumes_without_signing_its_start_again() {
    let servers = Servers::start().await;
    let topics = Topics::new("resume-signed");
    let dir = tempfile::tempdir().unwrap();
    let (_, key, public) = sender_key_files(dir.path());
    let mut env = servers.plain_env();
    env.push(("PORTAL_TRUSTED_KEYS", public.to_str().unwrap().to_string()));
    let _portal = Portal::start(&topics, &env);
    let size = 10_000_000u64;
    let (file, digest) = pattern_file(dir.path(), "big.bin", 49, size as usize);
    let signing = ["--signing-key", key.to_str().unwrap()];
    let job = killed_upload(&topics, &file, size, 16 * 1024, &signing, 100).await;
    // The portal checks the start record's signature, which covers the
    // body's digest, against the end record the resume computes; no key is
    // needed for that.
    let reply = dir.path().join("reply.json");
    let out = resume(
        &topics,
        file.to_str().unwrap(),
        "/api/upload",
        &job.to_string(),
        &["-o", reply.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answer = json(&std::fs::read(&reply).unwrap());
    assert_eq!(answer["body_sha256"], digest.as_str());
    assert_eq!(servers.state.idempotency_keys(), vec![job.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_differs_from_the_chunks_sent_is_refused_and_nothing_produced() {
    let topics = Topics::new("resume-differs");
    let dir = tempfile::tempdir().unwrap();
    let chunk = 4096;
    let (file, _) = pattern_file(dir.path(), "a.bin", 42, 5 * chunk);
    let mut body = std::fs::read(&file).unwrap();
    let job = JobId::new();
    let pc = partial_job(&topics, job, "/api/upload", &body, chunk, &[1, 2, 3]).await;
    let before = pc.end_offset().await.unwrap();
    // One byte changed inside chunk 2.
    body[chunk + 100] ^= 0x55;
    let changed = dir.path().join("b.bin");
    std::fs::write(&changed, &body).unwrap();
    let out = resume(
        &topics,
        changed.to_str().unwrap(),
        "/api/upload",
        &job.to_string(),
        &[],
    )
    .await;
    assert_refused(
        &out,
        4,
        &[
            "chunk 2 (body bytes 4096..8192)",
            "differs from",
            "b.bin",
            "without --resume",
        ],
    );
    assert_eq!(pc.end_offset().await.unwrap(), before, "nothing produced");

    // Chunks that match the file but sit where no one chunk size puts
    // them were not cut by send: refused, naming the one out of place.
    let job = JobId::new();
    let body = std::fs::read(&file).unwrap();
    let pc = partial_job(&topics, job, "/api/upload", &body, chunk, &[1]).await;
    let at = 2 * chunk + 100;
    let data = &body[at..at + chunk];
    pc.produce(chunk_record(job, 3, at as u64, data, wire::checksum(data)))
        .await
        .unwrap();
    let before = pc.end_offset().await.unwrap();
    let out = resume(
        &topics,
        file.to_str().unwrap(),
        "/api/upload",
        &job.to_string(),
        &[],
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "chunk 3 in the request topic holds bytes 8292..12388, where chunks of 4096 bytes would hold 8192..12288"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(pc.end_offset().await.unwrap(), before, "nothing produced");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_of_another_request_is_refused_naming_what_differs() {
    let topics = Topics::new("resume-other");
    let dir = tempfile::tempdir().unwrap();
    let chunk = 4096;
    let (file, _) = pattern_file(dir.path(), "a.bin", 43, 3 * chunk);
    let body = std::fs::read(&file).unwrap();
    let job = JobId::new();
    let pc = partial_job(&topics, job, "/api/other", &body, chunk, &[1]).await;
    let before = pc.end_offset().await.unwrap();
    let out = resume(
        &topics,
        file.to_str().unwrap(),
        "/api/upload",
        &job.to_string(),
        &["-X", "PUT"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    for want in [
        "is a different request",
        "method POST (here PUT)",
        "endpoint /api/other (here /api/upload)",
    ] {
        assert!(out.stderr.contains(want), "no {want:?} in {}", out.stderr);
    }
    // A body of another length is named too, before its bytes differ.
    let shorter = dir.path().join("short.bin");
    std::fs::write(&shorter, vec![7u8; chunk]).unwrap();
    let out = resume(
        &topics,
        shorter.to_str().unwrap(),
        "/api/other",
        &job.to_string(),
        &[],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("body {} bytes (here {chunk} bytes)", 3 * chunk)),
        "{}",
        out.stderr
    );
    assert_eq!(pc.end_offset().await.unwrap(), before, "nothing produced");
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_refuses_bad_job_ids_and_bodies_it_cannot_read_again() {
    let topics = Topics::new("resume-usage");
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pattern_file(dir.path(), "a.bin", 44, 10_000);
    let file = file.to_str().unwrap();
    let job = JobId::new().to_string();
    let form = format!("f=@{file}");
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &[file, "--resume", "not-a-job\u{1b}[2J"],
            &["--resume 'not-a-job\\u{1b}[2J' is not a job id"],
        ),
        (
            &[file, "--resume", "01ARZ3NDEKTSV4RRFFQ69G5FAVX"],
            &["is not a job id"],
        ),
        (&["-F", &form, "--resume", &job], &["multipart form"]),
        (&["-", "--resume", &job], &["standard input"]),
    ];
    for (args, want) in cases {
        let mut all = vec!["--endpoint", "/api/upload"];
        all.extend_from_slice(args);
        let out = send(&topics, &all).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(!out.stderr.contains('\u{1b}'), "{}", out.stderr);
        for w in want {
            assert!(
                out.stderr.contains(w),
                "{args:?}: no {w:?} in {}",
                out.stderr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_job_is_uploaded_from_the_start_under_its_id() {
    let servers = Servers::start().await;
    let topics = Topics::new("resume-unknown");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "a.bin", 45, 2_000_000);
    let reply = dir.path().join("reply.json");
    let job = JobId::new().to_string();
    let out = resume(
        &topics,
        file.to_str().unwrap(),
        "/api/upload",
        &job,
        &["-o", reply.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "kafkasend: job {job}: nothing of this job is in the request topic; uploading it from the start"
        )),
        "{}",
        out.stderr
    );
    let summary = json(&out.stdout);
    assert_eq!(summary["job"], job.as_str());
    assert_eq!(summary["bytes_found"], 0);
    assert_eq!(summary["bytes_sent"], 2_000_000);
    assert_eq!(
        json(&std::fs::read(&reply).unwrap())["body_sha256"],
        digest.as_str()
    );
    assert_eq!(servers.state.idempotency_keys(), vec![job]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_complete_job_is_not_sent_again_and_its_answer_is_shown() {
    let servers = Servers::start().await;
    let topics = Topics::new("resume-done");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "a.bin", 46, 1_000_000);
    let file = file.to_str().unwrap();
    let first = send(&topics, &[file, "--endpoint", "/api/upload", "--no-wait"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let job: JobId = first.stdout_text().trim().parse().unwrap();
    let pc = request_partition(&topics, job).await;
    let before = pc.end_offset().await.unwrap();
    let reply = dir.path().join("reply.json");
    let out = resume(
        &topics,
        file,
        "/api/upload",
        &job.to_string(),
        &["-o", reply.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("its request is wholly in the request topic already"),
        "{}",
        out.stderr
    );
    let summary = json(&out.stdout);
    assert_eq!(summary["bytes_sent"], 0);
    assert_eq!(summary["bytes_found"], 1_000_000);
    assert_eq!(summary["status"], 200);
    assert_eq!(
        json(&std::fs::read(&reply).unwrap())["body_sha256"],
        digest.as_str()
    );
    assert_eq!(pc.end_offset().await.unwrap(), before, "nothing produced");
    assert_eq!(servers.state.requests().len(), 1, "the API was called once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_the_portal_dropped_as_idle_cannot_be_resumed() {
    let servers = Servers::start().await;
    let topics = Topics::new("resume-idle");
    let mut env = servers.plain_env();
    env.push(("PORTAL_JOB_IDLE_TIMEOUT_SECS", "2".into()));
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let chunk = 4096;
    let (file, _) = pattern_file(dir.path(), "a.bin", 47, 3 * chunk);
    let body = std::fs::read(&file).unwrap();
    let job = JobId::new();
    let pc = partial_job(&topics, job, "/api/upload", &body, chunk, &[1]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !error_replies(&topics).await.contains_key(&job) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the portal never dropped the job"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = pc.end_offset().await.unwrap();
    let out = resume(
        &topics,
        file.to_str().unwrap(),
        "/api/upload",
        &job.to_string(),
        &[],
    )
    .await;
    assert_refused(
        &out,
        3,
        &[
            "cannot be resumed, the portal answered it already",
            "PORTAL_JOB_IDLE_TIMEOUT_SECS",
            "without --resume",
        ],
    );
    assert_eq!(pc.end_offset().await.unwrap(), before, "nothing produced");
    assert!(servers.state.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_resumes_by_itself_when_its_broker_comes_back() {
    let broker = PrivateBroker::start();
    let servers = Servers::start().await;
    let mut topics = Topics::new("resume-auto");
    topics.bootstrap = Some(broker.addr.clone());
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let size = 20_000_000u64;
    let (file, digest) = pattern_file(dir.path(), "big.bin", 48, size as usize);
    let reply = dir.path().join("reply.json");
    let env = [("KAFKA_TIMEOUT_SECS", "1".to_string())];
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.args(["send", file.to_str().unwrap(), "--endpoint", "/api/upload"])
        .args([
            "--chunk-size",
            "16384",
            "-o",
            reply.to_str().unwrap(),
            "--json",
        ])
        .args(["--timeout", "120"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap().to_string();

    // Stopped while a part of the body is in, so it cannot finish before
    // the broker goes; let go once the broker is down.
    let cluster = kafka::connect(&kafka_settings(&topics, "it-resume"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut total = 0;
        for p in 0..PARTITIONS {
            let pc = cluster.partition(&topics.request, p).await.unwrap();
            total += pc.end_offset().await.unwrap();
        }
        if total >= 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload did not go on"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    drop(cluster);
    // Stopped until the broker refuses connections, so the upload cannot
    // finish first; let go then, while the broker starts again (longer
    // than KAFKA_TIMEOUT_SECS: the produce calls under way give up).
    signal("-STOP");
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            s.spawn(|| broker.restart_blocking());
            let deadline = std::time::Instant::now() + WAIT;
            while std::net::TcpStream::connect(&broker.addr).is_ok() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the broker never stopped"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            signal("-CONT");
        })
    });

    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("send did not finish")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary = json(&out.stdout);
    let job = summary["job"].as_str().unwrap().to_string();
    assert!(summary["resumed"].as_u64().unwrap() >= 1, "{summary}");
    // Only what had not landed was produced again.
    assert!(summary["bytes_sent"].as_u64().unwrap() <= size, "{summary}");
    assert!(
        stderr.contains(&format!("kafkasend: job {job}: the upload broke (")),
        "{stderr}"
    );
    assert!(stderr.contains("resumed (1 of at most 3)"), "{stderr}");
    assert_eq!(
        json(&std::fs::read(&reply).unwrap())["body_sha256"],
        digest.as_str()
    );
    assert_eq!(servers.state.idempotency_keys(), vec![job]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_job_continues_the_trace_its_start_record_carries() {
    let servers = Servers::start().await;
    let topics = Topics::new("resume-trace");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let chunk = 4096;
    let (file, _) = pattern_file(dir.path(), "a.bin", 44, 3 * chunk);
    let body = std::fs::read(&file).unwrap();
    let job = JobId::new();
    // As a first send killed after its first chunk left them, with the
    // trace it started on the start record.
    let first = "00-5555555555555555555555555555bbbb-6666666666666666-01";
    let pc = request_partition(&topics, job).await;
    let start = post_start(
        job,
        "/api/upload",
        Some(body.len() as u64),
        vec![],
        &topics.response,
    );
    let headers = [
        (
            wire::REPLY_TO_HEADER,
            wire::reply_to_header(&topics.response, 0),
        ),
        ("traceparent", first.as_bytes().to_vec()),
        ("tracestate", b"first=1".to_vec()),
    ];
    pc.produce(kafka::record(&start, &[], &headers))
        .await
        .unwrap();
    let data = &body[..chunk];
    pc.produce(chunk_record(job, 1, 0, data, wire::checksum(data)))
        .await
        .unwrap();

    let reply = dir.path().join("reply.json");
    let out = resume(
        &topics,
        file.to_str().unwrap(),
        "/api/upload",
        &job.to_string(),
        &[
            "--chunk-size",
            &chunk.to_string(),
            "-o",
            reply.to_str().unwrap(),
            "--json",
            "-v",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = json(&out.stdout);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    let api = reqs[0].headers["traceparent"].to_str().unwrap().to_string();
    assert!(
        api.starts_with("00-5555555555555555555555555555bbbb-"),
        "{api}"
    );
    assert_eq!(reqs[0].headers["tracestate"], "first=1");
    assert_eq!(summary["trace_id"], "5555555555555555555555555555bbbb");
    // send's own trace was that one from the start, not one the portal's
    // answer had to correct.
    assert!(
        out.stderr.contains(&format!(
            "job {job}: trace_id=5555555555555555555555555555bbbb"
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("(the portal's)"), "{}", out.stderr);
}
