//! The body digest: `send --digest blake3` (the default, frame version 2)
//! and `--digest sha256` (version 1) both carry bodies intact each way and
//! verify them; the portal answers each job in its request's version; a
//! BLAKE3 job whose end record names another body, or names it by its
//! SHA-256, fails with Integrity before the API gets it; and a BLAKE3 job
//! resumes with its own digest whatever `--digest` says then.

use std::path::Path;
use std::time::Duration;

use kafkasend::kafka::partitioner::partition_for_key;
use kafkasend::kafka::{self, Partition, Record};
use kafkasend::protocol::digest::{Digest, DigestKind};
use kafkasend::protocol::wire::{self, Body, EndInfo, Frame, JobId};
use kafkasend::protocol::ErrorCategory;

use crate::support::api::{bytes_route_body, json, Servers};
use crate::support::broker::{kafka_settings, post_start, records_in, wait_error, Topics};
use crate::support::payload::{pattern, pattern_file, sha256_hex};
use crate::support::run::{kafkasend_cmd, send, send_with_env, Portal, SendResult};
use crate::support::WAIT;

/// Partitions of the topics the tests' portals create.
const PARTITIONS: i32 = 3;

/// Every record of `job` in `topic`, in partition order.
async fn job_records(topics: &Topics, topic: &str, job: JobId) -> Vec<Record> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        for r in records_in(topics, topic, p).await {
            if r.key.as_deref() == Some(job.key().as_slice()) {
                out.push(r);
            }
        }
    }
    out
}

/// The end record among `records`, which must all be in frame `version`.
fn end_of(records: &[Record], version: u8, what: &str) -> EndInfo {
    assert!(!records.is_empty(), "{what}: no records");
    let mut end = None;
    for r in records {
        let value = r.value.as_deref().unwrap();
        assert_eq!(
            value[4], version,
            "{what}: a record in version {}",
            value[4]
        );
        if let (
            Frame {
                body: Body::End(e), ..
            },
            _,
        ) = wire::decode(value).unwrap()
        {
            end = Some(e);
        }
    }
    end.unwrap_or_else(|| panic!("{what}: no end record"))
}

/// The job a `--json` summary names.
fn job_of(out: &SendResult) -> JobId {
    json(&out.stdout)["job"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_digests_carry_bodies_each_way_and_each_job_is_in_its_version() {
    let servers = Servers::start().await;
    let topics = Topics::new("digest-both");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let size = 2_500_000;
    let (file, sha) = pattern_file(dir.path(), "up.bin", 61, size);
    let body = std::fs::read(&file).unwrap();
    let reply = dir.path().join("reply.json");
    let down = dir.path().join("down.bin");
    let download = bytes_route_body(2_000_000, 7);
    // The default, the variable, and the flag over the variable.
    let cases: [(&[&str], Option<&str>, DigestKind); 3] = [
        (&[], None, DigestKind::Blake3),
        (&[], Some("sha256"), DigestKind::Sha256),
        (&["--digest", "blake3"], Some("sha256"), DigestKind::Blake3),
    ];
    for (flags, env, kind) in cases {
        let case = format!("{flags:?} KAFKASEND_DIGEST={env:?}");
        let version = if kind == DigestKind::Blake3 { 2 } else { 1 };
        let env: Vec<(&str, String)> = env
            .map(|v| ("KAFKASEND_DIGEST", v.to_string()))
            .into_iter()
            .collect();

        let mut args = vec![file.to_str().unwrap(), "--endpoint", "/api/upload"];
        args.extend(["-o", reply.to_str().unwrap(), "--json"]);
        args.extend(flags);
        let up = send_with_env(&topics, &env, &args).await;
        assert_eq!(up.code, 0, "{case}: {}", up.stderr);
        let summary = json(&up.stdout);
        assert_eq!(summary["digest"], kind.name(), "{case}: {summary}");
        assert_eq!(summary["digest_verified"], true, "{case}");
        let answer = json(&std::fs::read(&reply).unwrap());
        assert_eq!(
            answer["body_sha256"],
            sha.as_str(),
            "{case}: the API got other bytes"
        );
        let job = job_of(&up);
        let sent = end_of(
            &job_records(&topics, &topics.request, job).await,
            version,
            &case,
        );
        assert_eq!(
            sent.digest,
            kind.of(&body),
            "{case}: the request's end record"
        );
        let answered = job_records(&topics, &topics.response, job).await;
        let back = end_of(&answered, version, &case);
        assert_eq!(
            back.digest,
            kind.of(&std::fs::read(&reply).unwrap()),
            "{case}"
        );

        let mut args = vec!["--endpoint", "/bytes/2000000", "-o", down.to_str().unwrap()];
        args.push("--json");
        args.extend(flags);
        let got = send_with_env(&topics, &env, &args).await;
        assert_eq!(got.code, 0, "{case}: {}", got.stderr);
        assert_eq!(json(&got.stdout)["digest"], kind.name(), "{case}");
        assert!(
            std::fs::read(&down).unwrap() == download,
            "{case}: other bytes came back"
        );
        let job = job_of(&got);
        let answered = job_records(&topics, &topics.response, job).await;
        assert_eq!(end_of(&answered, version, &case).digest, kind.of(&download));
        // A request without a body is in its version too.
        let asked = job_records(&topics, &topics.request, job).await;
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].value.as_deref().unwrap()[4], version, "{case}");
    }

    // `wait` knows nothing of the request: it checks the answer with the
    // digest the answer's version names.
    for (flag, kind) in [
        ("blake3", DigestKind::Blake3),
        ("sha256", DigestKind::Sha256),
    ] {
        let args = [
            "--endpoint",
            "/bytes/2000000",
            "--no-wait",
            "--digest",
            flag,
        ];
        let sent = send(&topics, &args).await;
        assert_eq!(sent.code, 0, "{flag}: {}", sent.stderr);
        let job = sent.stdout_text().trim().to_string();
        let args = ["wait", &job, "-o", down.to_str().unwrap(), "--json"];
        let waited = kafkasend_cmd(&topics, &args).await;
        assert_eq!(waited.code, 0, "{flag}: {}", waited.stderr);
        assert_eq!(json(&waited.stdout)["digest"], kind.name(), "{flag}");
        assert!(std::fs::read(&down).unwrap() == download, "{flag}");
    }

    for bad in ["md5", "", "SHA-512"] {
        let out = send(&topics, &["--endpoint", "/api/upload", "--digest", bad]).await;
        assert_eq!(out.code, 2, "--digest {bad:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("--digest") && out.stderr.contains("blake3 or sha256"),
            "{}",
            out.stderr
        );
    }
}

/// The request partition of `job`, opened, with both topics created.
async fn request_partition(topics: &Topics, job: JobId) -> Partition {
    let cluster = kafka::connect(&kafka_settings(topics, "it-digest"))
        .await
        .unwrap();
    for topic in [&topics.request, &topics.response] {
        cluster.ensure_topic(topic, PARTITIONS, 1).await.unwrap();
    }
    let p = partition_for_key(&job.key(), PARTITIONS);
    cluster.partition(&topics.request, p).await.unwrap()
}

/// Produces a BLAKE3 (version 2) POST of `body` to /api/upload, as `send`
/// would, in chunks of `chunk` bytes, up to chunk number `upto` (all when
/// `None`), closed by an end record carrying `end` if given.
async fn hand_job(
    topics: &Topics,
    job: JobId,
    body: &[u8],
    chunk: usize,
    upto: Option<usize>,
    end: Option<Digest>,
) {
    hand_job_in(DigestKind::Blake3, topics, job, body, chunk, upto, end).await;
}

/// [`hand_job`] for a job digested with `kind` (SHA-256: written in version 1).
async fn hand_job_in(
    kind: DigestKind,
    topics: &Topics,
    job: JobId,
    body: &[u8],
    chunk: usize,
    upto: Option<usize>,
    end: Option<Digest>,
) {
    let pc = request_partition(topics, job).await;
    let mut start = post_start(
        job,
        "/api/upload",
        Some(body.len() as u64),
        vec![],
        &topics.response,
    );
    if let Body::RequestStart(s) = &mut start.body {
        s.digest = kind;
    }
    let reply_to = wire::reply_to_header(&topics.response, 0);
    let mut records = vec![kafka::record_in(
        kind,
        &start,
        &[],
        &[(wire::REPLY_TO_HEADER, reply_to)],
    )];
    let pieces: Vec<&[u8]> = body.chunks(chunk).collect();
    for (i, data) in pieces.iter().enumerate().take(upto.unwrap_or(pieces.len())) {
        let frame = Frame {
            job,
            seq: i as u32 + 1,
            body: Body::Chunk(wire::ChunkInfo {
                offset: (i * chunk) as u64,
                crc32c: wire::checksum(data),
            }),
        };
        records.push(kafka::record_in(kind, &frame, data, &[]));
    }
    if let Some(digest) = end {
        let frame = Frame {
            job,
            seq: pieces.len() as u32 + 1,
            body: Body::End(EndInfo {
                chunks: pieces.len() as u32,
                total_len: body.len() as u64,
                digest,
            }),
        };
        records.push(kafka::record_in(kind, &frame, &[], &[]));
    }
    for r in records {
        pc.produce(r).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blake3_job_whose_end_names_another_body_fails_before_the_api_gets_it() {
    let servers = Servers::start().await;
    let topics = Topics::new("digest-forged");
    let portal = Portal::start(&topics, &servers.plain_env());
    // One in memory, one spooled to disk and pipelined (over 1 MiB).
    for size in [300_000, 3_000_000] {
        let body = pattern(size as u64, size);
        let blake3 = DigestKind::Blake3;
        let wrong = JobId::new();
        hand_job(
            &topics,
            wrong,
            &body,
            256 * 1024,
            None,
            Some(blake3.of(b"other")),
        )
        .await;
        // The right body, named by its SHA-256: a job has its version's digest.
        let confused = JobId::new();
        let sha = DigestKind::Sha256.of(&body);
        hand_job(&topics, confused, &body, 256 * 1024, None, Some(sha)).await;
        for (job, named) in [(wrong, "BLAKE3"), (confused, "SHA-256")] {
            let (category, message) = wait_error(&topics, job, &portal).await;
            assert_eq!(category, ErrorCategory::Integrity, "{size}: {message}");
            assert!(
                message.starts_with("request body BLAKE3 ")
                    && message.contains(&format!("does not match the sender's {named} ")),
                "{size}: {message}"
            );
        }
        // The API got no complete request: none at all, or one broken off.
        let whole: Vec<_> = servers
            .state
            .requests()
            .into_iter()
            .filter(|r| r.status < 400 && r.body_len == size as u64)
            .collect();
        assert!(whole.is_empty(), "{size}: the API got {whole:?}");

        // The same records with the right digest go through, answered in version 2.
        let good = JobId::new();
        hand_job(
            &topics,
            good,
            &body,
            256 * 1024,
            None,
            Some(blake3.of(&body)),
        )
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let answered = loop {
            let answered = job_records(&topics, &topics.response, good).await;
            if answered.len() >= 3 {
                break answered;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}", portal.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let end = end_of(&answered, 2, "the answer");
        let reply: Vec<u8> = answered
            .iter()
            .filter_map(|r| match wire::decode(r.value.as_deref()?) {
                Ok((
                    Frame {
                        body: Body::Chunk(_),
                        ..
                    },
                    p,
                )) => Some(p.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(end.digest, blake3.of(&reply));
        assert_eq!(json(&reply)["body_sha256"], sha256_hex(&body));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blake3_job_resumes_with_its_own_digest() {
    let servers = Servers::start().await;
    let topics = Topics::new("digest-resume");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let chunk = 64 * 1024;
    let (file, sha) = pattern_file(dir.path(), "big.bin", 62, 40 * chunk + 123);
    let body = std::fs::read(&file).unwrap();
    // Started with BLAKE3, resumed once with the default and once asking
    // for SHA-256; started with SHA-256 (an older build), resumed with the
    // default: the job's start record decides.
    let cases = [
        (DigestKind::Blake3, &[][..], "blake3"),
        (DigestKind::Blake3, &["--digest", "sha256"][..], "blake3"),
        (DigestKind::Sha256, &[][..], "sha256"),
    ];
    for (kind, more, name) in cases {
        let job = JobId::new();
        hand_job_in(kind, &topics, job, &body, chunk, Some(15), None).await;
        let reply = dir.path().join("reply.json");
        let mut args = vec![file.to_str().unwrap(), "--endpoint", "/api/upload"];
        let id = job.to_string();
        args.extend(["--resume", &id, "-o", reply.to_str().unwrap(), "--json"]);
        args.extend(more);
        let out = send(&topics, &args).await;
        assert_eq!(out.code, 0, "{more:?}: {}", out.stderr);
        let summary = json(&out.stdout);
        assert_eq!(summary["bytes_found"], 15 * chunk as u64, "{summary}");
        assert_eq!(summary["digest"], name, "{more:?}: {summary}");
        assert_eq!(
            json(&std::fs::read(&reply).unwrap())["body_sha256"],
            sha.as_str()
        );
        let version = if kind == DigestKind::Blake3 { 2 } else { 1 };
        let sent = end_of(
            &job_records(&topics, &topics.request, job).await,
            version,
            "resumed",
        );
        assert_eq!(sent.digest, kind.of(&body), "{more:?}");
    }
    assert_eq!(servers.state.requests().len(), 3, "one call per job");
    check_no_part_files(dir.path());
}

/// No `.part` file is left where the outputs went.
fn check_no_part_files(dir: &Path) {
    let parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".part"))
        .collect();
    assert!(parts.is_empty(), "{parts:?}");
}
