//! The pipelined relay: a large body is streamed to the API while its
//! chunks still arrive, its last byte held back until the whole body's
//! digest matched. Most tests write the request records themselves, so
//! they can hold the end record back (or forge it) and look at the API
//! meanwhile.

use std::sync::Arc;

use kafkasend::kafka::{self, Partition, Record};
use kafkasend::protocol::wire::{self, Body, EndInfo, Frame, JobId};
use kafkasend::protocol::ErrorCategory;

use crate::support::api::Servers;
use crate::support::broker::{
    chunk_record, error_replies, kafka_settings, post_start, records_in, wait_error, Topics,
};
use crate::support::payload::{pattern, pattern_file, sha256_hex};
use crate::support::run::{send, Portal};
use crate::support::stream::{handler, Call, Ended, Refusal, StreamState};
use crate::support::{wait_until, LoopbackApi};

/// Chunk size of the hand-made requests: a 2 MiB body is 8 chunks.
const CHUNK: usize = 256 * 1024;

/// A request written record by record to partition 0 of the request topic.
struct HandJob {
    job: JobId,
    path: String,
    body: Vec<u8>,
    pc: Partition,
}

impl HandJob {
    async fn new(topics: &Topics, path: &str, body: Vec<u8>) -> Self {
        let client = kafka::connect(&kafka_settings(topics, "it-pipeline"))
            .await
            .unwrap();
        Self {
            job: JobId::new(),
            path: path.into(),
            body,
            pc: client.partition(&topics.request, 0).await.unwrap(),
        }
    }

    fn chunks(&self) -> usize {
        self.body.len().div_ceil(CHUNK)
    }

    fn start(&self, topics: &Topics) -> Record {
        let len = Some(self.body.len() as u64);
        kafka::record(
            &post_start(self.job, &self.path, len, vec![], &topics.response),
            &[],
            &[],
        )
    }

    /// Chunk `i` (from 0), as chunk number `i + 1`.
    fn chunk(&self, i: usize) -> Record {
        let at = i * CHUNK;
        let data = &self.body[at..(at + CHUNK).min(self.body.len())];
        chunk_record(
            self.job,
            i as u32 + 1,
            at as u64,
            data,
            wire::checksum(data),
        )
    }

    /// The end record, claiming the SHA-256 of `of`.
    fn end_claiming(&self, of: &[u8]) -> Record {
        let frame = Frame {
            job: self.job,
            seq: self.chunks() as u32 + 1,
            body: Body::End(EndInfo {
                chunks: self.chunks() as u32,
                total_len: self.body.len() as u64,
                digest: kafkasend::protocol::digest::DigestKind::Sha256.of(of),
            }),
        };
        kafka::record(&frame, &[], &[])
    }

    fn end(&self) -> Record {
        self.end_claiming(&self.body)
    }

    /// Produces `records` in order, one request each: a batch of several
    /// chunks would pass the broker's largest message.
    async fn produce(&self, records: Vec<Record>) {
        for r in records {
            self.pc.produce(r).await.unwrap();
        }
    }

    fn len(&self) -> u64 {
        self.body.len() as u64
    }
}

/// The one call the API got for `path`, once it came.
async fn the_call(api: &LoopbackApi<StreamState>, path: &str) -> Arc<Call> {
    wait_until(&format!("a call to {path}"), || {
        !api.state.calls_to(path).is_empty()
    })
    .await;
    let calls = api.state.calls_to(path);
    assert_eq!(calls.len(), 1, "{calls:?}");
    Arc::clone(&calls[0])
}

/// Waits until `call` has received at least `n` body bytes.
async fn wait_received(call: &Call, n: u64) {
    wait_until(&format!("{n} body bytes at the API"), || {
        call.received() >= n
    })
    .await;
}

/// Waits until `call`'s body has ended, and says how.
async fn wait_ended(call: &Call) -> Ended {
    wait_until("the call's body to end", || call.ended().is_some()).await;
    call.ended().unwrap()
}

/// The answer relayed for `job` (on reply partition 0): status and body;
/// `None` until its end record is there.
async fn answer_of(topics: &Topics, job: JobId) -> Option<(u16, Vec<u8>)> {
    let mut status = None;
    let mut body = Vec::new();
    for r in records_in(topics, &topics.response, 0).await {
        let (frame, payload) = wire::decode(r.value.as_deref().unwrap()).unwrap();
        if frame.job != job {
            continue;
        }
        match frame.body {
            Body::ResponseStart(s) => status = Some(s.status),
            Body::Chunk(_) => body.extend_from_slice(payload),
            Body::End(_) => return status.map(|s| (s, body)),
            _ => {}
        }
    }
    None
}

/// Waits (bounded) for the answer relayed for `job`.
async fn wait_answer(topics: &Topics, job: JobId, portal: &Portal) -> (u16, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        if let Some(a) = answer_of(topics, job).await {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer for job {job}; portal log:\n{}",
            portal.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How many records on reply partition 0 belong to `job`.
async fn reply_records(topics: &Topics, job: JobId) -> usize {
    records_in(topics, &topics.response, 0)
        .await
        .iter()
        .filter(|r| {
            let (frame, _) = wire::decode(r.value.as_deref().unwrap()).unwrap();
            frame.job == job
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_body_reaches_the_api_while_it_arrives_and_completes_only_once_verified() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-stream");
    let portal = Portal::start(&topics, &api.env());
    let hand = HandJob::new(&topics, "/up/large", pattern(1, 8 * CHUNK - 1000)).await;
    let mut records = vec![hand.start(&topics)];
    records.extend((0..4).map(|i| hand.chunk(i)));
    hand.produce(records).await;

    // Half the body is in Kafka and no end record: the API has it already.
    let call = the_call(&api, "/up/large").await;
    wait_received(&call, 4 * CHUNK as u64).await;
    assert_eq!(call.received(), 4 * CHUNK as u64, "only what arrived");
    assert_eq!(
        call.declared,
        Some(hand.len()),
        "Content-Length is declared"
    );
    assert_eq!(call.ended(), None);
    assert!(
        portal.log().contains(&format!("job {}", hand.job)) && portal.log().contains("pipelined"),
        "{}",
        portal.log()
    );

    // Every chunk is there, the end record is not: the last byte waits.
    hand.produce((4..hand.chunks()).map(|i| hand.chunk(i)).collect())
        .await;
    wait_received(&call, hand.len() - 1).await;
    assert_eq!(call.received(), hand.len() - 1);
    assert_eq!(call.ended(), None, "the API has no complete request yet");

    hand.produce(vec![hand.end()]).await;
    let digest = sha256_hex(&hand.body);
    assert_eq!(wait_ended(&call).await, Ended::Complete(digest.clone()));
    let (status, body) = wait_answer(&topics, hand.job, &portal).await;
    assert_eq!(status, 200);
    assert_eq!(body, digest.as_bytes());
    assert_eq!(api.state.calls().len(), 1, "one call");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_whose_digest_does_not_match_never_reaches_the_api_complete() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-digest");
    let portal = Portal::start(&topics, &api.env());
    let hand = HandJob::new(&topics, "/up/forged", pattern(2, 6 * CHUNK)).await;
    let mut records = vec![hand.start(&topics)];
    records.extend((0..hand.chunks()).map(|i| hand.chunk(i)));
    hand.produce(records).await;
    let call = the_call(&api, "/up/forged").await;
    wait_received(&call, hand.len() - 1).await;

    // Every chunk passed its CRC32C; the end record names another body.
    hand.produce(vec![hand.end_claiming(b"some other body")])
        .await;
    let (category, message) = wait_error(&topics, hand.job, &portal).await;
    assert_eq!(category, ErrorCategory::Integrity, "{message}");
    assert!(message.contains("SHA-256"), "{message}");
    match wait_ended(&call).await {
        Ended::BrokeOff(_) => {}
        other => panic!("the API got {other:?}, not a request broken off"),
    }
    assert_eq!(
        call.received(),
        hand.len() - 1,
        "the last byte never went out"
    );
    assert_eq!(api.state.calls().len(), 1, "no second call");
    assert_eq!(
        reply_records(&topics, hand.job).await,
        1,
        "the error is the only reply: no answer of the API's was relayed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_while_the_body_streams_is_retried_from_the_first_byte_with_a_fresh_token() {
    let servers = Servers::start().await;
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    *api.state.refusal.lock().unwrap() = Some(Refusal {
        calls: 1,
        after: 512 * 1024,
        status: 401,
    });
    let topics = Topics::new("pipe-401");
    let mut env = servers.oauth_env();
    env.retain(|(k, _)| *k != "PORTAL_TARGET_API_URL");
    env.push(("PORTAL_TARGET_API_URL", api.url.clone()));
    let portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "body.bin", 3, 5_000_000);
    let out = send(&topics, &[file.to_str().unwrap(), "--endpoint", "/up/auth"]).await;
    assert_eq!(out.code, 0, "{}\nportal log:\n{}", out.stderr, portal.log());
    assert_eq!(out.stdout_text(), digest, "the API's answer to the retry");

    let calls = api.state.calls_to("/up/auth");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].ended(), Some(Ended::Refused));
    assert!(calls[0].received() < 5_000_000, "refused mid-stream");
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer token-1"));
    assert_eq!(calls[1].ended(), Some(Ended::Complete(digest)));
    assert_eq!(calls[1].received(), 5_000_000);
    assert_eq!(calls[1].authorization.as_deref(), Some("Bearer token-2"));
    assert!(portal.log().contains("pipelined"), "{}", portal.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_portal_killed_mid_stream_leaves_the_job_to_the_next_portal() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-kill");
    let mut env = api.env();
    // The classic protocol drops a dead member after the session timeout,
    // which it sets: the job moves on in seconds.
    env.push(("KAFKA_GROUP_PROTOCOL", "classic".into()));
    env.push(("PORTAL_SESSION_TIMEOUT_SECS", "6".into()));
    let first = Portal::start(&topics, &env);
    let hand = HandJob::new(&topics, "/up/killed", pattern(4, 8 * CHUNK)).await;
    let mut records = vec![hand.start(&topics)];
    records.extend((0..4).map(|i| hand.chunk(i)));
    hand.produce(records).await;
    let call = the_call(&api, "/up/killed").await;
    wait_received(&call, 4 * CHUNK as u64).await;

    first.signal("KILL");
    match wait_ended(&call).await {
        Ended::BrokeOff(_) => {}
        other => panic!("the killed portal's call ended as {other:?}"),
    }
    let second = Portal::start(&topics, &env);
    hand.produce((4..hand.chunks()).map(|i| hand.chunk(i)).collect())
        .await;
    hand.produce(vec![hand.end()]).await;
    let digest = sha256_hex(&hand.body);
    let (status, body) = wait_answer(&topics, hand.job, &second).await;
    assert_eq!(status, 200);
    assert_eq!(body, digest.as_bytes());
    let calls = api.state.calls_to("/up/killed");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].ended(), Some(Ended::Complete(digest)));
    assert!(error_replies(&topics).await.is_empty());
    drop(first);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_pipelining_off_the_api_sees_nothing_until_the_body_is_verified() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-off");
    let mut env = api.env();
    env.push(("PORTAL_PIPELINE", "false".into()));
    let portal = Portal::start(&topics, &env);
    let hand = HandJob::new(&topics, "/up/stored", pattern(5, 6 * CHUNK)).await;
    let mut records = vec![hand.start(&topics)];
    records.extend((0..hand.chunks()).map(|i| hand.chunk(i)));
    hand.produce(records).await;
    // A small job behind it on the same partition: once the API has it,
    // the reader has taken every chunk of the large one.
    let marker = HandJob::new(&topics, "/up/marker", pattern(6, 1000)).await;
    marker
        .produce(vec![marker.start(&topics), marker.chunk(0), marker.end()])
        .await;
    let marked = the_call(&api, "/up/marker").await;
    wait_ended(&marked).await;
    assert!(
        api.state.calls_to("/up/stored").is_empty(),
        "the API was called before the body was complete"
    );

    hand.produce(vec![hand.end()]).await;
    let call = the_call(&api, "/up/stored").await;
    let digest = sha256_hex(&hand.body);
    assert_eq!(wait_ended(&call).await, Ended::Complete(digest.clone()));
    let (status, body) = wait_answer(&topics, hand.job, &portal).await;
    assert_eq!((status, body), (200, digest.into_bytes()));
    assert!(!portal.log().contains("pipelined"), "{}", portal.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn reordered_and_repeated_chunks_stream_in_order_and_exactly() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-gap");
    let portal = Portal::start(&topics, &api.env());
    let hand = HandJob::new(&topics, "/up/gap", pattern(7, 8 * CHUNK - 5)).await;
    // Chunk 2 is late, chunk 1 comes twice.
    hand.produce(vec![
        hand.start(&topics),
        hand.chunk(0),
        hand.chunk(0),
        hand.chunk(2),
        hand.chunk(3),
    ])
    .await;
    let marker = HandJob::new(&topics, "/up/gap-marker", pattern(8, 1000)).await;
    marker
        .produce(vec![marker.start(&topics), marker.chunk(0), marker.end()])
        .await;
    let marked = the_call(&api, "/up/gap-marker").await;
    wait_ended(&marked).await;
    let call = the_call(&api, "/up/gap").await;
    wait_received(&call, CHUNK as u64).await;
    assert_eq!(
        call.received(),
        CHUNK as u64,
        "nothing past the gap goes out before it fills"
    );

    let mut rest = vec![hand.chunk(1), hand.chunk(1), hand.chunk(3)];
    rest.extend((4..hand.chunks()).map(|i| hand.chunk(i)));
    rest.push(hand.chunk(0));
    rest.push(hand.end());
    hand.produce(rest).await;
    let digest = sha256_hex(&hand.body);
    assert_eq!(wait_ended(&call).await, Ended::Complete(digest.clone()));
    let (status, body) = wait_answer(&topics, hand.job, &portal).await;
    assert_eq!((status, body), (200, digest.into_bytes()));
    assert_eq!(api.state.calls_to("/up/gap").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_arriving_aborts_the_call_at_the_idle_timeout() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-idle");
    let mut env = api.env();
    env.push(("PORTAL_JOB_IDLE_TIMEOUT_SECS", "2".into()));
    let portal = Portal::start(&topics, &env);
    let hand = HandJob::new(&topics, "/up/idle", pattern(9, 8 * CHUNK)).await;
    hand.produce(vec![hand.start(&topics), hand.chunk(0)]).await;
    let call = the_call(&api, "/up/idle").await;

    let (category, message) = wait_error(&topics, hand.job, &portal).await;
    assert_eq!(category, ErrorCategory::BadRequest, "{message}");
    assert!(
        message.contains("PORTAL_JOB_IDLE_TIMEOUT_SECS"),
        "{message}"
    );
    match wait_ended(&call).await {
        Ended::BrokeOff(_) => {}
        other => panic!("the API got {other:?}, not a request broken off"),
    }
    assert!(call.received() <= CHUNK as u64);
    assert_eq!(
        reply_records(&topics, hand.job).await,
        1,
        "one reply, the error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_revoked_mid_stream_is_called_again_by_its_next_reader() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-revoke");
    let mut env = api.env();
    // Under the classic protocol every partition is revoked when a
    // member joins, so each job below is let go mid-stream.
    env.push(("KAFKA_GROUP_PROTOCOL", "classic".into()));
    env.push(("PORTAL_SESSION_TIMEOUT_SECS", "6".into()));
    let first = Portal::start(&topics, &env);
    let hand = HandJob::new(&topics, "/up/revoked", pattern(10, 8 * CHUNK)).await;
    let mut records = vec![hand.start(&topics)];
    records.extend((0..2).map(|i| hand.chunk(i)));
    hand.produce(records).await;
    let call = the_call(&api, "/up/revoked").await;
    wait_received(&call, 2 * CHUNK as u64).await;

    let second = Portal::start(&topics, &env);
    match wait_ended(&call).await {
        Ended::BrokeOff(_) => {}
        other => panic!("the call let go ended as {other:?}"),
    }
    let mut rest: Vec<Record> = (2..hand.chunks()).map(|i| hand.chunk(i)).collect();
    rest.push(hand.end());
    hand.produce(rest).await;
    let digest = sha256_hex(&hand.body);
    let (status, body) = wait_answer(&topics, hand.job, &second).await;
    assert_eq!((status, body), (200, digest.clone().into_bytes()));
    let calls = api.state.calls_to("/up/revoked");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].ended(), Some(Ended::Complete(digest)));
    assert!(
        error_replies(&topics).await.is_empty(),
        "a job let go answers nothing"
    );
    assert_eq!(
        reply_records(&topics, hand.job).await,
        3,
        "one answer: start, one chunk, end"
    );
    drop(first);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_is_relayed_only_once_the_body_is_verified() {
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    *api.state.refusal.lock().unwrap() = Some(Refusal {
        calls: 2,
        after: CHUNK as u64,
        status: 413,
    });
    let topics = Topics::new("pipe-early");
    let portal = Portal::start(&topics, &api.env());
    let forged = HandJob::new(&topics, "/up/early-forged", pattern(11, 5 * CHUNK)).await;
    let good = HandJob::new(&topics, "/up/early-good", pattern(12, 5 * CHUNK)).await;
    for hand in [&forged, &good] {
        let mut records = vec![hand.start(&topics)];
        records.extend((0..hand.chunks()).map(|i| hand.chunk(i)));
        hand.produce(records).await;
    }
    for path in ["/up/early-forged", "/up/early-good"] {
        let call = the_call(&api, path).await;
        assert_eq!(wait_ended(&call).await, Ended::Refused);
    }

    // The API answered a request the sender never sent in full: the
    // client hears of the broken body, not of the API's answer.
    forged
        .produce(vec![forged.end_claiming(b"another body")])
        .await;
    let (category, message) = wait_error(&topics, forged.job, &portal).await;
    assert_eq!(category, ErrorCategory::Integrity, "{message}");
    assert_eq!(reply_records(&topics, forged.job).await, 1);

    // The body checks out: the API's early answer is its answer.
    good.produce(vec![good.end()]).await;
    let (status, body) = wait_answer(&topics, good.job, &portal).await;
    assert_eq!((status, body.as_slice()), (413, &b"refused"[..]));
    assert!(!error_replies(&topics).await.contains_key(&good.job));
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_calls_leave_the_last_call_slot_to_other_jobs() {
    // Two call slots: one large upload may stream, a second would take the
    // last slot and must wait for its body; a small job still gets called
    // while both large bodies are incomplete. (Pipelined calls holding every
    // slot could leave the reader, which brings their bodies, waiting.)
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-spare");
    let mut env = api.env();
    env.push(("PORTAL_MAX_CONCURRENT_JOBS", "2".into()));
    let portal = Portal::start(&topics, &env);
    let a = HandJob::new(&topics, "/up/a", pattern(21, 8 * CHUNK)).await;
    let b = HandJob::new(&topics, "/up/b", pattern(22, 8 * CHUNK)).await;
    a.produce(vec![a.start(&topics), a.chunk(0)]).await;
    let call_a = the_call(&api, "/up/a").await;
    wait_received(&call_a, CHUNK as u64).await;
    b.produce(vec![b.start(&topics), b.chunk(0)]).await;

    let small = HandJob::new(&topics, "/small", pattern(23, 1000)).await;
    small
        .produce(vec![small.start(&topics), small.chunk(0), small.end()])
        .await;
    let (status, _) = wait_answer(&topics, small.job, &portal).await;
    assert_eq!(status, 200);
    assert!(
        api.state.calls_to("/up/b").is_empty(),
        "the second large upload took the last call slot while its body arrived"
    );
    assert_eq!(call_a.ended(), None, "the first is still streaming");

    // Both bodies complete: both calls complete, exactly.
    for hand in [&a, &b] {
        let mut rest: Vec<_> = (1..hand.chunks()).map(|i| hand.chunk(i)).collect();
        rest.push(hand.end());
        hand.produce(rest).await;
    }
    assert_eq!(
        wait_ended(&call_a).await,
        Ended::Complete(sha256_hex(&a.body))
    );
    let call_b = the_call(&api, "/up/b").await;
    assert_eq!(
        wait_ended(&call_b).await,
        Ended::Complete(sha256_hex(&b.body))
    );
    for hand in [&a, &b] {
        assert_eq!(wait_answer(&topics, hand.job, &portal).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_pipelined_call_still_exports_its_spans_with_an_error() {
    let receiver = crate::support::otlp::Receiver::start();
    let api = LoopbackApi::<StreamState>::serve(handler).await;
    let topics = Topics::new("pipe-spans");
    let mut env = api.env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
    let portal = Portal::start(&topics, &env);
    let hand = HandJob::new(&topics, "/up/forged", pattern(3, 6 * CHUNK)).await;
    let mut records = vec![hand.start(&topics)];
    records.extend((0..hand.chunks()).map(|i| hand.chunk(i)));
    hand.produce(records).await;
    let call = the_call(&api, "/up/forged").await;
    wait_received(&call, hand.len() - 1).await;
    hand.produce(vec![hand.end_claiming(b"some other body")])
        .await;
    let (category, _) = wait_error(&topics, hand.job, &portal).await;
    assert_eq!(category, ErrorCategory::Integrity);

    // The job span (found by its job id) and its call span, both failed.
    let job = hand.job.to_string();
    let mut job_span = None;
    wait_until("the aborted job's span is exported", || {
        job_span = receiver
            .spans()
            .into_iter()
            .find(|s| s["name"] == "job" && s["attributes"]["kafkasend.job_id"] == job.as_str());
        job_span.is_some()
    })
    .await;
    let job_span = job_span.unwrap();
    assert_eq!(job_span["status"], 2, "{job_span:#}");
    let trace_id = job_span["trace_id"].as_str().unwrap().to_string();
    let spans = receiver.wait_for(&trace_id, &["job", "call"]).await;
    let call_span = spans.iter().find(|s| s["name"] == "call").unwrap();
    assert_eq!(call_span["status"], 2, "{spans:#?}");
    assert_eq!(call_span["parent_span_id"], job_span["span_id"]);
}
