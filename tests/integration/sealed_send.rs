//! The sender's side of sealed jobs, which needs no portal: `keygen`,
//! `--seal-to`'s errors, what a sealed request leaves in the request topic
//! (and in the job key file), and `wait` opening a sealed answer written
//! into the reply topic by hand.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use kafkasend::kafka::{self, Record};
use kafkasend::protocol::seal::{JobSecret, Keyring, PublicKey, SecretKey};
use kafkasend::protocol::wire::{self, Body, ChunkInfo, EndInfo, Frame, JobId, ResponseStart};
use kafkasend::protocol::{ErrorCategory, Failure};

use crate::support::api::json;
use crate::support::broker::{kafka_settings, records_in, Topics};
use crate::support::payload::{contains, pattern};
use crate::support::pki::sender_key_files;
use crate::support::run::{kafkasend_cmd, run_with_env};

/// Runs `kafkasend keygen --out PREFIX`.
async fn keygen(topics: &Topics, prefix: &Path) -> crate::support::run::SendResult {
    kafkasend_cmd(topics, &["keygen", "--out", prefix.to_str().unwrap()]).await
}

/// Creates both topics, 3 partitions each, as a portal would.
async fn make_topics(topics: &Topics) {
    let cluster = kafka::connect(&kafka_settings(topics, "it-setup"))
        .await
        .unwrap();
    for topic in [&topics.request, &topics.response] {
        cluster.ensure_topic(topic, 3, 1).await.unwrap();
    }
}

/// Every record of `job` in `topic`, in partition order.
async fn job_records(topics: &Topics, topic: &str, job: JobId) -> (i32, Vec<Record>) {
    for partition in 0..3 {
        let found: Vec<Record> = records_in(topics, topic, partition)
            .await
            .into_iter()
            .filter(|r| r.key.as_deref() == Some(job.key().as_slice()))
            .collect();
        if !found.is_empty() {
            return (partition, found);
        }
    }
    panic!("no record of job {job} in {topic}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_writes_a_private_and_a_public_key_and_never_replaces_one() {
    let topics = Topics::new("keygen");
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("portal");
    let out = keygen(&topics, &prefix).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (key, public) = (dir.path().join("portal.key"), dir.path().join("portal.pub"));
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&public).unwrap().mode() & 0o077, 0o044);
    let loaded = PublicKey::from_pem(&std::fs::read(&public).unwrap()).unwrap();
    let private = SecretKey::all_from_pem(&std::fs::read(&key).unwrap()).unwrap();
    assert_eq!(private[0].public().id(), loaded.id());
    let stdout = out.stdout_text();
    assert!(
        stdout.contains(&format!("key id: {}", loaded.id())),
        "{stdout}"
    );
    assert!(stdout.contains(&key.display().to_string()), "{stdout}");
    assert!(stdout.contains(&public.display().to_string()), "{stdout}");
    // The private key is never printed.
    let pem = String::from_utf8(std::fs::read(&key).unwrap()).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stdout.contains(line) && !out.stderr.contains(line));
    }

    // A second run refuses, naming the file, and changes nothing.
    let again = keygen(&topics, &prefix).await;
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains(&key.display().to_string())
            && again.stderr.contains("exists already"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), pem);
    // Only a .pub in the way: refused too, and no .key left behind.
    let lone = dir.path().join("lone");
    std::fs::write(dir.path().join("lone.pub"), "not mine").unwrap();
    let out = keygen(&topics, &lone).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("lone.pub"), "{}", out.stderr);
    assert!(!dir.path().join("lone.key").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("lone.pub")).unwrap(),
        "not mine"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn seal_to_errors_are_told_before_anything_is_sent() {
    // Topics never made: a check that passed would fail on Kafka instead.
    let topics = Topics::new("sealerr");
    let dir = tempfile::tempdir().unwrap();
    keygen(&topics, &dir.path().join("portal")).await;
    let send = |args: Vec<String>| {
        let topics = topics.clone();
        async move {
            let mut all = vec!["send".to_string(), "--endpoint".into(), "/x".into()];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run_with_env(&topics, &[], &all).await
        }
    };
    let path = |name: &str| dir.path().join(name).display().to_string();

    let missing = send(vec!["--seal-to".into(), path("nope.pub")]).await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("KAFKASEND_SEAL_TO") && missing.stderr.contains("nope.pub"),
        "{}",
        missing.stderr
    );

    // The private key given where the public one goes.
    let private = send(vec!["--seal-to".into(), path("portal.key")]).await;
    assert_eq!(private.code, 2, "{}", private.stderr);
    assert!(
        private.stderr.contains("holds no PEM public key") && private.stderr.contains(".pub"),
        "{}",
        private.stderr
    );
    // And nothing of the private key is repeated.
    let pem = std::fs::read_to_string(dir.path().join("portal.key")).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!private.stderr.contains(line));
    }

    let sha = send(vec![
        "--seal-to".into(),
        path("portal.pub"),
        "--digest".into(),
        "sha256".into(),
    ])
    .await;
    assert_eq!(sha.code, 2, "{}", sha.stderr);
    assert!(
        sha.stderr.contains("sealed jobs use BLAKE3"),
        "{}",
        sha.stderr
    );
}

/// A sealed, signed request sent with `--no-wait`: (job, its records in the
/// request topic and their partition, the job key folder, the portal key).
struct Sent {
    job: JobId,
    partition: i32,
    records: Vec<Record>,
    keys: PathBuf,
    portal: SecretKey,
    summary: serde_json::Value,
}

const PATH: &str = "/api/very-secret-path?q=hidden-query";
const HEADER_VALUE: &str = "header-value-nobody-may-read";

async fn send_sealed(topics: &Topics, dir: &Path, body: &[u8]) -> Sent {
    make_topics(topics).await;
    let prefix = dir.join("portal");
    assert_eq!(keygen(topics, &prefix).await.code, 0);
    let portal = SecretKey::all_from_pem(&std::fs::read(dir.join("portal.key")).unwrap())
        .unwrap()
        .remove(0);
    let file = dir.join("body.bin");
    std::fs::write(&file, body).unwrap();
    let (_, signing_key, _) = sender_key_files(dir);
    let keys = dir.join("state/job-keys");
    let out = run_with_env(
        topics,
        &[
            ("KAFKASEND_JOB_KEY_DIR", keys.display().to_string()),
            ("KAFKASEND_CHUNK_SIZE", "1024".into()),
            (
                "KAFKASEND_SIGNING_KEY_FILE",
                signing_key.display().to_string(),
            ),
            (
                "TRACEPARENT",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
        ],
        &[
            "send",
            file.to_str().unwrap(),
            "--endpoint",
            PATH,
            "-H",
            &format!("X-Private: {HEADER_VALUE}"),
            "--seal-to",
            dir.join("portal.pub").to_str().unwrap(),
            "--no-wait",
            "--json",
            "-v",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = json(&out.stdout);
    let job: JobId = summary["job"].as_str().unwrap().parse().unwrap();
    // -v names the key sealed to and where the secret is, never the secret.
    let id = portal.public().id().to_string();
    assert!(
        out.stderr.contains(&format!("sealed to portal key {id}")),
        "{}",
        out.stderr
    );
    let secret_file = keys.join(format!("{job}.secret"));
    let secret_line = std::fs::read_to_string(&secret_file).unwrap();
    let secret_line = secret_line.lines().nth(1).unwrap();
    assert!(!out.stderr.contains(secret_line) && !out.stdout_text().contains(secret_line));
    let (partition, records) = job_records(topics, &topics.request, job).await;
    Sent {
        job,
        partition,
        records,
        keys,
        portal,
        summary,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_request_leaves_neither_path_header_nor_body_in_kafka() {
    let topics = Topics::new("sealraw");
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(17, 5000);
    let sent = send_sealed(&topics, dir.path(), &body).await;
    let job = sent.job;
    assert_eq!(
        sent.summary["sealed"],
        sent.portal.public().id().to_string().as_str()
    );

    // Start, 5 chunks of at most 1024 bytes, end.
    assert_eq!(sent.records.len(), 7);
    for (i, record) in sent.records.iter().enumerate() {
        let value = record.value.as_deref().unwrap();
        for secret in [
            PATH.as_bytes(),
            b"very-secret-path",
            b"hidden-query",
            HEADER_VALUE.as_bytes(),
            b"X-Private",
            b"0af7651916cd43dd8448eb211c80319c",
        ] {
            assert!(!contains(value, secret), "record {i} holds {secret:?}");
        }
        // No 16-byte run of the body shows, anywhere.
        for piece in body.chunks(16).filter(|p| p.len() == 16) {
            assert!(!contains(value, piece), "record {i} holds body bytes");
        }
        let names: Vec<&String> = record.headers.keys().collect();
        match i {
            0 => assert_eq!(names, [wire::REPLY_TO_HEADER]),
            _ => assert!(names.is_empty(), "record {i}: {names:?}"),
        }
        let (frame, _) = wire::decode(value).unwrap();
        assert!(frame.body.is_sealed(), "record {i}: {:?}", frame.body);
        assert_eq!(frame.seq as usize, i);
    }

    // The job key file: private, in a private folder, and it opens the
    // request (as the portal does with its key, whose secret must match).
    let file = sent.keys.join(format!("{job}.secret"));
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&sent.keys).unwrap().mode() & 0o777, 0o700);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("# kafkasend job secret for job {job}: opens its sealed answer; keep private")
    );
    let secret = JobSecret::from_text(lines.next().unwrap()).unwrap();

    let ring = Keyring::new(vec![sent.portal]).unwrap();
    let value = sent.records[0].value.as_deref().unwrap();
    let (frame, payload) = wire::decode(value).unwrap();
    let opened = ring
        .open_start(value, &frame, payload, &topics.request, sent.partition)
        .unwrap();
    assert_eq!(opened.start.path, PATH);
    assert!(opened
        .start
        .headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("x-private") && v == HEADER_VALUE));
    assert_eq!(opened.secret.to_text(), secret.to_text());
    // Signed, and traced, inside the seal.
    let sealed_names: Vec<&str> = opened
        .record_headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        sealed_names.contains(&wire::SIGNATURE_HEADER),
        "{sealed_names:?}"
    );
    assert!(sealed_names.contains(&"traceparent"), "{sealed_names:?}");

    // The chunks open, in order, into the body; the end's digest is BLAKE3's.
    let keys = secret.keys(job);
    let mut got = Vec::new();
    for record in &sent.records[1..] {
        let value = record.value.as_deref().unwrap();
        let (frame, payload) = wire::decode(value).unwrap();
        let open = keys.request.open_frame(value, frame, payload, b"").unwrap();
        match open.frame.body {
            Body::Chunk(ChunkInfo { offset, .. }) => {
                assert_eq!(offset as usize, got.len());
                got.extend_from_slice(&open.payload);
            }
            Body::End(EndInfo {
                chunks,
                total_len,
                digest,
            }) => {
                assert_eq!((chunks, total_len), (5, 5000));
                assert_eq!(digest.bytes, *blake3::hash(&body).as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, body);
}

/// Writes a sealed answer to `job` into the reply topic, as a portal would.
async fn answer_sealed(topics: &Topics, job: JobId, secret: &JobSecret, body: &[u8]) {
    let keys = secret.keys(job);
    let attempt = wire::new_attempt();
    let frames = [
        (
            Frame {
                job,
                seq: 0,
                body: Body::ResponseStart(ResponseStart {
                    status: 201,
                    headers: vec![("content-type".into(), "text/plain".into())],
                    body_len: Some(body.len() as u64),
                    digest: kafkasend::protocol::digest::DigestKind::Blake3,
                }),
            },
            Vec::new(),
        ),
        (
            Frame {
                job,
                seq: 1,
                body: Body::Chunk(ChunkInfo {
                    offset: 0,
                    crc32c: wire::checksum(body),
                }),
            },
            body.to_vec(),
        ),
        (
            Frame {
                job,
                seq: 2,
                body: Body::End(EndInfo {
                    chunks: 1,
                    total_len: body.len() as u64,
                    digest: kafkasend::protocol::digest::Digest {
                        kind: kafkasend::protocol::digest::DigestKind::Blake3,
                        bytes: *blake3::hash(body).as_bytes(),
                    },
                }),
            },
            Vec::new(),
        ),
    ];
    let records: Vec<Record> = frames
        .iter()
        .map(|(frame, payload)| {
            // The head carries, sealed, what a clear one carries in the
            // record's headers.
            let sealed = match frame.seq {
                0 => vec![
                    (
                        wire::DROPPED_HEADERS_HEADER.to_string(),
                        b"X-Private".to_vec(),
                    ),
                    (
                        "traceparent".to_string(),
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
                    ),
                ],
                _ => Vec::new(),
            };
            let value = keys.response.seal_clear(frame, payload, sealed, &attempt);
            kafka::record_of_value(job, value, &[(wire::ATTEMPT_HEADER, attempt.clone())])
        })
        .collect();
    produce_reply(topics, job, records).await;
}

/// A whole answer in clear under `attempt`: what anyone who can write the
/// response topic can forge.
fn clear_answer(job: JobId, body: &[u8], attempt: &[u8]) -> Vec<Record> {
    use kafkasend::protocol::digest::{Digest, DigestKind};
    let frames = [
        (
            Frame {
                job,
                seq: 0,
                body: Body::ResponseStart(ResponseStart {
                    status: 200,
                    headers: vec![],
                    body_len: Some(body.len() as u64),
                    digest: DigestKind::Blake3,
                }),
            },
            &[][..],
        ),
        (
            Frame {
                job,
                seq: 1,
                body: Body::Chunk(ChunkInfo {
                    offset: 0,
                    crc32c: wire::checksum(body),
                }),
            },
            body,
        ),
        (
            Frame {
                job,
                seq: 2,
                body: Body::End(EndInfo {
                    chunks: 1,
                    total_len: body.len() as u64,
                    digest: Digest {
                        kind: DigestKind::Blake3,
                        bytes: *blake3::hash(body).as_bytes(),
                    },
                }),
            },
            &[][..],
        ),
    ];
    frames
        .iter()
        .map(|(frame, payload)| {
            kafka::record_of_value(
                job,
                wire::encode_in(DigestKind::Blake3, frame, payload),
                &[(wire::ATTEMPT_HEADER, attempt.to_vec())],
            )
        })
        .collect()
}

async fn produce_reply(topics: &Topics, job: JobId, records: Vec<Record>) {
    let cluster = kafka::connect(&kafka_settings(topics, "it-portal"))
        .await
        .unwrap();
    let partition = kafka::partitioner::partition_for_key(&job.key(), 3);
    let pc = cluster
        .partition(&topics.response, partition)
        .await
        .unwrap();
    pc.produce_all(records).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_opens_a_sealed_answer_with_the_job_key_file_then_removes_it() {
    let topics = Topics::new("sealwait");
    let dir = tempfile::tempdir().unwrap();
    let sent = send_sealed(&topics, dir.path(), &pattern(3, 3000)).await;
    let job = sent.job;
    let file = sent.keys.join(format!("{job}.secret"));
    let text = std::fs::read_to_string(&file).unwrap();
    let secret = JobSecret::from_text(text.lines().nth(1).unwrap()).unwrap();
    let answer = b"sealed answer body".repeat(50);
    answer_sealed(&topics, job, &secret, &answer).await;
    // A whole clear answer forged under another attempt: taken without the
    // secret, it would pass for the job's answer.
    produce_reply(&topics, job, clear_answer(job, b"forged", b"forged")).await;

    let env = [("KAFKASEND_JOB_KEY_DIR", sent.keys.display().to_string())];
    let out_file = dir.path().join("answer.txt");
    let wait = |env: Vec<(&'static str, String)>| {
        let topics = topics.clone();
        let out_file = out_file.clone();
        async move {
            run_with_env(
                &topics,
                &env,
                &[
                    "wait",
                    &job.to_string(),
                    "-o",
                    out_file.to_str().unwrap(),
                    "--timeout",
                    "5",
                    "--json",
                ],
            )
            .await
        }
    };
    // Elsewhere, without the secret: refused at the first sealed record,
    // saying where the secret should be; the forged answer is not taken.
    let elsewhere = dir.path().join("other-keys");
    let out = wait(vec![(
        "KAFKASEND_JOB_KEY_DIR",
        elsewhere.display().to_string(),
    )])
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the answer is sealed and its secret is not in")
            && out.stderr.contains(&elsewhere.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(!out_file.exists());
    assert!(!out.stdout_text().contains("forged"));

    // A key file that is not private is refused, and says so; the secret
    // is not used, nor removed.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = wait(env.to_vec()).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the answer is sealed and its secret cannot be read")
            && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
    assert!(!out_file.exists() && file.exists());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = wait(env.to_vec()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&out_file).unwrap(), answer);
    // The headers sealed in the answer's head are read as a clear one's.
    let summary = json(&out.stdout);
    assert_eq!(summary["status"], 201);
    assert_eq!(summary["dropped_headers"], "X-Private");
    assert_eq!(summary["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        !file.exists(),
        "the job key file is removed once the answer is read"
    );
    // Nothing of the secret is printed.
    assert!(!out.stderr.contains(text.lines().nth(1).unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clear_error_to_a_sealed_job_ends_send_but_not_the_job() {
    let topics = Topics::new("sealclear");
    let dir = tempfile::tempdir().unwrap();
    let sent = send_sealed(&topics, dir.path(), b"tiny").await;
    let job = sent.job;
    // The portal's clear Error, then a forged clear answer, which comes
    // too late to matter (one alone fails as a record that does not
    // decode: see send::sealed's unit tests).
    let clear_start = Frame {
        job,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status: 200,
            headers: vec![],
            body_len: Some(0),
            digest: kafkasend::protocol::digest::DigestKind::Blake3,
        }),
    };
    let error = Frame {
        job,
        seq: 0,
        body: Body::Error(Failure {
            category: ErrorCategory::Rejected,
            message: "the job is sealed to key 0000000000000000, which this portal does not hold"
                .into(),
        }),
    };
    let record = |frame: &Frame, attempt: &[u8]| {
        let value = wire::encode_in(kafkasend::protocol::digest::DigestKind::Blake3, frame, &[]);
        kafka::record_of_value(job, value, &[(wire::ATTEMPT_HEADER, attempt.to_vec())])
    };
    produce_reply(
        &topics,
        job,
        vec![record(&error, b"portal"), record(&clear_start, b"forged")],
    )
    .await;
    let out = run_with_env(
        &topics,
        &[("KAFKASEND_JOB_KEY_DIR", sent.keys.display().to_string())],
        &["wait", &job.to_string(), "--timeout", "5"],
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the portal could not open the sealed request: the job is sealed to key"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "`kafkasend wait {job}` can still take a sealed answer that comes later"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "nothing of the forged answer is written"
    );
    // Anyone could have written a clear Error: the secret stays, and the
    // sealed answer that comes later is still read with it.
    let file = sent.keys.join(format!("{job}.secret"));
    let text = std::fs::read_to_string(&file).unwrap();
    let secret = JobSecret::from_text(text.lines().nth(1).unwrap()).unwrap();
    answer_sealed(&topics, job, &secret, b"the real answer").await;
    let out = run_with_env(
        &topics,
        &[("KAFKASEND_JOB_KEY_DIR", sent.keys.display().to_string())],
        &["wait", &job.to_string(), "--timeout", "5"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, b"the real answer");
    assert!(!file.exists(), "removed once the answer is read");

    // A clear Error after the start is no portal's: a broken record.
    let late = Frame {
        job,
        seq: 3,
        body: error.body.clone(),
    };
    let second = dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let sent2 = send_sealed(&topics, &second, b"tiny").await;
    let job2 = sent2.job;
    let late = Frame { job: job2, ..late };
    let mut late_record = record(&late, b"portal");
    late_record.key = Some(job2.key());
    produce_reply(&topics, job2, vec![late_record]).await;
    let out = run_with_env(
        &topics,
        &[("KAFKASEND_JOB_KEY_DIR", sent2.keys.display().to_string())],
        &["wait", &job2.to_string(), "--timeout", "3"],
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("clear Error after the start"),
        "{}",
        out.stderr
    );
    assert!(sent2.keys.join(format!("{job2}.secret")).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_job_resumes_only_with_its_secret_and_its_body() {
    let topics = Topics::new("sealresume");
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(29, 4000);
    let sent = send_sealed(&topics, dir.path(), &body).await;
    let job = sent.job.to_string();
    let file = dir.path().join("body.bin");
    let resume = |env: Vec<(&'static str, String)>, seal: bool| {
        let topics = topics.clone();
        let job = job.clone();
        let file = file.clone();
        let public = dir.path().join("portal.pub");
        async move {
            let mut args = vec![
                "send".to_string(),
                file.display().to_string(),
                "--endpoint".into(),
                PATH.into(),
                "-H".into(),
                format!("X-Private: {HEADER_VALUE}"),
                "--resume".into(),
                job,
                "--no-wait".into(),
            ];
            if seal {
                args.extend(["--seal-to".into(), public.display().to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_with_env(&topics, &env, &args).await
        }
    };
    let keys = ("KAFKASEND_JOB_KEY_DIR", sent.keys.display().to_string());
    let elsewhere = (
        "KAFKASEND_JOB_KEY_DIR",
        dir.path().join("elsewhere").display().to_string(),
    );

    // Without --seal-to: the job is sealed, and nothing is sent.
    let out = resume(vec![keys.clone()], false).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("is sealed: resume it with --seal-to"),
        "{}",
        out.stderr
    );
    // Without the secret: it cannot be resumed.
    let out = resume(vec![elsewhere], true).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("its secret is not in"),
        "{}",
        out.stderr
    );

    // With both: the records found open and match the body, so nothing is
    // sent again.
    let out = resume(vec![keys.clone()], true).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("wholly in the request topic already"),
        "{}",
        out.stderr
    );
    // A body that differs is found to differ, chunk by chunk, opened.
    let mut other = body.clone();
    other[3000] ^= 1;
    std::fs::write(&file, &other).unwrap();
    let out = resume(vec![keys], true).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("differs from"), "{}", out.stderr);

    let (_, records) = job_records(&topics, &topics.request, sent.job).await;
    assert_eq!(
        records.len(),
        sent.records.len(),
        "no record was produced again"
    );
    assert!(sent.keys.join(format!("{job}.secret")).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_sealed_upload_is_finished_by_resume_with_its_secret() {
    use kafkasend::kafka::partitioner::partition_for_key;
    use kafkasend::protocol::digest::DigestKind;
    use kafkasend::protocol::seal::seal_start;
    use kafkasend::protocol::wire::{RequestStart, SealedChunk};

    let topics = Topics::new("sealpartial");
    make_topics(&topics).await;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(keygen(&topics, &dir.path().join("portal")).await.code, 0);
    let public =
        PublicKey::from_pem(&std::fs::read(dir.path().join("portal.pub")).unwrap()).unwrap();
    let body = pattern(41, 4000);
    let file = dir.path().join("body.bin");
    std::fs::write(&file, &body).unwrap();

    // What a send killed after its first chunk left: the start record, one
    // chunk of 1024 bytes, and the job key file.
    let job = JobId::new();
    let partition = partition_for_key(&job.key(), 3);
    let start = RequestStart {
        method: "POST".into(),
        path: "/api/upload".into(),
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body_len: Some(body.len() as u64),
        has_body: true,
        reply_topic: topics.response.clone(),
        reply_partition: partition,
        digest: DigestKind::Blake3,
    };
    let (value, secret, keys) =
        seal_start(&public, job, &start, Vec::new(), &topics.request, partition).unwrap();
    let chunk = keys.request.seal_frame(
        &Frame {
            job,
            seq: 1,
            body: Body::SealedChunk(SealedChunk { offset: 0 }),
        },
        &body[..1024],
        b"",
    );
    let keys_dir = dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let key_file = keys_dir.join(format!("{job}.secret"));
    std::fs::write(
        &key_file,
        format!(
            "# kafkasend job secret for job {job}\n{}\n",
            &*secret.to_text()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cluster = kafka::connect(&kafka_settings(&topics, "it-killed"))
        .await
        .unwrap();
    let pc = cluster.partition(&topics.request, partition).await.unwrap();
    let record =
        |value: Vec<u8>, headers: &[(&str, Vec<u8>)]| kafka::record_of_value(job, value, headers);
    pc.produce_all(vec![
        record(
            value,
            &[(
                wire::REPLY_TO_HEADER,
                wire::reply_to_header(&topics.response, partition),
            )],
        ),
        record(chunk, &[]),
        // Clear records under the job's id, someone else's: a clear End
        // would end the upload, a clear chunk be compared with the body.
        record(
            wire::encode_in(
                DigestKind::Blake3,
                &Frame {
                    job,
                    seq: 2,
                    body: Body::Chunk(ChunkInfo {
                        offset: 1024,
                        crc32c: wire::checksum(&body[1024..2048]),
                    }),
                },
                &body[1024..2048],
            ),
            &[],
        ),
        record(
            wire::encode_in(
                DigestKind::Blake3,
                &Frame {
                    job,
                    seq: 5,
                    body: Body::End(EndInfo {
                        chunks: 4,
                        total_len: 4000,
                        digest: kafkasend::protocol::digest::Digest {
                            kind: DigestKind::Blake3,
                            bytes: *blake3::hash(&body).as_bytes(),
                        },
                    }),
                },
                &[],
            ),
            &[],
        ),
    ])
    .await
    .unwrap();
    // The portal's keys rotated since: --seal-to names a newer one, and the
    // job is still reported sealed to the key its start names.
    assert_eq!(keygen(&topics, &dir.path().join("newer")).await.code, 0);

    let out = run_with_env(
        &topics,
        &[("KAFKASEND_JOB_KEY_DIR", keys_dir.display().to_string())],
        &[
            "send",
            file.to_str().unwrap(),
            "--endpoint",
            "/api/upload",
            "--resume",
            &job.to_string(),
            "--seal-to",
            dir.path().join("newer.pub").to_str().unwrap(),
            "--no-wait",
            "--json",
            "-v",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = json(&out.stdout);
    assert_eq!(summary["bytes_found"], 1024);
    assert_eq!(summary["bytes_sent"], 4000 - 1024);
    assert_eq!(summary["sealed"], public.id().to_string().as_str());
    assert!(
        out.stderr
            .contains(&format!("sealed to portal key {}", public.id())),
        "{}",
        out.stderr
    );

    // Start (not sent again), 4 chunks, end: all sealed, and they open
    // with the job's one secret into the body; the clear ones are the two
    // planted.
    let (_, records) = job_records(&topics, &topics.request, job).await;
    let (sealed, clear): (Vec<_>, Vec<_>) = records.iter().partition(|r| {
        wire::decode(r.value.as_deref().unwrap())
            .unwrap()
            .0
            .body
            .is_sealed()
    });
    assert_eq!((sealed.len(), clear.len()), (6, 2));
    let mut got = Vec::new();
    for record in &sealed[1..] {
        let value = record.value.as_deref().unwrap();
        let (frame, payload) = wire::decode(value).unwrap();
        let opened = keys.request.open_frame(value, frame, payload, b"").unwrap();
        match opened.frame.body {
            Body::Chunk(_) => got.extend(opened.payload),
            Body::End(end) => assert_eq!(end.digest.bytes, *blake3::hash(&body).as_bytes()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clear_answer_is_read_whatever_is_wrong_with_a_key_file_of_its_id() {
    use std::os::unix::fs::PermissionsExt as _;
    let topics = Topics::new("sealbadkey");
    make_topics(&topics).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    let job = JobId::new();
    // Open to others, and no secret in it: the job was not sealed, so
    // neither matters.
    let file = keys.join(format!("{job}.secret"));
    std::fs::write(&file, "not a secret\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    produce_reply(&topics, job, clear_answer(job, b"clear answer", b"a1")).await;
    let out = run_with_env(
        &topics,
        &[("KAFKASEND_JOB_KEY_DIR", keys.display().to_string())],
        &["wait", &job.to_string(), "--timeout", "5"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, b"clear answer");
    assert!(file.exists(), "a file wait did not use is left alone");
}
