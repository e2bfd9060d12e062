//! Two answers to one job on its reply partition at once, their records
//! interleaved, as when a portal kept running a job after its grace ran out
//! and the portal that took the partition over ran it too: `wait` and `send`
//! take one whole answer, verified, whatever the order, and ignore the other.

use kafkasend::kafka::{self, partitioner::partition_for_key, Record};
use kafkasend::protocol::chunker::Chunker;
use kafkasend::protocol::wire::{self, Body, Frame, JobId, ResponseStart};
use kafkasend::protocol::{ErrorCategory, Failure};

use crate::support::api::{json, Servers};
use crate::support::broker::{kafka_settings, records_in, Topics};
use crate::support::run::{kafkasend_cmd, send, spawn_send, Portal};

/// One answer's records, every one tagged with `attempt` (none: untagged,
/// as older portals wrote them): a start, `body` in chunks of 10000 bytes,
/// an end.
fn answer(job: JobId, attempt: Option<&str>, status: u16, body: &[u8]) -> Vec<Record> {
    let headers: Vec<(&str, Vec<u8>)> = attempt
        .map(|a| (wire::ATTEMPT_HEADER, a.as_bytes().to_vec()))
        .into_iter()
        .collect();
    let start = Frame {
        job,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status,
            headers: vec![("x-attempt".into(), attempt.unwrap_or("none").into())],
            body_len: Some(body.len() as u64),
            digest: kafkasend::protocol::digest::DigestKind::Sha256,
        }),
    };
    let mut out = vec![kafka::record(&start, &[], &headers)];
    let mut chunker = Chunker::new(job, 1, kafkasend::protocol::digest::DigestKind::Sha256);
    for piece in body.chunks(10_000) {
        let chunk = chunker.chunk(piece.to_vec());
        out.push(kafka::record(&chunk.frame, &chunk.payload, &headers));
    }
    out.push(kafka::record(&chunker.finish(), &[], &headers));
    out
}

/// An `Error` record numbered `seq`, tagged with `attempt`.
fn error(job: JobId, attempt: &str, seq: u32, message: &str) -> Record {
    let frame = Frame {
        job,
        seq,
        body: Body::Error(Failure {
            category: ErrorCategory::UpstreamUnreachable,
            message: message.into(),
        }),
    };
    kafka::record(
        &frame,
        &[],
        &[(wire::ATTEMPT_HEADER, attempt.as_bytes().to_vec())],
    )
}

/// The records of `a` and `b` alternating, one each, the rest of the longer after.
fn alternate(a: Vec<Record>, b: Vec<Record>) -> Vec<Record> {
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    let mut out = Vec::new();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// The attempts of the two answers the tests write.
const A: Option<&str> = Some("aaaa00000000000a");
const B: Option<&str> = Some("bbbb00000000000b");

/// A body of `len` bytes that differs with `seed`.
fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_takes_one_whole_answer_of_two_interleaved() {
    let topics = Topics::new("attempts-wait");
    let client = kafka::connect(&kafka_settings(&topics, "it-forger"))
        .await
        .unwrap();
    client.ensure_topic(&topics.response, 1, 1).await.unwrap();
    let reply = client.partition(&topics.response, 0).await.unwrap();
    let (first, second) = (body(1, 150_000), body(2, 120_000));
    // Each case: how the records of two answers (A's body `first` with
    // status 200, B's `second` with 201) lie on the partition, and the
    // status of the answer to be taken.
    type Lay = fn(JobId, &[u8], &[u8]) -> Vec<Record>;
    let cases: [(&str, Lay, u16); 5] = [
        (
            "both whole: the first seen is taken",
            |job, first, second| alternate(answer(job, A, 200, first), answer(job, B, 201, second)),
            200,
        ),
        (
            "the first cut short (its portal died): the whole one is taken",
            |job, first, second| {
                let mut cut = answer(job, A, 200, first);
                cut.truncate(6);
                alternate(cut, answer(job, B, 201, second))
            },
            201,
        ),
        (
            "the first ends in an Error: the whole one wins",
            |job, first, second| {
                let mut failed = answer(job, A, 200, first);
                failed.truncate(4);
                failed.push(error(job, "aaaa00000000000a", 4, "the API broke off"));
                alternate(failed, answer(job, B, 201, second))
            },
            201,
        ),
        (
            "the first is damaged: the whole one is taken",
            |job, first, second| {
                let mut damaged = answer(job, A, 200, first);
                if let Some(v) = damaged[3].value.as_mut() {
                    let last = v.len() - 1;
                    v[last] ^= 0xff;
                }
                alternate(damaged, answer(job, B, 201, second))
            },
            201,
        ),
        (
            "an older portal's untagged answer cut short, a tagged one whole",
            |job, first, second| {
                let mut old = answer(job, None, 200, first);
                old.truncate(3);
                alternate(old, answer(job, B, 201, second))
            },
            201,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("answer.bin");
    for (what, lay, status) in cases {
        let expected = if status == 200 { &first } else { &second };
        let job = JobId::new();
        reply.produce_all(lay(job, &first, &second)).await.unwrap();
        let job = job.to_string();
        let args = [
            "wait",
            &job,
            "--timeout",
            "60",
            "--json",
            "-o",
            output.to_str().unwrap(),
        ];
        let out = kafkasend_cmd(&topics, &args).await;
        assert_eq!(out.code, 0, "{what}: {}", out.stderr);
        let summary = json(&out.stdout);
        assert_eq!(summary["status"], status, "{what}");
        assert_eq!(summary["digest_verified"], true, "{what}");
        assert_eq!(summary["bytes_received"], expected.len() as u64, "{what}");
        // The head is the taken answer's too.
        let tag = match status {
            200 => "aaaa00000000000a",
            _ => "bbbb00000000000b",
        };
        assert_eq!(
            summary["headers"],
            serde_json::json!([["x-attempt", tag]]),
            "{what}"
        );
        let got = std::fs::read(&output).unwrap();
        assert!(
            got == *expected,
            "{what}: the body differs from the answer taken"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "{what}: no part file is left"
        );
    }

    // Two attempts that both fail: the followed one's Error is the answer.
    let job = JobId::new();
    let mut cut = answer(job, B, 200, &second);
    cut.truncate(2);
    reply
        .produce_all(vec![
            cut[0].clone(),
            error(job, "cccc00000000000c", 0, "someone else's failure"),
            cut[1].clone(),
            error(job, "bbbb00000000000b", 2, "the API broke off"),
        ])
        .await
        .unwrap();
    let job = job.to_string();
    let out = kafkasend_cmd(&topics, &["wait", &job, "--timeout", "60"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    // The status line of the answer followed, then its Error.
    let lines: Vec<&str> = out.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert_eq!(lines[0], "HTTP 200 OK");
    assert!(lines[1].contains("the API broke off"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn send_survives_a_dead_portals_answer_before_the_real_one() {
    let servers = Servers::start().await;
    let topics = Topics::new("attempts-send");
    let _portal = Portal::start(&topics, &servers.plain_env());
    servers
        .state
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("answer.json");
    let client = spawn_send(
        &topics,
        &[
            "--endpoint",
            "/held/x",
            "-o",
            output.to_str().unwrap(),
            "--json",
            "--timeout",
            "60",
        ],
    );
    servers.state.wait_held(1).await;
    // The job's id, from its start record on the request topic.
    let mut job = None;
    for p in 0..3 {
        for r in records_in(&topics, &topics.request, p).await {
            job = r.key.and_then(|k| String::from_utf8(k).ok());
        }
    }
    let job: JobId = job.expect("the request was produced").parse().unwrap();
    let partition = partition_for_key(&job.key(), 3);
    let kc = kafka::connect(&kafka_settings(&topics, "it-dead-portal"))
        .await
        .unwrap();
    let pc = kc.partition(&topics.response, partition).await.unwrap();
    // A portal that ran the job before and died part-way through its
    // answer: the client sees that attempt first.
    let mut dead = answer(job, Some("dead0000dead0000"), 200, &body(7, 50_000));
    dead.truncate(3);
    pc.produce_all(dead).await.unwrap();
    servers.state.release_hold();
    let out = client.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "", "--json keeps stderr quiet on success");
    let summary = json(&out.stdout);
    assert_eq!(summary["status"], 200);
    assert_eq!(summary["digest_verified"], true);
    let answer_body = std::fs::read(&output).unwrap();
    assert_eq!(json(&answer_body)["path"], "/held/x");
    assert_eq!(summary["bytes_received"], answer_body.len() as u64);
    assert_eq!(servers.state.idempotency_keys(), vec![job.to_string()]);

    // The portal tagged every record of its answer with one attempt of 16
    // hex digits, not the dead one's.
    let key = job.key();
    let tags: Vec<Option<Vec<u8>>> = records_in(&topics, &topics.response, partition)
        .await
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(&key[..]))
        .map(|r| r.headers.get(wire::ATTEMPT_HEADER).cloned())
        .collect();
    assert_eq!(tags.len(), 3 + 3, "{tags:?}"); // the dead start and 2 chunks; start, chunk, end
    let real = tags[3].clone().expect("tagged");
    assert_eq!(real.len(), 16);
    assert!(real
        .iter()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert!(tags[3..].iter().all(|t| t.as_deref() == Some(&real[..])));
    assert_ne!(tags[0].as_deref(), Some(&real[..]));

    // An Error record in place of an answer is tagged too.
    let refused_out = dir.path().join("refused");
    let args = ["--endpoint", "/api/%2e%2e/admin", "--json", "-o"];
    let out = send(
        &topics,
        &[&args[..], &[refused_out.to_str().unwrap()]].concat(),
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let refused: JobId = json(&out.stdout)["job"].as_str().unwrap().parse().unwrap();
    let key = refused.key();
    let p = partition_for_key(&key, 3);
    let records: Vec<Record> = records_in(&topics, &topics.response, p)
        .await
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(&key[..]))
        .collect();
    assert_eq!(records.len(), 1);
    let (frame, _) = wire::decode(records[0].value.as_deref().unwrap()).unwrap();
    assert!(matches!(frame.body, Body::Error(_)), "{frame:?}");
    let tag = records[0]
        .headers
        .get(wire::ATTEMPT_HEADER)
        .expect("tagged");
    assert!(tag.len() == 16 && tag.iter().all(u8::is_ascii_hexdigit));

    // `wait` meets the dead attempt first too, and takes the real one.
    let waited = dir.path().join("waited.json");
    let job = job.to_string();
    let args = ["wait", &job, "--json", "-o", waited.to_str().unwrap()];
    let out = kafkasend_cmd(&topics, &args).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["digest_verified"], true);
    assert_eq!(std::fs::read(&waited).unwrap(), answer_body);
}
