//! Sealed jobs: `send --seal-to` and a portal with `PORTAL_SEALING_KEY_FILE`.
//! Round trips sealed and clear, what the topics show of a sealed job,
//! `wait` and the job key file, key rotation, and hostile records built
//! with the library (a chunk moved between jobs or seqs, a truncated body,
//! a malformed encapsulated key) that must fail only their own job.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kafkasend::kafka::{self, partitioner::partition_for_key, Record};
use kafkasend::protocol::digest::DigestKind;
use kafkasend::protocol::seal::{self, JobKeys, PublicKey};
use kafkasend::protocol::wire::{self, Body, Frame, JobId, RequestStart, SealedChunk};
use kafkasend::protocol::ErrorCategory;

use crate::support::api::{json, Servers};
use crate::support::broker::{kafka_settings, records_in, Topics};
use crate::support::payload::{contains, pattern, pattern_file};
use crate::support::run::{admin_addr, admin_get, kafkasend_cmd, run_with_env, Portal};

/// A portal key pair made by `kafkasend keygen`: (dir, PREFIX.key, PREFIX.pub).
async fn keygen(topics: &Topics, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    let out = kafkasend_cmd(topics, &["keygen", "--out", prefix.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "keygen: {}", out.stderr);
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

fn sealed_portal(
    topics: &Topics,
    servers: &Servers,
    keys: &str,
    extra: &[(&'static str, String)],
) -> Portal {
    let mut env = servers.plain_env();
    env.push(("PORTAL_SEALING_KEY_FILE", keys.into()));
    env.extend(extra.iter().cloned());
    Portal::start(topics, &env)
}

/// `kafkasend send ARGS` with its job key files in `keys_dir`.
async fn send_sealed(
    topics: &Topics,
    keys_dir: &Path,
    args: &[&str],
) -> crate::support::run::SendResult {
    let args: Vec<&str> = std::iter::once("send")
        .chain(args.iter().copied())
        .collect();
    run_with_env(
        topics,
        &[("KAFKASEND_JOB_KEY_DIR", keys_dir.to_str().unwrap().into())],
        &args,
    )
    .await
}

/// Every record value and header value of every partition of `topic`.
async fn raw_bytes(topics: &Topics, topic: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in 0..3 {
        for r in records_in(topics, topic, p).await {
            out.extend(r.value);
            out.extend(r.headers.into_values());
            out.extend(r.key);
        }
    }
    out
}

/// Asserts that no record of `topic` holds any of `secrets`.
async fn assert_unreadable(topics: &Topics, topic: &str, secrets: &[&[u8]]) {
    let values = raw_bytes(topics, topic).await;
    assert!(!values.is_empty(), "{topic} holds no records");
    for secret in secrets {
        assert!(
            !values.iter().any(|v| contains(v, secret)),
            "{topic} holds {:?} in clear",
            String::from_utf8_lossy(&secret[..secret.len().min(40)])
        );
    }
}

/// 64-byte windows of `body` at a few places, which a record holding any
/// stretch of it in clear would contain.
fn windows_of(body: &[u8]) -> Vec<Vec<u8>> {
    let n = body.len();
    [0, n / 3, n / 2, n - 64]
        .iter()
        .map(|&at| body[at..at + 64].to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_and_clear_jobs_round_trip_and_the_topics_show_nothing_of_a_sealed_one() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::new("sealed-rt");
    let (key, public) = keygen(&topics, dir.path(), "portal").await;
    let servers = Servers::start().await;
    let portal = sealed_portal(&topics, &servers, key.to_str().unwrap(), &[]);
    let job_keys = dir.path().join("job-keys");

    // 3 MB: several chunks, past the spool threshold.
    let (file, digest) = pattern_file(dir.path(), "secret.bin", 41, 3_000_000);
    let body = std::fs::read(&file).unwrap();
    let out = send_sealed(
        &topics,
        &job_keys,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/api/confidential-upload?case=rosebud-77",
            "-H",
            "X-Request-ID: hush-hush-header-value",
            "--seal-to",
            public.to_str().unwrap(),
            "--json",
            "-o",
            dir.path().join("answer.json").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let answer = json(&std::fs::read(dir.path().join("answer.json")).unwrap());
    assert_eq!(answer["body_sha256"], digest.as_str());
    assert_eq!(answer["path"], "/api/confidential-upload");
    let req = servers.state.requests();
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].query.as_deref(), Some("case=rosebud-77"));
    assert_eq!(req[0].headers["x-request-id"], "hush-hush-header-value");
    let summary = json(&out.stdout);
    assert!(
        summary["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "{summary}"
    );
    // The job key file is gone once the answer is read.
    let left: Vec<_> = std::fs::read_dir(&job_keys)
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert_eq!(
        left,
        vec![0],
        "job key files left in {}",
        job_keys.display()
    );

    // A clear job through the same portal still works.
    let out = send_sealed(&topics, &job_keys, &["--endpoint", "/api/plain"]).await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/api/plain");

    // Neither topic holds the path, the query, the header value or any
    // stretch of the body; the answer (which echoes the path and the
    // digest) is sealed too. Nor the trace context.
    let trace = summary["trace_id"].as_str().unwrap().as_bytes().to_vec();
    let mut secrets: Vec<Vec<u8>> = vec![
        b"confidential-upload".to_vec(),
        b"rosebud-77".to_vec(),
        b"hush-hush-header-value".to_vec(),
        b"X-Request-ID".to_vec(),
        trace,
    ];
    secrets.extend(windows_of(&body));
    let secrets: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    assert_unreadable(&topics, &topics.request, &secrets).await;
    let mut answer_secrets = secrets.clone();
    answer_secrets.push(digest.as_bytes());
    let responses = raw_bytes(&topics, &topics.response).await;
    // The clear job's answer is in clear: it names its own path.
    assert!(responses.iter().any(|v| contains(v, b"/api/plain")));
    for secret in &answer_secrets {
        assert!(
            !responses.iter().any(|v| contains(v, secret)),
            "the response topic holds {:?}",
            String::from_utf8_lossy(&secret[..secret.len().min(40)])
        );
    }
    // The portal's log names the key, never a key or body byte.
    let log = portal.log();
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(!log.contains(key_line), "the private key is in the log");
    assert!(
        !log.contains("hush-hush-header-value"),
        "a header value is in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_opens_a_sealed_answer_with_the_secret_send_left_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::new("sealed-wait");
    let (key, public) = keygen(&topics, dir.path(), "portal").await;
    let servers = Servers::start().await;
    let _portal = sealed_portal(&topics, &servers, key.to_str().unwrap(), &[]);
    let job_keys = dir.path().join("job-keys");
    let out = send_sealed(
        &topics,
        &job_keys,
        &[
            "--endpoint",
            "/bytes/2500000?seed=9",
            "--seal-to",
            public.to_str().unwrap(),
            "--no-wait",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let job = out.stdout_text().trim().to_string();
    let secret = job_keys.join(format!("{job}.secret"));
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&job_keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    assert!(!out.stderr.contains(
        &std::fs::read_to_string(&secret)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    ));

    // Without the secret, wait says where it looked; with a seal-to
    // setting it does not even read the answer, which could be forged.
    let aside = dir.path().join("aside.secret");
    std::fs::rename(&secret, &aside).unwrap();
    let sealing = [
        (
            "KAFKASEND_JOB_KEY_DIR",
            job_keys.to_str().unwrap().to_string(),
        ),
        ("KAFKASEND_SEAL_TO", public.to_str().unwrap().to_string()),
    ];
    let out = run_with_env(&topics, &sealing, &["wait", &job, "--timeout", "60"]).await;
    assert_eq!(out.code, 4, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("KAFKASEND_SEAL_TO is set"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    let env = [(
        "KAFKASEND_JOB_KEY_DIR",
        job_keys.to_str().unwrap().to_string(),
    )];
    let out = run_with_env(&topics, &env, &["wait", &job, "--timeout", "60"]).await;
    assert_ne!(
        out.code, 0,
        "wait opened a sealed answer without its secret"
    );
    assert!(
        out.stderr.contains("sealed") && out.stderr.contains(&format!("{job}.secret")),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());

    std::fs::rename(&aside, &secret).unwrap();
    let out = run_with_env(&topics, &env, &["wait", &job, "--timeout", "60"]).await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, pattern(9, 2_500_000));
    assert!(!secret.exists(), "wait left the job's secret behind");
    // The answer's bytes are nowhere in the response topic.
    let answer = pattern(9, 2_500_000);
    let windows = windows_of(&answer);
    let windows: Vec<&[u8]> = windows.iter().map(Vec::as_slice).collect();
    assert_unreadable(&topics, &topics.response, &windows).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_accepts_old_and_new_keys_and_a_retired_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::new("sealed-rotate");
    let (old_key, old_pub) = keygen(&topics, dir.path(), "old").await;
    let (new_key, new_pub) = keygen(&topics, dir.path(), "new").await;
    let servers = Servers::start().await;
    let job_keys = dir.path().join("job-keys");
    let both = format!("{},{}", new_key.display(), old_key.display());
    let portal = sealed_portal(
        &topics,
        &servers,
        &both,
        &[("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into())],
    );
    let new_id = PublicKey::from_pem(&std::fs::read(&new_pub).unwrap())
        .unwrap()
        .id()
        .to_string();
    let old_id = PublicKey::from_pem(&std::fs::read(&old_pub).unwrap())
        .unwrap()
        .id()
        .to_string();
    assert!(
        portal.log().contains(&new_id) && portal.log().contains(&old_id),
        "{}",
        portal.log()
    );
    // The admin listener serves the advertised (new) public key.
    let addr = admin_addr(&portal.log());
    let (status, text) = admin_get(
        &addr,
        "GET /sealing-key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        PublicKey::from_pem(text.as_bytes())
            .unwrap()
            .id()
            .to_string(),
        new_id
    );

    for public in [&new_pub, &old_pub] {
        let out = send_sealed(
            &topics,
            &job_keys,
            &["--endpoint", "/r", "--seal-to", public.to_str().unwrap()],
        )
        .await;
        assert_eq!(out.code, 0, "{}: {}", public.display(), out.stderr);
    }
    drop(portal);

    // The old key retired: a job sealed to it is refused, naming what the portal holds.
    let topics = Topics::new("sealed-retired");
    let _portal = sealed_portal(&topics, &servers, new_key.to_str().unwrap(), &[]);
    let out = send_sealed(
        &topics,
        &job_keys,
        &["--endpoint", "/r", "--seal-to", old_pub.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(&old_id) && out.stderr.contains(&new_id),
        "{}",
        out.stderr
    );
    // And a portal without a sealing key says it cannot open sealed requests.
    let topics = Topics::new("sealed-nokey");
    let _plain = Portal::start(&topics, &servers.plain_env());
    let out = send_sealed(
        &topics,
        &job_keys,
        &["--endpoint", "/r", "--seal-to", new_pub.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("PORTAL_SEALING_KEY_FILE"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_portal_that_requires_sealing_refuses_clear_requests() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::new("sealed-require");
    let (key, public) = keygen(&topics, dir.path(), "portal").await;
    let servers = Servers::start().await;
    let portal = sealed_portal(
        &topics,
        &servers,
        key.to_str().unwrap(),
        &[("PORTAL_REQUIRE_SEALED", "true".into())],
    );
    let job_keys = dir.path().join("job-keys");
    let out = send_sealed(&topics, &job_keys, &["--endpoint", "/clear"]).await;
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("--seal-to"), "{}", out.stderr);
    // A clear start off the partition its id hashes to (a forgery aimed at
    // a sealed job of that id) is not answered: that would end the job.
    let forged = JobId::new();
    let home = partition_for_key(&forged.key(), 3);
    let start = RequestStart {
        method: "GET".into(),
        path: "/forged".into(),
        headers: vec![],
        body_len: None,
        has_body: false,
        reply_topic: topics.response.clone(),
        reply_partition: 0,
        digest: DigestKind::Blake3,
    };
    let frame = Frame {
        job: forged,
        seq: 0,
        body: Body::RequestStart(start),
    };
    let reply_to = wire::reply_to_header(&topics.response, 0);
    let client = kafka::connect(&kafka_settings(&topics, "it-forger"))
        .await
        .unwrap();
    let pc = client
        .partition(&topics.request, (home + 1) % 3)
        .await
        .unwrap();
    pc.produce(kafka::record_in(
        DigestKind::Blake3,
        &frame,
        &[],
        &[(wire::REPLY_TO_HEADER, reply_to)],
    ))
    .await
    .unwrap();
    let out = send_sealed(
        &topics,
        &job_keys,
        &[
            "--endpoint",
            "/sealed",
            "--seal-to",
            public.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let paths: Vec<String> = servers
        .state
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, vec!["/sealed".to_string()]);
    // The portal read the forged start, and said so, but answered nothing.
    portal
        .wait_for_log(&format!("job {forged}: ignored a clear start"))
        .await;
    let answered: Vec<JobId> = records_in(&topics, &topics.response, 0)
        .await
        .iter()
        .filter_map(|r| wire::decode(r.value.as_deref()?).ok().map(|(f, _)| f.job))
        .collect();
    assert!(
        !answered.contains(&forged),
        "the forged clear start was answered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_and_sealed_requests_carry_their_signature_inside_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::new("sealed-signed");
    let (key, public) = keygen(&topics, dir.path(), "portal").await;
    let (sender_key, sender_pub) = {
        let private = dir.path().join("sender.pem");
        let pubf = dir.path().join("sender.pub.pem");
        crate::support::pki::openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            private.to_str().unwrap(),
        ]);
        crate::support::pki::openssl(&[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            pubf.to_str().unwrap(),
        ]);
        (private, pubf)
    };
    let servers = Servers::start().await;
    let _portal = sealed_portal(
        &topics,
        &servers,
        key.to_str().unwrap(),
        &[("PORTAL_TRUSTED_KEYS", sender_pub.to_str().unwrap().into())],
    );
    let job_keys = dir.path().join("job-keys");
    let (file, digest) = pattern_file(dir.path(), "signed.bin", 5, 1_500_000);
    let out = send_sealed(
        &topics,
        &job_keys,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/signed-and-sealed",
            "--seal-to",
            public.to_str().unwrap(),
            "--signing-key",
            sender_key.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(json(&out.stdout)["body_sha256"], digest.as_str());
    // Sealed but not signed: refused by the signature check, after opening.
    let out = send_sealed(
        &topics,
        &job_keys,
        &[
            "--endpoint",
            "/unsigned",
            "--seal-to",
            public.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("not signed"), "{}", out.stderr);
    // The start records carry no signature header (nor trace context) in clear.
    for p in 0..3 {
        for r in records_in(&topics, &topics.request, p).await {
            let names: Vec<&String> = r.headers.keys().collect();
            assert!(
                names.iter().all(|n| *n == wire::REPLY_TO_HEADER),
                "clear record headers of a sealed request: {names:?}"
            );
        }
    }
}

// ------------------------------------------------------------------
// Hostile records, built and sealed with the library.

struct Sealer {
    topics: Topics,
    to: PublicKey,
}

/// A sealed request's records, before producing.
struct Job {
    id: JobId,
    partition: i32,
    start: Record,
    chunks: Vec<Record>,
    end: Record,
    keys: JobKeys,
}

impl Sealer {
    /// A sealed POST of `body` in `chunk` byte pieces to `path`, answered on
    /// partition 0 of the response topic.
    fn job(&self, path: &str, body: &[u8], chunk: usize) -> Job {
        let id = JobId::new();
        let partition = partition_for_key(&id.key(), 3);
        let start = RequestStart {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body_len: Some(body.len() as u64),
            has_body: true,
            reply_topic: self.topics.response.clone(),
            reply_partition: 0,
            digest: DigestKind::Blake3,
        };
        let (value, _secret, keys) = seal::seal_start(
            &self.to,
            id,
            &start,
            vec![],
            &self.topics.request,
            partition,
        )
        .unwrap();
        let reply_to = wire::reply_to_header(&self.topics.response, 0);
        let start = kafka::record_of_value(id, value, &[(wire::REPLY_TO_HEADER, reply_to)]);
        let chunks: Vec<Record> = body
            .chunks(chunk)
            .enumerate()
            .map(|(i, piece)| {
                let frame = Frame {
                    job: id,
                    seq: i as u32 + 1,
                    body: Body::SealedChunk(SealedChunk {
                        offset: (i * chunk) as u64,
                    }),
                };
                kafka::record_of_value(id, keys.request.seal_frame(&frame, piece, &[]), &[])
            })
            .collect();
        let mut hasher = DigestKind::Blake3.hasher();
        hasher.update(body);
        let end = Frame {
            job: id,
            seq: chunks.len() as u32 + 1,
            body: Body::End(wire::EndInfo {
                chunks: chunks.len() as u32,
                total_len: body.len() as u64,
                digest: hasher.finalize(),
            }),
        };
        let end = kafka::record_of_value(id, keys.request.seal_clear(&end, &[], vec![], &[]), &[]);
        Job {
            id,
            partition,
            start,
            chunks,
            end,
            keys,
        }
    }

    async fn produce(&self, partition: i32, records: Vec<Record>) {
        let client = kafka::connect(&kafka_settings(&self.topics, "it-sealer"))
            .await
            .unwrap();
        let pc = client
            .partition(&self.topics.request, partition)
            .await
            .unwrap();
        for r in records {
            pc.produce(r).await.unwrap();
        }
    }
}

/// `value` moved to `job` at `seq`: the clear header rewritten, the sealed
/// payload kept.
fn moved(value: &[u8], job: JobId, seq: Option<u32>) -> Record {
    let (mut frame, payload) = wire::decode(value).unwrap();
    frame.job = job;
    if let Some(seq) = seq {
        frame.seq = seq;
    }
    let mut v = wire::encode_in(DigestKind::Blake3, &frame, &[]);
    v.extend_from_slice(payload);
    kafka::record_of_value(job, v, &[])
}

/// The answers on partition 0 of the response topic, opened with each
/// job's keys (a clear `Error` as it is), by job.
async fn answers(topics: &Topics, jobs: &[&Job]) -> BTreeMap<JobId, Vec<Frame>> {
    let mut out: BTreeMap<JobId, Vec<Frame>> = BTreeMap::new();
    for r in records_in(topics, &topics.response, 0).await {
        let value = r.value.as_deref().unwrap();
        let (frame, payload) = wire::decode(value).unwrap();
        let Some(job) = jobs.iter().find(|j| j.id == frame.job) else {
            continue;
        };
        let attempt = r
            .headers
            .get(wire::ATTEMPT_HEADER)
            .cloned()
            .unwrap_or_default();
        let clear = if frame.body.is_sealed() {
            job.keys
                .response
                .open_frame(value, frame, payload, &attempt)
                .unwrap()
                .frame
        } else {
            assert!(
                matches!(frame.body, Body::Error(_)),
                "a clear {frame:?} in a sealed answer"
            );
            frame
        };
        out.entry(job.id).or_default().push(clear);
    }
    out
}

fn error_of(frames: &[Frame]) -> Option<(ErrorCategory, String)> {
    frames.iter().find_map(|f| match &f.body {
        Body::Error(e) => Some((e.category, e.message.clone())),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn moved_replayed_truncated_and_malformed_records_fail_only_their_own_job() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::new("sealed-hostile");
    let (key, public) = keygen(&topics, dir.path(), "portal").await;
    let servers = Servers::start().await;
    let portal = sealed_portal(
        &topics,
        &servers,
        key.to_str().unwrap(),
        &[("PORTAL_JOB_IDLE_TIMEOUT_SECS", "3".into())],
    );
    let sealer = Sealer {
        topics: topics.clone(),
        to: PublicKey::from_pem(&std::fs::read(&public).unwrap()).unwrap(),
    };
    let body_a = pattern(1, 300_000);
    let body_b = pattern(2, 300_000);

    // A chunk of job b moved into job a (key, job id and seq rewritten).
    let a = sealer.job("/hostile/swapped", &body_a, 100_000);
    let b = sealer.job("/hostile/donor", &body_b, 100_000);
    let swapped = moved(b.chunks[1].value.as_deref().unwrap(), a.id, None);
    sealer
        .produce(
            a.partition,
            vec![
                a.start.clone(),
                a.chunks[0].clone(),
                swapped,
                a.chunks[2].clone(),
                a.end.clone(),
            ],
        )
        .await;
    // A chunk of job c replayed at another seq of the same job.
    let c = sealer.job("/hostile/replayed", &body_a, 100_000);
    let replayed = moved(c.chunks[0].value.as_deref().unwrap(), c.id, Some(2));
    sealer
        .produce(
            c.partition,
            vec![
                c.start.clone(),
                c.chunks[0].clone(),
                replayed,
                c.end.clone(),
            ],
        )
        .await;
    // Job d truncated: its last chunk never comes.
    let d = sealer.job("/hostile/truncated", &body_a, 100_000);
    sealer
        .produce(
            d.partition,
            vec![
                d.start.clone(),
                d.chunks[0].clone(),
                d.chunks[1].clone(),
                d.end.clone(),
            ],
        )
        .await;
    // Job e: a clear chunk in a sealed job.
    let e = sealer.job("/hostile/clear-chunk", &body_a[..1000], 1000);
    let clear = kafka::record_in(
        DigestKind::Blake3,
        &Frame {
            job: e.id,
            seq: 1,
            body: Body::Chunk(wire::ChunkInfo {
                offset: 0,
                crc32c: wire::checksum(&body_a[..1000]),
            }),
        },
        &body_a[..1000],
        &[],
    );
    sealer
        .produce(e.partition, vec![e.start.clone(), clear, e.end.clone()])
        .await;
    // Job f: a malformed encapsulated key.
    let f = sealer.job("/hostile/bad-enc", &[], 1);
    let (mut frame, payload) = wire::decode(f.start.value.as_deref().unwrap()).unwrap();
    if let Body::SealedStart(s) = &mut frame.body {
        s.enc.truncate(31);
    }
    let mut v = wire::encode_in(DigestKind::Blake3, &frame, &[]);
    v.extend_from_slice(payload);
    let reply_to = wire::reply_to_header(&topics.response, 0);
    sealer
        .produce(
            f.partition,
            vec![kafka::record_of_value(
                f.id,
                v,
                &[(wire::REPLY_TO_HEADER, reply_to)],
            )],
        )
        .await;
    // Job g: whole and untouched, with a chunk repeated (a producer retry).
    let g = sealer.job("/hostile/fine", &body_b, 100_000);
    sealer
        .produce(
            g.partition,
            vec![
                g.start.clone(),
                g.chunks[0].clone(),
                g.chunks[0].clone(),
                g.chunks[1].clone(),
                g.chunks[2].clone(),
                g.end.clone(),
            ],
        )
        .await;

    let jobs = [&a, &c, &d, &e, &f, &g];
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    let got = loop {
        let got = answers(&topics, &jobs).await;
        let done = |j: &&Job| {
            got.get(&j.id).is_some_and(|fs| {
                fs.iter()
                    .any(|f| matches!(f.body, Body::Error(_) | Body::End(_)))
            })
        };
        if jobs.iter().all(done) {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every hostile job was answered: {got:?}\nportal log:\n{}",
            portal.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (cat, msg) = error_of(&got[&a.id]).expect("the swapped job failed");
    assert_eq!(cat, ErrorCategory::Integrity, "{msg}");
    let (cat, msg) = error_of(&got[&c.id]).expect("the replayed job failed");
    assert_eq!(cat, ErrorCategory::Integrity, "{msg}");
    assert!(
        error_of(&got[&d.id]).is_some(),
        "the truncated job was answered without an error"
    );
    let (cat, msg) = error_of(&got[&e.id]).expect("the job with a clear chunk failed");
    assert_eq!(cat, ErrorCategory::BadRequest, "{msg}");
    let (cat, msg) = error_of(&got[&f.id]).expect("the malformed start was answered");
    assert_eq!(cat, ErrorCategory::BadRequest, "{msg}");
    assert!(msg.contains("encapsulated key"), "{msg}");
    assert!(error_of(&got[&g.id]).is_none(), "{:?}", got[&g.id]);
    // Only the whole job reached the API, with its body intact.
    let calls = servers.state.requests();
    let paths: Vec<&str> = calls.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["/hostile/fine"],
        "portal log:\n{}",
        portal.log()
    );
    assert_eq!(
        calls[0].body_sha256,
        crate::support::payload::sha256_hex(&body_b)
    );
    // The error answers of jobs the portal could open are sealed: their
    // messages are not in the topic.
    let raw = raw_bytes(&topics, &topics.response).await;
    assert!(
        !raw.iter().any(|v| contains(v, b"/hostile/")),
        "a path is readable in an answer"
    );
}
