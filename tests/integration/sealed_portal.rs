//! The portal's side of sealed jobs, end to end against a real broker and
//! API: the test seals requests itself as PROTOCOL.md section 11 says
//! (`protocol::seal`), produces them, and opens the answers with the
//! sender's keys. What crosses Kafka holds no path, header value or body
//! byte; what does not open, or lies, never reaches the API.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kafkasend::kafka::{self, partitioner::partition_for_key, Record};
use kafkasend::protocol::chunker::Chunker;
use kafkasend::protocol::digest::DigestKind;
use kafkasend::protocol::seal::{seal_start, JobKeys, PublicKey, SecretKey};
use kafkasend::protocol::wire::{self, Body, Frame, JobId, RequestStart, ATTEMPT_HEADER};
use kafkasend::protocol::ErrorCategory;

use crate::support::api::Servers;
use crate::support::broker::{kafka_settings, post_start, records_in, wait_error, Topics};
use crate::support::payload::{contains, pattern, sha256_hex};
use crate::support::run::{admin_addr, get, sample, Portal};
use crate::support::WAIT;

/// A header value that must never show outside the sealed records.
const SECRET_HEADER: (&str, &str) = ("x-request-note", "hush-7c41e0-never-logged");

/// Writes `keys` (PEM, one file) to `dir/name` with mode 0600; its path.
fn key_file(dir: &Path, name: &str, keys: &[&SecretKey]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let pem: String = keys.iter().map(|k| k.to_pem().to_string()).collect();
    std::fs::write(&path, pem).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

/// The request partition a job's records go to, as `send` picks it.
fn partition_of(job: JobId) -> i32 {
    partition_for_key(&job.key(), 3)
}

/// A sealed POST of `body` to `path`: its records (start, chunks, end), in
/// order, and the sender's keys.
fn sealed_post(
    topics: &Topics,
    to: &PublicKey,
    job: JobId,
    path: &str,
    body: &[u8],
    chunk: usize,
) -> (Vec<Record>, JobKeys) {
    let start = RequestStart {
        method: "POST".into(),
        path: path.into(),
        headers: vec![
            ("content-type".into(), "application/octet-stream".into()),
            (SECRET_HEADER.0.into(), SECRET_HEADER.1.into()),
        ],
        body_len: Some(body.len() as u64),
        has_body: true,
        reply_topic: topics.response.clone(),
        reply_partition: 0,
        digest: DigestKind::Blake3,
    };
    let (value, _secret, keys) =
        seal_start(to, job, &start, vec![], &topics.request, partition_of(job)).unwrap();
    let reply_to = wire::reply_to_header(&topics.response, 0);
    let mut recs = vec![kafka::record_of_value(
        job,
        value,
        &[(wire::REPLY_TO_HEADER, reply_to)],
    )];
    let mut chunker = Chunker::new(job, 1, DigestKind::Blake3);
    for piece in body.chunks(chunk) {
        let c = chunker.chunk(piece.to_vec());
        recs.push(kafka::record_of_value(
            job,
            keys.request.seal_clear(&c.frame, &c.payload, vec![], &[]),
            &[],
        ));
    }
    let end = chunker.finish();
    recs.push(kafka::record_of_value(
        job,
        keys.request.seal_clear(&end, &[], vec![], &[]),
        &[],
    ));
    (recs, keys)
}

async fn produce(topics: &Topics, job: JobId, recs: Vec<Record>) {
    let client = kafka::connect(&kafka_settings(topics, "it-sealer"))
        .await
        .unwrap();
    let pc = client
        .partition(&topics.request, partition_of(job))
        .await
        .unwrap();
    // One at a time: a batch of a job's chunks would pass the broker's
    // message size limit.
    for r in recs {
        pc.produce(r).await.unwrap();
    }
}

/// A sealed answer, opened.
#[derive(Debug, Default)]
struct Answer {
    status: Option<u16>,
    body: Vec<u8>,
    error: Option<(ErrorCategory, String)>,
    ended: bool,
    /// Record header names seen on the answer's records.
    header_names: Vec<String>,
    /// Frames in clear (not sealed) among them.
    clear: usize,
}

/// Waits (bounded) for the whole answer to `job` on reply partition 0 and
/// opens it with `keys`; a clear `Error` is taken as it is.
async fn answer(topics: &Topics, job: JobId, keys: &JobKeys, portal: &Portal) -> Answer {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut a = Answer::default();
        for r in records_in(topics, &topics.response, 0).await {
            if r.key.as_deref() != Some(job.key().as_slice()) {
                continue;
            }
            a.header_names.extend(r.headers.keys().cloned());
            let value = r.value.unwrap_or_default();
            let (frame, payload) = wire::decode(&value).unwrap();
            if let Body::Error(e) = &frame.body {
                a.clear += 1;
                a.error = Some((e.category, e.message.clone()));
                continue;
            }
            assert!(frame.body.is_sealed(), "a clear answer record: {frame:?}");
            let attempt = r.headers.get(ATTEMPT_HEADER).cloned().unwrap_or_default();
            let opened = keys
                .response
                .open_frame(&value, frame, payload, &attempt)
                .unwrap_or_else(|e| panic!("an answer record does not open: {e}"));
            match opened.frame.body {
                Body::ResponseStart(s) => a.status = Some(s.status),
                Body::Chunk(_) => a.body.extend_from_slice(&opened.payload),
                Body::End(_) => a.ended = true,
                Body::Error(e) => a.error = Some((e.category, e.message)),
                other => panic!("unexpected {other:?}"),
            }
        }
        if a.ended || a.error.is_some() {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to job {job}; portal log:\n{}",
            portal.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every record value and header value of `topic`'s partitions, as bytes.
async fn raw_topic(topics: &Topics, topic: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in 0..3 {
        for r in records_in(topics, topic, p).await {
            out.extend(r.value);
            out.extend(r.headers.into_values());
        }
    }
    out
}

fn holds(hay: &[Vec<u8>], needle: &[u8]) -> bool {
    hay.iter().any(|v| contains(v, needle))
}

fn sealing_env(servers: &Servers, files: &str) -> Vec<(&'static str, String)> {
    let mut env = servers.plain_env();
    env.push(("PORTAL_SEALING_KEY_FILE", files.into()));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_request_round_trips_and_kafka_sees_no_path_header_or_body() {
    let servers = Servers::start().await;
    let topics = Topics::new("sealrt");
    let dir = tempfile::tempdir().unwrap();
    let portal_key = SecretKey::generate();
    let files = key_file(dir.path(), "portal.key", &[&portal_key]);
    let mut env = sealing_env(&servers, &files);
    env.push(("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into()));
    let portal = Portal::start(&topics, &env);
    let addr = admin_addr(&portal.log());
    let (status, pem) = get(&addr, "/sealing-key").await;
    assert_eq!(status, 200);
    assert_eq!(pem, portal_key.public().to_pem());
    let advertised = PublicKey::from_pem(pem.as_bytes()).unwrap();

    // 2.5 MB: above the spool threshold, so spooled (encrypted) and pipelined.
    let body = pattern(17, 2_500_000);
    let job = JobId::new();
    let path = "/upload/sealed-path-5be2";
    let (recs, keys) = sealed_post(&topics, &advertised, job, path, &body, 900 * 1024);
    produce(&topics, job, recs).await;
    let a = answer(&topics, job, &keys, &portal).await;
    assert_eq!(a.error, None, "{}", portal.log());
    assert_eq!(a.status, Some(200));
    assert_eq!(a.clear, 0);
    assert!(
        a.header_names.iter().all(|n| n == ATTEMPT_HEADER),
        "{:?}",
        a.header_names
    );
    let reply = crate::support::api::json(&a.body);
    assert_eq!(reply["body_sha256"], sha256_hex(&body));
    assert_eq!(reply["path"], path);
    let seen = servers.state.requests();
    assert!(seen
        .iter()
        .any(|r| r.path == path && r.body_sha256 == sha256_hex(&body)));

    // Kafka holds ciphertext only, both ways.
    let raw = [
        raw_topic(&topics, &topics.request).await,
        raw_topic(&topics, &topics.response).await,
    ]
    .concat();
    assert!(!holds(&raw, path.as_bytes()), "the path is on a topic");
    assert!(
        !holds(&raw, SECRET_HEADER.1.as_bytes()),
        "a header value is on a topic"
    );
    assert!(
        !holds(&raw, sha256_hex(&body).as_bytes()),
        "the answer is on a topic"
    );
    for at in [0, 1_000_003, 2_499_000] {
        assert!(
            !holds(&raw, &body[at..at + 64]),
            "body bytes at {at} are on a topic"
        );
    }
    // The log names the job sealed, never a header value or the answer.
    let log = portal.log();
    assert!(log.contains("(sealed)"), "{log}");
    assert!(!log.contains(SECRET_HEADER.1), "{log}");
    assert!(!log.contains(&sha256_hex(&body)), "{log}");
    let (_, metrics) = get(&addr, "/metrics").await;
    assert_eq!(
        sample(&metrics, "kafkasend_sealed_jobs_total{outcome=\"opened\"}"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_records_that_were_moved_or_cut_never_reach_the_api() {
    let servers = Servers::start().await;
    let topics = Topics::new("sealbad");
    let dir = tempfile::tempdir().unwrap();
    let portal_key = SecretKey::generate();
    let files = key_file(dir.path(), "portal.key", &[&portal_key]);
    let mut env = sealing_env(&servers, &files);
    env.push(("PORTAL_JOB_IDLE_TIMEOUT_SECS", "2".into()));
    let portal = Portal::start(&topics, &env);
    let to = portal_key.public();
    let body = pattern(5, 300_000);

    // A chunk of job B, relabelled as job A's chunk 1 (same place, same size).
    let (a_job, b_job) = (JobId::new(), JobId::new());
    let (mut a_recs, a_keys) = sealed_post(&topics, to, a_job, "/upload/swap-a", &body, 100_000);
    let (b_recs, _) = sealed_post(&topics, to, b_job, "/upload/swap-b", &body, 100_000);
    let b_value = b_recs[1].value.clone().unwrap();
    let (mut frame, payload) = wire::decode(&b_value).unwrap();
    frame.job = a_job;
    let moved: Frame = frame;
    a_recs[1] = kafka::record_of_value(
        a_job,
        wire::encode_in(DigestKind::Blake3, &moved, payload),
        &[],
    );
    produce(&topics, a_job, a_recs).await;
    let a = answer(&topics, a_job, &a_keys, &portal).await;
    let (category, message) = a.error.expect("an error");
    assert_eq!(category, ErrorCategory::Integrity, "{message}");
    assert_eq!(a.clear, 0, "the error is sealed to its sender");

    // A job cut short: its last chunk never comes; the sealed end record
    // still counts it, so the job waits and then expires.
    let cut = JobId::new();
    let (mut recs, keys) = sealed_post(&topics, to, cut, "/upload/cut-short", &body, 100_000);
    recs.remove(3);
    produce(&topics, cut, recs).await;
    let a = answer(&topics, cut, &keys, &portal).await;
    let (category, message) = a.error.expect("an error");
    assert_eq!(category, ErrorCategory::BadRequest, "{message}");
    assert!(
        message.contains("no record of this request arrived"),
        "{message}"
    );

    let paths: Vec<String> = servers
        .state
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("swap-a") || p.contains("cut-short")),
        "{paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_rotated_and_a_start_that_cannot_open_is_refused_in_clear() {
    let servers = Servers::start().await;
    let topics = Topics::new("sealkeys");
    let dir = tempfile::tempdir().unwrap();
    let (current, retired, foreign) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let files = format!(
        "{},{}",
        key_file(dir.path(), "current.key", &[&current]),
        key_file(dir.path(), "retired.key", &[&retired])
    );
    let portal = Portal::start(&topics, &sealing_env(&servers, &files));
    let log = portal.log();
    assert!(
        log.contains(&current.public().id().to_string())
            && log.contains(&retired.public().id().to_string()),
        "{log}"
    );
    let body = pattern(9, 1000);

    // Sealed to the retired key: still opened.
    let old = JobId::new();
    let (recs, keys) = sealed_post(
        &topics,
        retired.public(),
        old,
        "/upload/old-key",
        &body,
        400,
    );
    produce(&topics, old, recs).await;
    let a = answer(&topics, old, &keys, &portal).await;
    assert_eq!((a.status, a.error), (Some(200), None));

    // Sealed to a key the portal does not hold: a clear refusal naming the ids.
    let lost = JobId::new();
    let (recs, keys) = sealed_post(&topics, foreign.public(), lost, "/upload/lost", &body, 400);
    produce(&topics, lost, recs).await;
    let a = answer(&topics, lost, &keys, &portal).await;
    let (category, message) = a.error.expect("an error");
    assert_eq!(category, ErrorCategory::Rejected);
    assert!(
        message.contains(&foreign.public().id().to_string())
            && message.contains(&current.public().id().to_string()),
        "{message}"
    );
    assert_eq!(a.clear, 1, "nothing can be sealed without the job's secret");

    // A hostile start: an encapsulated key of 5 bytes. Refused, and the
    // portal goes on serving.
    let bad = JobId::new();
    let (mut recs, keys) = sealed_post(&topics, current.public(), bad, "/upload/bad", &body, 400);
    let value = recs[0].value.clone().unwrap();
    let (mut frame, payload) = wire::decode(&value).unwrap();
    if let Body::SealedStart(s) = &mut frame.body {
        s.enc = vec![1, 2, 3, 4, 5];
    }
    recs[0].value = Some(wire::encode_in(DigestKind::Blake3, &frame, payload));
    produce(&topics, bad, recs).await;
    let a = answer(&topics, bad, &keys, &portal).await;
    let (category, message) = a.error.expect("an error");
    assert_eq!(category, ErrorCategory::BadRequest, "{message}");

    // Its start and a chunk delivered twice (a producer retry): one call.
    let next = JobId::new();
    let (mut recs, keys) = sealed_post(&topics, current.public(), next, "/upload/next", &body, 400);
    recs.insert(1, recs[0].clone());
    recs.insert(3, recs[2].clone());
    produce(&topics, next, recs).await;
    let a = answer(&topics, next, &keys, &portal).await;
    assert_eq!((a.status, a.error), (Some(200), None));
    let paths: BTreeMap<String, usize> =
        servers
            .state
            .requests()
            .into_iter()
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.path).or_default() += 1;
                m
            });
    assert_eq!(
        paths.into_iter().collect::<Vec<_>>(),
        vec![
            ("/upload/next".to_string(), 1),
            ("/upload/old-key".to_string(), 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_portal_that_requires_sealing_refuses_clear_requests_and_one_without_a_key_sealed_ones() {
    let servers = Servers::start().await;
    let dir = tempfile::tempdir().unwrap();
    let portal_key = SecretKey::generate();
    let files = key_file(dir.path(), "portal.key", &[&portal_key]);

    let topics = Topics::new("sealreq");
    let mut env = sealing_env(&servers, &files);
    env.push(("PORTAL_REQUIRE_SEALED", "true".into()));
    let portal = Portal::start(&topics, &env);
    let job = JobId::new();
    let start = post_start(job, "/upload/clear", Some(3), vec![], &topics.response);
    let reply_to = wire::reply_to_header(&topics.response, 0);
    produce(
        &topics,
        job,
        vec![kafka::record(
            &start,
            &[],
            &[(wire::REPLY_TO_HEADER, reply_to)],
        )],
    )
    .await;
    let (category, message) = wait_error(&topics, job, &portal).await;
    assert_eq!(category, ErrorCategory::Rejected);
    assert!(
        message.contains("accepts only sealed requests"),
        "{message}"
    );

    let topics = Topics::new("sealnokey");
    let mut env = servers.plain_env();
    env.push(("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into()));
    let portal = Portal::start(&topics, &env);
    let (status, text) = get(&admin_addr(&portal.log()), "/sealing-key").await;
    assert_eq!(status, 404);
    assert!(text.contains("no sealing key"), "{text}");
    let job = JobId::new();
    let (recs, _) = sealed_post(
        &topics,
        portal_key.public(),
        job,
        "/upload/nokey",
        b"abc",
        3,
    );
    produce(&topics, job, recs).await;
    let (category, message) = wait_error(&topics, job, &portal).await;
    assert_eq!(category, ErrorCategory::Rejected);
    assert!(message.contains("no sealing key"), "{message}");
    assert!(servers.state.requests().is_empty());
}

/// The bytes of every file under `dir` that process `pid` holds open
/// (spool files are unlinked, so they are read through `/proc`).
fn open_file_bytes(pid: u32, dir: &Path) -> Vec<Vec<u8>> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    entries
        .filter_map(|e| {
            let fd = e.ok()?.path();
            let target = std::fs::read_link(&fd).ok()?;
            target.starts_with(dir).then(|| std::fs::read(&fd).ok())?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_body_is_spooled_encrypted_and_a_clear_one_as_it_is() {
    let servers = Servers::start().await;
    let topics = Topics::new("sealspool");
    let dir = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let portal_key = SecretKey::generate();
    let files = key_file(dir.path(), "portal.key", &[&portal_key]);
    let mut env = sealing_env(&servers, &files);
    env.push(("PORTAL_SPOOL_DIR", spool.path().to_string_lossy().into()));
    // Whole bodies first, so both are spooled in full when the API holds them.
    env.push(("PORTAL_PIPELINE", "false".into()));
    let portal = Portal::start(&topics, &env);
    servers
        .state
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let sealed_body = pattern(31, 3_000_000);
    let sealed = JobId::new();
    let (recs, keys) = sealed_post(
        &topics,
        portal_key.public(),
        sealed,
        "/held/sealed",
        &sealed_body,
        900 * 1024,
    );
    produce(&topics, sealed, recs).await;

    // A clear job beside it: its spool file shows what plaintext on disk
    // looks like to this test.
    let clear_body = pattern(32, 3_000_000);
    let clear = JobId::new();
    let start = post_start(
        clear,
        "/held/clear",
        Some(clear_body.len() as u64),
        vec![],
        &topics.response,
    );
    let reply_to = wire::reply_to_header(&topics.response, 0);
    let mut recs = vec![kafka::record(
        &start,
        &[],
        &[(wire::REPLY_TO_HEADER, reply_to)],
    )];
    let mut chunker = Chunker::new(clear, 1, DigestKind::Sha256);
    for piece in clear_body.chunks(900 * 1024) {
        let c = chunker.chunk(piece.to_vec());
        recs.push(kafka::record(&c.frame, &c.payload, &[]));
    }
    recs.push(kafka::record(&chunker.finish(), &[], &[]));
    produce(&topics, clear, recs).await;

    servers.state.wait_held(2).await;
    let spooled = open_file_bytes(portal.pid(), spool.path());
    assert_eq!(spooled.len(), 2, "two spool files; log:\n{}", portal.log());
    assert!(spooled.iter().all(|f| f.len() == 3_000_000));
    let windows = [0, 777_777, 2_999_900];
    let shows = |body: &[u8]| {
        windows
            .iter()
            .any(|&at| holds(&spooled, &body[at..at + 64]))
    };
    assert!(shows(&clear_body), "the clear job's file is in clear");
    assert!(
        !shows(&sealed_body),
        "the sealed job's body is on disk in clear"
    );

    servers.state.release_hold();
    let a = answer(&topics, sealed, &keys, &portal).await;
    assert_eq!(a.error, None);
    let reply = crate::support::api::json(&a.body);
    assert_eq!(reply["body_sha256"], sha256_hex(&sealed_body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_job_refused_or_failed_leaves_no_path_query_or_header_value_in_the_log() {
    let servers = Servers::start().await;
    let topics = Topics::new("seallog");
    let dir = tempfile::tempdir().unwrap();
    let portal_key = SecretKey::generate();
    let files = key_file(dir.path(), "portal.key", &[&portal_key]);
    // An API that is not there: a port just freed.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_url = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let mut env = sealing_env(&servers, &files);
    env.retain(|(k, _)| *k != "PORTAL_TARGET_API_URL");
    env.push(("PORTAL_TARGET_API_URL", gone_url));
    env.push(("PORTAL_ALLOWED_ENDPOINTS", "POST /allowed/*".into()));
    let portal = Portal::start(&topics, &env);

    let body = pattern(5, 3000);
    // Refused by the policy: its path is outside PORTAL_ALLOWED_ENDPOINTS.
    let refused = JobId::new();
    let refused_path = "/refused/path-e41b?query-7d20=yes";
    let (recs, refused_keys) = sealed_post(
        &topics,
        portal_key.public(),
        refused,
        refused_path,
        &body,
        1000,
    );
    produce(&topics, refused, recs).await;
    // Allowed, but the call fails: the API cannot be reached.
    let failed = JobId::new();
    let failed_path = "/allowed/path-90c3?query-a5f1=yes";
    let (recs, failed_keys) = sealed_post(
        &topics,
        portal_key.public(),
        failed,
        failed_path,
        &body,
        1000,
    );
    produce(&topics, failed, recs).await;

    let a = answer(&topics, refused, &refused_keys, &portal).await;
    let (category, message) = a.error.clone().unwrap_or_else(|| panic!("{a:?}"));
    assert_eq!(category, ErrorCategory::Rejected);
    assert_eq!(a.clear, 0, "the refusal is sealed to its sender");
    assert!(message.contains("/refused/path-e41b"), "{message}");
    let a = answer(&topics, failed, &failed_keys, &portal).await;
    let (category, message) = a.error.clone().unwrap_or_else(|| panic!("{a:?}"));
    assert_eq!(category, ErrorCategory::UpstreamUnreachable);
    assert!(message.contains("/allowed/path-90c3"), "{message}");

    let log = portal.log();
    let leaked: Vec<&str> = [
        "path-e41b",
        "query-7d20",
        "path-90c3",
        "query-a5f1",
        SECRET_HEADER.1,
        "application/octet-stream",
    ]
    .into_iter()
    .filter(|s| log.contains(s))
    .collect();
    assert!(leaked.is_empty(), "{leaked:?} in the log:\n{log}");
    assert!(
        log.contains(&format!("job {refused} (sealed)")),
        "the refusal is logged by job id: {log}"
    );
}
